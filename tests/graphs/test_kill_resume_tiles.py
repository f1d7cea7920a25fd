"""A run killed (SIGKILL) in the middle of a streamed tool resumes from its finished tiles.

The killed process cannot clean up: its finished tiles are complete files (written under an
owner-named temporary, flushed, renamed) and a tile it was writing is an owner-named temporary of
a dead process. The resumed run, in a new process, reuses exactly the tiles on disk, leaves no
tile folder or temporary behind, and writes the same output as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import rasterio

from tests.graphs.test_tool_preflight_and_resume import _noisy_scene
from zoomearth.config import load_settings
from zoomearth.scene import Scene
from zoomearth.temporaries import is_temporary_name
from zoomearth.tools import ToolContext, run_tool
from zoomearth.tools.base import TILE_CACHE_DIR
from zoomearth.tools.denoise import Denoise

REPO = Path(__file__).resolve().parents[2]
CMD = [sys.executable, "-m", "tests.graphs.tile_kill_driver"]


def test_sigkill_mid_tool_then_resume_reuses_the_tiles_on_disk(tmp_path):
    image = _noisy_scene(tmp_path / "noisy.tif")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([*CMD, "ask", str(tmp_path), str(image)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tiles_root = tmp_path / "data" / "runs" / "kill-thread" / TILE_CACHE_DIR
    deadline = time.time() + 120
    while len(list(tiles_root.glob("*/tile-*.npz"))) < 3:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "the tool never finished a tile"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)  # a real kill, between (or inside) tiles
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    kept = len(list(tiles_root.glob("*/tile-*.npz")))
    assert 3 <= kept < 20

    done = subprocess.run([*CMD, "resume", str(tmp_path), str(image)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == "answered" and result["answer"] == "denoised"
    assert f"Resumed a stopped call: {kept} of 20 tiles were finished before and reused." in (
        result["warnings"]
    )
    run_dir = Path(result["run_dir"])
    assert not (run_dir / TILE_CACHE_DIR).exists()
    assert not [p.name for p in run_dir.rglob("*") if is_temporary_name(p.name)]

    settings = load_settings(flags={"data_dir": tmp_path / "ref-data", "tool_tile_side": 48},
                             environ={})
    with Scene.open(image, settings=settings, progress=False) as scene:
        reference = run_tool(Denoise, ToolContext(scene=scene, run_dir=tmp_path / "ref",
                                                  settings=settings), {"preview": False})
    (raster,) = [a for a in result["artifacts"] if a["kind"] == "raster"]
    with rasterio.open(raster["path"]) as got, rasterio.open(reference.artifacts[0].path) as want:
        assert np.array_equal(got.read(), want.read())
