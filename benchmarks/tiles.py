"""Workbench tile latency: our tile route's function vs a bare rio-tiler read of the same tiles.

Builds (once, cached in ``--scratch``) a synthetic ``--side`` x ``--side`` scene with
:func:`zoomearth.synth.generate_scene` -- a georeferenced (EPSG:32633, 0.5 m), 512 px tiled,
JPEG-compressed GeoTIFF with internal overviews, i.e. COG-like -- and picks up to ``--tiles``
256 px EPSG:3857 tiles lying inside the image (partly, where none lies wholly inside) at three
zoom levels: the native zoom and two overview levels (native - 2, native - 4).

Each method runs in its own fresh Python process (empty GDAL block cache, no open reader), twice
over the same tiles: the first pass is **cold**, the second **warm**. Sequential requests, one
thread; ``GDAL_CACHEMAX=128`` (MB) for every method; the runs interleave the methods.

* ``ours``: :meth:`zoomearth.server.tiles.TileService.tile` -- exactly what
  ``GET /v1/tiles/{layer}/{z}/{x}/{y}.png`` runs in its worker thread (layer lookup, the cached
  per-thread reader, band mapping, RGBA PNG encoding, the encoded-tile LRU). Its warm pass is
  served from the LRU.
* ``ours-nolru``: the same with the encoded-tile LRU off (a warm pass re-reads and re-encodes:
  the rendering path itself with warm readers and GDAL cache).
* ``bare``: ``with rio_tiler.io.Reader(path) as r: r.tile(x, y, z)`` per tile (the baseline the
  issue names: an ImageData, no PNG).
* ``bare-open``: one ``Reader`` kept open, ``r.tile(x, y, z)`` per tile.
* ``--http``: also ``ours`` over HTTP (uvicorn on loopback, the signed tile URL, httpx), cold
  (a fresh server) and warm.

Prints, per zoom and pass, p50/p95 in ms per method (the median over ``--runs`` runs) and the
ratio of ``ours`` to ``bare``. Targets (reported, not asserted): within 1.5x of the bare read,
warm p95 under 100 ms.

Usage: ``python benchmarks/tiles.py [--side 20000] [--quick] [--runs 3] [--tiles 30] [--http]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

METHODS = ("ours", "ours-nolru", "bare", "bare-open")


def ensure_scene(scratch: Path, side: int) -> Path:
    """The synthetic scene of this side (built once; about 70 s for 20,000 px on 2 cores)."""
    from zoomearth.synth import generate_scene

    path = scratch / f"scene_{side}.tif"
    if not path.exists():
        print(f"building a {side:,} x {side:,} px synthetic scene in {path} ...", flush=True)
        t0 = time.perf_counter()
        tmp = scratch / f"building_{side}.tif"
        generate_scene(tmp, size=side, seed=7)
        tmp.replace(path)
        for sidecar in scratch.glob(f"building_{side}.*"):
            sidecar.replace(scratch / sidecar.name.replace("building_", "scene_"))
        print(f"  built in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def pick_tiles(path: Path, per_zoom: int) -> dict[int, list[list[int]]]:
    """Up to ``per_zoom`` tiles inside the image at native, native-2 and native-4 zoom."""
    import random
    import warnings

    from rio_tiler.io import Reader

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Reader(str(path)) as r:
            native = int(r.maxzoom)
            west, south, east, north = r.get_geographic_bounds("EPSG:4326")
            tms = r.tms
            out: dict[int, list[list[int]]] = {}
            for z in (native, native - 2, native - 4):
                inner, edge = [], []
                for t in tms.tiles(west, south, east, north, [z]):
                    b = tms.bounds(t)
                    inside = b.left >= west and b.right <= east and b.bottom >= south \
                        and b.top <= north
                    (inner if inside else edge).append([t.x, t.y])
                # Tiles wholly inside the image; a small scene's coarsest zoom has only edge ones.
                chosen = inner or edge
                random.Random(z).shuffle(chosen)
                out[z] = chosen[:per_zoom]
    return out


# ----------------------------------------------------------------------------------------------
# Workers (one fresh process per method and run)
# ----------------------------------------------------------------------------------------------
def worker(method: str, scene: Path, tiles: dict[int, list[list[int]]]) -> dict[str, Any]:
    """Two passes over the tiles; latencies in ms per zoom: ``{"cold": {z: [...]}, "warm"}``."""
    import warnings

    warnings.simplefilter("ignore")
    read = make_reader(method, scene)
    result: dict[str, Any] = {}
    for name in ("cold", "warm"):
        per_zoom: dict[str, list[float]] = {}
        for z, xy in tiles.items():
            times = []
            for x, y in xy:
                t0 = time.perf_counter()
                read(int(z), x, y)
                times.append((time.perf_counter() - t0) * 1000)
            per_zoom[str(z)] = times
        result[name] = per_zoom
    return result


def make_reader(method: str, scene: Path) -> Any:
    if method in ("ours", "ours-nolru"):
        from zoomearth.config import load_settings
        from zoomearth.server.ingest import FileStore
        from zoomearth.server.tiles import TileService, layer_id_for_path

        tmp = Path(tempfile.mkdtemp(prefix="tiles-bench-"))
        settings = load_settings(flags={"data_dir": tmp / "data", "cache_dir": tmp / "cache",
                                        "allowed_roots": [scene.parent]}, environ={})
        service = TileService(settings, FileStore(tmp / "files"), lambda thread: None)
        if method == "ours-nolru":
            service.tile_cache_entries = 0
        layer_id = layer_id_for_path(scene.resolve())
        service.open(layer_id)  # POST /v1/workbench/layers did this before any tile request

        def ours(z: int, x: int, y: int) -> bytes:
            return service.tile(layer_id, z, x, y)

        return ours
    from rio_tiler.io import Reader

    if method == "bare":
        def bare(z: int, x: int, y: int) -> Any:
            with Reader(str(scene)) as r:
                return r.tile(x, y, z)

        return bare
    kept = Reader(str(scene))

    def bare_open(z: int, x: int, y: int) -> Any:
        return kept.tile(x, y, z)

    return bare_open


def http_worker(scene: Path, tiles: dict[int, list[list[int]]]) -> dict[str, Any]:
    """``ours`` over HTTP: a fresh server (cold), then the same tiles again (warm)."""
    import warnings

    import httpx

    from tests.server.helpers import ServerThread
    from zoomearth.config import load_settings
    from zoomearth.server.app import create_app

    warnings.simplefilter("ignore")
    tmp = Path(tempfile.mkdtemp(prefix="tiles-bench-http-"))
    settings = load_settings(flags={"data_dir": tmp / "data", "cache_dir": tmp / "cache",
                                    "allowed_roots": [scene.parent], "planner": "rules"},
                             environ={})
    result: dict[str, Any] = {}
    with ServerThread(create_app(settings)) as server, httpx.Client(timeout=60) as client:
        layer = client.post(f"{server.url}/v1/workbench/layers",
                            json={"path": str(scene.resolve())}).json()
        for name in ("cold", "warm"):
            per_zoom: dict[str, list[float]] = {}
            for z, xy in tiles.items():
                times = []
                for x, y in xy:
                    t0 = time.perf_counter()
                    r = client.get(layer["tiles"].format(z=z, x=x, y=y))
                    r.raise_for_status()
                    times.append((time.perf_counter() - t0) * 1000)
                per_zoom[str(z)] = times
            result[name] = per_zoom
    return result


def run_worker(method: str, scene: Path, tiles_file: Path) -> dict[str, Any]:
    env = {**os.environ, "GDAL_CACHEMAX": "128", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as out:
        out_path = Path(out.name)
    try:
        subprocess.run([sys.executable, __file__, "--worker", method, "--scene", str(scene),
                        "--tiles-file", str(tiles_file), "--out", str(out_path)],
                       check=True, env=env)
        return dict(json.loads(out_path.read_text()))
    finally:
        out_path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summarise(runs: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[float, float]]:
    """(pass, zoom) -> (median over runs of p50, median over runs of p95)."""
    out = {}
    for name in ("cold", "warm"):
        for z in runs[0][name]:
            p50 = statistics.median(pct(r[name][z], 0.5) for r in runs)
            p95 = statistics.median(pct(r[name][z], 0.95) for r in runs)
            out[(name, z)] = (p50, p95)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--side", type=int, default=20_000, help="scene side in pixels")
    p.add_argument("--quick", action="store_true",
                   help="a 4,096 px scene, 10 tiles per zoom, one run")
    p.add_argument("--runs", type=int, default=3, help="runs per method (median reported)")
    p.add_argument("--tiles", type=int, default=30, help="tiles per zoom level")
    p.add_argument("--http", action="store_true", help="also measure ours over HTTP")
    p.add_argument("--scratch", type=Path,
                   default=Path(tempfile.gettempdir()) / "zoomearth-bench-tiles",
                   help="where the scene is built and kept between runs")
    p.add_argument("--worker", choices=(*METHODS, "http"), help=argparse.SUPPRESS)
    p.add_argument("--scene", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--tiles-file", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        tiles = {int(z): v for z, v in json.loads(args.tiles_file.read_text()).items()}
        fn = http_worker if args.worker == "http" else (
            lambda s, t: worker(args.worker, s, t))
        args.out.write_text(json.dumps(fn(args.scene, tiles)))
        return 0

    if args.quick:
        args.side, args.tiles, args.runs = 4096, 10, 1
    args.scratch.mkdir(parents=True, exist_ok=True)
    scene = ensure_scene(args.scratch, args.side)
    tiles = pick_tiles(scene, args.tiles)
    tiles_file = args.scratch / f"tiles_{args.side}_{args.tiles}.json"
    tiles_file.write_text(json.dumps({str(z): v for z, v in tiles.items()}))
    print(f"scene {scene.name}: {args.side:,} x {args.side:,} px, "
          f"{scene.stat().st_size / 1e6:.0f} MB; tiles per zoom: "
          + ", ".join(f"z{z}: {len(v)}" for z, v in tiles.items())
          + f"; {args.runs} run(s) per method, each in a fresh process", flush=True)

    methods = list(METHODS) + (["http"] if args.http else [])
    # Runs interleave the methods (ours, bare, ... then again), so that a change in the
    # machine's load over time touches every method alike.
    raw: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for run in range(args.runs):
        for method in methods:
            raw[method].append(run_worker(method, scene, tiles_file))
        print(f"  run {run + 1} of {args.runs} done", flush=True)
    results = {m: summarise(raw[m]) for m in methods}

    cols = list(methods)

    def ms(v: float) -> str:
        return f"{v:.2f}" if v < 10 else f"{v:.1f}"

    print()
    print("p50 / p95 latency per 256 px tile, ms (median of runs); ratios = ours / bare and "
          "ours-nolru / bare")
    header = f"{'pass':5} {'zoom':>4}  " + "  ".join(f"{m:>15}" for m in cols) + \
        f"  {'p50':>5} {'p95':>5} {'nolru p95':>9}"
    print(header)
    print("-" * len(header))
    for name in ("cold", "warm"):
        for z in sorted(results["ours"].keys(), key=lambda k: (k[0], -int(k[1]))):
            if z[0] != name:
                continue
            cells = []
            for m in cols:
                p50, p95 = results[m][z]
                cells.append(f"{ms(p50)}/{ms(p95)}")
            o50, o95 = results["ours"][z]
            b50, b95 = results["bare"][z]
            n95 = results["ours-nolru"][z][1]
            print(f"{name:5} {z[1]:>4}  " + "  ".join(f"{c:>15}" for c in cells)
                  + f"  {o50 / b50:5.2f} {o95 / b95:5.2f} {n95 / b95:9.2f}")
    warm_p95 = max(v[1] for k, v in results["ours"].items() if k[0] == "warm")
    if args.http:
        http_p95 = max(v[1] for k, v in results["http"].items() if k[0] == "warm")
        print(f"over HTTP (uvicorn, httpx, one connection): warm p95 {ms(http_p95)} ms")
    nolru_p95 = max(v[1] for k, v in results["ours-nolru"].items() if k[0] == "warm")
    ratios = [results["ours"][k][1] / results["bare"][k][1] for k in results["ours"]
              if k[0] == "cold"]
    print()
    print(f"targets: ours within 1.5x of bare (cold p95 ratio, worst zoom: {max(ratios):.2f}x); "
          f"warm p95 < 100 ms (ours: {ms(warm_p95)} ms; with the tile LRU off: "
          f"{ms(nolru_p95)} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
