"""``zoomearth eval``: run a benchmark through the agent and write the report.

Exit status: 0 done (the report is written); 2 a usage or input error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from zoomearth.cli_common import command

__all__ = ["add_eval_command"]

# Literal copies (checked equal by tests/eval) so that building the CLI parser, which every
# zoomearth command does, imports neither the question models nor the planners.
BENCHMARKS = ("lrs-gro", "lrs-vqa", "mme-realworld-rs", "xlrs")
EVAL_PLANNERS = ("auto", "transformers", "openai", "rules", "script", "oracle", "no-zoom")


def add_eval_command(sub: Any) -> None:
    """Add the ``eval`` subcommand to the CLI's subparsers."""
    s = sub.add_parser(
        "eval", help="evaluate on a benchmark (LRS-GRO, LRS-VQA, MME-RealWorld-RS, XLRS)"
    )
    s.add_argument("benchmark", choices=BENCHMARKS)
    s.add_argument("--questions", required=True, help="question file (JSONL or a JSON list)")
    s.add_argument("--images", required=True, help="folder the records' image names are in")
    s.add_argument(
        "--planner",
        choices=EVAL_PLANNERS,
        default=None,
        help="backend or baseline (oracle, no-zoom, rules); default: setting planner",
    )
    s.add_argument(
        "--inner",
        choices=("auto", "transformers", "openai", "rules", "script"),
        help="backend the oracle / no-zoom baselines wrap (default: setting planner)",
    )
    s.add_argument("--model", help="checkpoint path / hub id (transformers) or model name (openai)")
    s.add_argument("--base-url", help="OpenAI-compatible server URL (openai backend)")
    s.add_argument("--plan", help="per-question JSON/YAML plan (script backend)")
    s.add_argument("--limit", type=int, help="only the first N questions")
    s.add_argument("--out", help="output folder (default: DATA_DIR/eval/BENCHMARK-PLANNER)")
    s.add_argument("--workers", type=int, help="parallel workers (default 1; Ray: per resources)")
    s.add_argument(
        "--ray", metavar="ADDRESS", help="run on a Ray cluster: auto, ray://HOST:10001, or local"
    )
    s.add_argument(
        "--gpus-per-worker",
        type=float,
        help="GPUs per Ray worker (default: 1 for transformers if the cluster has GPUs)",
    )
    s.add_argument("--no-progress", action="store_true", help="no progress bar")


@command("eval")
def cmd_eval(args: argparse.Namespace, settings: Any) -> int:
    """Run the evaluation and write the report; prints the headline figures."""
    from zoomearth.eval.questions import load_questions
    from zoomearth.eval.report import write_report
    from zoomearth.eval.runner import run_eval

    update: dict[str, Any] = {
        "planner_model": args.model,
        "planner_base_url": args.base_url,
        "plan_file": Path(args.plan) if args.plan else None,
    }
    update = {k: v for k, v in update.items() if v is not None}
    planner = args.planner or ("script" if args.plan and not args.inner else settings.planner)
    if args.plan and args.inner is None and planner in ("oracle", "no-zoom"):
        args.inner = "script"
    if update:
        settings = settings.model_copy(update=update)
    questions = load_questions(args.benchmark, args.questions)
    out = (
        Path(args.out)
        if args.out
        else Path(settings.data_dir)
        / "eval"
        / (f"{args.benchmark}-{planner}" + (f"-{args.inner}" if args.inner else ""))
    )
    records = run_eval(
        questions,
        settings=settings,
        planner=planner,
        images_dir=args.images,
        out_dir=out,
        inner=args.inner,
        limit=args.limit,
        workers=args.workers,
        ray_address=args.ray,
        gpus_per_worker=args.gpus_per_worker,
        progress=False if args.no_progress else None,
    )
    label = planner + (f" over {args.inner}" if args.inner else "")
    if args.model:
        label += f" ({args.model})"
    report = write_report(records, out, planner=label)
    o = report["overall"]

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f}%"

    counts = ", ".join(f"{k} {v}" for k, v in report["counts"].items())
    print(f"{args.benchmark}: {counts}")
    print(
        f"accuracy: stage 1 {pct(o['acc_stage1'])} -> final {pct(o['acc_final'])} "
        f"(n={o['n']}); APO IoU "
        + ("-" if o["apo_iou"] is None else f"{o['apo_iou']:.4f} (n={o['n_boxed']})")
    )
    print(
        f"report: {report['files']['markdown']} (results: {out / 'results.jsonl'})", file=sys.stdout
    )
    return 0
