"""The built-in ``cloud_removal`` tool: mask, composite, dehaze, inpaint, streaming, errors.

The quality check uses the real co-registered NAIP series in ``../shared/data/naip`` (4 years,
R, G, B, NIR uint8, EPSG:26914): the 2020 tile is the clean truth, synthetic clouds covering
about 20 % are blended over it, and the other three years are the composite's inputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from zoomearth.config import load_settings
from zoomearth.geometry import PixelBox
from zoomearth.scene import Scene
from zoomearth.tools import ToolContext, ToolInputError, run_tool
from zoomearth.tools._cloudmask import CLOUD, HAZE, MASK_NODATA, MaskThresholds, cloud_mask
from zoomearth.tools._haze import atmospheric_light, dark_channel, dehaze, guided_filter
from zoomearth.tools.cloud_removal import CloudRemoval

NAIP_YEARS = ("20090818", "20140720", "20170827", "20200831")


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------
def naip(shared_data: Path, year: str) -> Path:
    return shared_data / "naip" / f"m_4709963_se_14_1_{year}.tif"


def make_settings(tmp_path: Path, roots: list[Path], **flags) -> object:
    return load_settings(
        flags={
            "data_dir": tmp_path / "data",
            "cache_dir": tmp_path / "cache",
            "allowed_roots": [str(r) for r in roots],
            **flags,
        },
        environ={},
    )


def synthetic_clouds(
    h: int, w: int, fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded smooth cloud field: ``(truth (h, w) bool, alpha (h, w), thickness (h, w))``.

    Three octaves of blurred Gaussian noise, thresholded at the ``1 - fraction`` quantile: the
    true mask is where the cloud is at least half opaque; opacity ramps softly over about
    +-0.35 standard deviations of the field (a soft, semi-transparent edge of ~10 px).
    """
    import cv2

    rng = np.random.default_rng(seed)
    field = np.zeros((h, w), np.float32)
    for sigma, weight in ((48, 1.0), (16, 0.35), (5, 0.12)):
        n = rng.standard_normal((h, w)).astype(np.float32)
        n = cv2.GaussianBlur(n, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
        field += weight * n / n.std()
    field /= field.std()
    t = float(np.quantile(field, 1.0 - fraction))
    a = np.clip(0.5 + 0.5 * (field - t) / 0.35, 0.0, 1.0)
    alpha = a * a * (3 - 2 * a)
    thickness = np.clip(field - t, 0.0, 1.0)
    return field >= t, alpha.astype(np.float32), thickness.astype(np.float32)


def write_cloudy_naip(shared_data: Path, out: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Write the 2020 NAIP tile with ~20 % synthetic cloud; return (clean, cloudy, truth)."""
    with rasterio.open(naip(shared_data, "20200831")) as ds:
        clean = ds.read()
        profile = ds.profile
        colorinterp = ds.colorinterp
    truth, alpha, thickness = synthetic_clouds(clean.shape[1], clean.shape[2])
    grey = np.array([225, 228, 232, 226], np.float32)[:, None, None]
    white = np.array([250, 250, 250, 248], np.float32)[:, None, None]
    colour = grey + (white - grey) * thickness
    cloudy = clean.astype(np.float32) * (1 - alpha) + colour * alpha
    cloudy = np.clip(np.rint(cloudy), 1, 255).astype(np.uint8)
    profile.update(driver="GTiff")
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(cloudy)
        dst.colorinterp = colorinterp  # keep band 4 as NIR (not alpha), like the source
    return clean, cloudy, truth


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10.0 * np.log10(255.0**2 / mse)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def run(scene: Scene, tmp_path: Path, settings, args: dict, region=None, **kw):
    ctx = ToolContext(scene=scene, run_dir=tmp_path / "run", settings=settings, region=region, **kw)
    return run_tool(CloudRemoval(), ctx, args)


def by_name(outcome, suffix: str) -> Path:
    return next(Path(a.path) for a in outcome.artifacts if Path(a.path).name.endswith(suffix))


@pytest.fixture()
def cloudy_naip(tmp_path: Path, shared_data: Path):
    src = tmp_path / "src"
    src.mkdir()
    clean, cloudy, truth = write_cloudy_naip(shared_data, src / "cloudy_2020.tif")
    settings = make_settings(tmp_path, [shared_data, src])
    scene = Scene.open(src / "cloudy_2020.tif", settings=settings, progress=False)
    return scene, settings, clean, cloudy, truth


# ------------------------------------------------------------------------------------------
# quality check on the real NAIP series
# ------------------------------------------------------------------------------------------
def test_quality_multitemporal_naip(cloudy_naip, shared_data: Path, tmp_path: Path) -> None:
    scene, settings, clean, cloudy, truth = cloudy_naip
    others = [str(naip(shared_data, y)) for y in NAIP_YEARS[:3]]
    out = run(scene, tmp_path, settings, {"others": others})

    with rasterio.open(by_name(out, "cloudfree.tif")) as ds:
        result = ds.read()
        assert ds.crs == scene.crs and ds.transform == scene.transform
        assert (ds.count, ds.dtypes[0], ds.nodata) == (4, "uint8", scene.nodata)
        assert ds.overviews(1)  # overviewed like every raster output
    with rasterio.open(by_name(out, "cloudmask.tif")) as ds:
        mask = ds.read(1)
        assert ds.transform == scene.transform and ds.nodata == MASK_NODATA
    with rasterio.open(by_name(out, "synthetic.tif")) as ds:
        synthetic = ds.read(1)

    gain = psnr(result, clean) - psnr(cloudy, clean)
    mask_iou = iou(mask == CLOUD, truth)
    print(
        f"\nNAIP composite: PSNR cloudy {psnr(cloudy, clean):.2f} dB -> result "
        f"{psnr(result, clean):.2f} dB (gain {gain:.2f} dB); cloud-mask IoU {mask_iou:.3f}; "
        f"true cloud {truth.mean():.1%}, found {np.mean(mask == CLOUD):.1%}"
    )
    assert gain >= 3.0
    assert mask_iou > 0.5
    # Every cloud pixel is seen clear by some other year: nothing needs to be invented.
    assert np.mean(synthetic == 1) < 0.01
    assert out.data["method"] == "composite" and out.data["dates_composited"] == 3
    assert 0.15 < out.data["cloud_fraction"] < 0.3
    assert "3 other date(s) composited" in out.text and "cloud 1" in out.text
    # Pixels away from the mask are the input's, untouched (the blend is feathered over ~6 px).
    import cv2

    distance = cv2.distanceTransform((mask == 0).astype(np.uint8), cv2.DIST_L2, 3)
    far = distance > 8
    assert far.mean() > 0.3
    assert np.array_equal(result[:, far], cloudy[:, far])
    assert json.dumps(out.model_dump(mode="json"))  # state-friendly outcome


def test_single_image_naip_dehaze_and_inpaint(cloudy_naip, tmp_path: Path) -> None:
    scene, settings, clean, cloudy, truth = cloudy_naip
    out = run(scene, tmp_path, settings, {"method": "single"})
    with rasterio.open(by_name(out, "cloudfree.tif")) as ds:
        result = ds.read()
    with rasterio.open(by_name(out, "cloudmask.tif")) as ds:
        mask = ds.read(1)
    with rasterio.open(by_name(out, "synthetic.tif")) as ds:
        synthetic = ds.read(1)
    flagged = float(np.mean(synthetic == 1))
    print(
        f"\nNAIP single image: PSNR {psnr(cloudy, clean):.2f} -> {psnr(result, clean):.2f} dB; "
        f"{flagged:.1%} synthetic"
    )
    assert flagged > 0.05
    assert np.array_equal(synthetic == 1, mask == CLOUD)  # thick cloud is what was invented
    assert out.data["synthetic_fraction"] == pytest.approx(flagged, abs=1e-6)
    assert "filled synthetically by inpainting (telea)" in out.text
    assert psnr(result, clean) > psnr(cloudy, clean) + 3.0
    # Thin haze reduced: on haze pixels the result is closer to the truth than the input.
    haze = mask == HAZE
    assert haze.mean() > 0.01
    err_in = np.abs(cloudy[:3, haze].astype(float) - clean[:3, haze]).mean()
    err_out = np.abs(result[:3, haze].astype(float) - clean[:3, haze]).mean()
    assert err_out < err_in
    assert result.dtype == np.uint8 and result.shape == cloudy.shape


# ------------------------------------------------------------------------------------------
# streaming
# ------------------------------------------------------------------------------------------
@pytest.fixture()
def wide_synth(tmp_path: Path):
    from zoomearth.scene.synth import generate_scene

    res = generate_scene(
        tmp_path / "scene.tif", (2112, 384), seed=3, clouds=0.2, bands=4, compress="deflate"
    )
    return res


def test_streams_whole_scene_into_tiled_overviewed_geotiff(wide_synth, tmp_path: Path) -> None:
    from zoomearth.scene.writing import overview_factors

    settings = make_settings(tmp_path, [tmp_path], tool_tile_side=512)
    scene = Scene.open(wide_synth.image_path, settings=settings, progress=False)
    progress: list[tuple[int, int]] = []
    out = run(scene, tmp_path, settings, {}, progress=lambda d, t, m: progress.append((d, t)))
    assert out.streamed
    assert out.data["tiles"] == 5 and progress[-1] == (5, 5)
    for suffix, count, dtype in (
        ("cloudfree.tif", 4, "uint8"),
        ("cloudmask.tif", 1, "uint8"),
        ("synthetic.tif", 1, "uint8"),
    ):
        with rasterio.open(by_name(out, suffix)) as ds:
            assert (ds.width, ds.height, ds.count, ds.dtypes[0]) == (2112, 384, count, dtype)
            assert ds.crs == scene.crs and ds.transform == scene.transform
            assert ds.block_shapes[0] == (512, 512) and ds.overviews(1) == overview_factors(
                2112, 384
            )
    with rasterio.open(wide_synth.mask_path) as ds:
        truth = ds.read(1) == 1
    with rasterio.open(by_name(out, "cloudmask.tif")) as ds:
        mask = ds.read(1)
    print(f"\nsynthetic scene (streamed): mask IoU {iou(mask == CLOUD, truth):.3f}")
    assert iou(mask == CLOUD, truth) > 0.6
    assert "streamed in 5 tiles" in out.text

    # The overlap covers the morphology: the mask does not depend on the tiling.
    settings2 = make_settings(tmp_path, [tmp_path], tool_tile_side=1024)
    scene2 = Scene.open(wide_synth.image_path, settings=settings2, progress=False)
    out2 = run(scene2, tmp_path, settings2, {"preview": False})
    assert out2.data["tiles"] == 3
    with rasterio.open(by_name(out2, "cloudmask.tif")) as ds:
        assert np.array_equal(ds.read(1), mask)


def test_quality_mask_hook(wide_synth, tmp_path: Path) -> None:
    """A co-registered cloud-mask file flags cloud even when the thresholds find none."""
    settings = make_settings(tmp_path, [tmp_path])
    scene = Scene.open(wide_synth.image_path, settings=settings, progress=False)
    region = PixelBox(0, 0, 1024, 384)
    args = {
        "quality_mask": str(wide_synth.mask_path),
        "brightness": 1.0,
        "haze_brightness": 1.0,
        "dilate_px": 0,
        "preview": False,
    }
    out = run(scene, tmp_path, settings, args, region=region)
    with rasterio.open(wide_synth.mask_path) as ds:
        truth = ds.read(1, window=((0, 384), (0, 1024))) == 1
    with rasterio.open(by_name(out, "cloudmask.tif")) as ds:
        mask = ds.read(1)
    assert np.array_equal(mask == CLOUD, truth)
    assert "quality flags" in out.text


def test_quality_band_hook_and_nodata_kept(tmp_path: Path) -> None:
    """Band 5 as a QA band: flagged pixels are cloud; nodata stays nodata; QA band copied."""
    rng = np.random.default_rng(0)
    h = w = 96
    img = np.zeros((5, h, w), np.uint8)
    img[:4] = rng.integers(40, 120, (4, h, w))
    img[4, 30:60, 30:60] = 8  # QA: cloud flag
    img[:4, :10, :10] = 0  # nodata corner
    path = tmp_path / "qa.tif"
    profile = dict(
        driver="GTiff", width=w, height=h, count=5, dtype="uint8", nodata=0,
        crs="EPSG:32633", transform=Affine(1, 0, 500000, 0, -1, 5000000),
    )  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(img)
    settings = make_settings(tmp_path, [tmp_path])
    scene = Scene.open(path, settings=settings, progress=False)
    out = run(scene, tmp_path, settings, {"quality_band": 5, "quality_values": [8], "nir_band": 4})
    with rasterio.open(by_name(out, "cloudmask.tif")) as ds:
        mask = ds.read(1)
    with rasterio.open(by_name(out, "cloudfree.tif")) as ds:
        result = ds.read()
    assert (mask[32:58, 32:58] == CLOUD).all() and (mask[70:, 70:] == 0).all()
    assert (mask[:10, :10] == MASK_NODATA).all()
    assert (result[:, :10, :10] == img[:, :10, :10]).all()  # nodata kept
    assert np.array_equal(result[4], img[4])  # QA band copied unchanged
    assert (result[:4, 40:50, 40:50] > 0).all()  # filled, never turned into nodata
    assert np.array_equal(result[:4, 70:, 70:], img[:4, 70:, 70:])


# ------------------------------------------------------------------------------------------
# contract and errors
# ------------------------------------------------------------------------------------------
def test_contract_kit() -> None:
    from zoomearth.testing import check_tool

    report = check_tool(CloudRemoval)
    assert report.ok


def test_registered_builtin() -> None:
    from zoomearth.tools.registry import BUILTIN_TOOLS

    assert BUILTIN_TOOLS["cloud_removal"] == "zoomearth.tools.cloud_removal:CloudRemoval"
    names = [b.name for b in CloudRemoval.backend_status()]
    assert names == ["classical", "diffusion-inpaint"]


def _write_like(src: Path, out: Path, *, crs=None, shift: float = 0.0) -> Path:
    with rasterio.open(src) as ds:
        data = ds.read(window=((0, 64), (0, 64)))
        profile = ds.profile
        tr = ds.transform
    profile.update(
        driver="GTiff", width=64, height=64, crs=crs or profile["crs"],
        transform=Affine(tr.a, 0, tr.c + shift, 0, tr.e, tr.f),
    )  # fmt: skip
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data)
    return out


def test_bad_other_images_are_refused_with_advice(
    cloudy_naip, shared_data: Path, tmp_path: Path
) -> None:
    scene, settings, *_ = cloudy_naip
    src = tmp_path / "src"
    region = PixelBox(0, 0, 128, 128)

    def refused(args: dict) -> str:
        with pytest.raises(ToolInputError) as info:
            run(scene, tmp_path, settings, args, region=region)
        return str(info.value)

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    stray = _write_like(naip(shared_data, "20090818"), outside / "stray.tif")
    msg = refused({"others": [str(stray)]})
    assert "allowed" in msg.lower() and "others" in msg

    far = _write_like(naip(shared_data, "20090818"), src / "far.tif", shift=50_000.0)
    msg = refused({"others": [str(far)]})
    assert "does not overlap" in msg and "far.tif" in msg

    # Another CRS is read warped (tests/tools/test_cloud_removal_stack.py); these coordinates
    # relabelled EPSG:32633 lie in another UTM zone, so the image is refused as elsewhere.
    wrong = _write_like(naip(shared_data, "20090818"), src / "wrong_crs.tif", crs="EPSG:32633")
    msg = refused({"others": [str(wrong)]})
    assert "does not overlap" in msg and "wrong_crs.tif" in msg and "EPSG:26914" in msg

    assert "needs other acquisitions" in refused({"method": "composite"})
    assert "haze_brightness" in refused({"brightness": 0.5, "haze_brightness": 0.6})
    assert "9 does not exist" in refused({"rgb_bands": [1, 2, 9]})
    assert "cannot be both" in refused({"nir_band": 1})
    assert "Valid arguments" in refused({"clouds": 3})
    assert not list((tmp_path / "run").glob("*.tif"))  # refused calls leave nothing


def test_other_with_different_grid_is_read_by_map_window(
    cloudy_naip, shared_data: Path, tmp_path: Path
) -> None:
    """An acquisition at another pixel size is resampled onto the image's window."""
    scene, settings, *_ = cloudy_naip
    src = tmp_path / "src"
    with rasterio.open(naip(shared_data, "20170827")) as ds:
        coarse = ds.read(out_shape=(4, ds.height // 2, ds.width // 2))
        profile = ds.profile
        tr = ds.transform
        colorinterp = ds.colorinterp
    profile.update(
        driver="GTiff", width=coarse.shape[2], height=coarse.shape[1],
        transform=Affine(tr.a * 2, 0, tr.c, 0, tr.e * 2, tr.f),
    )  # fmt: skip
    with rasterio.open(src / "coarse.tif", "w", **profile) as dst:
        dst.write(coarse)
        dst.colorinterp = colorinterp
    region = PixelBox(100, 100, 400, 300)
    out = run(scene, tmp_path, settings, {"others": [str(src / "coarse.tif")]}, region=region)
    assert out.data["dates_composited"] == 1
    with rasterio.open(by_name(out, "cloudfree.tif")) as ds:
        assert (ds.width, ds.height) == (300, 200)
        assert ds.transform == scene.transform @ Affine.translation(100, 100)


# ------------------------------------------------------------------------------------------
# the learned backend: a tiny random diffusers pipeline through the production loading code
# ------------------------------------------------------------------------------------------
def test_diffusion_inpainting_tiny_pipeline(cloudy_naip, tmp_path: Path) -> None:
    from zoomearth.models import ModelPool
    from zoomearth.testing_models import build_tiny_sd_inpaint

    scene, _, clean, cloudy, truth = cloudy_naip
    model_dir = build_tiny_sd_inpaint(tmp_path / "tiny_sd")
    settings = make_settings(tmp_path, [tmp_path], inpaint_model=str(model_dir), tool_device="cpu")
    scene = Scene.open(scene.path, settings=settings, progress=False)
    # A 64 x 64 box around the pixel deepest inside a synthetic cloud.
    import cv2

    inside = cv2.distanceTransform(truth.astype(np.uint8), cv2.DIST_L2, 3)
    cy, cx = np.unravel_index(int(np.argmax(inside)), truth.shape)
    cy, cx = min(max(cy, 48), truth.shape[0] - 48), min(max(cx, 48), truth.shape[1] - 48)
    region = PixelBox(cx - 32, cy - 32, cx + 32, cy + 32)
    pool = ModelPool(budgets={"cpu": 2**31})
    args = {"method": "single", "inpaint_steps": 2, "preview": False}
    out = run(scene, tmp_path, settings, args, region=region, pool=pool)
    with rasterio.open(by_name(out, "synthetic.tif")) as ds:
        synthetic = ds.read(1)
    with rasterio.open(by_name(out, "cloudfree.tif")) as ds:
        result = ds.read()
    assert synthetic.mean() > 0 and (synthetic == 1).any()
    assert out.data["inpainting"].startswith("diffusion (")
    assert out.data["diffusion_windows"] >= 1
    assert "filled synthetically by inpainting (diffusion" in out.text
    stats = pool.stats()
    assert [m.key for m in stats.models] == [f"diffusers-inpaint:{model_dir}"]
    assert stats.models[0].loads == 1
    # Only flagged pixels were invented; the rest is the input or its dehazed version.
    x0, y0 = region.as_list()[:2]
    window = cloudy[:, int(y0) : int(y0) + 64, int(x0) : int(x0) + 64]
    assert result.shape == window.shape
    changed = (result != window).any(axis=0)
    assert changed[synthetic == 1].mean() > 0.5


def test_missing_model_is_a_clear_failure(cloudy_naip, tmp_path: Path) -> None:
    from zoomearth.models import ModelPool
    from zoomearth.tools import ToolFailure

    scene, *_ = cloudy_naip
    settings = make_settings(tmp_path, [tmp_path], inpaint_model=str(tmp_path / "nope"))
    scene = Scene.open(scene.path, settings=settings, progress=False)
    with pytest.raises(ToolFailure) as info:
        run(scene, tmp_path, settings, {"method": "single"}, pool=ModelPool(budgets={"cpu": 2**31}))
    assert "inpaint_model" in str(info.value)
    assert not list((tmp_path / "run").glob("*"))


# ------------------------------------------------------------------------------------------
# building blocks
# ------------------------------------------------------------------------------------------
def test_cloud_mask_classes_and_morphology() -> None:
    h = w = 80
    rgb = np.full((3, h, w), 0.2, np.float32)
    rgb[0] = 0.15  # vegetation-like, saturated
    rgb[:, 20:50, 20:50] = 0.92  # a white cloud
    rgb[:, 60, 60] = 0.95  # a single bright speck (a roof): opened away
    rgb[:, 20:50, 52:58] = 0.55  # grey haze right next to the cloud
    valid = np.ones((h, w), bool)
    valid[:5, :5] = False
    before = rgb.copy()
    mask = cloud_mask(rgb, valid, MaskThresholds(dilate_px=1), nir=np.full((h, w), 0.6))
    assert np.array_equal(rgb, before)  # inputs untouched
    assert (mask[20:50, 20:50] == CLOUD).all()
    assert mask[60, 60] == 0
    assert (mask[25:45, 53:57] == HAZE).all()
    assert (mask[:5, :5] == MASK_NODATA).all()
    # NIR test: a dark NIR (water glint) is not cloud.
    dark_nir = cloud_mask(rgb, valid, MaskThresholds(), nir=np.zeros((h, w), np.float32))
    assert not (dark_nir == CLOUD).any()


def test_guided_filter_dark_channel_and_dehaze() -> None:
    rng = np.random.default_rng(1)
    guide = np.zeros((64, 64), np.float32)
    guide[:, 32:] = 1.0
    noisy = guide + rng.normal(0, 0.1, guide.shape).astype(np.float32)
    smooth = guided_filter(guide, noisy, radius=4, eps=1e-2)
    # Noise is reduced, and the edge of the guide survives.
    assert smooth[:, :28].std() < noisy[:, :28].std() / 2
    assert smooth[:, 36:].mean() - smooth[:, :28].mean() > 0.9
    const = guided_filter(guide, np.full_like(guide, 0.4))
    np.testing.assert_allclose(const, 0.4, atol=1e-4)

    scene = rng.uniform(0.05, 0.5, (3, 64, 64)).astype(np.float32)
    scene[:, ::8, ::8] = 0.0  # dark pixels everywhere: the prior holds
    assert dark_channel(scene).max() == 0.0
    light = np.array([0.9, 0.9, 0.92], np.float32)
    t_true = 0.6
    hazy = scene * t_true + light[:, None, None] * (1 - t_true)
    valid = np.ones((64, 64), bool)
    found = atmospheric_light(hazy, (0, 1, 2), valid)
    assert found is not None and np.all(found > 0.3)
    clear, t = dehaze(hazy, (0, 1, 2), light)
    assert np.abs(clear - scene).mean() < np.abs(hazy - scene).mean() / 2
    assert 0.5 < float(np.median(t)) < 0.75


def _write_qa_image(path: Path, value: int, qa_box: tuple[int, int, int, int] | None) -> Path:
    """A 64 x 64 uint8 image, bands R, G, B, NIR, QA; QA = 8 inside ``qa_box`` (xyxy)."""
    img = np.full((5, 64, 64), value, np.uint8)
    img[4] = 0
    if qa_box is not None:
        x0, y0, x1, y1 = qa_box
        img[4, y0:y1, x0:x1] = 8
    profile = dict(
        driver="GTiff", width=64, height=64, count=5, dtype="uint8", nodata=None,
        crs="EPSG:32633", transform=Affine(1, 0, 500000, 0, -1, 5000000),
    )  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(img)
    return path


def test_other_dates_are_masked_by_their_own_quality_band(tmp_path: Path) -> None:
    target = _write_qa_image(tmp_path / "t.tif", 100, (16, 16, 48, 48))
    # Date 1 is flagged cloudy over the same square (its values there must not be used) ...
    d1 = _write_qa_image(tmp_path / "d1.tif", 200, (16, 16, 48, 48))
    # ... date 2 is clear everywhere.
    d2 = _write_qa_image(tmp_path / "d2.tif", 60, None)
    settings = make_settings(tmp_path, [tmp_path])
    scene = Scene.open(target, settings=settings, progress=False)
    args = {
        "others": [str(d1), str(d2)],
        "quality_band": 5,
        "normalize": False,
        "dilate_px": 0,
        "preview": False,
    }
    out = run(scene, tmp_path, settings, args)
    with rasterio.open(by_name(out, "cloudfree.tif")) as ds:
        result = ds.read()
    assert (result[:4, 20:44, 20:44] == 60).all()  # only the clear date filled the cloud
    assert (result[:4, :8, :8] == 100).all()  # clear pixels kept
    assert out.data["synthetic_fraction"] == 0.0


def test_dehaze_all_reduces_uniform_haze(tmp_path: Path, shared_data: Path) -> None:
    with rasterio.open(naip(shared_data, "20200831")) as ds:
        clean = ds.read(window=((0, 256), (0, 256)))
        profile = ds.profile
        colorinterp = ds.colorinterp
    light = np.array([235, 235, 240, 230], np.float32)[:, None, None]
    hazy = np.clip(np.rint(clean * 0.6 + light * 0.4), 1, 255).astype(np.uint8)
    profile.update(driver="GTiff", width=256, height=256)
    with rasterio.open(tmp_path / "hazy.tif", "w", **profile) as dst:
        dst.write(hazy)
        dst.colorinterp = colorinterp
    settings = make_settings(tmp_path, [tmp_path])
    scene = Scene.open(tmp_path / "hazy.tif", settings=settings, progress=False)
    args = {"method": "single", "dehaze": "all", "brightness": 1.0, "haze_brightness": 1.0}
    out = run(scene, tmp_path, settings, args)
    with rasterio.open(by_name(out, "cloudfree.tif")) as ds:
        result = ds.read()
    print(f"\nuniform haze: PSNR {psnr(hazy, clean):.2f} -> {psnr(result, clean):.2f} dB")
    assert psnr(result[:3], clean[:3]) > psnr(hazy[:3], clean[:3]) + 2.0
    assert out.data["synthetic_fraction"] == 0.0


def test_nan_nodata_does_not_spread_over_valid_pixels(tmp_path: Path) -> None:
    """Float raster with NaN nodata beside cloud and haze: the filters must not spread NaN."""
    rng = np.random.default_rng(0)
    h = w = 256
    yy, xx = np.mgrid[0:h, 0:w]
    img = (0.15 + 0.05 * rng.random((3, h, w))).astype(np.float32)
    img[0] += 0.05 * np.sin(xx / 9.0).astype(np.float32)
    d = np.hypot(xx - 90, yy - 128)
    img[:, d < 30] = 0.9  # bright cloud
    haze = (d >= 30) & (d < 70)
    a = (0.5 * (1 - (d[haze] - 30) / 40)).astype(np.float32)
    img[:, haze] = img[:, haze] * (1 - a) + 0.85 * a
    img[:, :, :40] = np.nan  # nodata strip next to the cloud
    path = tmp_path / "nan.tif"
    profile = dict(
        driver="GTiff", width=w, height=h, count=3, dtype="float32", nodata=float("nan"),
        crs="EPSG:32633", transform=Affine(1, 0, 500000, 0, -1, 5000000),
    )  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(img)
    settings = make_settings(tmp_path, [tmp_path])
    scene = Scene.open(path, settings=settings, progress=False)
    out = run(scene, tmp_path, settings, {"preview": False})
    with rasterio.open(by_name(out, "cloudfree.tif")) as ds:
        result = ds.read()
    with rasterio.open(by_name(out, "cloudmask.tif")) as ds:
        mask = ds.read(1)
    assert (mask == CLOUD).any() and (mask == HAZE).any()
    assert not np.isnan(result[:, :, 40:]).any()  # valid pixels stay valid
    assert np.isnan(result[:, :, :40]).all()  # nodata stays nodata
    assert np.array_equal(result[:, :, 200:], img[:, :, 200:])  # far from the cloud: untouched
    assert float(result[:, :, 40:].max()) < 0.9  # the cloud was removed
