"""Remote scenes: bytes fetched per question from a COG served over HTTP, and time vs a local read.

Builds (once, kept in the scratch folder) a ``--side`` x ``--side`` px Cloud-Optimized GeoTIFF
(synthetic fields/roads pattern, 3-band uint8, JPEG, 512-px internal tiles, overviews down to
< 512 px, written by GDAL's COG driver), serves its folder with the project's range-capable HTTP
server (:mod:`zoomearth.scene.rangeserver`, in a child process, counting requests and body
bytes), and times "one question" the way the agent reads it:

* ``Scene.open(URL)``;
* the overview: ``scene.render(None, max_side=overview_side)`` (setting, 512 by default);
* one zoom: a ``--zoom`` px window at full resolution near the centre,
  ``scene.render(box, max_side=None)``.

It prints, as the median of ``--runs`` runs (each a fresh ``Scene`` on a fresh GDAL cache):
the bytes the server sent and their share of the file (target: under 1 %), the request count,
and the wall time of the remote question against the same reads of the local file, with the
ratio remote / local. Run it on an idle machine for the final figures; the server is on
loopback, so the time ratio shows the per-request overhead, not a WAN's latency.

Usage: ``python benchmarks/remote.py [--side 20000] [--runs 5] [--zoom 1024] [--scratch DIR]``
(``--quick``: side 4,096 and 3 runs, for a smoke run).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build_cog(path: Path, side: int) -> float:
    """Write the synthetic COG at ``path`` (through a plain tiled temporary); returns seconds.

    The pattern is cheap to compute and not trivially compressible: fields of a few hundred
    pixels with their own colour and a row texture, a grid of roads, and per-pixel noise.
    """
    import numpy as np
    import rasterio
    import rasterio.shutil
    from affine import Affine
    from rasterio.windows import Window

    t0 = time.perf_counter()
    tmp = path.with_name(path.stem + ".src.tif")
    profile = {
        "driver": "GTiff", "width": side, "height": side, "count": 3, "dtype": "uint8",
        "tiled": True, "blockxsize": 512, "blockysize": 512, "crs": "EPSG:32633",
        "transform": Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 5000000.0), "BIGTIFF": "IF_SAFER",
    }
    rng = np.random.default_rng(7)
    field = 317
    nfx = side // field + 2
    palette = rng.integers(40, 200, size=(nfx, nfx, 3), dtype=np.int16)
    xs = np.arange(side)
    fx = xs // field
    with rasterio.open(tmp, "w", **profile) as dst:
        for row in range(0, side, 512):
            h = min(512, side - row)
            ys = np.arange(row, row + h)
            fy = ys // field
            base = palette[fy[:, None], fx[None, :]]  # (h, side, 3)
            stripes = ((ys[:, None] + (fx[None, :] * 7)) % 9 < 2).astype(np.int16) * 18
            img = base + stripes[..., None]
            road = ((ys % 1250) < 12)[:, None] | ((xs % 1250) < 12)[None, :]
            img[road] = 150
            img += rng.integers(-10, 11, size=img.shape, dtype=np.int16)
            arr = np.clip(img, 0, 255).astype(np.uint8).transpose(2, 0, 1)
            dst.write(arr, window=Window(0, row, side, h))
    part = path.with_name(path.name + ".part")
    rasterio.shutil.copy(
        tmp, part, driver="COG", COMPRESS="JPEG", QUALITY=85, BLOCKSIZE=512,
        OVERVIEW_RESAMPLING="AVERAGE", BIGTIFF="IF_SAFER", NUM_THREADS="ALL_CPUS",
    )
    os.replace(part, path)
    tmp.unlink()
    return time.perf_counter() - t0


def one_question(source: str, settings: Any, zoom: int) -> tuple[float, tuple[int, int]]:
    """Open, overview and one full-resolution zoom; returns (seconds, overview size)."""
    from zoomearth.geometry import PixelBox
    from zoomearth.scene import Scene

    t0 = time.perf_counter()
    with Scene.open(source, settings=settings, progress=False) as scene:
        overview = scene.render(None, max_side=settings.overview_side)
        x, y = int(scene.width * 0.55) - zoom // 2, int(scene.height * 0.45) - zoom // 2
        box = PixelBox(x, y, x + zoom, y + zoom)
        view = scene.render(box, max_side=None)
        assert view.rgb.shape[:2] == (zoom, zoom), view.rgb.shape
    return time.perf_counter() - t0, (overview.spec.width, overview.spec.height)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--side", type=int, default=20000, help="COG side in pixels")
    p.add_argument("--runs", type=int, default=5, help="runs per variant (median reported)")
    p.add_argument("--zoom", type=int, default=1024, help="zoom window side (full-res px)")
    p.add_argument("--scratch", type=Path, help="folder for the COG (kept and reused; default: "
                   "TMPDIR/zoomearth-remote-bench)",
                   default=Path(tempfile.gettempdir()) / "zoomearth-remote-bench")
    p.add_argument("--quick", action="store_true", help="side 4096, 3 runs")
    args = p.parse_args()
    if args.quick:
        args.side, args.runs = 4096, 3

    from zoomearth.config import load_settings
    from zoomearth.scene.rangeserver import RangeServerProcess

    warnings.simplefilter("ignore")
    args.scratch.mkdir(parents=True, exist_ok=True)
    cog = args.scratch / f"cog-{args.side}.tif"
    if not cog.exists():
        print(f"building {cog} ({args.side:,} x {args.side:,} px) ...", flush=True)
        print(f"  built in {build_cog(cog, args.side):.1f} s")
    size = cog.stat().st_size
    settings = load_settings(flags={"cache_dir": str(args.scratch / "cache")})

    fetched: list[int] = []
    requests: list[int] = []
    remote_s: list[float] = []
    local_s: list[float] = []
    with RangeServerProcess(args.scratch) as server:
        url = server.url_for(cog.name)
        one_question(url, settings, args.zoom)  # warm-up: imports, GDAL drivers, connections
        one_question(str(cog), settings, args.zoom)
        for _ in range(args.runs):
            # Alternate remote and local runs so that machine load hits both alike.
            server.reset()
            seconds, ov = one_question(url, settings, args.zoom)
            n, sent = server.stats()
            remote_s.append(seconds)
            fetched.append(sent)
            requests.append(n)
            local_s.append(one_question(str(cog), settings, args.zoom)[0])

    med_bytes = statistics.median(fetched)
    med_remote = statistics.median(remote_s)
    med_local = statistics.median(local_s)
    print(f"COG: {args.side:,} x {args.side:,} px, 3 x uint8, JPEG, 512-px tiles, overviews; "
          f"{size:,} bytes ({size / 1e6:,.1f} MB)")
    print(f"question: Scene.open + overview (long side {settings.overview_side}, {ov[0]}x{ov[1]}) "
          f"+ one {args.zoom}x{args.zoom} px full-resolution zoom; median of {args.runs} runs")
    print(f"bytes fetched:  {med_bytes:,.0f} of {size:,} = {med_bytes / size:.3%} of the file "
          f"(target < 1 %; runs: {', '.join(f'{b:,}' for b in fetched)})")
    print(f"HTTP requests:  {statistics.median(requests):.0f} (runs: {requests})")
    print(f"wall time:      remote {med_remote * 1000:,.0f} ms vs local file "
          f"{med_local * 1000:,.0f} ms = {med_remote / med_local:.2f}x (loopback HTTP server)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
