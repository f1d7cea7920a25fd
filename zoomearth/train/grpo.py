"""GRPO with two-stage zoom rollouts and the Region-Guided reward, through TRL's ``GRPOTrainer``.

Rollout (:class:`TwoStageRollout`, passed as TRL's ``rollout_func`` hook). For every prompt (a
question id of ``grpo.jsonl``; TRL hands each prompt ``num_generations`` times):

1. stage 1: the planner's own prompt (:func:`~zoomearth.agent.conversation.build_conversation`,
   ``zoomearth`` layout, rendered by :func:`~zoomearth.agent.backends.hf.build_prompt_text`) with
   the prepared overview; sample up to ``max_stage_tokens`` tokens;
2. if the text holds a ``"bbox_2d"`` of 4 numbers that maps to a usable region: map it from the
   seen-overview frame to full-resolution pixels, apply the minimum crop, render the crop from the
   *full-resolution scene* (:meth:`zoomearth.scene.Scene.render`, long side ``view_side``), build
   the stage-2 input exactly as the planner does (stage-1 text cut before ``<answer>``, then the
   crop, continuing the assistant turn) and sample stage 2;
3. the completion scored and trained on is ``stage-1 text (cut) + crop vision tokens + stage-2
   tokens`` (or the stage-1 tokens when there was no crop); the crop's vision tokens are masked out
   of the loss with TRL's ``env_mask``; the rewards read ``stage1`` (the whole stage-1 text) and
   ``stage2`` (``""`` when not cut).

The stage-1 tokens in a cut completion are the cut text re-tokenised (the model's sampled token
split may differ from the canonical one for byte-level BPE); ``logprobs`` are not returned, so TRL
computes the old log-probabilities itself (no vLLM importance sampling).

What is overridden in TRL 1.16, and why (:class:`ZoomGRPOTrainer`): TRL's rollout hook returns
token ids only, and its forward pass builds image inputs from the *dataset's* images and the
prompt text -- it cannot see an image that arrives inside the completion, except in its own
tool-calling path. So the subclass overrides one method, ``_generate``: it calls TRL's
``_generate`` (which runs the rollout hook and does all of TRL's bookkeeping) with ``self.tools``
empty, then returns the rollout's images per completion (overview, crop) in the two image slots.
``self.tools`` holds one marker function (:func:`completion_images`) outside that call so TRL takes
its "images inside completions" forward path (image processor over every image, multimodal token
types rebuilt from the full sequence, a per-sample token/feature check). No tool is ever offered to
the model or called.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from zoomearth.errors import BoxError, ZoomEarthError
from zoomearth.geometry import PixelBox, ViewSpec
from zoomearth.train.common import (
    METRICS_FILE,
    TrainError,
    TrainResult,
    build_args_common,
    finish,
    load_image,
    load_model_and_processor,
    lora_config,
    metrics_callback,
    require_rl,
)

if TYPE_CHECKING:
    from zoomearth.config import Settings
    from zoomearth.train.config import TrainConfig

__all__ = [
    "GRPO_COLUMNS",
    "RolloutError",
    "SampleFn",
    "TwoStageRollout",
    "completion_images",
    "grpo_dataset_rows",
    "make_grpo_trainer",
    "train_grpo",
]

log = logging.getLogger(__name__)

#: Columns of ``grpo.jsonl`` given to the trainer (and so to the reward functions).
GRPO_COLUMNS: Final = (
    "prompt",
    "question_id",
    "ground_truth",
    "bbox",
    "gt_box_full",
    "gt_box_view",
    "overview_spec",
    "overview_seen",
)

PREFIX_MISMATCH_TEMPLATE: Final = (
    "The stage-2 input of {qid} does not start with the stage-1 prompt tokens; the tokenizer "
    "splits the prompt/answer boundary differently. This is a bug in zoomearth.train.grpo."
)
UNKNOWN_PROMPT_TEMPLATE: Final = "The rollout got prompt {prompt!r}, which is not a question id."
EMPTY_GRPO_TEMPLATE: Final = "No GRPO prompts in {path}; run `zoomearth train prepare` first."

#: ``sample(model, inputs, n, max_new_tokens, stage, row) -> [n, new_tokens] LongTensor``:
#: draws ``n`` continuations of one input (a processor ``BatchFeature`` on the model's device).
SampleFn = Callable[[Any, Any, int, int, int, Mapping[str, Any]], Any]


class RolloutError(ZoomEarthError, RuntimeError):
    """The rollout cannot build a consistent sequence (a bug, raised loudly)."""


def completion_images() -> None:
    """Marker in ``GRPOTrainer.tools``: completions may carry images (see the module docstring).

    Never offered to the model and never called.
    """


def _view_from_dict(spec: Mapping[str, Any] | str) -> ViewSpec:
    import json

    d = json.loads(spec) if isinstance(spec, str) else spec
    return ViewSpec(
        int(d.get("view_id", 0)),
        PixelBox(*(float(v) for v in d["region_xyxy"])),
        int(d["width"]),
        int(d["height"]),
    )


class TwoStageRollout:
    """TRL ``rollout_func``: stage 1, crop from the full-resolution scene, stage 2.

    Args:
        rows: ``grpo.jsonl`` rows by question id.
        root: Folder of ``grpo.jsonl`` (image paths are relative to it).
        max_stage_tokens: New tokens per stage.
        view_side: Long side of rendered crops.
        min_crop: Minimum crop side in full-resolution pixels.
        settings: Settings for opening scenes (defaults when None).
        sample: Replaces sampling (tests, custom decoding); default: ``model.generate`` with the
            trainer's temperature / top-p / top-k.
        template: Prompt template (default: ``settings.planner_prompt`` over the packaged one).

    Attributes:
        last_images: Per completion of the latest call: ``[overview]`` or ``[overview, crop]``.
        last_regions: Per completion: the full-resolution crop region, or None.
    """

    def __init__(
        self,
        rows: Mapping[str, Mapping[str, Any]],
        root: Path,
        *,
        max_stage_tokens: int = 256,
        view_side: int = 512,
        min_crop: int = 512,
        settings: Settings | None = None,
        sample: SampleFn | None = None,
        template: Any = None,
    ) -> None:
        self.rows = dict(rows)
        self.root = Path(root)
        self.max_stage_tokens = max_stage_tokens
        self.view_side = view_side
        self.min_crop = min_crop
        self.settings = settings
        self.sample = sample
        self.template = template
        self.last_images: list[list[Any]] = []
        self.last_regions: list[PixelBox | None] = []
        self._scene: tuple[str, Any] | None = None
        self._overviews: dict[str, Any] = {}

    # ---- helpers -------------------------------------------------------------------------------

    def _scene_for(self, path: str) -> Any:
        from zoomearth.scene import Scene

        if self._scene is None or self._scene[0] != path:
            if self._scene is not None:
                self._scene[1].close()
            self._scene = (path, Scene.open(path, settings=self.settings, progress=False))
        return self._scene[1]

    def _overview(self, rel: str) -> Any:
        if rel not in self._overviews:
            if len(self._overviews) > 8:
                self._overviews.clear()
            self._overviews[rel] = load_image(self.root, rel)
        return self._overviews[rel]

    def _default_sample(self, trainer: Any, banned: set[int]) -> SampleFn:
        import torch

        def sample(
            model: Any, inputs: Any, n: int, max_new: int, stage: int, row: Mapping[str, Any]
        ) -> Any:
            kwargs: dict[str, Any] = {
                "do_sample": True,
                "temperature": float(trainer.temperature),
                "top_p": float(trainer.top_p),
                "max_new_tokens": max_new,
                "num_return_sequences": n,
                "pad_token_id": trainer.pad_token_id
                if getattr(trainer, "pad_token_id", None) is not None
                else trainer._tokenizer.pad_token_id,
            }
            if banned:
                # A sampled vision token would claim image features that do not exist.
                kwargs["suppress_tokens"] = sorted(banned)
            if getattr(trainer, "top_k", None):
                kwargs["top_k"] = int(trainer.top_k)
            with torch.no_grad():
                out = model.generate(**inputs, **kwargs)
            return out[:, inputs["input_ids"].shape[1] :]

        return sample

    @staticmethod
    def _trim(ids: Sequence[int], eos: set[int], pad: int | None, banned: set[int]) -> list[int]:
        """Tokens up to the first end-of-sequence (kept), without padding or vision tokens."""
        out: list[int] = []
        for token in ids:
            token = int(token)
            if token in banned:
                continue
            out.append(token)
            if token in eos:
                break
        while out and pad is not None and out[-1] == pad and pad not in eos:
            out.pop()
        return out

    def _request(
        self, row: Mapping[str, Any], transcript: list[Any], views: dict[int, ViewSpec]
    ) -> Any:
        from zoomearth.agent.base import PlanRequest

        width, height = (int(v) for v in row["scene_size"])
        return PlanRequest(
            question=str(row["question"]),
            overview_id=0,
            transcript=transcript,
            views=views,
            render=lambda _v: None,  # pixels are given to the processor directly
            scene_info={"width": width, "height": height},
        )

    # ---- the hook --------------------------------------------------------------------------------

    def __call__(self, prompts: Sequence[Any], trainer: Any) -> dict[str, Any]:
        """Generate one two-stage completion per prompt entry (TRL's ``rollout_func``)."""
        from zoomearth.agent.backends.hf import build_prompt_text
        from zoomearth.agent.base import TranscriptEntry
        from zoomearth.agent.conversation import build_conversation
        from zoomearth.agent.frames import planner_box_to_full, zoom_region
        from zoomearth.agent.prompting import load_template
        from zoomearth.train.rewards import extract_bboxes

        if self.settings is None:
            from zoomearth.config import load_settings

            self.settings = load_settings()
        if self.template is None:
            # The same instructions `prepare` rendered into the SFT data (setting planner_prompt).
            self.template = load_template(self.settings.planner_prompt)
        processor = trainer.processing_class
        tokenizer = getattr(processor, "tokenizer", processor)
        model = trainer.accelerator.unwrap_model(trainer.model)
        device = trainer.accelerator.device
        eos = {int(t) for t in trainer.eos_token_ids}
        pad = tokenizer.pad_token_id
        vision_ids = {
            int(tokenizer.convert_tokens_to_ids(t))
            for t in ("<|vision_start|>", "<|vision_end|>", getattr(processor, "image_token", None))
            if t
        }
        # Tokens the model must not write itself: vision markers and image/video pads.
        banned = set(vision_ids)
        for name in ("<|video_pad|>", "<|vision_pad|>", getattr(processor, "video_token", None)):
            if name:
                token_id = tokenizer.convert_tokens_to_ids(name)
                if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
                    banned.add(token_id)
        sample = self.sample or self._default_sample(trainer, banned)

        out_prompt, out_completion, out_mask = [], [], []
        stage1_texts, stage2_texts = [], []
        self.last_images, self.last_regions = [], []
        was_training = model.training
        model.eval()
        try:
            for key, group in itertools.groupby(prompts, key=str):
                n = len(list(group))
                if key not in self.rows:
                    raise RolloutError(UNKNOWN_PROMPT_TEMPLATE.format(prompt=key))
                row = self.rows[key]
                overview = self._overview(str(row["overview"]))
                ov_spec = _view_from_dict(row["overview_spec"])
                seen = (int(row["overview_seen"][0]), int(row["overview_seen"][1]))
                width, height = (int(v) for v in row["scene_size"])
                conv1 = build_conversation(
                    self._request(row, [], {0: ov_spec}), "zoomearth", "pixels", self.template
                )
                prompt1 = build_prompt_text(processor, conv1)
                in1 = processor(text=[prompt1], images=[overview], return_tensors="pt").to(device)
                prompt_ids = [int(t) for t in in1["input_ids"][0]]
                gen1 = sample(model, in1, n, self.max_stage_tokens, 1, row)
                for k in range(n):
                    toks1 = self._trim(gen1[k].tolist(), eos, pad, banned)
                    text1 = tokenizer.decode(toks1, skip_special_tokens=True)
                    stage1_texts.append(text1)
                    crop_view = None
                    boxes = extract_bboxes(text1)
                    if boxes and len(boxes[0]) == 4:
                        try:
                            full = planner_box_to_full(boxes[0], "pixels", ov_spec, seen)
                            region, _ = zoom_region(full, width, height, self.min_crop)
                            scene = self._scene_for(str(row["image_path"]))
                            crop_view = scene.render(region, self.view_side, view_id=1)
                        except BoxError:
                            crop_view = None
                    if crop_view is None:
                        out_prompt.append(prompt_ids)
                        out_completion.append(toks1)
                        out_mask.append([1] * len(toks1))
                        stage2_texts.append("")
                        self.last_images.append([overview])
                        self.last_regions.append(None)
                        continue
                    crop_img = crop_view.to_pil()
                    transcript = [
                        TranscriptEntry("planner", text1),
                        TranscriptEntry("zoom", view_id=1),
                    ]
                    conv2 = build_conversation(
                        self._request(row, transcript, {0: ov_spec, 1: crop_view.spec}),
                        "zoomearth",
                        "pixels",
                        self.template,
                    )
                    prompt2 = build_prompt_text(processor, conv2)
                    in2 = processor(
                        text=[prompt2], images=[overview, crop_img], return_tensors="pt"
                    ).to(device)
                    ids2 = [int(t) for t in in2["input_ids"][0]]
                    if ids2[: len(prompt_ids)] != prompt_ids:
                        raise RolloutError(PREFIX_MISMATCH_TEMPLATE.format(qid=key))
                    middle = ids2[len(prompt_ids) :]
                    toks2 = self._trim(
                        sample(model, in2, 1, self.max_stage_tokens, 2, row)[0].tolist(),
                        eos,
                        pad,
                        banned,
                    )
                    stage2_texts.append(tokenizer.decode(toks2, skip_special_tokens=True))
                    out_prompt.append(prompt_ids)
                    out_completion.append(middle + toks2)
                    out_mask.append(
                        [0 if t in vision_ids else 1 for t in middle] + [1] * len(toks2)
                    )
                    self.last_images.append([overview, crop_img])
                    self.last_regions.append(crop_view.spec.region)
        finally:
            if was_training:
                model.train()
        return {
            "prompt_ids": out_prompt,
            "completion_ids": out_completion,
            "logprobs": None,
            "env_mask": out_mask,
            "stage1": stage1_texts,
            "stage2": stage2_texts,
        }


def grpo_dataset_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The trainer's dataset columns (:data:`GRPO_COLUMNS`) of ``grpo.jsonl`` rows."""
    import json

    out = []
    for row in rows:
        item = {k: row.get(k) for k in GRPO_COLUMNS}
        item["prompt"] = str(row["question_id"])
        item["overview_spec"] = json.dumps(row["overview_spec"])
        for k in ("bbox", "gt_box_full", "gt_box_view"):
            item[k] = [float(v) for v in (row.get(k) or [])]
        item["overview_seen"] = [int(v) for v in row["overview_seen"]]
        out.append(item)
    return out


def _zoom_trainer_class() -> type:
    from trl import GRPOTrainer

    class ZoomGRPOTrainer(GRPOTrainer):  # type: ignore[misc]
        """``GRPOTrainer`` whose completions carry the rollout's crop images (see module doc)."""

        def __init__(self, *args: Any, rollout: TwoStageRollout, **kwargs: Any) -> None:
            super().__init__(*args, rollout_func=rollout, **kwargs)  # type: ignore[misc]
            self.zoom_rollout = rollout
            self.tools = [completion_images]

        def _generate(self, prompts: list[Any]) -> tuple[Any, ...]:
            tools, self.tools = self.tools, []
            try:
                result = super()._generate(prompts)
            finally:
                self.tools = tools
            prompt_ids, completion_ids, mask, completions, logprobs, extra, _i, _t = result
            images = [list(imgs) for imgs in self.zoom_rollout.last_images]
            # Every image (overview included) goes through the completion-images path, so one
            # image processor call covers the batch whether or not any completion zoomed.
            return (prompt_ids, completion_ids, mask, completions, logprobs, extra, images, images)

    return ZoomGRPOTrainer


def make_grpo_trainer(
    config: TrainConfig,
    *,
    settings: Settings | None = None,
    sample: SampleFn | None = None,
    similarity: Any = "default",
) -> tuple[Any, Any, TwoStageRollout]:
    """Build the configured ``ZoomGRPOTrainer`` (not yet trained).

    Args:
        config: The training config (``data.path`` is a ``grpo.jsonl``).
        settings: Settings for opening scenes.
        sample: Replaces the rollout's sampling (tests).
        similarity: Answer similarity (``"default"``: the project's WordNet scorer).

    Returns:
        ``(trainer, processor, rollout)``.

    Raises:
        TrainError: Missing extra, unloadable model or empty data.
    """
    require_rl()
    from datasets import Dataset
    from trl import GRPOConfig

    from zoomearth.train.data import load_jsonl
    from zoomearth.train.rewards import make_reward_funcs

    config.check_grpo()
    rows = load_jsonl(config.data.path)
    if config.data.limit is not None:
        rows = rows[: config.data.limit]
    if not rows:
        raise TrainError(EMPTY_GRPO_TEMPLATE.format(path=config.data.path))
    model, processor, device, precision = load_model_and_processor(config)
    g, r = config.grpo, config.rewards
    args = GRPOConfig(
        **build_args_common(config, device, precision),
        num_generations=g.num_generations,
        max_completion_length=2 * g.max_stage_tokens,
        temperature=g.temperature,
        top_p=g.top_p,
        beta=g.beta,
        epsilon=g.epsilon,
        reward_weights=r.weight_list(),
        log_completions=False,
    )
    rollout = TwoStageRollout(
        {str(row["question_id"]): row for row in rows},
        Path(config.data.path).parent,
        max_stage_tokens=g.max_stage_tokens,
        view_side=config.view_side,
        min_crop=config.min_crop,
        settings=settings,
        sample=sample,
    )
    rewards = make_reward_funcs(
        region_scale=r.region_guided_scale,
        min_crop=r.min_crop,
        answer_threshold=r.answer_threshold,
        exact_match_frame=r.exact_match_frame,
        similarity=similarity,
    )
    trainer = _zoom_trainer_class()(
        model=model,
        reward_funcs=rewards,
        args=args,
        train_dataset=Dataset.from_list(grpo_dataset_rows(rows)),
        processing_class=processor,
        peft_config=lora_config(config),
        callbacks=[metrics_callback(Path(config.output_dir) / METRICS_FILE)],
        rollout=rollout,
    )
    return trainer, processor, rollout


def train_grpo(
    config: TrainConfig,
    *,
    settings: Settings | None = None,
    sample: SampleFn | None = None,
    similarity: Any = "default",
) -> TrainResult:
    """Run GRPO as configured and save the checkpoint to ``config.output_dir``.

    Args:
        config: The training config.
        settings: Settings for opening scenes (defaults when None).
        sample: Replaces the rollout's sampling (tests, custom decoding).
        similarity: Answer similarity (``"default"``: the project's WordNet scorer; None: exact
            matches only).

    Returns:
        The run's result.
    """
    trainer, processor, _rollout = make_grpo_trainer(
        config, settings=settings, sample=sample, similarity=similarity
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return finish(trainer, processor, config, seconds, title="GRPO")
