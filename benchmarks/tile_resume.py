"""Finished tiles kept for a resume: their cost on a full call, and what a resume saves.

A streamed ``denoise`` (non-local means) of a synthetic noisy scene, three ways, each the median
of ``--runs`` runs on the same machine:

* **baseline**: the tool with its tiles not kept (``independent_tiles=False``: ``map_tiles`` is the
  plain tile loop, as before the tile cache);
* **kept**: the real tool, every finished tile written to ``RUN_DIR/.tiles`` (uncompressed
  ``.npz``, fsync'ed) and removed when the call succeeds;
* **resume**: the same call again after a stop at half of the tiles (cancelled through the
  cancellation hook, as a timeout or Ctrl-C does): only the other half is computed.

Prints the seconds, the ratios to the baseline and the disk the kept tiles took at the stop.

Usage::

    python benchmarks/tile_resume.py [--size 2048] [--tile 256] [--runs 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _scene(path: Path, size: int) -> Path:
    import numpy as np
    import rasterio
    from affine import Affine

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0 : 2 * size]
    clean = np.stack([(x // 7 + y // 5 + 60 * b) % 200 for b in range(3)]).astype(np.float64)
    noisy = np.clip(np.rint(clean + rng.normal(0, 12, clean.shape)), 0, 255).astype(np.uint8)
    profile = {
        "driver": "GTiff", "width": 2 * size, "height": size, "count": 3, "dtype": "uint8",
        "crs": "EPSG:32633", "transform": Affine(1, 0, 500_000, 0, -1, 5_000_000),
        "tiled": True, "blockxsize": 256, "blockysize": 256,
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(noisy)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="scene height (width is 2x)")
    parser.add_argument("--tile", type=int, default=256, help="setting tool_tile_side")
    parser.add_argument("--runs", type=int, default=3)
    opts = parser.parse_args()

    from zoomearth.config import load_settings
    from zoomearth.scene import Scene
    from zoomearth.tools import ToolCancelled, ToolContext, run_tool
    from zoomearth.tools.base import TILE_CACHE_DIR
    from zoomearth.tools.denoise import Denoise

    baseline_tool = type(
        "DenoiseTilesNotKept",
        (Denoise,),
        {
            "name": "denoise_not_kept",
            "capabilities": Denoise.capabilities.model_copy(update={"independent_tiles": False}),
        },
    )
    work = Path(tempfile.mkdtemp(prefix="zoomearth-tile-resume-"))
    try:
        settings = load_settings(
            flags={"data_dir": work / "data", "cache_dir": work / "cache",
                   "tool_tile_side": opts.tile},
            environ={},
        )  # fmt: skip
        image = _scene(work / "scene.tif", opts.size)
        args = {"preview": False}
        times: dict[str, list[float]] = {"baseline": [], "kept": [], "resume": []}
        kept_bytes = 0
        n_tiles = 0
        with Scene.open(image, settings=settings, progress=False) as scene:
            for i in range(opts.runs):
                for label, tool in (("baseline", baseline_tool), ("kept", Denoise)):
                    ctx = ToolContext(scene=scene, run_dir=work / f"{label}-{i}", settings=settings)
                    t0 = time.perf_counter()
                    out = run_tool(tool, ctx, args)
                    times[label].append(time.perf_counter() - t0)
                    n_tiles = out.data["tiles"]
                run_dir = work / f"resume-{i}"
                done = {"n": 0}

                def progress(d: int, t: int, m: str, done: dict[str, int] = done) -> None:
                    done["n"] = d

                half = n_tiles // 2
                stop = ToolContext(
                    scene=scene, run_dir=run_dir, settings=settings, progress=progress,
                    is_cancelled=lambda done=done, half=half: done["n"] >= half,
                )  # fmt: skip
                try:
                    run_tool(Denoise, stop, args)
                except ToolCancelled:
                    pass
                kept_bytes = sum(p.stat().st_size for p in (run_dir / TILE_CACHE_DIR).rglob("*"))
                ctx = ToolContext(scene=scene, run_dir=run_dir, settings=settings)
                t0 = time.perf_counter()
                run_tool(Denoise, ctx, args)
                times["resume"].append(time.perf_counter() - t0)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"denoise (NLM) of a {2 * opts.size} x {opts.size} px 3-band uint8 scene, "
        f"{n_tiles} tiles of {opts.tile} px, median of {opts.runs} runs"
    )
    print(f"{'call':<44}{'seconds':>10}{'vs baseline':>14}")
    rows = (
        ("baseline: tiles not kept", "baseline"),
        ("kept: every finished tile written to disk", "kept"),
        (f"resume after a stop at {n_tiles // 2} of {n_tiles} tiles", "resume"),
    )
    for text, key in rows:
        print(f"{text:<44}{med[key]:>10.2f}{med[key] / med['baseline']:>13.2f}x")
    print(f"kept tiles at the stop: {kept_bytes / 1e6:.1f} MB on disk")


if __name__ == "__main__":
    main()
