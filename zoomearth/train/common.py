"""Pieces shared by the SFT and GRPO trainers: loading, devices, LoRA, logging, saving.

Everything heavy (torch, transformers, trl, peft) is imported inside the functions; a missing
``rl`` extra is reported with the command that installs it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from zoomearth.errors import ZoomEarthError

if TYPE_CHECKING:
    from zoomearth.train.config import TrainConfig

__all__ = [
    "METRICS_FILE",
    "PLOT_FILE",
    "TrainError",
    "TrainResult",
    "build_args_common",
    "finish",
    "load_image",
    "load_model_and_processor",
    "lora_config",
    "metrics_callback",
    "require_rl",
    "save_checkpoint",
]

METRICS_FILE: Final = "metrics.jsonl"
PLOT_FILE: Final = "curves.png"

MISSING_RL_TEMPLATE: Final = (
    "Training needs the 'rl' extra ({error}); install it with: pip install 'zoomearth[rl]'"
)
LOAD_MODEL_TEMPLATE: Final = (
    "Cannot load the model '{model}' for training ({error}); give a local Qwen2-VL-family "
    "checkpoint directory or a hub id that is downloaded already."
)


class TrainError(ZoomEarthError, RuntimeError):
    """Training cannot start or continue (the message says what to change)."""


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        output_dir: The saved checkpoint (loads with ``from_pretrained`` and the planner).
        steps: Optimiser steps done.
        seconds: Wall time of ``trainer.train()``.
        history: Logged records (TRL/transformers log dicts with ``step``).
        metrics_path: ``metrics.jsonl``.
        plot_path: ``curves.png`` (None when matplotlib is missing).
    """

    output_dir: Path
    steps: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics_path: Path | None = None
    plot_path: Path | None = None

    @property
    def steps_per_second(self) -> float:
        """Optimiser steps per wall second of training."""
        return self.steps / self.seconds if self.seconds > 0 else 0.0


def require_rl() -> None:
    """Raise :class:`TrainError` naming the extra when trl or peft is missing."""
    try:
        import peft  # noqa: F401
        import trl  # noqa: F401
    except ImportError as exc:
        raise TrainError(MISSING_RL_TEMPLATE.format(error=exc)) from None


def resolve_device(setting: str) -> str:
    """``cpu`` or ``cuda`` for a ``training.device`` setting (``auto``: CUDA when available)."""
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def resolve_precision(setting: str, device: str) -> str:
    """``bf16``, ``fp16`` or ``fp32`` (``auto``: bf16 on CUDA devices supporting it, else fp32)."""
    import torch

    if setting != "auto":
        return setting
    if device == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def load_model_and_processor(config: TrainConfig) -> tuple[Any, Any, str, str]:
    """Load the checkpoint for training.

    Returns:
        ``(model, processor, device, precision)``; the model is in float32 for fp32 training
        and in the half type for bf16/fp16 (trainers keep master weights as the args say).

    Raises:
        TrainError: The checkpoint cannot be loaded.
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    device = resolve_device(config.training.device)
    precision = resolve_precision(config.training.precision, device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float32, "fp32": torch.float32}[precision]
    try:
        processor = AutoProcessor.from_pretrained(config.model)
        extra: dict[str, Any] = {}
        if config.training.attn_implementation:
            extra["attn_implementation"] = config.training.attn_implementation
        model = AutoModelForImageTextToText.from_pretrained(config.model, dtype=dtype, **extra)
    except (OSError, ValueError, KeyError) as exc:
        raise TrainError(LOAD_MODEL_TEMPLATE.format(model=config.model, error=exc)) from exc
    return model, processor, device, precision


def lora_config(config: TrainConfig) -> Any:
    """The peft ``LoraConfig`` for the run, or None when LoRA is disabled."""
    if not config.lora.enabled:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=list(config.lora.target_modules),
        task_type="CAUSAL_LM",
    )


def build_args_common(config: TrainConfig, device: str, precision: str) -> dict[str, Any]:
    """Keyword arguments shared by ``SFTConfig`` and ``GRPOConfig``."""
    t = config.training
    # TRL defaults gradient checkpointing to on; transformers 5 names it activation checkpointing
    # (setting the new name explicitly also avoids the deprecation warning of the old one).
    return {
        "gradient_checkpointing": t.gradient_checkpointing,
        "activation_checkpointing": t.gradient_checkpointing,
        "output_dir": str(config.output_dir / "trainer"),
        "max_steps": t.max_steps,
        "num_train_epochs": t.epochs,
        "per_device_train_batch_size": t.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "learning_rate": t.learning_rate,
        "seed": t.seed,
        "data_seed": t.data_seed,
        "logging_steps": t.logging_steps,
        "save_strategy": "steps" if t.save_steps else "no",
        "save_steps": t.save_steps or 500,
        "report_to": [],
        "use_cpu": device == "cpu",
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
        "remove_unused_columns": False,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }


def metrics_callback(path: Path) -> Any:
    """A ``TrainerCallback`` appending every log record (with ``step`` and ``time``) to ``path``."""
    from transformers import TrainerCallback

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("", encoding="utf-8")
    start = time.perf_counter()

    class _Metrics(TrainerCallback):  # type: ignore[misc]
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            record: dict[str, Any] = {
                "step": int(state.global_step),
                "time": time.perf_counter() - start,
            }
            for key, value in (logs or {}).items():
                if isinstance(value, int | float | str | bool) or value is None:
                    record[key] = value
            with path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")

    return _Metrics()


def save_checkpoint(model: Any, processor: Any, out: Path) -> Path:
    """Save weights (LoRA adapters merged) and processor so the planner loads them as they are.

    Args:
        model: The trained model (a peft model is merged first).
        processor: Its processor.
        out: Target directory.

    Returns:
        ``out``.
    """
    out.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def load_image(root: Path, rel: str) -> Any:
    """A prepared PNG (path relative to the data folder) as an RGB PIL image."""
    from PIL import Image

    with Image.open(root / rel) as img:
        return img.convert("RGB")


def finish(
    trainer: Any, processor: Any, config: TrainConfig, seconds: float, title: str
) -> TrainResult:
    """Save the checkpoint, write the curves, and describe the run."""
    out = Path(config.output_dir)
    save_checkpoint(trainer.model, processor, out)
    history = [dict(r) for r in trainer.state.log_history]
    metrics_path = out / METRICS_FILE
    plot_path: Path | None = None
    try:
        from zoomearth.train.plots import plot_curves

        plot_path = plot_curves(history, out / PLOT_FILE, title=title)
    except ImportError:
        plot_path = None
    return TrainResult(
        output_dir=out,
        steps=int(trainer.state.global_step),
        seconds=seconds,
        history=history,
        metrics_path=metrics_path,
        plot_path=plot_path,
    )
