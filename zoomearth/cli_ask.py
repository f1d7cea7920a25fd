"""``zoomearth ask``: run the agent on one image and question, with a live step display.

Exit status (:data:`EXIT_STATUS_HELP`):

* 0 -- answered: the run finished and every tool request succeeded (a call the planner later
  corrected counts as succeeded);
* 2 -- a usage or input error (one clear line on stderr);
* 3 -- stopped at an approval point without a terminal to ask on (the resume commands are printed);
* 4 -- partial: the run finished with an answer, but some tool requests did not succeed (invalid
  arguments, a tool that does not exist, a tool that failed, approval denied);
* 5 -- failed: the run finished with an answer, but there were tool requests and none succeeded;
* 130 -- interrupted (Ctrl-C), or a tool call was cancelled (the run is resumable);
* 143 -- terminated by SIGTERM (handled like Ctrl-C: the running tool stops, its partial outputs
  are removed, and the line on stderr says how to continue:
  ``zoomearth ask --thread ID --resume``).

The ``--json`` record says the same in ``status`` (and ``status_reason``), and gives every tool
call its status and error; the rule is :data:`zoomearth.api.RUN_STATUS_RULE`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from zoomearth.cli_common import SETTINGS_OPTIONS_EPILOG, add_asset_option, command

__all__ = ["EXIT_STATUS", "add_ask_command"]

EXIT_AWAITING_APPROVAL = 3
EXIT_PARTIAL = 4
EXIT_FAILED = 5
EXIT_CANCELLED = 130  # as for Ctrl-C (zoomearth.cli)
#: Exit status by the record's ``status`` (``running``: 0, as before; it is not reached).
EXIT_STATUS = {
    "answered": 0,
    "awaiting_approval": EXIT_AWAITING_APPROVAL,
    "partial": EXIT_PARTIAL,
    "failed": EXIT_FAILED,
    "cancelled": EXIT_CANCELLED,
}
EXIT_STATUS_HELP = (
    "Exit status: 0 answered (every tool request succeeded, or a later call corrected it); "
    "2 usage or input error; 3 stopped at an approval point; 4 partial (answered, but some tool "
    "requests did not succeed); 5 failed (answered, but no tool request succeeded); 130 "
    "interrupted or a tool call cancelled; 143 terminated by SIGTERM (both resumable). --json "
    "gives each tool call's status and error."
)
RUN_NOT_CLEAN_TEMPLATE = "run {status} (exit status {code}): {reason}"
RESUME_HINT_TEMPLATE = (
    "thread {thread} stopped; continue it with: zoomearth ask --thread {thread} --resume"
)
NOTHING_SAVED_TEMPLATE = "thread {thread} stopped before anything was saved; ask again"


def add_ask_command(sub: Any) -> None:
    """Add the ``ask`` subcommand to the CLI's subparsers."""
    s = sub.add_parser(
        "ask",
        help="ask a question about an image (zoom, tools, answer)",
        epilog=f"{EXIT_STATUS_HELP} {SETTINGS_OPTIONS_EPILOG}",
    )
    s.add_argument(
        "image",
        nargs="?",
        help="the scene, or a folder of dated rasters (a time stack); omit with --thread --resume",
    )
    s.add_argument("question", nargs="?", help="the question or command")
    s.add_argument("--planner", choices=("auto", "transformers", "openai", "rules", "script"))
    s.add_argument("--model", help="checkpoint path / hub id (transformers) or model name (openai)")
    s.add_argument("--base-url", help="OpenAI-compatible server URL (openai backend)")
    s.add_argument("--plan", help="JSON/YAML plan file (script backend)")
    s.add_argument("--thread", help="continue this conversation (same views and artifacts)")
    s.add_argument("--resume", action="store_true", help="continue a stopped or killed run")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--approve", action="store_true", help="approve gated tools (e.g. edit)")
    g.add_argument("--deny", action="store_true", help="deny the pending gated tool (--resume)")
    s.add_argument("--bands", help="1-based band mapping shown as RGB, e.g. 3,2,1")
    add_asset_option(s)
    s.add_argument(
        "--stack",
        action="append",
        metavar="PATH_OR_URL",
        help="another date of the same place (repeatable): a time stack on IMAGE's grid",
    )
    s.add_argument("--max-steps", type=int, help="step budget (default: setting max_steps)")
    s.add_argument("--out", help="run directory (default: DATA_DIR/runs/<thread>)")
    s.add_argument("--json", action="store_true", help="print one JSON record of the run")
    s.add_argument("--strict", action="store_true", help="re-raise tool failures (debugging)")


class LiveDisplay:
    """Prints the agent's steps on stderr as they happen (tool progress as a bar on a tty)."""

    def __init__(self, stream: Any = None) -> None:
        self.out = stream or sys.stderr
        self._bars: dict[str, Any] = {}

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        w = self.out.write
        if kind == "observe":
            w(f"planner: {event.get('planner')}\n")
            if event.get("selection"):
                w(f"  ({event['selection']})\n")
            if event.get("profile"):
                w(f"profile: {event['profile']}\n")
                if event.get("profile_reason"):
                    w(f"  ({event['profile_reason']})\n")
            if event.get("date"):
                w(f"date: {event['date']} (time stack)\n")
        elif kind == "note":
            w(f"note: {event.get('text')}\n")
        elif kind == "plan":
            parts = []
            if event.get("zooms"):
                parts.append(f"{len(event['zooms'])} zoom(s)")
            if event.get("tools"):
                parts.append("tools " + ", ".join(t["name"] for t in event["tools"]))
            if event.get("answer"):
                parts.append("answer")
            if event.get("problems"):
                parts.append(
                    f"{len(event['problems'])} problem(s): "
                    + "; ".join(p["message"][:100] for p in event["problems"])
                )
            stage = f" (stage {event['stage']})" if event.get("stage") else ""
            w(
                f"step {event.get('step')}{stage}: {', '.join(parts) or 'no action'}"
                f" ({event.get('seconds', 0):.1f} s, "
                f"{event.get('visual_tokens', 0)} visual tokens)\n"
            )
        elif kind == "zoom":
            label = f" '{event['label']}'" if event.get("label") else ""
            box = ", ".join(f"{v:.0f}" for v in event["region_xyxy"])
            date = f" of {event['date']}" if event.get("date") else ""
            w(f"  zoom -> view {event['view_id']}{label}{date}: [{box}] (full-resolution px)\n")
        elif kind == "tool_start":
            w(f"  tool {event.get('tool')} {json.dumps(event.get('arguments', {}))}\n")
        elif kind == "progress":
            self._progress(event)
        elif kind == "prepare":
            self._prepare(event)
        elif kind == "tool":
            bar = self._bars.pop(str(event.get("tool")), None)
            if bar is not None:
                bar.close()
            w(f"  -> {event.get('text')}\n")
        elif kind == "approval":
            w(f"approval needed: {event.get('question')}\n")
        self.out.flush()

    def _prepare(self, event: dict[str, Any]) -> None:
        """A scene's one-time prepared copy: a bar on a tty, else a line at start and end."""
        scene = str(event.get("scene"))
        key = f"prepare:{scene}"
        done, total = int(event.get("done") or 0), int(event.get("total") or 0)
        finished = total > 0 and done >= total
        if self.out.isatty():
            self._progress({**event, "tool": key})
            if finished:
                bar = self._bars.pop(key, None)
                if bar is not None:
                    bar.close()
            return
        if key not in self._bars and not finished:
            self._bars[key] = None  # announced; the next line is the end
            self.out.write(f"preparing a tiled copy of {scene} (one-time, cached) ...\n")
        elif finished and key in self._bars:
            del self._bars[key]
            self.out.write(f"  -> prepared {scene}\n")

    def _progress(self, event: dict[str, Any]) -> None:
        if not self.out.isatty():
            return
        from tqdm import tqdm

        key = str(event.get("tool"))
        bar = self._bars.get(key)
        total = int(event.get("total") or 0)
        if bar is None:
            bar = tqdm(total=total or None, desc=f"  {key}", file=self.out, leave=False)
            self._bars[key] = bar
        bar.n = int(event.get("done") or 0)
        bar.set_postfix_str(str(event.get("message") or "")[:40], refresh=True)


def _settings_with_flags(args: argparse.Namespace, settings: Any) -> Any:
    update = {
        "planner": args.planner,
        "planner_model": args.model,
        "planner_base_url": args.base_url,
        "plan_file": Path(args.plan) if args.plan else None,
    }
    update = {k: v for k, v in update.items() if v is not None}
    if args.plan and not args.planner:
        update["planner"] = "script"
    return settings.model_copy(update=update) if update else settings


def _print_result(result: Any, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
        return
    if result.status in ("answered", "partial", "failed"):
        kind = " (best effort)" if result.answer_kind == "best_effort" else ""
        flag = f" [{result.status}: see the tool calls]" if result.status != "answered" else ""
        print(f"\nanswer{kind}{flag}: {result.answer}")
        for call in result.tool_calls:
            detail = call.get("result") or call.get("error") or ""
            print(f"  {call['name']} ({call['status']}): {' '.join(str(detail).split())[:300]}")
    for a in result.artifacts:
        print(f"artifact:{a['id']} {a['kind']}: {a['path']}  -- {a.get('summary', '')}")
    print(
        f"planner: {result.planner}; visual tokens: {result.visual_tokens}; "
        f"thread: {result.thread_id}"
    )
    print(
        f"run directory: {result.run_dir}"
        + (f" (trajectory: {result.trajectory})" if result.trajectory else "")
    )


@command("ask")
def cmd_ask(args: argparse.Namespace, settings: Any) -> int:
    """Run the agent; see the module docstring for exit statuses."""
    from zoomearth.api import Agent
    from zoomearth.cli_common import _parse_bands
    from zoomearth.errors import ZoomEarthError

    settings = _settings_with_flags(args, settings)
    if args.resume and not args.thread:
        raise ZoomEarthError("--resume needs --thread ID (printed by the run that stopped).")
    if not args.resume and (not args.question or (not args.image and not args.thread)):
        if args.thread and args.image and not args.question:
            args.question, args.image = args.image, None  # `ask --thread ID "question"`
        else:
            raise ZoomEarthError('usage: zoomearth ask IMAGE "QUESTION" (or --thread ID --resume)')
    agent = Agent(settings, auto_approve=args.approve, strict=args.strict, on_event=LiveDisplay())
    try:
        if args.resume:
            result = agent.resume(
                args.thread, approve=True if args.approve else (False if args.deny else None)
            )
        else:
            result = agent.ask(
                args.image,
                args.question,
                thread=args.thread,
                run_dir=args.out,
                bands=list(_parse_bands(args.bands) or []) or None,
                max_steps=args.max_steps,
                stack=args.stack,
                # A saved STAC search: the items' dates (zoomearth.cli_common resolves it).
                stack_labels=getattr(args, "stack_labels", None),
            )
        while result.status == "awaiting_approval":
            if sys.stdin.isatty() and sys.stderr.isatty() and not args.json:
                pending = result.pending_approval[0] if result.pending_approval else {}
                reply = input(f"{pending.get('question', 'Approve?')} [y/N] ").strip().lower()
                result = agent.resume(result.thread_id, approve=reply in {"y", "yes"})
                continue
            _print_result(result, args.json)
            prog = "zoomearth"
            print(
                f"\nstopped: a tool needs approval. Resume with:\n"
                f"  {prog} ask --thread {result.thread_id} --resume --approve\n"
                f"  {prog} ask --thread {result.thread_id} --resume --deny",
                file=sys.stderr,
            )
            return EXIT_AWAITING_APPROVAL
        _print_result(result, args.json)
        code = EXIT_STATUS.get(result.status, 0)
        if code:
            print(
                RUN_NOT_CLEAN_TEMPLATE.format(
                    status=result.status, code=code, reason=result.status_reason
                ),
                file=sys.stderr,
            )
        return code
    except KeyboardInterrupt as exc:
        # Ctrl-C or SIGTERM: zoomearth.cli prints the one line, with how to continue.
        exc.resume_hint = _resume_hint(agent)  # type: ignore[attr-defined]
        raise
    finally:
        agent.close()


def _resume_hint(agent: Any) -> str | None:
    """How to continue the interrupted run of ``agent``, or None when no run started."""
    thread = agent.current_thread
    if not thread:
        return None
    try:
        resumable = agent.resumable(thread)
    except Exception:  # noqa: BLE001 - a hint must never replace the interruption itself
        resumable = True
    template = RESUME_HINT_TEMPLATE if resumable else NOTHING_SAVED_TEMPLATE
    return str(template.format(thread=thread))
