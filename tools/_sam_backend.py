"""SAM for the built-in ``segmentation`` tool (:mod:`zoomearth.tools.segmentation`).

The architecture (:class:`SamArchitecture`, the official presets, an optional ``.json`` file
beside a checkpoint), building and loading a ``segment_anything`` SAM (the same code for real
and tiny checkpoints), its model-pool spec, and a ``SamPredictor`` that accepts a cached image
embedding. ``torch`` and ``segment_anything`` are imported only when used. The tool module
re-exports these names.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import numpy as np

    from zoomearth.models import ModelSpec

__all__ = [
    "SAM_PRESETS",
    "SamArchitecture",
    "SamConfigError",
    "build_sam",
    "load_sam",
    "sam_architecture",
    "sam_config_path",
    "sam_model_spec",
]

SAM_MISSING_TEMPLATE = "the SAM checkpoint {path} does not exist"
SAM_CONFIG_TEMPLATE = (
    "SAM architecture file {path} is invalid: {reason}. It must be a JSON object with an "
    "optional 'model_type' (vit_b, vit_l, vit_h) and fields of SamArchitecture ({fields})."
)
SAM_STATE_TEMPLATE = (
    "SAM checkpoint {path} does not match the architecture {arch}: set sam_model_type to the "
    "checkpoint's type, or describe its architecture in a {config} file beside it ({reason})"
)


class SamConfigError(ValueError):
    """A SAM architecture file or checkpoint does not describe a loadable model."""


# --------------------------------------------------------------------------------------------
# SAM architecture and loading (the same code for real and tiny checkpoints)
# --------------------------------------------------------------------------------------------
class SamArchitecture(BaseModel):
    """Hyper-parameters of a ``segment_anything`` SAM (defaults: ``vit_b``).

    The presets in :data:`SAM_PRESETS` reproduce ``segment_anything.sam_model_registry``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_size: int = Field(1024, ge=16, description="Encoder input side (px)")
    patch_size: int = Field(16, ge=1)
    encoder_embed_dim: int = Field(768, ge=1)
    encoder_depth: int = Field(12, ge=1)
    encoder_num_heads: int = Field(12, ge=1)
    encoder_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    encoder_mlp_ratio: float = Field(4.0, gt=0)
    window_size: int = Field(14, ge=0)
    prompt_embed_dim: int = Field(256, ge=8)
    mask_in_chans: int = Field(16, ge=1)
    decoder_depth: int = Field(2, ge=1)
    decoder_mlp_dim: int = Field(2048, ge=1)
    decoder_num_heads: int = Field(8, ge=1)
    iou_head_depth: int = Field(3, ge=1)
    iou_head_hidden_dim: int = Field(256, ge=1)
    num_multimask_outputs: int = Field(3, ge=1)
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)


#: The official architectures (``sam_model_registry``): encoder width, depth, heads, globals.
SAM_PRESETS: dict[str, dict[str, Any]] = {
    "vit_b": {
        "encoder_embed_dim": 768,
        "encoder_depth": 12,
        "encoder_num_heads": 12,
        "encoder_global_attn_indexes": (2, 5, 8, 11),
    },
    "vit_l": {
        "encoder_embed_dim": 1024,
        "encoder_depth": 24,
        "encoder_num_heads": 16,
        "encoder_global_attn_indexes": (5, 11, 17, 23),
    },
    "vit_h": {
        "encoder_embed_dim": 1280,
        "encoder_depth": 32,
        "encoder_num_heads": 16,
        "encoder_global_attn_indexes": (7, 15, 23, 31),
    },
}


def sam_config_path(checkpoint: str | Path) -> Path:
    """The architecture file that may accompany ``checkpoint`` (same name, suffix ``.json``)."""
    return Path(checkpoint).with_suffix(".json")


def sam_architecture(
    checkpoint: str | Path | None, model_type: str = "vit_b"
) -> tuple[str, SamArchitecture]:
    """The architecture of a checkpoint: its ``.json`` file if present, else the preset.

    Args:
        checkpoint: Checkpoint path (None: just the preset).
        model_type: Preset used when no architecture file exists (or it names none).

    Returns:
        ``(label, architecture)``: label is the preset name, or ``"<preset>+custom"`` when the
        file overrides fields.

    Raises:
        SamConfigError: Unknown preset, unreadable file, unknown or invalid fields.
    """
    from pydantic import ValidationError

    overrides: dict[str, Any] = {}
    path = sam_config_path(checkpoint) if checkpoint is not None else None
    if path is not None and path.is_file():
        fields = ", ".join(SamArchitecture.model_fields)
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SamConfigError(
                SAM_CONFIG_TEMPLATE.format(path=path, reason=exc, fields=fields)
            ) from None
        if not isinstance(loaded, dict):
            raise SamConfigError(
                SAM_CONFIG_TEMPLATE.format(path=path, reason="not a JSON object", fields=fields)
            )
        overrides = dict(loaded)
        model_type = str(overrides.pop("model_type", model_type))
    if model_type not in SAM_PRESETS:
        raise SamConfigError(
            f"Unknown SAM model type {model_type!r}; use one of {', '.join(SAM_PRESETS)}."
        )
    try:
        arch = SamArchitecture.model_validate({**SAM_PRESETS[model_type], **overrides})
    except ValidationError as exc:
        fields = ", ".join(SamArchitecture.model_fields)
        raise SamConfigError(
            SAM_CONFIG_TEMPLATE.format(
                path=path, reason=" ".join(str(exc).split())[:300], fields=fields
            )
        ) from None
    return (f"{model_type}+custom" if overrides else model_type), arch


def build_sam(arch: SamArchitecture) -> Any:
    """Assemble a randomly initialised ``segment_anything.modeling.Sam`` (eval mode, CPU).

    Args:
        arch: The architecture.

    Returns:
        The ``Sam`` module.
    """
    import torch
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    embed_side = arch.image_size // arch.patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=arch.encoder_depth,
            embed_dim=arch.encoder_embed_dim,
            img_size=arch.image_size,
            mlp_ratio=arch.encoder_mlp_ratio,
            norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=arch.encoder_num_heads,
            patch_size=arch.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=arch.encoder_global_attn_indexes,
            window_size=arch.window_size,
            out_chans=arch.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=arch.prompt_embed_dim,
            image_embedding_size=(embed_side, embed_side),
            input_image_size=(arch.image_size, arch.image_size),
            mask_in_chans=arch.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=arch.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=arch.decoder_depth,
                embedding_dim=arch.prompt_embed_dim,
                mlp_dim=arch.decoder_mlp_dim,
                num_heads=arch.decoder_num_heads,
            ),
            transformer_dim=arch.prompt_embed_dim,
            iou_head_depth=arch.iou_head_depth,
            iou_head_hidden_dim=arch.iou_head_hidden_dim,
        ),
        pixel_mean=list(arch.pixel_mean),
        pixel_std=list(arch.pixel_std),
    )
    return sam.eval()


def load_sam(checkpoint: str | Path, model_type: str = "vit_b", device: str = "cpu") -> Any:
    """Load a SAM checkpoint (official or tiny) onto ``device``.

    Args:
        checkpoint: ``torch.save`` d state dict of ``Sam`` (also accepted: a dict holding it under
            ``"model"`` or ``"state_dict"``). An architecture file may accompany it (see
            :func:`sam_config_path`).
        model_type: Preset used without an architecture file.
        device: Torch device string.

    Returns:
        The ``Sam`` module in eval mode on ``device``.

    Raises:
        FileNotFoundError: No such checkpoint.
        SamConfigError: Bad architecture file, or the weights do not fit the architecture.
    """
    import torch

    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(SAM_MISSING_TEMPLATE.format(path=path))
    label, arch = sam_architecture(path, model_type)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        state = state.get("model", state.get("state_dict", state))
    sam = build_sam(arch)
    try:
        sam.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError) as exc:
        raise SamConfigError(
            SAM_STATE_TEMPLATE.format(
                path=path,
                arch=label,
                reason=" ".join(str(exc).split())[:160],
                config=sam_config_path(path).name,
            )
        ) from None
    return sam.to(device).eval()


def sam_model_spec(checkpoint: str | Path, model_type: str = "vit_b") -> ModelSpec:
    """The model-pool spec of a SAM checkpoint (key: ``sam:<type>:<resolved path>``).

    Args:
        checkpoint: Checkpoint path.
        model_type: Preset used without an architecture file.

    Returns:
        A :class:`~zoomearth.models.ModelSpec` whose loader is :func:`load_sam`.
    """
    from zoomearth.models import ModelSpec

    path = Path(checkpoint).expanduser().resolve()
    label = f"{model_type}+custom" if sam_config_path(path).is_file() else model_type
    size = path.stat().st_size if path.is_file() else None
    return ModelSpec(
        key=f"sam:{label}:{path}",
        load=lambda device: load_sam(path, model_type, device),
        size_bytes=size,
        description=f"SAM {label} ({path.name})",
    )


@dataclass(frozen=True)
class _Embedding:
    """A computed image embedding (``features``: ``(1, C, h, w)`` float tensor on the CPU)."""

    features: Any
    original_size: tuple[int, int]
    input_size: tuple[int, int]


@functools.cache
def _predictor_class() -> type:
    """A ``SamPredictor`` that can be given a precomputed embedding (imported lazily)."""
    from segment_anything import SamPredictor

    class CachedPredictor(SamPredictor):  # type: ignore[misc]
        """``set_image`` installs ``preset`` when the image size matches; records new ones."""

        def __init__(self, model: Any, preset: _Embedding | None) -> None:
            super().__init__(model)
            self.preset = preset
            self.computed: _Embedding | None = None

        def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
            preset = self.preset
            if preset is not None and tuple(image.shape[:2]) == preset.original_size:
                self.reset_image()
                self.features = preset.features.to(self.device)
                self.original_size = preset.original_size
                self.input_size = preset.input_size
                self.is_image_set = True
                return
            super().set_image(image, image_format)
            self.computed = _Embedding(
                features=self.features.detach().to("cpu"),
                original_size=(int(self.original_size[0]), int(self.original_size[1])),
                input_size=(int(self.input_size[0]), int(self.input_size[1])),
            )
            self.preset = self.computed

    return CachedPredictor
