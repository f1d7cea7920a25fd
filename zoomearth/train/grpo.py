"""GRPO with two-stage zoom rollouts and the Region-Guided reward, through TRL's ``GRPOTrainer``.

Rollout (:class:`TwoStageRollout`, passed as TRL's ``rollout_func`` hook) -- the reference GRPO's
(``VLMGRPOTrainer._generate_and_score_completions`` in
``src/train/RL/src/open-r1-multimodal/src/open_r1/trainer/grpo_trainer.py``). For every prompt (a
question id of ``grpo.jsonl``; TRL hands each prompt ``num_generations`` times):

1. stage 1: the stage-1 input of the data's protocol profile -- ``zoomearth``: the raw profile text
   (``prompt_text``, from the prompt file) with the reference's 512-long-side bicubic overview;
   ``agent``: the planner's chat prompt for the question (``build_conversation`` of the graph's
   stage-1 request rendered by ``build_prompt_text``, :mod:`zoomearth.train.chat`) -- sampled with
   ``stage1`` (temperature 1.0, up to 2048 new tokens), decoded with special tokens skipped;
2. when the **ground truth has a box** (LRS-GRO ``bbox`` not empty) there is always a stage 2, as
   in the reference: ``zoomearth``: the crop is the first ``"bbox_2d"`` of stage 1 mapped to full
   resolution through the box frame (:mod:`zoomearth.train.rewards`; ``reference``: ``box *
   max(max(W, H) / 512, 1)``) and cut by :func:`~zoomearth.agent.profiles.reference_crop_xyxy`,
   rendered exactly as the reference resizes it
   (:func:`zoomearth.scene.reference.render_reference_crop`); **without a box** the crop is the
   whole overview mapped back (the reference's ``[0, 0, overview width, overview height] *
   scale``), and with a first list that is not four numbers the whole image (the reference's
   ``cut_image`` returns the image as it is) -- see :func:`reference_rollout_window`. ``agent``:
   the first zoom the agent's parser reads, cut as the graph cuts it (:func:`agent_rollout_region`;
   no usable zoom: the whole image);
3. stage 2: ``zoomearth``: the stage-1 input + the stage-1 text cut before ``<answer>``
   (:func:`~zoomearth.agent.protocol.stage2_prefix`) + the crop's image placeholder -- exactly
   :meth:`~zoomearth.agent.profiles.ZoomEarthProfile.stage2_text`; ``agent``: the planner's chat
   prompt for the graph's stage-2 request -- the stage-1 text as an assistant turn, then a user
   message with the zoom caption the graph writes and the crop, then the generation prompt.
   Sampled with ``stage2`` (temperature 0.7, up to 800 new tokens) and decoded as the reference
   decodes it (special tokens kept, stripped);
4. the completion scored and trained on is everything after the stage-1 prompt: ``zoomearth``:
   ``stage-1 text (cut) + crop vision tokens + stage-2 tokens``; ``agent``: ``stage-1 text +
   end-of-turn + the user turn (caption, crop) and the generation prompt + stage-2 tokens``; the
   stage-1 tokens when there is no stage 2. What the model did not write -- the crop's vision
   tokens, and for ``agent`` the whole user turn between the two assistant turns -- is masked out
   of the loss with TRL's ``env_mask`` (the reference keeps the crop's tokens in its completion
   mask: their log-probabilities are of tokens the model never chose); the rewards read
   ``stage1`` (the whole stage-1 text) and ``stage2`` (``""`` without a stage 2).

Questions without a box are not cut: the stage-1 answer is scored. Advantages are the summed
reward minus its group mean, not divided by the group's standard deviation (TRL
``scale_rewards="none"``; the reference's ``advantages = rewards - mean_grouped_rewards``), and the
policy's log-probabilities are those of the untempered model (TRL ``temperature=1.0``; the
reference's ``_get_per_token_logps`` does not divide the logits), whatever each stage was sampled
at.

The stage-1 tokens in a cut completion are the cut text re-tokenised (the model's sampled token
split may differ from the canonical one for byte-level BPE; the reference does the same);
``logprobs`` are not returned, so TRL computes the old log-probabilities itself (no vLLM importance
sampling).

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

The rollout's rules that need no trainer -- the data's profile and box frame, the crop of a
stage-1 output, stage 2's inputs -- are in :mod:`zoomearth.train.rollout_rules` (re-exported here).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from zoomearth.errors import ZoomEarthError
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
from zoomearth.train.rollout_rules import (
    MIXED_PROFILES_TEMPLATE,  # noqa: F401 - re-exported (the old home)
    NO_PROMPT_TEXT_TEMPLATE,  # noqa: F401 - re-exported (the old home)
    agent_rollout_region,
    reference_rollout_window,
    resolve_box_frame,
    rows_profile,
    stage2_inputs,
)

if TYPE_CHECKING:
    from zoomearth.agent.conversation import Conversation
    from zoomearth.config import Settings
    from zoomearth.train.chat import AgentPrompt
    from zoomearth.train.config import StageSampling, TrainConfig
    from zoomearth.train.rewards import BoxFrame

__all__ = [
    "GRPO_COLUMNS",
    "RolloutError",
    "SampleFn",
    "TwoStageRollout",
    "agent_rollout_region",
    "completion_images",
    "grpo_dataset_rows",
    "make_grpo_trainer",
    "reference_rollout_window",
    "resolve_box_frame",
    "rows_profile",
    "stage2_inputs",
    "train_grpo",
]

#: Columns of ``grpo.jsonl`` given to the trainer (and so to the reward functions).
GRPO_COLUMNS: Final = (
    "prompt",
    "question_id",
    "ground_truth",
    "bbox",
    "gt_box_full",
    "gt_box_view",
    "scene_size",
    "overview_spec",
    "overview_seen",
    "profile",
)

PREFIX_MISMATCH_TEMPLATE: Final = (
    "The stage-2 input of {qid} does not start with the stage-1 prompt tokens; the tokenizer "
    "splits the prompt/answer boundary differently. This is a bug in zoomearth.train.grpo."
)
NO_TURN_END_TEMPLATE: Final = (
    "The stage-2 tokens of {qid} do not hold the stage-1 turn's end {end!r}; this is a bug in "
    "zoomearth.train.grpo."
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


class TwoStageRollout:
    """TRL ``rollout_func``: stage 1, the crop from the full-resolution scene, stage 2.

    Args:
        rows: ``grpo.jsonl`` rows by question id.
        root: Folder of ``grpo.jsonl`` (image paths are relative to it).
        stage1: Sampling of stage 1 (default: the reference's, temperature 1.0, 2048 tokens).
        stage2: Sampling of stage 2 (default: the reference's, temperature 0.7, 800 tokens).
        box_frame: ``reference`` or ``processor`` (see :mod:`zoomearth.train.rewards`).
        view_side: Long side of rendered crops (``agent`` data).
        min_crop: Minimum crop side in full-resolution pixels (``agent`` data; the ``zoomearth``
            rule uses 512).
        settings: Settings for opening scenes (defaults when None).
        sample: Replaces sampling (tests, custom decoding); default: ``model.generate`` with the
            stage's sampling settings.
        agent_prompt: ``agent`` data: the prompt sections and tools its conversations are built
            from (default: ``root/agent_prompt.json``, written by ``prepare``).

    Attributes:
        last_images: Per completion of the latest call: ``[overview]`` or ``[overview, crop]``.
        last_regions: Per completion: the full-resolution crop window, or None.
        last_notes: Per completion: what decided the crop (None without a stage 2).
    """

    def __init__(
        self,
        rows: Mapping[str, Mapping[str, Any]],
        root: Path,
        *,
        stage1: StageSampling | None = None,
        stage2: StageSampling | None = None,
        box_frame: str = "reference",
        view_side: int = 512,
        min_crop: int = 512,
        settings: Settings | None = None,
        sample: SampleFn | None = None,
        agent_prompt: AgentPrompt | None = None,
    ) -> None:
        from zoomearth.train.config import GRPOSection

        defaults = GRPOSection.model_validate({})
        self.rows = dict(rows)
        self.root = Path(root)
        self.stage1 = stage1 if stage1 is not None else defaults.stage1
        self.stage2 = stage2 if stage2 is not None else defaults.stage2
        self.box_frame = box_frame
        self.view_side = view_side
        self.min_crop = min_crop
        self.settings = settings
        self.sample = sample
        self.agent_prompt = agent_prompt
        self.last_images: list[list[Any]] = []
        self.last_regions: list[PixelBox | None] = []
        self.last_notes: list[str | None] = []
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

    def _default_sample(self, trainer: Any, banned: set[int], pad_id: int | None) -> SampleFn:
        import torch

        def sample(
            model: Any, inputs: Any, n: int, max_new: int, stage: int, row: Mapping[str, Any]
        ) -> Any:
            spec = self.stage1 if stage == 1 else self.stage2
            kwargs: dict[str, Any] = {
                "do_sample": True,
                "temperature": float(spec.temperature),
                "max_new_tokens": max_new,
                "num_return_sequences": n,
                "pad_token_id": pad_id,
            }
            if spec.top_p is not None:
                kwargs["top_p"] = float(spec.top_p)
            if spec.top_k is not None:
                kwargs["top_k"] = int(spec.top_k)
            if banned:
                # A sampled vision token would claim image features that do not exist.
                kwargs["suppress_tokens"] = sorted(banned)
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

    def _agent(self) -> AgentPrompt:
        if self.agent_prompt is None:
            from zoomearth.train.chat import AgentPrompt

            self.agent_prompt = AgentPrompt.read(self.root)
        return self.agent_prompt

    def _conversation(
        self,
        row: Mapping[str, Any],
        *,
        stage1: str | None = None,
        crop: ViewSpec | None = None,
        label: str | None = None,
    ) -> Conversation:
        """An agent row's conversation: stage 1's, or stage 2's after ``stage1`` and ``crop``."""
        from zoomearth.train.chat import agent_conversation, overview_from_row

        return agent_conversation(
            str(row["question"]),
            row.get("scene_info") or {},
            overview_from_row(row),
            self._agent(),
            stage1=stage1,
            crop=crop,
            label=label,
        )

    def _stage1_prompt(self, processor: Any, row: Mapping[str, Any]) -> str:
        """The stage-1 input text of a row (raw profile text, or the planner's chat prompt)."""
        if str(row.get("profile") or "agent") == "zoomearth":
            return str(row["prompt_text"])
        from zoomearth.agent.backends.hf import build_prompt_text

        return str(build_prompt_text(processor, self._conversation(row)))

    def _crop(
        self, row: Mapping[str, Any], text1: str, frame: BoxFrame
    ) -> tuple[Any, ViewSpec, str, str | None]:
        """The stage-2 image of a completion: ``(PIL image, its view, note, zoom label)``."""
        from PIL import Image

        width, height = (int(v) for v in row["scene_size"])
        scene = self._scene_for(str(row["image_path"]))
        if str(row.get("profile") or "agent") == "zoomearth":
            from zoomearth.scene.reference import render_reference_crop

            window, note = reference_rollout_window(text1, frame, width, height)
            rgb = render_reference_crop(scene, window)
            spec = ViewSpec(1, PixelBox(*window), rgb.shape[1], rgb.shape[0])
            return Image.fromarray(rgb, "RGB"), spec, note, None
        region, note, label = agent_rollout_region(text1, frame, width, height, self.min_crop)
        view = scene.render(region, self.view_side, view_id=1)
        return view.to_pil(), view.spec, note, label

    def _agent_stage2(
        self,
        processor: Any,
        row: Mapping[str, Any],
        prompt1: str,
        text1: str,
        crop: ViewSpec,
        label: str | None,
    ) -> tuple[str, str]:
        """Stage 2's continuation of stage 1's prompt in the chat layout, and its turn end.

        Returns:
            ``(continuation, end)``: stage 2's planner input minus ``prompt1`` (the stage-1 turn
            as history, the user message with the zoom caption and the crop, the generation
            prompt), and the special token that closes the stage-1 turn.
        """
        from zoomearth.agent.backends.hf import build_prompt_text
        from zoomearth.train.chat import (
            ChatLayoutError,
            shown_text,
            special_strings,
            split_assistant_turn,
        )

        conversation = self._conversation(row, stage1=text1, crop=crop, label=label)
        prompt2 = str(build_prompt_text(processor, conversation))
        shown = shown_text(processor, text1)  # the stage-1 turn as the chat template gets it
        try:
            turn, _rest = split_assistant_turn(prompt1, prompt2, shown, special_strings(processor))
        except ChatLayoutError as exc:
            raise RolloutError(str(exc)) from None
        return prompt2[len(prompt1) :], turn[len(shown) :]

    @staticmethod
    def _turn_mask(
        middle: Sequence[int],
        tokenizer: Any,
        end: str,
        toks1: Sequence[int],
        eos: set[int],
        key: str,
    ) -> list[int]:
        """``env_mask`` of the tokens between the prompt and stage 2's output (chat layout).

        The model's stage-1 turn (its text re-tokenised, and the end-of-turn token when the model
        stopped there itself) is trained; the rest -- the template's text after the turn, the user
        message with the caption and the crop, the next generation prompt -- is not.
        """
        end_id = int(tokenizer.convert_tokens_to_ids(end))
        if end_id not in middle:
            raise RolloutError(NO_TURN_END_TEMPLATE.format(qid=key, end=end))
        j = list(middle).index(end_id)
        stopped = bool(toks1) and int(toks1[-1]) in eos
        return [1] * j + [1 if stopped else 0] + [0] * (len(middle) - j - 1)

    # ---- the hook --------------------------------------------------------------------------------

    def __call__(self, prompts: Sequence[Any], trainer: Any) -> dict[str, Any]:
        """Generate one two-stage completion per prompt entry (TRL's ``rollout_func``)."""
        from zoomearth.agent.protocol import stage2_prefix
        from zoomearth.train.rewards import frame_from_row

        if self.settings is None:
            from zoomearth.config import load_settings

            self.settings = load_settings()
        processor = trainer.processing_class
        tokenizer = getattr(processor, "tokenizer", processor)
        model = trainer.accelerator.unwrap_model(trainer.model)
        device = trainer.accelerator.device
        eos = {int(t) for t in trainer.eos_token_ids}
        pad = tokenizer.pad_token_id
        image_token = getattr(processor, "image_token", None) or "<|image_pad|>"
        placeholder = f"<|vision_start|>{image_token}<|vision_end|>"
        vision_ids = {
            int(tokenizer.convert_tokens_to_ids(t))
            for t in ("<|vision_start|>", "<|vision_end|>", image_token)
        }
        # Tokens the model must not write itself: vision markers and image/video pads.
        banned = set(vision_ids)
        for name in ("<|video_pad|>", "<|vision_pad|>", getattr(processor, "video_token", None)):
            if name:
                token_id = tokenizer.convert_tokens_to_ids(name)
                if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
                    banned.add(token_id)
        pad_id = getattr(trainer, "pad_token_id", None)
        sample = self.sample or self._default_sample(
            trainer, banned, pad_id if pad_id is not None else pad
        )

        out_prompt, out_completion, out_mask = [], [], []
        stage1_texts, stage2_texts = [], []
        self.last_images, self.last_regions, self.last_notes = [], [], []
        was_training = model.training
        model.eval()
        try:
            for key, group in itertools.groupby(prompts, key=str):
                n = len(list(group))
                if key not in self.rows:
                    raise RolloutError(UNKNOWN_PROMPT_TEMPLATE.format(prompt=key))
                row = self.rows[key]
                overview = self._overview(str(row["overview"]))
                frame = frame_from_row(row, self.box_frame)
                agent = str(row.get("profile") or "agent") != "zoomearth"
                prompt1 = self._stage1_prompt(processor, row)
                in1 = processor(text=[prompt1], images=[overview], return_tensors="pt").to(device)
                prompt_ids = [int(t) for t in in1["input_ids"][0]]
                gen1 = sample(model, in1, n, self.stage1.max_new_tokens, 1, row)
                for k in range(n):
                    toks1 = self._trim(gen1[k].tolist(), eos, pad, banned)
                    text1 = tokenizer.decode(toks1, skip_special_tokens=True)
                    stage1_texts.append(text1)
                    if not row.get("bbox"):
                        # No box in the ground truth: no stage 2, the stage-1 answer is scored.
                        out_prompt.append(prompt_ids)
                        out_completion.append(toks1)
                        out_mask.append([1] * len(toks1))
                        stage2_texts.append("")
                        self.last_images.append([overview])
                        self.last_regions.append(None)
                        self.last_notes.append(None)
                        continue
                    crop_img, view, note, label = self._crop(row, text1, frame)
                    if agent:
                        continuation, end = self._agent_stage2(
                            processor, row, prompt1, text1, view, label
                        )
                    else:
                        continuation, end = stage2_prefix(text1) + placeholder, None
                    in2 = stage2_inputs(
                        processor, in1, prompt1, continuation, [overview, crop_img]
                    ).to(device)
                    ids2 = [int(t) for t in in2["input_ids"][0]]
                    if ids2[: len(prompt_ids)] != prompt_ids:
                        raise RolloutError(PREFIX_MISMATCH_TEMPLATE.format(qid=key))
                    middle = ids2[len(prompt_ids) :]
                    if end is None:
                        # zoomearth: the crop continues the turn; only its vision tokens are
                        # not the model's.
                        mask = [0 if t in vision_ids else 1 for t in middle]
                    else:
                        mask = self._turn_mask(middle, tokenizer, end, toks1, eos, key)
                    toks2 = self._trim(
                        sample(model, in2, 1, self.stage2.max_new_tokens, 2, row)[0].tolist(),
                        eos,
                        pad,
                        banned,
                    )
                    # As the reference: decode(..., skip_special_tokens=False).strip()
                    stage2_texts.append(tokenizer.decode(toks2, skip_special_tokens=False).strip())
                    out_prompt.append(prompt_ids)
                    out_completion.append(middle + toks2)
                    out_mask.append(mask + [1] * len(toks2))
                    self.last_images.append([overview, crop_img])
                    self.last_regions.append(view.region)
                    self.last_notes.append(note)
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
        item["scene_size"] = [int(v) for v in row["scene_size"]]
        item["profile"] = str(row.get("profile") or "agent")
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
        TrainError: Missing extra, unloadable model, empty data, data mixing profiles, or
            ``agent`` data without its ``agent_prompt.json`` (prepared by an earlier version).
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
    g, r = config.grpo, config.rewards
    profile = rows_profile(rows)
    box_frame = resolve_box_frame(r.box_frame, profile)
    agent_prompt = None
    if profile == "agent":
        from zoomearth.train.chat import AgentPrompt, ChatLayoutError

        try:
            agent_prompt = AgentPrompt.read(Path(config.data.path).parent)
        except ChatLayoutError as exc:
            raise TrainError(str(exc)) from None
    stage1, stage2 = g.stages()
    model, processor, device, precision = load_model_and_processor(config)
    args = GRPOConfig(
        **build_args_common(config, device, precision),
        num_generations=g.num_generations,
        # Informational for TRL here (the rollout generates): both stages' budgets.
        max_completion_length=stage1.max_new_tokens + stage2.max_new_tokens,
        # Log-probabilities of the untempered policy, as the reference computes them; each
        # stage is sampled at its own temperature by the rollout.
        temperature=1.0,
        beta=g.beta,
        epsilon=g.epsilon,
        scale_rewards=g.scale_rewards,
        loss_type=g.loss_type,
        reward_weights=r.weight_list(),
        log_completions=False,
    )
    rollout = TwoStageRollout(
        {str(row["question_id"]): row for row in rows},
        Path(config.data.path).parent,
        stage1=stage1,
        stage2=stage2,
        box_frame=box_frame,
        view_side=config.view_side,
        min_crop=config.min_crop,
        settings=settings,
        sample=sample,
        agent_prompt=agent_prompt,
    )
    rewards = make_reward_funcs(
        box_frame=box_frame,  # type: ignore[arg-type]
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
