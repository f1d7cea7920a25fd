"""The rules planner checks the arguments it fills with the tool's own Args model: one validator."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field, field_validator

from zoomearth.agent.backends.rules import RulesPlanner
from zoomearth.agent.base import PlanRequest
from zoomearth.geometry import PixelBox, ViewSpec
from zoomearth.tools import Tool, ToolResult
from zoomearth.tools.registry import ToolRegistry


class PickyDenoise(Tool):
    """A denoise whose Args model refuses what its JSON Schema cannot express."""

    name = "denoise"
    description = "Remove noise (test double)."

    class Args(BaseModel):
        strength: float = Field(1.0, ge=0, description="Filter strength")
        preview: bool = Field(True, validate_default=True)

        @field_validator("preview")
        @classmethod
        def _no_preview(cls, value: bool) -> bool:
            if value:
                raise ValueError("previews are switched off on this server")
            return value

    def run(self, ctx, args):  # noqa: ANN001, ANN201
        return ToolResult(text="ran")


def _registry() -> ToolRegistry:
    return ToolRegistry(builtins={"denoise": PickyDenoise}, entry_point_group=None)


def _request(registry: ToolRegistry, *, shared: bool) -> PlanRequest:
    view = ViewSpec(0, PixelBox(0, 0, 4000, 4000), 512, 512)
    return PlanRequest(
        question="denoise the top-left corner",
        overview_id=0,
        transcript=[],
        views={0: view},
        render=lambda vid: np.zeros((512, 512, 3), np.uint8),
        tools=registry.tool_specs_for_prompt(),
        scene_info={"width": 4000, "height": 4000},
        check_arguments=registry.argument_problem if shared else None,
    )


def test_registry_check_is_the_runners_check_with_region_arguments_split_off() -> None:
    registry = _registry()
    assert registry.argument_problem(
        "denoise", {"bbox_2d": [0, 0, 10, 10], "view": 0, "preview": False}
    ) is None
    problem = registry.argument_problem("denoise", {"preview": True})
    assert problem is not None and "previews are switched off" in problem
    unknown = registry.argument_problem("denoise", {"sigma": 3})
    assert unknown is not None and "sigma" in unknown and "Valid arguments" in unknown


def test_rules_planner_uses_the_shared_check_when_given() -> None:
    registry = _registry()
    planner = RulesPlanner()
    # The JSON Schema allows preview=true (its default): without the shared check the call goes.
    alone = planner.plan(_request(registry, shared=False))
    assert "<tool_call>" in alone.text
    # With the runner's check, the Args model's validator refuses it: no call, and the reply
    # says why in the model's own words.
    shared = planner.plan(_request(registry, shared=True))
    assert "<tool_call>" not in shared.text
    assert "previews are switched off" in shared.text


def test_the_graph_gives_the_planner_the_runners_check(settings, tmp_path) -> None:
    from langgraph.checkpoint.memory import InMemorySaver

    from tests.scene.rasters import write_raster
    from zoomearth.api import Agent

    scene = write_raster(tmp_path / "s.tif", 1200, 900, 3, block=256, overviews=[2, 4])
    agent = Agent(settings, planner=RulesPlanner(), registry=_registry(),
                  checkpointer=InMemorySaver())
    try:
        result = agent.ask(scene, "denoise the top-left corner")
    finally:
        agent.close()
    assert result.tool_calls == []  # refused by the Args model before any call
    assert "previews are switched off" in result.answer
