"""Relative and odd paths everywhere (issue #13).

The main commands run as the console script does (subprocesses), from a working directory other
than the repository, on ``dir with space/ñandú é.tif``, with relative ``--out`` / ``-o`` paths.
Each test checks that the outputs exist where the relative path says and that every path a JSON
record lists exists.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.scene.rasters import write_raster

IMAGE = "dir with space/ñandú é.tif"
OTHER = "dir with space/ñandú é 2.tif"


def zoomearth(
    cwd: Path, *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``zoomearth ARGS`` in ``cwd`` (its data directory under ``cwd/data``)."""
    proc = subprocess.run(
        [sys.executable, "-m", "zoomearth.cli", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=cwd,
        env={**os.environ, "ZOOMEARTH_DATA_DIR": str(cwd / "data"), **(env or {})},
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
        )
    return proc


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    """A working directory (not the repository) holding the odd image and a co-registered copy."""
    cwd = tmp_path / "wörk dir"
    (cwd / "dir with space").mkdir(parents=True)
    write_raster(cwd / IMAGE, 600, 400, 3, block=64)
    shutil.copy(cwd / IMAGE, cwd / OTHER)
    assert Path.cwd() != cwd
    return cwd


def _assert_artifacts_exist(record: dict, run_dir: Path) -> None:
    assert record["artifacts"], record
    for art in record["artifacts"]:
        path = Path(art["path"])
        assert path.is_absolute() and path.is_file(), art
        assert path.parent == run_dir, (path, run_dir)


def test_info_with_odd_path(workdir):
    info = json.loads(zoomearth(workdir, "info", IMAGE, "--json").stdout)
    assert info["width"] == 600 and info["height"] == 400
    assert (workdir / info["path"]).resolve() == (workdir / IMAGE).resolve()
    text = zoomearth(workdir, "info", IMAGE).stdout
    assert "600 x 400 px" in text


def test_view_with_relative_output(workdir):
    (workdir / "views").mkdir()
    proc = zoomearth(workdir, "view", IMAGE, "--side", "120", "-o", "views/ö view.png")
    assert (workdir / "views" / "ö view.png").is_file()
    assert "wrote views/ö view.png" in proc.stdout
    assert not (Path.cwd() / "views" / "ö view.png").exists()


def test_synth_with_relative_odd_output(workdir):
    zoomearth(workdir, "synth", "dir with space/sÿnth scene.tif", "--size", "256")
    assert (workdir / "dir with space" / "sÿnth scene.tif").is_file()
    assert (workdir / "dir with space" / "sÿnth scene.json").is_file()


def test_tool_with_relative_out(workdir):
    proc = zoomearth(workdir, "tool", "export_region", IMAGE, "--out", "tool run", "--json")
    record = json.loads(proc.stdout)
    run_dir = workdir / "tool run"
    assert record["run_dir"] == str(run_dir)
    _assert_artifacts_exist(record, run_dir)
    assert not (run_dir / "tool run").exists()
    # The documented example: `--out run1`, text output.
    text = zoomearth(workdir, "tool", "export_region", IMAGE, "--box", "0,0,64,64", "--out", "run1")
    assert f"run directory: {workdir / 'run1'}" in text.stdout
    assert list((workdir / "run1").glob("*-region.tif"))


def test_ask_rules_planner_with_relative_out(workdir):
    proc = zoomearth(
        workdir, "ask", IMAGE, "what is in the top-left corner?", "--planner", "rules",
        "--out", "ask run", "--json",
    )  # fmt: skip
    record = json.loads(proc.stdout)
    run_dir = workdir / "ask run"
    assert record["status"] == "answered" and record["run_dir"] == str(run_dir)
    assert Path(record["trajectory"]).is_file() and Path(record["trajectory"]).parent == run_dir
    assert record["zooms"] and record["zooms"][0]["label"] == "top-left"


def test_ask_default_run_dir_under_a_relative_data_dir(workdir):
    """With no --out the run goes to RUNS_DIR/<thread>; a relative data dir is made absolute."""
    proc = zoomearth(
        workdir, "ask", IMAGE, "look at the centre", "--planner", "rules", "--json",
        env={"ZOOMEARTH_DATA_DIR": "dätä dir"},
    )  # fmt: skip
    record = json.loads(proc.stdout)
    run_dir = Path(record["run_dir"])
    assert run_dir.is_absolute() and run_dir.is_dir()
    assert (workdir / "dätä dir").resolve() in run_dir.parents
    assert Path(record["trajectory"]).is_file()


def _plan(workdir: Path, name: str, tool_call: str) -> str:
    (workdir / "plans").mkdir(exist_ok=True)
    (workdir / "plans" / name).write_text(
        "turns:\n"
        "  - - {zoom: [100, 100, 300, 300], frame: full}\n"
        "    - {tool: export_region, args: {}}\n"
        f"    - {tool_call}\n"
        "  - - {answer: done}\n",
        encoding="utf-8",
    )
    return f"plans/{name}"


def test_ask_script_plan_with_relative_out_writes_artifacts(workdir):
    """`ask ... --out rel` used to answer with no artifacts (the tool failed on toolrun/toolrun).

    The planner's own path (``others`` next to the input, written only in the plan) stays
    confined to allowed_roots: refused while it is empty, accepted once the folder is allowed.
    """
    call = '{tool: cloud_removal, args: {others: ["' + OTHER + '"], method: composite}}'
    plan = _plan(workdir, "plän.yaml", call)
    proc = zoomearth(
        workdir, "ask", IMAGE, "export it", "--plan", plan, "--out", "rel", "--json", check=False
    )
    record = json.loads(proc.stdout)
    run_dir = workdir / "rel"
    # One of two tool requests was refused: a partial run (exit status 4), with an answer.
    assert proc.returncode == 4 and record["status"] == "partial", proc.stderr
    assert record["answer"] == "done"
    assert record["run_dir"] == str(run_dir)
    _assert_artifacts_exist(record, run_dir)
    assert {a["tool"] for a in record["artifacts"]} == {"export_region"}
    export, cloud = record["tool_calls"]
    assert export["status"] == "ok" and export["artifacts"]
    assert cloud["status"] == "invalid_arguments" and cloud["code"] == "path_not_allowed"
    assert "allowed_roots" in cloud["error"]

    roots = json.dumps([str(workdir / "dir with space")])
    proc = zoomearth(
        workdir, "ask", IMAGE, "export it", "--plan", plan, "--out", "rel allowed", "--json",
        "--set", f"allowed_roots={roots}",
    )  # fmt: skip
    record = json.loads(proc.stdout)
    assert record["status"] == "answered"
    _assert_artifacts_exist(record, workdir / "rel allowed")
    assert [c["status"] for c in record["tool_calls"]] == ["ok", "ok"]
    assert {a["tool"] for a in record["artifacts"]} == {"export_region", "cloud_removal"}


def test_graph_runtime_run_dir_is_absolute(tmp_path, monkeypatch, settings):
    """GraphRuntime.run_dir makes --out and a relative runs_dir absolute (and creates them)."""
    from zoomearth.graphs.runtime import GraphRuntime

    monkeypatch.chdir(tmp_path)
    runtime = GraphRuntime(settings=settings.model_copy(update={"runs_dir": Path("rüns")}))
    assert runtime.run_dir("t1", "rel out") == tmp_path / "rel out"
    assert runtime.run_dir("t1") == tmp_path / "rüns" / "t1"
    assert (tmp_path / "rel out").is_dir() and (tmp_path / "rüns" / "t1").is_dir()
    monkeypatch.chdir(tmp_path / "rel out")  # the stored path does not depend on the cwd
    assert runtime.run_dir("t1", tmp_path / "rel out") == tmp_path / "rel out"
