"""The offline ``rules`` planner: explicit analyst commands, no vision-language model.

It reads the question with data tables of regular expressions and writes ZoomEarth protocol text
(``<think>`` with zoom JSON, ``<tool_call>``, ``<answer>``), which the graph parses exactly like a
model's reply. It is stateless (each turn is recomputed from the request) and deterministic.

What it understands, in order of precedence for *where* to look:

1. explicit full-resolution pixel boxes: ``box 100,200,612,712``, ``[100, 200, 612, 712]``,
   ``x1=100 y1=200 x2=612 y2=712``, ``from (100, 200) to (612, 712)``; pixel points
   ``pixel (1200, 3400)``, ``col=1200 row=3400``, ``(1200, 3400) px``;
2. map coordinates: in the scene CRS (``at 500123.5, 4999870``, ``easting 500123 northing
   4999870``, ``500123E 4999870N``; another CRS when named, ``EPSG:32633``) or longitude/latitude
   (``lon 12.34 lat 45.6``, ``45.6N 12.34E``, ``45.6, 12.34 (lat, lon)``, ``lat/lon 45.6, 12.34``)
   converted through the scene CRS; a point becomes a box of the minimum crop size around it;
3. location phrases (:data:`LOCATION_PHRASES`): corners (``top-right``, ``upper left``,
   ``north-east``, ``NE``), edge centres (``top centre``, ``west-central``), halves (``top
   half``), outer thirds (``left-most``, ``far north``, ``bottom edge``), the centre (``in the
   middle``, ``centre of the image``), and sides in a locational context (``on the left``, ``in
   the north``, ``eastern part``, ``right-hand side``, ``top of the image``). Phrases that merely
   contain such words (``right-angled``, ``what is left``, ``top speed``, ``left of the road``,
   ``city centre``) are masked first by :data:`NEGATIVE_PHRASES`;
4. the whole image (:data:`WHOLE_IMAGE_PATTERN`: ``the whole image``, ``entire scene``,
   ``everywhere``, ``the full image``), when nothing above matched: no zoom, and each tool is given
   the whole scene explicitly (the graph's ``bbox_2d`` over the whole overview), never the thread's
   latest zoom.

Map coordinates on a scene whose geotransform has a zero pixel size (not invertible) are not
placed; the answer says so and asks for a fixed georeference or pixel boxes.

and *what* to do (:func:`find_tool_intents`): ``remove clouds`` / ``cloud-free`` / ``decloud`` ->
cloud removal; ``denoise`` / ``reduce noise`` / ``despeckle`` -> denoising; ``segment`` /
``outline`` / ``extract`` / ``delineate`` / ``mask`` -> segmentation; ``remove the X`` / ``erase``
/ ``inpaint`` -> an edit with a removal instruction; ``what changed`` / ``changes between 2009 and
2020`` / ``new buildings since 2014`` / ``detect change`` -> change detection, with the dates the
question names in the tool's ``before`` / ``after`` arguments (older first; ``since A`` sets
``before``, a lone date ``after``; :func:`~zoomearth.agent.text.intents.find_change_dates`).
A tool is called only when the request offers it (:attr:`PlanRequest.tools`); its arguments are
filled from its JSON Schema with what the question gives (a box argument, a text prompt, an
instruction, a mode) and validated; when a required argument cannot be inferred the tool is
skipped and the answer says why.

It reads at most :data:`MAX_QUESTION_CHARS` characters of the question (the reply says when the
rest was ignored), and every pattern is linear in the text's length (see ``_NUM`` in
:mod:`zoomearth.agent.text.coordinates`), so one ``plan`` call is bounded;
``benchmarks/adversarial_text.py`` measures the patterns on adversarial text.

Turns:

* first turn (empty transcript): zoom boxes (in pixels of the overview view *as seen*: this backend
  sees no resize, so :attr:`PlanReply.seen_sizes` are the views' own sizes) and tool calls in the
  same reply. **Assumption about the graph:** zooms run before tool calls and a tool without a box
  argument applies to the most recent zoom region (the last box of the turn); when the tool's
  schema has a box argument it is filled with the region in full-resolution pixels, one call per
  region. When nothing actionable is found the first turn answers directly.
* later turns, or any ``final`` turn: an answer summarising the tool results, or saying plainly that
  open questions need a vision-language model, how to configure one, and where it zoomed.

``PlanRequest.scene_info`` contract (the keys this backend reads; all optional; the same names and
meanings as :meth:`zoomearth.scene.Scene.info`):

* ``width``, ``height`` (int): full-resolution raster size in pixels (fallback: the overview
  view's region),
* ``crs`` (str | None): the scene CRS as ``EPSG:n`` or WKT; None when not georeferenced,
* ``transform`` (list of 6 floats | None): the affine pixel->map transform ``a, b, c, d, e, f``
  (``x = a*col + b*row + c``, ``y = d*col + e*row + f``, pixel corner convention, as
  ``list(rasterio_transform)[:6]``); None when not georeferenced,
* ``georeferenced`` (bool): False disables map coordinates even if a transform is present.

Where the parts live: this module holds the planner (:class:`RulesPlanner`), its reply texts and
the analysis of one question; the text understanding is in :mod:`zoomearth.agent.text` --
location phrases (:mod:`~zoomearth.agent.text.locations`), coordinates
(:mod:`~zoomearth.agent.text.coordinates`), tool intents (:mod:`~zoomearth.agent.text.intents`)
and argument filling from a JSON Schema (:mod:`~zoomearth.agent.text.arguments`). Their public
names, and every compiled pattern, are re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Final

from zoomearth.agent.base import CoordMode, Layout, Planner, PlanReply, PlanRequest
from zoomearth.agent.protocol import clean_text, format_turn, format_zoom
from zoomearth.agent.text import coordinates as _coordinates
from zoomearth.agent.text import intents as _intents
from zoomearth.agent.text.arguments import (
    _box_keys,
    _CannotFill,
    _fill_arguments,
    _set_whole_scene,
    _validate_arguments,
    is_box_argument,
)
from zoomearth.agent.text.coordinates import (
    CoordinateMention,
    _georef,
    _map_to_pixel,
    _reproject,
    find_coordinates,
)
from zoomearth.agent.text.intents import TOOL_INTENTS, ToolIntent, _find_tool, find_tool_intents
from zoomearth.agent.text.locations import (
    LOCATION_PHRASES,
    NEGATIVE_PHRASES,
    WHOLE_IMAGE_PATTERN,
    LocationMatch,
    PhraseRule,
    find_locations,
    find_whole_image,
)
from zoomearth.agent.text.locations import Region as Region
from zoomearth.errors import BoxError
from zoomearth.geometry import (
    PixelBox,
    ViewSpec,
    full_to_view,
    is_degenerate_transform,
    min_crop_xyxy,
    validate_box,
)

if TYPE_CHECKING:
    from zoomearth.config import Settings

__all__ = [
    "LOCATION_PHRASES",
    "MAX_QUESTION_CHARS",
    "NEGATIVE_PHRASES",
    "TOOL_INTENTS",
    "WHOLE_IMAGE_PATTERN",
    "CoordinateMention",
    "LocationMatch",
    "PhraseRule",
    "RulesPlanner",
    "ToolIntent",
    "find_coordinates",
    "find_locations",
    "find_tool_intents",
    "find_whole_image",
    "is_box_argument",
]

# Every compiled pattern of the question readers that is not public above, under the name it had
# when it lived in this module: tests/agent/test_adversarial_text.py and
# benchmarks/adversarial_text.py find the patterns by walking this module's globals (a new
# pattern in zoomearth.agent.text belongs here too; tests/agent/test_text_modules.py checks it).
_BOX_PATTERNS: Final = _coordinates._BOX_PATTERNS
_KEYED_RE: Final = _coordinates._KEYED_RE
_LONLAT_PATTERNS: Final = _coordinates._LONLAT_PATTERNS
_HEMI_RE: Final = _coordinates._HEMI_RE
_EASTING_RE: Final = _coordinates._EASTING_RE
_PIXEL_POINT_PATTERNS: Final = _coordinates._PIXEL_POINT_PATTERNS
_XY_PATTERNS: Final = _coordinates._XY_PATTERNS
_EPSG_RE: Final = _coordinates._EPSG_RE
_INTENT_PATTERNS: Final = _intents._INTENT_PATTERNS
_YES_NO_RE: Final = _intents._YES_NO_RE
_DATE_RE: Final = _intents._DATE_RE
_PAIR_RE: Final = _intents._PAIR_RE
_SINCE_RE: Final = _intents._SINCE_RE
_UNTIL_RE: Final = _intents._UNTIL_RE

# ---------------------------------------------------------------------------------------------
# Texts (module-level templates)
# ---------------------------------------------------------------------------------------------

VLM_NEEDED_TEMPLATE: Final = (
    "Answering open questions needs a vision-language model, which the offline rules planner does "
    "not have.{where} Configure one with planner=transformers and planner_model=PATH, or "
    "planner=openai with planner_base_url=URL (see `zoomearth config`)."
)
NOTHING_TO_DO_TEMPLATE: Final = (
    "The rules planner found no region, coordinates or tool command in the question. Name a "
    'region ("top-left", "centre", "box 100,200,612,712", "lon 12.34 lat 45.6") or a '
    'command ("remove clouds", "denoise", "segment the buildings").'
)
ZOOMED_TEMPLATE: Final = " I zoomed on {regions}."
TOOL_RESULTS_TEMPLATE: Final = "Results of the requested tools:\n{lines}"
TOOL_NOT_OFFERED_TEMPLATE: Final = "{what} was requested, but no such tool is available{offered}."
TOOL_ARG_MISSING_TEMPLATE: Final = (
    "The tool {tool} was not called: its required argument {arg!r} cannot be inferred from the "
    "question; give it explicitly or use a vision-language planner."
)
TOOL_ARGS_INVALID_TEMPLATE: Final = (
    "The tool {tool} was not called: the arguments the rules planner could infer are not valid "
    "for it ({reason})."
)
TOOL_NOT_RUN_TEMPLATE: Final = "The tool {tool} was requested but produced no result."
NOT_GEOREFERENCED_TEMPLATE: Final = (
    "The question gives map coordinates ({phrase}), but the image is not georeferenced; give a "
    'full-resolution pixel box instead (e.g. "box 100,200,612,712").'
)
BAD_CRS_TEMPLATE: Final = "The coordinates {phrase} could not be converted: {reason}."
BAD_LONLAT_TEMPLATE: Final = (
    "{phrase} is not a valid longitude/latitude (longitude -180..180, latitude -90..90)."
)
POINT_OUTSIDE_TEMPLATE: Final = (
    "The point {phrase} lies outside the scene (it falls at pixel ({col}, {row}) of a "
    "{width}x{height} image)."
)
DEGENERATE_GEOREF_TEMPLATE: Final = (
    "The coordinates {phrase} cannot be placed: the scene's geotransform has a zero pixel size, "
    "so map coordinates cannot be converted to pixels. Fix the georeference (e.g. gdal_edit.py "
    '-a_ullr ULX ULY LRX LRY IMAGE) or ask with pixel boxes (e.g. "box 100,200,612,712").'
)
BOX_PROBLEM_TEMPLATE: Final = "The box {phrase} cannot be used: {reason}"
NO_STEPS_TEMPLATE: Final = "No steps were left to look closer."
FEEDBACK_TEMPLATE: Final = "The agent reported: {text}"
QUESTION_CUT_TEMPLATE: Final = (
    "The question is {length:,} characters long; the rules planner read only its first {read:,} "
    "characters and ignored the rest."
)

#: The longest question the rules planner reads, in characters; text after it is ignored and the
#: reply says so. With every pattern linear, this bounds the work of one ``plan`` call.
MAX_QUESTION_CHARS: Final = 4000

# ---------------------------------------------------------------------------------------------
# Analysis of one question
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Target:
    label: str
    zoom: PixelBox  # full-resolution box to zoom (the graph applies the minimum crop)
    tool_box: PixelBox  # full-resolution box for a tool's box argument


@dataclass
class _Analysis:
    targets: list[_Target] = field(default_factory=list)
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    user_notes: list[str] = field(default_factory=list)  # also written into the reply text
    whole_image: str | None = None  # the phrase naming the whole image, when it sets the region


def _scene_size(request: PlanRequest, overview: ViewSpec | None) -> tuple[int, int]:
    info = request.scene_info
    width, height = info.get("width"), info.get("height")
    if isinstance(width, int | float) and isinstance(height, int | float) and width > 0 < height:
        return int(width), int(height)
    if overview is not None:
        return int(math.ceil(overview.region.x2)), int(math.ceil(overview.region.y2))
    return 0, 0


def _fmt(v: float) -> str:
    return f"{v:.12g}"


def _resolve_coordinate(
    c: CoordinateMention, request: PlanRequest, size: tuple[int, int], min_crop: int, out: _Analysis
) -> None:
    width, height = size
    crs, coeffs = _georef(request.scene_info)
    # A zero pixel size: map coordinates exist but cannot be placed on pixels.
    degenerate = coeffs is not None and is_degenerate_transform(coeffs)
    if c.kind == "box":
        x1, y1, x2, y2 = c.values
        label = "box [" + ", ".join(_fmt(v) for v in c.values) + "]"
        try:
            box, warning = validate_box(PixelBox(x1, y1, x2, y2), width, height)
        except BoxError as exc:
            out.errors.append(BOX_PROBLEM_TEMPLATE.format(phrase=c.phrase, reason=exc))
            return
        if warning:
            out.notes.append(warning)
        out.targets.append(_Target(label, box, box))
        return
    px: tuple[float, float] | None
    x, y = c.values
    if c.frame == "pixel":
        px, label = (x, y), f"pixel ({_fmt(x)}, {_fmt(y)})"
    elif c.frame == "lonlat":
        label = f"lon {_fmt(x)}, lat {_fmt(y)}"
        if not (abs(x) <= 180 and abs(y) <= 90):
            out.errors.append(BAD_LONLAT_TEMPLATE.format(phrase=c.phrase))
            return
        if coeffs is None or crs is None:
            out.errors.append(NOT_GEOREFERENCED_TEMPLATE.format(phrase=c.phrase))
            return
        if degenerate:
            out.errors.append(DEGENERATE_GEOREF_TEMPLATE.format(phrase=c.phrase))
            return
        try:
            mx, my = _reproject(x, y, "EPSG:4326", crs)
        except ValueError as exc:
            out.errors.append(BAD_CRS_TEMPLATE.format(phrase=c.phrase, reason=exc))
            return
        px = _map_to_pixel(mx, my, coeffs)
    else:
        label = f"map ({_fmt(x)}, {_fmt(y)})"
        px = None
        if coeffs is not None:
            mx, my = x, y
            if c.crs and crs and c.crs.upper() != crs.upper():
                try:
                    mx, my = _reproject(x, y, c.crs, crs)
                except ValueError as exc:
                    out.errors.append(BAD_CRS_TEMPLATE.format(phrase=c.phrase, reason=exc))
                    return
                label = f"{c.crs} ({_fmt(x)}, {_fmt(y)})"
            px = _map_to_pixel(mx, my, coeffs)
        if c.frame == "xy" and coeffs is None:
            px, label = (x, y), f"pixel ({_fmt(x)}, {_fmt(y)})"
        elif c.frame == "xy":
            inside_map = px is not None and 0 <= px[0] < width and 0 <= px[1] < height
            if not inside_map and 0 <= x < width and 0 <= y < height:
                px, label = (x, y), f"pixel ({_fmt(x)}, {_fmt(y)})"
        if px is None:
            template = DEGENERATE_GEOREF_TEMPLATE if degenerate else NOT_GEOREFERENCED_TEMPLATE
            out.errors.append(template.format(phrase=c.phrase))
            return
    if px is None:  # only a non-invertible transform gives no pixel
        out.errors.append(DEGENERATE_GEOREF_TEMPLATE.format(phrase=c.phrase))
        return
    if not (0 <= px[0] < width and 0 <= px[1] < height):
        out.errors.append(
            POINT_OUTSIDE_TEMPLATE.format(
                phrase=c.phrase, col=f"{px[0]:.0f}", row=f"{px[1]:.0f}", width=width, height=height
            )
        )
        return
    point = PixelBox(px[0], px[1], px[0], px[1])
    box = min_crop_xyxy(point, width, height, min_crop)
    out.targets.append(_Target(label, box, box))


def _read_question(question: str) -> tuple[str, str | None]:
    """The part of ``question`` the planner reads, and a note when the rest is ignored.

    At most :data:`MAX_QUESTION_CHARS` characters are read; a word or number cut in two at the
    limit is ignored too.
    """
    if len(question) <= MAX_QUESTION_CHARS:
        return question, None
    head = question[:MAX_QUESTION_CHARS]
    if not (head[-1].isspace() or question[MAX_QUESTION_CHARS].isspace()):
        words = head.rsplit(maxsplit=1)
        if len(words) == 2:
            head = words[0]
    return head, QUESTION_CUT_TEMPLATE.format(length=len(question), read=len(head))


def _analyse(request: PlanRequest, min_crop: int) -> _Analysis:
    """Read the question of ``request``: where to look and which tools to call."""
    out = _Analysis()
    question, cut = _read_question(request.question)
    if cut is not None:
        out.notes.append(cut)
        out.user_notes.append(cut)
    overview = request.views.get(request.overview_id)
    size = _scene_size(request, overview)
    for mention in find_coordinates(question):
        _resolve_coordinate(mention, request, size, min_crop, out)
    if not out.targets and not out.errors and overview is not None:
        region = overview.region
        for match in find_locations(question):
            fx1, fy1, fx2, fy2 = match.region
            box = PixelBox(
                region.x1 + fx1 * region.width,
                region.y1 + fy1 * region.height,
                region.x1 + fx2 * region.width,
                region.y1 + fy2 * region.height,
            )
            out.targets.append(_Target(match.name, box, box))
    if not out.targets and not out.errors:
        out.whole_image = find_whole_image(question)
    whole = PixelBox(0.0, 0.0, float(size[0]), float(size[1]))
    offered = [t for t in request.tools if isinstance(t, Mapping)]
    for intent in find_tool_intents(question):
        human = TOOL_INTENTS[intent.kind][0]
        tool = _find_tool(intent.kind, offered)
        if tool is None:
            names = ", ".join(str(t.get("name")) for t in offered)
            out.skipped.append(
                TOOL_NOT_OFFERED_TEMPLATE.format(
                    what=human, offered=f" (tools: {names})" if names else ""
                )
            )
            continue
        name = str(tool.get("name"))
        parameters = tool.get("parameters") or {}
        if not isinstance(parameters, Mapping):
            parameters = {}
        boxes: list[PixelBox | None] = [t.tool_box for t in out.targets] or [None]
        for tool_box in boxes:
            try:
                args = _fill_arguments(intent.kind, intent, parameters, tool_box, whole)
            except _CannotFill as exc:
                out.skipped.append(TOOL_ARG_MISSING_TEMPLATE.format(tool=name, arg=str(exc)))
                break
            if out.whole_image is not None:
                _set_whole_scene(args, parameters, overview, request.overview_id, whole)
            if intent.kind == "change_detection":
                _set_change_dates(args, parameters, intent)
            # The runner's own check (the tool's Args model) when the graph gives it; the JSON
            # Schema the planner was shown otherwise.
            problem = (
                request.check_arguments(name, args)
                if request.check_arguments is not None
                else _validate_arguments(args, parameters)
            )
            if problem is not None:
                out.skipped.append(TOOL_ARGS_INVALID_TEMPLATE.format(tool=name, reason=problem))
                break
            out.tool_calls.append((name, args))
            if not any(k in args for k in _box_keys(parameters)):
                break  # without a box argument the tool applies to the latest zoom: call it once
    return out



def _set_change_dates(
    args: dict[str, Any], parameters: Mapping[str, Any], intent: ToolIntent
) -> None:
    """The dates a change question names, in the tool's ``before`` / ``after`` arguments."""
    properties = parameters.get("properties", {})
    if not isinstance(properties, Mapping):
        return
    for key, value in (("before", intent.before), ("after", intent.after)):
        if value is not None and key in properties:
            args[key] = value


# ---------------------------------------------------------------------------------------------
# Protocol text (written through zoomearth.agent.protocol)
# ---------------------------------------------------------------------------------------------


def _box_text(box: PixelBox) -> str:
    return "[" + ", ".join(str(int(round(v))) for v in box.as_list()) + "]"


class RulesPlanner(Planner):
    """The offline default planner: explicit commands, no model (see the module docstring).

    Args:
        settings: The effective settings (``min_crop`` sizes the box around a point).
        pool: Unused (accepted for the common backend signature).
    """

    name: ClassVar[str] = "rules"
    coord_mode: CoordMode = "pixels"
    layout: Layout = "chat"

    def __init__(self, settings: Settings | None = None, pool: Any = None) -> None:
        self._min_crop = int(getattr(settings, "min_crop", 512) or 512)
        self._pool = pool

    def describe(self) -> str:
        """One line naming the backend."""
        return "rules (offline: explicit regions, coordinates and tool commands; no VLM)"

    def plan(self, request: PlanRequest) -> PlanReply:
        """Return protocol text for one turn (never raises on the question's content).

        Args:
            request: The turn's request.

        Returns:
            The reply; ``seen_sizes`` are the views' own rendered sizes.
        """
        seen = {vid: (int(v.width), int(v.height)) for vid, v in request.views.items()}
        analysis = _analyse(request, self._min_crop)
        # A follow-up question in the same thread starts a new first turn.
        if not request.current and not request.final:
            text = self._first_turn(request, analysis)
        else:
            text = self._answer_turn(request, analysis)
        return PlanReply(
            text=text,
            seen_sizes=seen,
            backend=self.name,
            notes=[*analysis.notes],
        )

    # -- turn 1 ---------------------------------------------------------------------------------

    def _first_turn(self, request: PlanRequest, a: _Analysis) -> str:
        overview = request.views.get(request.overview_id)
        if a.errors and not a.targets:
            return format_turn(
                "The question's coordinates cannot be used.",
                answer=" ".join([*a.errors, *a.user_notes]),
            )
        if (not a.targets or overview is None) and not a.tool_calls:
            reasons = " ".join(a.skipped) if a.skipped else NOTHING_TO_DO_TEMPLATE
            if not a.skipped:
                reasons = NOTHING_TO_DO_TEMPLATE + " " + VLM_NEEDED_TEMPLATE.format(where="")
            reasons = " ".join([reasons, *a.user_notes])
            return format_turn("Rules planner: nothing I can act on.", answer=reasons)
        lines: list[str] = ["Rules planner (no vision-language model)."]
        zooms: list[str] = []
        if overview is not None:
            for t in a.targets:
                lines.append(
                    f"The question points to {t.label}: full-resolution pixels {_box_text(t.zoom)}."
                )
                vb = full_to_view(t.zoom, overview)
                zooms.append(format_zoom(vb.as_list(), t.label, request.overview_id))
        if a.whole_image is not None and a.tool_calls:
            lines.append(f'The question names the whole image ("{a.whole_image}").')
        for name, _ in a.tool_calls:
            where = " on that region" if a.targets else ""
            if not a.targets and a.whole_image is not None:
                where = " on the whole image"
            lines.append(f"Calling {name}{where}.")
        lines.extend(a.skipped)
        lines.extend(a.errors)
        lines.extend(a.user_notes)
        think = " ".join(clean_text(line) for line in lines)
        return format_turn(think, zooms, a.tool_calls)

    # -- turn 2+ --------------------------------------------------------------------------------

    def _answer_turn(self, request: PlanRequest, a: _Analysis) -> str:
        zoomed: list[str] = []
        results: list[str] = []
        feedback: list[str] = []
        for entry in request.current:
            if entry.kind == "zoom":
                view = request.views.get(entry.view_id) if entry.view_id is not None else None
                label = entry.data.get("label") if isinstance(entry.data, Mapping) else None
                label = str(label) if label else (clean_text(entry.text) or "a region")
                if view is not None:
                    zoomed.append(
                        f"{label} (full-resolution pixels {_box_text(view.region)}, "
                        f"view {entry.view_id})"
                    )
                else:
                    zoomed.append(label)
            elif entry.kind == "tool_result":
                tool = entry.data.get("tool") if isinstance(entry.data, Mapping) else None
                prefix = f"{tool}: " if tool else ""
                results.append(f"- {prefix}{clean_text(entry.text)}")
            elif entry.kind == "feedback" and entry.text.strip():
                feedback.append(FEEDBACK_TEMPLATE.format(text=clean_text(entry.text)))
        where = ZOOMED_TEMPLATE.format(regions="; ".join(zoomed)) if zoomed else ""
        pieces: list[str] = []
        if request.final and not request.current:
            pieces.append(NO_STEPS_TEMPLATE)
        if results:
            pieces.append(TOOL_RESULTS_TEMPLATE.format(lines="\n".join(results)))
            if where:
                pieces.append(where.strip())
        elif a.tool_calls:
            pieces.extend(TOOL_NOT_RUN_TEMPLATE.format(tool=name) for name, _ in a.tool_calls)
            if where:
                pieces.append(where.strip())
        else:
            pieces.append(VLM_NEEDED_TEMPLATE.format(where=where))
        pieces.extend(a.skipped)
        pieces.extend(a.errors)
        pieces.extend(a.user_notes)
        pieces.extend(feedback[-3:])
        return format_turn("Rules planner: summarising what was done.", answer="\n".join(pieces))
