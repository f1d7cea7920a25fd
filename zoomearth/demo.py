"""``make demo``: the main job on an embedded default that needs no download.

1. Generates a synthetic georeferenced UHR scene (8,192 px, planted objects, a little cloud) and
   prints ``zoomearth info`` for it; writes the overview the planner sees first.
2. Runs ``zoomearth ask`` with the offline rules planner: "segment the <object> in box ..." --
   the agent zooms to the object at full resolution and runs the segmentation tool there,
   writing a mask GeoTIFF, GeoJSON polygons with areas and a preview.
3. Continues the same thread: "remove clouds in the top-left" -- a second zoom and the
   cloud-removal tool on that crop, keeping the thread's views and artifacts.
4. Prints where everything was written, including the trajectory picture.

Usage: ``python -m zoomearth.demo [OUT_DIR] [--size N]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _banner(text: str) -> None:
    print(f"\n== {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m zoomearth.demo")
    parser.add_argument("out_dir", nargs="?", default="demo-out")
    parser.add_argument("--size", type=int, default=8192, help="scene side in pixels")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    from zoomearth.cli import main as cli

    out = Path(args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    scene_path = out / f"synthetic_{args.size}.tif"
    sidecar = scene_path.with_suffix(".json")
    if not scene_path.exists() or not sidecar.exists():
        _banner(f"generating a {args.size} x {args.size} px synthetic scene")
        t0 = time.perf_counter()
        rc = cli(["synth", str(scene_path), "--size", str(args.size), "--seed", str(args.seed),
                  "--clouds", "0.08"])  # fmt: skip
        if rc:
            return rc
        print(f"   ({time.perf_counter() - t0:.1f} s)")

    _banner(f"zoomearth info {scene_path.name}")
    if rc := cli(["info", str(scene_path)]):
        return rc

    _banner("the overview the planner sees first")
    if rc := cli(["view", str(scene_path), "--side", "512", "-o", str(out / "overview.png")]):
        return rc

    # Ask about the largest planted building-like object: the box is in full-resolution pixels.
    objects = json.loads(sidecar.read_text())["objects"]

    def area(o: dict) -> float:
        x1, y1, x2, y2 = o["box_xyxy"]
        return (x2 - x1) * (y2 - y1)

    target = max(objects, key=area)
    x1, y1, x2, y2 = (round(v) for v in target["box_xyxy"])
    label = target["label"].replace("_", " ")
    thread = f"demo-{args.size}-{args.seed}"
    data = ["--set", f"data_dir={json.dumps(str(out / 'data'))}"]
    question = f"segment the {label} in box {x1},{y1},{x2},{y2}"
    _banner(f'zoomearth ask {scene_path.name} "{question}" --planner rules')
    rc = cli([*data, "ask", str(scene_path), question, "--planner", "rules", "--thread", thread,
              "--out", str(out / "run")])  # fmt: skip
    if rc:
        return rc

    follow_up = "now remove clouds in the top-left"
    _banner(f'zoomearth ask --thread {thread} "{follow_up}" --planner rules')
    rc = cli([*data, "ask", "--thread", thread, follow_up, "--planner", "rules"])
    if rc:
        return rc

    _banner("done")
    print(f"scene:      {scene_path}")
    print(f"overview:   {out / 'overview.png'}")
    print(f"run:        {out / 'run'}  (trajectory.png, GeoTIFF/GeoJSON artifacts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
