"""Dates named in questions (zoomearth.agent.text.dates): pure functions."""

from __future__ import annotations

import pytest

from zoomearth.agent.text.dates import (
    DateChoice,
    choose_dates,
    dates_line,
    match_date,
    mentioned_dates,
)

NAIP = ["2009-08-18", "2014-07-20", "2017-08-27", "2020-08-31"]


@pytest.mark.parametrize(
    ("question", "found"),
    [
        ("what changed between 2009 and 2020?", ["2009", "2020"]),
        ("count the buildings in 2014", ["2014"]),
        ("new roads since 2014-07-20?", ["2014-07-20"]),
        ("compare 2014/07/20 with 20200831", ["2014-07-20", "2020-08-31"]),
        ("in June 2014 and in Sept. 2017", ["2014-06", "2017-09"]),
        ("the 2014-07 mosaic", ["2014-07"]),
        ("tile m_4709963 at 2000m, box 1200,300", []),
        ("any ships?", []),
        ("in 2014.", ["2014"]),
    ],
)
def test_mentioned_dates(question: str, found: list[str]) -> None:
    assert mentioned_dates(question) == found


def test_match_date() -> None:
    assert match_date("2014", NAIP) == "2014-07-20"
    assert match_date("2014-07", NAIP) == "2014-07-20"
    assert match_date("2017-08-27", NAIP) == "2017-08-27"
    assert match_date("2012", NAIP) is None
    # A year with several dates names the latest of them.
    assert match_date("2014", ["2014-03-01", "2014-09-01", "2020"]) == "2014-09-01"
    # A stack dated by years only still matches a full date the question writes.
    assert match_date("2020-05-01", ["2009", "2020"]) == "2020"


@pytest.mark.parametrize(
    ("question", "viewing", "named", "unknown"),
    [
        ("what is in the top-left?", "2020-08-31", (), ()),
        ("count buildings in 2014", "2014-07-20", ("2014-07-20",), ()),
        # two dates: the planner looks at the later one; both are named, oldest first
        ("what changed between 2020 and 2009?", "2020-08-31", ("2009-08-18", "2020-08-31"), ()),
        ("from 2009 to 2017", "2017-08-27", ("2009-08-18", "2017-08-27"), ()),
        # "since" runs to the newest date
        ("new buildings since 2014?", "2020-08-31", ("2014-07-20", "2020-08-31"), ()),
        ("roads in 2012?", "2020-08-31", (), ("2012",)),
    ],
)
def test_choose_dates(question: str, viewing: str, named: tuple, unknown: tuple) -> None:
    assert choose_dates(question, NAIP) == DateChoice(viewing, named, unknown)


def test_choose_dates_needs_labels() -> None:
    with pytest.raises(ValueError, match="at least one"):
        choose_dates("in 2014", [])


def test_dates_line() -> None:
    choice = choose_dates("between 2009 and 2020, and 2012?", NAIP)
    assert dates_line(NAIP, choice) == (
        "Dates available: 2009-08-18, 2014-07-20, 2017-08-27, 2020-08-31; you are looking at "
        "2020-08-31. The question names 2009-08-18 and 2020-08-31. No image is dated 2012."
    )
    assert dates_line(["2009", "2020"], choose_dates("in 2009", ["2009", "2020"])) == (
        "Dates available: 2009, 2020; you are looking at 2009. The question names 2009."
    )
