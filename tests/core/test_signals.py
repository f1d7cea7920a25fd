"""SIGTERM and SIGKILL of real CLI processes mid-write (issue #14 item 7, the CI test it asks for).

Every test starts the real ``zoomearth`` command line in a subprocess on a synthetic scene made
by ``zoomearth synth``, waits until a partial file (an owner-named temporary,
:mod:`zoomearth.temporaries`) appears where the command writes, and signals it:

* SIGTERM is handled like Ctrl-C: the process exits promptly with status 143, says so on one
  line (for ``ask``: how to continue the thread), and leaves no temporary behind;
* SIGKILL cannot be handled: the temporaries stay (asserted, so the test is shown to see them),
  and the next start on the same place (``ask --thread T --resume``, ``tool --out``, ``synth``
  of the same output) removes them.

Time bounds only detect a hang (:data:`HANG_S`); nothing asserts a duration.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import rasterio

from zoomearth.temporaries import is_temporary_name

HANG_S = 180.0
# Above 2,048 px the denoise tool streams tile by tile (1,024 px tiles: 9 here), writing into a
# TiledRasterWriter's temporary for a few seconds on two cores.
SCENE_SIDE = 2304
# The region `ask` denoises: wider than 2,048 px, so it streams too (3 tiles), but small.
BOX = "0,0,2200,1000"


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "zoomearth.cli", *args]


def _settings(tmp: Path) -> list[str]:
    return ["--set", f"data_dir={tmp / 'data'}", "--set", f"cache_dir={tmp / 'cache'}"]


def _temporaries(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if is_temporary_name(p.name))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _wait_for(condition: Callable[[], bool], proc: subprocess.Popen[str], what: str) -> None:
    deadline = time.monotonic() + HANG_S
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"{what}: the process ended first ({proc.returncode}): {err}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {HANG_S} s")
        time.sleep(0.05)


@contextlib.contextmanager
def _started(argv: list[str], cwd: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:  # a failed test leaves no process behind
            proc.kill()
            proc.communicate()


def _signal_and_wait(proc: subprocess.Popen[str], sig: int) -> tuple[str, str]:
    proc.send_signal(sig)
    return proc.communicate(timeout=HANG_S)


def _last_line(err: str) -> str:
    # Progress bars redraw with carriage returns; the message is the last real line.
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1] if lines else ""


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic scene made by the real CLI (read-only for the tests: its hash is checked)."""
    folder = tmp_path_factory.mktemp("scene")
    out = folder / "scene.tif"
    subprocess.run(
        _cli("synth", str(out), "--size", str(SCENE_SIDE), "--seed", "5"),
        check=True,
        capture_output=True,
        timeout=HANG_S,
    )
    return out


def test_tool_sigterm_exits_143_and_leaves_nothing(scene: Path, tmp_path: Path) -> None:
    before = _digest(scene)
    run = tmp_path / "run"
    argv = _cli("tool", "denoise", str(scene), "--out", str(run), *_settings(tmp_path))
    with _started(argv, tmp_path) as proc:
        _wait_for(lambda: bool(_temporaries(run)), proc, "no temporary appeared in the run")
        _out, err = _signal_and_wait(proc, signal.SIGTERM)
    assert proc.returncode == 143, err
    assert _last_line(err) == "zoomearth tool: terminated (SIGTERM)"
    assert "Traceback" not in err
    # The call's outputs and temporaries are gone (the tile cache under .tiles, kept on purpose
    # so the same command resumes, may stay; with nothing in it the folder itself is gone).
    assert not run.exists() or [p.name for p in run.iterdir() if p.is_file()] == []
    assert [p for p in tmp_path.rglob("*") if is_temporary_name(p.name)] == []
    assert _digest(scene) == before


def test_tool_sigkill_leaves_temporaries_that_the_next_start_removes(
    scene: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    argv = _cli("tool", "denoise", str(scene), "--out", str(run), *_settings(tmp_path))
    with _started(argv, tmp_path) as proc:
        _wait_for(lambda: bool(_temporaries(run)), proc, "no temporary appeared in the run")
        _signal_and_wait(proc, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    left = _temporaries(run)
    assert left, "SIGKILL cannot clean up: the test must see the temporary it left"

    # The next start on that run folder (a quick tool) removes the dead process's litter.
    done = subprocess.run(
        _cli(
            "tool", "export_region", str(scene), "--box", "0,0,64,64", "--out", str(run),
            *_settings(tmp_path),
        ),
        capture_output=True, text=True, timeout=HANG_S, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert _temporaries(run) == []
    assert "stale temporary file(s)" in done.stderr and str(run) in done.stderr


def _thread_of(err: str) -> str:
    line = _last_line(err)
    marker = "--thread "
    assert marker in line, err
    return line.split(marker, 1)[1].split()[0]


def test_ask_sigterm_then_sigkill_then_resume(scene: Path, tmp_path: Path) -> None:
    before = _digest(scene)
    run = tmp_path / "run"
    ask = _cli(
        "ask", str(scene), f"denoise the box {BOX}", "--planner", "rules", "--out", str(run),
        *_settings(tmp_path),
    )  # fmt: skip

    # 1. SIGTERM: the tool in LangGraph's worker thread stops too; nothing is left; resumable.
    with _started(ask, tmp_path) as proc:
        _wait_for(lambda: bool(_temporaries(run)), proc, "no temporary appeared in the run")
        _out, err = _signal_and_wait(proc, signal.SIGTERM)
    assert proc.returncode == 143, err
    line = _last_line(err)
    assert line.startswith("zoomearth ask: terminated (SIGTERM); thread ")
    thread = _thread_of(err)
    assert line.endswith(f"continue it with: zoomearth ask --thread {thread} --resume")
    assert _temporaries(run) == []

    # 2. SIGKILL during the resumed run: its temporary stays behind.
    resume = _cli("ask", "--thread", thread, "--resume", "--json", *_settings(tmp_path))
    with _started(resume, tmp_path) as proc:
        _wait_for(lambda: bool(_temporaries(run)), proc, "no temporary in the resumed run")
        _signal_and_wait(proc, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert _temporaries(run), "SIGKILL cannot clean up: the test must see the temporary it left"

    # 3. The next start of the thread removes it (the dead owner's lock is taken over) and
    # finishes the run.
    done = subprocess.run(resume, capture_output=True, text=True, timeout=HANG_S, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "partial file(s)" in done.stderr and "that a killed run left" in done.stderr
    record = json.loads(done.stdout)
    assert record["status"] == "answered"
    assert [c["status"] for c in record["tool_calls"]] == ["ok"]
    assert [p for p in run.rglob("*") if is_temporary_name(p.name)] == []
    raster = Path(next(a["path"] for a in record["artifacts"] if a["kind"] == "raster"))
    with rasterio.open(raster) as ds:  # complete: the last block reads
        assert ds.width > 2048 and ds.height >= 1000
        h, w = ds.height, ds.width
        assert ds.read(1, window=((h - 8, h), (w - 8, w))).shape == (8, 8)
    # One artifact record per file, numbered as listed (no second, half-written output).
    lines = (run / "artifacts.jsonl").read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == [a["id"] for a in record["artifacts"]]
    assert _digest(scene) == before


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_synth_killed_mid_write_then_rerun(tmp_path: Path, sig: int) -> None:
    out = tmp_path / "big.tif"
    argv = _cli("synth", str(out), "--size", "8192", "--clouds", "0.3", *_settings(tmp_path))
    with _started(argv, tmp_path) as proc:
        _wait_for(lambda: bool(_temporaries(tmp_path)), proc, "synth wrote no temporary")
        _out, err = _signal_and_wait(proc, sig)
    assert not out.exists()
    if sig == signal.SIGTERM:
        assert proc.returncode == 143, err
        assert _last_line(err) == "zoomearth synth: terminated (SIGTERM)"
        assert _temporaries(tmp_path) == []
    else:
        assert proc.returncode == -signal.SIGKILL
        assert _temporaries(tmp_path), "the test must see what SIGKILL left"

    # A rerun writing the same output (here without clouds, so no mask) removes the litter of
    # all three outputs (image, mask, sidecar) and leaves a complete scene.
    done = subprocess.run(
        _cli("synth", str(out), "--size", "256", *_settings(tmp_path)),
        capture_output=True, text=True, timeout=HANG_S, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert _temporaries(tmp_path) == []
    with rasterio.open(out) as ds:
        assert (ds.width, ds.height) == (256, 256)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["big.json", "big.tif"]


def test_other_writers_use_owner_named_temporaries(tmp_path: Path, monkeypatch) -> None:
    """train/data.py's PNGs and eval/report.py's chart go through owner-named temporaries."""
    import numpy as np

    from zoomearth.eval.report import _write_chart
    from zoomearth.train.data import _save_png

    renamed: list[str] = []
    real_replace = os.replace

    def spy(src, dst):
        renamed.append(Path(src).name)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    monkeypatch.setattr(Path, "replace", lambda self, dst: spy(self, dst))
    _save_png(np.zeros((8, 8, 3), np.uint8), tmp_path / "a.png")
    group = {"acc_stage1": 0.5, "acc_final": 0.75, "apo_iou": None}
    report = {"overall": group, "by_type": {"count": group}, "benchmark": "b", "planner": "p"}
    _write_chart(report, tmp_path / "chart.png")

    assert [n.split(".tmp-")[0] for n in renamed] == [".a.png", ".chart.png"]
    for name in renamed:
        # .NAME.tmp-HOST-PID-RANDOM.png: a later sweep can tell whose it is.
        assert is_temporary_name(name) and f"-{os.getpid()}-" in name and name.endswith(".png")
    assert (tmp_path / "a.png").stat().st_size > 0 and (tmp_path / "chart.png").stat().st_size > 0
    assert [p.name for p in tmp_path.iterdir() if is_temporary_name(p.name)] == []


def test_failed_writer_removes_its_temporary(tmp_path: Path, monkeypatch) -> None:
    import numpy as np
    from PIL import Image

    from zoomearth.train.data import _save_png

    def broken_save(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError):
        _save_png(np.zeros((8, 8, 3), np.uint8), tmp_path / "a.png")
    assert list(tmp_path.iterdir()) == []
