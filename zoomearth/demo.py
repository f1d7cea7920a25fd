"""``make demo``: the main job on an embedded default that needs no download.

Generates a synthetic georeferenced UHR scene (with planted objects and a little cloud), prints
``zoomearth info`` for it, writes the overview the planner would see first and a full-resolution
zoomed view of one planted object -- the active-perception loop done by hand. Later stages extend
this to a full ``zoomearth ask``.

Usage: ``python -m zoomearth.demo OUT_DIR [--size N]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m zoomearth.demo")
    parser.add_argument("out_dir", nargs="?", default="demo-out")
    parser.add_argument("--size", type=int, default=8192, help="scene side in pixels")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    from zoomearth.cli import main as cli

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scene_path = out / f"synthetic_{args.size}.tif"
    sidecar = scene_path.with_suffix(".json")
    if not scene_path.exists() or not sidecar.exists():
        print(f"== generating a {args.size} x {args.size} px synthetic scene", flush=True)
        t0 = time.perf_counter()
        rc = cli(
            [
                "synth",
                str(scene_path),
                "--size",
                str(args.size),
                "--seed",
                str(args.seed),
                "--clouds",
                "0.05",
            ]
        )
        if rc:
            return rc
        print(f"   ({time.perf_counter() - t0:.1f} s)")

    print(f"\n== zoomearth info {scene_path}", flush=True)
    if rc := cli(["info", str(scene_path)]):
        return rc

    print("\n== overview (what the planner sees first)", flush=True)
    if rc := cli(["view", str(scene_path), "--side", "512", "-o", str(out / "overview.png")]):
        return rc

    objects = json.loads(sidecar.read_text())["objects"]
    # Zoom on the largest planted object: the crop shows it at full resolution.
    target = max(
        objects,
        key=lambda o: (o["box_xyxy"][2] - o["box_xyxy"][0]) * (o["box_xyxy"][3] - o["box_xyxy"][1]),
    )
    x1, y1, x2, y2 = target["box_xyxy"]
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half = max(256, (x2 - x1) / 2 + 64, (y2 - y1) / 2 + 64)
    box = f"{max(0, cx - half):.0f},{max(0, cy - half):.0f},{cx + half:.0f},{cy + half:.0f}"
    print(
        f"\n== zoom on planted object #{target['id']} ({target['label']}) at {target['box_xyxy']}"
    )
    if rc := cli(
        ["view", str(scene_path), f"--box={box}", "--side", "512", "-o", str(out / "zoom.png")]
    ):
        return rc
    print(f"\ndemo outputs in {out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
