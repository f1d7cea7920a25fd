"""Steps per second of SFT and GRPO through zoomearth.train (prints figures; no assertions).

Default: a tiny random Qwen2.5-VL (built offline) on a synthetic 1536 x 1024 scene, on the CPU:
SFT steps, GRPO steps with the model's own sampling (stage 1 only: a random model never writes a
box) and GRPO steps with a scripted stage 1 that zooms in half the generations (two-stage
sequences: overview + crop), each timed over ``--steps`` optimiser steps.

``--qwen3b``: the published Qwen2.5-VL-3B architecture (36 text layers, hidden 2048, vocabulary
151,936; 32-layer vision tower, hidden 1280) with random weights, saved in bfloat16 and trained
through the same code on the GPU: GRPO steps with ``--generations`` (4) completions per prompt.
The tokenizer is the tiny byte-level one (prompts are ~3x longer in tokens than with Qwen's BPE);
image token counts are the real ones (512 px overview: 216 tokens, 512 px crop: 324 tokens).

    python benchmarks/train_step.py                      # tiny, CPU
    python benchmarks/train_step.py --qwen3b --steps 3   # 3B architecture, GPU (about 10 GB disk)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def qwen25vl_3b_config(ids: dict[str, int]) -> Any:
    """The published Qwen2.5-VL-3B-Instruct architecture (its config.json), special-token ids
    taken from ``ids``."""
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": 151936,
            "hidden_size": 2048,
            "intermediate_size": 11008,
            "num_hidden_layers": 36,
            "num_attention_heads": 16,
            "num_key_value_heads": 2,
            "max_position_embeddings": 128000,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": True,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1_000_000.0,
                "mrope_section": [16, 24, 24],
            },
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 32,
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "out_hidden_size": 2048,
            "fullatt_block_indexes": [7, 15, 23, 31],
            "window_size": 112,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "tokens_per_second": 2,
        },
        tie_word_embeddings=True,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )


def build_random_qwen25vl_3b(path: Path, device: str) -> Path:
    """Save the Qwen2.5-VL-3B architecture with random bfloat16 weights + a tiny processor."""
    import torch
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from zoomearth.testing_models import QWEN_SPECIAL_TOKENS, build_tiny_qwen25vl

    tiny = build_tiny_qwen25vl(path / "tiny")
    processor = AutoProcessor.from_pretrained(tiny)
    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    config = qwen25vl_3b_config(ids)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16)
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    out = path / "qwen25vl-3b-random"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    print(f"built Qwen2.5-VL-3B architecture, random weights: {n / 1e9:.3f} B parameters")
    return out


def make_data(root: Path, side: int, with_tools: bool = False) -> tuple[Path, Any]:
    """A synthetic scene, LRS-GRO records from its planted objects, and the prepared data
    (agent profile; the prompts' tools section only with ``with_tools``)."""
    from zoomearth.config import load_settings
    from zoomearth.scene.synth import generate_scene
    from zoomearth.train.data import prepare

    scene = generate_scene(root / "scene.tif", (1536, 1024), seed=7)
    scale = 1024 / 1536
    records = [
        {
            "question_id": f"q{i}",
            "image_name": "scene.tif",
            "question": f"What is the object number {i}?",
            "ground_truth": obj.label.replace("_", " "),
            "bbox": [v * scale for v in obj.box_xyxy],
            "type": "object",
        }
        for i, obj in enumerate(scene.objects[:4])
    ]
    settings = load_settings(
        flags={
            "data_dir": root / "data",
            "cache_dir": root / "cache",
            "overview_side": side,
            "view_side": side,
        },
        environ={},
    )
    # Without tools by default: the tiny byte-level tokenizer makes the registry's ~15,000
    # characters of tool descriptions as many tokens (about 4,000 with Qwen's tokenizer).
    prepare(
        records,
        root,
        root / "prepared",
        settings=settings,
        profile="agent",
        tools=None if with_tools else [],
    )
    return root / "prepared", settings


def scripted_zoom(processor: Any) -> Any:
    """Stage 1 zooms on the ground truth in even generations; stage 2 answers."""
    import torch

    tok = processor.tokenizer

    def sample(model: Any, inputs: Any, n: int, max_new: int, stage: int, row: Any) -> Any:
        texts = []
        for k in range(n):
            if stage == 2:
                texts.append(f"<think>seen</think><answer>{row['ground_truth']}</answer><|im_end|>")
            elif k % 2 == 0 and row["gt_box_view"]:
                x1, y1, x2, y2 = (int(v) for v in row["gt_box_view"])
                texts.append(
                    f'<think>zoom {{"bbox_2d": [{x1}, {y1}, {x2}, {y2}]}}</think><|im_end|>'
                )
            else:
                texts.append(f"<think>no</think><answer>x{k}</answer><|im_end|>")
        ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        width = max(len(i) for i in ids)
        device = inputs["input_ids"].device
        return torch.tensor([i + [tok.pad_token_id] * (width - len(i)) for i in ids], device=device)

    return sample


def run(
    kind: str, model: Path, data: Path, out: Path, args: argparse.Namespace, settings: Any
) -> dict[str, Any]:
    """One timed run; returns its figures."""
    from transformers import AutoProcessor

    from zoomearth.train.config import TrainConfig

    raw: dict[str, Any] = {
        "model": str(model),
        "output_dir": str(out / kind),
        "data": {"path": str(data / ("sft.jsonl" if kind == "sft" else "grpo.jsonl"))},
        "training": {
            "max_steps": args.steps,
            "batch_size": args.generations if kind != "sft" else 1,
            "learning_rate": 1e-6,
            "device": args.device,
            "gradient_checkpointing": args.qwen3b,
        },
        "grpo": {
            "num_generations": args.generations,
            # Both stages the same length; otherwise the default (the reference's) sampling.
            "stage1": {
                "temperature": 1.0,
                "max_new_tokens": args.stage_tokens,
                "top_p": 1.0,
                "top_k": 50,
            },
            "stage2": {"temperature": 0.7, "max_new_tokens": args.stage_tokens},
        },
        "lora": {"enabled": args.lora},
        "view_side": args.side,
    }
    config = TrainConfig.model_validate(raw)
    if kind == "sft":
        from zoomearth.train.sft import train_sft

        result = train_sft(config)
    else:
        from zoomearth.train.grpo import train_grpo

        sample = (
            scripted_zoom(AutoProcessor.from_pretrained(model)) if kind == "grpo-zoom" else None
        )
        result = train_grpo(config, settings=settings, sample=sample, similarity=None)
    step_times = [r["step_time"] for r in result.history if "step_time" in r]
    figures = {
        "run": kind,
        "steps": result.steps,
        "seconds": round(result.seconds, 2),
        "steps_per_second": round(result.steps_per_second, 4),
        "step_times": [round(t, 2) for t in step_times],
        "losses": [round(r["loss"], 4) for r in result.history if "loss" in r],
    }
    rewards = [round(r["reward"], 3) for r in result.history if "reward" in r]
    if rewards:
        figures["rewards"] = rewards
    lengths = [
        r.get("completions/mean_length") for r in result.history if "completions/mean_length" in r
    ]
    if lengths:
        figures["mean_completion_tokens"] = lengths
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=2, help="optimiser steps per run")
    parser.add_argument("--qwen3b", action="store_true", help="Qwen2.5-VL-3B architecture (GPU)")
    parser.add_argument("--generations", type=int, default=4, help="GRPO completions per prompt")
    parser.add_argument("--stage-tokens", type=int, default=None, help="new tokens per stage")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--lora", action="store_true", help="train LoRA adapters")
    parser.add_argument("--runs", default=None, help="comma list of sft,grpo,grpo-zoom")
    parser.add_argument(
        "--with-tools", action="store_true", help="prompts with the tool registry's tools section"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    import torch

    if args.qwen3b and args.device == "auto":
        args.device = "cuda"
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--qwen3b / --device cuda needs a CUDA device", file=sys.stderr)
        return 2
    args.side = 512 if args.qwen3b else 224
    if args.stage_tokens is None:
        args.stage_tokens = 128 if args.qwen3b else 16
    runs = (args.runs or ("grpo,grpo-zoom" if args.qwen3b else "sft,grpo,grpo-zoom")).split(",")

    figures: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="zoomearth-train-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        data, settings = make_data(root, args.side, args.with_tools)
        print(f"data prepared in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        if args.qwen3b:
            model = build_random_qwen25vl_3b(root, "cuda")
        else:
            from zoomearth.testing_models import build_tiny_qwen25vl

            model = build_tiny_qwen25vl(root / "tiny")
        for kind in runs:
            # The trainers print their log lines on stdout; the figures own stdout.
            with contextlib.redirect_stdout(sys.stderr):
                figures.append(run(kind, model, data, root / "out", args, settings))
            if torch.cuda.is_available():
                figures[-1]["cuda_max_memory_gib"] = round(
                    torch.cuda.max_memory_allocated() / 2**30, 2
                )
                torch.cuda.reset_peak_memory_stats()
    header = {
        "model": "qwen2.5-vl-3b-architecture-random" if args.qwen3b else "tiny-qwen2.5-vl-random",
        "device": args.device
        if args.device != "auto"
        else ("cuda" if torch.cuda.is_available() else "cpu"),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "generations": args.generations,
        "stage_tokens": args.stage_tokens,
        "tools_section": args.with_tools,
        "lora": args.lora,
        "torch_threads": torch.get_num_threads(),
    }
    if args.json:
        print(json.dumps({"setup": header, "runs": figures}))
    else:
        print(json.dumps(header))
        for f in figures:
            print(json.dumps(f))
    return 0


if __name__ == "__main__":
    sys.exit(main())
