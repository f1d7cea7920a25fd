"""The real-size GPU question script (benchmarks/gpu_question.py) runs its tiny mode on a CPU.

The same code path builds Qwen2.5-VL-3B, SAM ViT-H and SD-1.5 inpainting with random weights on a
GPU; here the tiny builders run through the same loaders, pool and graph.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_question_script_tiny_on_cpu(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_question.py"), "--scale", "tiny",
         "--device", "cpu", "--workdir", str(tmp_path), "--json"],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["status"] == "answered"
    assert [name for name, _, _ in figures["tool_calls"]] == [
        "segmentation", "cloud_removal", "edit"
    ]
    assert all(status == "ok" for _, status, _ in figures["tool_calls"])
    # One generation per planning turn: zoom, three tool turns, the answer.
    assert len(figures["planner_turn_s"]) == 5
    assert 0 < figures["pool_peak_bytes"] <= figures["budget_bytes"]
    # The three models went through the pool (their loaders ran).
    assert "planner loads 1" in proc.stdout and "sam loads 1" in proc.stdout
    assert "diffusers-inpaint loads 1" in proc.stdout
