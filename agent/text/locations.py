"""Location phrases of a question: corners, edge centres, halves, outer thirds, the centre, sides.

:data:`LOCATION_PHRASES` is the table (one :class:`PhraseRule` per region, matched in order, each
match masking its span for later rows); :data:`NEGATIVE_PHRASES` masks phrases that merely contain
location words (``right-angled``, ``what is left``, ``left of the road``) first.
:func:`find_locations` reads a question with them. :data:`WHOLE_IMAGE_PATTERN` and
:func:`find_whole_image` read phrases that name the whole image (``the entire scene``).

Regions are fractions ``(x1, y1, x2, y2)`` of the overview view's full-resolution region.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from zoomearth.agent.text.masking import _mask

__all__ = [
    "LOCATION_PHRASES",
    "NEGATIVE_PHRASES",
    "WHOLE_IMAGE_PATTERN",
    "LocationMatch",
    "PhraseRule",
    "Region",
    "find_locations",
    "find_whole_image",
]

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
