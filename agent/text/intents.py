"""Tool commands of a question, and the offered tool that serves each.

The commands are verbs at the start of a clause: ``remove clouds``, ``denoise``, ``segment the
roads``, ``erase the cars``. :data:`TOOL_INTENTS` names each kind and the substrings that
identify a matching tool; :func:`find_tool_intents` reads the commands as :class:`ToolIntent`
values and :func:`_find_tool` picks the offered tool for a kind.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from zoomearth.agent.text.masking import _mask

__all__ = ["TOOL_INTENTS", "ToolIntent", "find_tool_intents"]

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


def _find_tool(kind: str, tools: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    for tool in tools:
        if str(tool.get("name", "")).lower() == kind:
            return tool
    for hint in TOOL_INTENTS[kind][1]:
        for tool in tools:
            if hint in str(tool.get("name", "")).lower():
                return tool
    return None
