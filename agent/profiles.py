"""Protocol profiles: how a planner model is prompted, shown images and read.

Two profiles:

``zoomearth`` -- ZoomEarth-3B exactly as its paper evaluated it (the reference implementation's
``src/eval/infer.py``; the model only reproduces its published numbers with its training inputs):

* **prompt**: one raw string, no chat template -- the user's prompt file (the checkpoint's text,
  see ``docs/reproduce.md``), with the literal ``{{question}}`` replaced by the question (plain
  substitution, no template engine: the text holds JSON braces); used byte for byte;
* **two stages**: stage 1 sees the overview; the first ``bbox_2d`` (:func:`reference_first_box`)
  gives one crop; stage 2 is the stage-1 text + the stage-1 output cut before ``<answer>`` + the
  crop's image placeholder (a continuation of the same assistant turn) and its answer is final,
  whatever else it writes. No box in stage 1: stage 1's answer stands;
* **box frame**: the 512-long-side overview as rendered: ``full = box * max(W, H) / 512`` on both
  axes (:meth:`ZoomEarthProfile.box_to_full`), not the processor's 504 x 308;
* **crop rule**: :func:`reference_crop_xyxy` (integer truncation; a 512 square when *either* side
  is under 512, shifted inside the image; otherwise the raw box, unclipped);
* **images**: PIL bicubic to long side 512 with ``int()`` sizes (:func:`reference_resized_size`),
  of the overview and of the crop (:mod:`zoomearth.scene.reference`);
* **generation**: 1024 new tokens, sampling at temperature 0.01 (the reference's near-greedy
  setting), decoded with special tokens skipped, then stripped.

``agent`` -- the general multi-step agent for general VLMs (Qwen2.5-VL instruct, Qwen3-VL with
``norm1000``, remote models over ``openai``): chat template, tools in the prompt, several boxes and
steps, boxes in the frame of the image as the processor resized it
(:mod:`zoomearth.agent.frames`).

The setting ``planner_profile`` chooses (``auto``: ``zoomearth`` when ``planner_model`` names a
ZoomEarth checkpoint -- its config is a plain Qwen2.5-VL one, so the name is the only hint -- else
``agent``); :func:`resolve_profile` returns the choice with the reason the run shows.

Nothing here imports torch, transformers or PIL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from zoomearth.agent.base import PlannerError, ProfileName
from zoomearth.agent.protocol import VISION_PLACEHOLDER, stage2_prefix
from zoomearth.geometry import reference_resized_size as reference_resized_size

if TYPE_CHECKING:
    from zoomearth.agent.base import PlanRequest

__all__ = [
    "PROFILES",
    "QUESTION_MARK",
    "ProfileName",
    "StageInputs",
    "ZoomEarthProfile",
    "load_zoomearth_prompt",
    "reference_box_factor",
    "reference_crop_xyxy",
    "reference_resized_size",
    "resolve_profile",
    "stage_inputs",
]

PROFILES: Final = ("agent", "zoomearth")
#: Where the question goes in a ``zoomearth`` prompt file (plain text substitution).
QUESTION_MARK: Final = "{{question}}"
#: Overview and crop long side, and the minimum crop side, of the reference (pixels).
REFERENCE_SIDE: Final = 512

AUTO_ZOOMEARTH_TEMPLATE: Final = (
    "planner_profile=auto chose zoomearth: planner_model {model!r} names a ZoomEarth checkpoint "
    "(two stages, raw prompt, 512-frame boxes, as the paper evaluated it)."
)
AUTO_AGENT_TEMPLATE: Final = (
    "planner_profile=auto chose agent: {why} (general multi-step agent; set "
    "planner_profile=zoomearth for ZoomEarth-3B under another name)."
)
EXPLICIT_PROFILE_TEMPLATE: Final = "planner_profile={name} (set explicitly)."
UNKNOWN_PROFILE_TEMPLATE: Final = "Unknown planner_profile {name!r}; use auto, agent or zoomearth."
NO_PROMPT_TEMPLATE: Final = (
    "The zoomearth profile needs the checkpoint's prompt text: set planner_prompt to a plain-text "
    "file holding the whole stage-1 text (system block to assistant start) with the literal "
    "{mark} where the question goes. The text is the checkpoint's own and is not shipped here: "
    "`zoomearth planner extract-prompt PATH/TO/ZoomEarth -o zoomearth_prompt.txt` writes it "
    "from a local clone of the reference repository (see docs/reproduce.md)."
)
PROMPT_UNREADABLE_TEMPLATE: Final = (
    "Cannot read the zoomearth prompt file {path}: {error}. Check the setting planner_prompt."
)
PROMPT_NO_MARK_TEMPLATE: Final = (
    "The zoomearth prompt file {path} has no {mark}: write it where the question goes (the file "
    "is the whole stage-1 text, used byte for byte; YAML and jinja templates are for the agent "
    "profile only)."
)
SIZE_TEMPLATE: Final = "Image sizes must be positive; got {width}x{height} px."


def resolve_profile(setting: str | None, model: str | None) -> tuple[ProfileName, str]:
    """The profile that ``planner_profile`` stands for, with the reason the run shows.

    Args:
        setting: ``auto`` (or None), ``agent`` or ``zoomearth``.
        model: ``planner_model`` (a hub id, a path or a served model name), if any.

    Returns:
        ``(profile, reason)``.

    Raises:
        PlannerError: Unknown profile name.
    """
    name = (setting or "auto").strip().lower()
    if name in PROFILES:
        return name, EXPLICIT_PROFILE_TEMPLATE.format(name=name)  # type: ignore[return-value]
    if name != "auto":
        raise PlannerError(UNKNOWN_PROFILE_TEMPLATE.format(name=setting))
    # Only the checkpoint's own name counts (a hub id's repo name, a path's last part): the
    # project's own data folders are called "zoomearth", and a general model may live there.
    name_part = str(model or "").replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    if name_part and "zoomearth" in name_part.lower().replace("-", "").replace("_", ""):
        return "zoomearth", AUTO_ZOOMEARTH_TEMPLATE.format(model=str(model))
    why = f"planner_model {model!r} does not name ZoomEarth" if model else "no planner_model"
    return "agent", AUTO_AGENT_TEMPLATE.format(why=why)


def load_zoomearth_prompt(path: str | Path | None) -> str:
    """Read a ``zoomearth`` prompt file: the whole stage-1 text with ``{{question}}``.

    The bytes are kept exactly (no stripping, no newline translation: the reference's text starts
    with a newline and has spaces before end-of-turn tokens).

    Args:
        path: The file (setting ``planner_prompt``).

    Returns:
        The text.

    Raises:
        PlannerError: No file configured, unreadable, or without ``{{question}}``.
    """
    if path is None:
        raise PlannerError(NO_PROMPT_TEMPLATE.format(mark=QUESTION_MARK))
    p = Path(path).expanduser()
    try:
        text = p.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PlannerError(PROMPT_UNREADABLE_TEMPLATE.format(path=p, error=exc)) from None
    if QUESTION_MARK not in text:
        raise PlannerError(PROMPT_NO_MARK_TEMPLATE.format(path=p, mark=QUESTION_MARK))
    return text


# ---------------------------------------------------------------------------------------------
# The reference's geometry (pure functions, property-tested against an independent port)
# ---------------------------------------------------------------------------------------------


def reference_box_factor(width: int, height: int, max_size: int = REFERENCE_SIDE) -> float:
    """The factor the reference multiplies the model's box by: ``1 / (max_size / max(W, H))``.

    Computed with the same float operations as the reference (``1 / scale``), so integer
    truncation of the mapped box lands on the same pixel. Applies to both axes, and also when the
    image was not resized (an image under 512 px keeps its size but its boxes are still scaled).

    Args:
        width: Full-resolution width.
        height: Full-resolution height.
        max_size: The overview's long side.

    Returns:
        Full-resolution pixels per overview-frame unit.
    """
    if width <= 0 or height <= 0:
        raise ValueError(SIZE_TEMPLATE.format(width=width, height=height))
    scale = max_size / max(width, height)
    return 1 / scale


def reference_crop_xyxy(
    box: Sequence[float], width: int, height: int, min_size: int = REFERENCE_SIDE
) -> tuple[int, int, int, int]:
    """The full-resolution window the reference crops for a box (``cut_image``).

    The box is truncated to integers (``int()``, towards zero). If **either** side is under
    ``min_size``, the crop is a ``min_size`` square centred on the integer centre (floor
    division), shifted to stay inside the image (and cut to the image where it is smaller than
    ``min_size``). Otherwise it is the box as it is: not clipped, so it may reach outside the
    image, where the reference's ``PIL.Image.crop`` pads with black.

    Args:
        box: ``(x1, y1, x2, y2)`` in full-resolution pixels (floats).
        width: Image width.
        height: Image height.
        min_size: The minimum crop side (512).

    Returns:
        ``(x1, y1, x2, y2)`` integers, half-open.

    Raises:
        ValueError: ``box`` is not four finite numbers (the reference would raise too).
    """
    if len(box) != 4:
        raise ValueError(f"a crop box needs four numbers; got {len(box)}")
    x1, y1, x2, y2 = (int(v) for v in box)  # OverflowError/ValueError on inf/nan, as int() does
    if x2 - x1 < min_size or y2 - y1 < min_size:
        cx = (x1 + x2) // 2
        cy = (y1 + y2) // 2
        nx1 = cx - min_size // 2
        ny1 = cy - min_size // 2
        nx2 = nx1 + min_size
        ny2 = ny1 + min_size
        if nx1 < 0:
            nx2 += -nx1
            nx1 = 0
        if ny1 < 0:
            ny2 += -ny1
            ny1 = 0
        if nx2 > width:
            nx1 -= nx2 - width
            nx2 = width
        if ny2 > height:
            ny1 -= ny2 - height
            ny2 = height
        nx1 = max(0, nx1)
        ny1 = max(0, ny1)
        nx2 = min(width, nx1 + min_size)
        ny2 = min(height, ny1 + min_size)
        return nx1, ny1, nx2, ny2
    return x1, y1, x2, y2


# ---------------------------------------------------------------------------------------------
# The profile
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZoomEarthProfile:
    """The ``zoomearth`` profile's constants and its text and frame rules.

    Attributes:
        prompt: The stage-1 text with ``{{question}}`` (from :func:`load_zoomearth_prompt`).
        side: Overview and crop long side (512).
        min_crop: Minimum crop side in full-resolution pixels (512).
        max_new_tokens: Generation length per stage (1024).
        temperature: Sampling temperature (0.01, top-p and top-k off).
    """

    prompt: str
    side: int = REFERENCE_SIDE
    min_crop: int = REFERENCE_SIDE
    max_new_tokens: int = 1024
    temperature: float = 0.01

    def stage1_text(self, question: str) -> str:
        """The stage-1 input: the prompt with the question substituted (plain text)."""
        return self.prompt.replace(QUESTION_MARK, _question_text(question))

    def stage2_text(self, question: str, stage1_output: str) -> str:
        """Stage-1 input + stage-1 output cut before ``<answer>`` + the crop's placeholder."""
        return self.stage1_text(question) + stage2_prefix(stage1_output) + VISION_PLACEHOLDER

    def overview_size(self, width: int, height: int) -> tuple[int, int]:
        """``(w, h)`` of the overview as the reference renders it."""
        return reference_resized_size(width, height, self.side)

    def box_to_full(self, box: Sequence[float], width: int, height: int) -> list[float]:
        """A stage-1 box (512-long-side overview frame) in full-resolution pixels (floats)."""
        factor = reference_box_factor(width, height, self.side)
        return [float(v) * factor for v in box]

    def crop_xyxy(self, full_box: Sequence[float], width: int, height: int) -> tuple[int, ...]:
        """The crop window for a full-resolution box (:func:`reference_crop_xyxy`)."""
        return reference_crop_xyxy(full_box, width, height, self.min_crop)


def _question_text(question: str) -> str:
    # A question holding special-token strings (<|image_pad|> ...) could forge images or turns;
    # benchmark questions never do, so removing them changes no reference input.
    import re

    return re.sub(r"<\|[a-z_]{1,40}\|>", "", question)


@dataclass(frozen=True)
class StageInputs:
    """What a ``zoomearth``-profile planner feeds the model for one stage.

    Attributes:
        stage: 1 (overview) or 2 (overview + crop).
        text: The raw model input text, byte for byte.
        image_view_ids: The views whose pixels fill the placeholders, in order.
    """

    stage: int
    text: str
    image_view_ids: tuple[int, ...]


def stage_inputs(profile: ZoomEarthProfile, request: PlanRequest) -> StageInputs:
    """The stage and raw inputs of a ``zoomearth``-profile planner call.

    Stage 1 when the current question has no planner turn yet; stage 2 when it has the stage-1
    turn and the zoom it produced (the first zoom of the question).

    Args:
        profile: The profile (prompt text).
        request: The planner request (its transcript since the latest question decides).

    Returns:
        The stage inputs.
    """
    current = request.current
    turns = [e for e in current if e.kind == "planner"]
    zooms = [e for e in current if e.kind == "zoom" and e.view_id is not None]
    if not turns or not zooms:
        return StageInputs(1, profile.stage1_text(request.question), (request.overview_id,))
    crop = zooms[0].view_id
    assert crop is not None
    return StageInputs(
        2,
        profile.stage2_text(request.question, turns[0].text),
        (request.overview_id, crop),
    )
