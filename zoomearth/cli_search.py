"""``zoomearth search``: find STAC items in a STAC API or a static catalog.

The search itself is :func:`zoomearth.scene.stac.search` (``pystac-client`` for an API, a walk of
the catalog with ``pystac`` otherwise, the same filters either way). This module parses the
options, prints the items as a table (id, date, cloud cover, asset keys, the item's href) or as
JSON, and with ``--save FILE`` writes them as a GeoJSON ItemCollection that ``zoomearth
ask|info|view|tool`` accept as IMAGE: one item is that item, several are a time stack.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from zoomearth.cli_common import _print_json, command

__all__ = ["add_search_command", "cmd_search"]

SEARCH_EPILOG = (
    "Pass an item to ask/info/view/tool by its href (the last column) or --save the result and "
    "pass the file: one item is that item, several are a time stack. A STAC API is searched "
    "through its item-search endpoint; a static catalog.json (local or by URL) is walked, with "
    "the same filters applied here."
)


def _limit(text: str) -> int:
    """``--limit``: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expects a whole number >= 1, e.g. 20; got {text!r}")
    return value


def _cloud(text: str) -> float:
    """``--max-cloud``: a cloud cover in percent, 0-100."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 100.0:
        raise argparse.ArgumentTypeError(
            f"is the largest eo:cloud_cover in percent, 0 to 100 (e.g. 20); got {text!r}"
        )
    return value


def add_search_command(sub: Any) -> None:
    """Add the ``search`` subcommand to the CLI's subparsers."""
    from zoomearth.scene.stac import CLOUD_FILTER_MODES

    s = sub.add_parser(
        "search",
        help="find STAC items in a STAC API or a static catalog (then ask about one)",
        epilog=SEARCH_EPILOG,
    )
    s.add_argument(
        "--url",
        required=True,
        help="STAC API landing page, or a static catalog.json (local path or URL)",
    )
    s.add_argument(
        "--collection",
        action="append",
        default=[],
        metavar="ID",
        help="collection id (repeatable: any of them)",
    )
    s.add_argument("--bbox", metavar="W,S,E,N", help="WGS84 degrees; items intersecting it")
    s.add_argument(
        "--datetime",
        metavar="WHEN",
        help="date/time or interval: 2020-06-01, 2020, 2019-01-01/2020-12-31, 2020-01-01/..",
    )
    s.add_argument(
        "--max-cloud",
        type=_cloud,
        metavar="PERCENT",
        help="largest eo:cloud_cover (items without one are left out)",
    )
    s.add_argument(
        "--cloud-filter",
        choices=CLOUD_FILTER_MODES,
        default="auto",
        help="how --max-cloud reaches an API: CQL2 filter, query extension, or applied here "
        "(default auto: filter, else query, else here)",
    )
    s.add_argument(
        "--limit", type=_limit, default=20, metavar="N", help="at most N items (default 20)"
    )
    s.add_argument("--json", action="store_true", help="print the items as JSON")
    s.add_argument(
        "--save", metavar="FILE", help="write the items as an ItemCollection (GeoJSON) to FILE"
    )


def _table(rows: list[dict[str, Any]]) -> list[str]:
    """The items as aligned text lines (a header first)."""
    header = ("id", "datetime", "cloud", "assets", "href")
    lines = [header]
    for r in rows:
        cloud = "-" if r["cloud_cover"] is None else f"{r['cloud_cover']:g}%"
        lines.append(
            (
                str(r["id"]),
                (r["datetime"] or "-").replace("+00:00", "Z"),
                cloud,
                ",".join(r["assets"]),
                str(r["href"] or "-"),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return [
        "  ".join(f"{cell:<{widths[i]}}" for i, cell in enumerate(line[:-1])) + "  " + line[-1]
        for line in lines
    ]


@command("search")
def cmd_search(args: argparse.Namespace, settings: Any) -> int:
    """Search, print the items (table or ``--json``) and optionally ``--save`` them."""
    from zoomearth.scene.stac import parse_bbox, save_item_collection, search

    result = search(
        args.url,
        collections=args.collection,
        bbox=parse_bbox(args.bbox) if args.bbox else None,
        datetime=args.datetime,
        max_cloud=args.max_cloud,
        limit=args.limit,
        cloud_filter=args.cloud_filter,
        settings=settings,
    )
    rows = result.rows()
    if args.save:
        path = save_item_collection(result.items, args.save)
        what = "that item" if len(rows) == 1 else "a time stack" if rows else "nothing"
        print(
            f"zoomearth search: saved {len(rows)} item(s) to {path} (as IMAGE: {what})",
            file=sys.stderr,
        )
    for note in result.notes:
        print(f"zoomearth search: note: {note}", file=sys.stderr)
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print(f"no items matched in {result.source}")
        return 0
    for line in _table(rows):
        print(line)
    kind = "STAC API" if result.kind == "api" else "static catalog"
    print(f"{len(rows)} item(s) from the {kind} {result.source}")
    return 0
