"""Parallel tiles (``ToolContext.map_tiles``): same pixels as one at a time, in order, bounded,
cancellable, resumable; for a plugin that only declares its tiles independent and for the
built-in ``denoise`` and ``cloud_removal``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rasterio

from tests.tools import tile_tools
from tests.tools.tile_tools import TileBlur, TileBlurProcesses, TileBlurSerial
from zoomearth.geometry import PixelBox
from zoomearth.scene import Scene
from zoomearth.tools import ToolCancelled, ToolContext, run_tool
from zoomearth.tools.base import TILE_CACHE_DIR

#: 80 x 56 px scene: 5 x 4 = 20 tiles of 16 px.
W, H, TILES = 80, 56, 20


@pytest.fixture()
def scene_path(tmp_path: Path) -> Path:
    from tests.scene.rasters import write_raster

    rng = np.random.default_rng(3)
    data = rng.integers(0, 255, (3, H, W), dtype=np.uint8)
    return write_raster(tmp_path / "scene.tif", W, H, 3, data=data)


def _run(tool, scene_path, run_dir, settings, workers, args=None, **kw):
    s = settings.model_copy(update={"tool_workers": workers})
    with Scene.open(scene_path, settings=s, progress=False) as scene:
        ctx = ToolContext(scene=scene, run_dir=run_dir, settings=s, **kw)
        return run_tool(tool, ctx, args or {})


def _pixels(outcome) -> tuple[np.ndarray, dict]:
    with rasterio.open(outcome.artifacts[0].path) as ds:
        return ds.read(), {"crs": ds.crs, "transform": ds.transform, "dtype": ds.dtypes[0]}


def _expected_blur(scene_path: Path) -> np.ndarray:
    """The blur computed in one piece over the whole scene (reflecting at the scene's edges)."""
    import cv2

    with rasterio.open(scene_path) as ds:
        data = ds.read().astype(np.float32)
    out = np.stack([cv2.blur(b, (3, 3), borderType=cv2.BORDER_REFLECT) for b in data])
    return np.rint(out).astype(np.uint8)


def test_plugin_tiles_run_in_parallel_threads_and_match_serial(tmp_path, scene_path, settings):
    tile_tools.reset_stats()
    serial = _run(TileBlur, scene_path, tmp_path / "serial", settings, 1)
    assert serial.data["workers"] == 1 and len(tile_tools.STATS["threads"]) == 1

    tile_tools.reset_stats()
    par = _run(TileBlur, scene_path, tmp_path / "par", settings, 4, {"delay_s": 0.02})
    assert par.data["workers"] == 4
    assert len(tile_tools.STATS["threads"]) > 1  # really ran in several threads
    # Written in row-major order by the one writer, every tile once.
    assert par.data["order"] == serial.data["order"] == list(range(TILES))
    # Bounded: never more than 2 x workers tiles between start and write.
    assert 1 < tile_tools.STATS["max_in_flight"] <= 8
    got, geo = _pixels(par)
    want, want_geo = _pixels(serial)
    assert np.array_equal(got, want) and geo == want_geo
    assert np.array_equal(got, _expected_blur(scene_path))  # tiles with overlap = one piece
    assert not (tmp_path / "par" / TILE_CACHE_DIR).exists()  # removed once the call succeeded


def test_plugin_tiles_in_a_process_pool(tmp_path, scene_path, settings):
    markers = tmp_path / "markers"
    markers.mkdir()
    par = _run(
        TileBlurProcesses, scene_path, tmp_path / "proc", settings, 2, {"marker_dir": str(markers)}
    )
    pids = {int(p.name.split("-")[2]) for p in markers.glob("tile-*")}
    assert len(list(markers.glob("tile-*"))) == TILES
    assert os.getpid() not in pids and pids == set(par.data["pids"])
    assert par.data["order"] == list(range(TILES))
    got, _ = _pixels(par)
    assert np.array_equal(got, _expected_blur(scene_path))


def test_serial_declaration_and_one_worker_run_one_tile_at_a_time(tmp_path, scene_path, settings):
    tile_tools.reset_stats()
    out = _run(TileBlurSerial, scene_path, tmp_path / "s", settings, 4)
    assert out.data["workers"] == 1
    assert tile_tools.STATS["max_in_flight"] == 1
    assert len(tile_tools.STATS["threads"]) == 1


@pytest.mark.parametrize("tool", [TileBlur, TileBlurProcesses])
def test_parallel_cancel_keeps_finished_tiles_and_resume_reuses_them(
    tmp_path, scene_path, settings, tool
):
    markers = tmp_path / "markers"
    markers.mkdir()
    run_dir = tmp_path / "run"
    args = {"marker_dir": str(markers), "delay_s": 0.05}
    want = _expected_blur(scene_path)

    def computed() -> int:
        return len(list(markers.glob("tile-*")))

    with pytest.raises(ToolCancelled) as info:
        _run(tool, scene_path, run_dir, settings, 3, args, is_cancelled=lambda: computed() >= 6)
    kept = sorted((run_dir / TILE_CACHE_DIR).glob("*/tile-*.npz"))
    # Every tile that finished was kept (running ones finish when stopping), none were lost,
    # and the stop came early: bounded by the in-flight window of 2 x 3 tiles.
    assert 6 <= len(kept) <= computed() < TILES
    assert f"{len(kept)} finished tile" in str(info.value)

    before = computed()
    resumed = _run(tool, scene_path, run_dir, settings, 3, args)
    assert computed() - before == TILES - len(kept)  # only the missing tiles were computed
    assert f"{len(kept)} of {TILES} tiles were finished before" in " ".join(resumed.warnings)
    got, _ = _pixels(resumed)
    assert np.array_equal(got, want)
    assert not (run_dir / TILE_CACHE_DIR).exists()


def test_a_failing_tile_fails_the_call_and_keeps_the_others(tmp_path, scene_path, settings):
    from zoomearth.tools import ToolFailure

    run_dir = tmp_path / "run"
    with pytest.raises(ToolFailure) as info:
        _run(TileBlur, scene_path, run_dir, settings, 3, {"fail_tile": 7})
    assert "tile 7 failed on purpose" in str(info.value.__cause__)
    assert 0 < len(list((run_dir / TILE_CACHE_DIR).glob("*/tile-*.npz"))) < TILES


# ----------------------------------------------------------------------------------------------
# built-in tools
# ----------------------------------------------------------------------------------------------
def test_denoise_parallel_equals_serial(tmp_path, settings, shared_data):
    from tests.tools.helpers import write_array

    with rasterio.open(shared_data / "naip/m_4709963_se_14_1_20090818.tif") as ds:
        clean = ds.read()[:, :150, :200]
    rng = np.random.default_rng(5)
    noisy = np.clip(np.rint(clean + rng.normal(0, 15, clean.shape)), 0, 255).astype(np.uint8)
    path = write_array(tmp_path / "noisy.tif", noisy, tiled=True)
    outs = []
    for workers in (1, 3):
        s = settings.model_copy(update={"tool_tile_side": 48, "tool_workers": workers})
        with Scene.open(path, settings=s, progress=False) as scene:
            ctx = ToolContext(
                scene=scene,
                run_dir=tmp_path / f"w{workers}",
                region=PixelBox(0, 0, 200, 150),
                settings=s,
            )
            outcome = run_tool("denoise", ctx, {"preview": False})
        assert outcome.data["tiles"] == 20
        outs.append((outcome, _pixels(outcome)))
    (a, (pa, ga)), (b, (pb, gb)) = outs
    assert np.array_equal(pa, pb) and ga == gb
    assert a.data == b.data


def test_cloud_removal_parallel_equals_serial(tmp_path, settings):
    from zoomearth.scene.synth import generate_scene

    scene_path = generate_scene(
        tmp_path / "scene.tif", (2112, 256), seed=3, clouds=0.2, bands=4, compress="deflate"
    ).image_path
    outs = []
    for workers in (1, 3):
        s = settings.model_copy(update={"tool_tile_side": 256, "tool_workers": workers})
        with Scene.open(scene_path, settings=s, progress=False) as scene:
            ctx = ToolContext(scene=scene, run_dir=tmp_path / f"w{workers}", settings=s)
            outcome = run_tool("cloud_removal", ctx, {"preview": False})
        rasters = []
        for art in outcome.artifacts:
            with rasterio.open(art.path) as ds:
                rasters.append(ds.read())
        outs.append((outcome, rasters))
    (a, ra), (b, rb) = outs
    assert a.streamed and a.data["tiles"] == 9
    assert a.data == b.data and a.text == b.text
    assert all(np.array_equal(x, y) for x, y in zip(ra, rb, strict=True))
