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
/ ``inpaint`` -> an edit with a removal instruction. A tool is called only when the request offers
it (:attr:`PlanRequest.tools`); its arguments are filled from its JSON Schema with what the
question gives (a box argument, a text prompt, an instruction, a mode) and validated; when a
required argument cannot be inferred the tool is skipped and the answer says why.

It reads at most :data:`MAX_QUESTION_CHARS` characters of the question (the reply says when the
rest was ignored), and every pattern is linear in the text's length (see ``_NUM`` below), so one
``plan`` call is bounded; ``benchmarks/adversarial_text.py`` measures the patterns on adversarial
text.

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
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Final

from zoomearth.agent.base import CoordMode, Layout, Planner, PlanReply, PlanRequest
from zoomearth.agent.protocol import clean_text, format_turn, format_zoom
from zoomearth.errors import BoxError, GeoreferenceError
from zoomearth.geometry import (
    PixelBox,
    ViewSpec,
    full_to_view,
    is_degenerate_transform,
    map_to_pixel,
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
# Location phrases
# ---------------------------------------------------------------------------------------------

Region = tuple[float, float, float, float]
"""A region as fractions ``(x1, y1, x2, y2)`` of the overview view's full-resolution region."""

_T: Final = 1.0 / 3.0

_SEP: Final = r"[\s_-]*"  # "top right", "top-right", "topright"
_TOP: Final = r"(?:top|upper|north(?:ern)?)"
_BOTTOM: Final = r"(?:bottom|lower|south(?:ern)?)"
_LEFT: Final = r"(?:left|west(?:ern)?)"
_RIGHT: Final = r"(?:right|east(?:ern)?)"
_MID: Final = r"(?:cent(?:re|er|ral)|middle)"
_IMAGE: Final = (
    r"(?:whole\s+|entire\s+)?"
    r"(?:image|scene|picture|photo(?:graph)?|frame|map|tile|view|overview|raster)"
)
_PART: Final = r"(?:side|part|portion|area|region|section|zone|sector|half)"
_EDGE: Final = r"(?:edge|border|margin|strip|fringe|boundary)"
_PREP: Final = r"(?:in|on|at|to(?:wards?)?|along|near|across|from|over|into|within)"
_FAR: Final = r"(?:far|extreme|very)"


@dataclass(frozen=True, slots=True)
class PhraseRule:
    """One row of the location-phrase table.

    Attributes:
        name: Canonical region name, used as the zoom label (``top-right``).
        pattern: Case-insensitive regular expression with word boundaries.
        region: The region as fractions ``(x1, y1, x2, y2)`` of the overview's region.
    """

    name: str
    pattern: re.Pattern[str]
    region: Region


def _rule(name: str, region: Region, *patterns: str) -> PhraseRule:
    return PhraseRule(name, re.compile("|".join(f"(?:{p})" for p in patterns), re.I), region)


def _corner(name: str, vert: str, horiz: str, abbrev: str, region: Region) -> PhraseRule:
    return _rule(
        name,
        region,
        rf"\b{vert}{_SEP}{horiz}\b(?:[\s-]+(?:corner|quadrant|quarter))?",
        rf"\b{horiz}{_SEP}{vert}\b(?:[\s-]+(?:corner|quadrant|quarter))",
        rf"(?-i:\b{abbrev}\b)(?:[\s-]+(?:corner|quadrant|quarter))?",
    )


def _edge_centre(name: str, side: str, region: Region) -> PhraseRule:
    return _rule(name, region, rf"\b{side}{_SEP}{_MID}\b", rf"\b{_MID}{_SEP}{side}\b")


def _half(name: str, side: str, region: Region) -> PhraseRule:
    return _rule(name, region, rf"\b{side}{_SEP}half\b")


def _outer(name: str, side: str, most: str, region: Region) -> PhraseRule:
    return _rule(
        name,
        region,
        rf"\b{most}\b",
        rf"\b{_FAR}[\s-]+{side}\b",
        rf"\b{side}(?:[\s-]+hand)?[\s-]+{_EDGE}\b",
    )


def _side(name: str, side: str, adjective: str, region: Region) -> PhraseRule:
    return _rule(
        name,
        region,
        rf"\b{_PREP}\s+the\s+{side}(?:[\s-]+hand)?\b(?:[\s-]+{_PART}\b)?",
        rf"\b(?:{side}(?:[\s-]+hand)?|{adjective})[\s-]+{_PART}\b",
        rf"\b{side}\s+of\s+the\s+{_IMAGE}\b",
        rf"\b{_PREP}\s+the\s+{adjective}\b(?:[\s-]+{_PART}\b)?",
    )


#: The location-phrase table, matched in this order; each match masks its span for later rows.
LOCATION_PHRASES: Final[tuple[PhraseRule, ...]] = (
    _corner("top-left", _TOP, _LEFT, "NW", (0.0, 0.0, 0.5, 0.5)),
    _corner("top-right", _TOP, _RIGHT, "NE", (0.5, 0.0, 1.0, 0.5)),
    _corner("bottom-left", _BOTTOM, _LEFT, "SW", (0.0, 0.5, 0.5, 1.0)),
    _corner("bottom-right", _BOTTOM, _RIGHT, "SE", (0.5, 0.5, 1.0, 1.0)),
    _edge_centre("top-centre", _TOP, (0.25, 0.0, 0.75, 0.5)),
    _edge_centre("bottom-centre", _BOTTOM, (0.25, 0.5, 0.75, 1.0)),
    _edge_centre("centre-left", _LEFT, (0.0, 0.25, 0.5, 0.75)),
    _edge_centre("centre-right", _RIGHT, (0.5, 0.25, 1.0, 0.75)),
    _half("top half", _TOP, (0.0, 0.0, 1.0, 0.5)),
    _half("bottom half", _BOTTOM, (0.0, 0.5, 1.0, 1.0)),
    _half("left half", _LEFT, (0.0, 0.0, 0.5, 1.0)),
    _half("right half", _RIGHT, (0.5, 0.0, 1.0, 1.0)),
    _outer("top edge", _TOP, rf"(?:top|upper|north(?:ern)?){_SEP}most", (0.0, 0.0, 1.0, _T)),
    _outer(
        "bottom edge",
        _BOTTOM,
        rf"(?:bottom|lower|south(?:ern)?){_SEP}most",
        (0.0, 2 * _T, 1.0, 1.0),
    ),
    _outer("left edge", _LEFT, rf"(?:left|west(?:ern)?){_SEP}most", (0.0, 0.0, _T, 1.0)),
    _outer("right edge", _RIGHT, rf"(?:right|east(?:ern)?){_SEP}most", (2 * _T, 0.0, 1.0, 1.0)),
    _rule(
        "centre",
        (0.25, 0.25, 0.75, 0.75),
        rf"\b{_PREP}\s+the\s+(?:very\s+|exact\s+)?(?:cent(?:re|er)|middle)\b",
        rf"\b(?:cent(?:re|er)|middle)\s+of\s+the\s+{_IMAGE}\b",
        rf"\b{_MID}[\s-]+(?:part|portion|area|region|section|zone|sector|third|square)\b",
        r"\bcentrally\b",
    ),
    _side("top", r"(?:top|upper|north)", "northern", (0.0, 0.0, 1.0, 0.5)),
    _side("bottom", r"(?:bottom|lower|south)", "southern", (0.0, 0.5, 1.0, 1.0)),
    _side("left", r"(?:left|west)", "western", (0.0, 0.0, 0.5, 1.0)),
    _side("right", r"(?:right|east)", "eastern", (0.5, 0.0, 1.0, 1.0)),
)

_DIRS: Final = r"(?:cent(?:re|er)|middle|left|right|top|bottom|north|south|east|west|side|edge)"

#: Phrases that contain location words without naming a part of the image. They are masked
#: (case-insensitively) before :data:`LOCATION_PHRASES` are matched.
NEGATIVE_PHRASES: Final[tuple[re.Pattern[str], ...]] = tuple(
    re.compile(p, re.I)
    for p in (
        r"\bright[\s-]*angle(?:[sd])?\b",
        r"\bright\s+(?:now|away|here|there|after|before|of\s+way)\b",
        r"\bright\s+(?:answer|one|choice|option|size|place|time|way|amount|number|direction)\b",
        r"\ball\s+right\b",
        r"\bwhat(?:'s|\s+is|\s+was|\s+remains|\s+remained)?\s+left\b",
        r"\b(?:anything|nothing|something|still|none|much|many|few|is|are|was|were|be|been|"
        r"being|has|have|had|get|gets|got)\s+(?:\w+\s+)?left\b(?!\s+(?:side|half|part|corner|edge))",
        r"\bleft[\s-]*overs?\b",
        r"\bleft\s+(?:behind|out|alone|unchanged|untouched|intact|empty|unused|open|over|to\s+do)\b",
        r"\b(?:turn(?:s|ed|ing)?|keep|veer(?:s|ed)?|bear(?:s)?)\s+(?:left|right)\b",
        r"\b(?:from\s+)?left\s+to\s+right\b",
        r"\b(?:from\s+)?right\s+to\s+left\b",
        r"\b(?:from\s+)?top\s+to\s+bottom\b",
        r"\bupper\s+(?:limit|bound|case)\b",
        r"\blower\s+(?:limit|bound|case|than)\b",
        r"\b(?:upper|lower)case\b",
        r"\btop\s+(?:speed|priority|priorities|\d+|one|two|three|four|five|six|seven|eight|nine|"
        r"ten)\b",
        r"\btop[\s-]+(?:down|notch|level|rated|view|quality)\b",
        r"\bon\s+top\s+of\b",
        r"\bbottom[\s-]+(?:up|line)\b",
        r"\b(?:north|south|east|west)[\s-]*(?:facing|bound|ward|wards)\b",
        r"\bfacing\s+(?:north|south|east|west)\b",
        r"\b(?:north|south)\s+(?:america|korea|pole|sea|carolina|dakota|africa|island)\b",
        r"\b(?:east|west)\s+(?:coast|africa|asia|bank|indies|germany|virginia)\b",
        r"\bmiddle[\s-]+(?:east(?:ern)?|school|aged?|class|ages)\b",
        r"\b(?:city|town|shopping|data|convention|trade|medical|fitness|research|distribution|"
        r"call|community|sports|visitor)\s+cent(?:re|er)s?\b",
        r"\bcent(?:re|er)[\s-]+pivots?\b",
        # "left of the road", "top of the building": relative to an object, not the image.
        rf"\b{_DIRS}\s+of\s+(?:the|a|an|this|that|each|every|its|their)\s+(?!{_IMAGE}\b)",
    )
)


@dataclass(frozen=True, slots=True)
class LocationMatch:
    """A location phrase found in a text.

    Attributes:
        name: Canonical region name (the :class:`PhraseRule` name).
        region: The region as fractions ``(x1, y1, x2, y2)`` of the overview's region.
        phrase: The matched text.
        start: Start offset of the match in the text.
    """

    name: str
    region: Region
    phrase: str
    start: int


def _mask(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """``text`` with each span blanked to spaces, in one pass (spans ascending, disjoint).

    One pattern's ``finditer`` matches are masked together after its loop (the loop reads the
    string it started with anyway), so masking stays linear however many matches there are.
    """
    if not spans:
        return text
    parts: list[str] = []
    last = 0
    for start, end in spans:
        parts.append(text[last:start])
        parts.append(" " * (end - start))
        last = end
    parts.append(text[last:])
    return "".join(parts)


def find_locations(text: str) -> list[LocationMatch]:
    """Find the location phrases of a question, in order of appearance, one per region.

    Negative phrases are masked first; table rows are tried in order and each match masks its
    span so that ``top-right`` is not also read as ``right``.

    Args:
        text: The question.

    Returns:
        Matches ordered by position; a region named twice is reported once (first mention).
    """
    work = text
    for negative in NEGATIVE_PHRASES:
        work = _mask(work, [m.span() for m in negative.finditer(work)])
    found: list[LocationMatch] = []
    for rule in LOCATION_PHRASES:
        spans: list[tuple[int, int]] = []
        for m in rule.pattern.finditer(work):
            found.append(
                LocationMatch(rule.name, rule.region, text[m.start() : m.end()], m.start())
            )
            spans.append(m.span())
        work = _mask(work, spans)
    found.sort(key=lambda match: match.start)
    unique: list[LocationMatch] = []
    for match in found:
        if all(match.name != u.name for u in unique):
            unique.append(match)
    return unique


#: Phrases naming the whole image ("the whole image", "entire scene", "everywhere", "the full
#: image", "all of the image", "throughout the scene"). They zoom nowhere; a tool then works on the
#: whole scene, set explicitly, so that the graph does not fall back to an earlier zoom.
WHOLE_IMAGE_PATTERN: Final = re.compile(
    r"\b(?:whole|entire|full|complete)[\s-]++"
    r"(?:image|scene|picture|photo(?:graph)?|frame|map|tile|raster|view|overview|extent)\b"
    r"|\beverywhere\b"
    r"|\b(?:all|every\s++part)\s++of\s++(?:the|this)\s++(?:image|scene|picture|raster|map)\b"
    r"|\b(?:throughout|across|all\s++over)\s++(?:the|this)\s++(?:image|scene|picture|raster|map)\b",
    re.I,
)


def find_whole_image(text: str) -> str | None:
    """The first phrase of ``text`` that names the whole image, or None.

    Args:
        text: The question.

    Returns:
        The matched phrase (e.g. ``"entire scene"``), as written.
    """
    m = WHOLE_IMAGE_PATTERN.search(text)
    return None if m is None else m.group(0)


# ---------------------------------------------------------------------------------------------
# Coordinates
# ---------------------------------------------------------------------------------------------

# Every pattern over the question is linear in its length (issue #14), because:
# * whitespace is possessive (``\s*+``): a run is never shared out between two quantifiers;
# * a number is possessive and starts only where no digit precedes it, so no start position
#   inside a digit run rescans the run;
# * a pattern starts at a keyword, a bracket or a number, never inside a whitespace run (a
#   leading "(" is ``(?:\(\s*+)?``, not ``\(?\s*``);
# so each character is scanned from a bounded number of start positions, without backtracking.
# The forms matched are those of the greedy patterns these replace; only a match no longer
# begins with whitespace, so its start is that of its first word and its phrase never includes
# text that an earlier match blanked out.
_WS: Final = r"\s*+"
_NUM: Final = r"[-+]?+(?<!\d)(?:\d++(?:\.\d*+)?+|\.\d++)"
_SEP4: Final = r"(?:\s*+[,;]\s*+|\s++)"
_COMMA: Final = r"\s*+,\s*+"
_OPEN: Final = r"(?:\(\s*+)?"  # an optional "(" a pattern starts with


@dataclass(frozen=True, slots=True)
class CoordinateMention:
    """Coordinates written in a question.

    Attributes:
        kind: ``box`` (four numbers ``x1, y1, x2, y2``) or ``point`` (``x, y``).
        frame: ``pixel`` (full-resolution pixels), ``map`` (map units; of ``crs`` when given, else
            of the scene CRS), ``lonlat`` (degrees; ``values`` are ``lon, lat``) or ``xy`` (a
            point whose frame is not said: map units when that lands inside a georeferenced
            scene, else pixels).
        values: The numbers, in the order named above.
        phrase: The matched text.
        start: Start offset in the question.
        crs: A CRS named in the question (``EPSG:32633``) for ``map`` points, else None.
    """

    kind: str
    frame: str
    values: tuple[float, ...]
    phrase: str
    start: int
    crs: str | None = None


_BOX_PATTERNS: Final = (
    re.compile(
        rf"\b(?:bbox(?:_2d)?|box|rectangle|window|crop|pixels?|px)\b{_WS}[:=]?{_WS}[\[(]?{_WS}"
        rf"({_NUM}){_SEP4}({_NUM}){_SEP4}({_NUM}){_SEP4}({_NUM}){_WS}[\])]?",
        re.I,
    ),
    re.compile(rf"[\[(]{_WS}({_NUM}){_COMMA}({_NUM}){_COMMA}({_NUM}){_COMMA}({_NUM}){_WS}[\])]"),
    re.compile(
        rf"\bfrom{_WS}\(?{_WS}({_NUM}){_COMMA}({_NUM}){_WS}\)?{_WS}"
        rf"to{_WS}\(?{_WS}({_NUM}){_COMMA}({_NUM}){_WS}\)?",
        re.I,
    ),
)
_KEYED_RE: Final = re.compile(
    rf"\b(x1|y1|x2|y2|x_?min|y_?min|x_?max|y_?max|left|top|right|bottom){_WS}[=:]{_WS}({_NUM})",
    re.I,
)
_KEY_INDEX: Final = {
    "x1": 0, "xmin": 0, "x_min": 0, "left": 0,
    "y1": 1, "ymin": 1, "y_min": 1, "top": 1,
    "x2": 2, "xmax": 2, "x_max": 2, "right": 2,
    "y2": 3, "ymax": 3, "y_max": 3, "bottom": 3,
}  # fmt: skip
_LONLAT_PATTERNS: Final = (
    # (pattern, index of lon group, index of lat group)
    (
        re.compile(
            rf"\b(?:lon|lng|long|longitude){_WS}[:=]?{_WS}({_NUM}){_WS}°?{_WS},?{_WS}(?:and\s++)?"
            rf"(?:lat|latitude){_WS}[:=]?{_WS}({_NUM}){_WS}°?",
            re.I,
        ),
        1,
        2,
    ),
    (
        re.compile(
            rf"\b(?:lat|latitude){_WS}[:=]?{_WS}({_NUM}){_WS}°?{_WS},?{_WS}(?:and\s++)?"
            rf"(?:lon|lng|long|longitude){_WS}[:=]?{_WS}({_NUM}){_WS}°?",
            re.I,
        ),
        2,
        1,
    ),
    (
        re.compile(
            rf"\b(?:lat(?:itude)?{_WS}[/,]{_WS}lon(?:gitude)?){_WS}[:=]?{_WS}\(?{_WS}({_NUM})"
            rf"{_COMMA}({_NUM}){_WS}\)?",
            re.I,
        ),
        2,
        1,
    ),
    (
        re.compile(
            rf"\b(?:lon(?:gitude)?{_WS}[/,]{_WS}lat(?:itude)?){_WS}[:=]?{_WS}\(?{_WS}({_NUM})"
            rf"{_COMMA}({_NUM}){_WS}\)?",
            re.I,
        ),
        1,
        2,
    ),
    (
        re.compile(
            rf"{_OPEN}({_NUM}){_COMMA}({_NUM}){_WS}\)?{_WS}"
            rf"\({_WS}lat(?:itude)?{_COMMA}lon(?:gitude)?{_WS}\)",
            re.I,
        ),
        2,
        1,
    ),
    (
        re.compile(
            rf"{_OPEN}({_NUM}){_COMMA}({_NUM}){_WS}\)?{_WS}"
            rf"\({_WS}lon(?:gitude)?{_COMMA}lat(?:itude)?{_WS}\)",
            re.I,
        ),
        1,
        2,
    ),
)
_HEMI_RE: Final = re.compile(
    rf"({_NUM}){_WS}°?{_WS}([NSEW])\b{_WS}[,;]?{_WS}({_NUM}){_WS}°?{_WS}([NSEW])\b"
)
_EASTING_RE: Final = re.compile(
    rf"\beasting{_WS}[:=]?{_WS}({_NUM}){_WS}m?{_WS},?{_WS}(?:and\s++)?northing{_WS}[:=]?{_WS}"
    rf"({_NUM})",
    re.I,
)
_PIXEL_POINT_PATTERNS: Final = (
    re.compile(
        rf"\b(?:pixel|px){_WS}(?:at{_WS})?[:=]?{_WS}\(?{_WS}({_NUM}){_COMMA}({_NUM}){_WS}\)?",
        re.I,
    ),
    re.compile(rf"{_OPEN}({_NUM}){_COMMA}({_NUM}){_WS}\)?{_WS}(?:px|pixels?)\b", re.I),
    re.compile(
        rf"\b(?:col|column){_WS}[=:]?{_WS}({_NUM}){_WS},?{_WS}(?:and\s++)?row{_WS}[=:]?{_WS}"
        rf"({_NUM})",
        re.I,
    ),
)
_XY_PATTERNS: Final = (
    re.compile(
        rf"\bx{_WS}[=:]{_WS}({_NUM}){_WS},?{_WS}(?:and\s++)?y{_WS}[=:]{_WS}({_NUM})", re.I
    ),
    re.compile(
        r"\b(?:at|near|around|coordinates?|coords?|point|location|position|cent(?:red|ered)\s++on)"
        rf"{_WS}[:=]?{_WS}\(?{_WS}({_NUM}){_COMMA}({_NUM}){_WS}\)?",
        re.I,
    ),
)
_EPSG_RE: Final = re.compile(rf"\bEPSG{_WS}:{_WS}(\d{{4,6}})\b", re.I)
_MAX_COORDINATES: Final = 8


def find_coordinates(text: str) -> list[CoordinateMention]:
    """Find pixel boxes, pixel points, map points and lon/lat points written in a question.

    Each match masks its span, so a number is used once; more specific forms are tried first
    (lon/lat, hemispheres, boxes, pixel points, then bare ``x, y`` points).

    Args:
        text: The question.

    Returns:
        The mentions ordered by position (at most 8).
    """
    work = text
    found: list[CoordinateMention] = []
    spans: list[tuple[int, int]] = []  # taken by the current pattern, masked after its loop
    epsg = _EPSG_RE.search(text)
    named_crs = f"EPSG:{epsg.group(1)}" if epsg else None

    def take(
        m: re.Match[str], kind: str, frame: str, values: Sequence[float], crs: str | None = None
    ) -> None:
        found.append(
            CoordinateMention(
                kind, frame, tuple(values), text[m.start() : m.end()].strip(), m.start(), crs
            )
        )
        spans.append(m.span())

    def masked() -> str:
        out = _mask(work, spans)
        spans.clear()
        return out

    for pattern, lon_i, lat_i in _LONLAT_PATTERNS:
        for m in pattern.finditer(work):
            take(m, "point", "lonlat", (float(m.group(lon_i)), float(m.group(lat_i))))
        work = masked()
    for m in _HEMI_RE.finditer(work):
        a, ha, b, hb = float(m.group(1)), m.group(2), float(m.group(3)), m.group(4)
        pair = {ha: a, hb: b}
        if {ha, hb} in ({"N", "E"}, {"N", "W"}, {"S", "E"}, {"S", "W"}):
            lat = pair.get("N", -pair.get("S", 0.0))
            lon = pair.get("E", -pair.get("W", 0.0))
            if abs(lat) <= 90 and abs(lon) <= 180:
                take(m, "point", "lonlat", (lon, lat))
            elif {ha, hb} == {"N", "E"}:  # UTM-style "500123E 4999870N"
                take(m, "point", "map", (pair["E"], pair["N"]), named_crs)
    work = masked()
    for m in _EASTING_RE.finditer(work):
        take(m, "point", "map", (float(m.group(1)), float(m.group(2))), named_crs)
    work = masked()
    for pattern in _BOX_PATTERNS:
        for m in pattern.finditer(work):
            take(m, "box", "pixel", [float(m.group(i)) for i in range(1, 5)])
        work = masked()
    keyed = list(_KEYED_RE.finditer(work))
    values: dict[int, float] = {}
    for m in keyed:
        values.setdefault(_KEY_INDEX[m.group(1).lower()], float(m.group(2)))
    if len(values) == 4:
        start, end = keyed[0].start(), keyed[-1].end()
        found.append(
            CoordinateMention(
                "box", "pixel", tuple(values[i] for i in range(4)), text[start:end], start
            )
        )
        work = _mask(work, [(start, end)])
    for pattern in _PIXEL_POINT_PATTERNS:
        for m in pattern.finditer(work):
            take(m, "point", "pixel", (float(m.group(1)), float(m.group(2))))
        work = masked()
    for pattern in _XY_PATTERNS:
        for m in pattern.finditer(work):
            frame = "map" if named_crs else "xy"
            take(m, "point", frame, (float(m.group(1)), float(m.group(2))), named_crs)
        work = masked()
    found.sort(key=lambda c: c.start)
    return found[:_MAX_COORDINATES]


# ---------------------------------------------------------------------------------------------
# Tool intents
# ---------------------------------------------------------------------------------------------

#: Tool intents: kind -> (human name, substrings that identify a matching registry tool name).
TOOL_INTENTS: Final[dict[str, tuple[str, tuple[str, ...]]]] = {
    "cloud_removal": ("Cloud removal", ("cloud", "haze")),
    "denoise": ("Denoising", ("denois", "noise", "speckle")),
    "segmentation": ("Segmentation", ("segment", "mask")),
    "edit": ("Object removal", ("edit", "inpaint", "eras")),
}

# A command verb at the start of a clause ("Segment ...", "please segment", "can you segment",
# ", then segment"), so that nouns ("road segments", "the outline of") do not count.
_CLAUSE: Final = (
    r"(?:^\s*|(?<=[.;:!?,])\s*|\b(?:please|and|then|to|you|we|i|us|me|let'?s|also|now|first|next|"
    r"finally|just)\s+)"
)
_STOP: Final = (
    r"(?:in|on|at|near|within|inside|from|of|around|across|along|over|to|and|then|with|using|for|"
    r"that|which|where|located|visible|shown|seen|please|top|bottom|left|right|upper|lower|north|"
    r"south|east|west|northern|southern|eastern|western|centre|center|middle|central|by|as|so|"
    r"but|or|if|is|are|image|scene|picture|everywhere|throughout)\b"
)
_TARGET: Final = (
    rf"(?:\s+(?:out\s+)?)?(?:(?:all|every|each|any)\s+(?:of\s+)?)?(?:(?:the|a|an)\s+)?"
    rf"(?P<target>(?!{_STOP})[a-z][a-z0-9-]*(?:\s+(?!{_STOP})[a-z][a-z0-9-]*){{0,3}})?"
)
_CLOUDS: Final = r"(?:thin\s+|thick\s+)?(?:clouds?|cloud\s+cover|haze|cloud\s+shadows?)"
_NOISE: Final = r"(?:sensor\s+|speckle\s+|image\s+|random\s+)?(?:noise|speckle|grain)"
_QUANT: Final = r"(?:the\s+|all\s+(?:the\s+)?|any\s+|some\s+(?:of\s+the\s+)?)?"

_INTENT_PATTERNS: Final[tuple[tuple[str, re.Pattern[str]], ...]] = (
    (
        "cloud_removal",
        re.compile(
            rf"\b(?:remove|clear|eliminate|get\s+rid\s+of|take\s+out|strip)\s+{_QUANT}{_CLOUDS}\b"
            r"|\bde-?cloud\w*|\bde-?haz\w*|\bcloud\s+removal\b|\bcloud[\s-]?free\b",
            re.I,
        ),
    ),
    (
        "denoise",
        re.compile(
            r"\bde-?nois\w*|\bde-?speckl\w*|\bnoise\s+(?:reduction|removal|filtering|suppression)\b"
            rf"|\b(?:reduce|remove|suppress|filter|clean\s+up|clean|get\s+rid\s+of)\s+{_QUANT}"
            rf"{_NOISE}\b",
            re.I,
        ),
    ),
    (
        "segmentation",
        re.compile(
            rf"{_CLAUSE}(?P<verb>segment|outline|extract|delineate|mask|trace|cut\s+out)\b{_TARGET}"
            r"|\b(?P<noun>segmentation|segmentation\s+masks?)\b",
            re.I,
        ),
    ),
    (
        "edit",
        re.compile(
            rf"{_CLAUSE}(?P<verb>remove|erase|delete|get\s+rid\s+of|take\s+out|paint\s+out|inpaint)"
            rf"\b{_TARGET}",
            re.I,
        ),
    ),
)
_YES_NO_RE: Final = re.compile(
    r"^\s*(?:is|are|was|were|does|do|did|has|have|had)\b[^?]*\?\s*$", re.I
)


@dataclass(frozen=True, slots=True)
class ToolIntent:
    """A tool command found in a question.

    Attributes:
        kind: ``cloud_removal``, ``denoise``, ``segmentation`` or ``edit``.
        phrase: The matched text.
        start: Start offset in the question.
        target: The object named after the verb (``buildings`` in "segment the buildings"), if any.
        instruction: For ``edit``: the instruction for the tool ("remove the cars").
    """

    kind: str
    phrase: str
    start: int
    target: str | None = None
    instruction: str | None = None


def find_tool_intents(text: str) -> list[ToolIntent]:
    """Find tool commands in a question, in order of appearance, one per kind.

    Cloud and noise phrases are matched before the generic "remove the X" edit, so "remove the
    clouds" is cloud removal, not an edit. A yes/no question ("Is the image cloud-free?") is not a
    command.

    Args:
        text: The question.

    Returns:
        The intents ordered by position.
    """
    if _YES_NO_RE.match(text):
        return []
    work = text
    found: list[ToolIntent] = []
    for kind, pattern in _INTENT_PATTERNS:
        spans: list[tuple[int, int]] = []
        for m in pattern.finditer(work):
            groups = m.groupdict()
            target = (groups.get("target") or "").strip() or None
            verb = (groups.get("verb") or "").strip()
            start = m.start("verb") if verb else m.start()
            if kind == "edit" and target is None:
                continue  # "remove" with nothing to remove is not a command
            instruction = None
            if kind == "edit":
                verb_word = "inpaint" if verb.lower() == "inpaint" else "remove"
                instruction = f"{verb_word} the {target}"
            phrase = text[start : m.end()].strip()
            found.append(ToolIntent(kind, phrase, start, target, instruction))
            spans.append(m.span())
        work = _mask(work, spans)
    found.sort(key=lambda intent: intent.start)
    unique: list[ToolIntent] = []
    for intent in found:
        if all(intent.kind != u.kind for u in unique):
            unique.append(intent)
    return unique


# ---------------------------------------------------------------------------------------------
# Tool arguments from JSON Schema
# ---------------------------------------------------------------------------------------------

# Region arguments every tool gets in the prompt (tools.base.RESERVED_ARGS): a box in the frame of
# a view. The rules planner never fills them; it zooms in the same turn instead.
_REGION_ARGS: Final = frozenset({"bbox_2d", "view"})
_BOX_ARGS: Final = frozenset(
    {"box", "bbox", "bbox_2d", "box_xyxy", "bbox_xyxy", "region", "region_xyxy", "roi", "xyxy"}
)
_TEXT_ARGS: Final = frozenset(
    {"prompt", "text", "text_prompt", "target", "label", "query", "object", "objects", "classes",
     "class_name", "what", "category"}
)  # fmt: skip
_INSTRUCTION_ARGS: Final = frozenset(
    {"instruction", "edit_instruction", "prompt", "text", "command", "edit"}
)
_MODE_ARGS: Final = frozenset({"mode", "operation", "task", "action", "method", "kind", "type"})
_MODE_PREFERENCES: Final[dict[str, tuple[str, ...]]] = {
    "edit": ("remove", "removal", "inpaint", "erase", "delete"),
    "segmentation": ("box", "auto", "automatic", "everything"),
    "cloud_removal": ("auto", "automatic"),
    "denoise": ("auto", "automatic"),
}


class _CannotFill(Exception):
    """Internal: a required argument cannot be inferred (carries its name)."""


def _resolve(schema: Any, root: Mapping[str, Any]) -> dict[str, Any]:
    """Follow local ``$ref`` and pick the first non-null alternative of ``anyOf``/``oneOf``."""
    for _ in range(8):
        if not isinstance(schema, Mapping):
            return {}
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            node: Any = root
            for part in ref[2:].split("/"):
                node = node.get(part, {}) if isinstance(node, Mapping) else {}
            schema = node
            continue
        for key in ("anyOf", "oneOf", "allOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                non_null = [
                    o for o in options if not (isinstance(o, Mapping) and o.get("type") == "null")
                ]
                schema = non_null[0] if non_null else options[0]
                break
        else:
            return dict(schema)
    return {}


def _types(schema: Mapping[str, Any]) -> set[str]:
    t = schema.get("type")
    if isinstance(t, str):
        return {t}
    if isinstance(t, list):
        return {str(x) for x in t}
    return set()


def _box_value(box: PixelBox, schema: Mapping[str, Any]) -> Any:
    numbers = [int(round(v)) for v in box.as_list()]
    types = _types(schema)
    if "string" in types and "array" not in types:
        return ",".join(str(v) for v in numbers)
    item_types = _types(_resolve(schema.get("items", {}), schema))
    if item_types and "integer" not in item_types and "number" in item_types:
        return [float(v) for v in numbers]
    return numbers


def _text_value(text: str, schema: Mapping[str, Any]) -> Any:
    return [text] if "array" in _types(schema) else text


def _fill_arguments(
    kind: str,
    intent: ToolIntent,
    parameters: Mapping[str, Any],
    box: PixelBox | None,
    whole: PixelBox,
) -> dict[str, Any]:
    """Fill a tool's arguments from its JSON Schema with what the question gives.

    Raises:
        _CannotFill: A required argument has no default and cannot be inferred.
    """
    properties = parameters.get("properties", {})
    required = set(parameters.get("required", []))
    args: dict[str, Any] = {}
    if not isinstance(properties, Mapping):
        return args
    for name, raw_schema in properties.items():
        if name in _REGION_ARGS:
            # The graph's own region arguments (boxes in a view's frame): the tool works on the
            # zoom this turn makes, so they stay unset.
            continue
        schema = _resolve(raw_schema, parameters)
        key = str(name).lower()
        is_required = name in required and "default" not in schema
        value: Any = None
        if is_box_argument(key):
            if box is not None:
                value = _box_value(box, schema)
            elif is_required:
                value = _box_value(whole, schema)
        elif kind == "edit" and key in _INSTRUCTION_ARGS and intent.instruction:
            value = _text_value(intent.instruction, schema)
        elif (
            key in _TEXT_ARGS
            and intent.target
            and "string" in (_types(schema) | _types(_resolve(schema.get("items", {}), parameters)))
        ):
            value = _text_value(intent.target, schema)
        elif (
            key in _MODE_ARGS
            and isinstance(schema.get("enum"), list)
            and (is_required or "default" not in schema)
        ):
            choices = [str(c) for c in schema["enum"]]
            for preferred in _MODE_PREFERENCES.get(kind, ()):
                if preferred == "box" and box is None:
                    continue
                if preferred in choices:
                    value = preferred
                    break
            if value is None and not is_required:
                continue
        if value is not None:
            args[str(name)] = value
        elif is_required:
            raise _CannotFill(str(name))
    return args


def _validate_arguments(args: Mapping[str, Any], parameters: Mapping[str, Any]) -> str | None:
    """The first JSON Schema error of ``args``, or None when they are valid (or unchecked)."""
    if not parameters:
        return None
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - jsonschema is a core dependency
        return None
    try:
        validator_cls = jsonschema.validators.validator_for(parameters)
        validator = validator_cls(dict(parameters))
        error = jsonschema.exceptions.best_match(validator.iter_errors(dict(args)))
    except jsonschema.exceptions.SchemaError as exc:
        return f"its schema is invalid: {exc.message}"
    return None if error is None else error.message


def _find_tool(kind: str, tools: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    for tool in tools:
        if str(tool.get("name", "")).lower() == kind:
            return tool
    for hint in TOOL_INTENTS[kind][1]:
        for tool in tools:
            if hint in str(tool.get("name", "")).lower():
                return tool
    return None


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


def _georef(info: Mapping[str, Any]) -> tuple[str | None, tuple[float, ...] | None]:
    if info.get("georeferenced") is False:
        return None, None
    transform = info.get("transform")
    crs = info.get("crs")
    if not isinstance(transform, Sequence) or len(transform) < 6:
        return (str(crs) if crs else None), None
    try:
        coeffs = tuple(float(v) for v in list(transform)[:6])
    except (TypeError, ValueError):
        return (str(crs) if crs else None), None
    return (str(crs) if crs else None), coeffs


def _map_to_pixel(x: float, y: float, coeffs: tuple[float, ...]) -> tuple[float, float] | None:
    """Map units to full-resolution ``(col, row)``; None when the affine cannot be inverted.

    ``coeffs`` is the scene's pixel->map affine ``x = a*col + b*row + c``, ``y = d*col + e*row +
    f``; a zero pixel size or a NaN coefficient makes it non-invertible
    (:func:`zoomearth.geometry.invert_transform`).
    """
    try:
        return map_to_pixel(x, y, coeffs)
    except GeoreferenceError:
        return None


def _reproject(x: float, y: float, src: str, dst: str) -> tuple[float, float]:
    """Transform one point between CRSs (x/y in the CRSs' traditional GIS order: lon, lat).

    Raises:
        ValueError: When a CRS is unknown or the point cannot be transformed.
    """
    from rasterio.errors import CRSError
    from rasterio.warp import transform

    try:
        xs, ys = transform(src, dst, [x], [y])
    except (CRSError, ValueError) as exc:
        raise ValueError(str(exc)) from None
    if not (math.isfinite(xs[0]) and math.isfinite(ys[0])):
        raise ValueError(f"the point does not exist in {dst}")
    return float(xs[0]), float(ys[0])


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
            problem = _validate_arguments(args, parameters)
            if problem is not None:
                out.skipped.append(TOOL_ARGS_INVALID_TEMPLATE.format(tool=name, reason=problem))
                break
            out.tool_calls.append((name, args))
            if not any(k in args for k in _box_keys(parameters)):
                break  # without a box argument the tool applies to the latest zoom: call it once
    return out


def _set_whole_scene(
    args: dict[str, Any],
    parameters: Mapping[str, Any],
    overview: ViewSpec | None,
    overview_id: int,
    whole: PixelBox,
) -> None:
    """Make a tool work on the whole scene, explicitly (the question named the whole image).

    Left unset, the graph would give the tool the thread's latest zoom (an earlier question's
    crop). The graph's region argument ``bbox_2d`` is set to the whole overview, in the frame of
    the overview view as seen (this backend sees views at their own size), when the tool offers
    it; the tool's own box arguments then keep their meaning (e.g. an object's box prompt) and
    are left as they are. A tool without ``bbox_2d`` gets the whole scene in its own box
    arguments, in full-resolution pixels.
    """
    properties = parameters.get("properties", {})
    if not isinstance(properties, Mapping):
        return
    if overview is not None and "bbox_2d" in properties:
        args["bbox_2d"] = [0, 0, int(overview.width), int(overview.height)]
        if "view" in properties:
            args["view"] = int(overview_id)
        return
    for key in _box_keys(parameters):
        args.setdefault(key, _box_value(whole, _resolve(properties[key], parameters)))


def _box_keys(parameters: Mapping[str, Any]) -> list[str]:
    properties = parameters.get("properties", {})
    if not isinstance(properties, Mapping):
        return []
    return [
        str(k)
        for k in properties
        if k not in _REGION_ARGS and is_box_argument(str(k).lower())
    ]


def is_box_argument(key: str) -> bool:
    """Whether an argument name holds a full-resolution box (``target_box``, ``roi_xyxy`` ...)."""
    return key in _BOX_ARGS or key.endswith(("_xyxy", "_box")) or "bbox" in key


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
