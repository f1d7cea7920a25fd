"""Small tools and scenes shared by the tool-layer tests."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

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
