"""The ``zoomearth`` command line.

Every subcommand is a small function taking parsed arguments and the effective settings. Imports
are done inside the commands, so commands that need no model import no torch/transformers and
start fast. Errors raised on purpose (:class:`~zoomearth.errors.ZoomEarthError`) are printed as one
clear line on stderr with exit status 2, as are errors of the environment (a read-only or full
disk, missing permissions, a folder where a file belongs, a non-UTF-8 argument, an unwritable
database); anything else is a bug and shows its traceback. Error lines name outputs, never the
hidden temporary files they are written through.

Signals: Ctrl-C (SIGINT) and SIGTERM take the same path (:func:`sigterm_as_interrupt`): the
running tool stops, partial outputs and their temporaries are removed, a run's checkpoint stays
resumable, and one line says how to continue; the exit status is 130 after Ctrl-C and 143 after
SIGTERM (128 + the signal number, as a shell reports it). ``serve`` keeps the server's own
handling. A process killed with SIGKILL cannot clean up: the commands that read or write scenes
and runs (``ask``, ``tool``, ``view``, ``synth``, ``prepare``) first remove the temporaries in the
scene cache whose owner process is gone, ``ask`` those in its thread's run folder, ``tool --out``
those in its run folder, and every atomic write those of its own output
(:mod:`zoomearth.temporaries`).

``--set KEY=VALUE`` and ``--config FILE`` are accepted before the subcommand and after it (also
after nested ones such as ``planner inputs``): :func:`build_parser` adds them to every subcommand
parser once the command modules built theirs, and :func:`main` merges them in command-line order,
so for the same key the value after the subcommand wins (:data:`SETTINGS_OPTIONS_EPILOG`).

The helpers the sub-command modules share with this one (command registration, the settings
options, error lines, signals) live in :mod:`zoomearth.cli_common`, which imports none of
them; they are re-exported here under their old names.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

# Moved to zoomearth.cli_common; every one stays importable from here (tests and plugins use them).
from zoomearth.cli_common import (  # noqa: F401 - some are only re-exported
    _COMMANDS,
    _OS_ERROR_ADVICE,
    _SQLITE_ADVICE,
    _SUB_CONFIG_DEST,
    _SUB_DEST_PATTERN,
    _SUB_SET_DEST,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    NON_UTF8_TEMPLATE,
    OWN_CONFIG_EPILOG,
    SET_HELP,
    SETTINGS_OPTIONS_EPILOG,
    SUB_CONFIG_HELP,
    SUB_SET_HELP,
    Handler,
    Terminated,
    _add_settings_options,
    _error_text,
    _non_utf8_argument,
    _note,
    _os_error_line,
    _parse_bands,
    _print_json,
    _require_file_output,
    _settings_arguments,
    _sqlite_error_line,
    _subcommand_parsers,
    _warnings_on_one_line,
    add_asset_option,
    command,
    resolve_scene_argument,
    sigterm_as_interrupt,
)
from zoomearth.errors import ZoomEarthError

__all__ = [
    "EXIT_BROKEN_PIPE", "EXIT_INTERRUPTED", "EXIT_TERMINATED", "Terminated", "main", "build_parser"
]

#: Exit status when the reader of stdout went away (128 + SIGPIPE, as a shell reports it).
EXIT_BROKEN_PIPE = 141

# Commands that read or write scenes or runs: they sweep the scene cache's stale temporaries
# first. `cache` does it in `cache clear`; `cache list` only reports them.
_SWEEPING_COMMANDS = frozenset({"ask", "tool", "view", "synth", "prepare"})
# Commands that keep their own signal handling (uvicorn installs the server's).
_OWN_SIGNAL_COMMANDS = frozenset({"serve"})
SWEPT_TEMPLATE = (
    "removed {files} stale temporary file(s) ({size}) left in {dir} by processes that are gone"
)

# Keep in step with zoomearth.synth.MIN_SIZE (not imported: the parser must start light).
SYNTH_MIN_SIZE = 64


def _synth_size(text: str) -> int:
    """``synth --size``: a whole number of pixels, at least :data:`SYNTH_MIN_SIZE`."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expects a whole number of pixels, e.g. 1024; got {text!r}"
        ) from None
    if value < SYNTH_MIN_SIZE:
        raise argparse.ArgumentTypeError(
            f"must be at least {SYNTH_MIN_SIZE} px a side; got {value}. Give e.g. --size 1024"
        )
    return value


def _synth_clouds(text: str) -> float:
    """``synth --clouds``: a finite cloud-cover fraction in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(
            f"is the cloud-cover fraction, a number from 0 to 1 (e.g. 0.2); got {text!r}"
        )
    return value


def _synth_seed(text: str) -> int:
    """``synth --seed``: a non-negative whole number."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expects a whole number >= 0; got {text!r}")
    return value




def _sweep_cache(cache: Any) -> Any:
    """Remove the scene cache's stale temporaries; returns what was removed (``Swept``)."""
    from zoomearth.temporaries import Swept

    try:
        return cache.sweep()
    except OSError:  # an unreadable cache folder: the command itself will say so if it matters
        return Swept()


def _sweep_at_start(args: argparse.Namespace, settings: Any) -> None:
    """Remove temporaries left by killed processes where this command is about to work.

    Cheap by design: the scene cache folder (flat) and, for ``tool --out DIR``, that run folder;
    never the whole of ``runs_dir``. ``ask`` sweeps its thread's run folder itself
    (:meth:`zoomearth.api.Agent.ask`), every atomic write its own output's siblings.
    """
    from zoomearth.scene.cache import SceneCache
    from zoomearth.temporaries import sweep_stale_temporaries

    cache = SceneCache.from_settings(settings)
    results = [(cache.root, _sweep_cache(cache))]
    if args.command == "tool" and getattr(args, "out", None):
        folder = Path(args.out).expanduser()
        results.append((folder, sweep_stale_temporaries(folder)))
    for folder, result in results:
        if result.files:
            size = _format_size(result.bytes)
            _note(args.command, SWEPT_TEMPLATE.format(files=result.files, size=size, dir=folder))


def _format_size(n: int) -> str:
    return f"{n:,} bytes" if n < 10**6 else f"{n / 1e6:,.1f} MB"



# ----------------------------------------------------------------------------------------------
# scene commands
# ----------------------------------------------------------------------------------------------
@command("info")
def cmd_info(args: argparse.Namespace, settings: Any) -> int:
    """Print a raster's metadata without decoding pixels (a folder: its time stack's dates)."""
    from zoomearth.scene import Scene

    if Path(args.image).is_dir():
        from zoomearth.cli_common import print_stack_info

        print_stack_info(args.image, settings, args.json)
        return 0
    with Scene.open(args.image, bands=_parse_bands(args.bands), settings=settings) as scene:
        info = scene.info()
    if args.json:
        _print_json(info)
        return 0
    rows = [
        ("path", info["path"]),
        ("driver", info["driver"]),
        (
            "size",
            f"{info['width']} x {info['height']} px, {info['count']} band(s), {info['dtype']}",
        ),
        ("file size", f"{info['file_size']:,} bytes"),
        ("nodata", info["nodata"]),
        ("crs", info["crs"] or "none (pixel coordinates only)"),
    ]
    if info["georeferenced"]:
        rows.append(("bounds", ", ".join(f"{v:.3f}" for v in info["bounds"])))
    if info["pixel_size"]:
        rows.append(("pixel size", " x ".join(f"{v:g}" for v in info["pixel_size"])))
    rows += [
        ("colour interp.", ", ".join(info["colorinterp"])),
        (
            "layout",
            f"{'tiled' if info['tiled'] else 'untiled'} {info['block_shape']}, "
            f"overviews {info['overviews'] or 'none'}",
        ),
        ("band mapping", info["band_mapping"].get("note") or info["band_mapping"].get("error")),
        (
            "prepared copy",
            "needed (built on first use, or run 'zoomearth prepare')"
            if info["needs_preparation"]
            else "not needed",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


@command("view")
def cmd_view(args: argparse.Namespace, settings: Any) -> int:
    """Render an overview (no box) or a region at long side --side into a PNG, JPEG or GeoTIFF.

    The output's extension names the format (:data:`zoomearth.scene.scene.VIEW_FORMATS`); an
    unknown one is refused before anything is read. A region with no valid pixel (all NaN, +-Inf,
    nodata or transparent) is an error, not a black image; one with fewer than
    :data:`~zoomearth.scene.scene.FEW_VALID_FRACTION` valid pixels is written with a warning.
    """
    from zoomearth.geometry import parse_box
    from zoomearth.scene import Scene
    from zoomearth.scene.scene import (
        FEW_VALID_FRACTION,
        FEW_VALID_PIXELS_TEMPLATE,
        NO_VALID_PIXELS_TEMPLATE,
        view_format,
    )

    _require_file_output(args.output, "-o", "view.png")
    out = Path(args.output)
    view_format(out)
    box = parse_box(args.box) if args.box else None
    with Scene.open(args.image, bands=_parse_bands(args.bands), settings=settings) as scene:
        view = scene.render(box, max_side=args.side)
    region = view.spec.region
    if not view.valid.any():
        raise ZoomEarthError(NO_VALID_PIXELS_TEMPLATE.format(path=args.image, region=region))
    for w in view.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if view.valid_fraction < FEW_VALID_FRACTION:
        percent = f"{view.valid_fraction:.1%}" if view.valid_fraction >= 0.001 else "under 0.1%"
        print(
            f"warning: {FEW_VALID_PIXELS_TEMPLATE.format(percent=percent, region=region)}",
            file=sys.stderr,
        )
    scene.write_view(view, out, protect=[args.image])
    print(
        f"wrote {out} ({view.spec.width}x{view.spec.height} px) showing full-resolution region "
        f"{region} of {scene.width}x{scene.height}"
    )
    return 0


@command("prepare")
def cmd_prepare(args: argparse.Namespace, settings: Any) -> int:
    """Build the cached tiled, overviewed copy of a raster (whatever ``max_prepare_pixels``)."""
    from zoomearth.scene import Scene

    with Scene.open(args.image, settings=settings, prepare=True) as scene:
        # An explicit, one-time preparation: the per-request work budget does not apply.
        path = scene.prepare(progress=True, enforce_budget=False)
    print(f"prepared copy: {path}")
    return 0


@command("synth")
def cmd_synth(args: argparse.Namespace, settings: Any) -> int:
    """Generate a synthetic georeferenced scene with planted objects.

    The one command line of :mod:`zoomearth.synth` (``python -m zoomearth.scene.synth`` runs
    this too).
    """
    # Looked up through zoomearth.scene.synth, the path tests patch it at.
    from zoomearth.scene.synth import generate_scene

    _require_file_output(args.output, "OUTPUT", "scene.tif")
    result = generate_scene(
        Path(args.output),
        (args.size, args.height) if args.height else args.size,
        seed=args.seed,
        clouds=args.clouds,
        bands=args.bands_count,
        dtype=args.dtype,
        compress=args.compress,
        quality=args.quality,
        tile=args.tile,
        progress=not args.no_progress,
        # Refused before anything is written: a larger scene could not be opened anyway.
        max_pixels=settings.max_image_pixels,
    )
    print(f"wrote {result.image_path} and {result.sidecar_path}")
    mb = result.image_path.stat().st_size / 1e6
    frac = "" if result.cloud_fraction is None else f", clouds {result.cloud_fraction:.3f}"
    phases = ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items())
    print(
        f"{result.image_path}: {result.size[0]}x{result.size[1]} px, {mb:.1f} MB, "
        f"{len(result.objects)} objects{frac}, {result.seconds:.1f} s ({phases})"
    )
    return 0


@command("cache")
def cmd_cache(args: argparse.Namespace, settings: Any) -> int:
    """List or clear the prepared-raster cache, temporaries included.

    ``list`` shows the entries and the temporary files (partial copies): how many, their bytes,
    and how many are stale (their process is gone: litter of a killed run) or owned by a live
    process (a copy being prepared right now); ``--json`` prints the entries only, as a list.
    ``list`` changes nothing; ``clear`` removes the entries and the stale temporaries and says
    so, and keeps the live ones.
    """
    from zoomearth.scene.cache import SceneCache

    cache = SceneCache.from_settings(settings)
    if args.action == "clear":
        swept = _sweep_cache(cache)
        freed = cache.clear()
        kept = cache.temporaries()
        print(f"cleared {cache.root} ({freed + swept.bytes:,} bytes freed)")
        print(
            f"removed {swept.files} stale temporary file(s) ({swept.bytes:,} bytes) left by "
            "processes that are gone"
        )
        if kept:
            print(
                f"kept {len(kept)} temporary file(s) ({sum(t.size_bytes for t in kept):,} bytes) "
                "of running processes (copies being prepared now)"
            )
        return 0
    entries = cache.entries()
    if args.json:
        # The entries only, as before (scripts read this list); temporaries are in the text.
        _print_json([e.__dict__ for e in entries])
        return 0
    total = sum(e.size_bytes for e in entries)
    print(f"{cache.root}: {len(entries)} entries, {total:,} of {cache.max_bytes:,} bytes")
    for e in entries:
        print(f"  {e.key}  {e.size_bytes:>14,}  {e.source}")
    temps = cache.temporaries()
    stale = [t for t in temps if t.stale]
    live = [t for t in temps if not t.stale]
    line = f"temporaries: {len(temps)} file(s), {sum(t.size_bytes for t in temps):,} bytes"
    if temps:
        line += (
            f": {len(stale)} stale ({sum(t.size_bytes for t in stale):,} bytes, their process is "
            f"gone; 'zoomearth cache clear' removes them), {len(live)} being written by a "
            f"running process ({sum(t.size_bytes for t in live):,} bytes)"
        )
    print(line)
    return 0


@command("config")
def cmd_config(args: argparse.Namespace, settings: Any) -> int:
    """Print the effective settings and where each value came from."""
    from zoomearth.config import config_file_of, default_config_path, describe_settings

    rows = describe_settings(settings)
    if args.json:
        _print_json(rows)
        return 0
    file = config_file_of(settings)
    print(f"config file: {file if file else f'none (looked for {default_config_path()})'}")
    width = max(len(r["key"]) for r in rows)
    for r in rows:
        print(f"{r['key']:<{width}}  {json.dumps(r['value'])}  [{r['source']}]")
    return 0


@command("models")
def cmd_models(args: argparse.Namespace, settings: Any) -> int:
    """Show the model pool's budgets, and its resident models when used in this process.

    A CLI process has loaded no model yet, so this mainly shows the budgets the settings give
    each device; the server reports its live pool the same way.

    Devices are counted without importing torch (see
    :func:`~zoomearth.models.visible_cuda_devices`): an accelerator budget that is a fraction of
    free memory is computed from the driver's figure, or shown as measured on first use.
    """
    from zoomearth.models import (
        format_bytes,
        format_stats,
        get_default_pool,
        visible_cuda_devices,
    )

    pool = get_default_pool(settings)
    budgets: dict[str, int | None] = {"cpu": pool.budget("cpu")}
    for device in visible_cuda_devices():
        budget = pool.configured_budget(device.name)
        if budget is None and "torch" in sys.modules:
            budget = pool.budget(device.name)  # torch is here already: measure as the pool does
        elif budget is None and device.free_bytes is not None:
            budget = int(device.free_bytes * pool.budget_fraction)
        budgets[device.name] = budget
    stats = pool.stats()
    if args.json:
        _print_json({"budgets": budgets, "stats": stats.to_dict()})
        return 0
    source = settings.source_of("model_pool_budget_bytes")
    how = (
        f"setting model_pool_budget_bytes ({source})"
        if settings.model_pool_budget_bytes
        else f"{settings.model_pool_fraction:.0%} of free memory"
    )
    for device_name, budget in budgets.items():
        if budget is None:
            print(f"{device_name}: budget measured on first use ({how})")
        else:
            print(f"{device_name}: budget {format_bytes(budget)} ({how})")
    print()
    print(format_stats(stats))
    return 0


# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``zoomearth`` command."""
    p = argparse.ArgumentParser(
        prog="zoomearth",
        description="Active perception on ultra-high-resolution remote-sensing imagery.",
        epilog=SETTINGS_OPTIONS_EPILOG,
    )
    p.add_argument("--config", help="TOML settings file (default: the user's zoomearth.toml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("info", help="raster metadata (no pixels decoded)")
    s.add_argument("image")
    add_asset_option(s)
    s.add_argument("--bands", help="1-based band mapping shown as RGB, e.g. 3,2,1")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("view", help="render an overview or a region to PNG, JPEG or GeoTIFF")
    s.add_argument("image")
    add_asset_option(s)
    s.add_argument(
        "--box",
        help="x1,y1,x2,y2 in full-resolution pixels (default: whole image); "
        "write --box=-5,0,10,10 when it starts with a minus",
    )
    s.add_argument("--side", type=int, default=512, help="long side of the output (default 512)")
    s.add_argument("--bands", help="1-based band mapping shown as RGB, e.g. 3,2,1")
    s.add_argument(
        "-o", "--output", required=True, help="output image; .png, .jpg or .tif names the format"
    )

    s = sub.add_parser("prepare", help="build the cached tiled/overviewed copy of a raster")
    s.add_argument("image")
    add_asset_option(s)

    s = sub.add_parser("synth", help="generate a synthetic UHR scene (COG + sidecar JSON)")
    s.add_argument("output")
    s.add_argument(
        "--size",
        type=_synth_size,
        required=True,
        help=f"side length in pixels, the width with --height (at least {SYNTH_MIN_SIZE})",
    )
    s.add_argument("--seed", type=_synth_seed, default=0, help="random seed >= 0 (default 0)")
    s.add_argument(
        "--clouds", type=_synth_clouds, default=0.0, help="cloud cover fraction 0..1 (default 0)"
    )
    s.add_argument(
        "--height", type=_synth_size, default=None, help="height in pixels if not square"
    )
    s.add_argument(
        "--bands-count", "--bands", type=int, default=3, choices=(3, 4), help="3=RGB, 4=RGBN"
    )
    s.add_argument("--dtype", default="uint8", choices=("uint8", "uint16", "float32"))
    s.add_argument(
        "--compress",
        default="jpeg",
        help="jpeg (3-band uint8 only, else deflate), deflate, lzw, zstd or none",
    )
    s.add_argument("--quality", type=int, default=90, help="JPEG quality 1-100 (default 90)")
    s.add_argument("--tile", type=int, default=512, help="rendering tile, a multiple of 16")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")

    s = sub.add_parser("cache", help="list or clear the prepared-raster cache")
    s.add_argument("action", nargs="?", choices=("list", "clear"), default="list")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("config", help="effective settings and their sources")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("models", help="model pool budget and resident models")
    s.add_argument("--json", action="store_true")

    # Commands defined in their own modules (imported here so they register their handlers).
    from zoomearth.cli_ask import add_ask_command

    add_ask_command(sub)
    from zoomearth.eval.cli import add_eval_command

    add_eval_command(sub)
    from zoomearth.cli_batch import add_batch_command

    add_batch_command(sub)
    from zoomearth.train.cli import add_train_command

    add_train_command(sub)
    from zoomearth.cli_planner import add_planner_command

    add_planner_command(sub)
    from zoomearth.server.cli import add_serve_command

    add_serve_command(sub)
    from zoomearth.cli_tools import add_tool_commands

    add_tool_commands(sub)
    from zoomearth.cli_search import add_search_command

    add_search_command(sub)
    _add_settings_options(p)
    return p



def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from importlib.metadata import version

        print(version("zoomearth"))
        return 0
    if not args.command:
        parser.print_help()
        return 1
    non_utf8 = _non_utf8_argument(args)
    if non_utf8:
        print(f"zoomearth {args.command}: error: {non_utf8}", file=sys.stderr)
        return 2
    _warnings_on_one_line(args.command)
    signals = (
        contextlib.nullcontext() if args.command in _OWN_SIGNAL_COMMANDS else sigterm_as_interrupt()
    )
    try:
        with signals:
            from zoomearth.config import load_settings, parse_set_flags

            pairs, config_file = _settings_arguments(args)
            settings = load_settings(flags=parse_set_flags(pairs), config_file=config_file)
            if args.command in _SWEEPING_COMMANDS:
                _sweep_at_start(args, settings)
            if getattr(args, "image", None) is not None:
                resolve_scene_argument(args, settings)  # a STAC item -> its asset's raster
            return _COMMANDS[args.command](args, settings)
    except ZoomEarthError as exc:
        print(f"zoomearth {args.command}: error: {_error_text(exc)}", file=sys.stderr)
        return 2
    except argparse.ArgumentTypeError as exc:
        print(f"zoomearth {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        # Ctrl-C or SIGTERM: the clean-up already ran on the way here. A command that can be
        # continued put the way to do it on the exception (see zoomearth.cli_ask).
        terminated = isinstance(exc, Terminated)
        what = "terminated (SIGTERM)" if terminated else "interrupted"
        hint = getattr(exc, "resume_hint", None)
        _note(args.command, what + (f"; {hint}" if hint else ""))
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`zoomearth tools --json | head`): stop quietly, as Unix tools do
        # (status 128 + SIGPIPE); stdout goes to /dev/null so the exit's flush cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except OSError as exc:
        # Permissions, read-only or full disks, a folder where a file belongs ...: the
        # environment, not a bug. Anything else keeps its traceback.
        line = _os_error_line(exc)
        if line is None:
            raise
        print(f"zoomearth {args.command}: error: {_error_text(line)}", file=sys.stderr)
        return 2
    except sqlite3.OperationalError as exc:
        line = _sqlite_error_line(exc)
        if line is None:
            raise
        print(f"zoomearth {args.command}: error: {line}", file=sys.stderr)
        return 2
    except UnicodeEncodeError as exc:
        # Undecodable bytes (a non-UTF-8 file name or text) met an encoder further down.
        if "surrogates not allowed" not in str(exc.reason):
            raise
        value = exc.object if isinstance(exc.object, str) else repr(exc.object)
        message = NON_UTF8_TEMPLATE.format(what="a file name or text", value=ascii(value))
        print(f"zoomearth {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    # Run through the package module, not this __main__ copy: subcommands defined in other
    # modules register their handlers on zoomearth.cli.
    from zoomearth.cli import main as _main

    sys.exit(_main())
