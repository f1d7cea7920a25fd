"""Helpers shared by the ``zoomearth`` command line and its sub-command modules.

Command registration (:func:`command`), the ``--set``/``--config`` options accepted before and
after every (nested) subcommand and their merging (:func:`_settings_arguments`), band-mapping
parsing (:func:`_parse_bands`), output checks, the one-line error messages for errors of the
environment (operating system, sqlite, non-UTF-8 arguments) and SIGTERM handled as Ctrl-C
(:func:`sigterm_as_interrupt`).

:mod:`zoomearth.cli` and the sub-command modules (:mod:`zoomearth.cli_ask`,
:mod:`zoomearth.cli_tools`, :mod:`zoomearth.cli_planner`, :mod:`zoomearth.server.cli`,
:mod:`zoomearth.eval.cli`, :mod:`zoomearth.train.cli`) import from here; this module imports none
of them, so there is no import cycle. Every name is also importable from :mod:`zoomearth.cli`.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import re
import signal
import sqlite3
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from zoomearth.errors import ZoomEarthError

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_TERMINATED",
    "NON_UTF8_TEMPLATE",
    "OWN_CONFIG_EPILOG",
    "SETTINGS_OPTIONS_EPILOG",
    "SET_HELP",
    "SUB_CONFIG_HELP",
    "SUB_SET_HELP",
    "Handler",
    "Terminated",
    "command",
    "print_stack_info",
    "sigterm_as_interrupt",
]

#: Exit status after Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130
#: Exit status after SIGTERM (128 + SIGTERM, what a shell reports for a process SIGTERM ended).
EXIT_TERMINATED = 143

Handler = Callable[[argparse.Namespace, Any], int]
_COMMANDS: dict[str, Handler] = {}

SETTINGS_OPTIONS_EPILOG = (
    "--set and --config may be given before the command (zoomearth --set K=V ask ...) or after "
    "it (zoomearth ask ... --set K=V), also after nested commands; all --set values apply, and "
    "where two name the same key -- or both places give --config -- the one after the command "
    "wins."
)
OWN_CONFIG_EPILOG = (
    "--set may be given before the command or after it; where two name the same key, the one "
    "after the command wins. Here --config is this command's own option: give a settings file "
    "before the command (zoomearth --config FILE ...)."
)
SET_HELP = "override a setting (highest precedence); repeatable"
SUB_SET_HELP = "override a setting; repeatable; wins over --set given before the command"
SUB_CONFIG_HELP = "TOML settings file; wins over --config given before the command"
# Namespace attributes of the --set/--config options added to subcommand parsers, one per
# nesting level (a nested parser's namespace would otherwise overwrite its parent's values).
_SUB_SET_DEST = "settings_set_{depth}"
_SUB_CONFIG_DEST = "settings_config_{depth}"
_SUB_DEST_PATTERN = re.compile(r"^settings_(?:set|config)_(\d+)$")


def command(name: str) -> Callable[[Handler], Handler]:
    """Register a subcommand handler."""

    def deco(fn: Handler) -> Handler:
        _COMMANDS[name] = fn
        return fn

    return deco


def _parse_bands(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(p) for p in text.replace(" ", "").split(",") if p)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--bands expects 1-based band numbers like 3,2,1; got {text!r}"
        ) from None


# errno -> what to do about it, for the one-line message of an operating-system error.
_OS_ERROR_ADVICE: dict[int, str] = {
    errno.EACCES: "choose a writable folder (--out/-o) or fix its permissions",
    errno.EPERM: "choose a writable folder (--out/-o) or fix its permissions",
    errno.EROFS: "the file system is read-only: write elsewhere (--out/-o, --set data_dir=...)",
    errno.ENOSPC: "no space left on the device: free space or write elsewhere (--out/-o)",
    errno.EDQUOT: "disk quota exceeded: free space or write elsewhere (--out/-o)",
    errno.EFBIG: "the file is too large for this file system: write elsewhere (--out/-o)",
    errno.EISDIR: "that path is a folder: give a file name (e.g. -o out.png)",
    errno.ENOTDIR: "a part of that path is a file, not a folder: fix the path",
    errno.ENOENT: "a folder in that path does not exist: create it or fix the path",
    errno.EEXIST: "it already exists (a file where a folder is needed?): choose another path",
    errno.ENAMETOOLONG: "the path is too long: choose a shorter name",
    errno.EIO: "the device reported an I/O error: check the disk or write elsewhere",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) or close other programs",
}

# sqlite3.OperationalError messages that mean the database's folder or disk, not a bug.
_SQLITE_ADVICE: tuple[tuple[str, str], ...] = (
    ("unable to open database file", "choose a writable data folder (--set data_dir=...)"),
    ("readonly database", "choose a writable data folder (--set data_dir=...)"),
    ("database or disk is full", "no space left on the device: free space or move data_dir"),
    ("disk i/o error", "check the disk or choose another data folder (--set data_dir=...)"),
    ("database is locked", "another zoomearth process holds the database: wait and retry"),
)

NON_UTF8_TEMPLATE = (
    "{what} is not valid UTF-8 ({value}): rename the file to a UTF-8 name or re-type the text "
    "in UTF-8"
)


def _os_error_line(exc: OSError) -> str | None:
    """One line naming an operating-system error, its path and what to do; None if unknown."""
    advice = _OS_ERROR_ADVICE.get(exc.errno or 0)
    if advice is None:
        return None
    what = exc.strerror or str(exc)
    paths = [p for p in (exc.filename, exc.filename2) if p is not None]
    where = f" ({' -> '.join(str(p) for p in paths)})" if paths else ""
    return f"{what}{where}: {advice}"


def _sqlite_error_line(exc: sqlite3.OperationalError) -> str | None:
    text = str(exc)
    for needle, advice in _SQLITE_ADVICE:
        if needle in text.lower():
            return f"database error: {text}: {advice}"
    return None


def _non_utf8_argument(args: argparse.Namespace) -> str | None:
    """The message for the first argument that is not valid UTF-8 (undecodable bytes), or None."""
    for name, value in vars(args).items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str):
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return NON_UTF8_TEMPLATE.format(what=f"argument {name}", value=ascii(item))
    return None


def _require_file_output(path: str, option: str, example: str) -> None:
    """Refuse an output path that names an existing folder (one clear line, not a traceback)."""
    if Path(path).is_dir():
        raise ZoomEarthError(
            f"{option} {path} is a folder: give a file name, e.g. {Path(path) / example}"
        )


def _warnings_on_one_line(command_name: str) -> None:
    """Print Python warnings (e.g. a georeference that cannot be right) as one line each.

    ``zoomearth CMD: warning: TEXT`` on stderr, instead of Python's two lines with the source file
    and line. Set by :func:`zoomearth.cli.main` for the rest of the process (a command line is
    one process).
    """

    def show(message: Warning | str, category: type[Warning], *_args: Any, **_kw: Any) -> None:
        print(f"zoomearth {command_name}: warning: {message}", file=sys.stderr)

    warnings.showwarning = show


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that the clean-up paths of Ctrl-C run.

    A subclass of ``KeyboardInterrupt``: every ``except KeyboardInterrupt`` and ``finally`` that
    stops a tool, removes temporaries or releases a thread's lock handles it the same way.
    """


def print_stack_info(folder: str | Path, settings: Any, as_json: bool) -> None:
    """``zoomearth info FOLDER``: the dates of a folder time stack (headers only)."""
    from zoomearth.scene.stack import SceneStack

    stack = SceneStack.from_folder(folder, settings=settings)
    try:
        info = stack.info()
    finally:
        stack.close()
    if as_json:
        _print_json(info)
        return
    print(f"time stack: {len(info['dates'])} dates, reference grid {info['reference']}")
    for row in info["dates"]:
        mark = "*" if row["reference"] else " "
        size = f"{row['width']} x {row['height']} px, {row['count']} band(s)"
        print(f"{mark} {row['label']:<12} {size}, {row['crs'] or 'no crs'}  {row['source']}")
    print("* = reference grid (every box and read is in its pixels)")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`Terminated` in the main thread.

    Only the first SIGTERM raises; later ones are ignored so they cannot cut the clean-up short
    (SIGKILL still ends the process at once). Outside the main thread (the handler can only be
    installed there) nothing changes. The previous handler is restored afterwards.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        if previous is not None:  # None: a handler installed from C; leave ours off then
            signal.signal(signal.SIGTERM, previous)
        else:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _note(command_name: str, text: str) -> None:
    print(f"zoomearth {command_name}: {text}", file=sys.stderr)


def _error_text(exc: BaseException | str) -> str:
    """The text of an error line; hidden temporary names become the outputs they stand for."""
    text = str(exc)
    if ".tmp" in text:
        from zoomearth.scene.writing import mask_temporary_names

        text = mask_temporary_names(text)
    return text


# ----------------------------------------------------------------------------------------------
# --set / --config before and after the subcommands
# ----------------------------------------------------------------------------------------------
def _subcommand_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers of ``parser``'s subcommands (each once, aliases included)."""
    found: dict[int, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found.setdefault(id(child), child)
    return list(found.values())


def _add_settings_options(parser: argparse.ArgumentParser, depth: int = 1) -> None:
    """Accept ``--set`` and ``--config`` after every (nested) subcommand too.

    Added after the subcommand modules built their parsers, so they need not know about it. A
    subcommand that defines its own option of that name keeps it (``train sft --config`` is the
    training YAML); the global option before the command still works there. Values land in
    per-level attributes (:data:`_SUB_SET_DEST`) that :func:`_settings_arguments` merges.
    """
    for child in _subcommand_parsers(parser):
        taken = child._option_string_actions
        own_config = "--config" in taken
        if "--set" not in taken:
            child.add_argument(
                "--set",
                action="append",
                default=[],
                metavar="KEY=VALUE",
                dest=_SUB_SET_DEST.format(depth=depth),
                help=SUB_SET_HELP,
            )
        if not own_config:
            child.add_argument(
                "--config",
                dest=_SUB_CONFIG_DEST.format(depth=depth),
                metavar="CONFIG",
                help=SUB_CONFIG_HELP,
            )
        if child.epilog is None:
            child.epilog = OWN_CONFIG_EPILOG if own_config else SETTINGS_OPTIONS_EPILOG
        _add_settings_options(child, depth + 1)


def _settings_arguments(args: argparse.Namespace) -> tuple[list[str], str | None]:
    """Merge ``--set``/``--config`` from before and after the (nested) subcommands.

    Returns:
        The ``--set`` pairs in command-line order (so a later pair for the same key wins) and
        the ``--config`` file given last (the innermost command's), or None.
    """
    pairs = list(args.set)
    config = args.config
    depths = sorted({int(m.group(1)) for key in vars(args) if (m := _SUB_DEST_PATTERN.match(key))})
    for depth in depths:
        pairs += getattr(args, _SUB_SET_DEST.format(depth=depth), None) or []
        config = getattr(args, _SUB_CONFIG_DEST.format(depth=depth), None) or config
    return pairs, config


#: ``--asset`` help, shared by the commands that take a scene (IMAGE).
ASSET_HELP = (
    "with a STAC item as IMAGE (ITEM.json or an item URL): the asset to open (default: the "
    "visual/RGB asset); same as IMAGE#KEY"
)


def add_asset_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--asset KEY`` (which asset of a STAC item IMAGE to open) to a scene command."""
    parser.add_argument("--asset", metavar="KEY", help=ASSET_HELP)


def resolve_scene_argument(args: argparse.Namespace, settings: Any = None) -> None:
    """Turn a STAC item given as ``args.image`` into the raster to open, in place.

    A raster path or URL is left as it is (no file is read for it). An item (``ITEM.json``, an
    item URL, a one-item saved search; ``--asset KEY`` or ``IMAGE#KEY`` picks the asset) becomes
    its asset's href, and one line on stderr says which item, asset and date it is. A saved
    search of several items is a time stack: for commands with ``--stack`` the newest item
    becomes IMAGE (the reference grid, as for a folder of dates) and the others are put first in
    ``args.stack`` (the date labels, IMAGE's first, in ``args.stack_labels``); other commands
    refuse it with a one-line error. ``--stack`` entries that are STAC sources become their
    items' hrefs (``ITEM#KEY`` picks the asset).
    :mod:`zoomearth.cli` calls this before every command that has an ``image`` argument.
    """
    image = getattr(args, "image", None)
    asset = getattr(args, "asset", None)
    if image is None or (args.command == "ask" and not getattr(args, "question", None)):
        return  # `ask --thread ID "question"` puts the question where IMAGE goes
    from zoomearth.scene.stac import is_stac_source, resolve_image, stack_sources

    if getattr(args, "stack", None):  # --stack dates may be items or saved searches too
        args.stack = [
            href
            for source in args.stack
            for href in (
                [r.href for r in stack_sources(source, settings=settings)]
                if is_stac_source(source)
                else [source]
            )
        ]
    if not is_stac_source(image):
        resolve_image(image, asset)  # refuses --asset with a raster
        return
    items = stack_sources(image, asset, settings=settings)
    if len(items) > 1 and hasattr(args, "stack"):
        # The newest item is the reference grid, as for a folder of dates (docs/stacks.md).
        newest, older = items[-1], items[:-1]
        args.image = newest.href
        args.stack = [r.href for r in older] + list(args.stack or [])
        args.stack_labels = [newest.label] + [r.label for r in older]
        _note(args.command, f"{image}: a saved search of {len(items)} items, a time stack:")
        for r in items:
            _note(args.command, f"  {r.describe()}")
        return
    if len(items) > 1:
        from zoomearth.scene.stac import resolve_item

        resolve_item(image, asset, settings=settings)  # the several-items error, with examples
    args.image = items[0].href
    _note(args.command, items[0].describe())
