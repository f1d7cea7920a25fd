"""Regular expressions over user text on adversarial input: per pattern, and whole requests.

Times every compiled regular expression that reads question or request text -- the module-level
patterns of the rules planner (``zoomearth.agent.backends.rules``, found programmatically, so a
new table row is covered automatically) and of the other modules listed in :data:`MODULES` --
with ``finditer`` over the whole text (the most work any caller can ask of a pattern), plus the
rules planner's readers (``find_coordinates``, ``find_locations``, ``find_tool_intents``, on the
whole text) and a whole ``RulesPlanner.plan`` call (which reads at most
``MAX_QUESTION_CHARS`` of the question when that cap exists), on the adversarial texts of
:func:`adversarial_texts` at ``--size`` characters each.

Each measurement runs in a worker process with a per-call time limit (``--limit`` seconds): a
call that does not finish is reported as ``> limit`` and its worker is killed (``re`` holds the
GIL, so only a process can be stopped) and restarted for the remaining calls.

Prints, per pattern, the worst input and its seconds (slowest first), then the worst pattern and
the worst full request. ``--json PATH`` also writes every measurement.

Usage::

    python benchmarks/adversarial_text.py [--size 100000] [--limit 10] [--quick] [--json out.json]

``--quick``: 5,000 characters and a 5 s limit (unless given).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import multiprocessing as mp
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: Modules whose module-level compiled patterns read user or request text (or text that quotes
#: it: model replies, tool instructions, ids from requests).
MODULES: tuple[str, ...] = (
    "zoomearth.agent.backends.rules",
    "zoomearth.agent.parsing",
    "zoomearth.agent.protocol",
    "zoomearth.agent.backends",
    "zoomearth.server.app",
    "zoomearth.server.ingest",
    "zoomearth.tools.edit",
    "zoomearth.tools.contract",
    "zoomearth.tools.context",
    "zoomearth.artifacts",
    "zoomearth.api",
    "zoomearth.models.pool",
    "zoomearth.models.memory",
)
#: The rules planner's readers, timed on the whole (uncapped) text.
READERS: tuple[str, ...] = ("find_coordinates", "find_locations", "find_tool_intents")


# ---------------------------------------------------------------------------------------------
# Patterns and texts
# ---------------------------------------------------------------------------------------------


def _walk(name: str, value: Any, depth: int = 0) -> Iterator[tuple[str, re.Pattern[str]]]:
    if isinstance(value, re.Pattern):
        if isinstance(value.pattern, str):
            yield name, value
        return
    if depth >= 4 or isinstance(value, str | bytes | type):
        return
    if isinstance(value, tuple | list):
        for i, item in enumerate(value):
            yield from _walk(f"{name}[{i}]", item, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(f"{name}[{key!r}]", item, depth + 1)
    elif dataclasses.is_dataclass(value):
        label = getattr(value, "name", None)
        suffix = f"({label})" if isinstance(label, str) else ""
        for f in dataclasses.fields(value):
            yield from _walk(f"{name}{suffix}.{f.name}", getattr(value, f.name), depth + 1)


def module_patterns(module_name: str) -> list[tuple[str, re.Pattern[str]]]:
    """The compiled ``str`` patterns held by ``module_name``'s globals (also inside tuples,
    lists, dicts and dataclass instances), named ``module.ATTR[i]...``."""
    module = importlib.import_module(module_name)
    short = module_name.rsplit(".", 1)[-1]
    out: list[tuple[str, re.Pattern[str]]] = []
    seen: set[int] = set()
    for attr, value in vars(module).items():
        if attr.startswith("__") or isinstance(value, type(module)):
            continue
        for name, pattern in _walk(f"{short}.{attr}", value):
            if id(pattern) not in seen:
                seen.add(id(pattern))
                out.append((name, pattern))
    return out


def all_patterns() -> list[tuple[str, re.Pattern[str]]]:
    """Every pattern of :data:`MODULES` (a module that cannot be imported is skipped)."""
    out: list[tuple[str, re.Pattern[str]]] = []
    for module_name in MODULES:
        try:
            out.extend(module_patterns(module_name))
        except ImportError as exc:  # pragma: no cover - optional dependency missing
            print(f"skipping {module_name}: {exc}", file=sys.stderr)
    return out


def _fill(unit: str, size: int, prefix: str = "") -> str:
    body = max(0, size - len(prefix))
    return prefix + (unit * (body // max(1, len(unit)) + 1))[:body]


def adversarial_texts(size: int) -> dict[str, str]:
    """Adversarial texts of ``size`` characters: whitespace runs, digit runs, separators,
    repeated keywords and the two inputs of the issue (``"box" + " " * n`` and
    ``"lon 12.34 lat 45.6 " * k``)."""
    texts = {
        "spaces": " " * size,
        "box+spaces": _fill(" ", size, "box"),
        "pixel+spaces": _fill(" ", size, "pixel"),
        "px+spaces": _fill(" ", size, "px"),
        "lon+spaces": _fill(" ", size, "lon"),
        "from+spaces": _fill(" ", size, "from"),
        "at+spaces": _fill(" ", size, "at"),
        "is+spaces": _fill(" ", size, "is"),
        "mixed-whitespace": _fill(" \t\n\r", size),
        "digits": _fill("1", size),
        "digits-dots": _fill("1.", size),
        "digit-space": _fill("1 ", size),
        "digit-comma": _fill("1,", size),
        "digit-comma-space": _fill("1, ", size),
        "number-pairs": _fill("12.5, 34 ", size),
        "hemisphere": _fill("12.5N ", size),
        "degrees": _fill("1° ", size),
        "separators": _fill(",;:=-_./", size),
        "dashes": _fill("-", size),
        "open-parens": _fill("(", size),
        "paren-space": _fill("( ", size),
        "bracket-number": _fill("[1, ", size),
        "paren-number": _fill("(1, ", size),
        "box-repeated": _fill("box ", size),
        "pixel-repeated": _fill("pixel ", size),
        "px-repeated": _fill("px ", size),
        "lon-repeated": _fill("lon ", size),
        "lat-repeated": _fill("lat ", size),
        "keyed-repeated": _fill("x1= ", size),
        "x-equals-repeated": _fill("x=1 ", size),
        "at-number-repeated": _fill("at 1, ", size),
        "from-to-repeated": _fill("from (1, 2) to ", size),
        "lonlat-issue": _fill("lon 12.34 lat 45.6 ", size),
        "box-issue": _fill(" ", size, "box"),
        "location-words": _fill("top left right ", size),
        "side-words": _fill("in the left ", size),
        "left-dashes": _fill("-", size, "left"),
        "intent-words": _fill("please segment the ", size),
        "remove-repeated": _fill("remove ", size),
        "clause-punct": _fill(", ", size),
        "letters": _fill("a", size),
        "letter-space": _fill("a ", size),
        "is-letters": _fill("a", size, "is "),
        "tags": _fill("< ", size),
        "tag-spaces": _fill("<" + " " * 16, size),
        "quotes": _fill("\"'", size),
        "epsg": _fill("EPSG: ", size),
    }
    return texts


# ---------------------------------------------------------------------------------------------
# Jobs (run in a worker process)
# ---------------------------------------------------------------------------------------------

_PATTERNS: dict[str, re.Pattern[str]] = {}
_TEXTS: dict[str, str] = {}


def _plan_request(question: str) -> Any:
    from zoomearth.agent.base import PlanRequest
    from zoomearth.geometry import PixelBox, ViewSpec

    width, height = 10240, 8192
    box = {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4}
    tools = [
        {"name": "cloud_removal", "parameters": {"type": "object", "properties": {"box": box}}},
        {"name": "denoise", "parameters": {"type": "object", "properties": {}}},
        {
            "name": "segmentation",
            "parameters": {
                "type": "object",
                "properties": {"box": box, "prompt": {"type": "string"}},
                "required": ["prompt"],
            },
        },
        {
            "name": "edit",
            "parameters": {
                "type": "object",
                "properties": {"instruction": {"type": "string"}},
                "required": ["instruction"],
            },
        },
    ]
    return PlanRequest(
        question=question,
        overview_id=0,
        transcript=[],
        views={0: ViewSpec(0, PixelBox(0, 0, width, height), 512, 410)},
        render=lambda _vid: None,  # type: ignore[arg-type,return-value]
        tools=tools,
        scene_info={
            "width": width,
            "height": height,
            "crs": "EPSG:32633",
            "transform": [0.5, 0.0, 500000.0, 0.0, -0.5, 5000000.0],
        },
    )


def _run_job(job: tuple[str, str, str]) -> float:
    kind, target, text_name = job
    text = _TEXTS[text_name]
    if kind == "pattern":
        pattern = _PATTERNS[target]
        t0 = time.perf_counter()
        for _ in pattern.finditer(text):
            pass
        return time.perf_counter() - t0
    from zoomearth.agent.backends import rules

    if kind == "reader":
        reader = getattr(rules, target)
        t0 = time.perf_counter()
        reader(text)
        return time.perf_counter() - t0
    from zoomearth.config import Settings

    planner = rules.RulesPlanner(Settings())
    request = _plan_request(text)
    t0 = time.perf_counter()
    planner.plan(request)
    return time.perf_counter() - t0


def _warm_up() -> None:
    """One small plan first, so that no timing includes a lazy import (rasterio's, for lon/lat)."""
    from zoomearth.agent.backends import rules
    from zoomearth.config import Settings

    rules.RulesPlanner(Settings()).plan(_plan_request("lon 12.34 lat 45.6, segment the roads"))


def _worker(conn: Any, jobs: list[tuple[str, str, str]]) -> None:
    _warm_up()
    conn.send("ready")
    for job in jobs:
        conn.send((job, _run_job(job)))
    conn.send(None)


def run_jobs(jobs: list[tuple[str, str, str]], limit: float) -> dict[tuple[str, str, str], float]:
    """Run ``jobs`` in worker processes; a job over ``limit`` seconds gets ``inf``."""
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    results: dict[tuple[str, str, str], float] = {}
    pending = list(jobs)
    while pending:
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_worker, args=(child, pending), daemon=True)
        proc.start()
        child.close()
        if not parent.poll(120) or parent.recv() != "ready":  # pragma: no cover
            raise RuntimeError("the benchmark worker did not start")
        while pending:
            if not parent.poll(limit + 1.0):
                results[pending.pop(0)] = float("inf")
                proc.kill()
                break
            try:
                message = parent.recv()
            except EOFError:  # the worker died
                results[pending.pop(0)] = float("nan")
                break
            if message is None:
                break
            job, seconds = message
            results[job] = seconds if seconds <= limit else float("inf")
            pending.remove(job)
        proc.join(timeout=5)
        if proc.is_alive():  # pragma: no cover
            proc.kill()
        parent.close()
    return results


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def _fmt(seconds: float, limit: float) -> str:
    if seconds != seconds:  # NaN
        return "crashed"
    if seconds == float("inf"):
        return f"> {limit:g}"
    return f"{seconds:.4f}"


def _worst(results: dict[tuple[str, str, str], float], kind: str) -> list[tuple[str, str, float]]:
    best: dict[str, tuple[str, float]] = {}
    for (k, target, text_name), seconds in results.items():
        if k != kind:
            continue
        value = float("inf") if seconds != seconds else seconds
        if target not in best or value > best[target][1]:
            best[target] = (text_name, value)
    return sorted(((t, n, s) for t, (n, s) in best.items()), key=lambda r: -r[2])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=None, help="characters per text (100000)")
    parser.add_argument("--limit", type=float, default=None, help="seconds per call (10)")
    parser.add_argument("--quick", action="store_true", help="5,000 characters, 5 s limit")
    parser.add_argument("--top", type=int, default=25, help="pattern rows to print (25; 0: all)")
    parser.add_argument("--json", type=Path, default=None, help="write every measurement here")
    args = parser.parse_args(argv)
    size = args.size or (5_000 if args.quick else 100_000)
    limit = args.limit or (5.0 if args.quick else 10.0)

    patterns = all_patterns()
    _PATTERNS.update(patterns)
    _TEXTS.update(adversarial_texts(size))
    from zoomearth.agent.backends import rules

    cap = getattr(rules, "MAX_QUESTION_CHARS", None)
    jobs: list[tuple[str, str, str]] = []
    for name, _ in patterns:
        jobs.extend(("pattern", name, text_name) for text_name in _TEXTS)
    for reader in READERS:
        jobs.extend(("reader", reader, text_name) for text_name in _TEXTS)
    jobs.extend(("plan", "RulesPlanner.plan", text_name) for text_name in _TEXTS)

    started = time.perf_counter()
    results = run_jobs(jobs, limit)
    elapsed = time.perf_counter() - started

    print(
        f"# adversarial text: {len(patterns)} patterns x {len(_TEXTS)} texts of {size:,} "
        f"characters, limit {limit:g} s per call, python {sys.version.split()[0]}, "
        f"rules planner cap: {cap if cap is not None else 'none'} ({elapsed:.1f} s in all)"
    )
    rows = _worst(results, "pattern")
    shown = rows if args.top <= 0 else rows[: args.top]
    width = max([len("pattern")] + [len(r[0]) for r in shown])
    print(f"\n{'pattern':<{width}}  {'worst input':<20}  seconds")
    for target, text_name, seconds in shown:
        print(f"{target:<{width}}  {text_name:<20}  {_fmt(seconds, limit)}")
    if len(shown) < len(rows):
        print(
            f"... {len(rows) - len(shown)} more patterns, each at most "
            f"{_fmt(rows[len(shown)][2], limit)} s"
        )
    full = _worst(results, "reader") + _worst(results, "plan")
    print(f"\n{'full call':<{width}}  {'worst input':<20}  seconds")
    for target, text_name, seconds in sorted(full, key=lambda r: -r[2]):
        print(f"{target:<{width}}  {text_name:<20}  {_fmt(seconds, limit)}")
    if rows:
        target, text_name, seconds = rows[0]
        print(
            f"\nworst pattern: {target} on {text_name!r} ({size:,} chars): {_fmt(seconds, limit)} s"
        )
    plan_rows = _worst(results, "plan")
    if plan_rows:
        _, text_name, seconds = plan_rows[0]
        print(
            f"worst full request (RulesPlanner.plan): {text_name!r} ({size:,} chars): "
            f"{_fmt(seconds, limit)} s"
        )
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "size": size,
                    "limit": limit,
                    "cap": cap,
                    "results": [
                        {
                            "kind": k,
                            "target": t,
                            "text": n,
                            "seconds": None if s != s or s == float("inf") else s,
                        }
                        for (k, t, n), s in results.items()
                    ],
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
