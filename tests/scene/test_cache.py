"""Prepared-copy cache: built on demand for hard-to-window rasters, keyed, LRU-capped."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import rasterio

from tests.scene.rasters import pattern, write_raster
from zoomearth.config import load_settings
from zoomearth.geometry import PixelBox
from zoomearth.scene import Scene
from zoomearth.scene.cache import SceneCache, cache_key


@pytest.fixture()
def small_prepare(tmp_path):
    # Treat anything above 256 px without tiles/overviews as needing a prepared copy.
    return load_settings(
        flags={
            "data_dir": tmp_path / "data",
            "cache_dir": tmp_path / "cache",
            "prepare_min_side": 256,
        },
        environ={},
    )


def test_png_gets_a_tiled_overviewed_copy(tmp_path, small_prepare):
    png = write_raster(tmp_path / "big.png", 1200, 700, 3, driver="PNG", georef=False)
    scene = Scene.open(png, settings=small_prepare)
    assert scene.needs_preparation()
    view = scene.render(PixelBox(100, 50, 300, 250))
    assert np.array_equal(np.moveaxis(view.rgb, -1, 0), pattern(1200, 700, 3)[:, 50:250, 100:300])
    copy = scene.pixel_path()
    assert copy != png and copy.parent == small_prepare.scene_cache_dir
    with rasterio.open(copy) as ds:
        assert ds.block_shapes[0] == (512, 512)
        assert ds.overviews(1)
        assert ds.crs is None  # a non-georeferenced source stays pixel-only
    overview = scene.render(None, max_side=256)
    assert (overview.spec.width, overview.spec.height) == (256, 149)


def test_tiled_with_overviews_needs_no_copy(tmp_path, small_prepare):
    tif = write_raster(tmp_path / "cog.tif", 1024, 1024, 3, block=256, overviews=[2, 4])
    assert not Scene.open(tif, settings=small_prepare).needs_preparation()


def test_strip_tiff_is_prepared_and_keeps_georeference(tmp_path, small_prepare):
    tif = write_raster(tmp_path / "strip.tif", 800, 600, 4, tiled=False, nodata=0)
    scene = Scene.open(tif, settings=small_prepare)
    assert scene.needs_preparation()
    with rasterio.open(scene.pixel_path()) as ds, rasterio.open(tif) as src:
        assert ds.crs == src.crs and ds.transform == src.transform
        assert ds.nodata == 0 and ds.count == 4 and ds.dtypes == src.dtypes


def test_cache_reused_and_invalidated_by_mtime(tmp_path, small_prepare):
    png = write_raster(tmp_path / "big.png", 600, 400, 3, driver="PNG", georef=False)
    cache = SceneCache.from_settings(small_prepare)
    first = cache.get_or_build(png, progress=False)
    stamp = first.stat().st_mtime_ns
    assert cache.get_or_build(png, progress=False) == first
    assert first.stat().st_mtime_ns == stamp  # reused, not rebuilt
    old_key = cache_key(png)
    os.utime(png, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert cache_key(png) != old_key


def test_lru_cap_removes_least_recently_used(tmp_path):
    settings = load_settings(
        flags={"cache_dir": tmp_path / "cache", "prepare_min_side": 64}, environ={}
    )
    cache = SceneCache.from_settings(settings)
    a = write_raster(tmp_path / "a.png", 300, 300, 3, driver="PNG", georef=False)
    b = write_raster(tmp_path / "b.png", 300, 300, 3, driver="PNG", georef=False)
    pa = cache.get_or_build(a, progress=False)
    time.sleep(0.02)
    cache.get_or_build(b, progress=False)
    size_one = pa.stat().st_size
    cache.max_bytes = int(size_one * 1.5)
    time.sleep(0.02)
    cache.lookup(b)  # b most recently used
    removed = cache.enforce_cap()
    assert removed == [cache_key(a)]
    assert [e.key for e in cache.entries()] == [cache_key(b)]
    assert cache.clear() > 0 and cache.entries() == []


def test_corrupt_png_prepare_fails_cleanly(tmp_path, small_prepare):
    png = write_raster(tmp_path / "big.png", 800, 600, 3, driver="PNG", georef=False)
    data = png.read_bytes()
    png.write_bytes(data[: len(data) // 3])
    from zoomearth.errors import SceneReadError

    with pytest.raises(SceneReadError):
        Scene.open(png, settings=small_prepare).render()
    cache_dir = small_prepare.scene_cache_dir
    leftovers = list(cache_dir.glob("*")) if cache_dir.exists() else []
    assert not [p for p in leftovers if p.suffix in {".tif", ".json"} or "tmp" in p.name]


def test_prepared_copy_keeps_a_per_dataset_mask(tmp_path, small_prepare):
    # A strip TIFF with an internal mask band (as JPEG orthophotos carry): masked pixels must
    # stay invalid when read through the prepared copy.
    path = tmp_path / "masked.tif"
    data = pattern(600, 400, 3)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(
        path, "w", driver="GTiff", width=600, height=400, count=3, dtype="uint8", tiled=False
    ) as dst:
        dst.write(data)
        mask = np.full((400, 600), 255, np.uint8)
        mask[:, :200] = 0
        dst.write_mask(mask)
    direct = Scene.open(path, settings=small_prepare, prepare=False).render(max_side=300)
    prepared = Scene.open(path, settings=small_prepare, prepare=True).render(max_side=300)
    assert 0.6 < direct.valid.mean() < 0.7
    assert prepared.valid.mean() == pytest.approx(direct.valid.mean(), abs=0.01)


def test_evicted_copy_is_rebuilt_for_a_new_handle(tmp_path, small_prepare):
    import threading

    png = write_raster(tmp_path / "big.png", 600, 400, 3, driver="PNG", georef=False)
    scene = Scene.open(png, settings=small_prepare)
    scene.render(max_side=64)
    copy = scene.pixel_path()
    SceneCache.from_settings(small_prepare).clear()  # e.g. another scene pushed it out
    assert not copy.exists()
    out = {}

    def other_thread():  # a new GDAL handle (per thread) must not fail
        out["view"] = scene.render(PixelBox(0, 0, 100, 100))

    t = threading.Thread(target=other_thread)
    t.start()
    t.join()
    assert out["view"].rgb.shape == (100, 100, 3)
    assert scene.pixel_path().exists()


# ----------------------------------------------------------------------------------------------
# partial files (owner-named temporaries)
# ----------------------------------------------------------------------------------------------
_MAKE_TEMPORARY = """
import sys
from zoomearth.temporaries import temporary_sibling
tmp = temporary_sibling(sys.argv[1])
tmp.write_bytes(b"x" * int(sys.argv[2]))
print(tmp, flush=True)
if sys.argv[3] == "stay":
    sys.stdin.readline()  # alive until the test closes stdin
"""


def _temporary_of_another_process(cache_dir, size, stay):
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.Popen(
        [sys.executable, "-c", _MAKE_TEMPORARY, str(cache_dir / "abc.tif"), str(size),
         "stay" if stay else "exit"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    path = Path(proc.stdout.readline().strip())
    if not stay:
        proc.wait(timeout=60)
    return proc, path


def test_temporaries_sweep_and_clear_spare_live_builds(tmp_path, small_prepare):
    cache = SceneCache.from_settings(small_prepare)
    png = write_raster(tmp_path / "big.png", 600, 400, 3, driver="PNG", georef=False)
    cache.get_or_build(png, progress=False)
    entry_bytes = sum(e.size_bytes for e in cache.entries())
    live, live_path = _temporary_of_another_process(cache.root, 1000, stay=True)
    try:
        dead, dead_path = _temporary_of_another_process(cache.root, 3000, stay=False)
        listed = {t.path: t for t in cache.temporaries()}
        assert set(listed) == {live_path, dead_path}
        assert not listed[live_path].stale and listed[dead_path].stale
        assert listed[live_path].size_bytes == 1000 and listed[dead_path].size_bytes == 3000
        assert [e.key for e in cache.entries()] == [cache_key(png)]  # temporaries aren't entries

        swept = cache.sweep()
        assert (swept.files, swept.bytes) == (1, 3000) and not dead_path.exists()
        assert cache.clear() == entry_bytes
        assert cache.entries() == [] and live_path.exists()  # another process is writing it
    finally:
        live.stdin.close()
        live.wait(timeout=60)
    (left,) = cache.temporaries()
    assert left.path == live_path and left.stale  # its owner has ended now
    assert cache.clear() == 1000 and cache.temporaries() == []


def test_a_build_in_progress_shows_as_a_live_temporary(tmp_path, small_prepare):
    cache = SceneCache.from_settings(small_prepare)
    png = write_raster(tmp_path / "big.png", 700, 1100, 3, driver="PNG", georef=False)
    during = []

    def progress(done, total, message):
        during.extend(cache.temporaries())

    cache.get_or_build(png, progress=progress, isolate=False)
    assert during and all(not t.stale for t in during)
    assert {t.path.name for t in during} == {during[0].path.name}
    assert during[0].path.name.startswith(f".{cache_key(png)}.tif.tmp-")
    assert f"-{os.getpid()}-" in during[0].path.name
    assert cache.temporaries() == []
    key = cache_key(png)
    assert sorted(p.name for p in cache.root.iterdir()) == [f"{key}.json", f"{key}.tif"]


def test_clear_removes_lock_files_nobody_holds(tmp_path, small_prepare):
    import subprocess
    import sys

    cache = SceneCache.from_settings(small_prepare)
    cache.root.mkdir(parents=True)
    stale_lock = cache.root / ".aaaa.lock"
    stale_lock.touch()  # left by a process killed while building
    held_lock = cache.root / ".bbbb.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, sys; fh = open(sys.argv[1], 'w'); fcntl.flock(fh, fcntl.LOCK_EX); "
         "print('held', flush=True); sys.stdin.readline()", str(held_lock)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        cache.clear()
        assert not stale_lock.exists() and held_lock.exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
