"""Tiny random models built offline, saved like real checkpoints (for tests and demos).

:func:`build_tiny_qwen25vl` writes a directory that ``AutoProcessor.from_pretrained`` and
``AutoModelForImageTextToText.from_pretrained`` load exactly as they load ZoomEarth-3B: a random
``Qwen2_5_VLForConditionalGeneration`` (2 text layers, hidden size 64; vision depth 2, hidden size
32), a real ``Qwen2Tokenizer`` built from an in-memory byte-level vocabulary (the 256 byte symbols,
no merges) plus the Qwen special tokens, registered as *special* tokens (otherwise
``<|image_pad|>`` would be split into bytes), and a ``Qwen2_5_VLProcessor`` (image processor with
the checkpoint's pixel limits, tokenizer, video processor, the Qwen2-VL chat template).

The model emits garbage, quickly: a planner built on it must still return a reply. Building takes
well under a second after the imports; nothing touches the network.

Importing this module imports neither torch nor transformers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from zoomearth.agent.prompting import qwen2_vl_chat_template

__all__ = ["QWEN_SPECIAL_TOKENS", "build_tiny_qwen25vl"]

#: Special tokens of the Qwen2-VL family that the tiny tokenizer registers (ids follow the 256
#: byte symbols, in this order).
QWEN_SPECIAL_TOKENS: Final = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def build_tiny_qwen25vl(path: str | Path, seed: int = 0) -> Path:
    """Build and save a tiny random Qwen2.5-VL checkpoint with its processor.

    Args:
        path: Directory to write (created if needed; existing files are overwritten).
        seed: Seed of the random weights (same seed, same weights, same greedy output).

    Returns:
        The directory, ready for ``from_pretrained`` (``config.json``, ``model.safetensors``,
        ``generation_config.json``, tokenizer, processor and chat-template files).
    """
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2Tokenizer,
        Qwen2VLImageProcessor,
    )
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    from zoomearth.agent.frames import QWEN_DEFAULT_MAX_PIXELS, QWEN_MIN_PIXELS

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)

    byte_symbols = bytes_to_unicode()
    vocab = {byte_symbols[b]: b for b in range(256)}
    for token in QWEN_SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        unk_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
    )
    ids: dict[str, int] = {}
    for token in QWEN_SPECIAL_TOKENS:
        token_id = tokenizer.convert_tokens_to_ids(token)
        assert isinstance(token_id, int), token  # one token in, one id out
        ids[token] = token_id

    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 8192,
            # head_dim = 64 / 4 = 16; the three mrope sections must sum to head_dim / 2.
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1_000_000.0,
                "mrope_section": [2, 3, 3],
            },
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "fullatt_block_indexes": [1],
            "window_size": 112,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.do_sample = False

    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(
            min_pixels=QWEN_MIN_PIXELS, max_pixels=QWEN_DEFAULT_MAX_PIXELS
        ),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=qwen2_vl_chat_template(),
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
