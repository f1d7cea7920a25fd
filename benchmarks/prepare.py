"""Preparing scenes: the work budget's refusal, and in-process vs worker-process preparation.

A sparse tiled TIFF without overviews (one written 512-px block, the rest implicit zeros) is
tiny on disk but declares a huge raster; reading it needs a prepared (tiled, overviewed) copy.
This prints:

(a) the 40,000 x 40,000 px file (about 50 KB): the refusal at the default work budget
    (``max_prepare_pixels`` = 1e9) -- ``Scene.open`` + ``render`` until the error, median of
    ``--repeats`` runs. With ``--full-40k`` also the old behaviour once: preparing it anyway,
    in-process, with the ticker below.
(b) a smaller sparse scene (``--side``, default 20,000 px) prepared with the budget raised, the
    old way (in the calling process) and the new way (a worker process), ``--repeats`` runs each:
    the median wall time and the longest gap a ticker thread in the caller saw between its 10 ms
    ticks (a proxy for how long a server's event loop would stall), side by side with the ratio
    new / old.
(c) the spawn cost that sets ``IN_PROCESS_MAX_PIXELS``: dense strip TIFFs of a few sizes prepared
    both ways (median wall time, worst gap, ratio).

Every build goes to a fresh cache folder, so nothing is reused between runs.

Usage: ``python benchmarks/prepare.py [--side 20000] [--repeats 3] [--full-40k] [--quick]``
(``--quick``: side 8,000, one repeat, for a smoke run).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def dense_strip_tiff(path: Path, side: int) -> Path:
    """Uncompressed strip TIFF with non-repeating content (what a scanner or old export writes)."""
    import numpy as np
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.windows import Window

    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(
            path, "w", driver="GTiff", width=side, height=side, count=3, dtype="uint8",
            tiled=False,
        ) as dst:
            for r in range(0, side, 512):
                h = min(512, side - r)
                y, x = np.mgrid[r : r + h, 0:side]
                block = np.stack([(x // 7 + y // 5) % 251, (x * y // 97) % 253, (x + 3 * y) % 255])
                block = block.astype(np.uint8) + rng.integers(0, 20, block.shape, dtype=np.uint8)
                dst.write(block, window=Window(0, r, side, h))
    return path


class Ticker:
    """A thread that sleeps 10 ms at a time and records the longest gap between its wake-ups."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last = time.perf_counter()
        while not self._stop.is_set():
            time.sleep(0.01)
            now = time.perf_counter()
            self.worst = max(self.worst, now - last)
            last = now

    def __enter__(self) -> Ticker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_ticked(fn: Callable[[], Any]) -> tuple[float, float]:
    """Wall time of ``fn()`` and the worst ticker gap during it (seconds)."""
    with Ticker() as ticker:
        t0 = time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
    return wall, ticker.worst


def prepare_both(src: Path, work: Path, repeats: int) -> dict[str, tuple[float, float]]:
    """Median (wall, worst gap) of building ``src``'s copy in-process and in a worker."""
    from zoomearth.scene.cache import build_tiled_copy

    out = {}
    for mode, isolate in (("in-process (old)", False), ("worker (new)", True)):
        walls, gaps = [], []
        for i in range(repeats):
            dest = work / f"{mode[:2]}{i}" / "copy.tif"
            wall, gap = run_ticked(
                lambda dest=dest, isolate=isolate: build_tiled_copy(
                    src, dest, progress=False, isolate=isolate
                )
            )
            shutil.rmtree(dest.parent)
            walls.append(wall)
            gaps.append(gap)
        out[mode] = (statistics.median(walls), statistics.median(gaps))
    return out


def print_pair(label: str, res: dict[str, tuple[float, float]]) -> None:
    (ow, og), (nw, ng) = res["in-process (old)"], res["worker (new)"]
    print(
        f"{label:<34} {ow:>9.2f} {nw:>9.2f} {nw / ow:>6.2f}x   "
        f"{og * 1000:>9.0f} {ng * 1000:>9.0f} {ng / og:>7.3f}x"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--side", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--full-40k", action="store_true", help="also prepare the 40k file once")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.side, args.repeats = 8000, 1

    from zoomearth.config import load_settings
    from zoomearth.errors import ScenePrepareBudgetError
    from zoomearth.scene import Scene
    from zoomearth.scene.cache import IN_PROCESS_MAX_PIXELS
    from zoomearth.synth.sparse import sparse_tiff

    work = Path(tempfile.mkdtemp(prefix="zoomearth-prepare-bench-"))
    try:
        print(f"python {sys.version.split()[0]}; work folder {work}")
        # (a) refusal at the default budget
        big = sparse_tiff(work / "sparse40k.tif", 40_000)
        settings = load_settings(flags={"cache_dir": work / "cache"}, environ={})
        times = []
        for _ in range(max(3, args.repeats)):
            t0 = time.perf_counter()
            try:
                Scene.open(big, settings=settings).render()
            except ScenePrepareBudgetError:
                times.append(time.perf_counter() - t0)
            else:
                raise SystemExit("expected a refusal at the default budget")
        print(
            f"\n(a) 40,000 x 40,000 sparse TIFF ({big.stat().st_size:,} bytes), default budget "
            f"{settings.max_prepare_pixels:,} px: refused in {statistics.median(times) * 1000:.1f}"
            f" ms (median of {len(times)}), nothing written"
        )
        if args.full_40k:
            from zoomearth.scene.cache import build_tiled_copy

            wall, gap = run_ticked(
                lambda: build_tiled_copy(big, work / "full40k" / "c.tif", progress=False,
                                         isolate=False)
            )
            print(
                f"    before the budget (in-process prepare of it, once): {wall:.1f} s, worst "
                f"ticker gap {gap * 1000:.0f} ms"
            )
            shutil.rmtree(work / "full40k")

        header = (
            f"{'':<34} {'wall old':>9} {'wall new':>9} {'ratio':>7}   "
            f"{'gap old ms':>9} {'gap new ms':>9} {'ratio':>8}"
        )
        # (b) a large sparse scene with the budget raised
        mid = sparse_tiff(work / f"sparse{args.side}.tif", args.side)
        print(
            f"\n(b) sparse {args.side:,} x {args.side:,} TIFF prepared with the budget raised "
            f"(median of {args.repeats}; gap = longest stall of a 10 ms ticker thread in the "
            "caller)"
        )
        print(header)
        print_pair(f"sparse {args.side:,}^2", prepare_both(mid, work, args.repeats))

        # (c) the spawn cost that sets IN_PROCESS_MAX_PIXELS
        print(
            f"\n(c) dense strip TIFFs, in-process vs worker (IN_PROCESS_MAX_PIXELS = "
            f"{IN_PROCESS_MAX_PIXELS:,}; median of {max(3, args.repeats)})"
        )
        print(header)
        sides = [1024, 2048, 4096] if not args.quick else [1024, 2048]
        for side in sides:
            src = dense_strip_tiff(work / f"dense{side}.tif", side)
            print_pair(f"dense {side:,}^2 ({side * side / 1e6:.1f} Mpx)",
                       prepare_both(src, work, max(3, args.repeats)))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
