"""The YAML configuration of ``zoomearth train sft|grpo`` (validated with pydantic).

One file drives either trainer; unknown keys are errors (a typo must not silently train with a
default). The reference is ``docs/train.md``; examples are in ``examples/train/``::

    model: HappyBug/ZoomEarth-3B        # hub id or local checkpoint directory
    output_dir: runs/grpo               # checkpoint, metrics.jsonl, curves.png
    data:
      path: prepared/grpo.jsonl         # from `zoomearth train prepare` (sft.jsonl for SFT)
      limit: null                       # use only the first N rows
    lora:
      enabled: true
      r: 16
    training:
      max_steps: 100
      batch_size: 4                     # per device; a multiple of grpo.num_generations for GRPO
    grpo:
      num_generations: 4
      stage1: {temperature: 1.0, max_new_tokens: 2048}
      stage2: {temperature: 0.7, max_new_tokens: 800}
    rewards:
      weights: {format: 1.0, box: 1.0, answer: 1.0}
      region_guided_scale: 200

Paths are relative to the YAML file's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from zoomearth.errors import ZoomEarthError

__all__ = [
    "DataConfig",
    "GRPOSection",
    "LoraConfig",
    "RewardConfig",
    "StageSampling",
    "TrainConfig",
    "TrainConfigError",
    "TrainingConfig",
    "load_train_config",
]

CONFIG_NOT_FOUND_TEMPLATE: Final = "Training config {path} does not exist."
CONFIG_INVALID_TEMPLATE: Final = "Training config {path} is invalid:\n{errors}"
CONFIG_NOT_MAPPING_TEMPLATE: Final = "Training config {path} must be a YAML mapping (key: value)."
LEGACY_STAGE_TEMPLATE: Final = (
    "grpo.{legacy} sets both stages and cannot be combined with grpo.{stage}; remove "
    "grpo.{legacy} and set grpo.stage1.{field} and grpo.stage2.{field}."
)
BATCH_GENERATIONS_TEMPLATE: Final = (
    "training.batch_size x training.grad_accum ({total}) must be a multiple of "
    "grpo.num_generations ({generations}): each prompt's generations form one group."
)


class TrainConfigError(ZoomEarthError, ValueError):
    """The training configuration is missing or invalid (the message lists what to fix)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Section):
    """Where the prepared data is.

    Attributes:
        path: ``sft.jsonl`` or ``grpo.jsonl`` written by ``zoomearth train prepare`` (image paths
            inside are relative to its folder).
        limit: Use only the first N rows (None: all).
    """

    path: Path
    limit: int | None = Field(None, gt=0)


class LoraConfig(_Section):
    """LoRA adapters (peft). The saved checkpoint has the adapters merged into the weights.

    Attributes:
        enabled: Train LoRA adapters instead of all weights.
        r: Adapter rank.
        alpha: LoRA alpha.
        dropout: Adapter dropout.
        target_modules: Module names to adapt (the language model's projections by default).
    """

    enabled: bool = False
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )


class TrainingConfig(_Section):
    """Optimisation settings shared by SFT and GRPO.

    Attributes:
        max_steps: Optimiser steps (-1: run ``epochs`` epochs).
        epochs: Epochs when ``max_steps`` is -1.
        batch_size: Per-device batch size (GRPO: completions per step, i.e. prompts x
            generations).
        grad_accum: Gradient accumulation steps.
        learning_rate: Peak learning rate.
        seed: Random seed.
        logging_steps: Log every N steps.
        save_steps: Save an intermediate checkpoint every N steps (None: only at the end).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        precision: ``auto`` (bf16 on CUDA when supported, else fp32), ``bf16``, ``fp16``, ``fp32``.
        gradient_checkpointing: Trade compute for memory.
        max_length: SFT only: drop (with a warning) examples longer than this many tokens.
        data_seed: Seed of the data sampler (None: ``seed``).
        attn_implementation: Attention kernel of the loaded model (``sdpa``, ``eager``,
            ``flash_attention_2`` ...; None: the transformers default).
    """

    max_steps: int = -1
    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(1, gt=0)
    grad_accum: int = Field(1, gt=0)
    learning_rate: float = Field(1e-5, gt=0)
    seed: int = 0
    logging_steps: int = Field(1, gt=0)
    save_steps: int | None = Field(None, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    gradient_checkpointing: bool = False
    max_length: int | None = Field(None, gt=0)
    data_seed: int | None = None
    attn_implementation: str | None = None


class StageSampling(_Section):
    """How one rollout stage is sampled.

    Attributes:
        temperature: Sampling temperature.
        max_new_tokens: New tokens at most.
        top_p: Nucleus sampling; None: the checkpoint's ``generation_config``.
        top_k: Top-k sampling (0: off); None: the checkpoint's ``generation_config``.
    """

    temperature: float = Field(gt=0)
    max_new_tokens: int = Field(gt=0)
    top_p: float | None = Field(None, gt=0, le=1.0)
    top_k: int | None = Field(None, ge=0)


def _stage1_default() -> StageSampling:
    # The reference's stage 1: GenerationConfig(max_new_tokens=max_completion_length (2048),
    # do_sample=True, temperature=1) -- top-k 50 and top-p 1.0 are GenerationConfig's defaults
    # in transformers 4.49, the reference's pin.
    return StageSampling.model_validate(
        {"temperature": 1.0, "max_new_tokens": 2048, "top_p": 1.0, "top_k": 50}
    )


def _stage2_default() -> StageSampling:
    # The reference's stage 2 (customized_funcs.chat): generate(max_new_tokens=800,
    # do_sample=True, temperature=0.7), the rest from the checkpoint's generation_config.
    return StageSampling.model_validate({"temperature": 0.7, "max_new_tokens": 800})


class GRPOSection(_Section):
    """GRPO rollouts and the policy loss (defaults: the reference's, except ``beta``).

    Attributes:
        num_generations: Completions sampled per prompt (the group size G).
        stage1: Sampling of stage 1 (overview): temperature 1.0, 2048 new tokens, top-p 1.0,
            top-k 50.
        stage2: Sampling of stage 2 (after the crop): temperature 0.7, 800 new tokens, top-p and
            top-k from the checkpoint's ``generation_config``.
        max_stage_tokens: Older form: new tokens of *both* stages (None: ``stage1``/``stage2``).
        temperature: Older form: temperature of both stages.
        top_p: Older form: top-p of both stages.
        beta: KL coefficient against the reference model (0: no reference model, as in TRL's
            default; the reference run used 0.04).
        epsilon: PPO clipping range.
        scale_rewards: ``none`` (advantage = reward - group mean, the reference's), ``group``
            (divided by the group's standard deviation, TRL's default) or ``batch``.
        loss_type: TRL's loss aggregation; ``grpo`` (each sequence's token mean, then the batch
            mean) is the reference's.
    """

    num_generations: int = Field(4, ge=2)
    stage1: StageSampling = Field(default_factory=_stage1_default)
    stage2: StageSampling = Field(default_factory=_stage2_default)
    max_stage_tokens: int | None = Field(None, gt=0)
    temperature: float | None = Field(None, gt=0)
    top_p: float | None = Field(None, gt=0, le=1.0)
    beta: float = Field(0.0, ge=0)
    epsilon: float = Field(0.2, gt=0)
    scale_rewards: Literal["none", "group", "batch"] = "none"
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = "grpo"

    @model_validator(mode="after")
    def _legacy_keys(self) -> GRPOSection:
        legacy = {
            "max_stage_tokens": "max_new_tokens",
            "temperature": "temperature",
            "top_p": "top_p",
        }
        for key, field in legacy.items():
            if getattr(self, key) is None:
                continue
            for stage in ("stage1", "stage2"):
                if stage in self.model_fields_set:
                    raise ValueError(
                        LEGACY_STAGE_TEMPLATE.format(legacy=key, stage=stage, field=field)
                    )
        return self

    def stages(self) -> tuple[StageSampling, StageSampling]:
        """The sampling of stage 1 and stage 2, the older both-stage keys applied."""
        update: dict[str, Any] = {}
        if self.max_stage_tokens is not None:
            update["max_new_tokens"] = self.max_stage_tokens
        if self.temperature is not None:
            update["temperature"] = self.temperature
        if self.top_p is not None:
            update["top_p"] = self.top_p
        return self.stage1.model_copy(update=update), self.stage2.model_copy(update=update)


class RewardConfig(_Section):
    """Reward weights and parameters (defaults: the reference method).

    Attributes:
        weights: Weight of each reward in the sum (keys ``format``, ``box``, ``answer``).
        region_guided_scale: ``s`` in ``tanh(s / centre distance)``.
        min_crop: Minimum crop side of the crop areas compared by the box reward.
        answer_threshold: WordNet similarity counted as a correct answer.
        exact_match_frame: ``reference`` (a box scores 2 when its numbers equal the LRS-GRO
            ``bbox``, as the reference compares them) or ``view`` (when they equal the ground
            truth in the model's overview frame, the numbers of the SFT targets).
        box_frame: The frame of the model's boxes, for the box reward and the rollout's crop:
            ``reference`` (the reference's 512-long-side overview, ZoomEarth-3B), ``processor``
            (the overview as the processor resized it, general Qwen2.5-VL models) or ``auto``
            (``reference`` for data prepared with the ``zoomearth`` profile, else
            ``processor``).
    """

    weights: dict[Literal["format", "box", "answer"], float] = Field(
        default_factory=lambda: {"format": 1.0, "box": 1.0, "answer": 1.0}  # type: ignore[arg-type]
    )
    region_guided_scale: float = Field(200.0, gt=0)
    min_crop: int = Field(512, gt=0)
    answer_threshold: float = Field(0.8, gt=0, le=1.0)
    exact_match_frame: Literal["reference", "view"] = "reference"
    box_frame: Literal["auto", "reference", "processor"] = "auto"

    def weight_list(self) -> list[float]:
        """Weights in the order of :func:`zoomearth.train.rewards.make_reward_funcs`."""
        return [float(self.weights.get(k, 1.0)) for k in ("format", "box", "answer")]


class TrainConfig(_Section):
    """A ``zoomearth train`` configuration (see the module docstring and ``docs/train.md``).

    Attributes:
        model: Hub id or local directory of a Qwen2-VL-family checkpoint.
        output_dir: Where the final checkpoint (``save_pretrained``), ``metrics.jsonl`` and
            ``curves.png`` go.
        data: The prepared data.
        lora: LoRA settings.
        training: Optimisation settings.
        grpo: GRPO rollout settings (ignored by SFT).
        rewards: Reward weights and parameters (ignored by SFT).
        view_side: Long side of rendered crops in GRPO stage 2 (``agent``-profile data; the
            ``zoomearth`` profile's crops are the reference's, long side 512).
        min_crop: Minimum crop side in full-resolution pixels of GRPO stage-2 crops
            (``agent``-profile data; the ``zoomearth`` profile's rule is the reference's, 512).
    """

    model: str
    output_dir: Path
    data: DataConfig
    lora: LoraConfig = Field(default_factory=LoraConfig)  # type: ignore[arg-type]
    training: TrainingConfig = Field(default_factory=TrainingConfig)  # type: ignore[arg-type]
    grpo: GRPOSection = Field(default_factory=GRPOSection)  # type: ignore[arg-type]
    rewards: RewardConfig = Field(default_factory=RewardConfig)  # type: ignore[arg-type]
    view_side: int = Field(512, gt=0)
    min_crop: int = Field(512, gt=0)

    def check_grpo(self) -> None:
        """Raise unless the batch holds whole groups of generations.

        Raises:
            TrainConfigError: ``batch_size x grad_accum`` is not a multiple of
                ``num_generations``.
        """
        total = self.training.batch_size * self.training.grad_accum
        if total % self.grpo.num_generations:
            raise TrainConfigError(
                BATCH_GENERATIONS_TEMPLATE.format(
                    total=total, generations=self.grpo.num_generations
                )
            )

    def resolved(self, base: Path) -> TrainConfig:
        """The config with relative paths made relative to ``base`` (the YAML's folder)."""
        model = self.model
        if not Path(model).is_absolute() and (base / model).exists():
            model = str((base / model).resolve())
        return self.model_copy(
            update={
                "model": model,
                "output_dir": _under(base, self.output_dir),
                "data": self.data.model_copy(update={"path": _under(base, self.data.path)}),
            }
        )


def _under(base: Path, path: Path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def load_train_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read and validate a YAML training config.

    Args:
        path: The YAML file.
        overrides: Top-level or dotted keys to replace (``{"training.max_steps": 2}``).

    Returns:
        The config, relative paths resolved against the file's folder.

    Raises:
        TrainConfigError: Missing file, not a mapping, or invalid values (all errors listed).
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise TrainConfigError(CONFIG_NOT_FOUND_TEMPLATE.format(path=path))
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise TrainConfigError(CONFIG_NOT_MAPPING_TEMPLATE.format(path=path))
    for key, value in (overrides or {}).items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        config = TrainConfig.model_validate(raw)
    except ValidationError as exc:
        errors = "\n".join(
            f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise TrainConfigError(CONFIG_INVALID_TEMPLATE.format(path=path, errors=errors)) from None
    return config.resolved(path.parent.resolve())
