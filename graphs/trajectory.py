"""The trajectory picture: where the agent looked, at a glance.

The overview with every zoom box drawn and numbered in order, and a strip of tool-output
thumbnails (previews) beneath it, each captioned with its tool and step. For a time stack the
overview is captioned with its date and every zoom's number with the date it showed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from zoomearth.graphs.runtime import GraphRuntime
    from zoomearth.graphs.state import AgentState

__all__ = ["render_trajectory", "write_trajectory"]

_COLOURS = [
    (255, 64, 64),
    (255, 200, 0),
    (0, 200, 255),
    (120, 255, 80),
    (255, 80, 255),
    (255, 140, 0),
    (80, 160, 255),
    (255, 255, 255),
]
THUMB = 160


def render_trajectory(state: AgentState, runtime: GraphRuntime) -> np.ndarray:
    """Draw the trajectory of a run.

    Returns:
        RGB uint8 array ``(H, W, 3)``: the overview (long side 768 at most, upscaled small
        overviews are not) with numbered zoom boxes, plus a thumbnail strip of tool previews.
    """
    from PIL import Image, ImageDraw

    views = state.get("views", {})
    ref = state["scene"]
    overview_rec = views["0"]
    base = Image.fromarray(runtime.render(ref, overview_rec))
    scale = min(1.5, 768 / max(base.size))
    if scale != 1.0:
        base = base.resize(
            (round(base.width * scale), round(base.height * scale)), Image.Resampling.BILINEAR
        )
    sx = base.width / ref["width"]
    sy = base.height / ref["height"]
    draw = ImageDraw.Draw(base)
    zooms = sorted(
        (v for v in views.values() if v.get("kind") == "zoom"), key=lambda v: v["view_id"]
    )
    for n, rec in enumerate(zooms, start=1):
        x1, y1, x2, y2 = rec["region_xyxy"]
        colour = _COLOURS[(n - 1) % len(_COLOURS)]
        box = [x1 * sx, y1 * sy, max(x1 * sx + 2, x2 * sx - 1), max(y1 * sy + 2, y2 * sy - 1)]
        draw.rectangle(box, outline=colour, width=3)
        tx, ty = box[0] + 3, box[1] + 2
        tag = f"{n} {rec['date']}" if rec.get("date") else str(n)
        width = draw.textlength(tag)
        draw.rectangle(
            [tx - 2, ty - 1, tx + max(10 * len(str(n)), width) + 2, ty + 12], fill=(0, 0, 0)
        )
        draw.text((tx, ty), tag, fill=colour)
    if overview_rec.get("date"):
        caption = f"overview: {overview_rec['date']}"
        cx, cy = 4, base.height - 16
        draw.rectangle([cx - 2, cy - 1, cx + draw.textlength(caption) + 2, cy + 12], fill=(0, 0, 0))
        draw.text((cx, cy), caption, fill=(255, 255, 255))

    previews = sorted(
        (v for v in views.values() if v.get("kind") == "preview" and v.get("path")),
        key=lambda v: v["view_id"],
    )
    if not previews:
        return np.asarray(base.convert("RGB"))
    per_row = max(1, base.width // (THUMB + 8))
    rows = (len(previews) + per_row - 1) // per_row
    canvas = Image.new("RGB", (base.width, base.height + rows * (THUMB + 24)), (24, 24, 24))
    canvas.paste(base, (0, 0))
    cdraw = ImageDraw.Draw(canvas)
    for i, rec in enumerate(previews):
        try:
            thumb = Image.fromarray(runtime.render(ref, rec))
        except (OSError, ValueError):
            continue
        thumb.thumbnail((THUMB, THUMB))
        r, c = divmod(i, per_row)
        x = 4 + c * (THUMB + 8)
        y = base.height + r * (THUMB + 24) + 4
        canvas.paste(thumb, (x, y))
        cdraw.text(
            (x, y + THUMB + 2),
            f"{rec.get('label') or 'tool'} (step {rec.get('step')})",
            fill=(230, 230, 230),
        )
    return np.asarray(canvas)


def write_trajectory(state: AgentState, runtime: GraphRuntime, path: Path) -> Path:
    """Render the trajectory picture and write it atomically as PNG."""
    from zoomearth.scene.writing import write_png

    write_png(path, render_trajectory(state, runtime))
    return path
