r"""Rewards of the two-stage ZoomEarth rollout: format, box (IoU + Region-Guided) and answer.

By default the three rewards are those ZoomEarth-3B was trained with -- the reference GRPO's
``get_format_reward``, ``get_bbox_reward`` and ``get_answer_reward``
(``src/train/RL/src/open-r1-multimodal/src/open_r1/custom/customized_funcs.py``) with the box scale
of its trainer (``trainer/grpo_trainer.py``) -- and ``tests/train/test_reward_parity.py`` checks
that against an independent port on generated cases. Model text is read with the protocol's
reference readers (:func:`zoomearth.agent.protocol.reference_tag`,
:func:`~zoomearth.agent.protocol.reference_bboxes`), the one place those patterns live.

**Format** (:func:`format_reward`), 1 or 0. A rollout is *cut* when a stage 2 was generated after
the crop (``stage2 != ""``). Cut: stage 1 has a non-empty ``<think>`` and a ``"bbox_2d": [...]``
list of numbers, stage 2 a non-empty ``<think>`` and ``<answer>``. Not cut: stage 1 has a
non-empty ``<think>`` and ``<answer>``. Tags are read with ``<tag\s*>\s*(.*?)\s*</tag\s*>`` (first
occurrence, stripped; empty content counts as absent).

**Box** (:func:`box_reward`), 0 to 2. The *first* ``"bbox_2d"`` list of stage 1 against the
ground-truth box:

* no box, a box without exactly 4 numbers, or no ground-truth box: 0 (also for non-finite numbers,
  where the reference would raise);
* the numbers written equal the ground truth's (``BoxTarget.exact``; by default the LRS-GRO
  ``bbox`` as written, as the reference compares them): 2;
* otherwise ``IoU(crop(box), crop(gt)) + tanh(scale / (d + 1e-6))``: both boxes in
  full-resolution pixels, ``crop`` the reference's minimum-crop area (:func:`reference_crop_area`:
  integer truncation, a ``min_crop`` square centred on the box -- both sides -- when either side is
  smaller, clamped at 0 only), ``d`` the distance between the two boxes' centres and ``scale`` the
  Region-Guided scale (200).

The model's box reaches full resolution through a **box frame** (:class:`BoxFrame`):

* ``reference`` (:class:`ReferenceFrame`, the default; ZoomEarth-3B): the 512-long-side overview
  the reference renders. ``full = box * max(max(W, H) / 512, 1)`` on both axes -- the trainer's
  own expression (``scale`` in ``_generate_and_score_completions``). It is
  :func:`zoomearth.agent.profiles.reference_box_factor` (the evaluation's ``1 / (512 / max(W,
  H))``) except for the last bit of some quotients -- which moves the reward's integer crop by a
  pixel -- and for images under 512 px, which the trainer does not scale;
* ``processor`` (:class:`ProcessorFrame`, for general Qwen2.5-VL models): pixels of the overview
  as the model's processor resized it (the multiple-of-28 size: 512 x 512 is seen as 504 x 504),
  :func:`zoomearth.agent.frames.planner_box_to_full`. Using it on ZoomEarth-3B's boxes is wrong by
  up to 1.6 % of the image, enough to move most boxes' reward.

The ground truth in full-resolution pixels is ``bbox * max(W, H) / 1024`` (``gt_box_full`` of
``grpo.jsonl``), the reference's ``bbox * scale / 2``. The one difference: for images whose long
side is under 512 px the reference's clamped scale puts its ground truth at ``bbox / 2``, outside
such an image; here it stays ``bbox * max(W, H) / 1024`` (LRS-GRO has no such images).

**Answer** (:func:`answer_reward`), 0 to 1. The answer of stage 2 when cut, else of stage 1;
answer and ground truth lower-cased, stripped, trailing full stops removed. Empty ground truth:
0; equal: 1; otherwise the best WordNet path similarity of the two noun-lemmatised strings, counted
as 1 at or above ``threshold`` (0.8) and kept as is below it.

:func:`make_reward_funcs` wraps the three as TRL reward functions (``f(prompts, completions,
**kwargs) -> list[float]``) reading the rollout's ``stage1`` / ``stage2`` texts and the dataset
columns. Nothing here imports torch, transformers or trl.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from zoomearth.agent.protocol import reference_bboxes, reference_tag
from zoomearth.geometry import PixelBox, ViewSpec

__all__ = [
    "BOX_FRAMES",
    "DEFAULT_ANSWER_THRESHOLD",
    "DEFAULT_MIN_CROP",
    "DEFAULT_REGION_SCALE",
    "REFERENCE_SIDE",
    "BoxFrame",
    "BoxFrameName",
    "BoxTarget",
    "ProcessorFrame",
    "ReferenceFrame",
    "RewardColumnError",
    "SimilarityFn",
    "answer_reward",
    "box_reward",
    "crop_area_iou",
    "default_similarity",
    "format_reward",
    "frame_from_row",
    "make_reward_funcs",
    "normalise_answer",
    "reference_crop_area",
    "reference_training_box_factor",
    "region_guided_term",
    "target_from_row",
]

log = logging.getLogger(__name__)

#: The Region-Guided scale of the reference: ``tanh(200 / centre distance)``.
DEFAULT_REGION_SCALE: Final = 200.0
#: Minimum crop side in full-resolution pixels.
DEFAULT_MIN_CROP: Final = 512
#: WordNet path similarity counted as a correct answer.
DEFAULT_ANSWER_THRESHOLD: Final = 0.8
#: Added to the centre distance, as in the reference (no division by zero).
DISTANCE_EPSILON: Final = 1e-6
#: Long side of the reference's overview (the ``reference`` box frame).
REFERENCE_SIDE: Final = 512

#: ``reference``: the reference's 512-long-side overview (ZoomEarth-3B); ``processor``: pixels of
#: the overview as the processor resized it (general Qwen2.5-VL models).
BoxFrameName = Literal["reference", "processor"]
BOX_FRAMES: Final = ("reference", "processor")

#: A word/phrase similarity in [0, 1] (WordNet path similarity for the reference semantics).
SimilarityFn = Callable[[str, str], float]

NO_SIMILARITY_TEMPLATE: Final = (
    "WordNet similarity is not available ({error}); the answer reward counts exact matches only. "
    "Install the WordNet data (see docs/train.md) or pass a similarity function."
)
UNKNOWN_FRAME_TEMPLATE: Final = (
    "Unknown box frame {frame!r}; use 'reference' (ZoomEarth-3B's 512-long-side overview) or "
    "'processor' (the overview as the processor resized it, for general models)."
)
MISSING_COLUMN_TEMPLATE: Final = (
    "The box reward needs the dataset column {column!r} for the {frame!r} box frame; write the "
    "GRPO data with `zoomearth train prepare` (it adds scene_size, overview_spec, overview_seen)."
)


class RewardColumnError(KeyError):
    """A reward function did not get a dataset column it needs (the message names it)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


# ---------------------------------------------------------------------------------------------
# Format
# ---------------------------------------------------------------------------------------------


def format_reward(stage1: str, stage2: str) -> float:
    """1.0 when the tags the protocol requires are present, else 0.0.

    Args:
        stage1: Stage-1 output (before the crop).
        stage2: Stage-2 output after the crop; ``""`` when no crop happened (not cut).

    Returns:
        1.0 or 0.0.
    """
    if stage2 != "":
        ok = (
            bool(reference_tag(stage1, "think"))
            and bool(reference_tag(stage2, "think"))
            and bool(reference_tag(stage2, "answer"))
            and bool(reference_bboxes(stage1))
        )
    else:
        ok = bool(reference_tag(stage1, "think")) and bool(reference_tag(stage1, "answer"))
    return 1.0 if ok else 0.0


# ---------------------------------------------------------------------------------------------
# Box frames
# ---------------------------------------------------------------------------------------------


def reference_training_box_factor(width: int, height: int, side: int = REFERENCE_SIDE) -> float:
    """Full-resolution pixels per unit of a box in the reference's overview, as its trainer has it.

    ``max(max(W, H) / side, 1)`` -- the expression of the reference GRPO trainer
    (``grpo_trainer.py``, ``_generate_and_score_completions``: ``scale``), used for its stage-2
    crop and, through the ``scale`` column, for its box reward. Compared with the evaluation's
    :func:`zoomearth.agent.profiles.reference_box_factor`: images under ``side`` pixels are not
    scaled (their overview is the image), and ``W / 512`` is exact where ``1 / (512 / W)`` can be
    one unit in the last place off.

    Args:
        width: Full-resolution width.
        height: Full-resolution height.
        side: The overview's long side (512).

    Returns:
        The factor (at least 1).
    """
    return max(max(int(width), int(height)) / side, 1.0)


class BoxFrame(Protocol):
    """The frame a model's box is written in, and the way to full-resolution pixels."""

    @property
    def name(self) -> str:
        """``reference`` or ``processor``."""
        ...

    def to_full(self, box: Sequence[float]) -> list[float]:
        """A 4-number box in this frame as full-resolution ``[x1, y1, x2, y2]`` (floats)."""
        ...

    def whole(self) -> list[float]:
        """The whole overview as a box in this frame (what the rollout crops without a box)."""
        ...


@dataclass(frozen=True, slots=True)
class ReferenceFrame:
    """The reference's frame: the 512-long-side overview, one factor on both axes.

    Attributes:
        width: Full-resolution width.
        height: Full-resolution height.
        side: Overview long side (512).
    """

    width: int
    height: int
    side: int = REFERENCE_SIDE
    name: str = "reference"

    @property
    def factor(self) -> float:
        """:func:`reference_training_box_factor` of the image."""
        return reference_training_box_factor(self.width, self.height, self.side)

    def to_full(self, box: Sequence[float]) -> list[float]:
        """``[v * factor for v in box]`` (the reference's ``bbox = [point * scale ...]``)."""
        factor = self.factor
        return [float(v) * factor for v in box]

    def overview_size(self) -> tuple[int, int]:
        """The overview's ``(width, height)``: long side ``side``, ``int()`` sizes, no upscaling."""
        from zoomearth.agent.profiles import reference_resized_size

        return reference_resized_size(self.width, self.height, self.side)

    def whole(self) -> list[float]:
        """``[0, 0, overview width, overview height]`` (the reference's no-box crop)."""
        w, h = self.overview_size()
        return [0.0, 0.0, float(w), float(h)]


@dataclass(frozen=True, slots=True)
class ProcessorFrame:
    """Pixels of the overview as the model's processor resized it (general Qwen2.5-VL models).

    Attributes:
        overview: The overview view (its full-resolution region and rendered size).
        seen: ``(width, height)`` at which the model saw the overview (the multiple-of-28 size).
    """

    overview: ViewSpec
    seen: tuple[int, int]
    name: str = "processor"

    def to_full(self, box: Sequence[float]) -> list[float]:
        """:func:`zoomearth.agent.frames.planner_box_to_full` in ``pixels`` mode."""
        from zoomearth.agent.frames import planner_box_to_full

        return planner_box_to_full(box, "pixels", self.overview, self.seen).as_list()

    def whole(self) -> list[float]:
        """``[0, 0, seen width, seen height]``."""
        return [0.0, 0.0, float(self.seen[0]), float(self.seen[1])]


def _view_from(spec: Mapping[str, Any] | str) -> ViewSpec:
    d = json.loads(spec) if isinstance(spec, str) else spec
    return ViewSpec(
        int(d.get("view_id", 0)),
        PixelBox(*(float(v) for v in d["region_xyxy"])),
        int(d["width"]),
        int(d["height"]),
    )


def frame_from_row(row: Mapping[str, Any], box_frame: str) -> BoxFrame:
    """The :class:`BoxFrame` of one ``grpo.jsonl`` row (or the trainer's columns of it).

    Args:
        row: Needs ``scene_size`` (``reference``) or ``overview_spec`` and ``overview_seen``
            (``processor``).
        box_frame: ``reference`` or ``processor``.

    Returns:
        The frame.

    Raises:
        ValueError: Unknown frame name.
        RewardColumnError: A column the frame needs is missing.
    """
    if box_frame == "reference":
        size = row.get("scene_size")
        if not size:
            raise RewardColumnError(
                MISSING_COLUMN_TEMPLATE.format(column="scene_size", frame=box_frame)
            )
        return ReferenceFrame(int(size[0]), int(size[1]))
    if box_frame == "processor":
        for column in ("overview_spec", "overview_seen"):
            if not row.get(column):
                raise RewardColumnError(
                    MISSING_COLUMN_TEMPLATE.format(column=column, frame=box_frame)
                )
        seen = row["overview_seen"]
        return ProcessorFrame(_view_from(row["overview_spec"]), (int(seen[0]), int(seen[1])))
    raise ValueError(UNKNOWN_FRAME_TEMPLATE.format(frame=box_frame))


# ---------------------------------------------------------------------------------------------
# Box
# ---------------------------------------------------------------------------------------------


def reference_crop_area(box: Sequence[float], min_size: int = DEFAULT_MIN_CROP) -> list[float]:
    """The crop area the reference's box reward compares (``get_crop_area``; not the crop read).

    Coordinates are truncated to integers; when either side is below ``min_size``, the result is
    a ``min_size`` square centred (floor division) on the box, with its top-left corner clamped at
    0 (the far edge is not moved, so a crop at the left edge shrinks); otherwise the box itself.

    Args:
        box: ``(x1, y1, x2, y2)`` in full-resolution pixels.
        min_size: Minimum crop side.

    Returns:
        ``[x1, y1, x2, y2]``.
    """
    x1, y1, x2, y2 = (int(v) for v in box)
    if (x2 - x1) < min_size or (y2 - y1) < min_size:
        cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
        nx1, ny1 = cx - min_size // 2, cy - min_size // 2
        nx2, ny2 = nx1 + min_size, ny1 + min_size
        return [float(max(0, nx1)), float(max(0, ny1)), float(nx2), float(ny2)]
    return [float(v) for v in box]


def _ordered(box: Sequence[float]) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = box
    return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)


def crop_area_iou(
    box_a: Sequence[float], box_b: Sequence[float], min_size: int = DEFAULT_MIN_CROP
) -> float:
    """IoU of two boxes after both are expanded to the reference's minimum crop area.

    Args:
        box_a: ``(x1, y1, x2, y2)`` in full-resolution pixels.
        box_b: The same for the other box.
        min_size: Minimum crop side.

    Returns:
        IoU in [0, 1]; 0 when either box does not have 4 values or the union is empty.
    """
    if len(box_a) != 4 or len(box_b) != 4:
        return 0.0
    ax1, ay1, ax2, ay2 = _ordered(reference_crop_area(box_a, min_size))
    bx1, by1, bx2, by2 = _ordered(reference_crop_area(box_b, min_size))
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return 0.0 if union == 0 else inter / union


def region_guided_term(
    box: Sequence[float], gt: Sequence[float], scale: float = DEFAULT_REGION_SCALE
) -> float:
    """``tanh(scale / (d + 1e-6))`` with ``d`` the distance between the boxes' centres.

    Args:
        box: ``(x1, y1, x2, y2)`` in full-resolution pixels.
        gt: The ground-truth box in the same frame.
        scale: Region-Guided scale (200 in the reference); distances of ``scale`` pixels give
            tanh(1) = 0.76.

    Returns:
        A value in (0, 1]; 1 at zero distance.
    """
    cx, cy = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
    rx, ry = (gt[0] + gt[2]) / 2.0, (gt[1] + gt[3]) / 2.0
    distance = math.hypot(rx - cx, ry - cy) + DISTANCE_EPSILON
    return math.tanh(scale / distance)


@dataclass(frozen=True, slots=True)
class BoxTarget:
    """The ground truth a stage-1 box is scored against, and the frame the model drew in.

    Attributes:
        gt_full: Ground-truth box in full-resolution pixels (xyxy), or None for questions
            without a box.
        exact: The numbers an exactly right box has (an exact match scores 2). By default the
            LRS-GRO ``bbox`` as written (the reference compares the raw lists); with
            ``exact_match_frame: view`` the ground truth in the model's frame (the SFT targets'
            numbers).
        frame: The model's box frame (:class:`ReferenceFrame` or :class:`ProcessorFrame`).
    """

    gt_full: tuple[float, float, float, float] | None
    exact: tuple[float, ...] | None
    frame: BoxFrame

    def to_full(self, box: Sequence[float]) -> list[float]:
        """Map a 4-number box from the model's frame to full-resolution pixels."""
        return self.frame.to_full(box)


def box_reward(
    stage1: str,
    target: BoxTarget,
    *,
    scale: float = DEFAULT_REGION_SCALE,
    min_crop: int = DEFAULT_MIN_CROP,
) -> float:
    """IoU of the crop areas plus the Region-Guided term, for the first box of stage 1.

    Args:
        stage1: Stage-1 output.
        target: Ground truth and frame.
        scale: Region-Guided scale.
        min_crop: Minimum crop side of the crop areas compared.

    Returns:
        0 (no box, wrong number of values, non-finite numbers, no ground truth), 2 (exact match),
        else ``crop_area_iou + region_guided_term`` in (0, 2].
    """
    boxes = reference_bboxes(stage1)
    if not boxes:
        return 0.0
    box = boxes[0]
    if len(box) != 4 or target.gt_full is None or len(target.gt_full) != 4:
        return 0.0
    if target.exact is not None and list(box) == list(target.exact):
        return 2.0
    if not all(math.isfinite(v) for v in box):
        return 0.0  # the reference raises on int(nan) / int(inf)
    full = target.to_full(box)
    gt = [float(v) for v in target.gt_full]
    if not all(math.isfinite(v) for v in full):
        return 0.0
    value = crop_area_iou(full, gt, min_crop) + region_guided_term(full, gt, scale)
    return value if math.isfinite(value) else 0.0


# ---------------------------------------------------------------------------------------------
# Answer
# ---------------------------------------------------------------------------------------------


def normalise_answer(text: str | None) -> str:
    """Lower-case, strip and remove trailing full stops (the reference's normalisation)."""
    return (text or "").strip().lower().rstrip(".")


def answer_reward(
    stage1: str,
    stage2: str,
    ground_truth: str | None,
    similarity: SimilarityFn | None,
    *,
    threshold: float = DEFAULT_ANSWER_THRESHOLD,
) -> float:
    """1 for the exact answer, else the similarity (1 at or above ``threshold``).

    Args:
        stage1: Stage-1 output.
        stage2: Stage-2 output; ``""`` when not cut (the answer is then read from stage 1).
        ground_truth: The reference answer.
        similarity: ``similarity(ground_truth, answer)`` in [0, 1] (WordNet path similarity);
            None counts exact matches only.
        threshold: Similarity counted as fully correct.

    Returns:
        A value in [0, 1].
    """
    answer = normalise_answer(reference_tag(stage2 if stage2 != "" else stage1, "answer"))
    gt = normalise_answer(ground_truth)
    if not gt:
        return 0.0
    if answer == gt:
        return 1.0
    if similarity is None:
        return 0.0
    best = float(similarity(gt, answer))
    return best if best < threshold else 1.0


def default_similarity() -> SimilarityFn | None:
    """The reference's ``synonyms_degree`` similarity on the project's WordNet set-up.

    Both strings are lemmatised as nouns, then the best WordNet ``path_similarity`` over all
    synset pairs is returned (:func:`zoomearth.eval.scoring.best_path_similarity`). As in the
    reference, a WordNet failure counts as similarity 0 (logged once).

    Returns:
        ``similarity(a, b) -> float`` in [0, 1], or None (a warning is logged) when the scorer
        module is not available.
    """
    try:
        from zoomearth.eval.scoring import _lemmatize, best_path_similarity
    except ImportError as exc:
        log.warning(NO_SIMILARITY_TEMPLATE.format(error=exc))
        return None
    failed: list[str] = []

    def similarity(a: str, b: str) -> float:
        try:
            return float(best_path_similarity(_lemmatize(a.lower()), _lemmatize(b.lower())))
        except (OSError, LookupError, ValueError) as exc:  # WordNetMissingError is an OSError
            if not failed:
                failed.append(str(exc))
                log.warning(NO_SIMILARITY_TEMPLATE.format(error=exc))
            return 0.0

    return similarity


# ---------------------------------------------------------------------------------------------
# TRL reward functions
# ---------------------------------------------------------------------------------------------


def _column(kwargs: Mapping[str, Any], name: str, n: int) -> list[Any]:
    values = kwargs.get(name)
    if values is None:
        return [None] * n
    return list(values)


def target_from_row(
    row: Mapping[str, Any], box_frame: str = "reference", exact_column: str = "bbox"
) -> BoxTarget:
    """Build a :class:`BoxTarget` from one row of GRPO columns (see :mod:`zoomearth.train.data`).

    Args:
        row: ``gt_box_full`` (``[]`` or None for no box), the exact-match column, and the frame's
            columns (:func:`frame_from_row`).
        box_frame: ``reference`` or ``processor``.
        exact_column: ``bbox`` (the LRS-GRO numbers) or ``gt_box_view`` (the model-frame numbers).

    Returns:
        The target.
    """
    gt_full, gt_exact = row.get("gt_box_full"), row.get(exact_column)
    full = tuple(float(v) for v in gt_full) if gt_full else None
    exact = tuple(float(v) for v in gt_exact) if gt_exact else None
    return BoxTarget(
        full if full is not None and len(full) == 4 else None,  # type: ignore[arg-type]
        exact,
        frame_from_row(row, box_frame),
    )


def make_reward_funcs(
    *,
    box_frame: BoxFrameName = "reference",
    region_scale: float = DEFAULT_REGION_SCALE,
    min_crop: int = DEFAULT_MIN_CROP,
    answer_threshold: float = DEFAULT_ANSWER_THRESHOLD,
    exact_match_frame: str = "reference",
    similarity: SimilarityFn | None | str = "default",
) -> list[Callable[..., list[float]]]:
    """The three rewards as TRL reward functions, in the order format, box, answer.

    Each is called as ``f(prompts=..., completions=..., **columns)`` and reads the rollout's extra
    fields ``stage1`` and ``stage2`` (texts) and the GRPO dataset columns ``gt_box_full``,
    ``bbox``, ``gt_box_view``, ``scene_size`` (``reference`` frame), ``overview_spec`` and
    ``overview_seen`` (``processor`` frame) and ``ground_truth``.

    Args:
        box_frame: The frame of the model's boxes: ``reference`` (the reference's 512-long-side
            overview; ZoomEarth-3B) or ``processor`` (the overview as the processor resized it;
            general Qwen2.5-VL models).
        region_scale: Region-Guided scale.
        min_crop: Minimum crop side of the compared crop areas.
        answer_threshold: Similarity counted as a correct answer.
        exact_match_frame: ``reference`` (compare the box written with the LRS-GRO ``bbox``
            numbers, as the reference does) or ``view`` (with the ground truth in the model's
            frame, as written in the SFT targets).
        similarity: A similarity function, None (exact matches only) or ``"default"``
            (:func:`default_similarity`, looked up on first use).

    Returns:
        ``[format_reward, box_reward, answer_reward]`` (named so, for TRL's logs).

    Raises:
        ValueError: Unknown ``box_frame``.
    """
    if box_frame not in BOX_FRAMES:
        raise ValueError(UNKNOWN_FRAME_TEMPLATE.format(frame=box_frame))
    exact_column = "gt_box_view" if exact_match_frame == "view" else "bbox"
    frame_columns: tuple[str, ...] = (
        ("scene_size",) if box_frame == "reference" else ("overview_spec", "overview_seen")
    )
    state: dict[str, SimilarityFn | None] = {}

    def _similarity() -> SimilarityFn | None:
        if similarity != "default":
            return similarity  # type: ignore[return-value]
        if "fn" not in state:
            state["fn"] = default_similarity()
        return state["fn"]

    def _texts(
        completions: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> tuple[list[str], list[str]]:
        # Rollout fields when present; else the completion itself is stage 1 (not cut).
        if kwargs.get("stage1") is not None:
            stage1 = [str(a) if a is not None else "" for a in kwargs["stage1"]]
        else:
            stage1 = [_completion_text(c) for c in completions]
        stage2 = [str(b) if b is not None else "" for b in _column(kwargs, "stage2", len(stage1))]
        return stage1, stage2

    def format_reward_fn(prompts: Any = None, completions: Any = (), **kwargs: Any) -> list[float]:
        stage1, stage2 = _texts(completions, kwargs)
        return [format_reward(a, b) for a, b in zip(stage1, stage2, strict=True)]

    def box_reward_fn(prompts: Any = None, completions: Any = (), **kwargs: Any) -> list[float]:
        stage1, _ = _texts(completions, kwargs)
        n = len(stage1)
        names = ("gt_box_full", exact_column, *frame_columns)
        columns = {name: _column(kwargs, name, n) for name in names}
        out = []
        for i, text in enumerate(stage1):
            row = {name: values[i] for name, values in columns.items()}
            if not row["gt_box_full"]:
                out.append(0.0)
                continue
            target = target_from_row(row, box_frame, exact_column)
            out.append(box_reward(text, target, scale=region_scale, min_crop=min_crop))
        return out

    def answer_reward_fn(prompts: Any = None, completions: Any = (), **kwargs: Any) -> list[float]:
        stage1, stage2 = _texts(completions, kwargs)
        truths = _column(kwargs, "ground_truth", len(stage1))
        fn = _similarity()
        return [
            answer_reward(a, b, gt, fn, threshold=answer_threshold)
            for a, b, gt in zip(stage1, stage2, truths, strict=True)
        ]

    format_reward_fn.__name__ = "format_reward"
    box_reward_fn.__name__ = "box_reward"
    answer_reward_fn.__name__ = "answer_reward"
    return [format_reward_fn, box_reward_fn, answer_reward_fn]


def _completion_text(completion: Any) -> str:
    """The text of a TRL completion (a string, or a list of message dicts)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], Mapping):
        content = completion[-1].get("content", "")
        if isinstance(content, str):
            return content
        return "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
    return str(completion or "")
