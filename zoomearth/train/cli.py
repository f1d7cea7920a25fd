"""``zoomearth train prepare|sft|grpo``.

``prepare RECORDS --images DIR -o OUT [--profile P] [--no-tools]`` writes ``OUT/sft.jsonl``,
``OUT/grpo.jsonl``, ``OUT/images/`` and (agent profile) ``OUT/agent_prompt.json`` (resumable) for
one protocol profile; ``sft --config FILE`` and ``grpo --config FILE`` train as the YAML says
(``docs/train.md``) and save a checkpoint the ``transformers`` planner loads as it is.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from zoomearth.cli_common import command

__all__ = ["add_train_command", "cmd_train"]


def add_train_command(sub: Any) -> None:
    """Add the ``train`` subcommand to the ``zoomearth`` parser's subparsers.

    Args:
        sub: The object returned by ``parser.add_subparsers()``.
    """
    s = sub.add_parser("train", help="prepare training data; SFT / GRPO through TRL (extra 'rl')")
    steps = s.add_subparsers(dest="train_command", metavar="STEP")
    steps.required = True

    p = steps.add_parser(
        "prepare", help="LRS-GRO records + images -> sft.jsonl, grpo.jsonl, images/ (resumable)"
    )
    p.add_argument("records", help="LRS-GRO-format JSONL")
    p.add_argument("--images", required=True, help="folder of the images named by image_name")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--limit", type=int, help="stop after N newly written questions")
    p.add_argument(
        "--profile",
        choices=("auto", "agent", "zoomearth"),
        help="protocol profile the data follows (default: the setting planner_profile; "
        "zoomearth needs planner_prompt, the checkpoint's prompt file)",
    )
    p.add_argument(
        "--no-tools",
        action="store_true",
        help="agent profile: prompts without the tools section (for agents run with no tools); "
        "default: the tools the agent offers (the tool registry, plugins included)",
    )
    p.add_argument("--json", action="store_true", help="print the counts as JSON")

    for name, text in (("sft", "supervised fine-tuning"), ("grpo", "GRPO with zoom rollouts")):
        q = steps.add_parser(name, help=f"{text} as a YAML config says (docs/train.md)")
        q.add_argument(
            "--config", dest="train_config", required=True, help="training YAML (docs/train.md)"
        )
        q.add_argument("--max-steps", type=int, help="override training.max_steps")
        q.add_argument("--output-dir", help="override output_dir")
        q.add_argument("--json", action="store_true", help="print the result as JSON")


def _summary(result: Any) -> dict[str, Any]:
    last: dict[str, Any] = {}
    for record in result.history:
        for key in ("loss", "reward", "reward_std"):
            if key in record:
                last[key] = record[key]
    return {
        "output_dir": str(result.output_dir),
        "steps": result.steps,
        "seconds": round(result.seconds, 3),
        "steps_per_second": round(result.steps_per_second, 4),
        "metrics": str(result.metrics_path) if result.metrics_path else None,
        "plot": str(result.plot_path) if result.plot_path else None,
        **{f"last_{k}": v for k, v in last.items()},
    }


@command("train")
def cmd_train(args: argparse.Namespace, settings: Any) -> int:
    """Run ``train prepare``, ``train sft`` or ``train grpo``."""
    if args.train_command == "prepare":
        from zoomearth.train.data import prepare

        stats = prepare(
            args.records,
            args.images,
            args.output,
            settings=settings,
            profile=args.profile,
            tools=[] if args.no_tools else None,
            limit=args.limit,
            progress=not args.json and sys.stderr.isatty(),
        )
        if args.json:
            json.dump(stats.to_dict(), sys.stdout)
            sys.stdout.write("\n")
        else:
            d = stats.to_dict()
            print(
                f"wrote {d['written']} {d['profile']}-profile questions ({d['with_crop']} with a "
                f"crop), skipped "
                f"{d['skipped_existing']} already written, {d['missing_images']} without image, "
                f"{d['bad_boxes']} with unusable boxes -> {args.output}"
            )
        return 0

    from zoomearth.train.config import load_train_config

    overrides: dict[str, Any] = {}
    if args.max_steps is not None:
        overrides["training.max_steps"] = args.max_steps
    if args.output_dir:
        overrides["output_dir"] = str(Path(args.output_dir).resolve())
    config = load_train_config(args.train_config, overrides)
    # The trainers print their logs on stdout; keep stdout for the summary (--json).
    with contextlib.redirect_stdout(sys.stderr):
        if args.train_command == "sft":
            from zoomearth.train.sft import train_sft

            result = train_sft(config)
        else:
            from zoomearth.train.grpo import train_grpo

            result = train_grpo(config, settings=settings)
    summary = _summary(result)
    if args.json:
        json.dump(summary, sys.stdout)
        sys.stdout.write("\n")
    else:
        for key, value in summary.items():
            print(f"{key}: {value}")
    return 0
