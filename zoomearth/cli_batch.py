"""``zoomearth batch QUESTIONS.jsonl``: answer many questions over many scenes (here or on Ray).

One JSON object a line (``scene``, ``question``, optional ``id``, ``planner``, ``bands``,
``max_steps``, ``max_zooms``, ``settings``; JSON Schema ``zoomearth/schemas/batch.schema.json``,
printed by ``--schema``). One record per question is appended to ``OUT/results.jsonl``; the same
command again resumes (answered questions are skipped). See :mod:`zoomearth.batch`.

Exit status: 0 when every question is answered; 1 when some are not (their records say why);
2 a usage or input error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from zoomearth.cli_common import command

__all__ = ["add_batch_command"]

# A literal copy of zoomearth.batch.PLANNERS (checked equal by tests/core/test_batch.py), so that
# building the parser imports neither the agent nor pydantic models.
PLANNERS = ("auto", "transformers", "openai", "rules", "script")


def add_batch_command(sub: Any) -> None:
    """Add the ``batch`` subcommand to the CLI's subparsers."""
    s = sub.add_parser(
        "batch", help="answer a JSONL file of questions over many scenes (here or on Ray)"
    )
    s.add_argument("questions", nargs="?", help="JSON Lines file: one question object a line")
    s.add_argument("--out", help="output folder (default: DATA_DIR/batch/<file name>)")
    s.add_argument("--planner", choices=PLANNERS, help="planner backend (default: setting planner)")
    s.add_argument("--workers", type=int, help="parallel workers (default 1; Ray: one per CPU)")
    s.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="run on a Ray cluster: local (start one here), auto, HOST:6379 or ray://HOST:10001",
    )
    s.add_argument("--schema", action="store_true", help="print the JSON Schema of a line")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")


@command("batch")
def cmd_batch(args: argparse.Namespace, settings: Any) -> int:
    """Answer the questions not yet answered; print a summary line and the results file."""
    from zoomearth.batch import RESULTS_FILE, batch_schema, run_batch

    if args.schema:
        print(json.dumps(batch_schema(), indent=2))
        return 0
    if not args.questions:
        print("zoomearth batch: give a questions file (JSON Lines), or --schema", file=sys.stderr)
        return 2
    if args.workers is not None and args.workers < 1:
        print("zoomearth batch: --workers must be 1 or more", file=sys.stderr)
        return 2
    qpath = Path(args.questions)
    out = Path(args.out) if args.out else Path(settings.data_dir) / "batch" / qpath.stem
    records = run_batch(
        qpath,
        settings=settings,
        out_dir=out,
        planner=args.planner,
        workers=args.workers,
        ray_address=args.ray,
        progress=False if args.no_progress else None,
    )
    counts = Counter(str(r["status"]) for r in records)
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    print(f"{len(records)} question(s): {summary or 'none'}")
    for rec in records:
        if rec["status"] != "answered" and rec.get("message"):
            print(f"  {rec['question_id']}: {rec['status']}: {rec['message']}", file=sys.stderr)
    print(f"results: {out / RESULTS_FILE}")
    return 0 if counts.get("answered", 0) == len(records) else 1
