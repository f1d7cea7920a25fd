"""The built-in ``denoise`` tool: contract, quality on a real NAIP tile, streaming, SAR, learned."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from tests.tools.helpers import write_array
from zoomearth.geometry import PixelBox
from zoomearth.models import ModelPool
from zoomearth.scene import Scene
from zoomearth.testing import check_tool
from zoomearth.tools import ToolContext, ToolInputError, get_registry, run_tool
from zoomearth.tools.denoise import (
    Denoise,
    estimate_noise_sigma,
    lee_filter,
    load_restoration_model,
)

NAIP = "naip/m_4709963_se_14_1_20090818.tif"


_write = functools.partial(write_array, tiled=True)



def _naip(shared_data: Path) -> np.ndarray:
    with rasterio.open(shared_data / NAIP) as ds:
        return ds.read()


def _noisy(clean: np.ndarray, sigma: float, seed: int, lo=0, hi=255) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noisy = clean.astype(np.float64) + rng.normal(0, sigma, clean.shape)
    return np.clip(np.rint(noisy), lo, hi).astype(clean.dtype)


def _psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(peak**2 / mse))


def _run(scene: Scene, run_dir: Path, args=None, region=None, pool=None, settings=None):
    ctx = ToolContext(
        scene=scene, run_dir=run_dir, region=region, pool=pool, settings=settings or scene.settings
    )
    return run_tool(Denoise, ctx, args or {})


def _read_artifact(outcome, kind: str = "raster") -> tuple[np.ndarray, dict]:
    art = next(a for a in outcome.artifacts if a.kind == kind)
    with rasterio.open(art.path) as ds:
        return ds.read(), ds.profile | {"overviews": ds.overviews(1), "transform": ds.transform}


def test_contract_kit():
    report = check_tool(Denoise)
    assert report.ok, str(report)


def test_registered_by_name():
    assert get_registry().get_class("denoise") is Denoise
    caps = Denoise.capabilities
    assert caps.streaming and caps.max_side == 2048 and "uint16" in (caps.dtypes or ())


def test_noise_estimate_on_pure_noise_and_flat_image():
    rng = np.random.default_rng(3)
    noise = rng.normal(100, 7.0, (2, 200, 200))
    valid = np.ones((200, 200), bool)
    sig = estimate_noise_sigma([(noise, valid)])
    assert sig == pytest.approx([7.0, 7.0], abs=0.35)
    ramp = np.broadcast_to(np.arange(200.0), (1, 200, 200))
    assert estimate_noise_sigma([(ramp, valid)]) == [0.0]


def test_psnr_gain_on_real_naip_tile(tmp_path, shared_data, settings):
    """Gaussian noise of sigma 10, 15, 25: >= 3 dB at 15, positive at 10 and 25."""
    clean = _naip(shared_data)
    gains = {}
    for sigma in (10, 15, 25):
        noisy = _noisy(clean, sigma, seed=sigma)
        path = _write(tmp_path / f"noisy{sigma}.tif", noisy, nodata=None)
        with Scene.open(path, settings=settings, progress=False) as scene:
            outcome = _run(scene, tmp_path / "run")
        out, profile = _read_artifact(outcome)
        assert out.shape == clean.shape and out.dtype == np.uint8
        gains[sigma] = _psnr(out, clean) - _psnr(noisy, clean)
        est = outcome.data["noise_sigma"]
        assert len(est) == 4 and all(abs(s - sigma) < 2.0 for s in est), est
        assert outcome.data["backend"] == "dct"
    print("PSNR gain (dB) by sigma:", {k: round(v, 2) for k, v in gains.items()})
    assert gains[15] >= 3.0
    assert gains[10] > 0 and gains[25] > 0


def test_uint16_and_float32_through_16bit_nlm(tmp_path, shared_data, settings):
    clean8 = _naip(shared_data)[:, :256, :256]
    clean16 = clean8.astype(np.uint16) * 16
    noisy16 = _noisy(clean16, 15 * 16, seed=1, hi=65535)
    path = _write(tmp_path / "n16.tif", noisy16, nodata=0)
    with Scene.open(path, settings=settings, progress=False) as scene:
        outcome = _run(scene, tmp_path / "run")
    out, profile = _read_artifact(outcome)
    assert out.dtype == np.uint16 and profile["nodata"] == 0
    gain16 = _psnr(out, clean16, 4080) - _psnr(noisy16, clean16, 4080)

    clean_f = clean8.astype(np.float32) / 255.0
    noisy_f = (clean_f + np.random.default_rng(2).normal(0, 15 / 255, clean_f.shape)).astype(
        np.float32
    )
    path = _write(tmp_path / "nf.tif", noisy_f, nodata=float("nan"))
    with Scene.open(path, settings=settings, progress=False) as scene:
        outcome = _run(scene, tmp_path / "run")
    out_f, profile = _read_artifact(outcome)
    assert out_f.dtype == np.float32 and np.isnan(profile["nodata"])
    assert outcome.data["mode"] == "optical"  # four bands: never SAR
    gain_f = _psnr(out_f, clean_f, 1.0) - _psnr(noisy_f, clean_f, 1.0)
    print(f"PSNR gain at sigma 15: uint16 {gain16:.2f} dB, float32 {gain_f:.2f} dB")
    assert gain16 >= 3.0 and gain_f >= 3.0


def test_tiles_match_one_piece_and_outputs_are_aligned(tmp_path, shared_data, settings):
    clean = _naip(shared_data)[:, :150, :200]
    noisy = _noisy(clean, 15, seed=5)
    noisy[:, :20, :30] = 0  # a nodata corner
    path = _write(tmp_path / "n.tif", noisy, nodata=0)
    region = PixelBox(10, 5, 190, 145)
    results = []
    for side in (1024, 48):
        s = settings.model_copy(update={"tool_tile_side": side})
        with Scene.open(path, settings=s, progress=False) as scene:
            outcome = _run(scene, tmp_path / f"run{side}", region=region, settings=s)
        out, profile = _read_artifact(outcome)
        results.append(out)
        assert outcome.data["tiles"] == (1 if side == 1024 else 12)
    np.testing.assert_array_equal(results[0], results[1])
    out = results[0]
    assert out.shape == (4, 140, 180)
    assert profile["crs"].to_epsg() == 32614
    assert profile["transform"] == Affine(1.0, 0, 600_010, 0, -1.0, 5_199_995)
    assert profile["nodata"] == 0
    # nodata pixels of the region stay nodata; valid pixels never become nodata-coloured wholesale
    assert (out[:, :15, :20] == 0).all()
    assert (out[:, 20:, 30:] != 0).any(axis=0).all()
    # the input is untouched and the preview is before | after
    with rasterio.open(path) as ds:
        np.testing.assert_array_equal(ds.read(), noisy)
    preview = next(a for a in outcome.artifacts if a.kind == "preview")
    import cv2

    png = cv2.imread(str(preview.path))
    assert png.shape == (140, 2 * 180 + 4, 3)


def test_sar_lee_filter_auto_mode(tmp_path, settings):
    rng = np.random.default_rng(0)
    clean = np.full((160, 160), 0.2, np.float32)
    clean[40:120, 40:120] = 1.0
    looks = 4
    speckle = rng.gamma(looks, 1.0 / looks, clean.shape).astype(np.float32)
    noisy = (clean * speckle)[None]
    path = _write(tmp_path / "sar.tif", noisy, nodata=None)
    with Scene.open(path, settings=settings, progress=False) as scene:
        outcome = _run(scene, tmp_path / "run")
    assert outcome.data["mode"] == "sar" and outcome.data["backend"] == "lee"
    out, _ = _read_artifact(outcome)
    err_before = np.mean((noisy[0] - clean) ** 2)
    err_after = np.mean((out[0] - clean) ** 2)
    assert err_after < 0.5 * err_before
    # ENL estimated from the data: the right order of magnitude (edges pull it down a little)
    enl = 1.0 / outcome.data["speckle_cu2"][0]
    assert 2.0 < enl < 6.0, enl
    # the filter itself keeps a constant image constant
    flat = np.full((20, 20), 3.0)
    np.testing.assert_allclose(lee_filter(flat, 0.25), flat)


@pytest.fixture()
def one_torch_thread():
    """One intra-op thread: tiny models on a shared 2-core machine run faster than with 2."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny_dncnn(path: Path) -> Path:
    """A tiny random DnCNN (3 -> 3 channels, 8 features, 8 convs) saved as a .pth state dict."""
    import torch
    from spandrel.architectures.DnCNN import DnCNN

    torch.manual_seed(0)
    model = DnCNN(in_nc=3, out_nc=3, nc=8, nb=8, act_mode="R")
    torch.save(model.state_dict(), path)
    return path


def test_learned_backend_through_spandrel_and_the_pool(
    tmp_path, shared_data, settings, one_torch_thread
):
    ckpt = _tiny_dncnn(tmp_path / "tiny_dncnn.pth")
    descriptor = load_restoration_model(ckpt)
    assert descriptor.architecture.id == "DnCNN" and descriptor.scale == 1
    clean = _naip(shared_data)[:, :96, :128]
    path = _write(tmp_path / "n.tif", _noisy(clean, 15, seed=9), nodata=0)
    s = settings.model_copy(update={"denoise_model": ckpt, "tool_device": "cpu"})
    pool = ModelPool(budgets={"cpu": 2**30})
    with Scene.open(path, settings=s, progress=False) as scene:
        outcome = _run(scene, tmp_path / "run", pool=pool, settings=s)
        # explicit classical backend ignores the configured model
        classical = _run(scene, tmp_path / "run", {"backend": "classical"}, pool=pool, settings=s)
    assert outcome.data["backend"] == "learned"
    assert outcome.data["architecture"] == "DnCNN"
    assert "DnCNN" in outcome.text
    out, profile = _read_artifact(outcome)
    assert out.shape == clean.shape and out.dtype == np.uint8 and profile["nodata"] == 0
    stats = pool.stats()
    model = stats.model(f"denoise:spandrel:{ckpt.resolve()}", "cpu")
    assert model is not None and model.loads == 1 and model.hits >= 0
    assert classical.data["backend"] == "dct"


def test_learned_without_model_or_missing_file_is_refused(tmp_path, settings):
    path = _write(tmp_path / "img.tif", np.full((3, 32, 32), 100, np.uint8))
    with Scene.open(path, settings=settings, progress=False) as scene:
        with pytest.raises(ToolInputError, match="denoise_model") as err:
            _run(scene, tmp_path / "run", {"backend": "learned"})
        assert err.value.code == "backend_unavailable"
        s = settings.model_copy(update={"denoise_model": tmp_path / "nope.pth"})
        with pytest.raises(ToolInputError, match="does not exist"):
            _run(scene, tmp_path / "run", {"backend": "learned"}, settings=s)
        with pytest.raises(ToolInputError, match="strength"):
            _run(scene, tmp_path / "run", {"strength": 10})
    assert not list((tmp_path / "run").glob("*.tif"))


def _strip_image(bands: int) -> np.ndarray:
    """1100 x 1100 float32 at 0.3 (+ noise) with a bright 2.3 strip in columns 0-39.

    Above 1024 px the statistics come from 512 px windows that all miss the strip.
    """
    rng = np.random.default_rng(4)
    img = (0.3 + rng.normal(0, 0.01, (bands, 1100, 1100))).astype(np.float32)
    img[:, :, :40] += 2.0
    return img


def test_values_outside_the_sample_windows_are_not_clipped(tmp_path, settings):
    path = _write(tmp_path / "strip.tif", _strip_image(2))
    with Scene.open(path, settings=settings, progress=False) as scene:
        outcome = _run(scene, tmp_path / "run", {"mode": "optical", "preview": False})
    out, _ = _read_artifact(outcome)
    assert outcome.data["backend"] == "dct" and outcome.data["rms_change"] > 0
    strip = out[:, 5:-5, 5:35]
    assert abs(float(np.median(strip)) - 2.3) < 0.05 and float(strip.min()) > 2.0
    assert abs(float(np.median(out[:, :, 100:])) - 0.3) < 0.01


def test_learned_values_outside_the_sample_windows_are_not_clipped(
    tmp_path, settings, one_torch_thread
):
    ckpt = _tiny_dncnn(tmp_path / "tiny_dncnn.pth")
    path = _write(tmp_path / "strip.tif", _strip_image(3))
    s = settings.model_copy(update={"denoise_model": ckpt, "tool_device": "cpu"})
    pool = ModelPool(budgets={"cpu": 2**30})
    with Scene.open(path, settings=s, progress=False) as scene:
        outcome = _run(scene, tmp_path / "run", {"preview": False}, pool=pool, settings=s)
    out, _ = _read_artifact(outcome)
    assert outcome.data["backend"] == "learned"
    strip = out[:, 5:-5, 5:35]
    assert abs(float(np.median(strip)) - 2.3) < 0.2


# ---------------------------------------------------------------------------------------------
# The default filter's quality and the noise estimate on a real NAIP crop (issue 18)
# ---------------------------------------------------------------------------------------------
def _naip_crop(shared_data: Path, year: str = "20140720") -> np.ndarray:
    with rasterio.open(shared_data / f"naip/m_4709963_se_14_1_{year}.tif") as ds:
        return ds.read()[:, 100:356, 200:456]


def test_default_filter_gain_with_estimated_sigma(shared_data):
    """Measured on this 256 px crop of 2014: +6.2 dB at sigma 10, +9.8 dB at sigma 25."""
    from zoomearth.tools._denoise_filters import denoise_array

    clean = _naip_crop(shared_data)
    for sigma, floor in ((10, 5.5), (25, 9.0)):
        noisy = _noisy(clean, sigma, seed=sigma)
        out, sigmas = denoise_array(noisy)  # the noise level is estimated, as in the tool
        gain = _psnr(np.clip(np.rint(out), 0, 255), clean) - _psnr(noisy, clean)
        print(f"sigma {sigma}: estimated {np.round(sigmas, 2)}, gain {gain:.2f} dB")
        assert gain >= floor, (sigma, gain)


def test_noise_estimate_on_naip_crop_within_tolerance(shared_data):
    """Per band within 1.6 of the truth, mean |error| under 1 (texture biases sigma 5 up)."""
    clean = _naip_crop(shared_data).astype(np.float64)
    valid = np.ones(clean.shape[1:], bool)
    for sigma in (5, 10, 15, 25):
        noisy = _noisy(clean, sigma, seed=sigma).astype(np.float64)
        est = np.array(estimate_noise_sigma([(noisy, valid)], limits=(0.0, 255.0)))
        err = est - sigma
        assert np.abs(err).max() < 1.6 and np.abs(err).mean() < 1.0, (sigma, err)


def test_noise_estimate_ignores_clipped_pixels_and_is_not_quantised():
    rng = np.random.default_rng(1)
    valid = np.ones((300, 300), bool)
    # Integer data: the plain median would give a multiple of 0.247 (3.21 here).
    ints = np.rint(100 + rng.normal(0, 3.0, (1, 300, 300)))
    assert estimate_noise_sigma([(ints, valid)], limits=(0, 255)) == pytest.approx([3.0], abs=0.1)
    # Half the image saturated at 255: clipped noise would read low without the exclusion.
    img = np.rint(np.where(np.arange(300) < 150, 120.0, 250.0) + rng.normal(0, 10, (300, 300)))
    img = np.clip(img, 0, 255)[None]
    est = estimate_noise_sigma([(img, valid)], limits=(0, 255))[0]
    assert est == pytest.approx(10.0, abs=0.5)


def test_band_transform_whitens_and_passes_noiseless_bands(shared_data):
    from zoomearth.tools._denoise_filters import band_transform, dct_denoise

    clean = _naip_crop(shared_data)[:, :96, :96].astype(np.float64)
    noisy = _noisy(clean, 10, seed=3).astype(np.float64)
    noisy[3] = 77.0  # a constant band: no measurable noise, passes unchanged
    valid = np.ones(noisy.shape[1:], bool)
    sig = estimate_noise_sigma([(noisy, valid)], limits=(0.0, 255.0))
    assert sig[3] == 0.0
    t = band_transform([(noisy, valid)], sig)
    assert t.bands == (0, 1, 2)
    m = np.asarray(t.matrix)
    np.testing.assert_allclose(m @ m.T, np.eye(3), atol=1e-9)  # orthonormal rows
    out = dct_denoise(noisy, t)
    np.testing.assert_array_equal(out[3], noisy[3])
    assert _psnr(out[:3], clean[:3]) > _psnr(noisy[:3], clean[:3]) + 3
