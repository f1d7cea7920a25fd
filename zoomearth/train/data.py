"""``zoomearth train prepare``: LRS-GRO records + images -> SFT sequences and GRPO prompts.

Input: LRS-GRO-format JSONL (``question_id``, ``image_name``, ``question``, ``ground_truth``,
``bbox`` (``[]`` or ``[x1, y1, x2, y2]`` in the frame whose long side is 1024 pixels of the
original), ``type``, ``category`` ...) and the folder holding the images (any raster the scene
engine opens: GeoTIFF, PNG, JPEG; large ones are read with bounded memory).

The data follows one protocol profile (:mod:`zoomearth.agent.profiles`; ``profile`` argument,
default the setting ``planner_profile`` resolved against ``planner_model``), recorded in every row
as ``profile``, because the model learns the inputs it will be given:

``zoomearth`` (ZoomEarth-3B and checkpoints trained like it):

* the overview: the reference's -- the whole image resized with PIL bicubic to long side 512
  (:func:`zoomearth.scene.reference.render_reference_overview`), once per scene, as
  ``OUT/images/<scene>.overview.png``;
* the stage-1 input: the raw text of the profile (the prompt file ``planner_prompt`` with the
  question substituted, :meth:`ZoomEarthProfile.stage1_text`), stored as ``prompt_text``;
* the box written in stage 1 (``gt_box_view``): the ground truth in the 512 overview's frame,
  ``full / max(max(W, H) / 512, 1)`` rounded to integers (the frame the reference's trainer and
  evaluation scale back with);
* the crop: the reference's crop window for that written box
  (:func:`~zoomearth.agent.profiles.reference_crop_xyxy`) resized with PIL bicubic to long side 512
  (:func:`zoomearth.scene.reference.render_reference_crop`);
* the SFT sequence: ``prompt_text`` then ``target_text`` = the stage-1 text cut before
  ``<answer>`` (:func:`~zoomearth.agent.protocol.stage2_prefix`) + the crop's image placeholder +
  the stage-2 text -- exactly the reference's stage-2 input followed by its output.

``agent`` (general VLMs, the planner's ``chat`` layout): the overview rendered with long side
``overview_side``; the box in pixels of the overview as the processor sees it (for Qwen2.5-VL the
multiple-of-28 size: 512 x 512 is seen as 504 x 504); the crop the graph reads for that box (the
agent's minimum crop, snapped to whole pixels), rendered with long side ``view_side``;
``messages``: the conversation the planner is shown at inference
(:func:`zoomearth.train.chat.agent_conversation`, i.e. ``build_conversation`` of the graph's
request) -- user = overview + the user section (question, scene facts, tools section), assistant
= the stage-1 text, user = the zoom caption the graph writes + the crop, assistant = the stage-2
text. The prompt sections (``planner_prompt``) and the tools offered (``tools``; default: the tool
registry's, as the agent offers them) are written once to ``OUT/agent_prompt.json``
(:class:`~zoomearth.train.chat.AgentPrompt`), which GRPO's rollouts build their conversations
from; GRPO rows carry ``scene_info`` (the scene facts the graph gives).

Both: the ground truth in full-resolution pixels, ``bbox * max(W, H) / 1024`` (``gt_box_full``,
kept as LRS-GRO gives it: the box reward's reference box); the target texts are written with
:func:`zoomearth.agent.protocol.format_turn` (stage 1: reasoning + the zoom; stage 2: reasoning +
answer; questions without a box: reasoning + answer in stage 1, no crop). One line per question
in ``OUT/sft.jsonl`` and in ``OUT/grpo.jsonl`` (``prompt`` is the question id, the rollout looks
the row up; the ground truth ``ground_truth``, ``bbox``, ``gt_box_full``, ``gt_box_view``; the
overview and its frames; the source scene path for stage-2 crops).

Image paths in the JSONL files are relative to ``OUT``. Lines are appended and flushed one by one;
running again skips question ids already written (a torn last line is dropped first), so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from zoomearth.errors import BoxError, ZoomEarthError
from zoomearth.geometry import PixelBox, ViewSpec, validate_box

if TYPE_CHECKING:
    from zoomearth.config import Settings

__all__ = [
    "LRS_GRO_FRAME",
    "PrepareError",
    "PrepareStats",
    "PreparedQuestion",
    "bbox_to_full",
    "full_to_reference_box",
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

#: Reasoning of the SFT targets (LRS-GRO has answers and boxes, no reasoning text); the turns are
#: written with :func:`zoomearth.agent.protocol.format_turn`.
STAGE1_ZOOM_THINK: Final = (
    "The {kind} in question is too small to judge in the overview; I will look closer at it."
)
STAGE2_THINK: Final = "The closer view shows the {kind} clearly."
GLOBAL_THINK: Final = "The overview shows the whole scene, which is enough to answer."

BAD_RECORD_TEMPLATE: Final = (
    "Line {line} of {path} is not an LRS-GRO record ({error}); every line needs question_id, "
    "image_name, question and ground_truth."
)
NO_INPUT_TEMPLATE: Final = "The records file {path} does not exist; give an LRS-GRO JSONL file."
NO_IMAGES_TEMPLATE: Final = "The image folder {path} does not exist; give the folder of the images."
PROFILE_TEMPLATE: Final = "Cannot prepare data for the {profile} profile: {error}"
NO_PROMPT_FILE_TEMPLATE: Final = (
    "{out} already holds rows but no {path}: they were prepared by an earlier version (crops "
    "continuing the assistant turn) or for the zoomearth profile, and new agent rows would not "
    "match them. Prepare into a new output folder."
)
PROMPT_CHANGED_TEMPLATE: Final = (
    "{path} was written with other prompt sections or tools than this run would use; the rows "
    "already there would not match the new ones. Prepare into a new output folder, or use the "
    "same planner_prompt and tools."
)


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
        profile: The protocol profile the data follows.
        inexact_overviews: Scenes whose ``zoomearth`` overview is approximate (larger than
            ``zoomearth_exact_overview_max_pixels``).
    """

    written: int = 0
    skipped_existing: int = 0
    with_crop: int = 0
    missing_images: int = 0
    bad_boxes: int = 0
    scenes: int = 0
    profile: str = "agent"
    inexact_overviews: int = 0
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
            "profile": self.profile,
            "inexact_overviews": self.inexact_overviews,
        }


@dataclass(frozen=True)
class PreparedQuestion:
    """One prepared question (the two JSONL lines are built from it).

    Attributes:
        record: The LRS-GRO record as read.
        profile: ``zoomearth`` or ``agent``.
        scene_path: Absolute path of the source image.
        scene_size: ``(W, H)`` full-resolution pixels.
        overview: The overview view (region = the whole image).
        seen: ``(width, height)`` at which the processor shows the overview to the model.
        overview_png: Overview image path relative to the output folder.
        overview_exact: Whether the overview has the reference's exact pixels (``zoomearth``).
        gt_full: Ground-truth box in full-resolution pixels, or None.
        gt_view: Ground-truth box as the SFT target writes it (integers): the 512 overview's frame
            (``zoomearth``) or the seen overview's (``agent``); None without a usable box.
        crop: The crop view (its region is the crop window), or None.
        crop_png: Crop image path relative to the output folder, or None.
        prompt_text: The stage-1 input: the raw profile text (``zoomearth``; ``""`` for
            ``agent``).
        stage1: Stage-1 target text.
        stage2: Stage-2 target text (``""`` without a crop).
        scene_info: The scene facts the graph gives the planner (``agent``).
        messages: ``agent``: the whole trajectory's conversation as the planner is shown it
            (:func:`~zoomearth.train.chat.messages_to_dicts`), the stage-2 text last.
    """

    record: Mapping[str, Any]
    profile: str
    scene_path: str
    scene_size: tuple[int, int]
    overview: ViewSpec
    seen: tuple[int, int]
    overview_png: str
    overview_exact: bool
    gt_full: PixelBox | None
    gt_view: tuple[int, int, int, int] | None
    crop: ViewSpec | None
    crop_png: str | None
    prompt_text: str
    stage1: str
    stage2: str
    scene_info: Mapping[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] | None = None

    def target_text(self) -> str:
        """What the model writes after the stage-1 input, the crop's placeholder included."""
        from zoomearth.agent.protocol import VISION_PLACEHOLDER, stage2_prefix

        if self.crop_png is None:
            return self.stage1
        return stage2_prefix(self.stage1) + VISION_PLACEHOLDER + self.stage2

    def sft_row(self) -> dict[str, Any]:
        """The ``sft.jsonl`` line."""
        images = [self.overview_png] + ([self.crop_png] if self.crop_png is not None else [])
        row: dict[str, Any] = {
            **self._common(),
            "crop": self.crop_png,
            "crop_spec": self.crop.to_dict() if self.crop is not None else None,
            "stage1": self.stage1,
            "stage2": self.stage2,
            "images": images,
        }
        if self.profile == "zoomearth":
            row["prompt_text"] = self.prompt_text
            row["target_text"] = self.target_text()
            return row
        row["messages"] = self.messages
        return row

    def grpo_row(self) -> dict[str, Any]:
        """The ``grpo.jsonl`` line."""
        row = {
            "prompt": str(self.record["question_id"]),
            **self._common(),
            "bbox": [float(v) for v in self.record.get("bbox") or []],
            "gt_box_full": self.gt_full.as_list() if self.gt_full is not None else [],
            "gt_box_view": [float(v) for v in self.gt_view] if self.gt_view is not None else [],
        }
        if self.profile == "zoomearth":
            row["prompt_text"] = self.prompt_text
        else:
            row["scene_info"] = dict(self.scene_info)
        return row

    def _common(self) -> dict[str, Any]:
        r = self.record
        return {
            "question_id": str(r["question_id"]),
            "profile": self.profile,
            "image_path": self.scene_path,
            "question": str(r["question"]),
            "ground_truth": str(r["ground_truth"]),
            "type": str(r.get("type") or ("global" if not r.get("bbox") else "object")),
            "category": str(r.get("category") or ""),
            "scene_size": list(self.scene_size),
            "overview": self.overview_png,
            "overview_spec": self.overview.to_dict(),
            "overview_seen": list(self.seen),
            "overview_exact": self.overview_exact,
        }


def bbox_to_full(bbox: Iterable[float], width: int, height: int) -> PixelBox:
    """An LRS-GRO ``bbox`` (long side 1024 frame) in full-resolution pixels.

    Args:
        bbox: ``[x1, y1, x2, y2]`` in the frame whose long side is 1024 pixels.
        width: Original image width in pixels.
        height: Original image height in pixels.

    Returns:
        ``bbox * max(width, height) / 1024`` (xyxy, floats) -- for images of at least 512 px the
        same floats as the reference trainer's ``bbox * scale / 2``.
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
    return _to_grid(box, sx, sy, region.x1, region.y1, seen)


def full_to_reference_box(
    box: PixelBox, width: int, height: int, side: int = 512
) -> tuple[int, int, int, int]:
    """A full-resolution box in integer pixels of the reference's 512-long-side overview.

    The inverse of :class:`zoomearth.train.rewards.ReferenceFrame` (``full = box * factor``),
    rounded to whole pixels, at least one pixel wide and high, inside the overview.

    Args:
        box: Full-resolution box.
        width: Image width.
        height: Image height.
        side: The overview's long side.

    Returns:
        ``(x1, y1, x2, y2)`` integers in the overview frame.
    """
    from zoomearth.train.rewards import ReferenceFrame

    frame = ReferenceFrame(width, height, side)
    inverse = 1.0 / frame.factor
    return _to_grid(box, inverse, inverse, 0.0, 0.0, frame.overview_size())


def _to_grid(
    box: PixelBox, sx: float, sy: float, ox: float, oy: float, size: tuple[int, int]
) -> tuple[int, int, int, int]:
    def axis(lo: float, hi: float, scale: float, origin: float, n: int) -> tuple[int, int]:
        a = min(max(round((lo - origin) * scale), 0), n - 1)
        b = min(max(round((hi - origin) * scale), a + 1), n)
        return a, b

    x1, x2 = axis(box.x1, box.x2, sx, ox, size[0])
    y1, y2 = axis(box.y1, box.y2, sy, oy, size[1])
    return x1, y1, x2, y2


def stage_texts(
    record: Mapping[str, Any], box_view: tuple[int, int, int, int] | None
) -> tuple[str, str]:
    """The SFT target texts of a question, written with :func:`format_turn`.

    Args:
        record: The LRS-GRO record (``ground_truth``, ``type``).
        box_view: The box the target writes (model frame), or None (no crop).

    Returns:
        ``(stage1, stage2)``; ``stage2`` is ``""`` without a box.
    """
    from zoomearth.agent.protocol import format_turn

    answer = str(record["ground_truth"]).strip()
    if box_view is None:
        return format_turn(GLOBAL_THINK, answer=answer), ""
    kind = "object" if str(record.get("type") or "object") == "object" else "region"
    stage1 = format_turn(
        STAGE1_ZOOM_THINK.format(kind=kind), [{"bbox_2d": list(box_view), "label": kind}]
    )
    return stage1, format_turn(STAGE2_THINK.format(kind=kind), answer=answer)


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


def _has_rows(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def _save_png(rgb: Any, path: Path) -> None:
    from PIL import Image

    from zoomearth.temporaries import temporary_sibling

    # An owner-named temporary: a killed export leaves litter the next start can sweep.
    tmp = temporary_sibling(path)
    try:
        Image.fromarray(rgb, "RGB").save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


@dataclass
class _SceneEntry:
    scene: Any
    overview: ViewSpec
    seen: tuple[int, int]
    png: str
    exact: bool
    facts: dict[str, Any] = field(default_factory=dict)


class _Preparer:
    """The per-profile steps of :func:`prepare` (overview, written box, crop, stage-1 input)."""

    def __init__(
        self,
        settings: Settings,
        profile: str,
        out: Path,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        self.settings = settings
        self.profile = profile
        self.out = out
        self.zoomearth: Any = None
        self.agent: Any = None
        if profile == "zoomearth":
            from zoomearth.agent.base import PlannerError
            from zoomearth.agent.profiles import ZoomEarthProfile, load_zoomearth_prompt

            try:
                self.zoomearth = ZoomEarthProfile(load_zoomearth_prompt(settings.planner_prompt))
            except PlannerError as exc:
                raise PrepareError(PROFILE_TEMPLATE.format(profile=profile, error=exc)) from None
        else:
            from zoomearth.train.chat import AGENT_PROMPT_FILE, AgentPrompt, ChatLayoutError

            self.agent = AgentPrompt.from_settings(settings, tools)
            path = out / AGENT_PROMPT_FILE
            if path.exists():
                try:
                    same = AgentPrompt.read(out).same_as(self.agent)
                except ChatLayoutError:
                    same = False
                if not same:
                    raise PrepareError(PROMPT_CHANGED_TEMPLATE.format(path=path))
            elif any(_has_rows(out / name) for name in (SFT_FILE, GRPO_FILE)):
                raise PrepareError(NO_PROMPT_FILE_TEMPLATE.format(out=out, path=path))
            else:
                self.agent.write(out)

    def open_scene(self, path: Path, name: str) -> _SceneEntry:
        from zoomearth.agent.frames import seen_size
        from zoomearth.scene import Scene

        scene = Scene.open(path, settings=self.settings, progress=False)
        png = f"{IMAGES_DIR}/{_safe_name(Path(name).stem)}.overview.png"
        if self.zoomearth is not None:
            from zoomearth.scene.reference import render_reference_overview

            width, height = scene.size
            rgb, exact = render_reference_overview(
                scene,
                exact_max_pixels=int(self.settings.zoomearth_exact_overview_max_pixels),
                max_size=self.zoomearth.side,
            )
            spec = ViewSpec(0, PixelBox(0, 0, width, height), rgb.shape[1], rgb.shape[0])
        else:
            view = scene.render(None, self.settings.overview_side)
            rgb, exact, spec = view.rgb, False, view.spec
        if not (self.out / png).exists():
            _save_png(rgb, self.out / png)
        facts: dict[str, Any] = {}
        if self.agent is not None:
            from zoomearth.train.chat import scene_facts

            facts = scene_facts(scene)
        return _SceneEntry(scene, spec, seen_size(spec.width, spec.height), png, exact, facts)

    def crop(
        self, entry: _SceneEntry, gt_full: PixelBox, qid: str
    ) -> tuple[tuple[int, int, int, int], ViewSpec, str]:
        """The written box, the crop view and its PNG for a ground-truth box (BoxError if none)."""
        from zoomearth.agent.frames import planner_box_to_full, zoom_region

        scene = entry.scene
        width, height = scene.size
        inside, _clip = validate_box(gt_full, width, height)
        png = f"{IMAGES_DIR}/{_safe_name(qid)}.crop.png"
        if self.zoomearth is not None:
            from zoomearth.agent.profiles import reference_crop_xyxy
            from zoomearth.scene.reference import render_reference_crop
            from zoomearth.train.rewards import ReferenceFrame

            side = self.zoomearth.side
            written = full_to_reference_box(inside, width, height, side)
            full = ReferenceFrame(width, height, side).to_full(written)
            window = reference_crop_xyxy(full, width, height, self.zoomearth.min_crop)
            rgb = render_reference_crop(scene, window, max_size=side)
            spec = ViewSpec(1, PixelBox(*window), rgb.shape[1], rgb.shape[0])
        else:
            written = full_to_seen_box(inside, entry.overview, entry.seen)
            mapped = planner_box_to_full(written, "pixels", entry.overview, entry.seen)
            # As the graph's zoom: snapped to whole pixels, inside the image.
            region, _warning = zoom_region(
                mapped, width, height, self.settings.min_crop, snap=True
            )
            view = scene.render(region, self.settings.view_side, view_id=1)
            rgb, spec = view.rgb, view.spec
        _save_png(rgb, self.out / png)
        return written, spec, png

    def prompt_text(self, record: Mapping[str, Any]) -> str:
        """The ``zoomearth`` stage-1 input text (``""`` for ``agent``)."""
        if self.zoomearth is None:
            return ""
        return str(self.zoomearth.stage1_text(str(record["question"])))

    def messages(
        self,
        record: Mapping[str, Any],
        entry: _SceneEntry,
        crop: tuple[ViewSpec, str] | None,
        stage1: str,
        stage2: str,
    ) -> list[dict[str, Any]] | None:
        """``agent``: the trajectory's conversation as the planner is shown it (None otherwise).

        Stage 2's request (stage-1 turn, the zoom the graph records for the crop) through
        ``build_conversation``, then the stage-2 text as the last assistant message.
        """
        if self.agent is None:
            return None
        from zoomearth.agent.conversation import ChatMessage, TextPart
        from zoomearth.train.chat import agent_conversation, first_zoom, messages_to_dicts

        images = {0: entry.png}
        question = str(record["question"])
        if crop is None:
            conversation = agent_conversation(question, entry.facts, entry.overview, self.agent)
            tail = ChatMessage("assistant", (TextPart(stage1),))
        else:
            view, png = crop
            images[view.view_id] = png
            zoom = first_zoom(stage1)
            conversation = agent_conversation(
                question,
                entry.facts,
                entry.overview,
                self.agent,
                stage1=stage1,
                crop=view,
                label=zoom.label if zoom is not None else None,
            )
            tail = ChatMessage("assistant", (TextPart(stage2),))
        return messages_to_dicts((*conversation.messages, tail), images)


def prepare(
    records: str | os.PathLike[str] | Iterable[Mapping[str, Any]],
    image_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    settings: Settings | None = None,
    profile: str | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    limit: int | None = None,
    progress: bool = False,
) -> PrepareStats:
    """Turn LRS-GRO records and their images into ``sft.jsonl`` and ``grpo.jsonl``.

    Args:
        records: The JSONL path, or the records themselves.
        image_dir: Folder of the images named by ``image_name``.
        out_dir: Output folder (created; existing outputs are resumed).
        settings: Uses ``planner_profile``/``planner_model`` (when ``profile`` is None),
            ``planner_prompt``, ``zoomearth_exact_overview_max_pixels`` (``zoomearth``) and
            ``overview_side``, ``view_side``, ``min_crop`` (``agent``); defaults when None.
        profile: ``zoomearth``, ``agent`` or ``auto``; None = the setting ``planner_profile``.
        tools: ``agent``: the tool specs the prompts offer, as the graph gives them
            (``ToolRegistry.tool_specs_for_prompt()``); None: the process-wide registry's (what
            :class:`zoomearth.api.Agent` offers by default); ``[]``: no tools section.
        limit: Stop after this many newly written questions.
        progress: Show a progress bar.

    Returns:
        The counts.

    Raises:
        PrepareError: Missing input file or folder, malformed records, no prompt file for the
            ``zoomearth`` profile, or (``agent``) an output folder prepared with other prompt
            sections or tools.
    """
    from zoomearth.agent.base import PlannerError
    from zoomearth.agent.profiles import resolve_profile

    if settings is None:
        from zoomearth.config import load_settings

        settings = load_settings()
    try:
        chosen, _reason = resolve_profile(
            profile if profile is not None else settings.planner_profile, settings.planner_model
        )
    except PlannerError as exc:
        raise PrepareError(str(exc)) from None
    images = Path(image_dir)
    if not images.is_dir():
        raise PrepareError(NO_IMAGES_TEMPLATE.format(path=images))
    out = Path(out_dir)
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    sft_path, grpo_path = out / SFT_FILE, out / GRPO_FILE
    done_sft, done_grpo = _done_ids(sft_path), _done_ids(grpo_path)
    stream = iter_records(records) if isinstance(records, str | os.PathLike) else iter(records)
    steps = _Preparer(settings, chosen, out, tools)
    stats = PrepareStats(profile=chosen)
    scenes: dict[str, _SceneEntry] = {}

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
                        old.scene.close()
                    scenes.clear()
                    scenes[name] = steps.open_scene(path, name)
                    stats.scenes += 1
                    if chosen == "zoomearth" and not scenes[name].exact:
                        stats.inexact_overviews += 1
                        stats.notes.append(f"{name}: overview approximated (image too large)")
                entry = scenes[name]
                width, height = entry.scene.size

                gt_full = gt_view = crop = crop_png = None
                bbox = record.get("bbox") or []
                if len(bbox) == 4:
                    # gt_box_full stays as LRS-GRO gives it (the reward's reference box); the
                    # written box and the crop use the part inside the image.
                    gt_full = bbox_to_full(bbox, width, height)
                    try:
                        gt_view, crop, crop_png = steps.crop(entry, gt_full, qid)
                    except BoxError as exc:
                        stats.bad_boxes += 1
                        stats.notes.append(f"{qid}: unusable box {bbox} ({exc})")
                stage1, stage2 = stage_texts(record, gt_view)
                shown = (crop, crop_png) if crop is not None and crop_png is not None else None
                item = PreparedQuestion(
                    record=record,
                    profile=chosen,
                    scene_path=str(path.resolve()),
                    scene_size=(width, height),
                    overview=entry.overview,
                    seen=entry.seen,
                    overview_png=entry.png,
                    overview_exact=entry.exact,
                    gt_full=gt_full,
                    gt_view=gt_view,
                    crop=crop,
                    crop_png=crop_png,
                    prompt_text=steps.prompt_text(record),
                    stage1=stage1,
                    stage2=stage2,
                    scene_info=entry.facts,
                    messages=steps.messages(record, entry, shown, stage1, stage2),
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
            entry.scene.close()
        if bar is not None:
            bar.close()
    return stats
