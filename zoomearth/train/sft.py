r"""Supervised fine-tuning on zoom trajectories through TRL's ``SFTTrainer`` (extra ``rl``).

Each example of ``sft.jsonl`` (``zoomearth train prepare``) becomes exactly the token sequence the
planner sees and writes at inference, in the protocol profile the data was prepared for (the row's
``profile``, :mod:`zoomearth.agent.profiles`):

``zoomearth`` -- the reference's raw input, no chat template::

    <prompt_text: the profile's stage-1 text, with the overview's image placeholder>
    stage-1 text cut before <answer> <|vision_start|><crop pads><|vision_end|> stage-2 text <eos>

  i.e. the stage-2 input of :meth:`~zoomearth.agent.profiles.ZoomEarthProfile.stage2_text`
  followed by the stage-2 output (without a box: the stage-1 text with its answer, then ``<eos>``).
  ``prompt_text`` and ``target_text`` are written by ``prepare`` from the profile and
  :func:`~zoomearth.agent.protocol.format_turn`.

``agent`` -- the planner's ``chat`` layout: the row's ``messages`` (the conversation the graph's
requests give, :mod:`zoomearth.train.chat`) rendered turn by turn with
:func:`zoomearth.agent.backends.hf.build_prompt_text`, the planner's own renderer::

    <|im_start|>user <overview> question, scene facts, tools <|im_end|> <|im_start|>assistant
    stage-1 text <|im_end|>
    <|im_start|>user View 1: <zoom caption> <crop> <|im_end|> <|im_start|>assistant
    stage-2 text <|im_end|>

  (:func:`~zoomearth.train.chat.assistant_segments`): the text before the first assistant turn is
  the planner's stage-1 input, the text before the second its stage-2 input.

The loss covers the model's turns only (its text and the end-of-turn token it stops at): the
prompts, the user turns between (caption, crop) and every vision token (``<|vision_start|>``,
image pads, ``<|vision_end|>``) are masked (-100).

:class:`ZoomSFTCollator` builds those batches; ``SFTTrainer`` runs with
``dataset_kwargs={"skip_prepare_dataset": True}`` so it uses them as given.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

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
    from zoomearth.train.config import TrainConfig

__all__ = ["SFTSequence", "ZoomSFTCollator", "sft_sequence", "train_sft"]

log = logging.getLogger(__name__)

IGNORE_INDEX: Final = -100
PREFIX_TEMPLATE: Final = (
    "The tokens of SFT example {qid} do not start with the tokens of its text up to character "
    "{chars}: a boundary between the prompt and the model's text merged into one token. End the "
    "prompt text (planner_prompt) on a token boundary such as a newline or a special token, then "
    "run `zoomearth train prepare` again."
)
EMPTY_DATA_TEMPLATE: Final = "No SFT examples in {path}; run `zoomearth train prepare` first."
OLD_LAYOUT_TEMPLATE: Final = (
    "SFT example {qid} was prepared by an earlier version (the crop continues the assistant "
    "turn), which the agent profile's chat layout never shows the planner; run `zoomearth train "
    "prepare ... --profile agent` again."
)
LAYOUT_TEMPLATE: Final = "SFT example {qid}: {error}"


@dataclass(frozen=True)
class SFTSequence:
    """One SFT example as text segments.

    Attributes:
        segments: ``(text, trained)`` in order; joined they are the whole sequence. Trained
            segments are the model's turns (their vision tokens are masked all the same).
        images: Image paths (relative to the data folder) in placeholder order.
    """

    segments: tuple[tuple[str, bool], ...]
    images: tuple[str, ...]

    @property
    def text(self) -> str:
        """The whole sequence."""
        return "".join(text for text, _ in self.segments)

    @property
    def prompt(self) -> str:
        """The text before the model's first turn: the planner's stage-1 input."""
        out = ""
        for text, trained in self.segments:
            if trained:
                break
            out += text
        return out

    def before(self, turn: int) -> str:
        """The text before the model's ``turn``-th turn (1-based): that turn's planner input."""
        out, seen = "", 0
        for text, trained in self.segments:
            if trained:
                seen += 1
                if seen == turn:
                    return out
            out += text
        raise IndexError(f"the sequence has {seen} model turns")

    @property
    def targets(self) -> list[str]:
        """The trained segments (the model's turns)."""
        return [text for text, trained in self.segments if trained]


def sft_sequence(processor: Any, row: dict[str, Any]) -> SFTSequence:
    """The text segments and image paths of one ``sft.jsonl`` row.

    Args:
        processor: A Qwen2-VL-family processor (chat template, tokenizer).
        row: ``zoomearth`` rows carry ``prompt_text``, ``target_text`` and ``images``; ``agent``
            rows (and rows without ``profile``) ``messages``, the trajectory's conversation.

    Returns:
        ``zoomearth``: the raw stage-1 text (untrained), then the target text with the crop's
        placeholder and the end-of-sequence token (trained). ``agent``: the segments of
        :func:`~zoomearth.train.chat.assistant_segments`.

    Raises:
        TrainError: An ``agent`` row of the old continuation layout, or a chat template that
            cannot render the conversation as one growing text.
    """
    if row.get("profile") == "zoomearth":
        tokenizer = getattr(processor, "tokenizer", processor)
        eos = str(getattr(tokenizer, "eos_token", None) or "<|im_end|>")
        return SFTSequence(
            ((str(row["prompt_text"]), False), (str(row["target_text"]) + eos, True)),
            tuple(row["images"]),
        )

    from zoomearth.train.chat import ChatLayoutError, assistant_segments, messages_from_dicts

    qid = row.get("question_id")
    messages, images = messages_from_dicts(row["messages"])
    if any(m.role == "assistant" and m.image_view_ids for m in messages):
        raise TrainError(OLD_LAYOUT_TEMPLATE.format(qid=qid))
    try:
        segments = assistant_segments(processor, messages)
    except ChatLayoutError as exc:
        raise TrainError(LAYOUT_TEMPLATE.format(qid=qid, error=exc)) from None
    return SFTSequence(segments, tuple(images))


class ZoomSFTCollator:
    """Turn ``sft.jsonl`` rows into padded model inputs with assistant-only labels.

    Args:
        processor: The checkpoint's processor.
        root: Folder of the JSONL file (image paths are relative to it).
        max_length: Drop (with a warning) examples longer than this many tokens; None keeps all.
    """

    def __init__(self, processor: Any, root: Path, max_length: int | None = None) -> None:
        self.processor = processor
        self.root = Path(root)
        self.max_length = max_length
        tokenizer = getattr(processor, "tokenizer", processor)
        self.tokenizer = tokenizer
        self.pad_id = int(tokenizer.pad_token_id)
        self.image_token = str(getattr(processor, "image_token", "<|image_pad|>"))
        self.image_id = int(tokenizer.convert_tokens_to_ids(self.image_token))
        self.merge = int(getattr(getattr(processor, "image_processor", None), "merge_size", 2))
        self.masked_ids = {
            int(tokenizer.convert_tokens_to_ids(t))
            for t in ("<|vision_start|>", "<|vision_end|>", getattr(processor, "image_token", None))
            if t
        }

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Collate rows (each with a ``row`` JSON string or the row's own keys)."""
        import torch

        ids_list, label_list, pixels, grids = [], [], [], []
        for feature in features:
            row = json.loads(feature["row"]) if "row" in feature else dict(feature)
            sequence = sft_sequence(self.processor, row)
            images = [load_image(self.root, p) for p in sequence.images]
            full = self.processor(text=[sequence.text], images=images, return_tensors="pt")
            ids = full["input_ids"][0]
            if self.max_length is not None and ids.shape[0] > self.max_length:
                log.warning("dropping %s: %d tokens > max_length", row.get("question_id"), len(ids))
                continue
            labels = torch.full_like(ids, IGNORE_INDEX)
            chars = 0
            for text, trained in sequence.segments:
                if trained:
                    start = self._prefix_length(sequence.text[:chars], ids, full, row)
                    end = self._prefix_length(sequence.text[: chars + len(text)], ids, full, row)
                    labels[start:end] = ids[start:end]
                chars += len(text)
            for token in self.masked_ids:
                labels[ids == token] = IGNORE_INDEX
            ids_list.append(ids)
            label_list.append(labels)
            pixels.append(full["pixel_values"])
            grids.append(full["image_grid_thw"])
        if not ids_list:
            raise ValueError("every example of the batch is longer than training.max_length")
        width = max(len(i) for i in ids_list)
        input_ids = torch.full((len(ids_list), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(ids_list), width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(ids_list), width), dtype=torch.long)
        for i, (ids, lab) in enumerate(zip(ids_list, label_list, strict=True)):
            input_ids[i, : len(ids)] = ids
            labels[i, : len(lab)] = lab
            attention[i, : len(ids)] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "labels": labels,
            "pixel_values": torch.cat(pixels),
            "image_grid_thw": torch.cat(grids),
        }

    def _prefix_length(self, prefix: str, ids: Any, full: Any, row: dict[str, Any]) -> int:
        """Tokens of ``prefix`` at the start of ``ids`` (its image pads expanded).

        Raises:
            ValueError: ``ids`` does not start with the prefix's tokens (a token across the
                boundary; the boundaries must be token boundaries).
        """
        if len(prefix) == 0:
            return 0
        grids = full["image_grid_thw"]
        prompt_ids = [int(t) for t in self.tokenizer(prefix, add_special_tokens=False)["input_ids"]]
        n_images = prompt_ids.count(self.image_id)
        pads = [int(g.prod()) // (self.merge * self.merge) for g in grids[:n_images]]
        expanded: list[int] = []
        k = 0
        for token in prompt_ids:
            if token == self.image_id and k < len(pads):
                expanded.extend([token] * pads[k])
                k += 1
            else:
                expanded.append(token)
        if [int(t) for t in ids[: len(expanded)]] != expanded:
            raise ValueError(PREFIX_TEMPLATE.format(qid=row.get("question_id"), chars=len(prefix)))
        return len(expanded)


def _rows(config: TrainConfig) -> list[dict[str, Any]]:
    from zoomearth.train.data import load_jsonl

    rows = load_jsonl(config.data.path)
    if config.data.limit is not None:
        rows = rows[: config.data.limit]
    if not rows:
        raise TrainError(EMPTY_DATA_TEMPLATE.format(path=config.data.path))
    return rows


def train_sft(config: TrainConfig) -> TrainResult:
    """Run SFT as configured and save the checkpoint to ``config.output_dir``.

    Args:
        config: The training config (``data.path`` is an ``sft.jsonl``).

    Returns:
        The run's result (checkpoint, history, metrics, plot).

    Raises:
        TrainError: Missing extra, unloadable model or empty data.
    """
    require_rl()
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    rows = _rows(config)
    model, processor, device, precision = load_model_and_processor(config)
    dataset = Dataset.from_list([{"row": json.dumps(r, ensure_ascii=False)} for r in rows])
    args = SFTConfig(
        **build_args_common(config, device, precision),
        dataset_kwargs={"skip_prepare_dataset": True},
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=ZoomSFTCollator(
            processor, Path(config.data.path).parent, config.training.max_length
        ),
        processing_class=processor,
        peft_config=lora_config(config),
        callbacks=[metrics_callback(Path(config.output_dir) / METRICS_FILE)],
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return finish(trainer, processor, config, seconds, title="SFT")
