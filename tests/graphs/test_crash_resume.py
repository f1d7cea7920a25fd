"""A run killed with SIGKILL inside a tool node resumes without re-running finished nodes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.scene.rasters import write_raster

REPO = Path(__file__).resolve().parents[2]


def _env(workdir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "ZOOMEARTH_TEST_TOOL_COUNTER": str(workdir / "tool.log"),
        "ZOOMEARTH_TEST_BLOCK_MARKER": str(workdir / "inside-tool"),
    }


def test_sigkill_inside_tool_then_resume(tmp_path):
    image = write_raster(tmp_path / "scene.tif", 2000, 1000, 3, block=256, overviews=[2, 4])
    cmd = [sys.executable, "-m", "tests.graphs.crash_driver"]
    proc = subprocess.Popen([*cmd, "ask", str(tmp_path), str(image)], env=_env(tmp_path),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    marker = tmp_path / "inside-tool"
    deadline = time.time() + 120
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "the tool never started"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # a real kill, inside the tool node
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    done = subprocess.run([*cmd, "resume", str(tmp_path), str(image)], env=_env(tmp_path),
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["answer"] == "resumed fine"

    # The planner's first turn and the zoom ran once; only the killed tool node ran again.
    planner_calls = (tmp_path / "planner.log").read_text().split("\n")
    assert planner_calls.count("plan 0") == 1 and planner_calls.count("plan 1") == 1
    events = [json.loads(line) for line in (tmp_path / "events.log").read_text().splitlines()]
    assert sum(e["event"] == "zoom" for e in events) == 1
    assert (tmp_path / "tool.log").read_text().split() == ["stats", "stats"]

    # One complete artifact, no temporary or half-written files left in the run directory.
    run_dir = Path(result["run_dir"])
    files = sorted(p.name for p in run_dir.iterdir())
    assert len(result["artifacts"]) == 1
    assert sum(name.endswith("stats.json") for name in files) == 1
    assert not [n for n in files if "tmp" in n or n.startswith(".")], files
