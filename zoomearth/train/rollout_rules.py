"""The GRPO rollout's rules that need no trainer: data profile, box frame, crop, stage-2 input.

:class:`~zoomearth.train.grpo.TwoStageRollout` applies them to every completion:
:func:`rows_profile` and :func:`resolve_box_frame` choose the protocol profile and the box frame
of the prepared data; :func:`reference_rollout_window` (``zoomearth`` profile, the reference
GRPO's rule) and :func:`agent_rollout_region` (``agent`` profile, as the graph zooms) turn a
stage-1 output into the crop; :func:`stage2_inputs` builds stage 2's processor inputs. They are
re-exported by :mod:`zoomearth.train.grpo`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from zoomearth.agent.protocol import reference_bboxes
from zoomearth.errors import BoxError
from zoomearth.geometry import PixelBox
from zoomearth.train.common import TrainError

if TYPE_CHECKING:
    from zoomearth.train.rewards import BoxFrame

__all__ = [
    "agent_rollout_region",
    "reference_rollout_window",
    "resolve_box_frame",
    "rows_profile",
    "stage2_inputs",
]

# The trainer's logger: these rules logged under zoomearth.train.grpo before they moved here.
log = logging.getLogger("zoomearth.train.grpo")

MIXED_PROFILES_TEMPLATE: Final = (
    "The GRPO data mixes protocol profiles {profiles}; prepare it again with one "
    "(`zoomearth train prepare ... --profile zoomearth` or `--profile agent`)."
)
NO_PROMPT_TEXT_TEMPLATE: Final = (
    "zoomearth-profile GRPO rows need their prompt_text (the profile's stage-1 text); prepare the "
    "data again with `zoomearth train prepare` and planner_prompt set to the prompt file."
)


def rows_profile(rows: Sequence[Mapping[str, Any]]) -> str:
    """The protocol profile of prepared GRPO rows (rows without ``profile`` are ``agent``).

    Raises:
        TrainError: The rows mix profiles, or ``zoomearth`` rows lack their ``prompt_text``.
    """
    profiles = {str(row.get("profile") or "agent") for row in rows}
    if len(profiles) != 1:
        raise TrainError(MIXED_PROFILES_TEMPLATE.format(profiles=sorted(profiles)))
    profile = profiles.pop()
    if profile == "zoomearth" and any(not row.get("prompt_text") for row in rows):
        raise TrainError(NO_PROMPT_TEXT_TEMPLATE)
    return profile


def resolve_box_frame(setting: str, profile: str) -> str:
    """``rewards.box_frame`` for data of a profile (``auto``: ``reference`` for ``zoomearth``)."""
    if setting != "auto":
        return setting
    return "reference" if profile == "zoomearth" else "processor"


def _finite_four(box: Sequence[float]) -> bool:
    return len(box) == 4 and all(math.isfinite(float(v)) for v in box)


def reference_rollout_window(
    stage1: str,
    frame: BoxFrame,
    width: int,
    height: int,
    min_crop: int = 512,
) -> tuple[tuple[int, int, int, int], str]:
    """The crop window of a stage-1 output, by the reference GRPO's rule.

    The reference (``_generate_and_score_completions``, run for every completion whose ground
    truth has a box): the first ``"bbox_2d"`` list, or ``[0, 0, overview width, overview
    height]`` when there is none; times ``scale``; ``cut_image`` (a list that is not four numbers
    gives the whole image; else :func:`~zoomearth.agent.profiles.reference_crop_xyxy`).

    Here, where the reference cannot go on: non-finite numbers (its ``int()`` raises) give the
    whole image too, and a window more than four times the image's area (its ``Image.crop``
    would allocate it) is cut to the image.

    Args:
        stage1: The stage-1 output.
        frame: The box frame (:class:`~zoomearth.train.rewards.ReferenceFrame` for ZoomEarth).
        width: Image width.
        height: Image height.
        min_crop: Minimum crop side (512).

    Returns:
        ``((x1, y1, x2, y2), note)``: the integer window (may reach outside the image, which the
        crop pads with black) and what decided it.
    """
    from zoomearth.agent.profiles import reference_crop_xyxy

    whole = (0, 0, int(width), int(height))
    boxes = reference_bboxes(stage1)
    if not boxes:
        box, note = frame.whole(), "no bbox_2d: the whole overview"
    else:
        box, note = boxes[0], "the first bbox_2d"
        if len(box) != 4:
            return whole, f"the first bbox_2d has {len(box)} numbers: the whole image"
        if not _finite_four(box):
            return whole, "the first bbox_2d is not finite: the whole image"
    full = frame.to_full(box)
    if not _finite_four(full):
        return whole, "the box maps outside the number range: the whole image"
    x1, y1, x2, y2 = reference_crop_xyxy(full, width, height, min_crop)
    if (x2 - x1) * (y2 - y1) > 4 * width * height:
        cx1, cy1 = max(0, x1), max(0, y1)
        cx2, cy2 = min(width, x2), min(height, y2)
        if cx2 <= cx1 or cy2 <= cy1:
            return whole, note + " (far outside the image): the whole image"
        return (cx1, cy1, cx2, cy2), note + " (cut to the image: its window is too large)"
    return (x1, y1, x2, y2), note


def agent_rollout_region(
    stage1: str, frame: BoxFrame, width: int, height: int, min_crop: int = 512
) -> tuple[PixelBox, str, str | None]:
    """The crop region of a stage-1 output for ``agent``-profile data, as the graph zooms.

    The first zoom the agent's parser reads (:func:`zoomearth.train.chat.first_zoom`: the zoom
    the graph acts on first) mapped through ``frame`` and :func:`zoomearth.agent.frames.zoom_region`
    (clipped, minimum crop, shifted inside), snapped to whole pixels as the graph's zoom node
    snaps it; no usable zoom (none, one drawn on a view other than the overview, or one outside
    the image): the whole image.

    Returns:
        ``(region, note, label)``: ``label`` is the zoom's (the graph writes it in the caption).
    """
    from zoomearth.agent.frames import zoom_region
    from zoomearth.train.chat import first_zoom

    whole = PixelBox(0, 0, width, height)
    zoom = first_zoom(stage1)
    if zoom is None:
        return whole, "no usable bbox_2d: the whole image", None
    if zoom.view not in (None, 0):
        return whole, f"the first bbox_2d is drawn on view {zoom.view}: the whole image", None
    try:
        region, _warning = zoom_region(
            PixelBox(*frame.to_full(zoom.box)), width, height, min_crop, snap=True
        )
    except BoxError as exc:
        return whole, f"unusable bbox_2d ({exc}): the whole image", None
    return region, "the first bbox_2d", zoom.label


def stage2_inputs(
    processor: Any,
    stage1_inputs: Any,
    prompt1: str,
    continuation: str,
    images: Sequence[Any],
    *,
    exact: bool = True,
) -> Any:
    """The processor inputs of stage 2: stage 1's input followed by ``continuation``.

    As the reference, the whole text ``prompt1 + continuation`` is tokenised at once. When that
    does not start with stage 1's tokens -- the continuation's first characters merged with the
    prompt's last token, e.g. a stage-1 output starting with a newline after a prompt ending with
    one -- the stage-1 tokens are kept and the continuation (with the crop) is tokenised on its
    own and appended, so the trained completion still follows its prompt.

    Args:
        processor: The Qwen2-VL-family processor.
        stage1_inputs: The processor's output for stage 1 (``prompt1`` with ``images[0]``).
        prompt1: Stage 1's input text.
        continuation: The stage-1 text cut before ``<answer>`` + the crop's image placeholder.
        images: ``[overview, crop]``.
        exact: Try the whole-text tokenisation first (False: always append; for tests).

    Returns:
        A ``BatchFeature`` (``input_ids``, ``attention_mask``, ``pixel_values``,
        ``image_grid_thw`` and whatever else the processor returns), on the CPU.
    """
    import torch

    n = int(stage1_inputs["input_ids"].shape[1])
    if exact:
        whole = processor(text=[prompt1 + continuation], images=list(images), return_tensors="pt")
        first = stage1_inputs["input_ids"][0].to(whole["input_ids"].device)
        if whole["input_ids"].shape[1] >= n and torch.equal(whole["input_ids"][0, :n], first):
            return whole
        log.debug("stage-2 text re-tokenised across the stage-1 boundary; appending instead")
    tail = processor(text=[continuation], images=list(images[1:]), return_tensors="pt")
    merged = {}
    for key, value in tail.items():
        head = stage1_inputs[key].to(value.device) if key in stage1_inputs else None
        if head is None or not isinstance(value, torch.Tensor):
            merged[key] = value
        elif key in ("pixel_values", "image_grid_thw"):
            merged[key] = torch.cat([head, value], dim=0)
        else:
            merged[key] = torch.cat([head, value], dim=1)
    return type(tail)(merged)
