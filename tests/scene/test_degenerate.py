"""Degenerate rasters (issue #14): no valid pixels, infinities, complex values, georeferences that
cannot be right, and the formats ``zoomearth view`` writes.

Every raster is a real file written with rasterio in ``tmp_path``; the command-line tests run
``python -m zoomearth.cli`` in a subprocess, so what they check is what a user sees.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image

from tests.scene.rasters import write_raster
from zoomearth.errors import GeoreferenceError, SceneReadError
from zoomearth.geometry import (
    MapBox,
    PixelBox,
    invert_transform,
    is_degenerate_transform,
    map_to_full,
    map_to_pixel,
)
from zoomearth.scene import Scene
from zoomearth.scene.scene import VIEW_FORMATS, SceneWarning, georeference_warnings

UTM_ORIGIN = Affine(0.5, 0, 500_000, 0, -0.5, 5_000_000)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zoomearth.cli", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=120,  # a hang guard, not a timing
    )


def float_raster(
    path: Path,
    data: np.ndarray,
    *,
    dtype: str = "float32",
    crs: str | None = "EPSG:32633",
    transform: Affine = UTM_ORIGIN,
    nodata: float | None = None,
) -> Path:
    """A single-band (or ``data.shape[0]``-band) raster holding exactly ``data``."""
    count, height, width = data.shape
    profile = {"driver": "GTiff", "width": width, "height": height, "count": count}
    profile |= {"dtype": dtype, "crs": crs, "transform": transform}
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        # numpy has no complex int16: GDAL converts complex64 values on writing.
        dst.write(data.astype("complex64" if dtype == "complex_int16" else dtype))
    return path


def zero_pixel_vrt(tmp_path: Path) -> Path:
    """A VRT whose geotransform has a = 0 (GeoTIFF cannot store one: GDAL writes a tie point)."""
    source = write_raster(tmp_path / "source.tif", 32, 32, 1)
    vrt = tmp_path / "zero.vrt"
    vrt.write_text(
        '<VRTDataset rasterXSize="32" rasterYSize="32">\n'
        "  <SRS>EPSG:32633</SRS>\n"
        "  <GeoTransform>500000, 0, 0, 5000000, 0, -0.5</GeoTransform>\n"
        '  <VRTRasterBand dataType="Byte" band="1"><SimpleSource>\n'
        f"    <SourceFilename>{source}</SourceFilename><SourceBand>1</SourceBand>\n"
        "  </SimpleSource></VRTRasterBand>\n"
        "</VRTDataset>\n"
    )
    return vrt


# ----------------------------------------------------------------------------------------------
# NaN and +-Inf
# ----------------------------------------------------------------------------------------------
def test_read_masks_nan_and_both_infinities(tmp_path, settings):
    data = np.arange(64, dtype="float32").reshape(1, 8, 8)
    data[0, 0, 0] = np.nan
    data[0, 1, 1] = np.inf
    data[0, 2, 2] = -np.inf
    path = float_raster(tmp_path / "f.tif", data)
    with Scene.open(path, settings=settings) as scene:
        values = scene.read()
    mask = np.ma.getmaskarray(values)[0]
    expected = np.zeros((8, 8), bool)
    expected[0, 0] = expected[1, 1] = expected[2, 2] = True
    assert np.array_equal(mask, expected)
    assert np.array_equal(values.compressed(), data[0][~expected])


def test_infinite_pixels_are_invalid_and_do_not_skew_the_stretch(tmp_path, settings):
    data = np.tile(np.linspace(0, 100, 32, dtype="float32"), (1, 32, 1))
    data[0, :4] = np.inf
    data[0, 4:8] = -np.inf
    path = float_raster(tmp_path / "inf.tif", data)
    with Scene.open(path, settings=settings) as scene:
        view = scene.render()
    assert not view.valid[:8].any() and view.valid[8:].all()
    assert (view.rgb[:8] == 0).all()  # invalid pixels are black, not +Inf -> white
    grey = view.rgb[8:, :, 0]
    assert grey.min() == 0 and grey.max() == 255  # the finite values get the whole range


def test_all_infinite_raster_has_no_valid_pixel(tmp_path, settings):
    data = np.full((1, 16, 16), np.inf, dtype="float32")
    data[0, ::2] = -np.inf
    path = float_raster(tmp_path / "allinf.tif", data)
    with Scene.open(path, settings=settings) as scene:
        assert np.ma.getmaskarray(scene.read()).all()
        view = scene.render()
    assert not view.valid.any() and view.valid_fraction == 0.0


def test_float64_extremes_render_without_numpy_warnings(tmp_path, settings):
    data = (np.linspace(-1.0, 1.0, 256) * 1e308).reshape(1, 16, 16)
    path = float_raster(tmp_path / "huge.tif", data, dtype="float64")
    with Scene.open(path, settings=settings) as scene, warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow in a cast would raise here
        view = scene.render()
    grey = view.rgb[..., 0].astype(int)
    assert view.valid.all()
    assert grey[0, 0] == 0 and grey[-1, -1] == 255
    assert (np.diff(grey.ravel()) >= 0).all()  # ordered values stay ordered


# ----------------------------------------------------------------------------------------------
# Complex values
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["complex64", "complex_int16"])
def test_complex_rasters_are_refused_at_open(tmp_path, settings, dtype):
    data = np.full((1, 8, 8), 3 + 4j, dtype="complex64")
    path = float_raster(tmp_path / f"{dtype}.tif", data, dtype=dtype)
    with pytest.raises(SceneReadError) as info:
        Scene.open(path, settings=settings)
    text = str(info.value)
    assert "\n" not in text
    assert f"complex values ({dtype}" in text and "not supported" in text
    assert "gdal_calc.py -A " in text and '--calc "abs(A)"' in text


def test_view_of_complex_raster_is_one_line_without_numpy_warning(tmp_path):
    data = np.full((1, 8, 8), 3 + 4j, dtype="complex64")
    path = float_raster(tmp_path / "slc.tif", data, dtype="complex64")
    out = tmp_path / "v.png"
    proc = run_cli("view", str(path), "-o", str(out))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("zoomearth view: error: ") and "complex values" in lines[0]
    assert "Warning" not in proc.stderr and not out.exists()


# ----------------------------------------------------------------------------------------------
# zoomearth view: no valid pixels
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["nan", "inf", "nodata"])
def test_view_of_a_region_without_valid_pixels_fails_clearly(tmp_path, kind):
    if kind == "nodata":
        path = float_raster(tmp_path / "nd.tif", np.zeros((1, 16, 16)), dtype="uint16", nodata=0)
    else:
        path = float_raster(tmp_path / f"{kind}.tif", np.full((1, 16, 16), float(kind)))
    out = tmp_path / "new-folder" / "view.png"
    proc = run_cli("view", str(path), "-o", str(out))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"zoomearth view: error: {path} has no valid pixels in the requested region "
        "[0, 0, 16, 16] (all NaN / Inf / nodata / transparent); nothing to show. Choose another "
        "region (--box), or check the nodata value with 'zoomearth info'."
    )
    assert not out.parent.exists()  # nothing written, no empty folder left


@pytest.mark.parametrize(("invalid_rows", "warns"), [(12, True), (4, False)])
def test_view_warns_when_most_of_the_region_is_invalid(tmp_path, invalid_rows, warns):
    data = np.tile(np.linspace(0, 1, 16, dtype="float32"), (1, 16, 1))
    data[0, :invalid_rows] = np.nan
    path = float_raster(tmp_path / "part.tif", data)
    out = tmp_path / "v.png"
    proc = run_cli("view", str(path), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert Image.open(out).size == (16, 16)
    if warns:
        assert proc.stderr.strip() == (
            "warning: only 25.0% of the pixels in region [0, 0, 16, 16] are valid; the rest "
            "(NaN / Inf / nodata / transparent) are black in the output."
        )
    else:
        assert proc.stderr == ""


# ----------------------------------------------------------------------------------------------
# Georeferences that cannot be right
# ----------------------------------------------------------------------------------------------
def test_geographic_crs_with_metre_bounds_warns_at_open_and_in_info(tmp_path, settings):
    metres_as_degrees = Affine(1.0, 0, 500_000, 0, -1.0, 4_000_000)
    path = float_raster(
        tmp_path / "deg.tif", np.ones((1, 32, 32)), crs="EPSG:4326", transform=metres_as_degrees
    )
    expected = (
        f"{path}: CRS EPSG:4326 is geographic (degrees) but the bounds look like metres (x up to "
        "500,032, y up to 4,000,000): the georeference is probably wrong; areas and coordinates "
        f"will be wrong. Fix the CRS (e.g. gdal_edit.py -a_srs EPSG:32633 {path})."
    )
    with pytest.warns(SceneWarning) as record:
        scene = Scene.open(path, settings=settings)
    with scene:
        assert [str(w.message) for w in record] == [expected]
        assert scene.warnings == [expected]
        assert scene.info()["warnings"] == [expected]


def test_cli_shows_a_scene_warning_as_one_line(tmp_path):
    metres_as_degrees = Affine(1.0, 0, 500_000, 0, -1.0, 4_000_000)
    path = float_raster(
        tmp_path / "deg.tif", np.ones((1, 32, 32)), crs="EPSG:4326", transform=metres_as_degrees
    )
    proc = run_cli("info", str(path))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr  # no source file, no source line
    assert lines[0].startswith("zoomearth info: warning: ")
    assert "bounds look like metres (x up to 500,032" in lines[0]
    assert "EPSG:4326" in proc.stdout


@pytest.mark.parametrize(
    ("crs", "transform", "size"),
    [
        ("EPSG:32633", UTM_ORIGIN, (64, 48)),  # UTM metres
        ("EPSG:4326", Affine(1e-4, 0, 12.3, 0, -1e-4, 45.6), (64, 48)),  # degrees near Venice
        ("EPSG:4326", Affine(1.0, 0, -0.5, 0, -1.0, 90.5), (360, 181)),  # global 0..360 grid
        ("EPSG:4326", Affine(2.5, 0, -181.25, 0, -2.5, 91.25), (144, 73)),  # coarse, pole-centred
        (None, Affine.identity(), (64, 48)),  # pixel-only
    ],
)
def test_plausible_georeferences_do_not_warn(tmp_path, settings, crs, transform, size):
    width, height = size
    path = float_raster(
        tmp_path / "ok.tif", np.ones((1, height, width)), crs=crs, transform=transform
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", SceneWarning)
        with Scene.open(path, settings=settings) as scene:
            assert scene.warnings == [] and scene.info()["warnings"] == []


def test_projected_crs_with_degree_bounds_warns(tmp_path, settings):
    degrees_as_metres = Affine(1e-5, 0, 12.3, 0, -1e-5, 45.6)
    path = float_raster(
        tmp_path / "m.tif", np.ones((1, 32, 32)), crs="EPSG:32633", transform=degrees_as_metres
    )
    with pytest.warns(SceneWarning, match=r"is projected \(metre\) but the bounds look like deg"):
        Scene.open(path, settings=settings).close()


def test_zero_pixel_size_warns_at_open(tmp_path, settings):
    vrt = zero_pixel_vrt(tmp_path)
    with pytest.warns(SceneWarning, match=r"geotransform has a zero pixel size \(a=0, e=-0.5"):
        scene = Scene.open(vrt, settings=settings)
    with scene:
        assert "gdal_edit.py -a_ullr" in scene.info()["warnings"][0]
        assert scene.render().valid.all()  # pixels still render


def test_georeference_warnings_is_header_only_and_pure():
    assert georeference_warnings("x.tif", None, None, 10, 10) == []
    (note,) = georeference_warnings("x.tif", None, Affine(0, 0, 0, 0, 0, 0), 10, 10)
    assert "zero pixel size" in note


# ----------------------------------------------------------------------------------------------
# geometry: inverting a transform
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "coeffs",
    [
        (0.0, 0.0, 500_000.0, 0.0, -0.5, 5_000_000.0),  # a = 0
        (0.5, 0.0, 500_000.0, 0.0, 0.0, 5_000_000.0),  # e = 0
        (1.0, 2.0, 0.0, 2.0, 4.0, 0.0),  # rotated, collinear axes
        (0.5, 0.0, math.nan, 0.0, -0.5, 0.0),  # NaN origin
        (1e-200, 0.0, 0.0, 0.0, 1e-200, 0.0),  # determinant underflows to 0
    ],
)
def test_non_invertible_transforms_raise_a_clear_error(coeffs):
    assert is_degenerate_transform(coeffs) and is_degenerate_transform(Affine(*coeffs))
    with pytest.raises(GeoreferenceError, match="zero pixel size or is not finite"):
        invert_transform(coeffs)
    with pytest.raises(GeoreferenceError, match="gdal_edit.py -a_ullr"):
        map_to_pixel(500_000.0, 5_000_000.0, coeffs)
    with pytest.raises(GeoreferenceError):
        map_to_full(MapBox(0, 0, 1, 1), Affine(*coeffs))


def test_map_to_pixel_inverts_rotated_and_north_up_transforms():
    for transform in (UTM_ORIGIN, Affine.rotation(30) @ Affine(0.5, 0.1, 100, 0.2, -0.5, 900)):
        assert not is_degenerate_transform(transform)
        for col, row in ((0, 0), (12.5, 7.25), (-3, 1000)):
            x, y = transform @ (col, row)
            assert map_to_pixel(x, y, transform) == pytest.approx((col, row), abs=1e-6)
            assert map_to_pixel(x, y, list(transform)[:6]) == pytest.approx((col, row), abs=1e-6)
    box = PixelBox(10, 20, 30, 40)
    back = map_to_full(MapBox(500_005, 4_999_980, 500_015, 4_999_990), UTM_ORIGIN)
    assert back == box


# ----------------------------------------------------------------------------------------------
# zoomearth view: the format the extension names
# ----------------------------------------------------------------------------------------------
MAGIC = {"PNG": b"\x89PNG\r\n\x1a\n", "JPEG": b"\xff\xd8\xff", "GTiff": b"II*\x00"}


@pytest.mark.parametrize("name", ["v.png", "v.jpg", "v.JPEG", "v.tif", "v.tiff"])
def test_view_writes_the_format_its_extension_names(tmp_path, name):
    tif = write_raster(tmp_path / "a.tif", 64, 48, 3, colorinterp=["red", "green", "blue"])
    out = tmp_path / name
    proc = run_cli("view", str(tif), "--box", "16,8,48,40", "--side", "16", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    fmt = VIEW_FORMATS[out.suffix.lower()]
    assert out.read_bytes().startswith(MAGIC[fmt])
    with Image.open(out) as img:
        assert img.size == (16, 16) and img.mode == "RGB"
    if fmt == "GTiff":
        with rasterio.open(out) as ds:
            assert ds.crs.to_epsg() == 32633 and ds.count == 3 and ds.dtypes[0] == "uint8"
            # The view's pixels are 2 x 2 source pixels (0.5 m each) from column 16, row 8.
            assert ds.transform.almost_equals(Affine(1.0, 0, 500_008, 0, -1.0, 4_999_996))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporaries


def test_view_geotiff_masks_invalid_pixels(tmp_path, settings):
    data = np.ones((1, 16, 16), dtype="float32")
    data[0, :4] = np.nan
    path = float_raster(tmp_path / "part.tif", data)
    out = tmp_path / "v.tif"
    with Scene.open(path, settings=settings) as scene:
        scene.write_view(scene.render(), out)
    with rasterio.open(out) as ds:
        mask = ds.dataset_mask()
    assert (mask[:4] == 0).all() and (mask[4:] == 255).all()


@pytest.mark.parametrize("name", ["v.gif", "view", "v.png.bak"])
def test_view_refuses_an_extension_it_cannot_write(tmp_path, name):
    tif = write_raster(tmp_path / "a.tif", 32, 32, 3)
    out = tmp_path / name
    proc = run_cli("view", str(tif), "-o", str(out))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"zoomearth view: error: Cannot tell the image format from {str(out)!r}: name the output "
        "with one of the extensions .png, .jpg, .jpeg, .tif, .tiff (e.g. -o view.png)."
    )
    assert not out.exists()
