"""The runner: :func:`run_tool`, the single code path that runs a tool, and its checks.

:func:`run_tool` runs a tool for the graph's tool nodes, the ``zoomearth tool`` command and the
contract kit (:mod:`zoomearth.testing`). It

1. validates the arguments against ``Args`` (unknown or invalid arguments become a
   :class:`ToolInputError` whose message lists the valid arguments, for the planner to fix),
2. checks the declared capabilities against the scene (band counts, dtypes, georeference),
3. validates the region (full-resolution pixels; None = the whole scene) and enforces the
   one-piece limit: a region with a side above ``capabilities.max_side`` is streamed tile by tile
   when the tool can (``capabilities.streaming``) and refused with a message naming the limit
   otherwise,
4. resolves ``"artifact:N"`` references to earlier artifacts and checks path arguments against the
   setting ``allowed_roots`` (:mod:`zoomearth.tools.paths`); a path the user typed on the command
   line for this run (``ToolContext.typed_paths``) is allowed as well -- a path only a planner or
   a client wrote stays confined to ``allowed_roots``,
5. calls the tool's optional preflight :meth:`Tool.check` (steps 1-5 alone:
   :func:`check_tool_call`, which the graph runs before asking for approval),
6. calls ``run`` and turns anything unexpected into a :class:`ToolFailure` (the cause chained; a
   full disk named as such, temporary file names replaced by the outputs' names),
7. checks the returned artifacts (inside the run directory, never the input, the input unchanged),
   registers them in the run's :class:`~zoomearth.artifacts.ArtifactStore` and returns a small,
   JSON-serialisable :class:`ToolOutcome`.

A cancelled call (``ctx.is_cancelled()`` true at any check, or once ``run`` returns) raises
:class:`ToolCancelled` and leaves no artifact behind. A tool declaring
``Capabilities(independent_tiles=True)`` that processes its tiles through
:meth:`ToolContext.map_tiles` keeps its finished tiles (:class:`~zoomearth.tools.tiles.TileCache`)
when it is cancelled or fails, and the same call reuses them; they are removed once the call
succeeds.

Error policy: :class:`ToolInputError` is a problem the planner can fix (its message is shown to the
model; its ``code`` comes from the check that refused the call, or from the ``code`` a typed
:class:`~zoomearth.errors.BoxError` carries); :class:`ToolFailure` is a broken tool or environment
(recorded, the run goes on to a best-effort answer; tests run strict and re-raise it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from zoomearth.artifacts import (
    ArtifactDraft,
    format_artifact_ref,
    guess_media_type,
    parse_artifact_ref,
)
from zoomearth.errors import BoxError
from zoomearth.geometry import PixelBox
from zoomearth.tools.context import (
    ToolContext,
    _available,
    _box_size,
    _resolve_typed,
    absolute_dir,
)
from zoomearth.tools.contract import (
    MAX_DATA_BYTES,
    MAX_TEXT_CHARS,
    RESERVED_ARGS,
    ArtifactRefSpec,
    PathArgSpec,
    Tool,
    ToolOutcome,
    ToolResult,
    _marked_fields,
    _values,
)
from zoomearth.tools.errors import (
    ARTIFACT_KIND_TEMPLATE,
    ARTIFACT_MISSING_FILE_TEMPLATE,
    BAD_RESULT_TEMPLATE,
    BANDS_TEMPLATE,
    BOX_TEMPLATE,
    DATA_TEMPLATE,
    DTYPES_TEMPLATE,
    GEOREF_TEMPLATE,
    INPUT_CHANGED_TEMPLATE,
    INVALID_ARGS_TEMPLATE,
    MISSING_ARTIFACT_TEMPLATE,
    NOT_A_FILE_TEMPLATE,
    NOT_OBJECT_TEMPLATE,
    OUTSIDE_RUN_DIR_TEMPLATE,
    OVER_INPUT_TEMPLATE,
    OVERWRITES_ARTIFACT_TEMPLATE,
    PATH_ARG_TEMPLATE,
    PREVIEW_TYPE_TEMPLATE,
    REGION_TOO_LARGE_TEMPLATE,
    RESERVED_ARG_TEMPLATE,
    TYPED_PATH_MISSING_TEMPLATE,
    TYPED_PATH_NOT_FILE_TEMPLATE,
    UNKNOWN_ARGS_TEMPLATE,
    UNKNOWN_ARTIFACT_TEMPLATE,
    ToolCancelled,
    ToolError,
    ToolFailure,
    ToolInputError,
)
from zoomearth.tools.failures import _contract_failure, _failure
from zoomearth.tools.schema import _format_validation_error, describe_arguments
from zoomearth.tools.tiles import TILE_CACHE_FORMAT, _source_digest

if TYPE_CHECKING:
    from zoomearth.scene import Scene

__all__ = ["check_tool_call", "run_tool"]

RAY_LOCAL_TEMPLATE = (
    "'{tool}' does not declare independent tiles, so it ran here, not on the Ray cluster."
)


# --------------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------------
def argument_problem(tool: Tool, args: Mapping[str, Any]) -> str | None:
    """What :func:`run_tool` would say about these arguments, or None when it accepts them.

    The same validation as a call (the tool's ``Args`` pydantic model, unknown and reserved
    names), without the region or the scene: a planner fills arguments and checks them here, so
    there is one validator. ``args`` must not hold the region arguments (``bbox_2d``, ``view``;
    see :func:`~zoomearth.tools.schema.split_region_args`).
    """
    try:
        _validate_args(tool, args)
    except ToolInputError as exc:
        return str(exc)
    return None


def _validate_args(tool: Tool, args: Mapping[str, Any] | BaseModel | None) -> BaseModel:
    args_cls = tool.Args
    if isinstance(args, args_cls):
        return args
    if isinstance(args, BaseModel):
        args = args.model_dump()
    if args is None:
        args = {}
    valid = describe_arguments(args_cls)
    if not isinstance(args, Mapping):
        raise ToolInputError(
            NOT_OBJECT_TEMPLATE.format(tool=tool.name, got=type(args).__name__, valid=valid),
            tool=tool.name,
        )
    reserved = sorted(set(args) & set(RESERVED_ARGS))
    if reserved:
        raise ToolInputError(
            RESERVED_ARG_TEMPLATE.format(tool=tool.name, names=", ".join(reserved)), tool=tool.name
        )
    known = set(args_cls.model_fields) | {
        f.alias for f in args_cls.model_fields.values() if f.alias
    }
    unknown = sorted(str(k) for k in args if k not in known)
    if unknown:
        names = ", ".join(f"'{k}'" for k in unknown)
        raise ToolInputError(
            UNKNOWN_ARGS_TEMPLATE.format(tool=tool.name, names=names, valid=valid), tool=tool.name
        )
    try:
        return args_cls.model_validate(dict(args))
    except ValidationError as exc:
        raise ToolInputError(
            INVALID_ARGS_TEMPLATE.format(
                tool=tool.name, problems=_format_validation_error(exc), valid=valid
            ),
            tool=tool.name,
        ) from None


def _check_capabilities(tool: Tool, scene: Scene) -> None:
    caps = tool.capabilities
    if not caps.accepts_bands(scene.count):
        accepted = " or ".join(str(b) for b in caps.bands or ())
        raise ToolInputError(
            BANDS_TEMPLATE.format(tool=tool.name, accepted=accepted, count=scene.count),
            code="unsupported_image",
            tool=tool.name,
        )
    if not caps.accepts_dtype(scene.dtype):
        raise ToolInputError(
            DTYPES_TEMPLATE.format(
                tool=tool.name, accepted=", ".join(caps.dtypes or ()), dtype=scene.dtype
            ),
            code="unsupported_image",
            tool=tool.name,
        )
    if caps.requires_georeference and not scene.georeferenced:
        raise ToolInputError(
            GEOREF_TEMPLATE.format(tool=tool.name), code="unsupported_image", tool=tool.name
        )


def _box_input_error(tool: Tool, exc: BoxError) -> ToolInputError:
    """The planner's error for an unusable box; its code is the one the BoxError carries."""
    return ToolInputError(
        BOX_TEMPLATE.format(tool=tool.name, reason=exc), code=exc.code, tool=tool.name
    )


def _check_region(tool: Tool, ctx: ToolContext) -> tuple[PixelBox, bool]:
    scene = ctx.scene
    try:
        region, notes = scene.check_box(ctx.region)
    except BoxError as exc:
        raise _box_input_error(tool, exc) from None
    ctx.warnings.extend(notes)
    region = region.snap_out()
    limit = tool.capabilities.max_side
    width, height = _box_size(region)
    too_large = limit is not None and max(width, height) > limit
    if too_large and not tool.capabilities.streaming:
        raise ToolInputError(
            REGION_TOO_LARGE_TEMPLATE.format(
                tool=tool.name, limit=limit, box=region, width=width, height=height
            ),
            code="region_too_large",
            tool=tool.name,
        )
    return region, too_large


def _resolve_refs(tool: Tool, ctx: ToolContext, args: BaseModel) -> None:
    marked = _marked_fields(tool.Args, ArtifactRefSpec)
    if not marked:
        return
    known = ctx.known_artifacts()
    for arg, spec in marked.items():
        for ref in _values(getattr(args, arg)):
            art_id = parse_artifact_ref(ref)
            art = known.get(art_id)
            if art is None:
                raise ToolInputError(
                    UNKNOWN_ARTIFACT_TEMPLATE.format(
                        arg=arg,
                        tool=tool.name,
                        ref=format_artifact_ref(art_id),
                        available=_available(known),
                    ),
                    code="unknown_artifact",
                    tool=tool.name,
                )
            if spec.kinds and art.kind not in spec.kinds:
                raise ToolInputError(
                    ARTIFACT_KIND_TEMPLATE.format(
                        arg=arg,
                        tool=tool.name,
                        kinds=" or ".join(spec.kinds),
                        ref=art.ref,
                        kind=art.kind,
                        summary=art.summary or Path(art.path).name,
                    ),
                    code="unknown_artifact",
                    tool=tool.name,
                )
            if not Path(art.path).exists():
                raise ToolInputError(
                    ARTIFACT_MISSING_FILE_TEMPLATE.format(
                        arg=arg, tool=tool.name, ref=art.ref, path=art.path
                    ),
                    code="unknown_artifact",
                    tool=tool.name,
                )
            ctx._resolved_refs[str(ref)] = art
            ctx._protected.append(Path(art.path))


def _typed_path(ctx: ToolContext, value: Any) -> Path | None:
    """The resolved path when ``value`` names a file the user typed for this run, else None."""
    if not ctx.typed_paths or not isinstance(value, str | os.PathLike):
        return None
    text = os.fspath(value)
    if not isinstance(text, str) or not text or "\x00" in text or text.startswith("file:"):
        return None
    try:
        resolved = _resolve_typed(text)
    except (OSError, RuntimeError, ValueError):  # symlink loops, unusable paths
        return None
    return resolved if resolved in ctx.typed_paths else None


def _check_path(ctx: ToolContext, arg: str, spec: PathArgSpec, value: Any) -> Path:
    """One path argument: a typed path of this run, or a path inside ``allowed_roots``."""
    from zoomearth.tools.paths import PathNotAllowedError, check_allowed_path

    typed = _typed_path(ctx, value)
    if typed is None:
        return check_allowed_path(
            value, ctx.allowed_roots, must_exist=spec.must_exist, purpose=f"Argument '{arg}'"
        )
    if spec.must_exist and not typed.exists():
        raise PathNotAllowedError(TYPED_PATH_MISSING_TEMPLATE.format(arg=arg, path=str(value)))
    if typed.is_dir():
        raise PathNotAllowedError(TYPED_PATH_NOT_FILE_TEMPLATE.format(arg=arg, path=str(value)))
    return typed


def _check_paths(tool: Tool, ctx: ToolContext, args: BaseModel) -> BaseModel:
    from zoomearth.tools.paths import PathNotAllowedError

    marked = _marked_fields(tool.Args, PathArgSpec)
    if not marked:
        return args
    updates: dict[str, Any] = {}
    for arg, spec in marked.items():
        value = getattr(args, arg)
        try:
            checked = [str(_check_path(ctx, arg, spec, v)) for v in _values(value)]
        except PathNotAllowedError as exc:
            raise ToolInputError(
                PATH_ARG_TEMPLATE.format(tool=tool.name, reason=exc),
                code="path_not_allowed",
                tool=tool.name,
            ) from None
        ctx._protected.extend(Path(p) for p in checked)
        if value is not None:
            updates[arg] = checked if isinstance(value, list | tuple) else checked[0]
    return args.model_copy(update=updates)


def _input_stamp(paths: Iterable[Path]) -> list[tuple[Path, int, int]]:
    out = []
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            continue
        out.append((p, st.st_size, st.st_mtime_ns))
    return out


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or os.path.samefile(a, b)
    except OSError:
        return False


def _check_draft(ctx: ToolContext, draft: ArtifactDraft) -> str | None:
    path = _draft_path(ctx, draft.path)
    run_dir = ctx.run_dir.resolve()
    resolved = path.resolve()
    if not (resolved == run_dir or run_dir in resolved.parents):
        return OUTSIDE_RUN_DIR_TEMPLATE.format(path=path, run_dir=run_dir)
    if not path.exists():
        return MISSING_ARTIFACT_TEMPLATE.format(path=path)
    if not resolved.is_file():
        return NOT_A_FILE_TEMPLATE.format(path=path)
    for prot in ctx.protected_paths:
        if _same_file(path, prot):
            return OVER_INPUT_TEMPLATE.format(path=path, input=prot)
    return None


def _cleanup(ctx: ToolContext, created: bool = False) -> None:
    """Remove every file issued to the call (final, temporary and sidecar names).

    Args:
        ctx: The call's context.
        created: The call created the run directory: remove it too when it is left empty (a
            refused or failed call leaves no empty folder; kept tiles keep it).
    """
    from contextlib import suppress

    for path in ctx._issued:
        candidates = [path, *path.parent.glob(f".{path.name}.tmp-*")]
        for c in candidates:
            for extra in (c, *(c.with_name(c.name + s) for s in (".aux.xml", ".ovr", ".msk"))):
                with suppress(FileNotFoundError, IsADirectoryError):
                    extra.unlink()
    if created:
        with suppress(OSError):
            ctx.run_dir.rmdir()  # only when empty


def _resolve_tool(tool: Tool | type[Tool] | str, registry: Any) -> Tool:
    if isinstance(tool, str):
        if registry is None:
            from zoomearth.tools.registry import get_registry

            registry = get_registry()
        return registry.get_tool(tool)
    if isinstance(tool, type) and issubclass(tool, Tool):
        return tool()
    if isinstance(tool, Tool):
        return tool
    raise TypeError(f"run_tool needs a Tool, a Tool subclass or a tool name; got {tool!r}")


def _prepare_call(
    instance: Tool, ctx: ToolContext, args: Mapping[str, Any] | BaseModel | None
) -> tuple[ToolContext, BaseModel]:
    """The runner's checks, in order, on a copy of ``ctx``; returns the copy and the arguments."""
    ctx = dataclasses.replace(ctx)
    ctx.tool_name = instance.name
    ctx._caps = instance.capabilities
    if ctx.step is not None:
        ctx._call_id = f"s{ctx.step:03d}-{secrets.token_hex(2)}"
    ctx.check_cancelled()

    validated = _validate_args(instance, args)
    _check_capabilities(instance, ctx.scene)
    ctx.region, ctx.streamed = _check_region(instance, ctx)
    _resolve_refs(instance, ctx, validated)
    validated = _check_paths(instance, ctx, validated)
    return ctx, validated


def _preflight(instance: Tool, ctx: ToolContext, validated: BaseModel) -> None:
    """The tool's own :meth:`Tool.check`; unexpected exceptions become a ToolFailure."""
    try:
        instance.check(ctx, validated)
    except ToolError:
        raise
    except BoxError as exc:
        raise _box_input_error(instance, exc) from exc
    except Exception as exc:
        raise _failure(instance, ctx, exc) from exc


def check_tool_call(
    tool: Tool | type[Tool] | str,
    ctx: ToolContext,
    args: Mapping[str, Any] | BaseModel | None = None,
    *,
    registry: Any = None,
) -> None:
    """Check a call without running it: the runner's checks, then the tool's :meth:`Tool.check`.

    The graph calls this before asking the user to approve a ``needs_approval`` tool. Nothing is
    written (the run directory is not even created).

    Raises:
        ToolInputError: The call would be refused (message for the planner).
        ToolCancelled: The call was cancelled.
        ToolFailure: The tool's check itself broke.
    """
    instance = _resolve_tool(tool, registry)
    ctx, validated = _prepare_call(instance, ctx, args)
    _preflight(instance, ctx, validated)


def run_tool(
    tool: Tool | type[Tool] | str,
    ctx: ToolContext,
    args: Mapping[str, Any] | BaseModel | None = None,
    *,
    registry: Any = None,
    ray_address: str | None = None,
) -> ToolOutcome:
    """Run one tool call through the contract's checks (the single code path for every caller).

    Args:
        tool: A tool instance, class, or registered name.
        ctx: The call's context (not modified: the runner works on a copy).
        args: Arguments as a mapping (the planner's JSON object without ``bbox_2d``/``view``) or an
            ``Args`` instance.
        registry: Registry for name lookups (default: the process registry).
        ray_address: Compute the tiles of a tool with ``independent_tiles`` as Ray tasks
            (:mod:`zoomearth.tools.distributed`): ``local`` (start Ray in this process),
            ``auto``, ``HOST:PORT`` or ``ray://HOST:10001``; an initialised Ray is used as is.
            Everything else (statistics, the one writer, the outputs) runs here, so the outputs
            are those of a local run. Other tools run locally, with a note.

    Returns:
        The checked, registered :class:`ToolOutcome`.

    Raises:
        ToolInputError: Invalid arguments, unsupported image, bad or too large region, unknown
            artifact reference, path outside ``allowed_roots``, refused by :meth:`Tool.check`
            (message for the planner).
        ToolCancelled: The cancellation check became true; no artifacts were kept (finished
            tiles are, for a resume).
        ToolFailure: Anything else, with the original exception as ``__cause__``. A full disk
            says so and names the run directory; an
            :class:`~zoomearth.errors.OutputWriteError`'s message is passed on unchanged.
    """
    started = time.perf_counter()
    instance = _resolve_tool(tool, registry)
    ctx, validated = _prepare_call(instance, ctx, args)
    _preflight(instance, ctx, validated)

    stamp = _input_stamp(ctx.protected_paths)
    ctx._fingerprint = _call_fingerprint(instance, ctx, validated, stamp)
    created = not ctx.run_dir.exists()
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with _tile_runner(instance, ctx, ray_address):
            result = instance.run(ctx, validated)
        ctx.check_cancelled()
        outcome = _finish(instance, ctx, result, stamp, started)
    except ToolInputError:
        _cleanup(ctx, created)
        _discard_tiles(ctx, created)  # the same call would be refused again: nothing to resume
        raise
    except (ToolCancelled, ToolFailure):
        _cleanup(ctx, created)  # finished tiles stay for a resume
        raise
    except BoxError as exc:
        _discard_tiles(ctx)
        _cleanup(ctx, created)
        raise _box_input_error(instance, exc) from exc
    except Exception as exc:
        _cleanup(ctx, created)
        raise _failure(instance, ctx, exc) from exc
    except BaseException:
        _cleanup(ctx, created)
        raise
    _discard_tiles(ctx)
    return outcome


@contextlib.contextmanager
def _tile_runner(tool: Tool, ctx: ToolContext, ray_address: str | None) -> Iterator[None]:
    """Ray for the call's tiles while ``run`` runs (nothing without ``ray_address``)."""
    if not ray_address:
        yield
        return
    if not tool.capabilities.independent_tiles:
        ctx.note(RAY_LOCAL_TEMPLATE.format(tool=tool.name))
        yield
        return
    from zoomearth.tools.distributed import ray_session

    with ray_session(ray_address) as runner:
        ctx._tile_runner = runner
        try:
            yield
        finally:
            ctx._tile_runner = None


def _call_fingerprint(
    tool: Tool, ctx: ToolContext, args: BaseModel, stamp: list[tuple[Path, int, int]]
) -> dict[str, Any]:
    """What every tile of this call depends on, besides the tile layout and the tool's key."""
    import zoomearth

    scene = ctx.scene
    fingerprint = {
        "format": TILE_CACHE_FORMAT,
        "zoomearth": zoomearth.__version__,
        "tool": tool.name,
        "version": tool.version,
        "source": _source_digest(type(tool)),
        "args": args.model_dump(mode="json"),
        "region": [int(v) for v in ctx.box.as_list()],
        "inputs": [[str(p), size, mtime] for p, size, mtime in stamp],
        "scene": [scene.width, scene.height, scene.count, str(scene.dtype), repr(scene.nodata)],
    }
    if getattr(scene, "is_remote", False):
        # A remote scene has no local file among the stamped inputs: its URL, size, ETag and
        # Last-Modified name the version the tiles were computed from.
        fingerprint["remote"] = scene.identity
    if ctx.stack is not None:
        # Tools that read the stack's other dates (change_detection, cloud_removal) depend on
        # them too: another set of dates, or a date's file rewritten, computes new tiles.
        fingerprint["stack"] = [[d.label, d.source, *_file_version(d.source)]
                                for d in ctx.stack.dates]
    return fingerprint


def _file_version(source: str) -> list[int]:
    """``[size, mtime_ns]`` of a local file; ``[]`` for a URL (named by its source alone)."""
    try:
        st = os.stat(source)
    except (OSError, ValueError):
        return []
    return [st.st_size, st.st_mtime_ns]


def _discard_tiles(ctx: ToolContext, created: bool = False) -> None:
    for cache in ctx._tile_caches:
        cache.discard()
    if created:
        with contextlib.suppress(OSError):
            ctx.run_dir.rmdir()  # a run directory this call made, left empty


def _finish(
    tool: Tool,
    ctx: ToolContext,
    result: Any,
    stamp: list[tuple[Path, int, int]],
    started: float,
) -> ToolOutcome:
    if not isinstance(result, ToolResult):
        raise _contract_failure(tool, BAD_RESULT_TEMPLATE.format(got=type(result).__name__))
    now = {p: (size, mtime) for p, size, mtime in _input_stamp(p for p, _, _ in stamp)}
    for path, size, mtime in stamp:
        if now.get(path) != (size, mtime):
            raise _contract_failure(tool, INPUT_CHANGED_TEMPLATE.format(path=path))
    drafts = list(result.artifacts)
    if result.preview is not None:
        media = result.preview.media_type or guess_media_type(result.preview.path)
        if not media.startswith(("image/png", "image/jpeg")):
            raise _contract_failure(
                tool, PREVIEW_TYPE_TEMPLATE.format(path=result.preview.path, media_type=media)
            )
        drafts.append(result.preview)
    earlier = {Path(a.path).resolve(): a for a in ctx.known_artifacts().values()}
    for draft in drafts:
        problem = _check_draft(ctx, draft)
        if problem:
            raise _contract_failure(tool, problem)
        previous = earlier.get(_draft_path(ctx, draft.path).resolve())
        if previous is not None:
            raise _contract_failure(
                tool, OVERWRITES_ARTIFACT_TEMPLATE.format(path=draft.path, ref=previous.ref)
            )
    try:
        data_text = json.dumps(result.data, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise _contract_failure(
            tool, DATA_TEMPLATE.format(limit=MAX_DATA_BYTES, reason=exc)
        ) from exc
    if len(data_text) > MAX_DATA_BYTES:
        raise _contract_failure(
            tool, DATA_TEMPLATE.format(limit=MAX_DATA_BYTES, reason=f"{len(data_text)} bytes")
        )
    text = result.text.strip()
    if len(text) > MAX_TEXT_CHARS:
        text = text[: MAX_TEXT_CHARS - 20].rstrip() + " ... (truncated)"
    registered = ctx._store().register(
        [d.model_copy(update={"path": _draft_path(ctx, d.path)}) for d in drafts], tool=tool.name
    )
    preview_id = registered[-1].id if result.preview is not None else None
    region = ctx.box
    return ToolOutcome(
        tool=tool.name,
        text=text,
        artifacts=registered,
        preview_id=preview_id,
        region_xyxy=(region.x1, region.y1, region.x2, region.y2),
        streamed=ctx.streamed,
        warnings=list(ctx.warnings),
        data=json.loads(data_text),
        elapsed_s=round(time.perf_counter() - started, 4),
    )


def _draft_path(ctx: ToolContext, path: str | os.PathLike[str]) -> Path:
    """The absolute path of an artifact draft (a relative one lies inside the run directory).

    The one place a draft's path is joined to the run directory, and ``ctx.run_dir`` is absolute
    (:func:`absolute_dir`), so the join happens exactly once.
    """
    p = Path(path)
    return p if p.is_absolute() else absolute_dir(ctx.run_dir) / p
