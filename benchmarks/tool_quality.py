"""Denoising and cloud removal measured on real NAIP tiles, side by side with the field's methods.

**Denoising.** On the four co-registered NAIP years in ``../shared/data/naip`` (R, G, B, NIR,
uint8), Gaussian noise of std sigma (5, 10, 15, 25; fixed seeds) is added to every band, NIR
included, and rounded/clipped to uint8. Every method gets the same noisy input; outputs are
rounded to uint8 (as the tool writes them) and compared with the clean tile: PSNR (peak 255, all
bands) and SSIM (scikit-image, per band, averaged). Methods:

* ``ours_est`` -- the tool's default optical filter (:func:`zoomearth.tools._denoise_filters.
  denoise_array`: band decorrelation + two-stage sliding-DCT shrinkage) with the noise level
  **estimated** from the input, as a user gets it;
* ``ours_true`` -- the same with the true sigma;
* ``nlm_prev`` -- the previous default, joint non-local means over the four bands (OpenCV,
  ``h = 0.9 sigma``), with the estimated sigma;
* ``cv_nlm`` -- OpenCV's own NLM with the true sigma: ``fastNlMeansDenoisingColored`` on R, G, B
  (CIELAB, ``h = hColor = 0.5 sigma``) and ``fastNlMeansDenoising`` on NIR (``h = sigma``),
  7 px patches and 21 px search (OpenCV's recommended windows; OpenCV gives no sigma-to-h rule,
  these factors were the best of 0.4-1.2 on the 2009 tile);
* ``bm3d`` -- BM3D (the ``bm3d`` package, reference implementation of Makinen, Azzari & Foi)
  with the true sigma: colour BM3D (``bm3d_rgb``, opponent colour space) on R, G, B and
  grey-level BM3D on NIR -- the strongest the package offers for this data.

Speed: Mpx/s of each method (pixels of the crop / seconds; the fast methods' time is the median of
``--runs`` runs, BM3D runs once per input), then the median over the inputs, and each method's
speed relative to BM3D. The sigma estimate's error (estimate - true) is printed per tile, sigma
and band. BM3D takes about 2 minutes per Mpx, so the default crops ``--crop`` px (512) from the
centre of each tile; ``--full`` uses whole tiles (0.68 Mpx each, ~30 min of BM3D); ``--quick``
uses a 64 px crop, sigma 10 and 25 and one run (seconds, run in CI). ``--bm3d-cache FILE`` keeps
BM3D's results (JSON, keyed by tile, crop and sigma) between runs.

**Cloud removal, single-image mode.** Over the clean tiles of the three years not used for
tuning the mask (``--tune-year``, 2009 by default), the three cloud models of
:mod:`zoomearth.synth.clouds` (soft blobs, thin haze, fractal cumulus; 2 seeds each) are blended
in and ``cloud_removal`` (``method: single``, the tool through ``run_tool``, defaults;
``--thin-haze``: with ``thin_haze`` on, the HOT test for haze away from clouds) runs on the
written GeoTIFF: PSNR of the input and of the result against the clean tile, the gain, and the
IoU of the tool's mask (cloud or haze) with the true mask. The clean tiles themselves run too
("clear"): the share the mask finds there is its false-positive rate, and the result's PSNR
against the tile the damage done to a clear image. The tuning year's figures are printed apart.

Usage::

    python benchmarks/tool_quality.py [--quick | --full] [--crop 512] [--sigmas 5,10,15,25]
        [--runs 3] [--years 20090818,...] [--skip-bm3d] [--bm3d-cache FILE] [--json OUT]
        [--no-clouds] [--thin-haze] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

YEARS = ("20090818", "20140720", "20170827", "20200831")
METHODS = ("ours_est", "ours_true", "nlm_prev", "cv_nlm", "bm3d")
#: OpenCV NLM strength per unit of sigma (colour: CIELAB L and ab; grey: NIR).
CV_NLM_COLOUR = 0.5
CV_NLM_GREY = 1.0
GOAL_DB = 1.5
GOAL_SPEEDUP = 20.0


def naip_path(data: Path, year: str) -> Path:
    """Path of the NAIP tile of ``year`` under the shared data folder."""
    return data / "naip" / f"m_4709963_se_14_1_{year}.tif"


def read_tile(data: Path, year: str, crop: int | None) -> np.ndarray:
    """``(4, h, w)`` uint8 clean NAIP tile, or its centred ``crop x crop`` part."""
    import rasterio

    with rasterio.open(naip_path(data, year)) as ds:
        img = ds.read()
    if crop:
        h, w = img.shape[1:]
        y0, x0 = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
        img = img[:, y0 : y0 + crop, x0 : x0 + crop]
    return np.ascontiguousarray(img)


def add_noise(clean: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """Gaussian noise on every band, rounded and clipped to uint8."""
    rng = np.random.default_rng(seed)
    noisy = clean.astype(np.float64) + rng.normal(0.0, sigma, clean.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def to_u8(x: np.ndarray) -> np.ndarray:
    """Round and clip to uint8."""
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB, peak 255) over all bands."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * float(np.log10(255.0**2 / mse))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM over bands (scikit-image, data range 255)."""
    from skimage.metrics import structural_similarity

    return float(
        np.mean([structural_similarity(a[i], b[i], data_range=255) for i in range(a.shape[0])])
    )


# ---------------------------------------------------------------------------------------------
# The methods: (bands, h, w) uint8 noisy -> (bands, h, w) float/uint8 denoised
# ---------------------------------------------------------------------------------------------
def ours(noisy: np.ndarray, sigma: float | None) -> np.ndarray:
    """The tool's default filter; ``sigma`` None estimates the noise level."""
    from zoomearth.tools._denoise_filters import denoise_array

    sigmas = None if sigma is None else [float(sigma)] * noisy.shape[0]
    out, _ = denoise_array(noisy, sigmas)
    return out


def nlm_prev(noisy: np.ndarray) -> np.ndarray:
    """The previous default: joint NLM over the bands, estimated sigma."""
    from zoomearth.tools._denoise_filters import estimate_noise_sigma, nlm_denoise

    work = noisy.astype(np.float64)
    valid = np.ones(noisy.shape[1:], bool)
    sig = estimate_noise_sigma([(work, valid)], limits=(0.0, 255.0))
    n = noisy.shape[0]
    return nlm_denoise(work, sig, dtype="uint8", offsets=[0.0] * n, scales=[1.0] * n)


def cv_nlm(noisy: np.ndarray, sigma: float) -> np.ndarray:
    """OpenCV NLM, true sigma: colour NLM on RGB, grey NLM on the other bands."""
    import cv2

    bgr = np.ascontiguousarray(np.moveaxis(noisy[:3], 0, -1)[..., ::-1])
    h = CV_NLM_COLOUR * sigma
    rgb = cv2.fastNlMeansDenoisingColored(bgr, None, h, h, 7, 21)[..., ::-1]
    out = [np.moveaxis(rgb, -1, 0)]
    for b in range(3, noisy.shape[0]):
        out.append(cv2.fastNlMeansDenoising(noisy[b], None, CV_NLM_GREY * sigma, 7, 21)[None])
    return np.concatenate(out).astype(np.float64)


def bm3d_true(noisy: np.ndarray, sigma: float) -> np.ndarray:
    """BM3D, true sigma: colour BM3D on RGB, grey BM3D on the other bands (0-1 scale)."""
    import bm3d

    x = noisy.astype(np.float64) / 255.0
    s = sigma / 255.0
    rgb = bm3d.bm3d_rgb(np.moveaxis(x[:3], 0, -1), s)
    out = [np.moveaxis(rgb, -1, 0)]
    for b in range(3, noisy.shape[0]):
        out.append(np.asarray(bm3d.bm3d(x[b], s))[None])
    return np.concatenate(out) * 255.0


def timed(fn: Callable[[], np.ndarray], runs: int) -> tuple[np.ndarray, float]:
    """The result of ``fn`` and the median of ``runs`` wall-clock timings."""
    times = []
    out = None
    for _ in range(max(1, runs)):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    assert out is not None
    return out, statistics.median(times)


# ---------------------------------------------------------------------------------------------
# Denoising benchmark
# ---------------------------------------------------------------------------------------------
def denoise_bench(opts: argparse.Namespace) -> dict[str, Any]:
    """Run every method on every (year, sigma); return the records and the summary."""
    from zoomearth.tools._denoise_filters import estimate_noise_sigma

    cache: dict[str, Any] = {}
    cache_path = Path(opts.bm3d_cache) if opts.bm3d_cache else None
    if cache_path is not None and cache_path.is_file():
        cache = json.loads(cache_path.read_text())
    records = []
    for year in opts.years:
        clean = read_tile(opts.data, year, opts.crop)
        mpx = clean.shape[1] * clean.shape[2] / 1e6
        for sigma in opts.sigmas:
            seed = int(year) % 9973 + int(sigma * 10)
            noisy = add_noise(clean, sigma, seed)
            valid = np.ones(noisy.shape[1:], bool)
            est = estimate_noise_sigma([(noisy.astype(np.float64), valid)], limits=(0.0, 255.0))
            rec: dict[str, Any] = {
                "year": year,
                "sigma": sigma,
                "shape": list(clean.shape),
                "noisy_psnr": psnr(noisy, clean),
                "noisy_ssim": ssim(noisy, clean),
                "sigma_est": [round(s, 3) for s in est],
                "sigma_err": [round(s - sigma, 3) for s in est],
                "methods": {},
            }
            runs: dict[str, tuple[Callable[[], np.ndarray], int]] = {
                "ours_est": (lambda n=noisy: ours(n, None), opts.runs),
                "ours_true": (lambda n=noisy, s=sigma: ours(n, s), opts.runs),
                "nlm_prev": (lambda n=noisy: nlm_prev(n), opts.runs),
                "cv_nlm": (lambda n=noisy, s=sigma: cv_nlm(n, s), opts.runs),
            }
            if not opts.skip_bm3d:
                runs["bm3d"] = (lambda n=noisy, s=sigma: bm3d_true(n, s), 1)
            for name, (fn, n_runs) in runs.items():
                key = f"{year}:{clean.shape[1]}x{clean.shape[2]}:{sigma}"
                if name == "bm3d" and key in cache:
                    rec["methods"][name] = dict(cache[key], cached=True)
                    continue
                out, secs = timed(fn, n_runs)
                u8 = to_u8(out)
                rec["methods"][name] = {
                    "psnr": psnr(u8, clean),
                    "ssim": ssim(u8, clean),
                    "seconds": secs,
                    "mpx_s": mpx / secs if secs > 0 else float("inf"),
                }
                if name == "bm3d":
                    cache[key] = rec["methods"][name]
            records.append(rec)
            line = "  ".join(
                f"{m} {r['psnr']:.2f}" for m, r in rec["methods"].items() if "psnr" in r
            )
            print(f"  {year} sigma {sigma:>4g}: noisy {rec['noisy_psnr']:.2f}  {line}", flush=True)
    if cache_path is not None and not opts.skip_bm3d:
        cache_path.write_text(json.dumps(cache, indent=1))
    return {"records": records}


def print_denoise(result: dict[str, Any], opts: argparse.Namespace) -> dict[str, Any]:
    """Print the PSNR/SSIM tables, the speed, the sigma errors; return the summary."""
    records = result["records"]
    methods = [m for m in METHODS if any(m in r["methods"] for r in records)]
    print("\nDenoising: PSNR dB / SSIM (uint8 output vs clean), same inputs for every method")
    head = f"{'tile':9s} {'sigma':>5s} {'noisy':>12s} " + " ".join(f"{m:>13s}" for m in methods)
    print(head)
    for r in records:
        cells = []
        for m in methods:
            v = r["methods"].get(m)
            cells.append(f"{v['psnr']:6.2f}/{v['ssim']:.3f}" if v else f"{'-':>13s}")
        noisy = f"{r['noisy_psnr']:6.2f}/{r['noisy_ssim']:.3f}"
        print(
            f"{r['year']:9s} {r['sigma']:5g} {noisy:>12s} " + " ".join(f"{c:>13s}" for c in cells)
        )
    summary: dict[str, Any] = {"per_sigma": {}, "speed": {}}
    print("\nMean over tiles, and ours_est - bm3d (worst tile)")
    for sigma in opts.sigmas:
        rows = [r for r in records if r["sigma"] == sigma]
        means = {
            m: statistics.mean(r["methods"][m]["psnr"] for r in rows if m in r["methods"])
            for m in methods
        }
        entry: dict[str, Any] = {"mean_psnr": means}
        text = "  ".join(f"{m} {v:.2f}" for m, v in means.items())
        if "bm3d" in methods:
            gaps = [r["methods"]["ours_est"]["psnr"] - r["methods"]["bm3d"]["psnr"] for r in rows]
            entry["worst_gap_db"] = min(gaps)
            text += f"  | gap worst {min(gaps):+.2f} dB, mean {statistics.mean(gaps):+.2f} dB"
        summary["per_sigma"][str(sigma)] = entry
        print(f"  sigma {sigma:>4g}: {text}")
    print("\nSpeed: median over inputs of Mpx/s (fast methods: median of runs), and vs BM3D")
    bm = None
    if "bm3d" in methods:
        bm = statistics.median(r["methods"]["bm3d"]["mpx_s"] for r in records)
    for m in methods:
        v = statistics.median(r["methods"][m]["mpx_s"] for r in records if m in r["methods"])
        summary["speed"][m] = v
        ratio = f"  {v / bm:7.1f}x BM3D" if bm else ""
        print(f"  {m:10s} {v:9.3f} Mpx/s  ({1.0 / v:8.2f} s/Mpx){ratio}")
    print("\nNoise estimate error (estimate - true sigma), per band R, G, B, NIR; mean |error|")
    worst = 0.0
    for r in records:
        err = r["sigma_err"]
        worst = max(worst, max(abs(e) for e in err))
        band = " ".join(f"{e:+6.2f}" for e in err)
        mean_abs = statistics.mean(abs(e) for e in err)
        print(f"  {r['year']} sigma {r['sigma']:>4g}: {band}   mean |err| {mean_abs:.2f}")
    summary["sigma_worst_abs_err"] = worst
    if bm:
        worst_gap = min(e["worst_gap_db"] for e in summary["per_sigma"].values())
        speedup = summary["speed"]["ours_est"] / bm
        met = worst_gap >= -GOAL_DB and speedup >= GOAL_SPEEDUP
        summary.update(worst_gap_db=worst_gap, speedup_vs_bm3d=speedup, goal_met=met)
        print(
            f"\nGoal (ours_est within {GOAL_DB} dB of BM3D at every sigma and tile, >= "
            f"{GOAL_SPEEDUP:g}x faster): worst gap {worst_gap:+.2f} dB, {speedup:.1f}x -> "
            + ("met" if met else "NOT met")
        )
    return summary


# ---------------------------------------------------------------------------------------------
# Cloud removal (single image) and mask IoU
# ---------------------------------------------------------------------------------------------
def cloud_bench(opts: argparse.Namespace) -> dict[str, Any]:
    """Cloud models over clean tiles -> cloud_removal (single) -> PSNR gain and mask IoU."""
    import rasterio

    from zoomearth.config import load_settings
    from zoomearth.scene import Scene
    from zoomearth.synth.clouds import CLOUD_MODELS
    from zoomearth.tools import ToolContext, run_tool
    from zoomearth.tools._cloudmask import CLEAR, MASK_NODATA
    from zoomearth.tools.cloud_removal import CloudRemoval

    rows = []
    with tempfile.TemporaryDirectory(prefix="tool_quality_") as tmp:
        root = Path(tmp)
        settings = load_settings(
            flags={
                "data_dir": root / "data",
                "cache_dir": root / "cache",
                "allowed_roots": [str(root)],
            },
            environ={},
        )
        for year in opts.years:
            with rasterio.open(naip_path(opts.data, year)) as ds:
                profile = ds.profile
                colorinterp = ds.colorinterp
            clean = read_tile(opts.data, year, opts.cloud_crop)
            # "clear": the clean tile itself -- what the mask finds there is false positives,
            # and the result's PSNR against the tile is the damage done to a clear image.
            models = [("clear", None), *CLOUD_MODELS.items()]
            for model, fn in models:
                for seed in opts.cloud_seeds if fn is not None else (0,):
                    if fn is None:
                        cloudy, truth = clean, np.zeros(clean.shape[1:], dtype=bool)
                    else:
                        cloudy, truth = fn(clean, seed=seed)
                    path = root / f"{year}_{model}_{seed}.tif"
                    prof = dict(profile)
                    prof.update(
                        driver="GTiff", width=clean.shape[2], height=clean.shape[1], nodata=None
                    )
                    with rasterio.open(path, "w", **prof) as dst:
                        dst.write(cloudy)
                        dst.colorinterp = colorinterp
                    t0 = time.perf_counter()
                    with Scene.open(path, settings=settings, progress=False) as scene:
                        ctx = ToolContext(
                            scene=scene, run_dir=root / f"run_{path.stem}", settings=settings
                        )
                        call = {"method": "single", "preview": False, "thin_haze": opts.thin_haze}
                        out = run_tool(CloudRemoval(), ctx, call)
                    secs = time.perf_counter() - t0
                    arts = {Path(a.path).name: Path(a.path) for a in out.artifacts}
                    res_path = next(p for n, p in arts.items() if n.endswith("cloudfree.tif"))
                    mask_path = next(p for n, p in arts.items() if n.endswith("cloudmask.tif"))
                    with rasterio.open(res_path) as ds:
                        result = ds.read()
                    with rasterio.open(mask_path) as ds:
                        mask = ds.read(1)
                    found = (mask != CLEAR) & (mask != MASK_NODATA)
                    union = int((found | truth).sum())
                    rows.append(
                        {
                            "year": year,
                            "model": model,
                            "seed": seed,
                            "tuning": year == opts.tune_year,
                            "psnr_in": psnr(cloudy, clean),
                            "psnr_out": psnr(result, clean),
                            "iou": float((found & truth).sum() / max(1, union)),
                            "true_fraction": float(truth.mean()),
                            "found_fraction": float(found.mean()),
                            "seconds": secs,
                        }
                    )
                    r = rows[-1]
                    if fn is None:
                        print(
                            f"  {year} clear (no cloud): found {r['found_fraction']:.1%} "
                            f"(false positives), result PSNR {r['psnr_out']:.2f} dB against "
                            f"the clear tile, {secs:.2f} s",
                            flush=True,
                        )
                        continue
                    print(
                        f"  {year} {model:8s} seed {seed}: PSNR {r['psnr_in']:.2f} -> "
                        f"{r['psnr_out']:.2f} dB ({r['psnr_out'] - r['psnr_in']:+.2f}), IoU "
                        f"{r['iou']:.3f} (true {r['true_fraction']:.1%}, found "
                        f"{r['found_fraction']:.1%}), {secs:.2f} s",
                        flush=True,
                    )
    return {"rows": rows}


def print_clouds(result: dict[str, Any]) -> dict[str, Any]:
    """Per model: PSNR gain range and IoU (mean, min) on held-out years; tuning year apart."""
    rows = result["rows"]
    summary: dict[str, Any] = {}
    print("\ncloud_removal (single image): PSNR gain dB and mask IoU (cloud or haze vs truth)")
    for held, label in ((True, "held-out years"), (False, "tuning year")):
        print(f"  {label}:")
        clear = [r for r in rows if r["model"] == "clear" and r["tuning"] != held]
        if clear:
            found = [r["found_fraction"] for r in clear]
            out = [r["psnr_out"] for r in clear]
            summary[f"{'heldout' if held else 'tuning'}:clear"] = {
                "found_mean": statistics.mean(found),
                "found_max": max(found),
                "psnr_min": min(out),
                "n": len(clear),
            }
            print(
                f"    clear    false positives mean {statistics.mean(found):.1%}, max "
                f"{max(found):.1%}; result vs clear tile PSNR min {min(out):.2f} dB "
                f"({len(clear)} images)"
            )
        for model in sorted({r["model"] for r in rows} - {"clear"}):
            sel = [r for r in rows if r["model"] == model and r["tuning"] != held]
            if not sel:
                continue
            gains = [r["psnr_out"] - r["psnr_in"] for r in sel]
            ious = [r["iou"] for r in sel]
            entry = {
                "gain_min": min(gains),
                "gain_max": max(gains),
                "gain_mean": statistics.mean(gains),
                "iou_mean": statistics.mean(ious),
                "iou_min": min(ious),
                "n": len(sel),
            }
            summary[f"{'heldout' if held else 'tuning'}:{model}"] = entry
            print(
                f"    {model:8s} gain {entry['gain_min']:+.2f} .. {entry['gain_max']:+.2f} dB "
                f"(mean {entry['gain_mean']:+.2f}); IoU mean {entry['iou_mean']:.3f}, "
                f"min {entry['iou_min']:.3f}  ({entry['n']} images)"
            )
    return summary


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (``--quick`` / ``--full`` set the crop, sigmas and runs)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="64 px crops, sigma 10/25, 1 run")
    size.add_argument("--full", action="store_true", help="whole tiles (BM3D: ~30 min)")
    parser.add_argument("--crop", type=int, default=512, help="centred crop side (px)")
    parser.add_argument("--sigmas", default=None, help="comma-separated (default 5,10,15,25)")
    parser.add_argument("--years", default=",".join(YEARS))
    parser.add_argument("--runs", type=int, default=3, help="timing runs of the fast methods")
    parser.add_argument("--tune-year", default="20090818", help="year the cloud mask was tuned on")
    parser.add_argument("--skip-bm3d", action="store_true")
    parser.add_argument("--bm3d-cache", default=None, help="JSON file keeping BM3D's results")
    parser.add_argument("--no-clouds", action="store_true", help="skip the cloud_removal part")
    parser.add_argument("--no-denoise", action="store_true", help="skip the denoising part")
    parser.add_argument(
        "--thin-haze", action="store_true", help="cloud_removal with thin_haze (the HOT test) on"
    )
    parser.add_argument("--json", default=None, help="write every figure to this JSON file")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    opts = parser.parse_args(argv)
    opts.data = Path(opts.data)
    opts.years = [y for y in opts.years.split(",") if y]
    sigmas = opts.sigmas or ("10,25" if opts.quick else "5,10,15,25")
    opts.sigmas = [float(s) for s in sigmas.split(",") if s]
    opts.cloud_crop = None
    opts.cloud_seeds = (1, 2)
    if opts.quick:
        opts.crop, opts.runs, opts.cloud_crop, opts.cloud_seeds = 64, 1, 160, (1,)
    elif opts.full:
        opts.crop = None
    missing = [y for y in opts.years if not naip_path(opts.data, y).is_file()]
    if missing:
        parser.error(f"NAIP tiles for {missing} not found under {opts.data}/naip; pass --data")
    return opts


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the tables, return (and optionally write) every figure."""
    opts = parse(argv)
    import cv2

    print(
        f"tool_quality: years {','.join(opts.years)}; crop "
        f"{opts.crop or 'whole tile'}; sigmas {opts.sigmas}; runs {opts.runs}; "
        f"OpenCV threads {cv2.getNumThreads()}",
        flush=True,
    )
    out: dict[str, Any] = {"options": {"crop": opts.crop, "sigmas": opts.sigmas}}
    if not opts.no_denoise:
        print("\nDenoising (PSNR dB per method as each input finishes):")
        res = denoise_bench(opts)
        out["denoise"] = res["records"]
        out["denoise_summary"] = print_denoise(res, opts)
    if not opts.no_clouds:
        print(
            "\ncloud_removal single image"
            + (" with thin_haze (HOT)" if opts.thin_haze else "")
            + " (as each image finishes):"
        )
        res = cloud_bench(opts)
        out["clouds"] = res["rows"]
        out["clouds_summary"] = print_clouds(res)
    if opts.json:
        Path(opts.json).write_text(json.dumps(out, indent=1, default=float))
    return out


if __name__ == "__main__":
    main()
