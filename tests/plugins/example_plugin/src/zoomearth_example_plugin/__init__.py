"""Example zoomearth plugin: ``brightness_stats``, per-band statistics of a region.

The tool streams the region tile by tile (so any region size works in bounded memory), accumulates
count, sum, sum of squares, minimum and maximum of the valid pixels of each band, writes a small
CSV table into the run directory atomically and returns a one-line summary per band.
"""

from __future__ import annotations

import csv
import io
from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from zoomearth.tools import (
    BackendStatus,
    Capabilities,
    Tool,
    ToolContext,
    ToolInputError,
    ToolResult,
)

__all__ = ["BrightnessStats"]
__version__ = "0.1.0"

NODATA_ONLY_TEMPLATE = (
    "Tool 'brightness_stats': the region {box} holds only nodata pixels, so there is nothing to "
    "measure; choose a box over valid image data."
)
BAD_BANDS_TEMPLATE = (
    "Tool 'brightness_stats': band(s) {bad} do not exist; this image has {count} band(s), "
    "numbered 1 to {count}."
)


class BrightnessStats(Tool):
    """Per-band min, max, mean and standard deviation of the valid pixels of the region."""

    name = "brightness_stats"
    description = (
        "Measure each band of the region: minimum, maximum, mean and standard deviation of the "
        "valid pixels, in the image's own units. Use it to compare brightness between areas or "
        "to check whether a region is dark, saturated or empty."
    )

    class Args(BaseModel):
        """Arguments of ``brightness_stats``."""

        model_config = ConfigDict(extra="forbid")

        bands: list[Annotated[int, Field(ge=1)]] | None = Field(
            None, min_length=1, description="1-based bands to measure (default: all bands)"
        )

    # Reads at most 1024 x 1024 pixels at once; larger regions are streamed tile by tile.
    capabilities = Capabilities(max_side=1024, streaming=True)

    @classmethod
    def backend_status(cls) -> list[BackendStatus]:
        """Pure numpy: always available."""
        return [BackendStatus("numpy", True, f"numpy {np.__version__}")]

    def run(self, ctx: ToolContext, args: Args) -> ToolResult:  # type: ignore[override]
        """Accumulate statistics tile by tile and write them as CSV."""
        # Imported here, not at module level: listing tools imports every plugin module, so
        # module-level imports should stay light (no rasterio/GDAL, no torch).
        from zoomearth.scene.writing import atomic_path

        scene = ctx.scene
        bands = list(args.bands) if args.bands else list(range(1, scene.count + 1))
        bad = sorted({b for b in bands if b > scene.count})
        if bad:
            raise ToolInputError(
                BAD_BANDS_TEMPLATE.format(bad=", ".join(map(str, bad)), count=scene.count),
                tool=self.name,
            )
        n = len(bands)
        count = np.zeros(n, np.int64)
        total = np.zeros(n, np.float64)
        total_sq = np.zeros(n, np.float64)
        lo = np.full(n, np.inf)
        hi = np.full(n, -np.inf)
        tiles = ctx.tiles()
        for tile in tiles:
            data = tile.crop(ctx.read(tile.read_box, bands=bands))  # (n, h, w), masked
            for i in range(n):
                values = data[i].compressed().astype(np.float64)
                if values.size:
                    count[i] += values.size
                    total[i] += values.sum()
                    total_sq[i] += np.square(values).sum()
                    lo[i] = min(lo[i], values.min())
                    hi[i] = max(hi[i], values.max())
            ctx.report(tile.index + 1, len(tiles), "brightness_stats")  # progress + cancellation
        if not count.any():
            raise ToolInputError(NODATA_ONLY_TEMPLATE.format(box=ctx.box), tool=self.name)

        safe = np.maximum(count, 1)
        mean = total / safe
        std = np.sqrt(np.maximum(total_sq / safe - mean**2, 0.0))
        rows = [
            {
                "band": b,
                "valid_pixels": int(count[i]),
                "min": float(lo[i]) if count[i] else None,
                "max": float(hi[i]) if count[i] else None,
                "mean": round(float(mean[i]), 4) if count[i] else None,
                "std": round(float(std[i]), 4) if count[i] else None,
            }
            for i, b in enumerate(bands)
        ]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        path = ctx.output_path("band_stats.csv")
        with atomic_path(path, protect=ctx.protected_paths) as tmp:  # temp file + rename
            tmp.write_text(buf.getvalue(), encoding="utf-8")

        lines = [
            f"band {r['band']}: mean {r['mean']:g}, std {r['std']:g}, min {r['min']:g}, "
            f"max {r['max']:g}"
            for r in rows
            if r["valid_pixels"]
        ]
        text = f"Statistics of region {ctx.box} ({scene.dtype}): " + "; ".join(lines) + "."
        return ToolResult(
            text=text,
            artifacts=[ctx.artifact(path, "table", f"per-band statistics of {ctx.box}")],
            data={"bands": rows},
        )
