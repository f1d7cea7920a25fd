"""Whole-scene tools as Ray tasks over tiles (``run_tool(..., ray_address=...)``, ``--ray``).

One local Ray cluster with 2 CPUs is started for the module (``ray.init(num_cpus=2)``, as the
eval tests do); the calls use it through ``ray_address="auto"`` (an initialised Ray is used as
is). The driver-killed test starts its own driver process with ``ray_address="local"``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from tests.ray_cluster import local_ray
from tests.tools.tile_tools import TileBlur
from zoomearth.geometry import PixelBox
from zoomearth.scene import Scene
from zoomearth.tools import ToolContext, run_tool
from zoomearth.tools.base import TILE_CACHE_DIR

REPO = Path(__file__).resolve().parents[2]
W, H, TILES = 80, 56, 20


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster with 2 CPUs for the whole module (Ray starts in ~10 s)."""
    with local_ray() as ray:
        yield ray


@pytest.fixture()
def scene_path(tmp_path: Path) -> Path:
    from tests.scene.rasters import write_raster

    rng = np.random.default_rng(3)
    data = rng.integers(0, 255, (3, H, W), dtype=np.uint8)
    return write_raster(tmp_path / "scene.tif", W, H, 3, data=data)


def _run(tool, path, run_dir, settings, args=None, ray_address=None, region=None, **kw):
    with Scene.open(path, settings=settings, progress=False) as scene:
        ctx = ToolContext(scene=scene, run_dir=run_dir, settings=settings, region=region, **kw)
        return run_tool(tool, ctx, args or {}, ray_address=ray_address)


def _raster(outcome, index=0):
    with rasterio.open(outcome.artifacts[index].path) as ds:
        return ds.read(), (ds.crs, ds.transform, ds.dtypes, ds.nodata, ds.count)


def test_ray_tiles_match_the_single_process_run(ray_cluster, tmp_path, scene_path, settings):
    local = _run(
        TileBlur, scene_path, tmp_path / "local", settings.model_copy(update={"tool_workers": 1})
    )
    remote = _run(TileBlur, scene_path, tmp_path / "ray", settings, ray_address="auto")
    assert remote.data["order"] == list(range(TILES))
    assert os.getpid() not in remote.data["pids"]  # computed in Ray worker processes
    got, geo = _raster(remote)
    want, want_geo = _raster(local)
    assert np.array_equal(got, want)
    assert geo == want_geo and geo[0] is not None  # same georeferencing
    assert not (tmp_path / "ray" / TILE_CACHE_DIR).exists()


def test_ray_denoise_matches_the_single_process_run(ray_cluster, tmp_path, settings, shared_data):
    from tests.tools.helpers import write_array

    with rasterio.open(shared_data / "naip/m_4709963_se_14_1_20090818.tif") as ds:
        clean = ds.read()[:, :120, :160]
    rng = np.random.default_rng(5)
    noisy = np.clip(np.rint(clean + rng.normal(0, 15, clean.shape)), 0, 255).astype(np.uint8)
    path = write_array(tmp_path / "noisy.tif", noisy, tiled=True)
    s = settings.model_copy(update={"tool_tile_side": 48})
    box = PixelBox(0, 0, 160, 120)
    local = _run("denoise", path, tmp_path / "local", s, {"preview": False}, region=box)
    remote = _run("denoise", path, tmp_path / "ray", s, {"preview": False}, "auto", region=box)
    assert remote.data == local.data and remote.data["tiles"] == 12
    got, geo = _raster(remote)
    want, want_geo = _raster(local)
    assert np.array_equal(got, want) and geo == want_geo


def test_a_killed_worker_is_retried_and_the_run_completes(
    ray_cluster, tmp_path, scene_path, settings
):
    markers = tmp_path / "markers"
    markers.mkdir()
    args = {"marker_dir": str(markers), "pause_tile": 3, "pause_s": 60}
    box: dict = {}

    def call() -> None:
        try:
            box["outcome"] = _run(TileBlur, scene_path, tmp_path / "run", settings, args, "auto")
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            box["error"] = exc

    worker = threading.Thread(target=call)
    worker.start()
    deadline = time.monotonic() + 60
    while not list(markers.glob("pause-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    pause = list(markers.glob("pause-*"))
    assert pause, "tile 3 never started"
    victim = int(pause[0].read_text())
    assert victim != os.getpid()
    os.kill(victim, signal.SIGKILL)  # the worker holding tile 3 dies mid-task
    worker.join(120)
    assert not worker.is_alive()
    assert "error" not in box, box.get("error")
    outcome = box["outcome"]
    # Tile 3 was computed again by another worker process; the output is complete and right.
    assert len(list(markers.glob("tile-3-*"))) == 1
    assert not (markers / f"tile-3-{victim}").exists()  # it died before finishing tile 3
    local = _run(TileBlur, scene_path, tmp_path / "local", settings)
    assert np.array_equal(_raster(outcome)[0], _raster(local)[0])


DRIVER = """
import json, sys
from pathlib import Path
from tests.tools.tile_tools import TileBlur
from zoomearth.config import load_settings
from zoomearth.scene import Scene
from zoomearth.tools import ToolContext, run_tool

spec = json.loads(sys.argv[1])
settings = load_settings(flags=spec["flags"], environ={})
with Scene.open(spec["scene"], settings=settings, progress=False) as scene:
    ctx = ToolContext(scene=scene, run_dir=Path(spec["run_dir"]), settings=settings)
    run_tool(TileBlur, ctx, spec["args"], ray_address="local")
print("finished")
"""


def test_a_killed_driver_resumes_from_its_finished_tiles(
    ray_cluster, tmp_path, scene_path, settings
):
    markers = tmp_path / "markers"
    markers.mkdir()
    run_dir = tmp_path / "run"
    args = {"marker_dir": str(markers), "delay_s": 0.4}
    flags = {"data_dir": str(tmp_path / "data"), "cache_dir": str(tmp_path / "cache")}
    spec = {"scene": str(scene_path), "run_dir": str(run_dir), "args": args, "flags": flags}
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, json.dumps(spec)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # the driver and the Ray it started: one process group
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list(run_dir.glob(f"{TILE_CACHE_DIR}/*/tile-*.npz"))) >= 4:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
        os.killpg(proc.pid, signal.SIGKILL)  # the driver stops dead, mid-run
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    kept = len(list(run_dir.glob(f"{TILE_CACHE_DIR}/*/tile-*.npz")))
    assert 4 <= kept < TILES
    before = len(list(markers.glob("tile-*")))
    resumed = _run(TileBlur, scene_path, run_dir, settings, args, "auto")
    assert len(list(markers.glob("tile-*"))) - before == TILES - kept  # only the missing ones
    assert f"{kept} of {TILES} tiles were finished before" in " ".join(resumed.warnings)
    local = _run(TileBlur, scene_path, tmp_path / "local", settings)
    assert np.array_equal(_raster(resumed)[0], _raster(local)[0])
    assert not (run_dir / TILE_CACHE_DIR).exists()


def test_cli_tool_ray(ray_cluster, tmp_path, settings, shared_data, capsys):
    from tests.tools.helpers import write_array
    from zoomearth.cli import main

    with rasterio.open(shared_data / "naip/m_4709963_se_14_1_20090818.tif") as ds:
        clean = ds.read()[:, :64, :96]
    path = write_array(tmp_path / "small.tif", clean, tiled=True)
    out = tmp_path / "out"
    code = main(
        [
            "--set", f"data_dir={tmp_path / 'data'}",
            "--set", f"cache_dir={tmp_path / 'cache'}",
            "tool", "denoise", str(path), "--args", '{"preview": false}',
            "--out", str(out), "--ray", "auto", "--json",
        ]
    )  # fmt: skip
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    assert record["tool"] == "denoise" and Path(record["artifacts"][0]["path"]).is_file()


def test_ray_address_for_a_tool_without_independent_tiles_runs_locally(
    ray_cluster, tmp_path, scene_path, settings
):
    from tests.tools.helpers import EchoTool

    small = tmp_path / "small.tif"
    from tests.scene.rasters import write_raster

    write_raster(small, 16, 16, 3)
    outcome = _run(EchoTool, small, tmp_path / "e", settings, ray_address="auto")
    assert any("ran here, not on the Ray cluster" in w for w in outcome.warnings)
