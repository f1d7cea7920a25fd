"""Finished tiles survive a stop and are reused on resume (``ToolContext.map_tiles``).

A streamed call is cancelled after ``k`` computed tiles through the real cancellation hook, then
run again with the same arguments in the same run directory: exactly the remaining tiles are
computed (the real per-tile functions are counted, not replaced) and the outputs equal an
uninterrupted run's bit for bit.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio

import zoomearth.tools.denoise as denoise_module
from tests.tools.helpers import write_array
from zoomearth.geometry import PixelBox
from zoomearth.scene import Scene
from zoomearth.temporaries import HOST_TAG
from zoomearth.tools import (
    Capabilities,
    Tool,
    ToolCancelled,
    ToolContext,
    ToolResult,
    run_tool,
)
from zoomearth.tools.base import TILE_CACHE_DIR, TileCache
from zoomearth.tools.cloud_removal import CloudRemoval, _Job
from zoomearth.tools.denoise import Denoise

NAIP = "naip/m_4709963_se_14_1_20090818.tif"
REGION = PixelBox(10, 5, 190, 145)  # 180 x 140 px: 4 x 3 = 12 tiles of 48 px
TILES = 12


_write = functools.partial(write_array, tiled=True)


@pytest.fixture()
def settings(settings):
    """One tile at a time: these tests count exactly which tiles run before a stop (the parallel
    tiles' stop and resume are tested in tests/tools/test_parallel_tiles.py)."""
    return settings.model_copy(update={"tool_workers": 1})



@pytest.fixture()
def noisy_naip(tmp_path: Path, shared_data: Path) -> Path:
    with rasterio.open(shared_data / NAIP) as ds:
        clean = ds.read()[:, :150, :200]
    rng = np.random.default_rng(5)
    noisy = np.clip(np.rint(clean + rng.normal(0, 15, clean.shape)), 0, 255).astype(np.uint8)
    noisy[:, :20, :30] = 0  # a nodata corner
    return _write(tmp_path / "noisy.tif", noisy, nodata=0)


@pytest.fixture()
def counted_nlm(monkeypatch):
    """Counts calls of the real NLM filter (one per tile with valid pixels)."""
    calls = {"n": 0}
    real = denoise_module.dct_denoise

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(denoise_module, "dct_denoise", counting)
    return calls


def _denoise(scene, run_dir, settings, args=None, **kw):
    ctx = ToolContext(scene=scene, run_dir=run_dir, region=REGION, settings=settings, **kw)
    return run_tool(Denoise, ctx, args or {"preview": False})


def _raster(outcome, suffix: str = ".tif") -> tuple[np.ndarray, dict]:
    path = next(Path(a.path) for a in outcome.artifacts if a.path.endswith(suffix))
    with rasterio.open(path) as ds:
        return ds.read(), dict(ds.profile)


def _tile_files(run_dir: Path) -> list[Path]:
    return sorted((run_dir / TILE_CACHE_DIR).glob("*/tile-*.npz"))


def test_denoise_cancelled_after_k_tiles_computes_only_the_rest(
    tmp_path, noisy_naip, settings, counted_nlm
):
    s = settings.model_copy(update={"tool_tile_side": 48})
    with Scene.open(noisy_naip, settings=s, progress=False) as scene:
        reference = _denoise(scene, tmp_path / "ref", s)
        assert counted_nlm["n"] == TILES and reference.data["tiles"] == TILES
        assert not (tmp_path / "ref" / TILE_CACHE_DIR).exists()  # removed on success
        want, want_profile = _raster(reference)

        k = 5
        counted_nlm["n"] = 0
        run_dir = tmp_path / "run"
        with pytest.raises(ToolCancelled) as info:
            _denoise(scene, run_dir, s, is_cancelled=lambda: counted_nlm["n"] >= k)
        assert counted_nlm["n"] == k
        assert f"{k} finished tile(s) are kept in {run_dir.resolve()}" in str(info.value)
        assert len(_tile_files(run_dir)) == k
        # No output and no artifact of the cancelled call; only the kept tiles.
        assert [p.name for p in run_dir.iterdir()] == [TILE_CACHE_DIR]

        counted_nlm["n"] = 0
        progress: list[tuple[int, int]] = []
        resumed = _denoise(scene, run_dir, s, progress=lambda d, t, m: progress.append((d, t)))
        assert counted_nlm["n"] == TILES - k  # exactly the remaining tiles were computed
        got, got_profile = _raster(resumed)
        assert got.dtype == want.dtype and np.array_equal(got, want)  # bit for bit
        assert got_profile["transform"] == want_profile["transform"]
        assert resumed.data == reference.data  # statistics merged from reused tiles too
        assert f"{k} of {TILES} tiles were finished before and reused" in " ".join(
            resumed.warnings
        )
        assert progress == [(n, TILES) for n in range(1, TILES + 1)]
        assert not (run_dir / TILE_CACHE_DIR).exists()  # removed once the call succeeded


def test_a_different_call_never_reuses_tiles(tmp_path, noisy_naip, settings, counted_nlm):
    s = settings.model_copy(update={"tool_tile_side": 48})
    run_dir = tmp_path / "run"
    with Scene.open(noisy_naip, settings=s, progress=False) as scene:
        with pytest.raises(ToolCancelled):
            _denoise(scene, run_dir, s, is_cancelled=lambda: counted_nlm["n"] >= 4)
        kept = _tile_files(run_dir)
        assert len(kept) == 4
        counted_nlm["n"] = 0
        _denoise(scene, run_dir, s, {"preview": False, "strength": 1.5})  # other arguments
        assert counted_nlm["n"] == TILES
        s2 = settings.model_copy(update={"tool_tile_side": 64})  # another tile layout
    with Scene.open(noisy_naip, settings=s2, progress=False) as scene:
        counted_nlm["n"] = 0
        out = _denoise(scene, run_dir, s2)
        assert counted_nlm["n"] == out.data["tiles"] == 9
    # The input file rewritten (same pixels, new modification time): its tiles are not reused.
    os.utime(noisy_naip, ns=(1_000_000_000, 1_000_000_000))
    with Scene.open(noisy_naip, settings=s, progress=False) as scene:
        counted_nlm["n"] = 0
        _denoise(scene, run_dir, s)
        assert counted_nlm["n"] == TILES
    # The first call's tiles are still there for that call (nothing of it was reused or lost).
    assert _tile_files(run_dir) == kept


def test_corrupt_partial_and_foreign_tile_files_are_recomputed(
    tmp_path, noisy_naip, settings, counted_nlm
):
    s = settings.model_copy(update={"tool_tile_side": 48})
    run_dir = tmp_path / "run"
    with Scene.open(noisy_naip, settings=s, progress=False) as scene:
        want, _ = _raster(_denoise(scene, tmp_path / "ref", s))
        counted_nlm["n"] = 0
        with pytest.raises(ToolCancelled):
            _denoise(scene, run_dir, s, is_cancelled=lambda: counted_nlm["n"] >= 6)
        files = _tile_files(run_dir)
        assert [f.name for f in files] == [f"tile-{i:06d}.npz" for i in range(6)]
        folder = files[0].parent
        files[1].write_bytes(files[1].read_bytes()[: files[1].stat().st_size // 2])  # truncated
        files[2].write_bytes(b"\x00" * 64)  # garbage
        files[3].write_bytes(files[4].read_bytes())  # another tile's (complete) file
        # A temporary of a writer that was killed (PID above pid_max: no such process).
        stale = folder / f".tile-000006.npz.tmp-{HOST_TAG}-999999999-abcdef012345.npz"
        stale.write_bytes(b"partial")

        counted_nlm["n"] = 0
        resumed = _denoise(scene, run_dir, s)
        assert counted_nlm["n"] == TILES - 6 + 3
        got, _ = _raster(resumed)
        assert np.array_equal(got, want)
        assert not folder.exists()


class _Doubler(Tool):
    """Streams the region; each tile's result is twice its pixels (test tool)."""

    name = "doubler"
    description = "Doubles pixel values tile by tile (test tool)."
    calls = 0

    capabilities = Capabilities(max_side=16, streaming=True, independent_tiles=True)

    def run(self, ctx, args):
        def double(tile):
            type(self).calls += 1
            return {"pixels": tile.crop(ctx.read(tile.read_box)).data * 2, "n": 1}

        total = 0
        for _tile, done in ctx.map_tiles(double, ctx.tiles(side=16), key={"factor": 2}):
            assert isinstance(done["pixels"], np.ndarray) and done["n"].shape == ()
            total += int(done["pixels"].sum()) + int(done["n"])
        return ToolResult(text=f"sum {total}", data={"sum": total})


class _DoublerDependent(_Doubler):
    name = "doubler_dependent"
    capabilities = Capabilities(max_side=16, streaming=True, independent_tiles=False)


@pytest.mark.parametrize("tool", [_Doubler, _DoublerDependent])
def test_only_tools_declaring_independent_tiles_keep_them(tmp_path, settings, tool):
    from tests.scene.rasters import write_raster

    path = write_raster(tmp_path / "p.tif", 64, 48, 3)
    run_dir = tmp_path / "run"
    with Scene.open(path, settings=settings, progress=False) as scene:
        ctx = ToolContext(scene=scene, run_dir=run_dir, settings=settings)
        tool.calls = 0
        want = run_tool(tool, ctx).data["sum"]
        assert tool.calls == 12
        tool.calls = 0
        cancelled = ToolContext(
            scene=scene, run_dir=run_dir, settings=settings, is_cancelled=lambda: tool.calls >= 3
        )
        with pytest.raises(ToolCancelled):
            run_tool(tool, cancelled)
        kept = len(_tile_files(run_dir))
        assert kept == (3 if tool.capabilities.independent_tiles else 0)
        tool.calls = 0
        assert run_tool(tool, ctx).data["sum"] == want
        assert tool.calls == 12 - kept
        assert not (run_dir / TILE_CACHE_DIR).exists()


def test_tile_cache_round_trip_and_fingerprint_manifest(tmp_path):
    from zoomearth.tools.base import Tile

    tile = Tile(0, 2, PixelBox(0, 0, 4, 3), PixelBox(0, 0, 4, 3), (0, 0, 4, 3), (slice(0, 3),) * 2)
    cache = TileCache.open(tmp_path, "t", {"a": 1, "arr": np.arange(3)})
    assert cache.load(tile) is None and not cache.folder.exists()  # nothing made until a store
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    cache.store(tile, arr)
    back = cache.load(tile)
    assert back.dtype == np.float32 and np.array_equal(back, arr)
    cache.store(tile, {"m": arr, "s": np.asarray("telea")})
    back = cache.load(tile)
    assert set(back) == {"m", "s"} and str(back["s"]) == "telea"
    assert json.loads((cache.folder / TileCache.MANIFEST).read_text()) == {"a": 1, "arr": [0, 1, 2]}
    # A damaged manifest: the folder is started afresh, never trusted.
    (cache.folder / TileCache.MANIFEST).write_text("{}")
    again = TileCache.open(tmp_path, "t", {"a": 1, "arr": [0, 1, 2]})
    assert again.folder == cache.folder and again.load(tile) is None
    again.discard()
    assert not (tmp_path / TILE_CACHE_DIR).exists()


# ----------------------------------------------------------------------------------------------
# cloud_removal
# ----------------------------------------------------------------------------------------------
def test_cloud_removal_cancelled_then_resumed_equals_uninterrupted(tmp_path, monkeypatch):
    from tests.tools.test_cloud_removal import make_settings
    from zoomearth.scene.synth import generate_scene

    scene_path = generate_scene(
        tmp_path / "scene.tif", (2112, 384), seed=3, clouds=0.2, bands=4, compress="deflate"
    ).image_path
    settings = make_settings(tmp_path, [tmp_path], tool_tile_side=256, tool_workers=1)
    calls = {"n": 0}
    real = _Job.process

    def counting(self, tile):
        calls["n"] += 1
        return real(self, tile)

    monkeypatch.setattr(_Job, "process", counting)

    def run(run_dir: Path, **kw):
        ctx = ToolContext(scene=scene, run_dir=run_dir, settings=settings, **kw)
        return run_tool(CloudRemoval(), ctx, {"preview": False})

    with Scene.open(scene_path, settings=settings, progress=False) as scene:
        reference = run(tmp_path / "ref")
        n = reference.data["tiles"]
        assert reference.streamed and calls["n"] == n == 18
        assert reference.data["synthetic_fraction"] > 0.01  # clouds were really inpainted
        k = 7
        calls["n"] = 0
        with pytest.raises(ToolCancelled):
            run(tmp_path / "run", is_cancelled=lambda: calls["n"] >= k)
        calls["n"] = 0
        resumed = run(tmp_path / "run")
        assert calls["n"] == n - k
    assert resumed.data == reference.data
    assert resumed.text == reference.text
    for suffix in ("cloudfree.tif", "cloudfree_cloudmask.tif", "cloudfree_synthetic.tif"):
        got, _ = _raster(resumed, suffix)
        want, _ = _raster(reference, suffix)
        assert np.array_equal(got, want), suffix
