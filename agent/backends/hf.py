"""The ``transformers`` planner backend: a Qwen2.5-VL-family checkpoint run locally.

ZoomEarth-3B (hub id ``HappyBug/ZoomEarth-3B``) or any Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoint
(hub id or local directory) is loaded lazily *through the model pool* on the first
:meth:`TransformersPlanner.plan`, on ``planner_device`` (``auto``: CUDA when available, else the
CPU).

Two protocol profiles (:mod:`zoomearth.agent.profiles`, setting ``planner_profile``):

* ``zoomearth`` -- the reference evaluation's inputs, byte for byte: the raw stage text of
  :func:`~zoomearth.agent.profiles.stage_inputs` (no chat template, no cleaning, no tools section)
  with the overview (and, in stage 2, the crop) as PIL images in placeholder order; 1024 new
  tokens sampled at temperature 0.01 with top-p/top-k off; decoded with special tokens skipped,
  then stripped. ``planner_dtype=auto`` loads float16 weights and generates under bfloat16
  autocast on CUDA, as the reference (``from_pretrained(torch_dtype=float16)`` +
  ``Accelerator(mixed_precision="bf16")``); float32 on the CPU.
* ``agent`` -- the chat layout of :mod:`zoomearth.agent.conversation` rendered with the
  checkpoint's chat template; greedy (``planner_temperature`` 0), 512 new tokens by default,
  ``planner_dtype=auto``: bfloat16 on CUDA, float32 on the CPU.

The reply reports, for each image, the size at which the model saw it (from the processor's
``image_grid_thw``: height = grid_h x 14, width = grid_w x 14) and the visual tokens (sum of the
grid products / merge_size^2).

Importing this module imports neither torch nor transformers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final

from zoomearth.agent.base import Planner, PlannerError, PlanReply, PlanRequest
from zoomearth.agent.conversation import Conversation, build_conversation, to_chat_dicts
from zoomearth.agent.profiles import (
    StageInputs,
    ZoomEarthProfile,
    load_zoomearth_prompt,
    resolve_profile,
    stage_inputs,
)
from zoomearth.agent.prompting import PromptTemplate, load_template, qwen2_vl_chat_template

if TYPE_CHECKING:
    from zoomearth.config import Settings
    from zoomearth.models.pool import ModelPool, ModelSpec

__all__ = ["AGENT_MAX_NEW_TOKENS", "DEFAULT_MODEL", "TransformersPlanner", "resolve_dtype"]

#: The ZoomEarth-3B checkpoint on the Hugging Face hub.
DEFAULT_MODEL: Final = "HappyBug/ZoomEarth-3B"

#: Generation length of the agent profile when planner_max_new_tokens is not set.
AGENT_MAX_NEW_TOKENS: Final = 512

LOAD_FAILED_TEMPLATE: Final = (
    "Cannot load the planner model '{model}' ({error}). Set planner_model to a local checkpoint "
    "directory, or download it first (huggingface-cli download {model}); with HF_HUB_OFFLINE=1 the "
    "hub is never contacted."
)
BAD_DTYPE_TEMPLATE: Final = (
    "Unknown planner_dtype {dtype!r}; use auto, bfloat16, float16 or float32."
)
NO_IMAGE_GRID_TEMPLATE: Final = (
    "The processor of '{model}' returned no image_grid_thw for {count} image(s); planner_model "
    "must be a Qwen2-VL-family checkpoint (Qwen2-VL, Qwen2.5-VL, ZoomEarth-3B ...)."
)

_DTYPE_NAMES: Final = {
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
}
_DTYPE_BYTES: Final = {"bfloat16": 2, "float16": 2, "float32": 4}


def resolve_dtype(setting: str, device: str) -> str:
    """The weights dtype for a device: ``planner_dtype``, or the automatic choice.

    Args:
        setting: ``auto`` or a dtype name (``bfloat16``/``bf16``, ``float16``/``fp16``,
            ``float32``/``fp32``).
        device: A resolved device (``cpu``, ``cuda:0`` ...).

    Returns:
        ``bfloat16``, ``float16`` or ``float32``. ``auto`` is bfloat16 on CUDA devices that
        support it (float16 on older ones) and float32 elsewhere.

    Raises:
        PlannerError: Unknown dtype name.
    """
    name = setting.strip().lower()
    if name == "auto":
        if not device.startswith("cuda"):
            return "float32"
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if name not in _DTYPE_NAMES:
        raise PlannerError(BAD_DTYPE_TEMPLATE.format(dtype=setting))
    return _DTYPE_NAMES[name]


@dataclass
class _LoadedVLM:
    """What the pool holds for a planner checkpoint: the model and its processor.

    The pool measures ``model`` (it looks through ``.model``) and moves the pair with :meth:`to`.

    Attributes:
        model: The model.
        processor: Its processor.
        dtype: The weights' dtype name.
        autocast: The dtype name generation runs under ``torch.autocast`` in (the reference's
            bf16 mixed precision over float16 weights), or None.
    """

    model: Any
    processor: Any
    dtype: str
    autocast: str | None = None

    def to(self, device: str) -> _LoadedVLM:
        self.model.to(device)
        return self


def _estimate_bytes(model_id: str, dtype: str) -> int | None:
    """Bytes of the weights in ``dtype``, from a local checkpoint's safetensors files."""
    root = Path(model_id).expanduser()
    if not root.is_dir():
        return None
    files = list(root.glob("*.safetensors"))
    if not files:
        return None
    total = sum(f.stat().st_size for f in files)
    stored = None
    try:
        config = json.loads((root / "config.json").read_text(encoding="utf-8"))
        stored = config.get("torch_dtype") or config.get("dtype")
    except (OSError, ValueError):
        pass
    if isinstance(stored, str) and stored in _DTYPE_BYTES:
        total = total * _DTYPE_BYTES[dtype] // _DTYPE_BYTES[stored]
    return int(total)


class TransformersPlanner(Planner):
    """A Qwen2-VL-family checkpoint as the planner, loaded through the model pool.

    Args:
        settings: Uses ``planner_model`` (default ``HappyBug/ZoomEarth-3B``),
            ``planner_profile``, ``planner_device``, ``planner_dtype``,
            ``planner_max_new_tokens``, ``planner_temperature``, ``planner_seed``,
            ``planner_coord_mode`` (agent profile; default ``pixels``) and ``planner_prompt``
            (agent profile: a template file; zoomearth profile: the stage-1 text).
        pool: The model pool (default: :func:`zoomearth.models.get_default_pool` at first use).
    """

    name: ClassVar[str] = "transformers"

    def __init__(self, settings: Settings, pool: ModelPool | None = None) -> None:
        self.settings = settings
        self._pool = pool
        self.model_id = str(settings.planner_model or DEFAULT_MODEL)
        self.coord_mode = settings.planner_coord_mode or "pixels"
        self.profile, self.profile_reason = resolve_profile(settings.planner_profile, self.model_id)
        self._template: PromptTemplate | None = None
        self._zoomearth: ZoomEarthProfile | None = None
        self._device: str | None = None

    # ---- resources ---------------------------------------------------------------------------

    @property
    def pool(self) -> ModelPool:
        """The model pool the checkpoint is loaded through."""
        if self._pool is None:
            from zoomearth.models.pool import get_default_pool

            self._pool = get_default_pool()
        return self._pool

    @property
    def template(self) -> PromptTemplate:
        """The agent profile's prompt sections (``planner_prompt`` over the packaged default)."""
        if self._template is None:
            self._template = load_template(self.settings.planner_prompt)
        return self._template

    @property
    def zoomearth(self) -> ZoomEarthProfile:
        """The zoomearth profile with the checkpoint's prompt text (``planner_prompt``)."""
        if self._zoomearth is None:
            self._zoomearth = ZoomEarthProfile(load_zoomearth_prompt(self.settings.planner_prompt))
        return self._zoomearth

    @property
    def device(self) -> str:
        """The resolved device the planner runs on (``planner_device``; ``auto`` resolved)."""
        if self._device is None:
            self._device = self.pool.resolve_device(self.settings.planner_device)
        return self._device

    def _dtypes(self, device: str) -> tuple[str, str | None]:
        """``(weights dtype, autocast dtype)`` for a device under this profile."""
        setting = self.settings.planner_dtype
        if self.profile == "zoomearth" and setting.strip().lower() == "auto":
            if device.startswith("cuda"):
                return "float16", "bfloat16"  # the reference's float16 weights + bf16 autocast
            return "float32", None
        return resolve_dtype(setting, device), None

    def spec(self) -> ModelSpec:
        """The pool's description of the checkpoint (key ``planner:transformers:<model>``)."""
        from zoomearth.models.pool import ModelSpec

        model_id = self.model_id
        dtypes = self._dtypes
        reference = self.profile == "zoomearth"

        def load(device: str) -> _LoadedVLM:
            # dtype follows the device: a CPU fallback of a CUDA model loads in float32.
            dtype, autocast = dtypes(device)
            loaded = _load_vlm(model_id, device, dtype, pil_image_processor=reference)
            loaded.autocast = autocast
            return loaded

        weights, autocast = dtypes(self.device)
        return ModelSpec(
            key=f"planner:transformers:{model_id}:{weights}:{autocast or '-'}:{self.profile}",
            load=load,
            size_bytes=_estimate_bytes(model_id, weights),
            description=f"planner {model_id}",
        )

    def describe(self) -> str:
        """Backend, checkpoint, device, dtype and profile."""
        settings = self.settings
        frame = "512-frame boxes" if self.profile == "zoomearth" else f"boxes {self.coord_mode}"
        return (
            f"transformers: {self.model_id} ({settings.planner_device}, {settings.planner_dtype}, "
            f"profile {self.profile}, {frame})"
        )

    # ---- planning ------------------------------------------------------------------------------

    def build(self, request: PlanRequest) -> Conversation:
        """The agent profile's neutral conversation for a request (for inspection and tests)."""
        return build_conversation(request, "chat", self.coord_mode, self.template)

    def plan(self, request: PlanRequest) -> PlanReply:
        """Generate the model's reply for one turn (or one stage, in the zoomearth profile).

        Raises:
            PlannerError: The checkpoint cannot be loaded or is not a Qwen2-VL-family model, or
                (zoomearth profile) no prompt file is configured.
        """
        if self.profile == "zoomearth":
            inputs = stage_inputs(self.zoomearth, request)
            images = [_to_pil(request.render(v)) for v in inputs.image_view_ids]
            result: PlanReply = self.pool.run(
                self.spec(),
                lambda loaded, device: self._generate_raw(loaded, device, inputs, images),
                device=self.device,
            )
            return result
        conversation = self.build(request)
        # Render (read rasters) before taking the device, so I/O does not hold the GPU gate.
        images = [_to_pil(request.render(v)) for v in conversation.image_view_ids]
        result = self.pool.run(
            self.spec(),
            lambda loaded, device: self._generate(loaded, device, conversation, images),
            device=self.device,
        )
        return result

    def _run_model(
        self,
        loaded: _LoadedVLM,
        device: str,
        prompt: str,
        images: list[Any],
        image_view_ids: tuple[int, ...],
        generation: Any,
    ) -> tuple[Any, Any, dict[int, tuple[int, int]], int]:
        """Tokenise, generate; return ``(new_token_ids, processor, seen_sizes, visual_tokens)``."""
        import contextlib

        import torch

        processor = loaded.processor
        inputs = processor(text=[prompt], images=images or None, return_tensors="pt").to(device)
        grids = inputs.get("image_grid_thw")
        if images and grids is None:
            raise PlannerError(
                NO_IMAGE_GRID_TEMPLATE.format(model=self.model_id, count=len(images))
            )
        if self.settings.planner_seed is not None:
            torch.manual_seed(int(self.settings.planner_seed))
        autocast: Any = contextlib.nullcontext()
        if loaded.autocast and device.startswith("cuda"):
            autocast = torch.autocast("cuda", dtype=getattr(torch, loaded.autocast))
        with torch.inference_mode(), autocast:
            output = loaded.model.generate(**inputs, generation_config=generation)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]

        image_processor = processor.image_processor
        patch = int(getattr(image_processor, "patch_size", 14))
        merge = int(getattr(image_processor, "merge_size", 2))
        seen: dict[int, tuple[int, int]] = {}
        tokens = 0
        rows = grids.tolist() if grids is not None else []
        for view_id, (t, gh, gw) in zip(image_view_ids, rows, strict=True):
            seen[view_id] = (int(gw) * patch, int(gh) * patch)
            tokens += int(t) * int(gh) * int(gw) // (merge * merge)
        return new_tokens, processor, seen, tokens

    def _generate_raw(
        self, loaded: _LoadedVLM, device: str, inputs: StageInputs, images: list[Any]
    ) -> PlanReply:
        """One stage of the zoomearth profile: the raw text, sampled as the reference."""
        profile = self.zoomearth
        temperature = self.settings.planner_temperature
        generation = _generation_config(
            loaded.model,
            self.settings.planner_max_new_tokens or profile.max_new_tokens,
            profile.temperature if temperature is None else temperature,
        )
        new_tokens, processor, seen, tokens = self._run_model(
            loaded, device, inputs.text, images, inputs.image_view_ids, generation
        )
        tokenizer = getattr(processor, "tokenizer", processor)
        # The reference: tokenizer.decode(ids, skip_special_tokens=True).strip()
        text = str(tokenizer.decode(new_tokens[0], skip_special_tokens=True)).strip()
        return PlanReply(
            text=text,
            seen_sizes=seen,
            visual_tokens=tokens,
            backend=self.name,
            model=self.model_id,
            notes=[
                f"zoomearth profile, stage {inputs.stage}",
                f"device {device}, dtype {loaded.dtype}"
                + (f" with {loaded.autocast} autocast" if loaded.autocast else ""),
            ],
        )

    def _generate(
        self, loaded: _LoadedVLM, device: str, conversation: Conversation, images: list[Any]
    ) -> PlanReply:
        processor = loaded.processor
        prompt = build_prompt_text(processor, conversation)
        temperature = self.settings.planner_temperature
        generation = _generation_config(
            loaded.model,
            self.settings.planner_max_new_tokens or AGENT_MAX_NEW_TOKENS,
            0.0 if temperature is None else temperature,
        )
        new_tokens, processor, seen, tokens = self._run_model(
            loaded, device, prompt, images, conversation.image_view_ids, generation
        )
        text = processor.batch_decode(
            new_tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )[0]
        return PlanReply(
            text=text,
            seen_sizes=seen,
            visual_tokens=tokens,
            backend=self.name,
            model=self.model_id,
            notes=[*conversation.notes, f"device {device}, dtype {loaded.dtype}"],
        )


def _to_pil(rgb: Any) -> Any:
    """An RGB uint8 array of shape (H, W, 3) as a PIL image."""
    import numpy as np
    from PIL import Image

    arr = np.asarray(rgb)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(arr[..., :3]).astype(np.uint8, copy=False), "RGB")


def _load_vlm(
    model_id: str, device: str, dtype: str, *, pil_image_processor: bool = False
) -> _LoadedVLM:
    """Load a checkpoint's processor and model (the same code for real and tiny weights).

    Args:
        model_id: Local directory or hub id.
        device: Where the weights go.
        dtype: Weights dtype name.
        pil_image_processor: Resize images with the image processor's PIL backend, as the
            reference's transformers 4.49 did (newer transformers default to a torchvision
            backend whose bicubic differs slightly; the zoomearth profile sets this).
    """
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(model_id)
        if pil_image_processor:
            processor.image_processor = AutoImageProcessor.from_pretrained(model_id, backend="pil")
        model = AutoModelForImageTextToText.from_pretrained(
            model_id, dtype=getattr(torch, dtype), device_map=device
        )
    except (OSError, ValueError, KeyError) as exc:
        raise PlannerError(LOAD_FAILED_TEMPLATE.format(model=model_id, error=exc)) from exc
    model.eval()
    return _LoadedVLM(model, processor, dtype)


def _generation_config(model: Any, max_new_tokens: int, temperature: float) -> Any:
    """The checkpoint's generation config, greedy at temperature 0, else sampled at it.

    Sampling keeps top-p and top-k off (the reference sets both to None at temperature 0.01).
    """
    import copy

    config = copy.deepcopy(model.generation_config)
    config.num_beams = 1
    config.top_p = None
    config.top_k = None
    if temperature > 0:
        config.do_sample = True
        config.temperature = float(temperature)
    else:
        config.do_sample = False
        config.temperature = None
    config.max_new_tokens = int(max_new_tokens)
    config.max_length = None
    return config


def _special_token_strings(tokenizer: Any) -> list[str]:
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    specials |= {tok.content for tok in decoder.values() if getattr(tok, "special", False)}
    # Longest first, so a token that contains another is removed whole.
    return sorted((s for s in specials if s), key=len, reverse=True)


def build_prompt_text(processor: Any, conversation: Conversation) -> str:
    """The agent profile's model input text, with one image placeholder per image.

    The messages go through the checkpoint's chat template (``processor.apply_chat_template``; the
    packaged Qwen2-VL template when the processor has none) with the generation prompt.
    Special-token strings in text parts (a question containing ``<|im_end|>``) are removed so text
    cannot forge the chat structure or images.

    Args:
        processor: A Qwen2-VL-family processor.
        conversation: The neutral conversation.

    Returns:
        The prompt text; its image placeholders are in the order of
        :attr:`Conversation.image_view_ids`.
    """
    tokenizer = getattr(processor, "tokenizer", processor)
    specials = _special_token_strings(tokenizer)

    def clean(text: str) -> str:
        for token in specials:
            if token in text:
                text = text.replace(token, "")
        return text

    chat = to_chat_dicts(conversation, lambda _view: {"type": "image"}, text=clean)
    kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": True}
    if not getattr(processor, "chat_template", None):
        kwargs["chat_template"] = qwen2_vl_chat_template()
    return str(processor.apply_chat_template(chat, **kwargs))
