"""Scripted planner and small tools for graph tests."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from zoomearth.agent.base import Planner, PlanReply, PlanRequest
from zoomearth.tools.base import Capabilities, Tool, ToolResult


class ScriptedPlanner(Planner):
    """Replays raw model texts; records every request it saw."""

    name = "scripted"

    def __init__(self, turns: list[str], counter_file: Path | None = None) -> None:
        self.turns = turns
        self.requests: list[PlanRequest] = []
        self.counter_file = counter_file

    def plan(self, request: PlanRequest) -> PlanReply:
        self.requests.append(request)
        index = sum(1 for e in request.transcript if e.kind == "planner")
        if self.counter_file is not None:
            with open(self.counter_file, "a") as fh:
                fh.write(f"plan {index}\n")
        text = self.turns[index] if index < len(self.turns) else "I have nothing more."
        seen = {vid: (v.width, v.height) for vid, v in request.views.items()}
        # Touch the pixels of the latest image like a real backend would.
        latest = max(seen)
        request.render(latest)
        return PlanReply(text=text, seen_sizes=seen, visual_tokens=10, backend="scripted")


class NoteArgs(BaseModel):
    note: str = Field("", description="free text")


class StatsTool(Tool):
    name = "region_stats"
    description = "Mean value of each band in the region; writes a JSON artifact."
    Args = NoteArgs
    capabilities = Capabilities(max_side=8192)

    def run(self, ctx, args):
        box = ctx.region or ctx.scene.full_box
        data = ctx.scene.read(box, out_size=(64, 64))
        means = [float(np.ma.mean(b)) for b in data]
        counter = os.environ.get("ZOOMEARTH_TEST_TOOL_COUNTER")
        if counter:
            with open(counter, "a") as fh:
                fh.write("stats\n")
        block = os.environ.get("ZOOMEARTH_TEST_BLOCK_MARKER")
        if block and not Path(block).exists():
            Path(block).write_text("inside")
            time.sleep(120)  # the test kills the process here
        from zoomearth.scene.writing import atomic_path

        out = ctx.output_path("stats.json")
        with atomic_path(out) as tmp:
            Path(tmp).write_text(json.dumps({"means": means}))
        art = ctx.artifact(out, kind="table", summary=f"band means {[round(m, 1) for m in means]}")
        return ToolResult(text=f"band means: {[round(m, 1) for m in means]}", artifacts=[art])


class FailingTool(Tool):
    name = "always_fails"
    description = "A tool with a bug: it always raises."

    def run(self, ctx, args):
        raise RuntimeError("boom from a broken tool")


class GatedTool(Tool):
    name = "gated_edit"
    description = "Pretend edit that needs the user's approval."
    needs_approval = True

    def run(self, ctx, args):
        return ToolResult(text="edited (pretend)")
