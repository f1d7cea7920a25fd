"""Scene engine: lazy open, info, band mapping, rendering, bad input."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from tests.scene.rasters import pattern, write_raster
from zoomearth.errors import (
    BandLayoutError,
    BoxError,
    SceneNotFoundError,
    SceneReadError,
    SceneTooLargeError,
)
from zoomearth.geometry import PixelBox
from zoomearth.scene import Scene
from zoomearth.scene.scene import RASTERIO_LOGGERS, quiet_gdal


def test_info_reads_headers_only(tmp_path, settings, monkeypatch):
    path = write_raster(tmp_path / "a.tif", 64, 48, 3, colorinterp=["red", "green", "blue"])

    def boom(*a, **k):
        raise AssertionError("info must not decode pixels")

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", boom)
    with Scene.open(path, settings=settings) as scene:
        info = scene.info()
    assert info["width"] == 64 and info["height"] == 48 and info["count"] == 3
    assert info["crs"] == "EPSG:32633"
    assert info["bounds"] == [500_000, 4_999_976, 500_032, 5_000_000]
    assert info["pixel_size"] == [0.5, 0.5]
    assert info["band_mapping"]["rgb"] == [1, 2, 3]
    assert info["tiled"] is True


def test_full_resolution_crop_matches_rasterio(tmp_path, settings):
    path = write_raster(tmp_path / "a.tif", 64, 48, 3, colorinterp=["red", "green", "blue"])
    with Scene.open(path, settings=settings) as scene:
        view = scene.render(PixelBox(10, 5, 30, 25), max_side=512)
    expected = pattern(64, 48, 3)[:, 5:25, 10:30]
    assert view.rgb.shape == (20, 20, 3) and view.rgb.dtype == np.uint8
    assert np.array_equal(np.moveaxis(view.rgb, -1, 0), expected)
    assert view.spec.region == PixelBox(10, 5, 30, 25)
    assert view.valid.all()


def test_fractional_box_snaps_outwards(tmp_path, settings):
    path = write_raster(tmp_path / "a.tif", 64, 48, 3)
    with Scene.open(path, settings=settings) as scene:
        view = scene.render(PixelBox(10.4, 5.6, 29.2, 24.9))
    assert view.spec.region == PixelBox(10, 5, 30, 25)
    assert (view.spec.width, view.spec.height) == (20, 20)


def test_overview_long_side_and_frame(tmp_path, settings):
    path = write_raster(tmp_path / "a.tif", 1000, 600, 3, block=256, overviews=[2, 4])
    with Scene.open(path, settings=settings) as scene:
        view = scene.render(None, max_side=100)
    assert (view.spec.width, view.spec.height) == (100, 60)
    assert view.spec.region == PixelBox(0, 0, 1000, 600)
    assert view.spec.scale_x == pytest.approx(10.0)


def test_band_order_by_colour_interpretation(tmp_path, settings):
    path = write_raster(tmp_path / "bgr.tif", 32, 32, 3, colorinterp=["blue", "green", "red"])
    with Scene.open(path, settings=settings) as scene:
        assert scene.band_mapping().rgb == (3, 2, 1)
        view = scene.render()
    data = pattern(32, 32, 3)
    assert np.array_equal(view.rgb[..., 0], data[2])
    assert np.array_equal(view.rgb[..., 2], data[0])


def test_four_bands_are_rgbn_and_explicit_mapping(tmp_path, settings):
    path = write_raster(tmp_path / "rgbn.tif", 32, 32, 4, photometric="minisblack")
    with Scene.open(path, settings=settings) as scene:
        assert scene.band_mapping().rgb == (1, 2, 3)
        assert "NIR" in scene.band_mapping().note
    with Scene.open(path, settings=settings, bands=(4, 1, 2)) as scene:
        view = scene.render()
    assert np.array_equal(view.rgb[..., 0], pattern(32, 32, 4)[3])


def test_single_band_is_grey(tmp_path, settings):
    path = write_raster(tmp_path / "grey.tif", 32, 32, 1)
    with Scene.open(path, settings=settings) as scene:
        view = scene.render()
    assert np.array_equal(view.rgb[..., 0], view.rgb[..., 2])
    assert np.array_equal(view.rgb[..., 1], pattern(32, 32, 1)[0])


def test_ambiguous_band_layout_asks_for_mapping(tmp_path, settings):
    path = write_raster(tmp_path / "five.tif", 16, 16, 5, photometric="minisblack")
    with Scene.open(path, settings=settings) as scene:
        info = scene.info()  # info still works and reports the problem
        assert "bands" in info["band_mapping"]["error"]
        with pytest.raises(BandLayoutError, match="--bands"):
            scene.render()
    with pytest.raises(BandLayoutError, match="between 1 and 5"):
        Scene.open(path, settings=settings, bands=(1, 2, 9))
    with pytest.raises(BandLayoutError, match="1 or 3"):
        Scene.open(path, settings=settings, bands=(1, 2))


def test_uint16_is_stretched_and_nodata_masked(tmp_path, settings):
    data = np.linspace(100, 4000, 64 * 64).reshape(1, 64, 64).astype("uint16")
    data = np.repeat(data, 3, axis=0)
    data[:, :8, :8] = 0
    path = write_raster(tmp_path / "u16.tif", 64, 64, 3, "uint16", data=data, nodata=0)
    with Scene.open(path, settings=settings) as scene:
        view = scene.render()
    assert view.rgb.dtype == np.uint8
    assert not view.valid[:8, :8].any() and view.valid[8:, 8:].all()
    assert (view.rgb[:8, :8] == 0).all()
    valid = view.rgb[..., 0][view.valid]
    assert valid.min() == 0 and valid.max() == 255  # 2-98 % stretch saturates the tails


def test_float_with_nan(shared_data, settings):
    with Scene.open(shared_data / "rasterio/float_nan.tif", settings=settings) as scene:
        view = scene.render()
    assert view.rgb.shape == (2, 3, 3)
    assert (~view.valid).sum() >= 1
    assert (view.rgb[~view.valid] == 0).all()


def test_alpha_band_masks(shared_data, settings):
    with Scene.open(shared_data / "rasterio/RGBA.uint16.tif", settings=settings) as scene:
        assert scene.band_mapping().alpha == 4
        view = scene.render(max_side=128)
    assert 0 < view.valid.mean() < 1


def test_real_naip_crop_matches_source(shared_data, settings):
    path = shared_data / "naip/m_4709963_se_14_1_20090818.tif"
    with Scene.open(path, settings=settings) as scene:
        view = scene.render(PixelBox(100, 200, 356, 456), max_side=512)
    with rasterio.open(path) as src:
        expected = src.read([1, 2, 3], window=Window(100, 200, 256, 256))
    assert np.array_equal(np.moveaxis(view.rgb, -1, 0), expected)


def test_real_nodata_border(shared_data, settings):
    with Scene.open(shared_data / "rasterio/RGB.byte.tif", settings=settings) as scene:
        view = scene.render(max_side=256)
        assert scene.to_map(PixelBox(0, 0, 1, 1)).crs == "EPSG:32618"
    assert 0.5 < view.valid.mean() < 0.9  # nodata collar around the scene


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------
def test_missing_file(tmp_path, settings):
    with pytest.raises(SceneNotFoundError, match="No such image"):
        Scene.open(tmp_path / "nope.tif", settings=settings)


def test_empty_file(tmp_path, settings):
    p = tmp_path / "empty.tif"
    p.write_bytes(b"")
    with pytest.raises(SceneReadError, match="empty"):
        Scene.open(p, settings=settings)


def test_directory(tmp_path, settings):
    with pytest.raises(SceneReadError, match="directory"):
        Scene.open(tmp_path, settings=settings)


def test_not_an_image(tmp_path, settings):
    p = tmp_path / "notes.tif"
    p.write_text("these are not pixels\n" * 10)
    with pytest.raises(SceneReadError, match="Cannot read"):
        Scene.open(p, settings=settings)


def test_truncated_tiff(tmp_path, settings):
    src = write_raster(tmp_path / "full.tif", 256, 256, 3, block=64)
    data = src.read_bytes()
    p = tmp_path / "trunc.tif"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(SceneReadError, match="truncated|Cannot read"):
        scene = Scene.open(p, settings=settings)
        scene.render()


def test_corrupt_pixels_give_clear_read_error(tmp_path, settings):
    src = write_raster(tmp_path / "full.tif", 256, 256, 3, block=64, compress="deflate")
    raw = bytearray(src.read_bytes())
    # Scramble the compressed tile data in the middle of the file (headers intact).
    mid = len(raw) // 2
    raw[mid : mid + 2000] = bytes(2000)
    p = tmp_path / "corrupt.tif"
    p.write_bytes(bytes(raw))
    with pytest.raises(SceneReadError, match="corrupt|Cannot read"):
        with Scene.open(p, settings=settings) as scene:
            scene.render(max_side=None)


def test_absurd_declared_size_is_refused(tmp_path, settings):
    p = tmp_path / "huge.tif"
    with rasterio.open(
        p, "w", driver="GTiff", width=150_000, height=150_000, count=1, dtype="uint8",
        tiled=True, blockxsize=4096, blockysize=4096, sparse_ok=True,
    ):
        pass
    assert p.stat().st_size < 200_000
    with pytest.raises(SceneTooLargeError, match="max_image_pixels"):
        Scene.open(p, settings=settings)


def test_pixel_limit_is_a_setting(tmp_path):
    from zoomearth.config import load_settings

    path = write_raster(tmp_path / "a.tif", 64, 48, 3)
    small = load_settings(flags={"max_image_pixels": 1000, "cache_dir": tmp_path}, environ={})
    with pytest.raises(SceneTooLargeError, match="ZOOMEARTH_MAX_IMAGE_PIXELS"):
        Scene.open(path, settings=small)


@pytest.mark.parametrize(
    ("box", "match"),
    [
        (PixelBox(30, 10, 10, 20), "inverted"),
        (PixelBox(10, 10, 10, 20), "empty"),
        (PixelBox(float("nan"), 0, 10, 10), "NaN"),
        (PixelBox(100, 100, 200, 200), "outside"),
        (PixelBox(-20, -20, -1, -1), "outside"),
    ],
)
def test_bad_boxes_rejected(tmp_path, settings, box, match):
    path = write_raster(tmp_path / "a.tif", 64, 48, 3)
    with Scene.open(path, settings=settings) as scene, pytest.raises(BoxError, match=match):
        scene.render(box)


def test_partly_outside_box_is_clipped_with_warning(tmp_path, settings):
    path = write_raster(tmp_path / "a.tif", 64, 48, 3)
    with Scene.open(path, settings=settings) as scene:
        view = scene.render(PixelBox(-10, 40, 20, 60))
    assert view.spec.region == PixelBox(0, 40, 20, 48)
    assert view.warnings and "clipped" in view.warnings[0]


@pytest.mark.parametrize("side", [0, -5, float("nan"), True])
def test_bad_max_side(tmp_path, settings, side):
    path = write_raster(tmp_path / "a.tif", 64, 48, 3)
    with Scene.open(path, settings=settings) as scene, pytest.raises(BoxError, match="max_side"):
        scene.render(None, max_side=side)


def test_input_is_never_modified(tmp_path, settings):
    path = write_raster(tmp_path / "a.tif", 64, 48, 3)
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    with Scene.open(path, settings=settings) as scene:
        scene.render()
        scene.render(PixelBox(0, 0, 10, 10))
        scene.info()
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["a.tif"]


# ---- no process-wide GDAL/logging side effects (issue #13) ------------------------------------

_SNAPSHOT = """
import json, logging, os, sys
import rasterio
from rasterio.env import get_gdal_config

NAMES = ("rasterio", "rasterio._env", "rasterio._err", "rasterio._io", "rasterio._base")


def snapshot():
    loggers = {n: [logging.getLogger(n).level, len(logging.getLogger(n).filters)] for n in NAMES}
    return {"environ": dict(os.environ), "loggers": loggers, "cpl_log": get_gdal_config("CPL_LOG")}


before = snapshot()
import zoomearth.scene
import zoomearth.scene.scene
after_import = snapshot()
after_use = None
if len(sys.argv) > 1:
    from zoomearth.geometry import PixelBox
    with zoomearth.scene.Scene.open(sys.argv[1]) as scene:
        scene.render()
        scene.render(PixelBox(0, 0, 10, 10))
    after_use = snapshot()
print(json.dumps({"before": before, "after_import": after_import, "after_use": after_use}))
"""


def test_importing_scene_leaves_environ_and_loggers_alone(tmp_path):
    path = write_raster(tmp_path / "a.tif", 64, 48, 3)
    proc = subprocess.run(
        [sys.executable, "-c", _SNAPSHOT, str(path)], capture_output=True, text=True, check=True
    )
    result = json.loads(proc.stdout)
    assert result["after_import"] == result["before"]
    assert result["before"]["cpl_log"] is None
    # Using a scene does not leave anything behind either (the quieting is scoped).
    assert result["after_use"]["loggers"] == result["before"]["loggers"]
    assert result["after_use"]["environ"] == result["before"]["environ"]
    assert result["after_use"]["cpl_log"] is None


def _rasterio_record(logger_name: str = "rasterio._err") -> None:
    logging.getLogger(logger_name).info("GDAL signalled an error: test")


def test_quiet_gdal_is_scoped_to_the_thread_and_the_block(caplog):
    caplog.set_level(logging.DEBUG, logger="rasterio")
    logger = logging.getLogger("rasterio._err")
    level = logger.level
    with quiet_gdal():
        with quiet_gdal():  # nesting is fine
            _rasterio_record()
        _rasterio_record("rasterio._env")
        other = threading.Thread(target=_rasterio_record)  # another thread is not muted
        other.start()
        other.join()
        logging.getLogger("rasterio._err").critical("still shown")
    assert [r.getMessage() for r in caplog.records] == [
        "GDAL signalled an error: test",
        "still shown",
    ]
    assert caplog.records[0].thread != threading.get_ident()
    assert logger.filters == [] and logger.level == level
    caplog.clear()
    _rasterio_record()  # after the block, rasterio's logging is the application's again
    assert len(caplog.records) == 1


def test_read_errors_do_not_leak_gdal_messages(tmp_path, settings, caplog):
    src = write_raster(tmp_path / "a.tif", 256, 256, 3, block=64, compress="deflate")
    raw = bytearray(src.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 2000] = bytes(2000)  # scrambled tiles, headers intact
    bad = tmp_path / "bad.tif"
    bad.write_bytes(bytes(raw))
    caplog.set_level(logging.DEBUG, logger="rasterio")

    def gdal_records() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name in RASTERIO_LOGGERS]

    with Scene.open(bad, settings=settings) as scene, pytest.raises(SceneReadError):
        scene.read(PixelBox(0, 0, 256, 256))
    assert gdal_records() == []
    with rasterio.open(bad) as ds, pytest.raises(rasterio.errors.RasterioIOError):
        ds.read()  # outside the package's own calls, GDAL's messages reach rasterio's loggers
    assert gdal_records()


def test_gdal_block_cache_is_set_in_megabytes(tmp_path):
    """GDAL_CACHEMAX as an integer counts bytes: 128 (MB) must become 128 MiB, not 128 bytes.

    In a fresh process (the cache is configured once per process): the scene engine's cache, and
    a writer's ``rasterio.Env`` through :func:`zoomearth.scene.gdal.cache_max`.
    """
    import subprocess
    import sys

    code = (
        "import rasterio, numpy as np\n"
        "from rasterio.env import get_gdal_config\n"
        "from zoomearth.config import load_settings\n"
        "from zoomearth.scene import Scene\n"
        "from zoomearth.scene.gdal import cache_max\n"
        "import sys\n"
        "s = load_settings(environ={})\n"
        "Scene.open(sys.argv[1], settings=s, progress=False)\n"
        "print(get_gdal_config('GDAL_CACHEMAX'), s.gdal_cache_mb)\n"
        "with rasterio.Env(GDAL_CACHEMAX=cache_max(256)):\n"
        "    print(get_gdal_config('GDAL_CACHEMAX'))\n"
    )
    path = tmp_path / "a.tif"
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=1,
                       dtype="uint8") as ds:
        ds.write(np.zeros((1, 8, 8), np.uint8))
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, check=True, timeout=120).stdout.split()
    assert int(out[0]) == int(out[1]) * 1024 * 1024
    assert int(out[2]) == 256 * 1024 * 1024
