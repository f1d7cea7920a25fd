"""The ``transformers`` planner backend: a Qwen2.5-VL-family checkpoint run locally.

ZoomEarth-3B (hub id ``HappyBug/ZoomEarth-3B``) or any Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoint
(hub id or local directory) is loaded lazily *through the model pool* on the first
:meth:`TransformersPlanner.plan`, on ``planner_device`` (``auto``: CUDA when available, else the
CPU) in ``planner_dtype`` (``auto``: bfloat16 on CUDA, float32 on the CPU), and generates greedily.

Conversation (``layout``, default ``zoomearth``): see :mod:`zoomearth.agent.conversation`. With the
``zoomearth`` layout, a crop continues the assistant turn: the input is the chat template's
rendering of the messages before that turn (with the generation prompt), then the planner's text
cut before ``<answer>``, then ``<|vision_start|><|image_pad|><|vision_end|>`` -- no end-of-turn
token between, as ZoomEarth-3B was trained. The processor expands each ``<|image_pad|>`` to the
image's token count.

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
from zoomearth.agent.conversation import (
    Conversation,
    ImagePart,
    build_conversation,
    to_chat_dicts,
)
from zoomearth.agent.prompting import PromptTemplate, load_template, qwen2_vl_chat_template

if TYPE_CHECKING:
    from zoomearth.config import Settings
    from zoomearth.models.pool import ModelPool, ModelSpec

__all__ = ["DEFAULT_MODEL", "TransformersPlanner", "resolve_dtype"]

#: The ZoomEarth-3B checkpoint on the Hugging Face hub.
DEFAULT_MODEL: Final = "HappyBug/ZoomEarth-3B"

VISION_PLACEHOLDER_TEMPLATE: Final = "<|vision_start|>{image_token}<|vision_end|>"

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
    """

    model: Any
    processor: Any
    dtype: str

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
            ``planner_device``, ``planner_dtype``, ``planner_max_new_tokens``,
            ``planner_coord_mode`` (default ``pixels``), ``planner_layout`` (default
            ``zoomearth``) and ``planner_prompt``.
        pool: The model pool (default: :func:`zoomearth.models.get_default_pool` at first use).
    """

    name: ClassVar[str] = "transformers"

    def __init__(self, settings: Settings, pool: ModelPool | None = None) -> None:
        self.settings = settings
        self._pool = pool
        self.model_id = str(settings.planner_model or DEFAULT_MODEL)
        self.coord_mode = settings.planner_coord_mode or "pixels"
        self.layout = settings.planner_layout or "zoomearth"
        self._template: PromptTemplate | None = None
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
        """The prompt sections (``planner_prompt`` over the packaged default)."""
        if self._template is None:
            self._template = load_template(self.settings.planner_prompt)
        return self._template

    @property
    def device(self) -> str:
        """The resolved device the planner runs on (``planner_device``; ``auto`` resolved)."""
        if self._device is None:
            self._device = self.pool.resolve_device(self.settings.planner_device)
        return self._device

    def spec(self) -> ModelSpec:
        """The pool's description of the checkpoint (key ``planner:transformers:<model>``)."""
        from zoomearth.models.pool import ModelSpec

        model_id = self.model_id
        dtype_setting = self.settings.planner_dtype

        def load(device: str) -> _LoadedVLM:
            # dtype follows the device: a CPU fallback of a CUDA model loads in float32.
            dtype = resolve_dtype(dtype_setting, device)
            return _load_vlm(model_id, device, dtype)

        return ModelSpec(
            key=f"planner:transformers:{model_id}:{dtype_setting}",
            load=load,
            size_bytes=_estimate_bytes(model_id, resolve_dtype(dtype_setting, self.device)),
            description=f"planner {model_id}",
        )

    def describe(self) -> str:
        """Backend, checkpoint, device and dtype."""
        settings = self.settings
        return (
            f"transformers: {self.model_id} ({settings.planner_device}, {settings.planner_dtype}, "
            f"layout {self.layout}, boxes {self.coord_mode})"
        )

    # ---- planning ------------------------------------------------------------------------------

    def build(self, request: PlanRequest) -> Conversation:
        """The neutral conversation for a request (for inspection and tests)."""
        return build_conversation(request, self.layout, self.coord_mode, self.template)

    def plan(self, request: PlanRequest) -> PlanReply:
        """Generate the model's reply for one turn (greedy, ``planner_max_new_tokens``).

        Raises:
            PlannerError: The checkpoint cannot be loaded or is not a Qwen2-VL-family model.
        """
        conversation = self.build(request)
        # Render (read rasters) before taking the device, so I/O does not hold the GPU gate.
        images = [_to_pil(request.render(v)) for v in conversation.image_view_ids]
        result: PlanReply = self.pool.run(
            self.spec(),
            lambda loaded, device: self._generate(loaded, device, conversation, images),
            device=self.device,
        )
        return result

    def _generate(
        self, loaded: _LoadedVLM, device: str, conversation: Conversation, images: list[Any]
    ) -> PlanReply:
        import torch

        processor = loaded.processor
        prompt = build_prompt_text(processor, conversation)
        inputs = processor(text=[prompt], images=images or None, return_tensors="pt").to(device)
        grids = inputs.get("image_grid_thw")
        if images and grids is None:
            raise PlannerError(
                NO_IMAGE_GRID_TEMPLATE.format(model=self.model_id, count=len(images))
            )
        generation = _greedy_config(loaded.model, self.settings.planner_max_new_tokens)
        with torch.inference_mode():
            output = loaded.model.generate(**inputs, generation_config=generation)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        text = processor.batch_decode(
            new_tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )[0]

        image_processor = processor.image_processor
        patch = int(getattr(image_processor, "patch_size", 14))
        merge = int(getattr(image_processor, "merge_size", 2))
        seen: dict[int, tuple[int, int]] = {}
        tokens = 0
        rows = grids.tolist() if grids is not None else []
        for view_id, (t, gh, gw) in zip(conversation.image_view_ids, rows, strict=True):
            seen[view_id] = (int(gw) * patch, int(gh) * patch)
            tokens += int(t) * int(gh) * int(gw) // (merge * merge)
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


def _load_vlm(model_id: str, device: str, dtype: str) -> _LoadedVLM:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(model_id)
        model = AutoModelForImageTextToText.from_pretrained(
            model_id, dtype=getattr(torch, dtype), device_map=device
        )
    except (OSError, ValueError, KeyError) as exc:
        raise PlannerError(LOAD_FAILED_TEMPLATE.format(model=model_id, error=exc)) from exc
    model.eval()
    return _LoadedVLM(model, processor, dtype)


def _greedy_config(model: Any, max_new_tokens: int) -> Any:
    """The checkpoint's generation config, made greedy (sampling settings cleared)."""
    import copy

    config = copy.deepcopy(model.generation_config)
    config.do_sample = False
    config.num_beams = 1
    config.temperature = None
    config.top_p = None
    config.top_k = None
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
    """The model input text of a conversation, with one image placeholder per image.

    Closed messages go through the checkpoint's chat template (``processor.apply_chat_template``;
    the packaged Qwen2-VL template when the processor has none). An open assistant turn
    (``zoomearth`` layout) is appended after the generation prompt as raw text and image
    placeholders, without an end-of-turn token. Special-token strings in text parts (a question
    containing ``<|im_end|>``) are removed so text cannot forge the chat structure or images.

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

    image_token = str(getattr(processor, "image_token", "<|image_pad|>"))
    placeholder = VISION_PLACEHOLDER_TEMPLATE.format(image_token=image_token)
    messages = list(conversation.messages)
    tail = messages.pop() if conversation.open_assistant else None
    chat = to_chat_dicts(messages, lambda _view: {"type": "image"}, text=clean)
    kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": True}
    if not getattr(processor, "chat_template", None):
        kwargs["chat_template"] = qwen2_vl_chat_template()
    prompt = str(processor.apply_chat_template(chat, **kwargs))
    if tail is not None:
        prompt += "".join(
            placeholder if isinstance(part, ImagePart) else clean(part.text) for part in tail.parts
        )
    return prompt
