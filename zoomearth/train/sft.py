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

``agent`` -- the chat template's rendering of the user message (overview + the agent template's
text) by :func:`zoomearth.agent.backends.hf.build_prompt_text`, then the same continuation (stage-1
text cut, crop, stage-2 text, end-of-turn).

The loss covers the model's text only: the prompt tokens and the crop's vision tokens
(``<|vision_start|>``, image pads, ``<|vision_end|>``) are masked (-100).

:class:`ZoomSFTCollator` builds those batches; ``SFTTrainer`` runs with
``dataset_kwargs={"skip_prepare_dataset": True}`` so it uses them as given.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from zoomearth.train.common import (
    METRICS_FILE,
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

__all__ = ["ZoomSFTCollator", "sft_texts", "train_sft"]

log = logging.getLogger(__name__)

IGNORE_INDEX: Final = -100
PROMPT_PREFIX_TEMPLATE: Final = (
    "The tokens of SFT example {qid} do not start with its prompt's tokens: the prompt's last "
    "token merged with the target's first. End the prompt text (planner_prompt) on a token "
    "boundary such as a newline or a special token, then run `zoomearth train prepare` again."
)
EMPTY_DATA_TEMPLATE: Final = "No SFT examples in {path}; run `zoomearth train prepare` first."


def sft_texts(processor: Any, row: dict[str, Any]) -> tuple[str, str, list[str]]:
    r"""The prompt text, the target text and the image paths of one ``sft.jsonl`` row.

    Args:
        processor: A Qwen2-VL-family processor (chat template, image token).
        row: The row: ``zoomearth`` rows carry ``prompt_text``, ``target_text`` and ``images``;
            ``agent`` rows (and rows without ``profile``) ``messages`` -- a user message with the
            overview and the text, an assistant message with text and at most one crop image.

    Returns:
        ``(prompt, target, images)``: ``prompt`` is the model's input before it writes
        (``zoomearth``: the raw stage-1 text; ``agent``: ending with the generation prompt
        ``<|im_start|>assistant\n``); ``target`` is what it writes, with the crop's vision
        placeholder and the end-of-sequence token; ``images`` are the overview then the crop
        (paths relative to the data folder).
    """
    tokenizer = getattr(processor, "tokenizer", processor)
    eos = str(getattr(tokenizer, "eos_token", None) or "<|im_end|>")
    if row.get("profile") == "zoomearth":
        return str(row["prompt_text"]), str(row["target_text"]) + eos, list(row["images"])

    from zoomearth.agent.backends.hf import build_prompt_text
    from zoomearth.agent.conversation import ChatMessage, Conversation, ImagePart, TextPart

    user, assistant = row["messages"][0], row["messages"][1]
    images: list[str] = []
    parts: list[Any] = []
    for part in user["content"]:
        if part["type"] == "image":
            images.append(part["image"])
            parts.append(ImagePart(len(images) - 1))
        else:
            parts.append(TextPart(part["text"]))
    conversation = Conversation((ChatMessage("user", tuple(parts)),), "chat")
    prompt = build_prompt_text(processor, conversation)

    placeholder = _placeholder(processor)
    target = ""
    for part in assistant["content"]:
        if part["type"] == "image":
            images.append(part["image"])
            target += placeholder
        else:
            target += part["text"]
    return prompt, target + eos, images


def _placeholder(processor: Any) -> str:
    """One image in the processor's text: ``<|vision_start|><image token><|vision_end|>``."""
    image_token = str(getattr(processor, "image_token", "<|image_pad|>"))
    return f"<|vision_start|>{image_token}<|vision_end|>"


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
            prompt, target, paths = sft_texts(self.processor, row)
            images = [load_image(self.root, p) for p in paths]
            full = self.processor(text=[prompt + target], images=images, return_tensors="pt")
            ids = full["input_ids"][0]
            n_prompt = self._prompt_length(prompt, ids, full["image_grid_thw"], row)
            if self.max_length is not None and ids.shape[0] > self.max_length:
                log.warning("dropping %s: %d tokens > max_length", row.get("question_id"), len(ids))
                continue
            labels = ids.clone()
            labels[:n_prompt] = IGNORE_INDEX
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


    def _prompt_length(self, prompt: str, ids: Any, grids: Any, row: dict[str, Any]) -> int:
        """Tokens of ``prompt`` at the start of ``ids`` (its image pads expanded).

        Raises:
            ValueError: ``ids`` does not start with the prompt's tokens (the target's first token
                merged with the prompt's last one; the prompt must end on a token boundary).
        """
        prompt_ids = [int(t) for t in self.tokenizer(prompt, add_special_tokens=False)["input_ids"]]
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
            raise ValueError(PROMPT_PREFIX_TEMPLATE.format(qid=row.get("question_id")))
        return len(expanded)


def _rows(config: TrainConfig) -> list[dict[str, Any]]:
    from zoomearth.train.data import load_jsonl

    rows = load_jsonl(config.data.path)
    if config.data.limit is not None:
        rows = rows[: config.data.limit]
    if not rows:
        from zoomearth.train.common import TrainError

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
