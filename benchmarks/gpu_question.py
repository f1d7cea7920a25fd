"""One agent question at real model size on one GPU: zoom, segment, remove clouds, edit, answer.

Builds the published architectures with random weights (no model hub is needed), points the
settings at them exactly as a user points them at real checkpoints, and runs one question through
the real graph (``Agent.ask``) with one model-pool budget for the planner and the tools:

* planner: Qwen2.5-VL-3B (``build_tiny_qwen25vl(size="3b")``) through the transformers backend,
  called on every planning turn with the views the graph rendered. Random weights write no
  valid action, so the *actions* of each turn come from a fixed script (zoom, segmentation,
  cloud_removal, edit, answer); the model's reply is generated (and timed) and then discarded.
* segmentation: SAM ViT-H (``build_tiny_sam(size="vit_h")``) through ``sam_checkpoint``;
* cloud_removal and edit: Stable Diffusion 1.5 inpainting (``build_tiny_sd_inpaint(size="sd15")``)
  through ``inpaint_model`` (diffusion fill of the cloud flags; a learned removal edit).

It prints the time of every step (planner turns and tool nodes), the pool's loads and evictions,
and the peak device memory against the budget (exit status 1 when the peak passes the budget or a
tool call fails). ``--scale tiny --device cpu`` runs the same code with tiny models on a CPU in a
few seconds; ``tests/models/test_gpu_question.py`` runs it that way in CI.

Usage::

    python benchmarks/gpu_question.py --scale tiny --device cpu          # CI, any machine
    python benchmarks/gpu_question.py --device cuda --budget-gib 10      # real size, one GPU
        # ~12 GB of random checkpoints are written to --workdir (default: a temporary folder)
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from zoomearth.agent.base import Planner, PlanReply, PlanRequest
from zoomearth.models import ModelPool, format_bytes

SCENE_SIDE = 2048
ZOOM = [400, 380, 912, 892]  # full-resolution pixels of the synthetic scene (seed 3)
TURNS: list[list[dict[str, Any]]] = [
    [{"zoom": ZOOM, "frame": "full"}],
    [{"tool": "segmentation", "args": {"backend": "sam"}}],
    [{"tool": "cloud_removal", "args": {"method": "single", "inpaint_steps": 4}}],
    [
        {
            "tool": "edit",
            "args": {
                "instruction": "remove the car",
                "mode": "remove",
                "backend": "learned",
                "target_box": [600, 600, 664, 664],
                "steps": 4,
            },
        }
    ],
    [{"answer": "Zoomed, segmented, cloud-free and edited (random weights: a timing run)."}],
]


class TimedScriptPlanner(Planner):
    """Generates with the real planner model each turn (timed), then plays the scripted actions.

    Args:
        model_planner: The transformers planner (Qwen2.5-VL) whose ``plan`` is timed.
        script: The script planner that supplies the turn's actions.
        device: The planner's device (synchronised before reading the clock).
    """

    name = "timed-script"

    def __init__(self, model_planner: Planner, script: Planner, device: str) -> None:
        self.model_planner = model_planner
        self.script = script
        self.device = device
        self.turn_seconds: list[float] = []
        self.visual_tokens: list[int] = []

    def plan(self, request: PlanRequest) -> PlanReply:
        """Run the model on the request (timed), then return the script's reply."""
        t0 = time.perf_counter()
        reply = self.model_planner.plan(request)
        _sync(self.device)
        self.turn_seconds.append(time.perf_counter() - t0)
        self.visual_tokens.append(reply.visual_tokens)
        return self.script.plan(request)

    def describe(self) -> str:
        """Both planners, for the run log."""
        return f"{self.model_planner.describe()} (actions scripted)"

    def close(self) -> None:
        """Close both planners."""
        self.model_planner.close()
        self.script.close()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def build_models(workdir: Path, scale: str) -> dict[str, Path]:
    """Write the three random checkpoints (or reuse them when already in ``workdir``)."""
    from zoomearth.testing_models import (
        build_tiny_qwen25vl,
        build_tiny_sam,
        build_tiny_sd_inpaint,
    )

    full = scale == "full"
    paths = {
        "planner": workdir / ("qwen-3b" if full else "qwen-tiny"),
        "sam": workdir / ("sam_vit_h.pth" if full else "sam_tiny.pth"),
        "inpaint": workdir / ("sd15-inpaint" if full else "sd-inpaint-tiny"),
    }
    if not (paths["planner"] / "config.json").exists():
        build_tiny_qwen25vl(paths["planner"], size="3b" if full else "tiny")
    if not paths["sam"].exists():
        build_tiny_sam(paths["sam"], size="vit_h" if full else "tiny")
    if not (paths["inpaint"] / "model_index.json").exists():
        build_tiny_sd_inpaint(paths["inpaint"], size="sd15" if full else "tiny")
    return paths


def peak_memory(device: str) -> int:
    """Peak bytes the process held on ``device`` (CUDA allocator peak; else peak RSS)."""
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=["full", "tiny"], default="full")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument(
        "--budget-gib",
        type=float,
        default=None,
        help="model-pool budget on the device (default: 10 GiB at full size, 0.25 GiB tiny)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep checkpoints here")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args(argv)

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("No CUDA device here; run with --scale tiny --device cpu.", file=sys.stderr)
        return 2
    budget = int((args.budget_gib or (10.0 if args.scale == "full" else 0.25)) * 2**30)
    with tempfile.TemporaryDirectory(prefix="zoomearth-gpu-question-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        return run(workdir, args.scale, args.device, budget, args.json)


def run(workdir: Path, scale: str, device: str, budget: int, as_json: bool) -> int:
    """Build, run the question, print the figures; 0 when every step worked within budget."""
    from zoomearth.agent.backends.hf import TransformersPlanner
    from zoomearth.agent.backends.script import ScriptPlanner
    from zoomearth.api import Agent
    from zoomearth.config import load_settings
    from zoomearth.synth import generate_scene

    t0 = time.perf_counter()
    models = build_models(workdir, scale)
    build_s = time.perf_counter() - t0
    scene = workdir / "scene.tif"
    if not scene.exists():
        generate_scene(scene, SCENE_SIDE, seed=3, clouds=0.35)
    settings = load_settings(
        flags={
            "data_dir": workdir / "data",
            "cache_dir": workdir / "cache",
            "runs_dir": workdir / "runs",
            "allowed_roots": [str(workdir)],
            "planner": "transformers",
            "planner_model": str(models["planner"]),
            "planner_device": device,
            "planner_seed": 0,
            "planner_max_new_tokens": 32,
            "tool_device": device,
            "sam_checkpoint": str(models["sam"]),
            "sam_model_type": "vit_h" if scale == "full" else "vit_b",
            "inpaint_model": str(models["inpaint"]),
            "model_pool_budget_bytes": budget,
        },
        environ={},
    )
    pool = ModelPool(budgets={device: budget})
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    planner = TimedScriptPlanner(
        TransformersPlanner(settings, pool=pool),
        ScriptPlanner(settings, plan={"turns": TURNS}),
        device,
    )
    agent = Agent(settings, planner=planner, pool=pool, auto_approve=True)
    t0 = time.perf_counter()
    try:
        result = agent.ask(scene, "Segment the building, remove the clouds, remove the car.")
    finally:
        agent.close()
    total_s = time.perf_counter() - t0
    peak = peak_memory(device)
    stats = pool.stats()
    calls = [(c["name"], c["status"], c["seconds"]) for c in result.tool_calls]
    failed = [c for c in calls if c[1] != "ok"]

    print(
        f"one question at {scale} size on {device}: models built in {build_s:.1f} s, "
        f"question {total_s:.1f} s, status {result.status}"
    )
    print(f"{'step':<36}{'seconds':>10}")
    for i, seconds in enumerate(planner.turn_seconds):
        tokens = planner.visual_tokens[i]
        print(f"{f'planner turn {i + 1} ({tokens} visual tok)':<36}{seconds:>10.2f}")
    for tool, status, seconds in calls:
        print(f"{f'{tool} ({status})':<36}{(seconds or 0.0):>10.2f}")
    print(format_pool_line(stats))
    kind = "peak GPU memory (allocator)" if device.startswith("cuda") else "peak RSS (process)"
    pool_peak = max((d.peak_bytes for d in stats.devices if d.device == device), default=0)
    print(f"{kind}: {format_bytes(peak)}; model-pool budget {format_bytes(budget)}; "
          f"pool's peak resident {format_bytes(pool_peak)}")
    over = pool_peak > budget
    if as_json:
        print(json.dumps({
            "scale": scale, "device": device, "status": result.status, "total_s": total_s,
            "planner_turn_s": planner.turn_seconds, "tool_calls": calls, "peak_bytes": peak,
            "pool_peak_bytes": pool_peak, "budget_bytes": budget,
        }))
    if over:
        print("FAIL: the pool's resident models passed the budget", file=sys.stderr)
    if failed:
        print(f"FAIL: tool calls did not succeed: {failed}", file=sys.stderr)
    return 1 if (over or failed or result.status != "answered") else 0


def format_pool_line(stats: Any) -> str:
    """Loads, evictions and load time of every model in the pool."""
    parts = [
        f"{m.key.split(':')[0]} loads {m.loads} evictions {m.offloads + m.frees} "
        f"load {m.load_seconds:.1f} s"
        for m in stats.models
    ]
    return "pool: " + "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
