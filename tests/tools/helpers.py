"""Small tools and scenes shared by the tool-layer tests."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from pydantic import BaseModel, ConfigDict, Field
from rasterio.errors import NotGeoreferencedWarning

from zoomearth.scene import Scene
from zoomearth.scene.writing import atomic_path
from zoomearth.tools import (
    Capabilities,
    Tool,
    ToolContext,
    ToolResult,
    artifact_ref,
    input_path,
)


class EchoTool(Tool):
    """Writes a one-line text file describing what it received."""

    name = "echo_region"
    description = "Echo the region, its pixel sum and the resolved inputs (test tool)."

    class Args(BaseModel):
        model_config = ConfigDict(extra="forbid")

        threshold: float = Field(0.5, ge=0, le=1, description="A number between 0 and 1")
        mask: artifact_ref("mask") | None = Field(None, description="An earlier mask")
        others: list[input_path()] = Field(default_factory=list, description="Other images")

    capabilities = Capabilities(bands=(1, 3), dtypes=("uint8",), max_side=32)

    def run(self, ctx: ToolContext, args: Args) -> ToolResult:
        data = ctx.read()
        path = ctx.output_path("echo.txt")
        with atomic_path(path, protect=ctx.protected_paths) as tmp:
            tmp.write_text(f"{ctx.box} {int(data.sum())}\n")
        mask = ctx.get_artifact(args.mask).path if args.mask else None
        return ToolResult(
            text=f"echo {ctx.box}",
            artifacts=[ctx.artifact(path, "text", "echo")],
            data={"others": args.others, "mask": mask, "shape": list(data.shape)},
        )


def open_scene(path: Path, settings) -> Scene:
    return Scene.open(path, settings=settings, progress=False)


def make_ctx(scene: Scene, run_dir: Path, region=None, **kw) -> ToolContext:
    return ToolContext(scene=scene, run_dir=run_dir, region=region, **kw)


#: The georeference of the tool tests' rasters (UTM 14N, 1 m pixels).
TEST_TRANSFORM = Affine(1.0, 0, 600_000, 0, -1.0, 5_200_000)


def write_array(
    path: Path,
    array: np.ndarray,
    *,
    nodata: float | None = None,
    tiled: bool = False,
    georef: bool = True,
    rgb: bool = False,
) -> Path:
    """Write ``array`` (bands, rows, cols; any dtype) as a GeoTIFF the tool tests read.

    Args:
        nodata: The nodata value, if any.
        tiled: 256 px internal tiles (else strips).
        georef: EPSG:32614 with :data:`TEST_TRANSFORM`; False: pixel-only.
        rgb: Photometric RGB for 3 bands; otherwise MINISBLACK, like NAIP, so no band is taken
            for alpha.
    """
    profile = {
        "driver": "GTiff",
        "width": array.shape[2],
        "height": array.shape[1],
        "count": array.shape[0],
        "dtype": array.dtype.name,
        "nodata": nodata,
        "photometric": "RGB" if rgb and array.shape[0] == 3 else "MINISBLACK",
    }
    if tiled:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    if georef:
        profile.update(crs="EPSG:32614", transform=TEST_TRANSFORM)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(array)
    return path
