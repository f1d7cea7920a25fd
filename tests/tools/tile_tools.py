"""A plugin-style tool with independent tiles, for the parallel-tile and Ray tests.

``tile_blur`` streams the region in 16 px tiles (1 px of overlap), blurs each tile with a 3 x 3
box filter (OpenCV) and writes one GeoTIFF with the one writer, in the order the tiles come back.
It only declares ``Capabilities(independent_tiles=True, parallel_tiles=...)``: the parallelism
comes from ``ToolContext.map_tiles``, as for any plugin. Instrumentation for the tests:

* ``marker_dir``: every computed tile writes ``tile-<index>-<pid>`` there (counts tiles across
  processes and machines, names the process that computed it);
* ``pause_tile`` / ``pause_s``: the first attempt at that tile writes ``pause-<pid>`` and sleeps,
  so a test can kill that worker process while it holds the tile (a retry does not sleep);
* ``delay_s``: every tile sleeps this long (keeps several tiles in flight);
* ``fail_tile``: that tile raises;
* in-process counters (:data:`STATS`) of tiles started and the most started-but-not-written.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from zoomearth.scene.writing import SourceGeoref, TiledRasterWriter
from zoomearth.tools import Capabilities, Tool, ToolContext, ToolResult

#: In-process instrumentation (threads only): tiles started, written, most in flight.
STATS = {"started": 0, "written": 0, "max_in_flight": 0, "threads": set()}
_LOCK = threading.Lock()


def reset_stats() -> None:
    """Zero :data:`STATS`."""
    with _LOCK:
        STATS.update(started=0, written=0, max_in_flight=0, threads=set())


class TileBlur(Tool):
    """3 x 3 box blur of every band, tile by tile (test plugin)."""

    name = "tile_blur"
    description = "Blur the region with a 3 x 3 box filter, tile by tile (test tool)."

    class Args(BaseModel):
        model_config = ConfigDict(extra="forbid")

        delay_s: float = Field(0.0, ge=0, description="Sleep per tile (seconds)")
        marker_dir: str | None = Field(None, description="Folder for per-tile marker files")
        pause_tile: int = Field(-1, description="Tile whose first attempt pauses")
        pause_s: float = Field(0.0, ge=0, description="How long that tile pauses")
        fail_tile: int = Field(-1, description="Tile that raises")

    capabilities: ClassVar[Capabilities] = Capabilities(
        max_side=16, streaming=True, tile_overlap=1, independent_tiles=True
    )

    def run(self, ctx: ToolContext, args: Args) -> ToolResult:  # type: ignore[override]
        """Blur every tile (in parallel where the context allows); write one GeoTIFF in order."""
        import cv2

        scene = ctx.scene
        col, row, width, height = ctx.box.to_window()

        def blur(tile):  # type: ignore[no-untyped-def]
            with _LOCK:
                STATS["started"] += 1
                STATS["threads"].add(threading.get_ident())
                STATS["max_in_flight"] = max(
                    STATS["max_in_flight"], STATS["started"] - STATS["written"]
                )
            if args.marker_dir:
                marker = Path(args.marker_dir)
                if tile.index == args.pause_tile and not any(marker.glob("pause-*")):
                    (marker / f"pause-{os.getpid()}").write_text(str(os.getpid()))
                    time.sleep(args.pause_s)
                (marker / f"tile-{tile.index}-{os.getpid()}").write_text("")
            if args.delay_s:
                time.sleep(args.delay_s)
            if tile.index == args.fail_tile:
                raise RuntimeError(f"tile {tile.index} failed on purpose")
            data = np.ma.getdata(ctx.read(tile.read_box)).astype(np.float32)
            out = np.stack([cv2.blur(band, (3, 3), borderType=cv2.BORDER_REFLECT) for band in data])
            return {"pixels": tile.crop(np.rint(out)).astype(scene.dtype), "pid": os.getpid()}

        out_path = ctx.output_path("blur.tif")
        writer = TiledRasterWriter.for_window(
            out_path,
            SourceGeoref.coerce(scene),
            (col, row, width, height),
            protect=ctx.protected_paths,
        )
        order, pids = [], set()
        with writer:
            for tile, done in ctx.map_tiles(blur, ctx.tiles(side=16), key={"kernel": 3}):
                writer.write(done["pixels"], tile.window)
                order.append(tile.index)
                pids.add(int(done["pid"]))
                with _LOCK:
                    STATS["written"] += 1
        return ToolResult(
            text=f"blurred {len(order)} tiles",
            artifacts=[ctx.artifact(out_path, "raster", "blurred region")],
            data={"order": order, "pids": sorted(pids), "workers": ctx.tile_workers()},
        )


class TileBlurProcesses(TileBlur):
    """The same tool, declaring that its tiles run in a pool of processes."""

    name = "tile_blur_processes"
    capabilities: ClassVar[Capabilities] = TileBlur.capabilities.model_copy(
        update={"parallel_tiles": "processes"}
    )


class TileBlurSerial(TileBlur):
    """The same tool, declaring independent tiles that must run one after the other."""

    name = "tile_blur_serial"
    capabilities: ClassVar[Capabilities] = TileBlur.capabilities.model_copy(
        update={"parallel_tiles": "serial"}
    )
