"""Per-step orchestration overhead of the agent graph.

A scripted planner (no model) and a no-op tool run 20 steps (each step: plan -> one tool call ->
back to plan) with the SQLite checkpointer and ``durability="sync"``. The scripted planner's own
time is subtracted; what remains is the graph's cost -- routing, state reducers, checkpoint writes,
transcript building -- plus the no-op tool's pass through the tool contract (argument validation,
capability and region checks, artifact bookkeeping). Prints the median per step over
several runs, beside the same loop with an in-memory checkpointer.

Target: under 20 ms per step on a 2-core machine.

Usage: ``python benchmarks/graph_overhead.py [--steps 20] [--runs 5]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()

    from langgraph.checkpoint.memory import InMemorySaver

    from zoomearth.agent.base import Planner, PlanReply
    from zoomearth.api import Agent
    from zoomearth.config import load_settings
    from zoomearth.graphs.persistence import open_sqlite_checkpointer
    from zoomearth.scene.writing import write_window_array  # noqa: F401 - warm the import
    from zoomearth.tools.base import Tool, ToolResult
    from zoomearth.tools.registry import ToolRegistry

    class Noop(Tool):
        name = "noop"
        description = "Does nothing."

        def run(self, ctx, args):  # noqa: ANN001, ANN201
            return ToolResult(text="nothing done")

    timings = {"planner": 0.0}

    class Scripted(Planner):
        name = "scripted"

        def __init__(self, steps: int) -> None:
            self.steps = steps

        def plan(self, request):  # noqa: ANN001, ANN201
            t0 = time.perf_counter()
            n = sum(1 for e in request.transcript if e.kind == "planner")
            text = ('<tool_call>{"name": "noop", "arguments": {}}</tool_call>' if n < self.steps
                    else "<answer>done</answer>")
            reply = PlanReply(text=text, seen_sizes={0: (512, 512)}, backend="scripted")
            timings["planner"] += time.perf_counter() - t0
            return reply

    import rasterio

    tmp = Path(tempfile.mkdtemp(prefix="zoomearth-overhead-"))
    image = tmp / "scene.tif"
    with rasterio.open(image, "w", driver="GTiff", width=2048, height=2048, count=3,
                       dtype="uint8", tiled=True, blockxsize=256, blockysize=256,
                       crs="EPSG:32633",
                       transform=rasterio.Affine(1, 0, 500_000, 0, -1, 5_000_000)) as dst:
        dst.write(np.zeros((3, 2048, 2048), np.uint8))
    settings = load_settings(flags={"data_dir": tmp / "data", "cache_dir": tmp / "cache",
                                    "max_steps": args.steps + 1})
    registry = ToolRegistry(builtins={"noop": Noop}, entry_point_group=None)

    def measure(make_saver) -> list[float]:  # noqa: ANN001
        per_step = []
        for run in range(args.runs):
            agent = Agent(settings, planner=Scripted(args.steps), registry=registry,
                          checkpointer=make_saver(run), strict=True)
            timings["planner"] = 0.0
            t0 = time.perf_counter()
            result = agent.ask(image, "go", thread=f"bench-{run}-{time.time_ns()}")
            wall = time.perf_counter() - t0
            assert result.answer == "done", result
            per_step.append((wall - timings["planner"]) / (args.steps + 1))
            agent.close()
        return per_step

    sqlite = measure(lambda run: open_sqlite_checkpointer(tmp / f"ck{run}.sqlite"))
    memory = measure(lambda run: InMemorySaver())
    print(f"{args.steps} tool steps + 1 answer step, median of {args.runs} runs")
    print(f"  SQLite checkpointer (durability=sync): "
          f"{statistics.median(sqlite) * 1e3:6.2f} ms/step")
    print(f"  in-memory checkpointer:                "
          f"{statistics.median(memory) * 1e3:6.2f} ms/step")
    print(f"  SQLite / memory: {statistics.median(sqlite) / statistics.median(memory):.2f}x "
          "(target: SQLite under 20 ms/step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
