"""``zoomearth train prepare``: LRS-GRO records + images -> SFT conversations and GRPO prompts.

Input: LRS-GRO-format JSONL (``question_id``, ``image_name``, ``question``, ``ground_truth``,
``bbox`` (``[]`` or ``[x1, y1, x2, y2]`` in the frame whose long side is 1024 pixels of the
original), ``type``, ``category`` ...) and the folder holding the images (any raster the scene
engine opens: GeoTIFF, PNG, JPEG; large ones are read with bounded memory).

Per question (output folder ``OUT``):

* the overview: the whole scene rendered with long side ``overview_side`` (512), written once per
  scene as ``OUT/images/<scene>.overview.png``;
* the ground-truth box in full-resolution pixels, ``bbox * max(W, H) / 1024``, and in the frame
  the model sees: pixels of the *seen* overview (for Qwen2.5-VL the processor's multiple-of-28
  size: 512 x 512 is seen as 504 x 504), rounded to integers -- the box the SFT target writes;
* for questions with a box, the crop exactly as the agent would read it for that written box
  (mapped back to full resolution, minimum ``min_crop`` square, shifted inside the image), rendered
  with long side ``view_side`` (512) as ``OUT/images/<question_id>.crop.png``;
* one line in ``OUT/sft.jsonl``: the two-stage conversation (``messages``) -- user: overview +
  instructions and question (the agent's own prompt template); assistant: stage-1 reasoning with
  the box, the crop, stage-2 reasoning and the answer (no crop and a stage-1 answer for questions
  without a box) -- plus the pieces (``stage1``, ``stage2``, image paths, frames);
* one line in ``OUT/grpo.jsonl``: the prompt (``prompt`` is the question id, the rollout looks the
  row up), the ground truth (``ground_truth``, ``bbox``, ``gt_box_full``, ``gt_box_view``), the
  overview and its frames, and the source scene path for stage-2 crops.

Image paths in the JSONL files are relative to ``OUT``. Lines are appended and flushed one by one;
running again skips question ids already written (a torn last line is dropped first), so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from zoomearth.errors import BoxError, ZoomEarthError
from zoomearth.geometry import PixelBox, ViewSpec, validate_box

if TYPE_CHECKING:
    from zoomearth.config import Settings

__all__ = [
    "LRS_GRO_FRAME",
    "PrepareStats",
    "PreparedQuestion",
    "bbox_to_full",
    "full_to_seen_box",
    "iter_records",
    "load_jsonl",
    "prepare",
    "stage_texts",
]

log = logging.getLogger(__name__)

#: Long side of the frame of LRS-GRO's ``bbox`` field.
LRS_GRO_FRAME: Final = 1024
SFT_FILE: Final = "sft.jsonl"
GRPO_FILE: Final = "grpo.jsonl"
IMAGES_DIR: Final = "images"

#: Stage texts of the SFT targets (LRS-GRO has answers and boxes, no reasoning text).
STAGE1_ZOOM_TEMPLATE: Final = (
    "<think>The {kind} in question is too small to judge in the overview; I will look closer at "
    '{{"bbox_2d": [{x1}, {y1}, {x2}, {y2}], "label": "{label}"}}.</think>'
)
STAGE2_TEMPLATE: Final = (
    "<think>The closer view shows the {kind} clearly.</think><answer>{answer}</answer>"
)
GLOBAL_TEMPLATE: Final = (
    "<think>The overview shows the whole scene, which is enough to answer.</think>"
    "<answer>{answer}</answer>"
)

BAD_RECORD_TEMPLATE: Final = (
    "Line {line} of {path} is not an LRS-GRO record ({error}); every line needs question_id, "
    "image_name, question and ground_truth."
)
NO_INPUT_TEMPLATE: Final = "The records file {path} does not exist; give an LRS-GRO JSONL file."
NO_IMAGES_TEMPLATE: Final = "The image folder {path} does not exist; give the folder of the images."


class PrepareError(ZoomEarthError, ValueError):
    """The input records or folders cannot be used (the message says what to change)."""


@dataclass
class PrepareStats:
    """What :func:`prepare` did.

    Attributes:
        written: Questions written in this run.
        skipped_existing: Questions already in the output (resumed).
        with_crop: Of ``written``, questions with a box (a crop image).
        missing_images: Questions skipped because their image was not found.
        bad_boxes: Questions whose box was unusable (empty, outside); written without a crop.
        scenes: Distinct scenes opened.
    """

    written: int = 0
    skipped_existing: int = 0
    with_crop: int = 0
    missing_images: int = 0
    bad_boxes: int = 0
    scenes: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly counts."""
        return {
            "written": self.written,
            "skipped_existing": self.skipped_existing,
            "with_crop": self.with_crop,
            "missing_images": self.missing_images,
            "bad_boxes": self.bad_boxes,
            "scenes": self.scenes,
        }


@dataclass(frozen=True)
class PreparedQuestion:
    """One prepared question (the two JSONL lines are built from it).

    Attributes:
        record: The LRS-GRO record as read.
        scene_path: Absolute path of the source image.
        scene_size: ``(W, H)`` full-resolution pixels.
        overview: The overview view (region = the whole image).
        seen: ``(width, height)`` at which the model sees the overview.
        overview_png: Overview image path relative to the output folder.
        gt_full: Ground-truth box in full-resolution pixels, or None.
        gt_view: Ground-truth box in the seen-overview frame (integers), or None.
        crop: The crop view, or None.
        crop_png: Crop image path relative to the output folder, or None.
        user_text: The first user message's text (after the overview image).
        stage1: Stage-1 target text.
        stage2: Stage-2 target text (``""`` without a crop).
    """

    record: Mapping[str, Any]
    scene_path: str
    scene_size: tuple[int, int]
    overview: ViewSpec
    seen: tuple[int, int]
    overview_png: str
    gt_full: PixelBox | None
    gt_view: tuple[int, int, int, int] | None
    crop: ViewSpec | None
    crop_png: str | None
    user_text: str
    stage1: str
    stage2: str

    def sft_row(self) -> dict[str, Any]:
        """The ``sft.jsonl`` line."""
        from zoomearth.agent.parsing import cut_before_answer

        user = {
            "role": "user",
            "content": [
                {"type": "image", "image": self.overview_png},
                {"type": "text", "text": self.user_text},
            ],
        }
        if self.crop_png is not None:
            assistant = [
                {"type": "text", "text": cut_before_answer(self.stage1)},
                {"type": "image", "image": self.crop_png},
                {"type": "text", "text": self.stage2},
            ]
        else:
            assistant = [{"type": "text", "text": self.stage1}]
        return {
            **self._common(),
            "crop": self.crop_png,
            "crop_spec": self.crop.to_dict() if self.crop is not None else None,
            "stage1": self.stage1,
            "stage2": self.stage2,
            "messages": [user, {"role": "assistant", "content": assistant}],
        }

    def grpo_row(self) -> dict[str, Any]:
        """The ``grpo.jsonl`` line."""
        return {
            "prompt": str(self.record["question_id"]),
            **self._common(),
            "bbox": [float(v) for v in self.record.get("bbox") or []],
            "gt_box_full": self.gt_full.as_list() if self.gt_full is not None else [],
            "gt_box_view": [float(v) for v in self.gt_view] if self.gt_view is not None else [],
            "user_text": self.user_text,
        }

    def _common(self) -> dict[str, Any]:
        r = self.record
        return {
            "question_id": str(r["question_id"]),
            "image_path": self.scene_path,
            "question": str(r["question"]),
            "ground_truth": str(r["ground_truth"]),
            "type": str(r.get("type") or ("global" if not r.get("bbox") else "object")),
            "category": str(r.get("category") or ""),
            "scene_size": list(self.scene_size),
            "overview": self.overview_png,
            "overview_spec": self.overview.to_dict(),
            "overview_seen": list(self.seen),
        }


def bbox_to_full(bbox: Iterable[float], width: int, height: int) -> PixelBox:
    """An LRS-GRO ``bbox`` (long side 1024 frame) in full-resolution pixels.

    Args:
        bbox: ``[x1, y1, x2, y2]`` in the frame whose long side is 1024 pixels.
        width: Original image width in pixels.
        height: Original image height in pixels.

    Returns:
        ``bbox * max(width, height) / 1024`` (xyxy, floats).
    """
    x1, y1, x2, y2 = (float(v) for v in bbox)
    s = max(width, height) / LRS_GRO_FRAME
    return PixelBox(x1 * s, y1 * s, x2 * s, y2 * s)


def full_to_seen_box(
    box: PixelBox, overview: ViewSpec, seen: tuple[int, int]
) -> tuple[int, int, int, int]:
    """A full-resolution box in integer pixels of the overview as the model sees it.

    The inverse of :func:`zoomearth.agent.frames.planner_box_to_full` (``pixels`` mode), rounded
    to whole pixels and kept at least one pixel wide and high, inside the seen image.

    Args:
        box: Full-resolution box.
        overview: The overview view.
        seen: ``(width, height)`` of the seen overview.

    Returns:
        ``(x1, y1, x2, y2)`` integers in the seen frame.
    """
    region = overview.region
    sx, sy = seen[0] / region.width, seen[1] / region.height

    def axis(lo: float, hi: float, scale: float, origin: float, size: int) -> tuple[int, int]:
        a = min(max(round((lo - origin) * scale), 0), size - 1)
        b = min(max(round((hi - origin) * scale), a + 1), size)
        return a, b

    x1, x2 = axis(box.x1, box.x2, sx, region.x1, seen[0])
    y1, y2 = axis(box.y1, box.y2, sy, region.y1, seen[1])
    return x1, y1, x2, y2


def stage_texts(
    record: Mapping[str, Any], box_view: tuple[int, int, int, int] | None
) -> tuple[str, str]:
    """The SFT target texts of a question.

    Args:
        record: The LRS-GRO record (``ground_truth``, ``type``).
        box_view: The ground-truth box in the seen-overview frame, or None (no crop).

    Returns:
        ``(stage1, stage2)``; ``stage2`` is ``""`` without a box.
    """
    answer = str(record["ground_truth"]).strip()
    if box_view is None:
        return GLOBAL_TEMPLATE.format(answer=answer), ""
    kind = "object" if str(record.get("type") or "object") == "object" else "region"
    x1, y1, x2, y2 = box_view
    stage1 = STAGE1_ZOOM_TEMPLATE.format(kind=kind, x1=x1, y1=y1, x2=x2, y2=y2, label=kind)
    return stage1, STAGE2_TEMPLATE.format(kind=kind, answer=answer)


def load_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All JSON lines of a file (blank lines ignored)."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def iter_records(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Stream LRS-GRO records from a JSONL file.

    Raises:
        PrepareError: A line is not JSON or lacks a required field.
    """
    path = Path(path)
    if not path.is_file():
        raise PrepareError(NO_INPUT_TEMPLATE.format(path=path))
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                for key in ("question_id", "image_name", "question", "ground_truth"):
                    if key not in record:
                        raise KeyError(key)
            except (ValueError, KeyError) as exc:
                raise PrepareError(
                    BAD_RECORD_TEMPLATE.format(line=number, path=path, error=exc)
                ) from None
            yield record


def _done_ids(path: Path) -> set[str]:
    """Question ids already written to a JSONL output; a torn last line is cut off."""
    if not path.exists():
        return set()
    done: set[str] = set()
    good = 0
    with path.open("rb") as fh:
        data = fh.read()
    offset = 0
    for raw in data.splitlines(keepends=True):
        try:
            if not raw.endswith(b"\n"):
                raise ValueError("torn line")
            done.add(str(json.loads(raw)["question_id"]))
            good = offset + len(raw)
        except (ValueError, KeyError):
            break
        offset += len(raw)
    if good != len(data):
        with path.open("r+b") as fh:
            fh.truncate(good)
    return done


def _save_png(rgb: Any, path: Path) -> None:
    from PIL import Image

    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(rgb, "RGB").save(tmp, format="PNG")
    os.replace(tmp, path)


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def prepare(
    records: str | os.PathLike[str] | Iterable[Mapping[str, Any]],
    image_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    settings: Settings | None = None,
    limit: int | None = None,
    progress: bool = False,
) -> PrepareStats:
    """Turn LRS-GRO records and their images into ``sft.jsonl`` and ``grpo.jsonl``.

    Args:
        records: The JSONL path, or the records themselves.
        image_dir: Folder of the images named by ``image_name``.
        out_dir: Output folder (created; existing outputs are resumed).
        settings: Uses ``overview_side``, ``view_side``, ``min_crop`` and ``planner_prompt``
            (defaults when None).
        limit: Stop after this many newly written questions.
        progress: Show a progress bar.

    Returns:
        The counts.

    Raises:
        PrepareError: Missing input file or folder, malformed records.
    """
    from zoomearth.agent.frames import planner_box_to_full, seen_size, zoom_region
    from zoomearth.agent.prompting import load_template
    from zoomearth.scene import Scene

    if settings is None:
        from zoomearth.config import load_settings

        settings = load_settings()
    images = Path(image_dir)
    if not images.is_dir():
        raise PrepareError(NO_IMAGES_TEMPLATE.format(path=images))
    out = Path(out_dir)
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    sft_path, grpo_path = out / SFT_FILE, out / GRPO_FILE
    done_sft, done_grpo = _done_ids(sft_path), _done_ids(grpo_path)
    stream = iter_records(records) if isinstance(records, str | os.PathLike) else iter(records)
    template = load_template(settings.planner_prompt)
    stats = PrepareStats()
    scenes: dict[str, tuple[Any, ViewSpec, tuple[int, int], str]] = {}

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(desc="prepare", unit="q")
    try:
        with (
            sft_path.open("a", encoding="utf-8") as sft,
            grpo_path.open("a", encoding="utf-8") as grpo,
        ):
            for record in stream:
                qid = str(record["question_id"])
                if qid in done_sft and qid in done_grpo:
                    stats.skipped_existing += 1
                    continue
                if limit is not None and stats.written >= limit:
                    break
                name = str(record["image_name"])
                path = images / name
                if not path.is_file():
                    stats.missing_images += 1
                    stats.notes.append(f"{qid}: image {path} not found")
                    continue
                if name not in scenes:
                    # One scene open at a time keeps file handles and caches bounded.
                    for old in scenes.values():
                        old[0].close()
                    scenes.clear()
                    scene = Scene.open(path, settings=settings, progress=False)
                    view = scene.render(None, settings.overview_side)
                    png = f"{IMAGES_DIR}/{_safe_name(Path(name).stem)}.overview.png"
                    if not (out / png).exists():
                        _save_png(view.rgb, out / png)
                    scenes[name] = (
                        scene,
                        view.spec,
                        seen_size(view.spec.width, view.spec.height),
                        png,
                    )
                    stats.scenes += 1
                scene, overview, seen, overview_png = scenes[name]
                width, height = scene.size

                gt_full = gt_view = crop = crop_png = None
                bbox = record.get("bbox") or []
                if len(bbox) == 4:
                    gt_full = bbox_to_full(bbox, width, height)
                    try:
                        # gt_box_full stays as LRS-GRO gives it (the reward's reference box);
                        # the written box and the crop use the part inside the image.
                        inside, _clip = validate_box(gt_full, width, height)
                        gt_view = full_to_seen_box(inside, overview, seen)
                        written = planner_box_to_full(gt_view, "pixels", overview, seen)
                        region, _warning = zoom_region(written, width, height, settings.min_crop)
                        crop_view = scene.render(region, settings.view_side, view_id=1)
                    except BoxError as exc:
                        stats.bad_boxes += 1
                        stats.notes.append(f"{qid}: unusable box {bbox} ({exc})")
                        gt_full = gt_view = None
                    else:
                        crop = crop_view.spec
                        crop_png = f"{IMAGES_DIR}/{_safe_name(qid)}.crop.png"
                        _save_png(crop_view.rgb, out / crop_png)
                user_text = template.render(
                    "user",
                    question=str(record["question"]),
                    tool_section="",
                    has_tools=False,
                    scene={"width": width, "height": height},
                    artifacts=[],
                    coord_mode="pixels",
                    layout="zoomearth",
                )
                stage1, stage2 = stage_texts(record, gt_view)
                item = PreparedQuestion(
                    record=record,
                    scene_path=str(path.resolve()),
                    scene_size=(width, height),
                    overview=overview,
                    seen=seen,
                    overview_png=overview_png,
                    gt_full=gt_full,
                    gt_view=gt_view,
                    crop=crop,
                    crop_png=crop_png,
                    user_text=user_text,
                    stage1=stage1,
                    stage2=stage2,
                )
                if qid not in done_sft:
                    sft.write(json.dumps(item.sft_row(), ensure_ascii=False) + "\n")
                    sft.flush()
                if qid not in done_grpo:
                    grpo.write(json.dumps(item.grpo_row(), ensure_ascii=False) + "\n")
                    grpo.flush()
                stats.written += 1
                stats.with_crop += crop is not None
                if bar is not None:
                    bar.update(1)
    finally:
        for entry in scenes.values():
            entry[0].close()
        if bar is not None:
            bar.close()
    return stats
