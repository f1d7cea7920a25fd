"""Tool commands of a question, and the offered tool that serves each.

The commands are verbs at the start of a clause: ``remove clouds``, ``denoise``, ``segment the
roads``, ``erase the cars``; change questions (``what changed``, ``changes between 2009 and
2020``, ``new buildings since 2014``, ``detect change``) are recognised anywhere, also as yes/no
questions (``Has anything changed since 2014?``), with the dates they name
(:func:`find_change_dates`). :data:`TOOL_INTENTS` names each kind and the substrings that
identify a matching tool; :func:`find_tool_intents` reads the commands as :class:`ToolIntent`
values and :func:`_find_tool` picks the offered tool for a kind.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from zoomearth.agent.text.masking import _mask

__all__ = ["TOOL_INTENTS", "ToolIntent", "find_change_dates", "find_tool_intents"]

#: Tool intents: kind -> (human name, substrings that identify a matching registry tool name).
TOOL_INTENTS: Final[dict[str, tuple[str, tuple[str, ...]]]] = {
    "cloud_removal": ("Cloud removal", ("cloud", "haze")),
    "denoise": ("Denoising", ("denois", "noise", "speckle")),
    "segmentation": ("Segmentation", ("segment", "mask")),
    "edit": ("Object removal", ("edit", "inpaint", "eras")),
    "change_detection": ("Change detection", ("change",)),
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

# A date a change question names: a full date (2014-07-20, 20140720, 2014/07/20) or a year.
_DATE: Final = r"(?:19|20)\d\d(?:[-/.]?(?:0[1-9]|1[0-2])[-/.]?(?:0[1-9]|[12]\d|3[01]))?(?!\d)"
# "after", "between", "from" are temporal only before a date ("the change from red to green",
# "a new road after the bridge" are not change questions).
_WHEN: Final = rf"(?:the\s+)?(?:years?\s+|dates?\s+)?{_DATE}"
_CHANGE_WORDS: Final = (
    r"\bwhat(?:'s|\s+has|\s+have|\s+is|\s+was|\s+were)?\s+(?:changed|new)\b"
    r"|\b(?:has|have|did)\s+(?:anything|something|much|it|this|the\s+[a-z]+)\s+chang\w*"
    r"|\bhow\s+much\s+(?:has\s+|have\s+|did\s+)?(?:it\s+|this\s+|the\s+[a-z]+\s+)?chang\w*"
    r"|\bchange\s+(?:detection|map|mask)\b|\bdetect\w*\s+(?:the\s+|any\s+|all\s+)?changes?\b"
    r"|\b(?:find|show|map|highlight|list|locate|identify|measure|quantify|compute|outline)\s+"
    r"(?:me\s+)?(?:the\s+|all\s+(?:the\s+)?|any\s+)?changes?\b"
    r"|\bchanges?\s+(?:since\b|(?:between|from|after|over)\s+" + _WHEN + r")"
    r"|\bdifferences?\s+between\s+(?:the\s+)?(?:dates|years|images|" + _DATE + r")"
    r"|\bnew\s+(?:[a-z]+\s+){0,2}?(?:since\b|(?:after|between)\s+" + _WHEN + r")"
    r"|\b(?:built|constructed|appeared|demolished|disappeared|cleared|deforested|flooded)\s+"
    r"(?:since\b|(?:after|between)\s+" + _WHEN + r")"
)

_INTENT_PATTERNS: Final[tuple[tuple[str, re.Pattern[str]], ...]] = (
    ("change_detection", re.compile(_CHANGE_WORDS, re.I)),
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
#: Kinds still read in a yes/no question: "Has anything changed since 2014?" asks for the tool.
_YES_NO_KINDS: Final = frozenset({"change_detection"})

# Dates of a change question: "between A and B", "from A to B", "A vs B", "since A", "until B".
_DATE_RE: Final = re.compile(rf"(?<![\d.,])(?P<date>{_DATE})(?![.,]\d)")
_PAIR_RE: Final = re.compile(
    rf"\b(?:between|from)\s+(?:the\s+)?(?:years?\s+)?(?P<a>{_DATE})\s+(?:and|to|until|till)\s+"
    rf"(?:the\s+)?(?:years?\s+)?(?P<b>{_DATE})"
    rf"|(?<![\d.,])(?P<c>{_DATE})\s*(?:vs\.?|versus|->|to|and)\s*(?P<d>{_DATE})",
    re.I,
)
_SINCE_RE: Final = re.compile(
    rf"\b(?:since|after|from)\s+(?:the\s+)?(?:years?\s+)?(?P<date>{_DATE})", re.I
)
_UNTIL_RE: Final = re.compile(
    rf"\b(?:until|till|up\s+to|before|by)\s+(?:the\s+)?(?:years?\s+)?(?P<date>{_DATE})", re.I
)


@dataclass(frozen=True, slots=True)
class ToolIntent:
    """A tool command found in a question.

    Attributes:
        kind: ``cloud_removal``, ``denoise``, ``segmentation``, ``edit`` or
            ``change_detection``.
        phrase: The matched text.
        start: Start offset in the question.
        target: The object named after the verb (``buildings`` in "segment the buildings"), if any.
        instruction: For ``edit``: the instruction for the tool ("remove the cars").
        before: For ``change_detection``: the earlier date the question names ("2009"), if any.
        after: For ``change_detection``: the later date the question names, if any.
    """

    kind: str
    phrase: str
    start: int
    target: str | None = None
    instruction: str | None = None
    before: str | None = None
    after: str | None = None


def find_tool_intents(text: str) -> list[ToolIntent]:
    """Find tool commands in a question, in order of appearance, one per kind.

    Cloud and noise phrases are matched before the generic "remove the X" edit, so "remove the
    clouds" is cloud removal, not an edit. A yes/no question ("Is the image cloud-free?") is not a
    command, except for a change ("Has anything changed since 2014?"), which the tool answers.

    Args:
        text: The question.

    Returns:
        The intents ordered by position.
    """
    yes_no = bool(_YES_NO_RE.match(text))
    work = text
    found: list[ToolIntent] = []
    for kind, pattern in _INTENT_PATTERNS:
        if yes_no and kind not in _YES_NO_KINDS:
            continue
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
            before = after = None
            if kind == "change_detection":
                before, after = find_change_dates(text)
            found.append(ToolIntent(kind, phrase, start, target, instruction, before, after))
            spans.append(m.span())
        work = _mask(work, spans)
    found.sort(key=lambda intent: intent.start)
    unique: list[ToolIntent] = []
    for intent in found:
        if all(intent.kind != u.kind for u in unique):
            unique.append(intent)
    return unique


def _date_key(label: str) -> str:
    """A sortable form of a date label (``2014`` < ``2014-07-20`` < ``2015``)."""
    digits = re.sub(r"\D", "", label)
    return digits.ljust(8, "0")


def find_change_dates(text: str) -> tuple[str | None, str | None]:
    """The two dates of a change question, as written (``"2009"``, ``"2014-07-20"``).

    ``between A and B`` / ``from A to B`` / ``A vs B`` give both (older first, whatever the
    order in the text); ``since A`` / ``after A`` the earlier one; ``until B`` / ``by B`` the
    later one; two other dates both (older first); a single other date ("what changed in
    2020") the later one. The tool resolves them against the stack's dates.

    Args:
        text: The question.

    Returns:
        ``(before, after)``; None where the question names no such date.
    """
    pair = _PAIR_RE.search(text)
    if pair is not None:
        a = pair.group("a") or pair.group("c")
        b = pair.group("b") or pair.group("d")
        first, second = sorted((a, b), key=_date_key)
        return first, second
    since = _SINCE_RE.search(text)
    until = _UNTIL_RE.search(text)
    if since is not None or until is not None:
        return (
            since.group("date") if since is not None else None,
            until.group("date") if until is not None else None,
        )
    dates = [m.group("date") for m in _DATE_RE.finditer(text)]
    if len(dates) >= 2:
        first, second = sorted(dates[:2], key=_date_key)
        return first, second
    if len(dates) == 1:
        return None, dates[0]
    return None, None


def _find_tool(kind: str, tools: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    for tool in tools:
        if str(tool.get("name", "")).lower() == kind:
            return tool
    for hint in TOOL_INTENTS[kind][1]:
        for tool in tools:
            if hint in str(tool.get("name", "")).lower():
                return tool
    return None
