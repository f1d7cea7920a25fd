"""Tests of zoomearth.scene.writing: aligned, tiled, overviewed, atomic raster outputs."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image
from rasterio.control import GroundControlPoint
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from zoomearth.errors import OutputWriteError, ProtectedPathError, ZoomEarthError
from zoomearth.scene.writing import (
    DEFLATE_LEVEL,
    KEEP,
    SourceGeoref,
    TiledRasterWriter,
    atomic_path,
    output_profile,
    overview_factors,
    sweep_stale_siblings,
    write_png,
    write_window_array,
)
from zoomearth.temporaries import HOST_TAG, is_temporary_name

CRS_UTM = "EPSG:32633"


def from_origin(x0: float, y0: float, dx: float, dy: float) -> Affine:
    """North-up transform (rasterio's own helper warns about affine's ``*`` operator)."""
    return Affine(dx, 0.0, x0, 0.0, -dy, y0)


def window_transform(win: Window, t: Affine) -> Affine:
    return Affine(t.a, 0.0, t.c + win.col_off * t.a, 0.0, t.e, t.f + win.row_off * t.e)


def window_bounds(win: Window, t: Affine) -> tuple[float, float, float, float]:
    left, top = t.c + win.col_off * t.a, t.f + win.row_off * t.e
    return (left, top + win.height * t.e, left + win.width * t.a, top)


# GeoTIFF tags that carry a georeference: ModelPixelScale, ModelTiepoint, ModelTransformation.
GEOTIFF_TAGS = {33550, 33922, 34264}


def _pattern(bands: int, h: int, w: int, dtype: str) -> np.ndarray:
    """A deterministic pattern that tells where each pixel came from."""
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.stack([(xx * 3 + yy * 7 + b * 11) % 251 for b in range(bands)])
    return out.astype(dtype)


def _make_source(
    path: Path,
    *,
    width: int = 1000,
    height: int = 800,
    bands: int = 3,
    dtype: str = "uint8",
    nodata: float | None = None,
    georef: bool = True,
) -> Path:
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": bands,
        "dtype": dtype,
        "nodata": nodata,
    }
    if georef:
        profile.update(crs=CRS_UTM, transform=from_origin(500000, 5000000, 0.5, 0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as ds:
            ds.write(_pattern(bands, height, width, dtype))
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _only(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


# ---- georeference -----------------------------------------------------------------------------


def test_window_output_is_aligned_to_the_source_window(tmp_path: Path) -> None:
    src_path = _make_source(tmp_path / "src.tif")
    win = Window(100, 50, 300, 200)
    with rasterio.open(src_path) as src:
        data = src.read(window=win)
        out = write_window_array(tmp_path / "out" / "crop.tif", data, source=src, window=win)
        expected_transform = window_transform(win, src.transform)
        expected_bounds = window_bounds(win, src.transform)
        src_crs = src.crs
    with rasterio.open(out) as ds:
        assert ds.crs == src_crs
        assert ds.transform.almost_equals(expected_transform)
        assert tuple(ds.bounds) == pytest.approx(expected_bounds)
        assert (ds.width, ds.height, ds.count) == (300, 200, 3)
        np.testing.assert_array_equal(ds.read(), data)
        assert ds.tags()["ZOOMEARTH_SOURCE_WINDOW"] == "100,50,300,200"
        assert ds.tags()["ZOOMEARTH_SOURCE"] == "src.tif"


def test_non_georeferenced_source_gives_pixel_only_output(tmp_path: Path) -> None:
    png = tmp_path / "photo.png"
    rgb = np.moveaxis(_pattern(3, 600, 700, "uint8"), 0, -1)
    cv2.imwrite(str(png), rgb[..., ::-1])
    win = Window(10, 20, 400, 300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(png) as src:
            assert SourceGeoref.from_dataset(src).is_georeferenced is False
            data = src.read(window=win)
            out = write_window_array(tmp_path / "crop.tif", data, source=src, window=win)
    with pytest.warns(NotGeoreferencedWarning), rasterio.open(out) as ds:
        assert ds.crs is None
        assert ds.transform.is_identity
        assert not ds.gcps[0]
        np.testing.assert_array_equal(ds.read(), data)
        assert ds.tags()["ZOOMEARTH_SOURCE_WINDOW"] == "10,20,400,300"
    with Image.open(out) as im:  # GDAL wrote no georeferencing tags at all
        assert not GEOTIFF_TAGS & set(im.tag_v2.keys())


def test_gcps_are_shifted_into_the_window_frame(tmp_path: Path) -> None:
    gcps = [
        GroundControlPoint(row=0, col=0, x=10.0, y=50.0),
        GroundControlPoint(row=400, col=500, x=11.0, y=49.0),
        GroundControlPoint(row=0, col=500, x=11.0, y=50.0),
    ]
    src = SourceGeoref(gcps=tuple(gcps), gcps_crs=rasterio.crs.CRS.from_epsg(4326), count=1)
    out = write_window_array(
        tmp_path / "g.tif", np.zeros((1, 100, 100), np.uint8), source=src, window=(50, 40, 100, 100)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(out) as ds:
            got, crs = ds.gcps
    assert crs.to_epsg() == 4326
    assert [(g.row, g.col) for g in got] == [(-40, -50), (360, 450), (-40, 450)]


# ---- bands, dtype, nodata -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "nodata", "bands"),
    [("uint8", 0, 3), ("uint16", 65535, 4), ("float32", float("nan"), 1)],
)
def test_bands_dtype_and_nodata_are_kept(
    tmp_path: Path, dtype: str, nodata: float, bands: int
) -> None:
    src_path = _make_source(tmp_path / "src.tif", bands=bands, dtype=dtype, nodata=nodata)
    win = Window(0, 0, 513, 300)  # not a multiple of the block size
    with rasterio.open(src_path) as src:
        data = src.read(window=win)
        if dtype == "float32":
            data[0, :5, :5] = np.nan
        out = write_window_array(tmp_path / "o.tif", data, source=src, window=win)
    with rasterio.open(out) as ds:
        assert ds.count == bands
        assert ds.dtypes == (dtype,) * bands
        if np.isnan(nodata):
            assert np.isnan(ds.nodata)
        else:
            assert ds.nodata == nodata
        np.testing.assert_array_equal(ds.read(), data)
        assert ds.profile["compress"] == "deflate"
        assert ds.profile["tiled"]


def test_dtype_and_nodata_can_be_overridden_and_lossy_casts_are_refused(tmp_path: Path) -> None:
    src = SourceGeoref(crs=CRS_UTM, transform=from_origin(0, 0, 1, 1), dtype="uint8", nodata=0)
    mask = np.ones((1, 64, 64), dtype=np.float64)
    with pytest.raises(ValueError, match="dtype='float64'"):
        write_window_array(tmp_path / "m.tif", mask, source=src, window=(0, 0, 64, 64))
    assert _only(tmp_path) == []
    out = write_window_array(
        tmp_path / "m.tif", mask, source=src, window=(0, 0, 64, 64), dtype="float32", nodata=None
    )
    with rasterio.open(out) as ds:
        assert ds.dtypes == ("float32",)
        assert ds.nodata is None


# ---- layout ---------------------------------------------------------------------------------


def test_overviews_are_built(tmp_path: Path) -> None:
    src = SourceGeoref(crs=CRS_UTM, transform=from_origin(0, 0, 1, 1), count=1)
    data = _pattern(1, 1000, 1200, "uint8")
    out = write_window_array(
        tmp_path / "m.tif",
        data,
        source=src,
        window=(0, 0, 1200, 1000),
        overview_resampling="nearest",
    )
    with rasterio.open(out) as ds:
        assert ds.overviews(1) == [2, 4]
        assert ds.block_shapes == [(512, 512)]
        assert ds.tags(ns="rio_overview")["resampling"] == "nearest"
        small = ds.read(1, out_shape=(250, 300))  # served from the 4x overview
        assert small.shape == (250, 300)


def test_overview_factors() -> None:
    assert overview_factors(20000, 20000) == [2, 4, 8, 16, 32, 64]
    assert overview_factors(510, 300) == []
    assert overview_factors(512, 100) == [2]


def test_output_profile_compression_rules() -> None:
    base = {"width": 100, "height": 50, "crs": None, "transform": None, "nodata": None}
    jpeg = output_profile(base, count=3, dtype="uint8", compress="jpeg", quality=85)
    assert jpeg["compress"] == "jpeg"
    assert jpeg["photometric"] == "YCBCR"
    assert jpeg["jpeg_quality"] == 85
    assert jpeg["BIGTIFF"] == "IF_SAFER"
    assert "crs" not in jpeg and "transform" not in jpeg  # pixel-only
    with pytest.warns(UserWarning, match="JPEG"):
        u16 = output_profile(base, count=3, dtype="uint16", compress="jpeg")
    assert (u16["compress"], u16["predictor"]) == ("deflate", 2)
    f32 = output_profile(base, count=1, dtype="float32")
    assert (f32["compress"], f32["predictor"]) == ("deflate", 3)
    rgb = output_profile(base, count=3, dtype="uint8")
    assert rgb["photometric"] == "RGB"
    geo = output_profile(
        base, count=1, dtype="uint8", crs=CRS_UTM, transform=from_origin(0, 0, 1, 1)
    )
    assert geo["crs"].to_epsg() == 32633
    with pytest.raises(ValueError, match="count"):
        output_profile(base, dtype="uint8")
    assert output_profile({**base, "count": 2, "dtype": "int16"}, nodata=KEEP)["count"] == 2
    assert (f32["zlevel"], output_profile(base, count=1, dtype="uint8", zlevel=9)["zlevel"]) == (
        DEFLATE_LEVEL,
        9,
    )
    with pytest.raises(ValueError, match="zlevel must be 1 to 9"):
        output_profile(base, count=1, dtype="uint8", zlevel=0)


def test_writer_deflate_level_reaches_the_file(tmp_path: Path) -> None:
    """A higher level gives a smaller file with the same pixels (the level is used, not dropped)."""
    src = SourceGeoref(crs=CRS_UTM, transform=from_origin(0, 0, 1, 1), count=3)
    rng = np.random.default_rng(0)
    # Smooth texture with noise: compresses, and differently at levels 1 and 9.
    yy, xx = np.mgrid[0:1024, 0:1024]
    base = (np.sin(xx / 37.0) * 60 + np.cos(yy / 23.0) * 60 + 128).astype(np.int16)
    data = np.clip(base[None] + rng.integers(-6, 7, (3, 1024, 1024)), 0, 255).astype(np.uint8)
    sizes = {}
    for level in (1, 9):
        path = tmp_path / f"z{level}.tif"
        with TiledRasterWriter.for_window(
            path, src, (0, 0, 1024, 1024), zlevel=level, overviews=False
        ) as w:
            w.write(data, (0, 0, 1024, 1024))
        with rasterio.open(path) as ds:
            assert ds.compression is not None and ds.compression.name == "deflate"
            np.testing.assert_array_equal(ds.read(), data)
        sizes[level] = path.stat().st_size
    assert sizes[9] < sizes[1]


def test_jpeg_rgb_output(tmp_path: Path) -> None:
    src = SourceGeoref(crs=CRS_UTM, transform=from_origin(0, 0, 1, 1), count=3)
    data = np.full((3, 600, 600), 120, dtype=np.uint8)
    out = write_window_array(
        tmp_path / "j.tif", data, source=src, window=(0, 0, 600, 600), compress="jpeg"
    )
    with rasterio.open(out) as ds:
        assert ds.profile["compress"] == "jpeg"
        assert ds.profile["photometric"] == "ycbcr"
        assert abs(int(ds.read(1)[300, 300]) - 120) <= 2
        assert ds.overviews(1) == [2]


# ---- streaming writer -----------------------------------------------------------------------


def test_tiled_writer_streams_windows(tmp_path: Path) -> None:
    w, h = 1300, 700
    full = _pattern(2, h, w, "uint16")
    tr = from_origin(1000, 2000, 2, 2)
    with TiledRasterWriter(
        tmp_path / "big.tif",
        width=w,
        height=h,
        count=2,
        dtype="uint16",
        crs=CRS_UTM,
        transform=tr,
        nodata=0,
        progress=True,
    ) as wr:
        assert wr.temp_path is not None and wr.temp_path.name.startswith(".big.tif.tmp-")
        assert not (tmp_path / "big.tif").exists()
        for r in range(0, h, 256):
            for c in range(0, w, 256):
                win = Window(c, r, min(256, w - c), min(256, h - r))
                wr.write(full[:, r : r + win.height, c : c + win.width], win)
    assert wr.finished
    assert _only(tmp_path) == ["big.tif"]
    with rasterio.open(tmp_path / "big.tif") as ds:
        np.testing.assert_array_equal(ds.read(), full)
        assert ds.transform == tr
        assert ds.overviews(1) == [2, 4]


def test_tiled_writer_for_window_matches_source(tmp_path: Path) -> None:
    src_path = _make_source(tmp_path / "src.tif", bands=1, dtype="uint16", nodata=7)
    with rasterio.open(src_path) as src:
        with TiledRasterWriter.for_window(
            tmp_path / "o.tif", src, Window(500, 400, 300, 200)
        ) as wr:
            wr.write(np.zeros((200, 300), dtype=np.uint8), (0, 0, 300, 200))  # safe cast
        with rasterio.open(tmp_path / "o.tif") as ds:
            assert ds.dtypes == ("uint16",)
            assert ds.nodata == 7
            assert ds.bounds == pytest.approx(
                window_bounds(Window(500, 400, 300, 200), src.transform)
            )


def test_failure_mid_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.tif"
    with pytest.raises(RuntimeError, match="tool crashed"):
        with TiledRasterWriter(target, width=1024, height=1024, count=3, dtype="uint8") as wr:
            wr.write(np.zeros((3, 512, 512), np.uint8), Window(0, 0, 512, 512))
            raise RuntimeError("tool crashed")
    assert _only(tmp_path) == []
    with pytest.raises(ValueError, match="does not match the window"):
        with TiledRasterWriter(target, width=1024, height=1024, count=3, dtype="uint8") as wr:
            wr.write(np.zeros((3, 10, 10), np.uint8), Window(0, 0, 512, 512))
    with pytest.raises(ValueError, match="outside"):
        with TiledRasterWriter(target, width=100, height=100, count=1, dtype="uint8") as wr:
            wr.write(np.zeros((1, 64, 64), np.uint8), Window(64, 0, 64, 64))
    assert _only(tmp_path) == []


def test_failure_keeps_an_existing_output(tmp_path: Path) -> None:
    target = tmp_path / "out.tif"
    target.write_bytes(b"previous result")
    with pytest.raises(KeyboardInterrupt):
        with TiledRasterWriter(target, width=64, height=64, count=1, dtype="uint8") as wr:
            wr.write(np.ones((1, 64, 64), np.uint8), Window(0, 0, 64, 64))
            raise KeyboardInterrupt
    assert target.read_bytes() == b"previous result"
    assert _only(tmp_path) == ["out.tif"]


def test_writer_needs_the_context(tmp_path: Path) -> None:
    wr = TiledRasterWriter(tmp_path / "x.tif", width=64, height=64, count=1, dtype="uint8")
    with pytest.raises(OutputWriteError, match="context manager"):
        wr.write(np.zeros((64, 64), np.uint8), (0, 0, 64, 64))


# ---- atomic paths and protection ------------------------------------------------------------


def test_atomic_path_renames_on_success_and_cleans_on_error(tmp_path: Path) -> None:
    final = tmp_path / "sub" / "a.tif"
    with atomic_path(final) as tmp:
        assert tmp.parent == final.parent and tmp.name.startswith(".a.tif.tmp-")
        tmp.write_bytes(b"new")
        Path(str(tmp) + ".aux.xml").write_text("<PAMDataset/>")
    assert final.read_bytes() == b"new"
    assert _only(final.parent) == ["a.tif", "a.tif.aux.xml"]

    with pytest.raises(ZeroDivisionError):
        with atomic_path(final) as tmp:
            tmp.write_bytes(b"half")
            Path(str(tmp) + ".ovr").write_bytes(b"x")
            _ = 1 / 0
    assert final.read_bytes() == b"new"
    assert _only(final.parent) == ["a.tif", "a.tif.aux.xml"]

    # A new version without a sidecar removes the stale one, which described the old file.
    with atomic_path(final) as tmp:
        tmp.write_bytes(b"newer")
    assert _only(final.parent) == ["a.tif"]

    with pytest.raises(OutputWriteError, match="Nothing was written"):
        with atomic_path(final):
            pass

    # A failing rename (here: the destination is a directory) leaves no temporary file either.
    (final.parent / "dir.tif").mkdir()
    with pytest.raises(OSError):
        with atomic_path(final.parent / "dir.tif") as tmp:
            tmp.write_bytes(b"x")
    assert _only(final.parent) == ["a.tif", "dir.tif"]


def test_protected_input_is_refused_and_untouched(tmp_path: Path) -> None:
    src_path = _make_source(tmp_path / "in.tif")
    before = _sha(src_path)
    data = np.zeros((3, 100, 100), dtype=np.uint8)
    with rasterio.open(src_path) as src:
        with pytest.raises(ProtectedPathError, match="never overwrite"):
            write_window_array(src_path, data, source=src, window=(0, 0, 100, 100))
        # The same file through another spelling, a symlink and a hard link.
        odd = tmp_path / "." / "sub" / ".." / "in.tif"
        (tmp_path / "sub").mkdir()
        link = tmp_path / "link.tif"
        link.symlink_to(src_path)
        hard = tmp_path / "hard.tif"
        os.link(src_path, hard)
        for alias in (odd, link, hard):
            with pytest.raises(ProtectedPathError):
                write_window_array(alias, data, source=src, window=(0, 0, 100, 100))
    with pytest.raises(ProtectedPathError):
        write_png(hard, np.zeros((4, 4, 3), np.uint8), protect=[src_path])
    with pytest.raises(ProtectedPathError):
        with atomic_path(src_path, protect=[str(src_path)]):
            pytest.fail("the body must not run")
    assert _sha(src_path) == before
    assert _only(tmp_path) == ["hard.tif", "in.tif", "link.tif", "sub"]
    assert issubclass(ProtectedPathError, ZoomEarthError)
    assert issubclass(ProtectedPathError, ValueError)


# ---- PNG ------------------------------------------------------------------------------------


def test_write_png_round_trip(tmp_path: Path) -> None:
    rgb = np.moveaxis(_pattern(3, 40, 60, "uint8"), 0, -1)
    out = write_png(tmp_path / "p" / "view.png", rgb)
    back = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)[..., ::-1]
    np.testing.assert_array_equal(back, rgb)
    grey = write_png(tmp_path / "g.png", rgb[..., 0])
    np.testing.assert_array_equal(cv2.imread(str(grey), cv2.IMREAD_UNCHANGED), rgb[..., 0])
    with pytest.raises(ValueError, match="uint8"):
        write_png(tmp_path / "bad.png", rgb.astype(np.float32))
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["g.png", "view.png"]


def test_source_georef_coerce(tmp_path: Path) -> None:
    src_path = _make_source(tmp_path / "s.tif", bands=2, dtype="int16", nodata=-1)
    from_path = SourceGeoref.coerce(src_path)
    assert (from_path.count, from_path.dtype, from_path.nodata) == (2, "int16", -1)
    assert from_path.path == src_path
    assert from_path.is_georeferenced

    class LookAlike:
        crs = CRS_UTM
        transform = from_origin(0, 10, 1, 1)
        nodata = None
        dtype = np.uint8

    la = SourceGeoref.coerce(LookAlike())
    assert la.crs.to_epsg() == 32633 and la.dtype == "uint8"


def test_four_band_uint8_output_is_not_tagged_as_alpha(tmp_path: Path) -> None:
    # GDAL's default for 4-band uint8 GeoTIFF is RGBA, which would turn a NIR band into a mask.
    out = tmp_path / "rgbn.tif"
    data = np.full((4, 32, 32), 7, np.uint8)
    with TiledRasterWriter(out, width=32, height=32, count=4, dtype="uint8") as writer:
        writer.write(data, Window(0, 0, 32, 32))
    with rasterio.open(out) as ds:
        assert "alpha" not in [c.name for c in ds.colorinterp]
        assert ds.read(4, masked=True).mask.sum() == 0


# ---- owner-named temporaries, litter of killed writers, failed writes -------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temporaries_name_their_owner(tmp_path: Path) -> None:
    final = tmp_path / "a.tif"
    seen: list[str] = []
    with TiledRasterWriter(final, width=64, height=64, count=1, dtype="uint8") as wr:
        assert wr.temp_path is not None
        seen.append(wr.temp_path.name)
        wr.write(np.ones((64, 64), np.uint8), (0, 0, 64, 64))
    with atomic_path(tmp_path / "b.json") as tmp:
        seen.append(tmp.name)
        tmp.write_text("{}")
    assert seen[0].startswith(f".a.tif.tmp-{HOST_TAG}-{os.getpid()}-") and seen[0].endswith(".tif")
    assert seen[1].startswith(f".b.json.tmp-{HOST_TAG}-{os.getpid()}-")
    assert all(is_temporary_name(n) for n in seen)
    assert _only(tmp_path) == ["a.tif", "b.json"]


def test_a_write_removes_its_outputs_litter_of_dead_processes_only(tmp_path: Path) -> None:
    dead = _dead_pid()
    final = tmp_path / "out.tif"
    stale = tmp_path / f".out.tif.tmp-{HOST_TAG}-{dead}-0123456789ab.tif"
    stale_side = tmp_path / f".out.tif.tmp-{HOST_TAG}-{dead}-0123456789ab.tif.aux.xml"
    live = tmp_path / f".out.tif.tmp-{HOST_TAG}-{os.getppid()}-0123456789ab.tif"
    other = tmp_path / f".other.tif.tmp-{HOST_TAG}-{dead}-0123456789ab.tif"
    for p in (stale, stale_side, live, other):
        p.write_bytes(b"partial")
    assert sweep_stale_siblings(final) == 2
    with atomic_path(final) as tmp:
        tmp.write_bytes(b"new")
    # The writer's own litter went; a live process's file and another output's stay.
    assert _only(tmp_path) == sorted(["out.tif", live.name, other.name])


def test_failed_write_removes_the_folders_it_created(tmp_path: Path) -> None:
    final = tmp_path / "a" / "b" / "out.png"
    with pytest.raises(ZeroDivisionError), atomic_path(final) as tmp:
        tmp.write_bytes(b"x")
        _ = 1 / 0
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "keep").mkdir()
    with pytest.raises(ZeroDivisionError), atomic_path(tmp_path / "keep" / "c" / "o.png"):
        _ = 1 / 0
    assert [p.name for p in tmp_path.iterdir()] == ["keep"]
    assert list((tmp_path / "keep").iterdir()) == []


def test_nothing_written_names_the_output_not_the_temporary(tmp_path: Path) -> None:
    final = tmp_path / "x.tif"
    with pytest.raises(OutputWriteError) as info, atomic_path(final):
        pass
    assert str(final) in str(info.value) and ".tmp" not in str(info.value)


def test_incomplete_gdal_file_is_never_renamed(tmp_path: Path, monkeypatch) -> None:
    # GDAL's failed block writes only reach stderr; the closed file is checked block by block.
    import zoomearth.scene.writing as writing

    final = tmp_path / "out.tif"
    final.write_bytes(b"previous result")

    def truncating_check(path: Path) -> str | None:
        with open(path, "r+b") as fh:  # what a full disk leaves: the tail never arrived
            fh.truncate(path.stat().st_size // 2)
        return real_check(path)

    real_check = writing.tiff_block_problem
    monkeypatch.setattr(writing, "tiff_block_problem", truncating_check)
    with pytest.raises(OutputWriteError) as info:
        with TiledRasterWriter(final, width=512, height=512, count=3, dtype="uint8") as wr:
            wr.write(np.random.default_rng(0).integers(0, 256, (3, 512, 512), np.uint8),
                     (0, 0, 512, 512))  # fmt: skip
    assert f"Writing {final} failed (incomplete file: " in str(info.value)
    assert final.read_bytes() == b"previous result"
    assert _only(tmp_path) == ["out.tif"]
