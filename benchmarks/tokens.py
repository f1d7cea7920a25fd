"""Visual tokens of one ZoomEarth-style answer versus Qwen2.5-VL on the whole image.

For every record of the LRS-GRO sample (76 real questions; the images are not included, so the
image is given a synthetic size), count every image token the planner processes across all its
calls for one answer, the way the reference method runs:

* stage 1 sees the overview (long side 512, seen at the processor's multiple-of-28 size);
* a question with a ``bbox`` (region/object questions) triggers stage 2, which sees the overview
  again plus the crop: the record's box (long-side-1024 frame) scaled to full resolution,
  expanded to the 512 x 512 minimum crop and shifted inside the image, rendered with long side
  <= 512; global questions (no box) stop after stage 1.

Baselines answer in one call from the whole image resized by the processor:

* native -- no pixel cap (every full-resolution pixel is encoded),
* cap -- Qwen2.5-VL's default ``max_pixels`` of 12,845,056 (preprocessor_config.json),
* 3333 -- the paper's setting: long side 3,333 px, then the processor.

Pure arithmetic with :mod:`zoomearth.agent.frames` -- no model, no images.

Usage::

    python benchmarks/tokens.py                     # square images of 5,000 and 20,000 px
    python benchmarks/tokens.py --sizes 5000 8000 20000 --aspect 0.75
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from zoomearth.agent.frames import (
    QWEN_DEFAULT_MAX_PIXELS,
    fit_long_side,
    qwen_smart_resize,
    qwen_visual_tokens,
    seen_size,
    zoom_region,
)
from zoomearth.geometry import PixelBox

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "benchmarks" / "lrs_gro_sample.jsonl"
BBOX_FRAME = 1024  # LRS-GRO boxes are in the long-side-1024 frame of the original image
OVERVIEW_SIDE = 512
VIEW_SIDE = 512
MIN_CROP = 512
PAPER_SIDE = 3333
TARGET_RATIO = 30.0


@dataclass(frozen=True)
class Answer:
    """Tokens of one ZoomEarth-style answer."""

    stage1: int
    stage2: int

    @property
    def total(self) -> int:
        return self.stage1 + self.stage2


def view_tokens(width: float, height: float, long_side: int) -> int:
    """Tokens of a region rendered with long side <= ``long_side``, seen by Qwen2.5-VL."""
    w, h = fit_long_side(width, height, long_side)
    return qwen_visual_tokens(*seen_size(w, h))


def whole_image_tokens(width: int, height: int, max_pixels: float | None) -> int:
    """Tokens of the whole image through the processor (``max_pixels`` None: no cap)."""
    h, w = qwen_smart_resize(height, width, max_pixels=max_pixels)
    return qwen_visual_tokens(w, h)


def zoomearth_answer(record: dict, width: int, height: int) -> Answer:
    """Tokens across the planner calls of one answer (stage 1, and stage 2 when boxed)."""
    overview = view_tokens(width, height, OVERVIEW_SIDE)
    bbox = record.get("bbox") or []
    if len(bbox) != 4:
        return Answer(overview, 0)
    scale = max(width, height) / BBOX_FRAME
    full = PixelBox(*(float(v) * scale for v in bbox))
    crop, _warning = zoom_region(full, width, height, MIN_CROP)
    crop = crop.snap_out()  # the renderer reads whole pixels
    return Answer(overview, overview + view_tokens(crop.width, crop.height, VIEW_SIDE))


def image_sizes(records: list[dict], side: int, aspect: float) -> dict[str, tuple[int, int]]:
    """A synthetic ``(width, height)`` per image: long side ``side``, short side ``side * aspect``.

    The orientation (landscape or portrait) is the one the image's boxes fit best; when they
    reach further than ``aspect`` allows along both axes, the short side grows to fit them.
    """
    sizes: dict[str, tuple[int, int]] = {}
    for name in sorted({r["image_name"] for r in records}):
        boxes = [r["bbox"] for r in records if r["image_name"] == name and r.get("bbox")]
        max_x = max((b[2] for b in boxes), default=0.0) / BBOX_FRAME
        max_y = max((b[3] for b in boxes), default=0.0) / BBOX_FRAME
        portrait = max_x < max_y
        short = round(side * min(1.0, max(aspect, max_x if portrait else max_y)))
        sizes[name] = (short, side) if portrait else (side, short)
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="LRS-GRO JSONL file")
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000], help="long sides")
    parser.add_argument(
        "--aspect",
        type=float,
        default=1.0,
        help="short side / long side of the synthetic images (0 < aspect <= 1)",
    )
    args = parser.parse_args(argv)
    if not 0 < args.aspect <= 1:
        parser.error("--aspect must be in (0, 1]")
    if not args.data.is_file():
        print(f"data file {args.data} not found; pass --data", file=sys.stderr)
        return 2
    records = [json.loads(line) for line in args.data.read_text("utf-8").splitlines() if line]
    boxed = sum(1 for r in records if len(r.get("bbox") or []) == 4)
    print(
        f"{len(records)} LRS-GRO records ({boxed} with a box -> two stages, "
        f"{len(records) - boxed} global -> one stage); synthetic sizes for its "
        f"{len({r['image_name'] for r in records})} images, short / long side >= {args.aspect:g}\n"
    )

    header = (
        f"{'long side':>15} | {'ZoomEarth mean':>14} {'min':>5} {'max':>5} | "
        f"{'native':>9} {'x':>7} | {'cap 12.8M':>9} {'x':>6} | {'3333 px':>8} {'x':>6}"
    )
    print(header)
    print("-" * len(header))
    ok = True
    for side in args.sizes:
        sizes = image_sizes(records, side, args.aspect)
        totals, natives, cappeds, papers = [], [], [], []
        for r in records:
            width, height = sizes[r["image_name"]]
            totals.append(zoomearth_answer(r, width, height).total)
            natives.append(whole_image_tokens(width, height, None))
            cappeds.append(whole_image_tokens(width, height, QWEN_DEFAULT_MAX_PIXELS))
            w3, h3 = fit_long_side(width, height, PAPER_SIDE)
            papers.append(whole_image_tokens(w3, h3, QWEN_DEFAULT_MAX_PIXELS))
        mean = statistics.fmean(totals)
        native, capped, paper = (statistics.fmean(v) for v in (natives, cappeds, papers))
        print(
            f"{f'{side:,} px':>15} | {mean:>14.1f} {min(totals):>5} {max(totals):>5} | "
            f"{native:>9,.0f} {native / mean:>6.1f}x | {capped:>9,.0f} {capped / mean:>5.1f}x | "
            f"{paper:>8,.0f} {paper / mean:>5.1f}x"
        )
        if side == 5000 and native / mean < TARGET_RATIO:
            ok = False
    print()
    first = next(r for r in records if r.get("bbox"))
    width, height = image_sizes(records, 5000, args.aspect)[first["image_name"]]
    stage = zoomearth_answer(first, width, height)
    print(
        f"One boxed answer ({first['question_id']}, {width} x {height} px): stage 1 "
        f"{stage.stage1} tokens (overview), stage 2 {stage.stage2} (overview + crop) "
        f"= {stage.total}. Baselines are means over the records (one call each)."
    )
    print(
        f"Target: at least {TARGET_RATIO:g}x fewer visual tokens than native resolution at "
        f"5,000 px -- {'met' if ok else 'NOT met'}."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
