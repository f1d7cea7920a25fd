"""Cost of the write checks of TiledRasterWriter: free space, room per tile, block check on close.

Writes the same streamed GeoTIFF (``--side`` px square, 3-band ``uint8``, DEFLATE, overviews,
written in 512-row strips) with the checks on and with them off (the baseline: the free-space
check, the per-``write`` room check and :func:`~zoomearth.scene.writing.tiff_block_problem` on
close replaced by no-ops), alternating, ``--runs`` times each, and prints the medians and their
ratio. It also times ``tiff_block_problem`` alone on the written file and per block, to scale it
to larger outputs (a 40,000 px square output has about 8,300 blocks with its overviews).

Usage::

    python benchmarks/write_checks.py [--side 8192] [--runs 5] [--dir DIR]

``--dir`` is where the output is written (default: a temporary folder); each run replaces it
and it is removed at the end.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import rasterio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from zoomearth.scene import writing  # noqa: E402
from zoomearth.scene.gdal import cache_max  # noqa: E402
from zoomearth.scene.writing import TiledRasterWriter, tiff_block_problem  # noqa: E402


def _strip(side: int, row: int) -> np.ndarray:
    # Structure plus sensor-like noise, so DEFLATE does real work (about half of raw, like
    # imagery; zeros or a pure pattern would compress to almost nothing).
    y, x = np.mgrid[row : row + 512, 0:side]
    base = (x // 7 + y // 5) % 200
    noise = np.random.default_rng(row).integers(0, 24, (3, 512, side))
    return (np.stack([base, base[:, ::-1], (base * 3) % 200]) + noise).astype(np.uint8)


def write_once(path: Path, strips: list[np.ndarray], checks: bool) -> float:
    """Seconds to write and close one output, with or without the checks."""
    saved = (writing.check_free_space, TiledRasterWriter._check_room, writing.tiff_block_problem)
    if not checks:
        writing.check_free_space = lambda final, need: None  # type: ignore[assignment]
        TiledRasterWriter._check_room = lambda self: None  # type: ignore[method-assign]
        writing.tiff_block_problem = lambda path: None  # type: ignore[assignment]
    side = strips[0].shape[2]
    try:
        t0 = time.perf_counter()
        with (
            rasterio.Env(GDAL_CACHEMAX=cache_max(256)),
            TiledRasterWriter(path, width=side, height=side, count=3, dtype="uint8") as w,
        ):
            for i, strip in enumerate(strips):
                w.write(strip, (0, i * 512, side, 512))
        return time.perf_counter() - t0
    finally:
        (
            writing.check_free_space,
            TiledRasterWriter._check_room,
            writing.tiff_block_problem,
        ) = saved  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    """Print the medians with and without the checks, their ratio, and the block check alone."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--side", type=int, default=8192, help="output side in px (multiple of 512)")
    p.add_argument("--runs", type=int, default=5, help="runs of each variant (median reported)")
    p.add_argument("--dir", type=Path, default=None, help="output folder (default: a temp dir)")
    args = p.parse_args(argv)
    if args.side % 512:
        p.error("--side must be a multiple of 512")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        out = Path(tmp) / "bench.tif"
        strips = [_strip(args.side, row) for row in range(0, args.side, 512)]  # not timed
        timings: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.runs):
            for checks in (False, True):  # alternating, so drift hits both alike
                timings[checks].append(write_once(out, strips, checks))
        # The file of the last (checked) run is there: time the block check alone.
        check_times = []
        for _ in range(max(5, args.runs)):
            t0 = time.perf_counter()
            assert tiff_block_problem(out) is None
            check_times.append(time.perf_counter() - t0)
        with warnings.catch_warnings():  # the output is pixel-only on purpose
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(out) as ds:
                levels = len(ds.overviews(1))
        # Full resolution plus every overview level, in 512 px blocks.
        blocks = sum(math.ceil(args.side / (512 * 2**k)) ** 2 for k in range(levels + 1))
        size = out.stat().st_size
        # The per-call costs, measured directly (load on the machine barely moves these).
        writer = TiledRasterWriter(out, width=64, height=64, count=1, dtype="uint8")
        writer.temp_path = out
        t0 = time.perf_counter()
        for _ in range(1000):
            writer._check_room()
        room = (time.perf_counter() - t0) / 1000
        t0 = time.perf_counter()
        for _ in range(1000):
            writing.check_free_space(out, 1)
        space = (time.perf_counter() - t0) / 1000
    base = statistics.median(timings[False])
    checked = statistics.median(timings[True])
    check = statistics.median(check_times)
    print(
        f"TiledRasterWriter {args.side} x {args.side} x 3 uint8, DEFLATE + overviews "
        f"({size / 1e6:.0f} MB, {blocks} blocks), median of {args.runs} runs:"
    )
    print(f"  baseline (no checks)  {base:8.3f} s")
    print(f"  with the checks       {checked:8.3f} s   ratio {checked / base:.3f}")
    print(
        f"  tiff_block_problem    {check * 1e3:8.2f} ms  ({check / blocks * 1e6:.2f} us per block; "
        f"about {check / blocks * 8300 * 1e3:.0f} ms for a 40,000 px square output)"
    )
    print(f"  room check per write  {room * 1e6:8.1f} us; free-space check {space * 1e6:.1f} us")
    print(
        f"  checks in total, per output: about "
        f"{(check + space + room * len(strips)) * 1e3:.2f} ms of the {checked:.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
