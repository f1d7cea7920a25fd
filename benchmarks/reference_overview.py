"""Approximate vs exact reference overview: pixel error and time (zoomearth.scene.reference).

The ``zoomearth`` profile shows ZoomEarth-3B the whole image resized by PIL bicubic to long side
512, as the reference evaluation did. :func:`render_reference_overview` renders that exactly by
streaming full-resolution strips (cost grows with the image) or approximately from a decimated
rendering read through the scene's overview levels (GDAL ``average``, long side
``approx_side``) followed by PIL bicubic to the same size (cost roughly constant). This prints,
per image and ``approx_side``, how far the approximation is from the exact pixels -- mean and
max absolute difference over all pixels and channels, PSNR, share of identical values -- and
the wall time of each path (median of ``--repeats`` runs, same process, warm file cache).

Images:

* real ones from ``../shared/data`` (``zoomearth/demo*.png`` 1024 px, ``naip/*.tif`` 934 x 723
  4-band, ``rasterio/RGB.byte.tif``); they are small, so the approximation is forced
  (``exact_max_pixels=0``) with ``approx_side`` below their long side;
* two synthetic large scenes written into the work directory (tiled, JPEG, internal overviews):
  ``synth`` from :func:`zoomearth.scene.synth.generate_scene` and ``naip_up``, real NAIP content
  upsampled (PIL bicubic, row strip by row strip) to the same size.

Usage::

    python benchmarks/reference_overview.py [--quick] [--size 12000x9000] [--repeats 3]
                                            [--approx-sides 512,768,1024,2048] [--workdir DIR]

``--quick``: 4000 x 3000 synthetic scenes, one repeat, one NAIP image. Without ``--workdir`` the
synthetic scenes go to a temporary directory removed at the end.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
REAL = [
    "zoomearth/demo1.png",
    "zoomearth/demo2.png",
    "zoomearth/demo3.png",
    "naip/m_4709963_se_14_1_20090818.tif",
    "naip/m_4709963_se_14_1_20200831.tif",
    "rasterio/RGB.byte.tif",
]
NAIP_SOURCE = "naip/m_4709963_se_14_1_20170827.tif"


def timed(fn: Callable[[], Any], repeats: int) -> tuple[Any, float]:
    """The last result and the median wall time of ``repeats`` calls."""
    times = []
    result = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return result, statistics.median(times)


def compare(approx: np.ndarray, exact: np.ndarray) -> dict[str, float]:
    diff = np.abs(approx.astype(np.int16) - exact.astype(np.int16))
    mse = float(np.mean(diff.astype(np.float64) ** 2))
    return {
        "mean": float(diff.mean()),
        "max": float(diff.max()),
        "psnr": math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse),
        "same": float(np.mean(diff == 0)),
    }


# ----------------------------------------------------------------------------------------------
# synthetic large scenes
# ----------------------------------------------------------------------------------------------
def ensure_synth(workdir: Path, width: int, height: int) -> Path:
    from zoomearth.scene.synth import generate_scene

    path = workdir / f"synth_{width}x{height}.tif"
    if not path.exists():
        print(f"  generating {path.name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        generate_scene(path, (width, height), seed=3)
        print(f"  ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    return path


def ensure_naip_upsampled(workdir: Path, width: int, height: int) -> Path | None:
    """Real NAIP RGB upsampled to ``width x height``, streamed in row strips into a tiled TIFF."""
    import rasterio
    from PIL import Image

    from zoomearth.scene.writing import TiledRasterWriter

    src_path = SHARED / NAIP_SOURCE
    if not src_path.exists():
        return None
    path = workdir / f"naip_up_{width}x{height}.tif"
    if path.exists():
        return path
    print(f"  generating {path.name} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    with rasterio.open(src_path) as src:  # 934 x 723: small
        rgb = np.moveaxis(src.read([1, 2, 3]), 0, -1)
    img = Image.fromarray(np.ascontiguousarray(rgb))
    sw, sh = img.size
    strip = 512
    with TiledRasterWriter(
        path, width=width, height=height, count=3, dtype="uint8", compress="jpeg"
    ) as writer:
        for y0 in range(0, height, strip):
            y1 = min(height, y0 + strip)
            box = (0.0, y0 * sh / height, float(sw), y1 * sh / height)
            part = img.resize((width, y1 - y0), Image.Resampling.BICUBIC, box=box)
            writer.write(np.moveaxis(np.asarray(part), -1, 0), (0, y0, width, y1 - y0))
    print(f"  ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    return path


# ----------------------------------------------------------------------------------------------
# measurement
# ----------------------------------------------------------------------------------------------
def measure(path: Path, label: str, approx_sides: list[int], repeats: int) -> list[dict[str, Any]]:
    from zoomearth.config import load_settings
    from zoomearth.scene import Scene
    from zoomearth.scene.reference import render_reference_overview

    settings = load_settings()
    rows: list[dict[str, Any]] = []
    with Scene.open(path, settings=settings, progress=False) as scene:
        long_side = max(scene.width, scene.height)
        (exact, is_exact), t_exact = timed(
            lambda: render_reference_overview(scene, exact_max_pixels=scene.width * scene.height),
            repeats,
        )
        assert is_exact
        for side in approx_sides:
            if side >= long_side:
                continue  # a full-resolution read: the approximation would be exact
            (approx, is_exact), t_approx = timed(
                lambda s=side: render_reference_overview(scene, exact_max_pixels=0, approx_side=s),
                repeats,
            )
            assert not is_exact and approx.shape == exact.shape
            rows.append(
                {
                    "image": label,
                    "size": f"{scene.width}x{scene.height}",
                    "out": f"{exact.shape[1]}x{exact.shape[0]}",
                    "side": side,
                    "levels": len(scene.overview_factors),
                    **compare(approx, exact),
                    "t_exact": t_exact,
                    "t_approx": t_approx,
                }
            )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'image':24s} {'size':>11s} {'overview':>8s} {'approx':>6s} {'ovr':>3s} "
        f"{'mean|d|':>7s} {'max|d|':>6s} {'PSNR dB':>7s} {'same':>6s} "
        f"{'exact s':>8s} {'approx s':>8s}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['image']:24s} {r['size']:>11s} {r['out']:>8s} {r['side']:>6d} {r['levels']:>3d} "
            f"{r['mean']:7.3f} {r['max']:6.0f} {r['psnr']:7.2f} {r['same']:6.1%} "
            f"{r['t_exact']:8.3f} {r['t_approx']:8.3f}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small scenes, one repeat, fewer images")
    p.add_argument("--size", default=None, help="synthetic scene size WxH (default 12000x9000)")
    p.add_argument("--repeats", type=int, default=None, help="runs per timing (default 3)")
    p.add_argument("--approx-sides", default="512,768,1024,2048", help="approx_side values")
    p.add_argument("--workdir", default=None, help="keep/reuse synthetic scenes here")
    ns = p.parse_args(argv)

    size = ns.size or ("4000x3000" if ns.quick else "12000x9000")
    width, height = (int(v) for v in size.lower().split("x"))
    repeats = ns.repeats or (1 if ns.quick else 3)
    sides = [int(v) for v in ns.approx_sides.split(",") if v]

    import PIL

    print(
        f"reference overview: approximate (overviews + PIL bicubic) vs exact (streamed); "
        f"Pillow {PIL.__version__}; times are medians of {repeats}"
    )
    rows: list[dict[str, Any]] = []
    real = REAL[2:4] if ns.quick else REAL
    for rel in real:
        path = SHARED / rel
        if not path.exists():
            print(f"  {rel}: not present, skipped", file=sys.stderr)
            continue
        rows += measure(path, Path(rel).stem[:24], sides, repeats)

    with tempfile.TemporaryDirectory(prefix="zoomearth-bench-refov-") as tmp:
        workdir = Path(ns.workdir).expanduser() if ns.workdir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        rows += measure(ensure_synth(workdir, width, height), "synth", sides, repeats)
        naip = ensure_naip_upsampled(workdir, width, height)
        if naip is not None:
            rows += measure(naip, "naip_up", sides, repeats)
    print()
    print_table(rows)
    print(
        "\napprox = long side of the decimated read (GDAL average via the overview levels, "
        "'ovr' of them\nin the file), then PIL bicubic to the overview size; same = share of "
        "identical channel values."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
