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
from typing import Any, Final

from zoomearth.agent.prompting import qwen2_vl_chat_template

__all__ = [
    "QWEN_SPECIAL_TOKENS",
    "build_tiny_instruct_pix2pix",
    "build_tiny_qwen25vl",
    "build_tiny_sam",
    "build_tiny_sd_inpaint",
]

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


#: Text and vision dimensions of Qwen2.5-VL-3B-Instruct's ``config.json`` (and ZoomEarth-3B's).
QWEN25_VL_3B_TEXT: Final = {
    "vocab_size": 151936,
    "hidden_size": 2048,
    "intermediate_size": 11008,
    "num_hidden_layers": 36,
    "num_attention_heads": 16,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128000,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0,
                        "mrope_section": [16, 24, 24]},
}
QWEN25_VL_3B_VISION: Final = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "out_hidden_size": 2048,
    "fullatt_block_indexes": [7, 15, 23, 31],
}


def build_tiny_qwen25vl(path: str | Path, seed: int = 0, *, size: str = "tiny") -> Path:
    """Build and save a random Qwen2.5-VL checkpoint with its processor (offline).

    Args:
        path: Directory to write (created if needed; existing files are overwritten).
        seed: Seed of the random weights (same seed, same weights, same greedy output).
        size: ``tiny`` (2 text layers, hidden 64: milliseconds on a CPU) or ``3b`` (the real
            Qwen2.5-VL-3B architecture and vocabulary size, random weights saved in float16,
            about 7.5 GB: for timing the real-size path on a GPU). The tokenizer is the same
            byte-level one in both (no merges), so prompts cost more tokens than with Qwen's.

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

    if size not in ("tiny", "3b"):
        raise ValueError(f"size must be 'tiny' or '3b'; got {size!r}")
    text: dict[str, Any] = {
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
    }
    vision: dict[str, Any] = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": 64,
        "fullatt_block_indexes": [1],
    }
    dtype = torch.float32
    if size == "3b":
        text.update(QWEN25_VL_3B_TEXT)
        vision.update(QWEN25_VL_3B_VISION)
        dtype = torch.float16
    config = Qwen2_5_VLConfig(
        text_config={
            **text,
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            **vision,
            "window_size": 112,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=size == "3b",
    )
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # a 3B model built in float32 would need twice the memory
    try:
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(previous)
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


#: Special tokens of the tiny CLIP tokenizer (ids follow the 512 byte-level symbols).
CLIP_BOS_TOKEN: Final = "<|startoftext|>"
CLIP_EOS_TOKEN: Final = "<|endoftext|>"


#: UNet, VAE and CLIP text-encoder dimensions of Stable Diffusion 1.5 (``size="sd15"``).
SD15_UNET: Final[dict[str, Any]] = {
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "sample_size": 64,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
SD15_VAE: Final[dict[str, Any]] = {
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 512,
}
SD15_TEXT: Final[dict[str, Any]] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "vocab_size": 49408,
    "projection_dim": 768,
}


def _tiny_sd_components(
    unet_in_channels: int, seed: int, size: str = "tiny"
) -> dict[str, object]:
    """Build the random parts of a tiny Stable Diffusion pipeline (no network).

    Args:
        unet_in_channels: UNet input channels: 9 for inpainting (latent 4 + mask 1 + masked
            image latent 4), 8 for InstructPix2Pix (latent 4 + image latent 4).
        seed: Seed of the random weights.
        size: ``tiny`` (the dimensions below: milliseconds on a CPU) or ``sd15`` (Stable
            Diffusion 1.5's UNet, VAE and text-encoder dimensions, :data:`SD15_UNET` ...; the
            byte-level tokenizer stays, its ids fit the larger vocabulary): for timing the
            real-size path on a GPU.

    Returns:
        Keyword arguments for a diffusers Stable Diffusion pipeline constructor: ``vae``,
        ``text_encoder``, ``tokenizer``, ``unet``, ``scheduler``, ``safety_checker`` (None),
        ``feature_extractor`` (None), ``requires_safety_checker`` (False).
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    # A byte-level CLIP vocabulary: each byte as a word-inner and a word-final ("</w>") symbol,
    # no merges; every text tokenises (into bytes) and round-trips.
    byte_symbols = bytes_to_unicode()
    vocab: dict[str, int] = {}
    for b in range(256):
        vocab[byte_symbols[b]] = len(vocab)
    for b in range(256):
        vocab[byte_symbols[b] + "</w>"] = len(vocab)
    vocab[CLIP_BOS_TOKEN] = len(vocab)
    vocab[CLIP_EOS_TOKEN] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)

    torch.manual_seed(seed)
    if size == "sd15":
        return {
            "vae": AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, **SD15_VAE),
            "text_encoder": CLIPTextModel(
                CLIPTextConfig(
                    bos_token_id=vocab[CLIP_BOS_TOKEN],
                    eos_token_id=vocab[CLIP_EOS_TOKEN],
                    pad_token_id=vocab[CLIP_EOS_TOKEN],
                    max_position_embeddings=77,
                    hidden_act="quick_gelu",
                    **SD15_TEXT,
                )
            ).eval(),
            "tokenizer": tokenizer,
            "unet": _eval(
                UNet2DConditionModel(in_channels=unet_in_channels, out_channels=4, **SD15_UNET)
            ),
            "scheduler": _ddim_scheduler(),
            "safety_checker": None,
            "feature_extractor": None,
            "requires_safety_checker": False,
        }
    if size != "tiny":
        raise ValueError(f"size must be 'tiny' or 'sd15'; got {size!r}")
    unet: Any = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,  # latent side; x 2 (VAE downsampling) = 64 px native resolution
        in_channels=unet_in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4),
        norm_num_groups=8,
    )
    vae: Any = AutoencoderKL(
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=vocab[CLIP_BOS_TOKEN],
            eos_token_id=vocab[CLIP_EOS_TOKEN],
            pad_token_id=vocab[CLIP_EOS_TOKEN],
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=len(vocab),
            projection_dim=32,
            max_position_embeddings=77,
        )
    )
    return {
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": tokenizer,
        "unet": unet.eval(),
        "scheduler": _ddim_scheduler(),
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }


def _eval(module: Any) -> Any:
    """``module.eval()`` (diffusers' model classes are untyped for mypy)."""
    return module.eval()


def _ddim_scheduler() -> Any:
    """Stable Diffusion 1.5's DDIM noise schedule."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,  # avoids diffusers' deprecation warning
    )


def build_tiny_sd_inpaint(path: str | Path, seed: int = 0, *, size: str = "tiny") -> Path:
    """Build and save a tiny random Stable Diffusion inpainting pipeline.

    The directory loads with ``StableDiffusionInpaintPipeline.from_pretrained(path)`` (or
    ``AutoPipelineForInpainting``) exactly like a real inpainting checkpoint: a random
    ``UNet2DConditionModel`` with 9 input channels (blocks 32/64, one layer each), a random
    ``AutoencoderKL`` (blocks 16/32, 4 latent channels, downsampling 2x; native resolution
    64 x 64 px), a random
    ``CLIPTextModel`` (2 layers, hidden size 32), a ``CLIPTokenizer`` built from a byte-level
    vocabulary (514 tokens, no merges), a ``DDIMScheduler`` and no safety checker. Two steps at
    64x64 run on a CPU in well under a second after the first call; the output is noise-like.

    Args:
        path: Directory to write (created if needed; existing files are overwritten).
        seed: Seed of the random weights (same seed, same weights).
        size: ``tiny`` or ``sd15`` (Stable Diffusion 1.5 inpainting's dimensions, random weights
            saved in float16, about 2 GB: for timing the real-size path on a GPU).

    Returns:
        The directory (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``,
        ``tokenizer/``, ``scheduler/``).
    """
    import torch
    from diffusers import StableDiffusionInpaintPipeline

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    pipe: Any = StableDiffusionInpaintPipeline(**_tiny_sd_components(9, seed, size))
    if size == "sd15":
        pipe = pipe.to(torch.float16)
    pipe.save_pretrained(out)
    return out


def build_tiny_sam(path: str | Path, seed: int = 0, *, size: str = "tiny") -> Path:
    """Build and save a random SAM checkpoint that ``sam_checkpoint`` loads like a real one.

    Args:
        path: The checkpoint file to write (``.pth``); for ``tiny`` its architecture file
            (same name, ``.json``, see :func:`zoomearth.tools._sam_backend.sam_config_path`) is
            written beside it.
        seed: Seed of the random weights.
        size: ``tiny`` (encoder width 64, depth 2, 256 px input: milliseconds on a CPU; use
            ``sam_model_type`` ``vit_b`` with it) or ``vit_h`` (SAM ViT-H's architecture, about
            2.5 GB in float32: set ``sam_model_type`` to ``vit_h``).

    Returns:
        The checkpoint path.
    """
    import json

    import torch

    from zoomearth.tools._sam_backend import SAM_PRESETS, SamArchitecture, build_sam

    fields: dict[str, Any]
    if size == "tiny":
        fields = dict(TINY_SAM)
    elif size == "vit_h":
        fields = dict(SAM_PRESETS["vit_h"])
    else:
        raise ValueError(f"size must be 'tiny' or 'vit_h'; got {size!r}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = build_sam(SamArchitecture(**fields))
    torch.save(model.state_dict(), out)
    if size == "tiny":
        out.with_suffix(".json").write_text(
            json.dumps({"model_type": "vit_b", **fields}), encoding="utf-8"
        )
    return out


#: A tiny SAM architecture (fields of :class:`~zoomearth.tools._sam_backend.SamArchitecture`).
TINY_SAM: Final = {
    "image_size": 256,
    "encoder_embed_dim": 64,
    "encoder_depth": 2,
    "encoder_num_heads": 2,
    "encoder_global_attn_indexes": [1],
    "window_size": 4,
    "prompt_embed_dim": 64,
    "decoder_mlp_dim": 64,
    "decoder_num_heads": 2,
    "iou_head_hidden_dim": 32,
}


def build_tiny_instruct_pix2pix(path: str | Path, seed: int = 0) -> Path:
    """Build and save a tiny random InstructPix2Pix pipeline.

    Same parts as :func:`build_tiny_sd_inpaint` except the UNet, which takes 8 input channels
    (noisy latent + image latent); loads with
    ``StableDiffusionInstructPix2PixPipeline.from_pretrained(path)``.

    Args:
        path: Directory to write (created if needed; existing files are overwritten).
        seed: Seed of the random weights (same seed, same weights).

    Returns:
        The directory (``model_index.json`` and the component folders).
    """
    from diffusers import StableDiffusionInstructPix2PixPipeline

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    pipe: Any = StableDiffusionInstructPix2PixPipeline(**_tiny_sd_components(8, seed))
    pipe.save_pretrained(out)
    return out
