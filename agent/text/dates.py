"""Dates a question names, matched to the dates of a time stack. Pure functions.

A question about a time stack may name dates: "in 2014", "between 2009 and 2020", "since
2014-07-20", "in June 2014". :func:`mentioned_dates` finds them (normalised labels such as
``"2014"``, ``"2014-06"``, ``"2014-07-20"``, in the order they appear); :func:`match_date` maps
one onto a stack's labels; :func:`choose_dates` decides which date the planner's views show:

* no date named (or none of the stack's): the newest date;
* one date named: that date;
* several dates named ("between 2009 and 2020", "from 2014 to 2017"): the latest of them -- the
  planner looks at the later state; the tools (``change_detection``) get both dates;
* "since 2014" names 2014 and the newest date, and the views show the newest.

A year or month that covers several dates of the stack names the latest of them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from zoomearth.scene.stack import parse_date_label

__all__ = ["DateChoice", "choose_dates", "dates_line", "match_date", "mentioned_dates"]

_MONTHS = {
    name: i
    for i, names in enumerate(
        (
            ("january", "jan"),
            ("february", "feb"),
            ("march", "mar"),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sep", "sept"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ),
        start=1,
    )
    for name in names
}
_MONTH_NAMES = "|".join(sorted(_MONTHS, key=len, reverse=True))
# Full dates first (2014-07-20, 2014/07/20, 20140720), then "June 2014", then a bare year.
_MENTION_RE = re.compile(
    r"(?<![\w.])(?:"
    r"(?P<full>(?:19|20)\d\d[-/._]?(?:0[1-9]|1[0-2])[-/._]?(?:0[1-9]|[12]\d|3[01]))"
    rf"|(?P<month>{_MONTH_NAMES})\.?\s+(?P<myear>(?:19|20)\d\d)"
    r"|(?P<ym>(?:19|20)\d\d-(?:0[1-9]|1[0-2]))"
    r"|(?P<year>(?:19|20)\d\d)"
    r")(?![\w])",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class DateChoice:
    """Which stack date the planner sees, and which dates the question names.

    Attributes:
        viewing: Label of the date the views show.
        named: Stack labels the question names, oldest first, without repeats.
        unknown: Dates the question names that match no date of the stack (normalised).
    """

    viewing: str
    named: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()


_SINCE_RE = re.compile(r"\bsince\s+(?:the\s+)?$", re.IGNORECASE)


def mentioned_dates(question: str) -> list[str]:
    """Normalised labels of the dates ``question`` names, in order (repeats kept).

    ``"2014-07-20"`` for a full date, ``"2014-06"`` for a month and year ("June 2014",
    "2014-06"), ``"2014"`` for a bare year (1900-2099). Numbers inside words or longer numbers
    never count (``"4709963"``, ``"B2014"``).
    """
    return [label for label, _since in _mentions(question)]


def _mentions(question: str) -> list[tuple[str, bool]]:
    """``(label, follows "since")`` for each date named, in order."""
    found: list[tuple[str, bool]] = []
    for m in _MENTION_RE.finditer(question):
        since = bool(_SINCE_RE.search(question[max(0, m.start() - 16) : m.start()]))
        if m.group("full"):
            parsed = parse_date_label(re.sub(r"[/._]", "-", m.group("full")))
            if parsed is not None and len(parsed[0]) == 10:
                found.append((parsed[0], since))
        elif m.group("month"):
            month = _MONTHS[m.group("month").lower()]
            found.append((f"{int(m.group('myear')):04d}-{month:02d}", since))
        elif m.group("ym"):
            found.append((m.group("ym"), since))
        elif m.group("year"):
            found.append((m.group("year"), since))
    return found


def match_date(mention: str, labels: Sequence[str]) -> str | None:
    """The stack label a normalised mention names, or None.

    An exact label wins; a year (``"2014"``) or month (``"2014-06"``) matches the labels that
    start with it -- the latest of them when several do (labels are oldest first).
    """
    if mention in labels:
        return mention
    hits = [label for label in labels if label.startswith(mention)]
    if not hits:
        # A label coarser than the mention (the stack has "2014", the question "2014-06-03").
        hits = [label for label in labels if mention.startswith(label) and len(label) >= 4]
    return hits[-1] if hits else None


def choose_dates(question: str, labels: Sequence[str]) -> DateChoice:
    """Decide the planner's date for ``question`` on a stack with ``labels`` (oldest first).

    Args:
        question: The user's question.
        labels: The stack's date labels, oldest first (at least one).

    Returns:
        The :class:`DateChoice` (see the module's rules).
    """
    if not labels:
        raise ValueError("choose_dates needs the stack's labels (at least one).")
    named: list[str] = []
    unknown: list[str] = []
    for mention, since in _mentions(question):
        label = match_date(mention, labels)
        if label is None:
            if mention not in unknown:
                unknown.append(mention)
            continue
        for one in (label, labels[-1]) if since else (label,):
            if one not in named:
                named.append(one)
    ordered = tuple(label for label in labels if label in named)
    viewing = ordered[-1] if ordered else labels[-1]
    return DateChoice(viewing=viewing, named=ordered, unknown=tuple(unknown))


def dates_line(labels: Sequence[str], choice: DateChoice) -> str:
    """The line the planner reads about a stack's dates.

    E.g. ``"Dates available: 2009, 2014, 2020; you are looking at 2020. The question names
    2009 and 2020."``
    """
    text = f"Dates available: {', '.join(labels)}; you are looking at {choice.viewing}."
    if len(choice.named) == 1:
        text += f" The question names {choice.named[0]}."
    elif choice.named:
        text += f" The question names {', '.join(choice.named[:-1])} and {choice.named[-1]}."
    if choice.unknown:
        text += f" No image is dated {', '.join(choice.unknown)}."
    return text
