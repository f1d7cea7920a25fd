r"""Rewards of the two-stage ZoomEarth rollout: format, box (IoU + Region-Guided) and answer.

The semantics follow the reference method's GRPO reward functions exactly by default (see
``docs/train.md`` for the worked cases):

**Format** (:func:`format_reward`), 1 or 0. A rollout *cut* when stage 1 emitted a box and a
stage 2 was generated after the crop. Cut: stage 1 has a non-empty ``<think>`` and a
``"bbox_2d": [...]`` list of numbers, stage 2 a non-empty ``<think>`` and ``<answer>``. Not cut:
stage 1 has a non-empty ``<think>`` and ``<answer>``. Tags are read with the reference's pattern
``<tag\s*>\s*(.*?)\s*</tag\s*>`` (first occurrence, stripped; empty content counts as absent).

**Box** (:func:`box_reward`), 0 to 2. The *first* ``"bbox_2d"`` list of stage 1 against the
ground-truth box:

* no box, a box without exactly 4 numbers, or no ground-truth box: 0;
* the box written is exactly the ground truth (``BoxTarget.exact``): 2;
* otherwise ``IoU(crop(box), crop(gt)) + tanh(scale / (d + 1e-6))``: both boxes in full-resolution
  pixels, ``crop`` the reference's minimum-crop area (:func:`reference_crop_area`: integer
  truncation, a ``min_crop`` square centred on the box -- both sides -- when either side is
  smaller, clamped at 0 only), ``d`` the distance between the two boxes' centres in
  full-resolution pixels and ``scale`` the Region-Guided scale (200).

**Answer** (:func:`answer_reward`), 0 to 1. The answer of stage 2 when cut, else of stage 1;
answer and ground truth lower-cased, stripped, trailing full stops removed. Empty ground truth:
0; equal: 1; otherwise the WordNet path similarity of the two, counted as 1 at or above
``threshold`` (0.8) and kept as is below it.

The one deliberate difference from the reference code: the model's box is mapped to
full-resolution pixels from the frame the model actually saw (the processor's multiple-of-28
overview, :func:`zoomearth.agent.frames.planner_box_to_full`), where the reference multiplied by
``max(W, H) / 512`` (ignoring the 512 -> 504 resize, an error of up to 1.6 %).

:func:`make_reward_funcs` wraps the three as TRL reward functions (``f(prompts, completions,
**kwargs) -> list[float]``) reading the rollout's ``stage1`` / ``stage2`` texts and the dataset
columns. Nothing here imports torch, transformers or trl.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

from zoomearth.geometry import PixelBox, ViewSpec

__all__ = [
    "DEFAULT_ANSWER_THRESHOLD",
    "DEFAULT_MIN_CROP",
    "DEFAULT_REGION_SCALE",
    "BoxTarget",
    "SimilarityFn",
    "answer_reward",
    "box_reward",
    "crop_area_iou",
    "default_similarity",
    "extract_bboxes",
    "extract_tag",
    "format_reward",
    "make_reward_funcs",
    "normalise_answer",
    "reference_crop_area",
    "region_guided_term",
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

#: A word/phrase similarity in [0, 1] (WordNet path similarity for the reference semantics).
SimilarityFn = Callable[[str, str], float]

NO_SIMILARITY_TEMPLATE: Final = (
    "WordNet similarity is not available ({error}); the answer reward counts exact matches only. "
    "Install the WordNet data (see docs/train.md) or pass a similarity function."
)

_BBOX_RE: Final = re.compile(r'"bbox_2d"\s*:\s*\[(.*?)\]', re.DOTALL)


@lru_cache(maxsize=16)
def _tag_re(tag: str) -> re.Pattern[str]:
    safe = re.escape(tag)
    return re.compile(rf"<{safe}\s*>\s*(.*?)\s*</{safe}\s*>", re.S)


def extract_tag(text: str | None, tag: str) -> str | None:
    """The stripped content of the first ``<tag> ... </tag>`` block, or None.

    Args:
        text: Model output (None is treated as empty).
        tag: Tag name, e.g. ``think`` or ``answer``.

    Returns:
        The content (may be ``""`` for an empty block), or None when there is no closed block.
    """
    m = _tag_re(tag).search(text or "")
    return m.group(1).strip() if m else None


def extract_bboxes(text: str | None) -> list[list[float]]:
    """Every ``"bbox_2d": [...]`` list of numbers in the text, in order.

    A list whose items are not all numbers (``[]``, ``["a", 1]``) is skipped, as in the reference;
    a list of numbers of the wrong length is kept (the box reward then gives 0).

    Args:
        text: Model output.

    Returns:
        The lists, each as floats.
    """
    boxes: list[list[float]] = []
    for inner in _BBOX_RE.findall(text or ""):
        try:
            boxes.append([float(x.strip()) for x in inner.split(",")])
        except ValueError:
            continue
    return boxes


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
            bool(extract_tag(stage1, "think"))
            and bool(extract_tag(stage2, "think"))
            and bool(extract_tag(stage2, "answer"))
            and bool(extract_bboxes(stage1))
        )
    else:
        ok = bool(extract_tag(stage1, "think")) and bool(extract_tag(stage1, "answer"))
    return 1.0 if ok else 0.0


def reference_crop_area(box: Sequence[float], min_size: int = DEFAULT_MIN_CROP) -> list[float]:
    """The crop area the reference's box reward compares (not the crop the agent reads).

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
            ``exact_match_frame: view`` the ground truth in the model's overview frame.
        overview: The overview view the model saw (its full-resolution region and rendered size).
        seen: ``(width, height)`` at which the model saw the overview (for Qwen2.5-VL the
            multiple-of-28 size); the model's box is in pixels of this image.
    """

    gt_full: tuple[float, float, float, float] | None
    exact: tuple[float, ...] | None
    overview: ViewSpec
    seen: tuple[int, int]

    def to_full(self, box: Sequence[float]) -> PixelBox:
        """Map a 4-number box from the model's overview frame to full-resolution pixels."""
        from zoomearth.agent.frames import planner_box_to_full

        return planner_box_to_full(box, "pixels", self.overview, self.seen)


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
        0 (no box, wrong number of values, no ground truth), 2 (exact match), else
        ``crop_area_iou + region_guided_term`` in (0, 2].
    """
    boxes = extract_bboxes(stage1)
    if not boxes:
        return 0.0
    box = boxes[0]
    if len(box) != 4 or target.gt_full is None or len(target.gt_full) != 4:
        return 0.0
    if target.exact is not None and list(box) == list(target.exact):
        return 2.0
    full = target.to_full(box).as_list()
    gt = list(target.gt_full)
    return crop_area_iou(full, gt, min_crop) + region_guided_term(full, gt, scale)


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
    answer = normalise_answer(extract_tag(stage2 if stage2 != "" else stage1, "answer"))
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
    gt_full: Sequence[float] | None,
    gt_exact: Sequence[float] | None,
    overview: Mapping[str, Any] | str,
    seen: Sequence[int],
) -> BoxTarget:
    """Build a :class:`BoxTarget` from GRPO dataset columns (see :mod:`zoomearth.train.data`).

    Args:
        gt_full: ``gt_box_full`` column (``[]`` or None for no box).
        gt_exact: The exact-match numbers (``bbox`` or ``gt_box_view`` column).
        overview: ``overview_spec`` column: ``ViewSpec.to_dict()`` (or its JSON text).
        seen: ``overview_seen`` column: ``[width, height]``.

    Returns:
        The target.
    """
    spec = json.loads(overview) if isinstance(overview, str) else dict(overview)
    view = ViewSpec(
        int(spec.get("view_id", 0)),
        PixelBox(*(float(v) for v in spec["region_xyxy"])),
        int(spec["width"]),
        int(spec["height"]),
    )
    full = tuple(float(v) for v in gt_full) if gt_full else None
    exact = tuple(float(v) for v in gt_exact) if gt_exact else None
    return BoxTarget(
        full if full is not None and len(full) == 4 else None,  # type: ignore[arg-type]
        exact,
        view,
        (int(seen[0]), int(seen[1])),
    )


def make_reward_funcs(
    *,
    region_scale: float = DEFAULT_REGION_SCALE,
    min_crop: int = DEFAULT_MIN_CROP,
    answer_threshold: float = DEFAULT_ANSWER_THRESHOLD,
    exact_match_frame: str = "reference",
    similarity: SimilarityFn | None | str = "default",
) -> list[Callable[..., list[float]]]:
    """The three rewards as TRL reward functions, in the order format, box, answer.

    Each is called as ``f(prompts=..., completions=..., **columns)`` and reads the rollout's extra
    fields ``stage1`` and ``stage2`` (texts) and the GRPO dataset columns ``gt_box_full``,
    ``bbox``, ``gt_box_view``, ``overview_spec``, ``overview_seen`` and ``ground_truth``.

    Args:
        region_scale: Region-Guided scale.
        min_crop: Minimum crop side of the compared crop areas.
        answer_threshold: Similarity counted as a correct answer.
        exact_match_frame: ``reference`` (compare the box written with the LRS-GRO ``bbox``
            numbers, as the reference does) or ``view`` (with the ground truth in the model's
            overview frame, as written in the SFT targets).
        similarity: A similarity function, None (exact matches only) or ``"default"``
            (:func:`default_similarity`, looked up on first use).

    Returns:
        ``[format_reward, box_reward, answer_reward]`` (named so, for TRL's logs).
    """
    exact_column = "gt_box_view" if exact_match_frame == "view" else "bbox"
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
        rows = zip(
            stage1,
            _column(kwargs, "gt_box_full", n),
            _column(kwargs, exact_column, n),
            _column(kwargs, "overview_spec", n),
            _column(kwargs, "overview_seen", n),
            strict=True,
        )
        out = []
        for text, gt_full, exact, spec, seen in rows:
            if not gt_full or spec is None or seen is None:
                out.append(0.0)
                continue
            target = target_from_row(gt_full, exact, spec, seen)
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
