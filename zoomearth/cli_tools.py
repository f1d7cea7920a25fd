"""The ``zoomearth tools`` and ``zoomearth tool`` commands.

``zoomearth tools [NAME] [--json]`` lists the registry -- built-ins and entry-point plugins, with
their source package, backend availability and any plugin warnings -- or shows one tool's
arguments. ``zoomearth tool NAME IMAGE [--args JSON] [--box x1,y1,x2,y2] [--out DIR] [--json]``
runs one tool directly through :func:`zoomearth.tools.run_tool`, the same code path the agent's
tool nodes use; ``--box`` is in full-resolution pixels (no box = the whole image). The first Ctrl-C
cancels the call cleanly (no partial outputs); a second one interrupts at once. SIGTERM interrupts
at once, like the second Ctrl-C (:func:`zoomearth.cli_common.sigterm_as_interrupt`): the tool's
partial outputs and temporaries are removed and the command exits with status 143. A run folder
this command created is removed again when the call leaves nothing in it (failed, cancelled,
interrupted); with ``--out`` the temporaries a killed earlier call left there are removed first.
``--ray ADDRESS`` computes the tiles of a tool declaring independent tiles as Ray tasks
(:mod:`zoomearth.tools.distributed`); the outputs are those of a local run.

Paths: ``--out`` may be relative (to the current directory); it is made absolute before the run.
The paths the user typed -- the image and the path arguments inside ``--args`` -- are allowed for
this run even outside the setting ``allowed_roots`` (``ToolContext.typed_paths``); ``allowed_roots``
still confines the paths that planners and API clients write.

:func:`add_tool_commands` adds both subcommands to the main parser; the handlers register
themselves with :func:`zoomearth.cli_common.command` when this module is imported.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from zoomearth.cli_common import _print_json, add_asset_option, command

__all__ = ["add_tool_commands", "cmd_tool", "cmd_tools"]

ARGS_JSON_TEMPLATE = (
    "--args must be a JSON object such as '{{\"bands\": [1, 2, 3]}}' (or @file.json); {reason}."
)
ARGS_FILE_TEMPLATE = "--args file {path} cannot be read: {reason}."


def add_tool_commands(subparsers: Any) -> None:
    """Add the ``tools`` and ``tool`` subcommands to the ``zoomearth`` parser.

    Args:
        subparsers: The object returned by ``ArgumentParser.add_subparsers``.
    """
    s = subparsers.add_parser(
        "tools", help="list tool nodes (built-ins and plugins) or show one tool's arguments"
    )
    s.add_argument("name", nargs="?", help="show this tool's details")
    s.add_argument("--json", action="store_true", help="print JSON")

    s = subparsers.add_parser(
        "tool", help="run one tool on an image (the agent's code path), writing a run directory"
    )
    s.add_argument("name", help="tool name (see 'zoomearth tools')")
    s.add_argument(
        "image", help="input raster, or a folder of dated rasters (a time stack); never modified"
    )
    s.add_argument(
        "--stack",
        action="append",
        metavar="PATH_OR_URL",
        help="another date of the same place (repeatable): a time stack on IMAGE's grid",
    )
    s.add_argument(
        "--args", default="{}", help="tool arguments as a JSON object, or @FILE with the JSON"
    )
    s.add_argument("--box", help="x1,y1,x2,y2 in full-resolution pixels (default: whole image)")
    s.add_argument("--out", help="run directory for the outputs (default: RUNS_DIR/tool-...)")
    s.add_argument("--bands", help="1-based band mapping for previews, e.g. 3,2,1")
    add_asset_option(s)
    s.add_argument("--json", action="store_true", help="print the outcome as JSON")
    s.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="compute the tiles as Ray tasks: local (start Ray here), auto, HOST:6379 or "
        "ray://HOST:10001 (tools declaring independent tiles; others run here)",
    )


# ----------------------------------------------------------------------------------------------
# zoomearth tools
# ----------------------------------------------------------------------------------------------
def _first_sentence(text: str, limit: int = 70) -> str:
    text = " ".join(text.split())
    cut = text.find(". ")
    if 0 < cut < limit:
        return text[: cut + 1]
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _backends(row: dict[str, Any]) -> str:
    parts = [f"{b['name']}{'' if b['available'] else ' (missing)'}" for b in row["backends"]]
    return ", ".join(parts) or "?"


def _source(row: dict[str, Any]) -> str:
    version = f" {row['package_version']}" if row.get("package_version") else ""
    return f"{row['package']}{version}" + (
        "" if row["source"] == "builtin" else f" [{row['source']}]"
    )


@command("tools")
def cmd_tools(args: argparse.Namespace, settings: Any) -> int:
    """List the registered tools, or show one tool's details."""
    from zoomearth.tools import describe_arguments, get_registry

    registry = get_registry()
    rows = registry.describe()
    warnings = registry.warnings
    if args.name:
        entry = registry.entry(args.name)  # UnknownToolError lists the valid names
        row = next(r for r in rows if r["name"] == entry.name)
        if args.json:
            _print_json(row)
            return 0
        caps = row["capabilities"]
        limit = f"{caps['max_side']} px a side" if caps["max_side"] else "none"
        lines = [
            ("name", row["name"]),
            ("description", row["description"]),
            ("arguments", describe_arguments(entry.cls.Args)),
            ("region", "bbox_2d (planner) / --box (command line); none = whole image"),
            ("one-piece limit", limit + (", streams larger regions" if caps["streaming"] else "")),
            ("bands / dtypes", f"{caps['bands'] or 'any'} / {caps['dtypes'] or 'any'}"),
            ("device memory", f"{caps['device_memory_mb']} MiB"),
            ("needs approval", "yes" if row["needs_approval"] else "no"),
            ("source", f"{_source(row)}: {row['target']}"),
            (
                "backends",
                "; ".join(
                    f"{b['name']}: {'available' if b['available'] else 'missing'}"
                    + (f" ({b['detail']})" if b["detail"] else "")
                    for b in row["backends"]
                ),
            ),
        ]
        width = max(len(k) for k, _ in lines)
        for k, v in lines:
            print(f"{k:<{width}}  {v}")
        for w in row["warnings"]:
            print(f"warning: {w}", file=sys.stderr)
        return 0
    if args.json:
        _print_json({"tools": rows, "warnings": warnings})
        return 0
    table = [("NAME", "SOURCE", "BACKENDS", "DESCRIPTION")]
    table += [
        (r["name"], _source(r), _backends(r), _first_sentence(r["description"])) for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for cells in table:
        print(
            "  ".join(f"{cell:<{widths[i]}}" for i, cell in enumerate(cells[:3])) + "  " + cells[3]
        )
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------------------------
# zoomearth tool
# ----------------------------------------------------------------------------------------------
def _load_args(text: str) -> dict[str, Any]:
    from zoomearth.tools import ToolInputError

    if text.startswith("@"):
        path = Path(text[1:])
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ToolInputError(ARGS_FILE_TEMPLATE.format(path=path, reason=exc)) from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ToolInputError(ARGS_JSON_TEMPLATE.format(reason=f"invalid JSON ({exc})")) from None
    if not isinstance(value, dict):
        raise ToolInputError(ARGS_JSON_TEMPLATE.format(reason=f"got a {type(value).__name__}"))
    return value


class _Progress:
    """A tqdm bar on stderr (hidden when stderr is not a terminal) fed by the progress callback."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.bar: Any = None

    def __call__(self, done: int, total: int, message: str) -> None:
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=self.label, leave=False, disable=None)
        self.bar.total = total
        self.bar.n = done
        if message:
            self.bar.set_postfix_str(message, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _CancelOnInterrupt:
    """First SIGINT sets the cancellation flag; a second one interrupts as usual."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        self.event.set()
        print("cancelling ... (press Ctrl-C again to interrupt at once)", file=sys.stderr)
        signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)

    def __enter__(self) -> _CancelOnInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


@command("tool")
def cmd_tool(args: argparse.Namespace, settings: Any) -> int:
    """Run one tool on an image and print its outcome."""
    from zoomearth.cli_common import _parse_bands
    from zoomearth.geometry import parse_box
    from zoomearth.scene import Scene
    from zoomearth.scene.stack import SceneStack, open_stack
    from zoomearth.tools import ToolCancelled, ToolContext, get_registry, run_tool
    from zoomearth.tools.base import absolute_dir, path_argument_values

    tool = get_registry().get_tool(args.name)
    tool_args = _load_args(args.args)
    box = parse_box(args.box) if args.box else None
    if args.out:
        run_dir = absolute_dir(args.out)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = absolute_dir(Path(settings.runs_dir) / f"tool-{stamp}-{tool.name}")
    # What the user typed on this command line is theirs to use (allowed_roots is for paths a
    # planner or a client writes): the image and every path argument inside --args.
    typed_paths = [args.image, *(args.stack or []), *path_argument_values(tool.Args, tool_args)]
    # A time stack (a folder of dates, or --stack): the tool runs on its reference date.
    stack = open_stack(
        args.image,
        args.stack or [],
        settings=settings,
        labels=getattr(args, "stack_labels", None) if args.stack else None,
    )
    image = stack.dates[stack.reference_index].source if stack is not None else args.image
    bands = _parse_bands(args.bands)
    progress = _Progress(tool.name)
    new_run_dir = not run_dir.exists()
    outcome = None
    try:
        with (
            Scene.open(image, bands=bands, settings=settings) as scene,
            _CancelOnInterrupt() as cancel,
        ):
            if stack is not None:
                stack.close()
                stack = SceneStack(
                    scene, stack.dates, stack.reference_index, settings=settings, bands=bands
                )
            ctx = ToolContext(
                scene=scene,
                run_dir=run_dir,
                region=box,
                settings=settings,
                progress=progress,
                is_cancelled=cancel.event.is_set,
                typed_paths=typed_paths,
                stack=stack,
            )
            try:
                outcome = run_tool(tool, ctx, tool_args, ray_address=args.ray)
            except ToolCancelled as exc:
                print(f"zoomearth tool: {exc}", file=sys.stderr)
                return 130
            finally:
                progress.close()
    finally:
        if outcome is None and new_run_dir:
            # A failed call removed its outputs; do not leave the folder it made behind.
            with contextlib.suppress(OSError):
                run_dir.rmdir()
    if args.json:
        _print_json({"run_dir": str(run_dir), **outcome.model_dump(mode="json")})
        return 0
    for w in outcome.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(outcome.text)
    for art in outcome.artifacts:
        print(f"  {art.ref:<12} {art.kind:<8} {art.path}")
    print(f"run directory: {run_dir}")
    return 0
