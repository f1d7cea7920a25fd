"""``zoomearth ask`` end to end in subprocesses: rules and script planners, JSON record, threads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from tests.scene.rasters import write_raster

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    path = tmp_path_factory.mktemp("ask") / "scene.tif"
    return write_raster(path, 3000, 2000, 3, block=256, overviews=[2, 4])


def ask(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "zoomearth.cli", "ask", *args],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=REPO,
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
        )
    return proc


def test_rules_planner_json_record(scene, tmp_path):
    env = {"ZOOMEARTH_DATA_DIR": str(tmp_path / "data")}
    proc = ask(str(scene), "what is in the top-right corner?", "--planner", "rules", "--json",
               env=env)
    record = json.loads(proc.stdout)  # stdout is exactly one JSON record
    schema = json.loads((REPO / "docs" / "ask.schema.json").read_text())
    jsonschema.validate(record, schema)
    assert record["status"] == "answered"
    assert "vision-language model" in record["answer"]
    (zoom,) = record["zooms"]
    assert zoom["box_xyxy"] == [1500, 0, 3000, 1000]  # the top-right quarter in full-res pixels
    assert zoom["map_box"] is not None
    assert record["planner"].startswith("rules")
    assert "zoom" in proc.stderr  # the live display goes to stderr
    assert Path(record["trajectory"]).exists()


def test_docs_schema_matches_model():
    from zoomearth.api import AskResult

    doc = json.loads((REPO / "docs" / "ask.schema.json").read_text())
    assert doc == json.loads(json.dumps(AskResult.model_json_schema()))


def test_script_plan_with_tool_and_out_dir(scene, tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "turns:\n"
        "  - - {zoom: [100, 100, 300, 300], frame: full}\n"
        "    - {tool: export_region, args: {}}\n"
        "  - - {answer: exported}\n"
    )
    out = tmp_path / "run"
    proc = ask(str(scene), "export the corner", "--plan", str(plan), "--out", str(out), "--json",
               env={"ZOOMEARTH_DATA_DIR": str(tmp_path / "data")})
    record = json.loads(proc.stdout)
    assert record["answer"] == "exported"
    assert record["run_dir"] == str(out)
    tif = [a for a in record["artifacts"] if a["kind"] == "raster"][0]
    assert Path(tif["path"]).parent == out and tif["region_xyxy"] == [0, 0, 512, 512]


def test_thread_follow_up_and_errors(scene, tmp_path):
    env = {"ZOOMEARTH_DATA_DIR": str(tmp_path / "data")}
    first = json.loads(ask(str(scene), "look at the centre", "--planner", "rules", "--json",
                           env=env).stdout)
    second = json.loads(ask("--thread", first["thread_id"], "and the bottom-left?", "--planner",
                            "rules", "--json", env=env).stdout)
    assert second["thread_id"] == first["thread_id"]
    # The record covers the follow-up; view ids continue the thread's (view 1 was the centre).
    (zoom,) = second["zooms"]
    assert zoom["view_id"] == 2 and zoom["label"] == "bottom-left"
    bad = ask("--thread", "no-such-thread", "--resume", env=env, check=False)
    assert bad.returncode == 2 and "no saved run" in bad.stderr and "Traceback" not in bad.stderr
    missing = ask(str(tmp_path / "nope.tif"), "q", "--planner", "rules", env=env, check=False)
    assert missing.returncode == 2 and "No such image" in missing.stderr


def test_approval_without_terminal_prints_resume_commands(scene, tmp_path):
    plan = tmp_path / "edit.yaml"
    plan.write_text(
        "turns:\n"
        "  - - {zoom: [600, 600, 700, 700], frame: full}\n"
        "    - {tool: edit, args: {instruction: remove the object,"
        " target_box: [620, 620, 680, 680]}}\n"
        "  - - {answer: edited}\n"
    )
    env = {"ZOOMEARTH_DATA_DIR": str(tmp_path / "data")}
    stopped = ask(str(scene), "remove the object", "--plan", str(plan), "--json", env=env,
                  check=False)
    assert stopped.returncode == 3, stopped.stderr
    record = json.loads(stopped.stdout)
    assert record["status"] == "awaiting_approval"
    assert record["pending_approval"][0]["tool"] == "edit"
    thread = record["thread_id"]
    assert f"zoomearth ask --thread {thread} --resume --approve" in stopped.stderr
    before = scene.read_bytes()
    done = json.loads(ask("--thread", thread, "--resume", "--approve", "--plan", str(plan),
                          "--json", env=env).stdout)
    assert done["status"] == "answered" and done["answer"] == "edited"
    edited = [a for a in done["artifacts"] if a["tool"] == "edit" and a["kind"] == "raster"]
    assert edited and Path(edited[0]["path"]).exists()
    assert scene.read_bytes() == before  # the input is never modified


def test_live_display_announces_a_scene_preparation_off_a_terminal():
    import io

    from zoomearth.cli_ask import LiveDisplay

    out = io.StringIO()
    show = LiveDisplay(out)
    for done in (0, 300, 1200):
        show({"event": "prepare", "scene": "big.png", "done": done, "total": 1200,
              "message": "done" if done == 1200 else "copying rows"})
    assert out.getvalue().splitlines() == [
        "preparing a tiled copy of big.png (one-time, cached) ...",
        "  -> prepared big.png",
    ]
