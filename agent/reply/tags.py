"""The tags of a planner reply (``<think>``, ``<answer>``, ``<tool_call>``) paired into blocks.

:func:`_scan_tags` finds the tags (and chat-template special tokens such as ``<|im_end|>``),
:func:`_pair_blocks` pairs them into :class:`_Block` spans and reports unclosed and stray tags;
:class:`_Spans` answers whether a position lies inside some blocks.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Final

from zoomearth.agent.reply.messages import (
    UNCLOSED_TAG_TEMPLATE,
    UNEXPECTED_TAG_TEMPLATE,
    _Problems,
)
from zoomearth.agent.reply.records import ProblemCode

# Regular expressions (all linear: no nested or adjacent unbounded quantifiers)
_TAG_RE: Final = re.compile(
    r"<(/?)(think|answer|tool_call)[ \t\r\n]{0,16}>|<\|(?:im_end|im_start|endoftext)\|>",
    re.IGNORECASE,
)
_ANSWER_OPEN_RE: Final = re.compile(r"<answer[ \t\r\n]{0,16}>", re.IGNORECASE)

_TAGS: Final = ("think", "answer", "tool_call")


class _Spans:
    """Sorted, non-overlapping-enough character spans with a containment test."""

    __slots__ = ("ends", "starts")

    def __init__(self, spans: list[tuple[int, int]]) -> None:
        spans = sorted(spans)
        self.starts = [s for s, _ in spans]
        # Running maximum of ends, so a later short span cannot hide an earlier long one.
        self.ends: list[int] = []
        best = -1
        for _, e in spans:
            best = max(best, e)
            self.ends.append(best)

    def contains(self, pos: int) -> bool:
        k = bisect.bisect_right(self.starts, pos) - 1
        return k >= 0 and pos < self.ends[k]


@dataclass(frozen=True, slots=True)
class _Tag:
    start: int
    end: int
    name: str | None  # None for a chat-template special token such as <|im_end|>
    closing: bool


@dataclass(frozen=True, slots=True)
class _Block:
    name: str
    start: int  # start of the opening tag (or of the text, for an implicit <think>)
    content_start: int
    content_end: int
    end: int  # end of the closing tag, or content_end when unclosed
    closed: bool


def _scan_tags(text: str) -> list[_Tag]:
    tags = []
    for m in _TAG_RE.finditer(text):
        name = m.group(2)
        tags.append(
            _Tag(
                m.start(), m.end(), name.lower() if name else None, bool(m.group(1)) and bool(name)
            )
        )
    return tags


def _pair_blocks(text: str, tags: list[_Tag], problems: _Problems) -> dict[str, list[_Block]]:
    """Pair opening and closing tags of each name; report unclosed and stray tags.

    An opening tag pairs with the next closing tag of the same name unless another opening tag of
    that name comes first. An unclosed block runs to the next tag of any kind (or a chat-template
    end token, or the end of the text). A ``</think>`` that is the very first tag closes a think
    block starting at the beginning of the text (chat templates that put ``<think>`` in the prompt
    produce this); any other closing tag without an opening tag is ignored.
    """
    blocks: dict[str, list[_Block]] = {name: [] for name in _TAGS}
    pending: dict[str, int | None] = dict.fromkeys(_TAGS)
    unclosed: list[int] = []
    first_named = next((k for k, t in enumerate(tags) if t.name is not None), -1)
    for k, tag in enumerate(tags):
        if tag.name is None:
            continue
        if not tag.closing:
            previous = pending[tag.name]
            if previous is not None:
                unclosed.append(previous)
            pending[tag.name] = k
            continue
        opened = pending[tag.name]
        if opened is not None:
            o = tags[opened]
            blocks[tag.name].append(_Block(tag.name, o.start, o.end, tag.start, tag.end, True))
            pending[tag.name] = None
        elif k == first_named and tag.name == "think":
            blocks["think"].append(_Block("think", 0, 0, tag.start, tag.end, True))
        else:
            problems.add(ProblemCode.UNEXPECTED_TAG, UNEXPECTED_TAG_TEMPLATE.format(tag=tag.name))
    unclosed.extend(k for k in pending.values() if k is not None)
    for k in sorted(unclosed):
        o = tags[k]
        assert o.name is not None
        stop = tags[k + 1].start if k + 1 < len(tags) else len(text)
        until = "the end of the reply" if k + 1 == len(tags) else "the next tag"
        problems.add(
            ProblemCode.UNCLOSED_TAG, UNCLOSED_TAG_TEMPLATE.format(tag=o.name, until=until)
        )
        blocks[o.name].append(_Block(o.name, o.start, o.end, stop, stop, False))
    for name in _TAGS:
        blocks[name].sort(key=lambda b: b.start)
    return blocks
