"""The built-in ``change_detection`` tool: planted changes, the real NAIP series, errors, CLI.

Synthetic pairs: a 4-band (R, G, B, NIR) synthetic landscape as *before*; *after* is the same
ground with a global gain/offset per band (another sensor), fresh noise on both dates, and
rectangles of new radiometry planted on it (new roofs, cleared ground, water), each coloured to
differ from what it covers -- the planted mask is the truth. The real check uses the NAIP series in
``../shared/data/naip`` (the same quarter-quad in 2009, 2014, 2017 and 2020, R, G, B, NIR uint8,
5 m, EPSG:26914; grids offset by a few metres, so every read is warped).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.warp import Resampling, calculate_default_transform, reproject

from tests.tools.helpers import TEST_TRANSFORM, write_array
from zoomearth.config import load_settings
from zoomearth.geometry import PixelBox
from zoomearth.scene import Scene
from zoomearth.scene.stack import SceneStack
from zoomearth.testing import check_tool
from zoomearth.tools import Capabilities, ToolContext, ToolInputError, run_tool
from zoomearth.tools._change import (
    HIST_BINS,
    HIST_MAX,
    ChannelStats,
    change_magnitude,
    channel_stats,
    clean_mask,
    magnitude_histogram,
    otsu_threshold,
)
from zoomearth.tools.change_detection import MASK_NODATA, ChangeDetection

REPO = Path(__file__).resolve().parents[2]
NAIP = ("20090818", "20140720", "20170827", "20200831")
SIZE = 512


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------
def make_settings(tmp_path: Path, roots: list[Path] = (), **flags) -> object:
    return load_settings(
        flags={
            "data_dir": tmp_path / "data",
            "cache_dir": tmp_path / "cache",
            "allowed_roots": [str(r) for r in roots] or [str(tmp_path)],
            **flags,
        },
        environ={},
    )


def planted_pair(seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(before, after, truth)``: uint8 (4, SIZE, SIZE) dates and the (SIZE, SIZE) planted mask."""
    from zoomearth.synth.render import SyntheticScene

    ground, _ = SyntheticScene(SIZE, seed=seed, bands=4, draw_objects=False).render(
        (0, 0, SIZE, SIZE)
    )
    rng = np.random.default_rng(seed)
    after = ground.astype(np.float32)
    truth = np.zeros((SIZE, SIZE), bool)
    palette = np.array(
        [[200, 200, 195, 170], [170, 60, 50, 90], [110, 90, 70, 60], [30, 50, 70, 15]], np.float32
    )  # bright roof, red roof, bare soil, water (R, G, B, NIR)
    for _ in range(12):
        w, h = (int(v) for v in rng.integers(10, 48, 2))
        x, y = (int(v) for v in rng.integers(0, SIZE - 50, 2))
        under = ground[:, y : y + h, x : x + w].reshape(4, -1).mean(axis=1)
        colour = palette[np.argmax(((palette - under) ** 2).sum(axis=1))]
        after[:, y : y + h, x : x + w] = colour[:, None, None]
        truth[y : y + h, x : x + w] = True
    gain = np.array([0.85, 1.1, 0.95, 1.2], np.float32)[:, None, None]
    offset = np.array([12, -8, 5, -10], np.float32)[:, None, None]
    after = after * gain + offset + rng.normal(0, 4, after.shape).astype(np.float32)
    before = ground.astype(np.float32) + rng.normal(0, 4, ground.shape).astype(np.float32)
    as8 = lambda a: np.clip(np.rint(a), 1, 255).astype(np.uint8)  # noqa: E731 - 0 is nodata
    return as8(before), as8(after), truth


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def read_mask(outcome) -> tuple[np.ndarray, dict]:
    path = next(Path(a.path) for a in outcome.artifacts if a.path.endswith(".tif"))
    with rasterio.open(path) as ds:
        return ds.read(1), {"crs": ds.crs, "transform": ds.transform, "nodata": ds.nodata,
                            "dtype": ds.dtypes[0], "tags": ds.tags()}  # fmt: skip


def read_geojson(outcome) -> dict:
    path = next(Path(a.path) for a in outcome.artifacts if a.path.endswith(".geojson"))
    return json.loads(path.read_text(encoding="utf-8"))


def run_on_stack(stack: SceneStack, tmp_path: Path, args: dict, region=None, tool=ChangeDetection):
    ctx = ToolContext(
        scene=stack.reference,
        run_dir=tmp_path / "run",
        settings=stack.settings,
        region=region,
        stack=stack,
    )
    return run_tool(tool, ctx, args)


def to_other_grid(src: Path, out: Path, crs: str, scale: float) -> Path:
    """``src`` warped to ``crs`` with pixels ``scale`` times larger (bilinear), nodata 0."""
    with rasterio.open(src) as ds:
        transform, width, height = calculate_default_transform(
            ds.crs, crs, ds.width, ds.height, *ds.bounds
        )
        transform = transform @ Affine.scale(scale)
        width, height = int(width / scale) + 1, int(height / scale) + 1
        data = np.zeros((ds.count, height, width), ds.dtypes[0])
        reproject(ds.read(), data, src_transform=ds.transform, src_crs=ds.crs,
                  dst_transform=transform, dst_crs=crs, resampling=Resampling.bilinear,
                  dst_nodata=0)  # fmt: skip
        profile = {**ds.profile, "crs": crs, "transform": transform, "width": width,
                   "height": height, "nodata": 0, "photometric": "MINISBLACK"}  # fmt: skip
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data)
    return out


@pytest.fixture()
def planted(tmp_path: Path):
    before, after, truth = planted_pair()
    # A strip of nodata in the later date: the mask must say nodata there, not "changed".
    after[:, :, SIZE - 24 :] = 0
    src = tmp_path / "src"
    src.mkdir()
    b = write_array(src / "site_2015-06-01.tif", before, nodata=0)
    a = write_array(src / "site_2021-06-01.tif", after, nodata=0)
    settings = make_settings(tmp_path, [tmp_path])
    return b, a, truth, settings


# ------------------------------------------------------------------------------------------
# the arrays
# ------------------------------------------------------------------------------------------
def test_otsu_separates_two_modes() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(1.0, 0.3, 90_000), rng.normal(6.0, 0.8, 10_000)])
    hist = magnitude_histogram(values.astype(np.float32), np.ones(values.shape, bool))
    assert hist.shape == (HIST_BINS,) and hist.sum() == values.size
    t = otsu_threshold(hist, hi=HIST_MAX)
    assert 2.0 < t < 5.0, t
    assert otsu_threshold(np.zeros(HIST_BINS)) == HIST_MAX  # nothing to separate
    one = np.zeros(HIST_BINS)
    one[10] = 5
    assert otsu_threshold(one) == HIST_MAX


def test_magnitude_cancels_a_global_gain_and_offset() -> None:
    before, _, _ = planted_pair()
    x = before.astype(np.float32)
    y = x * np.array([0.7, 1.3, 1.1, 0.9], np.float32)[:, None, None] + 20.0
    valid = np.ones(x.shape[1:], bool)
    sx, sy = channel_stats(x, valid), channel_stats(y, valid)
    mag = change_magnitude(x, y, sx, sy, bands=4)
    assert float(np.percentile(mag, 99)) < 0.05  # a radiometric change is no change
    raw = change_magnitude(
        x, y, ChannelStats(np.zeros(4), np.ones(4)), ChannelStats(np.zeros(4), np.ones(4)), bands=4
    )
    assert float(np.median(raw)) > 10  # without the normalisation it would all be change


def test_clean_mask_drops_specks_and_small_regions() -> None:
    changed = np.zeros((64, 64), bool)
    changed[5, 5] = True  # an isolated pixel
    changed[20:26, 20:26] = True  # 36 px
    changed[40:60, 40:60] = True  # 400 px
    changed[0:6, 58:64] = True  # 36 px touching the edge
    valid = np.ones_like(changed)
    valid[50:52, :] = False
    out = clean_mask(changed, valid, min_area_px=100, keep_edge=True)
    assert not out[5, 5] and not out[20:26, 20:26].any()
    assert out[40:50, 40:60].all() and not out[50:52].any()
    assert out[0:6, 58:64].all()  # may continue in the next tile: kept
    assert not clean_mask(changed, valid, min_area_px=100, keep_edge=False)[0:6, 58:64].any()


# ------------------------------------------------------------------------------------------
# planted changes through the tool
# ------------------------------------------------------------------------------------------
def test_planted_changes_are_found(planted, tmp_path: Path) -> None:
    before_path, after_path, truth, settings = planted
    stack = SceneStack.from_sources(before_path, [after_path], settings=settings)
    out = run_on_stack(stack, tmp_path, {})
    assert out.data["before"] == "2015-06-01" and out.data["after"] == "2021-06-01"
    mask, meta = read_mask(out)
    assert meta["dtype"] == "uint8" and meta["nodata"] == MASK_NODATA
    assert meta["crs"] == "EPSG:32614" and meta["transform"] == TEST_TRANSFORM
    assert meta["tags"]["ZOOMEARTH_BEFORE"] == "2015-06-01"
    assert set(np.unique(mask)) == {0, 1, MASK_NODATA}
    assert (mask[:, SIZE - 24 :] == MASK_NODATA).all() and (mask[:, : SIZE - 26] != 255).all()
    valid = mask != MASK_NODATA
    score = iou(mask == 1, truth & valid)
    assert score >= 0.8, score
    # GeoJSON polygons: metres in the scene's CRS, their areas add up to the mask's area.
    gj = read_geojson(out)
    assert gj["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32614"
    areas = [f["properties"]["area_m2"] for f in gj["features"]]
    changed_m2 = float((mask == 1).sum())  # 1 m pixels
    assert out.data["changed_area_m2"] == pytest.approx(changed_m2)
    assert sum(areas) == pytest.approx(changed_m2, rel=0.03)
    assert sum(f["properties"]["area_px"] for f in gj["features"]) == int((mask == 1).sum())
    props = gj["features"][0]["properties"]
    assert props["before"] == "2015-06-01" and props["after"] == "2021-06-01"
    assert f"{changed_m2:,.0f} m²" in out.text and "%" in out.text
    preview = next(Path(a.path) for a in out.artifacts if a.kind == "preview")
    from PIL import Image

    with Image.open(preview) as im:
        assert im.size == (3 * SIZE + 8, SIZE)  # before | after | change


def test_planted_changes_on_another_grid_and_crs(planted, tmp_path: Path) -> None:
    """The later date in Web Mercator at ~1.6 m pixels: read warped onto the 1 m UTM grid."""
    before_path, after_path, truth, settings = planted
    other = to_other_grid(after_path, tmp_path / "src" / "merc_2021-06-01.tif", "EPSG:3857", 1.15)
    with rasterio.open(other) as ds:
        assert ds.crs == "EPSG:3857" and abs(ds.transform.a) > 1.3
    stack = SceneStack.from_sources(before_path, [other], settings=settings)
    assert not stack.on_reference_grid(1)
    out = run_on_stack(stack, tmp_path, {"before": "2015", "after": "2021"})
    mask, meta = read_mask(out)
    assert meta["transform"] == TEST_TRANSFORM and mask.shape == (SIZE, SIZE)
    valid = mask != MASK_NODATA
    score = iou(mask == 1, truth & valid)
    assert score >= 0.8, score


def test_no_change_is_no_change(tmp_path: Path) -> None:
    """Same ground, another sensor (gain/offset) and fresh noise: Otsu's floor keeps it quiet."""
    before, _, _ = planted_pair()
    rng = np.random.default_rng(9)
    after = before.astype(np.float32) * 1.2 - 10 + rng.normal(0, 4, before.shape)
    b = write_array(tmp_path / "a_2001.tif", before)
    a = write_array(tmp_path / "a_2002.tif", np.clip(after, 1, 255).astype(np.uint8))
    stack = SceneStack.from_sources(b, [a], settings=make_settings(tmp_path))
    out = run_on_stack(stack, tmp_path, {})
    assert out.data["changed_fraction"] < 0.005, out.text
    assert out.data["threshold"] >= 1.0


def test_threshold_min_area_and_method(planted, tmp_path: Path) -> None:
    before_path, after_path, truth, settings = planted
    stack = SceneStack.from_sources(before_path, [after_path], settings=settings)
    low = run_on_stack(stack, tmp_path, {"threshold": 0.5, "name": "low"})
    high = run_on_stack(stack, tmp_path, {"threshold": 5.0, "name": "high"})
    assert low.data["changed_pixels"] > high.data["changed_pixels"]
    assert low.data["threshold_method"] == "given" and "(given)" in low.text
    big = run_on_stack(stack, tmp_path, {"min_area_m2": 1000, "name": "big"})
    areas = [f["properties"]["area_px"] for f in read_geojson(big)["features"]]
    assert areas and min(areas) >= 1000 * 0.9  # 8- vs 4-connectivity can split a region
    spectral = run_on_stack(stack, tmp_path, {"method": "spectral", "name": "spec"})
    assert spectral.data["channels"] == "4 band(s)"
    ndvi = run_on_stack(stack, tmp_path, {"method": "ndvi", "name": "ndvi"})
    assert ndvi.data["channels"] == "NDVI"


def test_streamed_tiles_give_the_one_piece_result(shared_data: Path, tmp_path: Path) -> None:
    """Tiles of 200 px: the same mask bit for bit, and regions cut by tile edges merged back."""

    class SmallTiles(ChangeDetection):
        capabilities = Capabilities(
            max_side=256, streaming=True, tile_overlap=16, independent_tiles=True
        )

    settings = make_settings(tmp_path, [shared_data], tool_tile_side=200)
    stack = SceneStack.from_folder(shared_data / "naip", settings=settings)
    region = PixelBox(0, 0, 600, 500)
    whole = run_on_stack(stack, tmp_path / "a", {}, region=region)
    tiled = run_on_stack(stack, tmp_path / "b", {}, region=region, tool=SmallTiles)
    assert whole.data["tiles"] == 1 and tiled.data["tiles"] == 9
    assert np.array_equal(read_mask(whole)[0], read_mask(tiled)[0])
    assert tiled.data["polygons"] == whole.data["polygons"]
    px = lambda o: sorted(f["properties"]["area_px"] for f in read_geojson(o)["features"])  # noqa: E731
    assert px(tiled) == px(whole)


# ------------------------------------------------------------------------------------------
# the real NAIP series
# ------------------------------------------------------------------------------------------
def test_naip_2009_to_2020(shared_data: Path, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, [shared_data])
    stack = SceneStack.from_folder(shared_data / "naip", settings=settings)
    scene = stack.reference
    for region, label in ((None, "whole tile"), (PixelBox(0, 0, 467, 362), "top-left quarter")):
        out = run_on_stack(stack, tmp_path / label.replace(" ", "_"), {}, region=region)
        d = out.data
        assert (d["before"], d["after"]) == ("2009-08-18", "2020-08-31")
        mask, meta = read_mask(out)
        col, row, width, height = d["window"]
        assert mask.shape == (height, width)
        assert meta["crs"] == scene.crs
        assert meta["transform"] == scene.transform @ Affine.translation(col, row)
        changed = int((mask == 1).sum())
        assert changed == d["changed_pixels"] and changed > 0
        assert d["changed_area_m2"] == pytest.approx(changed * 25.0)  # 5 m pixels
        gj = read_geojson(out)
        total = sum(f["properties"]["area_m2"] for f in gj["features"])
        assert total == pytest.approx(d["changed_area_m2"], rel=0.02)
        # Lakes filled and crops changed between the dates: a real, not a total change.
        assert 0.05 < d["changed_fraction"] < 0.6, out.text
        print(
            f"NAIP 2009 -> 2020, {label} {d['window']}: {d['changed_area_m2']:,.0f} m² changed "
            f"({100 * d['changed_fraction']:.1f} % of {d['valid_area_m2']:,.0f} m²), "
            f"{d['polygons']} polygons, threshold {d['threshold']}"
        )


# ------------------------------------------------------------------------------------------
# inputs and errors
# ------------------------------------------------------------------------------------------
def test_a_single_scene_needs_a_stack_or_other(planted, tmp_path: Path) -> None:
    before_path, after_path, _, settings = planted
    scene = Scene.open(before_path, settings=settings, progress=False)
    ctx = ToolContext(scene=scene, run_dir=tmp_path / "run", settings=settings)
    with pytest.raises(ToolInputError) as info:
        run_tool(ChangeDetection, ctx, {})
    assert info.value.code == "needs_stack"
    assert "--stack" in str(info.value) and "'other'" in str(info.value)
    # 'other': the scene and one other image, ordered by the dates in their names.
    out = run_tool(ChangeDetection, ctx, {"other": str(after_path)})
    assert (out.data["before"], out.data["after"]) == ("2015-06-01", "2021-06-01")
    with pytest.raises(ToolInputError, match="scene itself"):
        run_tool(ChangeDetection, ctx, {"other": str(before_path)})
    assert not list((tmp_path / "run").glob("*.tif.tmp*"))


def test_undated_other_is_the_earlier_image(tmp_path: Path) -> None:
    before, after, truth = planted_pair()
    b = write_array(tmp_path / "old.tif", before)
    a = write_array(tmp_path / "new.tif", after)
    settings = make_settings(tmp_path)
    scene = Scene.open(a, settings=settings, progress=False)
    ctx = ToolContext(scene=scene, run_dir=tmp_path / "run", settings=settings)
    out = run_tool(ChangeDetection, ctx, {"other": str(b)})
    assert (out.data["before"], out.data["after"]) == ("image 2", "image 1")
    assert iou(read_mask(out)[0] == 1, truth) >= 0.8


def test_bad_dates_and_methods_are_refused_clearly(planted, tmp_path: Path) -> None:
    before_path, after_path, _, settings = planted
    stack = SceneStack.from_sources(before_path, [after_path], settings=settings)
    with pytest.raises(ToolInputError) as info:
        run_on_stack(stack, tmp_path, {"before": "1999"})
    assert "2015-06-01, 2021-06-01" in str(info.value) and info.value.code == "bad_date"
    with pytest.raises(ToolInputError, match="both name 2021-06-01"):
        run_on_stack(stack, tmp_path, {"before": "2021", "after": "2021-06-01"})
    rgb = write_array(tmp_path / "rgb_2001.tif", planted_pair()[0][:3], rgb=True)
    rgb2 = write_array(tmp_path / "rgb_2002.tif", planted_pair()[1][:3], rgb=True)
    rgb_stack = SceneStack.from_sources(rgb, [rgb2], settings=settings)
    with pytest.raises(ToolInputError, match="near-infrared"):
        run_on_stack(rgb_stack, tmp_path, {"method": "ndvi"})
    assert run_on_stack(rgb_stack, tmp_path, {}).data["channels"] == "3 band(s)"
    one = SceneStack.from_sources(before_path, [], settings=settings)
    with pytest.raises(ToolInputError, match="only 2015-06-01"):
        run_on_stack(one, tmp_path, {})


def test_contract_kit() -> None:
    def with_other(scene: Scene, run_dir: Path) -> dict:
        """Another date next to every kit scene: the scene's values shifted by 7."""
        out = Path(scene.path).with_name(Path(scene.path).stem + "_other.tif")
        if not out.exists():
            with rasterio.open(scene.path) as ds:
                data = ds.read()
                profile = ds.profile
            shifted = data.astype(np.float64) + 7
            if np.issubdtype(data.dtype, np.integer):
                info = np.iinfo(data.dtype)
                shifted = np.clip(shifted, info.min, info.max)
            with rasterio.open(out, "w", **profile) as dst:
                dst.write(shifted.astype(data.dtype))
        return {"other": str(out)}

    report = check_tool(ChangeDetection, args=with_other)
    assert report.ok, str(report)


def test_registered_builtin() -> None:
    from zoomearth.tools.registry import BUILTIN_TOOLS

    assert BUILTIN_TOOLS["change_detection"] == "zoomearth.tools.change_detection:ChangeDetection"


# ------------------------------------------------------------------------------------------
# through `zoomearth ask` with the rules planner
# ------------------------------------------------------------------------------------------
def test_ask_what_changed_on_the_naip_folder(shared_data: Path, tmp_path: Path) -> None:
    env = {**os.environ, "ZOOMEARTH_DATA_DIR": str(tmp_path / "data")}
    question = "what changed in the top-left between 2009 and 2020"
    proc = subprocess.run(
        [sys.executable, "-m", "zoomearth.cli", "ask", str(shared_data / "naip"), question,
         "--planner", "rules", "--json"],
        capture_output=True, text=True, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    (call,) = record["tool_calls"]
    assert call["name"] == "change_detection" and call["status"] == "ok", call
    assert call["arguments"] == {"before": "2009", "after": "2020"}
    (zoom,) = record["zooms"]
    assert zoom["box_xyxy"][:2] == [0, 0]  # the top-left corner
    geojson = [a for a in record["artifacts"] if a["path"].endswith(".geojson")]
    assert len(geojson) == 1 and Path(geojson[0]["path"]).is_file()
    features = json.loads(Path(geojson[0]["path"]).read_text(encoding="utf-8"))["features"]
    assert features and all(f["properties"]["area_m2"] > 0 for f in features)
    assert "m² (" in record["answer"] and "changed" in record["answer"]


def test_finished_tiles_depend_on_the_stack_dates(planted, tmp_path: Path) -> None:
    """The tile cache's key names every date of the stack: another date set (or a date's file
    rewritten) must not reuse tiles computed from the old dates."""
    from zoomearth.tools.runner import _call_fingerprint

    before_path, after_path, _, settings = planted
    args = ChangeDetection.Args()

    def fingerprint(others: list[Path]) -> dict:
        stack = SceneStack.from_sources(before_path, others, settings=settings)
        ctx = ToolContext(scene=stack.reference, run_dir=tmp_path / "run", settings=settings,
                          stack=stack, region=stack.reference.full_box)
        return _call_fingerprint(ChangeDetection(), ctx, args, [])

    first = fingerprint([after_path])
    assert [d[0] for d in first["stack"]] == ["2015-06-01", "2021-06-01"]
    assert first == fingerprint([after_path])  # same dates, same files: tiles reused
    third = write_array(before_path.parent / "site_2023-06-01.tif", planted_pair(5)[1], nodata=0)
    assert fingerprint([after_path, third]) != first  # another date set
    os.utime(after_path, ns=(0, 10**9))  # the later date's file rewritten
    assert fingerprint([after_path]) != first
