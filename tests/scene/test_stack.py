"""Time stacks (zoomearth.scene.stack): dates, reference grid, warped windowed reads."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.warp import Resampling, calculate_default_transform, reproject

from tests.scene.rasters import write_raster
from zoomearth.errors import BoxError, SceneNotFoundError
from zoomearth.geometry import PixelBox
from zoomearth.scene.scene import Scene
from zoomearth.scene.stack import (
    SceneStack,
    StackDate,
    StackError,
    date_from_metadata,
    parse_date_label,
)

UTM = "EPSG:32633"
GRID = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 5_000_000.0)


def smooth(width: int, height: int, count: int = 3, seed: float = 0.0) -> np.ndarray:
    """Smooth, position-coded uint8 bands: bilinear warps keep values within a level or two."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    bands = [
        127 + 60 * np.sin((x + 7 * b + seed) / 9.0) + 60 * np.cos((y - 5 * b) / 11.0)
        for b in range(count)
    ]
    return np.clip(np.stack(bands), 0, 255).astype(np.uint8)


def write_geo(
    path: Path, data: np.ndarray, transform: Affine, crs: str = UTM, **extra: Any
) -> Path:
    count, height, width = data.shape
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": str(data.dtype),
        "crs": crs,
        "transform": transform,
        "tiled": True,
        "blockxsize": 64,
        "blockysize": 64,
        **extra,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def to_crs(src_path: Path, dst_path: Path, crs: str, resolution: float | None = None) -> Path:
    """Reproject a raster file to ``crs`` (what another provider's date looks like)."""
    with rasterio.open(src_path) as src:
        kwargs = {"resolution": resolution} if resolution else {}
        transform, width, height = calculate_default_transform(
            src.crs, crs, src.width, src.height, *src.bounds, **kwargs
        )
        out = np.zeros((src.count, height, width), src.dtypes[0])
        reproject(
            src.read(),
            out,
            src_transform=src.transform,
            src_crs=src.crs,
            dst_transform=transform,
            dst_crs=crs,
            resampling=Resampling.bilinear,
            src_nodata=src.nodata,
            dst_nodata=0,
        )
    return write_geo(dst_path, out, transform, crs, nodata=0)


@pytest.fixture()
def utm_pair(tmp_path: Path) -> tuple[Path, Path]:
    ref = write_geo(tmp_path / "site_2019-05-01.tif", smooth(256, 200), GRID)
    other = to_crs(ref, tmp_path / "site_2021-05-01.tif", "EPSG:4326")
    return ref, other


# ---------------------------------------------------------------------------------------------
# dates in names
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("m_4709963_se_14_1_20090818.tif", "2009-08-18"),
        ("S2A_MSIL2A_20200815T101031_N0214_R022.tif", "2020-08-15"),
        ("LC08_L1TP_044034_20200115_20200127_01_T1.tif", "2020-01-15"),
        ("scene_2014-06-03.tif", "2014-06-03"),
        ("scene_2014_06_03.tif", "2014-06-03"),
        ("2014.06.03.tif", "2014-06-03"),
        ("mosaic_2014-06.tif", "2014-06"),
        ("naip-2009.tif", "2009"),
        ("2009", "2009"),
        ("/data/2017/tile_x.tif", None),  # only the file's own name counts
        ("m_4709963_se_14_1.tif", None),  # a tile number is not a date
        ("scene_20090231.tif", None),  # not a real day, and no bare year either
        ("https://host/cogs/2014-06-03.tif?sig=abc", "2014-06-03"),
    ],
)
def test_parse_date_label(name: str, label: str | None) -> None:
    parsed = parse_date_label(name)
    if label is None:
        assert parsed is None
    else:
        assert parsed is not None
        assert parsed[0] == label
        assert parsed[1] == datetime.date.fromisoformat(
            label if len(label) == 10 else (label + "-01-01")[:10]
        )


def test_year_label_keeps_year_and_dates_january_first() -> None:
    assert parse_date_label("city_2009.tif") == ("2009", datetime.date(2009, 1, 1))


# ---------------------------------------------------------------------------------------------
# building stacks
# ---------------------------------------------------------------------------------------------
def test_from_sources_sorts_dates_and_keeps_the_reference(tmp_path: Path, settings) -> None:
    data = smooth(64, 48)
    new = write_geo(tmp_path / "a_2020.tif", data, GRID)
    old = write_geo(tmp_path / "b_2009.tif", data, GRID)
    mid = write_geo(tmp_path / "c_2014-06-03.tif", data, GRID)
    stack = SceneStack.from_sources(new, [old, mid], settings=settings)
    assert stack.labels == ("2009", "2014-06-03", "2020")
    assert [d.when for d in stack.dates] == [
        datetime.date(2009, 1, 1),
        datetime.date(2014, 6, 3),
        datetime.date(2020, 1, 1),
    ]
    # The reference is SCENE (the first source given), not the oldest date.
    assert stack.reference_index == 2
    assert stack.reference.path == new
    assert stack.scene(2) is stack.reference
    assert stack.dates[0].source == str(old.resolve())
    assert stack.newest_index() == 2
    assert len(stack) == 3
    # Lazily opened, then cached.
    assert stack.scene(0) is stack.scene(0)


def test_from_folder_naip(shared_data: Path, settings) -> None:
    stack = SceneStack.from_folder(shared_data / "naip", settings=settings)
    assert stack.labels == ("2009-08-18", "2014-07-20", "2017-08-27", "2020-08-31")
    # A folder's reference grid is its newest date.
    assert stack.reference_index == 3
    assert stack.reference.path.name == "m_4709963_se_14_1_20200831.tif"
    assert stack.index_of("2014") == 1
    assert stack.index_of(2020) == 3
    info = stack.info()
    assert info["reference"] == "2020-08-31"
    assert info["newest"] == "2020-08-31"
    # The NAIP years are not pixel-aligned (origins differ by 1-3 m): every other date warps.
    assert [row["on_reference_grid"] for row in info["dates"]] == [False, False, False, True]


def test_folder_errors(tmp_path: Path, settings) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a raster")
    with pytest.raises(StackError, match="No dated rasters"):
        SceneStack.from_folder(empty, settings=settings)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write_geo(mixed / "x_2010.tif", smooth(32, 32), GRID)
    write_geo(mixed / "latest.tif", smooth(32, 32), GRID)
    with pytest.raises(StackError, match=r"latest\.tif .* has no date in its name; rename it"):
        SceneStack.from_folder(mixed, settings=settings)
    with pytest.raises(SceneNotFoundError, match="No such stack folder"):
        SceneStack.from_folder(tmp_path / "absent", settings=settings)
    with pytest.raises(SceneNotFoundError, match="--stack"):
        SceneStack.from_sources(mixed / "x_2010.tif", [tmp_path / "nope.tif"], settings=settings)


def test_dates_from_metadata_labels_and_order(tmp_path: Path, settings) -> None:
    data = smooth(32, 32)
    tagged = write_geo(tmp_path / "after.tif", data, GRID)
    with rasterio.open(tagged, "r+") as ds:
        ds.update_tags(TIFFTAG_DATETIME="2021:07:04 10:00:00")
    acquired = write_geo(tmp_path / "before.tif", data, GRID)
    with rasterio.open(acquired, "r+") as ds:
        ds.update_tags(ns="IMAGERY", ACQUISITIONDATETIME="2018-03-02T09:15:00Z")
    plain = write_geo(tmp_path / "plain.tif", data, GRID)

    assert date_from_metadata(Scene.open(tagged, settings=settings)) == (
        "2021-07-04",
        datetime.date(2021, 7, 4),
    )
    stack = SceneStack.from_sources(tagged, [acquired], settings=settings)
    assert stack.labels == ("2018-03-02", "2021-07-04")
    assert stack.reference_index == 1

    # A source without any date: order labels, the given order kept.
    undated = SceneStack.from_sources(plain, [tagged], settings=settings)
    assert undated.labels == ("image 1", "2021-07-04")
    assert undated.dates[0].when is None
    assert undated.reference_index == 0
    assert undated.index_of("image 1") == 0

    # Labels (e.g. uploaded file names) win over the stored names.
    named = SceneStack.from_sources(
        plain, [tagged], settings=settings, labels=["upload_2001.tif", "upload_1999.tif"]
    )
    assert named.labels == ("1999", "2001")
    assert named.reference_index == 1
    # An empty label: the source's own name is not read (e.g. a data URL's digest name), its
    # metadata still is.
    unnamed = SceneStack.from_sources(
        write_geo(tmp_path / "a20140612b.tif", data, GRID), [tagged], settings=settings,
        labels=["", ""],
    )
    assert unnamed.labels == ("image 1", "2021-07-04")
    # Fewer labels than sources: the rest use their own names (here: metadata).
    short = SceneStack.from_sources(plain, [tagged], settings=settings, labels=["x_2001"])
    assert short.labels == ("2001", "2021-07-04")
    with pytest.raises(StackError, match="at most one label per source"):
        SceneStack.from_sources(plain, [tagged], settings=settings, labels=["a", "b", "c"])


def test_duplicate_labels_become_unique(tmp_path: Path, settings) -> None:
    a = write_geo(tmp_path / "a_2020.tif", smooth(16, 16), GRID)
    b = write_geo(tmp_path / "b_2020.tif", smooth(16, 16), GRID)
    stack = SceneStack.from_sources(a, [b], settings=settings)
    assert stack.labels == ("2020", "2020 #2")
    assert stack.index_of("2020 #2") == 1
    with pytest.raises(StackError, match=r"matches several dates .*2020, 2020 #2"):
        stack.index_of("2020-01-01")


def test_index_of(tmp_path: Path, settings) -> None:
    d = smooth(16, 16)
    paths = [write_geo(tmp_path / f"t_{n}.tif", d, GRID) for n in ("20140603", "20140901", "2020")]
    stack = SceneStack.from_sources(paths[0], paths[1:], settings=settings)
    assert stack.index_of("2014-06-03") == 0
    assert stack.index_of("20140901") == 1
    assert stack.index_of(datetime.date(2014, 9, 1)) == 1
    assert stack.index_of("2014-09") == 1
    assert stack.index_of(2020) == 2
    assert stack.index_of("2020") == 2
    with pytest.raises(StackError, match=r"'2014' matches several dates .*2014-06-03, 2014-09-01"):
        stack.index_of("2014")
    with pytest.raises(StackError, match=r"no date '2011'; dates available: 2014-06-03, "):
        stack.index_of("2011")
    with pytest.raises(StackError, match="no date 'yesterday'"):
        stack.index_of("yesterday")
    with pytest.raises(StackError, match="out of range"):
        stack.scene(3)


def test_describe_round_trip(utm_pair: tuple[Path, Path], settings) -> None:
    ref, other = utm_pair
    stack = SceneStack.from_sources(other, [ref], settings=settings)
    record = stack.describe()
    assert record["reference_index"] == 1
    assert record["dates"][0] == {
        "label": "2019-05-01",
        "when": "2019-05-01",
        "source": str(ref.resolve()),
    }
    again = SceneStack.from_dates(record["dates"], record["reference_index"], settings=settings)
    assert again.dates == stack.dates
    assert again.reference.path == other.resolve()
    assert StackDate.from_dict(stack.dates[0].to_dict()) == stack.dates[0]


# ---------------------------------------------------------------------------------------------
# reads on the reference grid
# ---------------------------------------------------------------------------------------------
def shift_error(a: np.ndarray, b: np.ndarray, dx: int, dy: int) -> float:
    """Mean |a - b| with b shifted by (dx, dy) pixels (interior only)."""
    h, w = a.shape[-2:]
    m = 8
    aa = a[..., m : h - m, m : w - m].astype(np.float64)
    bb = b[..., m + dy : h - m + dy, m + dx : w - m + dx].astype(np.float64)
    return float(np.abs(aa - bb).mean())


def test_warped_read_aligns_a_date_in_another_crs(utm_pair: tuple[Path, Path], settings) -> None:
    ref_path, other_path = utm_pair
    stack = SceneStack.from_sources(ref_path, [other_path], settings=settings)
    assert stack.scene(1).crs.to_epsg() == 4326
    box = PixelBox(40, 30, 200, 160)
    truth = stack.read(0, box)
    warped = stack.read(1, box)
    assert warped.shape == truth.shape == (3, 130, 160)
    assert warped.dtype == np.uint8
    assert not np.ma.getmaskarray(warped).any()
    # Same ground in the same pixel: the error at zero shift is small, and any one-pixel shift
    # is clearly worse (the warp is aligned to better than a pixel).
    aligned = shift_error(truth.data, warped.data, 0, 0)
    assert aligned < 2.5
    for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        assert shift_error(truth.data, warped.data, dx, dy) > 2 * aligned


def test_warped_read_at_another_resolution_and_origin(tmp_path: Path, settings) -> None:
    data = smooth(240, 240)
    ref = write_geo(tmp_path / "fine_2019.tif", data, GRID)
    # The same ground at 2x the pixel size with an origin a third of a fine pixel away.
    coarse = np.zeros((3, 120, 120), np.uint8)
    coarse_grid = Affine(20.0, 0.0, 500_000.0 + 3.3, 0.0, -20.0, 5_000_000.0 - 3.3)
    reproject(
        data,
        coarse,
        src_transform=GRID,
        src_crs=UTM,
        dst_transform=coarse_grid,
        dst_crs=UTM,
        resampling=Resampling.average,
    )
    other = write_geo(tmp_path / "coarse_2021.tif", coarse, coarse_grid)
    stack = SceneStack.from_sources(ref, [other], settings=settings)
    box = PixelBox(20, 20, 220, 200)
    truth = stack.read(0, box)
    warped = stack.read(1, box)
    assert warped.shape == truth.shape == (3, 180, 200)
    aligned = shift_error(truth.data, warped.data, 0, 0)
    assert aligned < 3.0
    assert shift_error(truth.data, warped.data, 2, 0) > 2 * aligned


def test_outside_the_footprint_is_masked(tmp_path: Path, settings) -> None:
    ref = write_geo(tmp_path / "full_2019.tif", smooth(100, 80), GRID)
    # The other date covers only the left 40 columns of the reference.
    left = write_geo(tmp_path / "left_2020.tif", smooth(40, 80), GRID)
    stack = SceneStack.from_sources(ref, [left], settings=settings)
    out = stack.read(1, PixelBox(0, 0, 100, 80), resampling="nearest")
    mask = np.ma.getmaskarray(out)
    assert not mask[:, :, :40].any()
    assert mask[:, :, 40:].all()
    assert np.array_equal(out.data[:, :, :40], smooth(40, 80))
    # Entirely outside: all masked, native dtype, the requested shape.
    far = stack.read(1, PixelBox(60, 0, 100, 80), out_shape=(8, 4))
    assert far.shape == (3, 8, 4) and far.dtype == np.uint8
    assert np.ma.getmaskarray(far).all()


def test_nodata_of_a_date_is_masked(tmp_path: Path, settings) -> None:
    ref = write_geo(tmp_path / "r_2019.tif", smooth(64, 64), GRID)
    data = smooth(64, 64)
    data[:, 10:20, 10:20] = 0
    shifted = GRID @ Affine.translation(0.5, 0.25)
    other = write_geo(tmp_path / "o_2020.tif", data, shifted, nodata=0)
    stack = SceneStack.from_sources(ref, [other], settings=settings)
    out = stack.read(1, PixelBox(0, 0, 64, 64))
    mask = np.ma.getmaskarray(out)[0]
    assert mask[13:18, 13:18].all()
    assert not mask[30:50, 30:50].any()


def test_same_grid_dates_read_exactly(tmp_path: Path, settings) -> None:
    a = write_raster(tmp_path / "a_2019.tif", 64, 48, 3)
    b = write_raster(tmp_path / "b_2020.tif", 64, 48, 3)
    stack = SceneStack.from_sources(a, [b], settings=settings)
    assert stack.on_reference_grid(1)
    box = PixelBox(5, 6, 40, 30)
    assert np.array_equal(stack.read(1, box).data, Scene.open(b, settings=settings).read(box).data)
    two = stack.read(1, box, bands=[2], out_shape=(12, 17))
    assert two.shape == (1, 12, 17)


def test_ungeoreferenced_dates_need_the_same_size(tmp_path: Path, settings) -> None:
    a = write_raster(tmp_path / "a_2019.png", 40, 30, 3, driver="PNG", georef=False)
    b = write_raster(tmp_path / "b_2020.png", 40, 30, 3, driver="PNG", georef=False)
    c = write_raster(tmp_path / "c_2021.png", 50, 30, 3, driver="PNG", georef=False)
    stack = SceneStack.from_sources(a, [b, c], settings=settings)
    assert stack.read(1, PixelBox(0, 0, 10, 10)).shape == (3, 10, 10)
    with pytest.raises(StackError, match="no georeference, and their pixel sizes differ"):
        stack.read(2, PixelBox(0, 0, 10, 10))


def test_bad_box_and_shape(utm_pair: tuple[Path, Path], settings) -> None:
    stack = SceneStack.from_sources(*utm_pair[:1], utm_pair[1:], settings=settings)
    with pytest.raises(BoxError):
        stack.read(1, PixelBox(500, 500, 600, 600))
    with pytest.raises(StackError, match="out_shape must be positive"):
        stack.read(1, PixelBox(0, 0, 10, 10), out_shape=(0, 5))
    with pytest.raises(AttributeError):
        stack.read(1, PixelBox(0, 0, 10, 10), resampling="sharpest")


# ---------------------------------------------------------------------------------------------
# never a whole-image decode
# ---------------------------------------------------------------------------------------------
class ReadSpy:
    """Records every Scene.read of one date: the source window and the output size."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, scene: Scene) -> None:
        self.calls: list[tuple[PixelBox, tuple[int, int] | None]] = []
        original = scene.read

        def spy(box: PixelBox | None = None, out_size: Any = None, **kwargs: Any) -> Any:
            self.calls.append((box if box is not None else scene.full_box, out_size))
            return original(box, out_size, **kwargs)

        monkeypatch.setattr(scene, "read", spy)


def test_warped_reads_only_the_window_under_the_box(
    tmp_path: Path, settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = write_geo(tmp_path / "r_2019.tif", smooth(1000, 1000), GRID)
    other = write_geo(
        tmp_path / "o_2020.tif", smooth(1000, 1000), GRID @ Affine.translation(0.4, -0.3)
    )
    stack = SceneStack.from_sources(ref, [other], settings=settings)
    spy = ReadSpy(monkeypatch, stack.scene(1))
    stack.read(1, PixelBox(600, 100, 700, 180))
    ((window, _size),) = spy.calls
    # The box plus the kernel margin: a few pixels more than 100 x 80, nowhere near 1000 x 1000.
    assert 100 <= window.width <= 110 and 80 <= window.height <= 90
    assert 590 <= window.x1 <= 600 and 90 <= window.y1 <= 100

    # A downsampled view of the whole image asks the date for a decimated read (overviews).
    spy.calls.clear()
    overview = stack.read(1, PixelBox(0, 0, 1000, 1000), out_shape=(100, 100))
    assert overview.shape == (3, 100, 100)
    ((window, size),) = spy.calls
    assert size is not None and max(size) <= 200


# ---------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------
def test_render_of_another_date_has_the_reference_frame(
    utm_pair: tuple[Path, Path], settings
) -> None:
    stack = SceneStack.from_sources(utm_pair[0], [utm_pair[1]], settings=settings)
    box = PixelBox(10.4, 20, 210, 190)
    ref_view = stack.render(0, box, 64, view_id=3)
    other_view = stack.render(1, box, 64, view_id=3)
    assert other_view.spec == ref_view.spec
    assert other_view.rgb.shape == ref_view.rgb.shape
    assert other_view.rgb.dtype == np.uint8
    assert other_view.valid.mean() > 0.95
    diff = np.abs(other_view.rgb.astype(int) - ref_view.rgb.astype(int))[other_view.valid]
    assert diff.mean() < 4
    whole = stack.render(1, None, 100)
    assert whole.spec.region == stack.reference.full_box
    with pytest.raises(BoxError, match="max_side"):
        stack.render(1, None, 0)


def test_naip_dates_render_on_the_2020_grid(shared_data: Path, settings) -> None:
    stack = SceneStack.from_folder(shared_data / "naip", settings=settings)
    box = PixelBox(0, 0, 300, 300)
    views = [stack.render(i, box, 128) for i in range(len(stack))]
    assert {v.spec for v in views} == {views[0].spec}
    for view in views:
        assert view.valid.mean() > 0.99
    # Real content: the years differ (the area changed and the light did).
    assert np.abs(views[0].rgb.astype(int) - views[3].rgb.astype(int)).mean() > 5
