"""``make demo``: the main job on an embedded default that needs no download.

1. Generates a synthetic georeferenced UHR scene (8,192 px, planted objects, a little cloud) and
   prints ``zoomearth info`` for it; writes the overview the planner sees first
   (``overview.png``).
2. Runs ``zoomearth ask`` with the offline rules planner: "segment the <object> in box ..." --
   the agent zooms to the object at full resolution and runs the segmentation tool there,
   writing a mask GeoTIFF, GeoJSON polygons with areas and a preview. The region the agent
   zoomed to is written at full resolution with ``zoomearth view`` (``zoom.png``).
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

NO_ZOOM_TEMPLATE = (
    "the agent made no zoom for {question!r} (thread {thread}), so there is no zoom view to "
    "write; run the demo again with a fresh OUT_DIR, or report the rules planner's answer above."
)
#: Long side, in pixels, above which the zoom picture is downsampled (a zoom is far smaller).
ZOOM_MAX_SIDE = 4096


def _banner(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _zoom_region(data_dir: Path, thread: str) -> list[int] | None:
    """The full-resolution region of the first zoom of ``thread``'s latest question.

    Args:
        data_dir: The data folder the demo's ``ask`` commands ran with (setting ``data_dir``).
        thread: The thread id.

    Returns:
        ``[x1, y1, x2, y2]`` in full-resolution pixels, or None when the agent did not zoom.
    """
    from zoomearth.api import Agent
    from zoomearth.config import load_settings

    settings = load_settings(flags={"data_dir": data_dir})
    agent = Agent(settings, planner="rules")
    try:
        zooms = agent.result(thread).zooms
    finally:
        agent.close()
    if not zooms:
        return None
    return [round(v) for v in zooms[0].box_xyxy]


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
    data_dir = out / "data"
    data = ["--set", f"data_dir={json.dumps(str(data_dir))}"]
    question = f"segment the {label} in box {x1},{y1},{x2},{y2}"
    _banner(f'zoomearth ask {scene_path.name} "{question}" --planner rules')
    rc = cli([*data, "ask", str(scene_path), question, "--planner", "rules", "--thread", thread,
              "--out", str(out / "run")])  # fmt: skip
    if rc:
        return rc

    region = _zoom_region(data_dir, thread)
    if region is None:
        message = NO_ZOOM_TEMPLATE.format(question=question, thread=thread)
        print(f"error: {message}", file=sys.stderr)
        return 1
    box = ",".join(str(v) for v in region)
    long_side = max(region[2] - region[0], region[3] - region[1])
    side = min(long_side, ZOOM_MAX_SIDE)
    scale = "full resolution" if side == long_side else f"long side {side} px"
    _banner(f"the zoom the agent made: zoomearth view {scene_path.name} --box {box}")
    rc = cli(["view", str(scene_path), f"--box={box}", "--side", str(side),
              "-o", str(out / "zoom.png")])  # fmt: skip
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
    print(f"zoom:       {out / 'zoom.png'}  ({scale}, region {box})")
    print(f"run:        {out / 'run'}  (trajectory.png, GeoTIFF/GeoJSON artifacts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
