"""Span masking shared by the question readers: a matched span is blanked before the next rule.

Each reader (:mod:`~zoomearth.agent.text.locations`, :mod:`~zoomearth.agent.text.coordinates`,
:mod:`~zoomearth.agent.text.intents`) tries its table rows in order and blanks what a row matched,
so that a later, more general row cannot read the same words again.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["_mask"]


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
