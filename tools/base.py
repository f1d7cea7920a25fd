"""The tool contract: what a tool node is, what it receives, what it returns, and the one runner.

A tool is a small class (see ``docs/tools.md`` for a walkthrough)::

    class BrightnessStats(Tool):
        name = "brightness_stats"
        description = "Per-band statistics (min, max, mean, std) of the region."

        class Args(BaseModel):
            bands: list[int] | None = Field(None, description="1-based bands (default: all)")

        capabilities = Capabilities(max_side=2048, streaming=True)

        def run(self, ctx: ToolContext, args: Args) -> ToolResult:
            for tile in ctx.tiles():
                data = ctx.read(tile.read_box)          # (bands, h, w) masked, native dtype
                ...
                ctx.report(tile.index + 1, tile.count)  # progress + cancellation check
            path = ctx.output_path("stats.csv")
            ...                                          # write atomically
            return ToolResult(text="...", artifacts=[ctx.artifact(path, "table", "...")])

The class is validated when it is defined (:class:`ToolDefinitionError` names the problem).
:func:`run_tool` is the single code path that runs a tool, for the graph's tool nodes, the
``zoomearth tool`` command and the contract kit (:mod:`zoomearth.testing`). It

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
:meth:`ToolContext.map_tiles` keeps its finished tiles (:class:`TileCache`) when it is cancelled or
fails, and the same call reuses them; they are removed once the call succeeds.

Error policy: :class:`ToolInputError` is a problem the planner can fix (its message is shown to the
model); :class:`ToolFailure` is a broken tool or environment (recorded, the run goes on to a
best-effort answer; tests run strict and re-raise it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import inspect
import json
import keyword
import os
import re
import secrets
import shutil
import time
import typing
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Final, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.json_schema import PydanticJsonSchemaWarning

from zoomearth.artifacts import (
    ARTIFACT_REF_PATTERN,
    Artifact,
    ArtifactDraft,
    ArtifactError,
    ArtifactKind,
    ArtifactStore,
    artifacts_by_id,
    format_artifact_ref,
    guess_media_type,
    parse_artifact_ref,
)
from zoomearth.errors import BoxError, ZoomEarthError
from zoomearth.geometry import PixelBox, ViewSpec

if TYPE_CHECKING:
    import numpy as np

    from zoomearth.config import Settings
    from zoomearth.models import ModelPool
    from zoomearth.scene import Scene

__all__ = [
    "CONTRACT_VERSION",
    "RESERVED_ARGS",
    "SUPPORTED_CONTRACT_VERSIONS",
    "ArtifactRef",
    "ArtifactRefSpec",
    "BackendStatus",
    "Capabilities",
    "InputPath",
    "NoArgs",
    "PathArgSpec",
    "TILE_CACHE_DIR",
    "Tile",
    "TileCache",
    "Tool",
    "ToolCancelled",
    "ToolContext",
    "ToolDefinitionError",
    "ToolError",
    "ToolFailure",
    "ToolInputError",
    "ToolOutcome",
    "ToolResult",
    "UnknownToolError",
    "absolute_dir",
    "artifact_ref",
    "check_tool_call",
    "describe_arguments",
    "input_path",
    "path_argument_values",
    "prompt_schema",
    "run_tool",
    "split_region_args",
]

#: Version of this contract. A tool declares the version it was written for
#: (``Tool.contract_version``); the runner accepts the versions in SUPPORTED_CONTRACT_VERSIONS.
CONTRACT_VERSION: Final = 1
SUPPORTED_CONTRACT_VERSIONS: Final = (1,)

#: Argument names the graph reserves on every tool call: the region, in the planner's frame
#: (``bbox_2d``, x1,y1,x2,y2 in the pixels of view ``view``). The graph converts them to a
#: full-resolution :class:`PixelBox` in ``ToolContext.region`` before the call; a tool's ``Args``
#: may not use these names.
RESERVED_ARGS: Final = ("bbox_2d", "view")

MAX_TEXT_CHARS: Final = 2000
MAX_DATA_BYTES: Final = 16_384
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{1,63}$")
_FILE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,120}$")

ProgressCallback = Callable[[int, int, str], None]
CancelCheck = Callable[[], bool]
T = TypeVar("T")

#: Folder of the tile caches (:class:`TileCache`) inside a run directory.
TILE_CACHE_DIR: Final = ".tiles"
#: Layout version of the tile cache; part of every fingerprint, so a new layout never reuses.
TILE_CACHE_FORMAT: Final = 1

# --------------------------------------------------------------------------------------------
# Message templates
# --------------------------------------------------------------------------------------------
DEFINITION_TEMPLATE = "Tool class {qualname} (module {module}): {problem}"
BAD_NAME_PROBLEM = (
    "name {name!r} is not a valid tool name; use 2-64 characters of lowercase letters, digits and "
    "underscores, starting with a letter (e.g. 'cloud_removal')"
)
KEYWORD_NAME_PROBLEM = "name {name!r} is a Python keyword; choose another name"
NO_DESCRIPTION_PROBLEM = (
    "description is missing or empty; write one or two sentences saying what the tool does and "
    "when to use it (the planner reads it)"
)
BAD_ARGS_PROBLEM = "Args must be a pydantic BaseModel subclass; got {got!r}"
SCHEMA_PROBLEM = "the JSON schema of Args cannot be generated or serialised ({reason})"
RESERVED_ARG_PROBLEM = (
    "Args defines {names}, reserved for the region the graph passes in ctx.region; remove them"
)
BAD_CAPS_PROBLEM = "capabilities are invalid ({reason})"
BAD_APPROVAL_PROBLEM = "needs_approval must be True or False; got {got!r}"
BAD_VERSION_PROBLEM = (
    "contract_version {got!r} is not supported by this zoomearth (supported: {supported}); "
    "update the tool or zoomearth"
)
NO_RUN_PROBLEM = "it does not define run(self, ctx, args)"
RUN_SIGNATURE_PROBLEM = "run must take (self, ctx, args); got run{signature}"

RESERVED_ARG_TEMPLATE = (
    "Tool '{tool}': {names} is the region of the call and must not be passed as a tool argument "
    "(the graph converts bbox_2d to ctx.region; on the command line use --box)."
)
UNKNOWN_ARGS_TEMPLATE = "Tool '{tool}' has no argument {names}. Valid arguments: {valid}"
INVALID_ARGS_TEMPLATE = "Invalid arguments for tool '{tool}': {problems}. Valid arguments: {valid}"
NOT_OBJECT_TEMPLATE = (
    "Arguments of tool '{tool}' must be a JSON object of name: value pairs; got {got}. "
    "Valid arguments: {valid}"
)
BANDS_TEMPLATE = (
    "Tool '{tool}' accepts images with {accepted} band(s); this image has {count}. "
    "Use another tool or answer without it."
)
DTYPES_TEMPLATE = (
    "Tool '{tool}' accepts pixel types {accepted}; this image is {dtype}. "
    "Use another tool or answer without it."
)
GEOREF_TEMPLATE = (
    "Tool '{tool}' needs a georeferenced image (with a CRS); this image has pixel coordinates only."
)
BOX_TEMPLATE = "Tool '{tool}': {reason}"
REGION_TOO_LARGE_TEMPLATE = (
    "Tool '{tool}' processes regions of at most {limit} x {limit} full-resolution pixels in one "
    "piece and cannot stream larger ones; the requested region {box} is {width} x {height} px. "
    "Choose a smaller box (each side at most {limit} px)."
)
UNKNOWN_ARTIFACT_TEMPLATE = (
    "Argument '{arg}' of tool '{tool}' names {ref}, which does not exist. Available: {available}."
)
ARTIFACT_KIND_TEMPLATE = (
    "Argument '{arg}' of tool '{tool}' needs an artifact of kind {kinds}; {ref} is a {kind} "
    "({summary})."
)
ARTIFACT_MISSING_FILE_TEMPLATE = (
    "Argument '{arg}' of tool '{tool}' names {ref}, whose file {path} no longer exists."
)
PATH_ARG_TEMPLATE = "Tool '{tool}': {reason}"
TYPED_PATH_MISSING_TEMPLATE = (
    "Argument '{arg}' {path!r} (typed on the command line) does not exist; check the path and "
    "run the command again."
)
TYPED_PATH_NOT_FILE_TEMPLATE = (
    "Argument '{arg}' {path!r} (typed on the command line) is a directory; give a file in it."
)
CANCELLED_TEMPLATE = "Tool '{tool}' was cancelled; no artifacts were kept."
FAILURE_TEMPLATE = "Tool '{tool}' failed: {kind}: {reason}"
BAD_RESULT_TEMPLATE = "run returned {got}, expected a ToolResult"
OUTSIDE_RUN_DIR_TEMPLATE = (
    "artifact {path} is outside the run directory {run_dir}; write outputs to ctx.output_path()"
)
MISSING_ARTIFACT_TEMPLATE = "artifact {path} does not exist (was it written?)"
NOT_A_FILE_TEMPLATE = "artifact {path} is not a regular file"
OVER_INPUT_TEMPLATE = "artifact {path} is the input file {input}; tools never write over input"
OVERWRITES_ARTIFACT_TEMPLATE = (
    "artifact {path} overwrites the earlier {ref}; artifacts are immutable, write each output to "
    "a fresh ctx.output_path()"
)
INPUT_CHANGED_TEMPLATE = "the input file {path} was modified during the call"
PREVIEW_TYPE_TEMPLATE = "the preview {path} must be a PNG or JPEG image; got {media_type}"
DATA_TEMPLATE = "result data must be a JSON object of at most {limit} bytes ({reason})"
READ_LIMIT_TEMPLATE = (
    "read a {width} x {height} px region at full resolution, above the declared one-piece "
    "limit of {limit} px a side (max_side {max_side} + 2 x overlap {overlap}); read large "
    "regions tile by tile through ctx.tiles()"
)
OUTPUT_NAME_TEMPLATE = (
    "output name {name!r} must be a plain file name (letters, digits, '_', '-', '.'; no "
    "directories), e.g. 'mask.tif'"
)
UNKNOWN_VIEW_TEMPLATE = "View {view_id} does not exist; current views: {valid}."
NO_REGION_TEMPLATE = (
    "ToolContext.region is only set inside run_tool; call the tool through run_tool"
)
UNKNOWN_TOOL_TEMPLATE = "Unknown tool {name!r}. Available tools: {valid}."
BAD_TOOL_VERSION_PROBLEM = "version must be a non-empty string (e.g. '2'); got {got!r}"
NO_SPACE_TEMPLATE = (
    "Tool '{tool}' could not write its outputs: no space left on the device holding {run_dir}; "
    "free space and resume{kept}."
)
TILES_KEPT_TEMPLATE = " (the {count} finished tile(s) are kept and will be reused)"
TILES_KEPT_CANCEL_TEMPLATE = (
    "Its {count} finished tile(s) are kept in {run_dir}/.tiles: the same call in the same run "
    "directory resumes from them (zoomearth tool: the same command with --out {run_dir})."
)
TILES_REUSED_TEMPLATE = (
    "Resumed a stopped call: {reused} of {total} tiles were finished before and reused."
)
TILE_RESULT_TEMPLATE = (
    "map_tiles: the function must return a numpy array or a mapping of names to arrays or "
    "numbers; got {got}"
)
TILE_KEY_TEMPLATE = "map_tiles: key must be JSON-serialisable ({reason})"


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
class ToolError(ZoomEarthError):
    """Root of the errors of the tool layer."""


class ToolDefinitionError(ToolError, TypeError):
    """A tool class breaks the contract (raised when the class is defined)."""


class ToolInputError(ToolError, ValueError):
    """A problem in the call that the planner (or user) can fix; the message is shown to it.

    Attributes:
        code: Stable problem code (``invalid_arguments``, ``unknown_tool``, ``region_too_large``,
            ``unsupported_image``, ``box_outside_image``, ``unknown_artifact``,
            ``path_not_allowed`` ...), for the graph's error observation.
        tool: Name of the tool called, when known.
    """

    def __init__(self, message: str, *, code: str = "invalid_arguments", tool: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.tool = tool


class UnknownToolError(ToolInputError, LookupError):
    """No tool has this name; the message lists the available ones."""

    def __init__(self, name: str, valid: Iterable[str]) -> None:
        names = ", ".join(sorted(valid)) or "none"
        super().__init__(
            UNKNOWN_TOOL_TEMPLATE.format(name=name, valid=names), code="unknown_tool", tool=name
        )

    def __str__(self) -> str:  # LookupError/KeyError would repr() the message
        return str(self.args[0])


class ToolFailure(ToolError, RuntimeError):
    """The tool failed for a reason the planner cannot fix (a bug, a broken backend, I/O).

    The original exception, if any, is chained as ``__cause__``.

    Attributes:
        tool: Name of the tool.
    """

    def __init__(self, message: str, *, tool: str = "") -> None:
        super().__init__(message)
        self.tool = tool


class ToolCancelled(ToolError):
    """The call was cancelled through the context's cancellation check; nothing was kept."""

    def __init__(self, message: str, *, tool: str = "") -> None:
        super().__init__(message)
        self.tool = tool


# --------------------------------------------------------------------------------------------
# Declarations
# --------------------------------------------------------------------------------------------
class Capabilities(BaseModel):
    """What a tool accepts and how much it processes at once (checked by :func:`run_tool`).

    Attributes:
        bands: Accepted band counts of the input image; None accepts any.
        dtypes: Accepted pixel types (numpy names: ``uint8``, ``uint16``, ``float32`` ...); None
            accepts any.
        max_side: Largest region side, in full-resolution pixels, the tool processes in one piece;
            None = no limit.
        streaming: Whether the tool processes a larger region tile by tile (through
            :meth:`ToolContext.tiles`); otherwise larger regions are refused naming the limit.
        tile_overlap: Context pixels each streamed tile needs on every side (e.g. a filter's
            radius); reads may exceed ``max_side`` by twice this.
        requires_georeference: Refuse images without a CRS (e.g. tools that match other dates by
            map coordinates).
        device_memory_mb: Estimate of accelerator (or RAM on CPU) memory the tool needs at its
            one-piece limit, in MiB, models included; 0 for classical tools.
        independent_tiles: Each tile's result depends only on the pixels of its ``read_box`` and
            on values fixed for the whole call (arguments, statistics computed before the tiles),
            never on other tiles. :meth:`ToolContext.map_tiles` then keeps every finished tile on
            disk, so a stopped call (timeout, Ctrl-C, SIGTERM, kill) resumes where it stopped.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    bands: tuple[int, ...] | None = None
    dtypes: tuple[str, ...] | None = None
    max_side: Annotated[int | None, Field(ge=1)] = None
    streaming: bool = False
    tile_overlap: Annotated[int, Field(ge=0)] = 0
    requires_georeference: bool = False
    device_memory_mb: Annotated[int, Field(ge=0)] = 0
    independent_tiles: bool = False

    @field_validator("bands")
    @classmethod
    def _bands_positive(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is not None and (not v or any(b < 1 for b in v)):
            raise ValueError("bands must list band counts >= 1 (or be None for any)")
        return v

    @field_validator("dtypes")
    @classmethod
    def _dtypes_known(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is None:
            return v
        import numpy as np

        out = []
        for name in v:
            try:
                out.append(np.dtype(name).name)
            except TypeError:
                raise ValueError(f"dtypes: {name!r} is not a numpy dtype name") from None
        if not out:
            raise ValueError("dtypes must list at least one dtype (or be None for any)")
        return tuple(out)

    def accepts_bands(self, count: int) -> bool:
        """Whether an image with ``count`` bands is accepted."""
        return self.bands is None or count in self.bands

    def accepts_dtype(self, dtype: str) -> bool:
        """Whether pixels of ``dtype`` (numpy name) are accepted."""
        return self.dtypes is None or dtype in self.dtypes


@dataclass(frozen=True)
class BackendStatus:
    """Availability of one backend of a tool, shown by ``zoomearth tools``.

    Attributes:
        name: Backend name (``"sam"``, ``"grabcut"``, ``"gdal"`` ...).
        available: Whether it can run here (package installed, weights found).
        detail: What is missing, or what it uses.
    """

    name: str
    available: bool
    detail: str = ""

    @classmethod
    def of_package(cls, name: str, package: str, label: str, uses: str = "") -> BackendStatus:
        """Available when the distribution ``package`` is installed; detail names its version.

        Args:
            name: Backend name.
            package: Distribution to look up (e.g. ``"opencv-python-headless"``).
            label: Human name of the library in the detail (e.g. ``"OpenCV"``).
            uses: Extra text after the version (e.g. ``"checkpoint from setting denoise_model"``).
        """
        from importlib import metadata

        try:
            version = metadata.version(package)
        except metadata.PackageNotFoundError:
            return cls(name, False, f"install {package}")
        return cls(name, True, f"{label} {version}" + (f"; {uses}" if uses else ""))


class NoArgs(BaseModel):
    """Arguments of a tool that takes none."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class ArtifactRefSpec:
    """Marks an argument as a reference to an earlier artifact (``"artifact:N"``).

    Attributes:
        kinds: Accepted artifact kinds; empty accepts any.
    """

    kinds: tuple[str, ...] = ()


@dataclass(frozen=True)
class PathArgSpec:
    """Marks an argument as a file path, checked against the setting ``allowed_roots``.

    Attributes:
        must_exist: Refuse paths that do not exist.
    """

    must_exist: bool = True


def artifact_ref(*kinds: str) -> Any:
    """Type of an argument naming an earlier artifact, optionally of given kinds.

    Example: ``mask: artifact_ref("mask") = Field(description="mask from segmentation")``. The
    value stays the string ``"artifact:N"`` in ``args``; :meth:`ToolContext.get_artifact` returns
    the (already checked) :class:`~zoomearth.artifacts.Artifact`.
    """
    return Annotated[
        str,
        Field(pattern=ARTIFACT_REF_PATTERN, json_schema_extra={"format": "artifact-ref"}),
        ArtifactRefSpec(tuple(kinds)),
    ]


def input_path(*, must_exist: bool = True) -> Any:
    """Type of a path argument checked against ``allowed_roots`` (the value becomes resolved).

    A path the user typed on the command line for this run (:attr:`ToolContext.typed_paths`) is
    accepted outside ``allowed_roots`` too.
    """
    return Annotated[str, Field(json_schema_extra={"format": "path"}), PathArgSpec(must_exist)]


#: An argument naming any earlier artifact (``"artifact:N"``).
ArtifactRef = artifact_ref()
#: A path argument (an existing file inside ``allowed_roots``).
InputPath = input_path()


def _find_marker(annotation: Any, metadata: Iterable[Any], kind: type) -> Any:
    for m in metadata:
        if isinstance(m, kind):
            return m
    stack = [annotation]
    while stack:
        ann = stack.pop()
        if typing.get_origin(ann) is Annotated:
            for m in ann.__metadata__:
                if isinstance(m, kind):
                    return m
        stack.extend(a for a in typing.get_args(ann) if a is not None)
    return None


def _marked_fields(args_cls: type[BaseModel], kind: type) -> dict[str, Any]:
    out = {}
    for name, info in args_cls.model_fields.items():
        marker = _find_marker(info.annotation, info.metadata, kind)
        if marker is not None:
            out[name] = marker
    return out


def path_argument_values(args_cls: type[BaseModel], arguments: Mapping[str, Any]) -> list[str]:
    """The values of the path arguments (:func:`input_path`) in a raw argument mapping.

    For a command line: the paths inside ``--args`` the user typed, to pass as
    :attr:`ToolContext.typed_paths`. Arguments are looked up by name and by alias; values that are
    not strings (invalid arguments, reported later by :func:`run_tool`) are left out.

    Args:
        args_cls: The tool's ``Args`` model.
        arguments: The arguments as given (not validated).

    Returns:
        The path strings, in argument order.
    """
    out: list[str] = []
    for name in _marked_fields(args_cls, PathArgSpec):
        info = args_cls.model_fields[name]
        for key in dict.fromkeys((name, info.alias or name)):
            out += [v for v in _values(arguments.get(key)) if isinstance(v, str)]
    return out


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------
class ToolResult(BaseModel):
    """What ``Tool.run`` returns.

    Attributes:
        text: Short result for the planner (a few sentences; truncated at 2000 characters).
        artifacts: Files written into the run directory (build with :meth:`ToolContext.artifact`).
        preview: Optional PNG/JPEG the planner sees as an image on its next turn (also kept as an
            artifact).
        data: Small JSON-serialisable facts (counts, statistics) for programs; at most 16 KiB.
    """

    model_config = ConfigDict(extra="forbid")

    text: str
    artifacts: list[ArtifactDraft] = Field(default_factory=list)
    preview: ArtifactDraft | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class ToolOutcome(BaseModel):
    """The checked, registered result of one call: small and JSON-serialisable (goes in state).

    Attributes:
        tool: Tool name.
        text: The tool's text for the planner.
        artifacts: Registered artifacts (ids unique within the run directory).
        preview_id: Id of the preview artifact, if any.
        region_xyxy: Full-resolution pixel region processed.
        streamed: Whether the region was processed tile by tile.
        warnings: Notes for the user (clipped box, skipped preview ...).
        data: The tool's small structured data.
        elapsed_s: Wall time of the call.
    """

    model_config = ConfigDict(frozen=True)

    tool: str
    text: str
    artifacts: list[Artifact] = Field(default_factory=list)
    preview_id: int | None = None
    region_xyxy: tuple[float, float, float, float]
    streamed: bool = False
    warnings: list[str] = Field(default_factory=list)
    data: dict[str, Any] = Field(default_factory=dict)
    elapsed_s: float = 0.0

    def observation(self) -> str:
        """Text for the planner: the result, then one line per artifact it can reference."""
        lines = [self.text.strip()]
        if self.warnings:
            lines += [f"Note: {w}" for w in self.warnings]
        if self.artifacts:
            lines.append("Artifacts:")
            lines += [f"- {a.describe()}" for a in self.artifacts]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Context
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tile:
    """One piece of a region processed tile by tile (all boxes in full-resolution pixels).

    Attributes:
        index: 0-based position in row-major order.
        count: Number of tiles of the region.
        box: The tile's own part of the region (tiles partition the region).
        read_box: ``box`` grown by the overlap on every side, clipped to the scene: read this.
        window: ``(col_off, row_off, width, height)`` of ``box`` relative to the region, i.e. the
            window of an output raster that covers the region.
        inner: ``(rows, cols)`` slices locating ``box`` inside an array read from ``read_box``.
    """

    index: int
    count: int
    box: PixelBox
    read_box: PixelBox
    window: tuple[int, int, int, int]
    inner: tuple[slice, slice]

    def crop(self, array: np.ndarray) -> np.ndarray:
        """Cut the tile's own part out of an array read from ``read_box`` (last two axes)."""
        rows, cols = self.inner
        return array[..., rows, cols]


_UNSET: Any = object()


@dataclass
class ToolContext:
    """Everything a tool call receives besides its arguments.

    Build one per call; :func:`run_tool` works on a copy and fills in the call-specific parts
    (validated region, streaming flag, tool name).

    Attributes:
        scene: The open scene (pixels through :meth:`read`, or ``scene.read``/``scene.render``).
        run_dir: Run directory; every artifact is written inside it (see :meth:`output_path`).
            Made absolute (:func:`absolute_dir`: against the current directory, ``~`` expanded,
            symlinks resolved) when the context is built, so a relative directory is never joined
            onto a path that already contains it.
        region: Region to process, full-resolution pixels (xyxy, half-open). None = the whole
            scene. Inside ``run``: validated, clipped to the scene and snapped to integer edges.
        views: The run's current views (frames only; render pixels with ``scene.render``).
        artifacts: Earlier artifacts by id; None reads them from the run directory's index.
        pool: The shared model pool (None: :meth:`require_pool` creates the default one).
        settings: Effective settings (default: the scene's).
        progress: ``progress(done, total, message)``; called by :meth:`report`.
        is_cancelled: Returns True once the call should stop; checked by :meth:`report` and
            :meth:`check_cancelled` (a tool then raises :class:`ToolCancelled`).
        step: Step of the run (names outputs); None outside a graph.
        store: The run's artifact store (default: one on ``run_dir``).
        typed_paths: Files the user typed on a command line for this run (the input image, the
            path values inside ``--args``, other path flags); path arguments naming one of them
            are allowed even outside ``allowed_roots``. Resolved when the context is built. Never
            fill it from planner or API-client input: those paths stay confined to
            ``allowed_roots``.
        streamed: True inside ``run`` when the region is above the one-piece limit and must be
            processed tile by tile.
        warnings: Notes the tool adds for the user (:meth:`note`).
    """

    scene: Scene
    run_dir: Path
    region: PixelBox | None = None
    views: Sequence[ViewSpec] = ()
    artifacts: Mapping[int, Artifact] | None = None
    pool: ModelPool | None = None
    settings: Settings | None = None
    progress: ProgressCallback | None = None
    is_cancelled: CancelCheck | None = None
    step: int | None = None
    store: ArtifactStore | None = None
    typed_paths: Sequence[str | os.PathLike[str]] = ()
    streamed: bool = field(default=False, init=False)
    warnings: list[str] = field(default_factory=list, init=False)
    tool_name: str = field(default="", init=False)
    _caps: Capabilities = field(default_factory=lambda: Capabilities(), init=False, repr=False)
    _call_id: str = field(default="", init=False, repr=False)
    _issued: list[Path] = field(default_factory=list, init=False, repr=False)
    _resolved_refs: dict[str, Artifact] = field(default_factory=dict, init=False, repr=False)
    _protected: list[Path] = field(default_factory=list, init=False, repr=False)
    # What a finished tile depends on (set by run_tool; None outside it: nothing is cached).
    _fingerprint: dict[str, Any] | None = field(default=None, init=False, repr=False)
    _tile_caches: list[TileCache] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self.run_dir = absolute_dir(self.run_dir)
        self.typed_paths = tuple(_resolve_typed(p) for p in self.typed_paths)
        if self.settings is None:
            self.settings = getattr(self.scene, "settings", None)

    # -- cancellation and progress -----------------------------------------------------------
    def check_cancelled(self) -> None:
        """Raise :class:`ToolCancelled` if the call was cancelled."""
        if self.is_cancelled is not None and self.is_cancelled():
            raise ToolCancelled(
                CANCELLED_TEMPLATE.format(tool=self.tool_name or "?"), tool=self.tool_name
            )

    def report(self, done: int, total: int, message: str = "") -> None:
        """Report progress (``done`` of ``total`` units), then check for cancellation."""
        if self.progress is not None:
            self.progress(int(done), int(total), message)
        self.check_cancelled()

    def note(self, message: str) -> None:
        """Add a note for the user (shown with the result)."""
        self.warnings.append(str(message))

    # -- pixels -------------------------------------------------------------------------------
    @property
    def box(self) -> PixelBox:
        """The validated region (full-resolution pixels, integer edges); set by run_tool."""
        if self.region is None:
            raise ToolFailure(NO_REGION_TEMPLATE, tool=self.tool_name)
        return self.region

    @property
    def one_piece_limit(self) -> int | None:
        """Largest side (px) one full-resolution read may have: max_side + 2 x tile_overlap."""
        caps = self._caps
        return None if caps.max_side is None else caps.max_side + 2 * caps.tile_overlap

    def read(
        self,
        box: PixelBox | None = None,
        *,
        bands: Sequence[int] | None = None,
        out_size: tuple[int, int] | None = None,
        resampling: str = "average",
    ) -> np.ma.MaskedArray:
        """Read native pixel values (default: the region), enforcing the one-piece limit.

        Args:
            box: Full-resolution box (default: ``region``); snapped outwards.
            bands: 1-based band indexes (default: all).
            out_size: ``(width, height)`` of a decimated read; None = full resolution.
            resampling: GDAL resampling name for decimated reads.

        Returns:
            Masked array ``(bands, height, width)`` in the source dtype; mask True where nodata,
            transparent, NaN or infinite (no tool can compute with +-Inf; their source values
            stay under the mask).

        Raises:
            ToolFailure: A full-resolution read above the declared one-piece limit (a contract
                breach of the tool: large regions must be read through :meth:`tiles`).
        """
        target = self.box if box is None else box
        limit = self.one_piece_limit
        side_w, side_h = (
            (out_size[0], out_size[1]) if out_size is not None else _box_size(target.snap_out())
        )
        if limit is not None and max(side_w, side_h) > limit:
            raise ToolFailure(
                f"Tool '{self.tool_name}' "
                + READ_LIMIT_TEMPLATE.format(
                    width=side_w,
                    height=side_h,
                    limit=limit,
                    max_side=self._caps.max_side,
                    overlap=self._caps.tile_overlap,
                ),
                tool=self.tool_name,
            )
        data = self.scene.read(
            target, out_size=out_size, bands=tuple(bands) if bands else None, resampling=resampling
        )
        return _mask_non_finite(data)

    def tiles(self, side: int | None = None, overlap: int | None = None) -> list[Tile]:
        """Split the region into tiles in row-major order (a single tile when it fits).

        Args:
            side: Tile side in pixels (default and maximum: ``capabilities.max_side``; the whole
                region when the tool has no limit).
            overlap: Context pixels around each tile (default ``capabilities.tile_overlap``).

        Returns:
            The tiles; their ``box`` es partition the region exactly.
        """
        region = self.box
        x0, y0, x1, y1 = (int(v) for v in region.as_list())
        limit = self._caps.max_side
        if side is None:
            side = limit or max(x1 - x0, y1 - y0)
        side = max(1, int(side if limit is None else min(side, limit)))
        ov = self._caps.tile_overlap if overlap is None else max(0, int(overlap))
        width, height = self.scene.width, self.scene.height
        starts = [(tx, ty) for ty in range(y0, y1, side) for tx in range(x0, x1, side)]
        tiles = []
        for i, (tx, ty) in enumerate(starts):
            bx2, by2 = min(tx + side, x1), min(ty + side, y1)
            rx1, ry1 = max(tx - ov, 0), max(ty - ov, 0)
            rx2, ry2 = min(bx2 + ov, width), min(by2 + ov, height)
            tiles.append(
                Tile(
                    index=i,
                    count=len(starts),
                    box=PixelBox(tx, ty, bx2, by2),
                    read_box=PixelBox(rx1, ry1, rx2, ry2),
                    window=(tx - x0, ty - y0, bx2 - tx, by2 - ty),
                    inner=(slice(ty - ry1, by2 - ry1), slice(tx - rx1, bx2 - rx1)),
                )
            )
        return tiles

    def map_tiles(
        self,
        fn: Callable[[Tile], T],
        tiles: Sequence[Tile] | None = None,
        *,
        key: Any = None,
        message: str = "",
    ) -> Iterator[tuple[Tile, T]]:
        """Compute ``fn(tile)`` for every tile, in order; finished tiles survive a stop.

        The one place a tool's tiles are processed. Yields ``(tile, result)`` in row-major order,
        so one writer can write the output in order; after each yielded tile it reports progress
        (``done`` of ``total`` tiles) and checks for cancellation.

        When the tool declares ``Capabilities(independent_tiles=True)``, every result is stored
        in a :class:`TileCache` as soon as ``fn`` returns, under ``RUN_DIR/.tiles/``, keyed by a
        fingerprint of the call: tool name, ``Tool.version`` and the source file of the tool,
        the validated arguments, the region, the tile layout, the input files (path, size,
        modification time: the scene, ``artifact:N`` inputs and path arguments) and ``key``.
        When the same call runs again -- a resumed thread, a re-sent request -- the tiles it
        finished are read back instead of computed (progress counts them at once) and a note
        says how many were reused. The cache is removed when the call succeeds (or is refused
        with a :class:`ToolInputError`) and kept when it is cancelled or fails. A different
        fingerprint never reuses a tile; an unreadable tile file is computed again.

        Args:
            fn: ``fn(tile)`` -> a numpy array, or a mapping of names to arrays / numbers (e.g.
                ``{"pixels": (bands, h, w) array, "changed": 12}``). With independent tiles it
                must depend only on the tile and on values fixed for the call; a later version
                may run it in another process.
            tiles: The tiles (default: :meth:`tiles`).
            key: Anything else the results depend on that the fingerprint does not cover:
                statistics computed before the tiles, a model checkpoint, the device
                (JSON-serialisable; numpy values are accepted).
            message: Progress message (default ``"<tool>: tiles"``).

        Yields:
            ``(tile, result)``; a mapping result comes back as ``dict[str, np.ndarray]`` (numbers
            as 0-d arrays), the same whether computed or reused.
        """
        tiles = list(self.tiles() if tiles is None else tiles)
        cache = self._tile_cache(tiles, key)
        label = message or f"{self.tool_name or 'tool'}: tiles"
        total, reused = len(tiles), 0
        try:
            for done, tile in enumerate(tiles, 1):
                result = cache.load(tile) if cache is not None else None
                if result is None:
                    self.check_cancelled()  # never start a tile once the call is cancelled
                    result = _normalise_tile_result(fn(tile), self.tool_name)
                    if cache is not None:
                        cache.store(tile, result)
                else:
                    reused += 1
                yield tile, result
                self.report(done, total, label)
        except ToolCancelled as exc:
            kept = cache.tile_count() if cache is not None else 0
            if not kept:
                raise
            raise ToolCancelled(
                f"{exc} " + TILES_KEPT_CANCEL_TEMPLATE.format(count=kept, run_dir=self.run_dir),
                tool=self.tool_name,
            ) from None
        if reused:
            self.note(TILES_REUSED_TEMPLATE.format(reused=reused, total=total))

    def _tile_cache(self, tiles: Sequence[Tile], key: Any) -> TileCache | None:
        if not self._caps.independent_tiles or self._fingerprint is None:
            return None
        material = {
            **self._fingerprint,
            "tiles": [[*t.box.as_list(), *t.read_box.as_list()] for t in tiles],
            "key": key,
        }
        try:
            cache = TileCache.open(self.run_dir, self.tool_name, material)
        except (TypeError, ValueError) as exc:
            raise ToolFailure(
                TILE_KEY_TEMPLATE.format(reason=exc), tool=self.tool_name
            ) from exc
        self._tile_caches.append(cache)
        return cache

    def view(self, view_id: int) -> ViewSpec:
        """The current view with this id (raises ToolInputError listing the valid ids)."""
        for v in self.views:
            if v.view_id == view_id:
                return v
        valid = ", ".join(str(v.view_id) for v in self.views) or "none"
        raise ToolInputError(
            UNKNOWN_VIEW_TEMPLATE.format(view_id=view_id, valid=valid),
            code="unknown_view",
            tool=self.tool_name,
        )

    # -- models -------------------------------------------------------------------------------
    def require_pool(self) -> ModelPool:
        """The model pool of the call; the process's default pool when none was given."""
        if self.pool is None:
            from zoomearth.models import get_default_pool

            self.pool = get_default_pool()
        return self.pool

    # -- artifacts ----------------------------------------------------------------------------
    @property
    def allowed_roots(self) -> list[Path]:
        """Directories path arguments may name (the setting ``allowed_roots``)."""
        return list(getattr(self.settings, "allowed_roots", None) or [])

    @property
    def protected_paths(self) -> list[Path]:
        """Inputs no output may overwrite: the scene file and checked input-path arguments."""
        return [Path(self.scene.path), *self._protected]

    def output_path(self, name: str) -> Path:
        """A fresh path inside the run directory for an output named ``name`` (e.g. ``mask.tif``).

        The file name is prefixed with the step/call id and the tool name so calls never collide.
        Write to it atomically (``zoomearth.scene.writing.atomic_path``, ``write_window_array``,
        ``TiledRasterWriter``, ``write_png``). Files issued here are removed if the call fails or
        is cancelled.
        """
        if not _FILE_NAME_RE.match(name or "") or name in (".", ".."):
            raise ToolFailure(OUTPUT_NAME_TEMPLATE.format(name=name), tool=self.tool_name)
        if not self._call_id:
            self._call_id = secrets.token_hex(3)
        prefix = f"{self._call_id}-{self.tool_name or 'tool'}-"
        path = self.run_dir / (prefix + name)
        n = 2
        while path.exists() or path in self._issued:
            stem, dot, suffix = name.partition(".")
            path = self.run_dir / f"{prefix}{stem}-{n}{dot}{suffix}"
            n += 1
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._issued.append(path)
        return path

    def artifact(
        self,
        path: str | os.PathLike[str],
        kind: str,
        summary: str = "",
        *,
        crs: str | None = _UNSET,
        region: PixelBox | None = _UNSET,
        media_type: str = "",
        **meta: str | int | float | bool | None,
    ) -> ArtifactDraft:
        """Describe a written file for the result.

        Args:
            path: The file (inside the run directory).
            kind: ``raster``, ``mask``, ``vector``, ``preview``, ``table``, ``text`` (see
                :class:`~zoomearth.artifacts.ArtifactKind`) or another lowercase identifier.
            summary: One line for the planner.
            crs: CRS of the file; default: the scene's for rasters, masks and vectors of a
                georeferenced scene, else None.
            region: Region covered (default: the call's region).
            media_type: MIME type (default: from the suffix).
            **meta: Small extra facts.

        Returns:
            The draft to put in :attr:`ToolResult.artifacts`.
        """
        if crs is _UNSET:
            geo_kind = kind in (ArtifactKind.RASTER, ArtifactKind.MASK, ArtifactKind.VECTOR)
            crs = self.scene.crs_string if geo_kind and self.scene.georeferenced else None
        if region is _UNSET:
            region = self.region
        return ArtifactDraft(
            path=Path(path),
            kind=kind,
            summary=summary,
            crs=crs,
            region_xyxy=tuple(region.as_list()) if region is not None else None,  # type: ignore[arg-type]
            media_type=media_type or guess_media_type(path),
            meta=dict(meta),
        )

    def known_artifacts(self) -> dict[int, Artifact]:
        """Earlier artifacts by id (given ones, else those in the run directory's index)."""
        if self.artifacts is not None:
            return artifacts_by_id(self.artifacts)
        return self._store().all()

    def get_artifact(self, ref: str | int) -> Artifact:
        """The earlier artifact named by ``"artifact:N"`` (checked by run_tool for arguments)."""
        if isinstance(ref, str) and ref in self._resolved_refs:
            return self._resolved_refs[ref]
        known = self.known_artifacts()
        try:
            art_id = parse_artifact_ref(ref)
        except ArtifactError as exc:
            raise ToolInputError(str(exc), code="unknown_artifact", tool=self.tool_name) from None
        if art_id not in known:
            raise ToolInputError(
                UNKNOWN_ARTIFACT_TEMPLATE.format(
                    arg="?",
                    tool=self.tool_name,
                    ref=format_artifact_ref(art_id),
                    available=_available(known),
                ),
                code="unknown_artifact",
                tool=self.tool_name,
            )
        return known[art_id]

    def _store(self) -> ArtifactStore:
        if self.store is None:
            self.store = ArtifactStore(self.run_dir)
        return self.store


def _mask_non_finite(data: np.ma.MaskedArray) -> np.ma.MaskedArray:
    """Mask +-Inf (and NaN) of a floating-point read in place; other dtypes are returned as is."""
    import numpy as np

    if np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.complexfloating):
        bad = ~np.isfinite(np.ma.getdata(data))
        if bad.any():
            data.mask = np.ma.getmaskarray(data) | bad
    return data


def absolute_dir(path: str | os.PathLike[str]) -> Path:
    """A directory path made absolute once, where it is created (``~`` expanded, symlinks resolved).

    Every run directory goes through this, so code joining file names onto it never sees a relative
    directory (which, joined again to a path that already contains it, names a file that does not
    exist).
    """
    return Path(path).expanduser().resolve()


def _resolve_typed(path: str | os.PathLike[str]) -> Path:
    """A path the user typed, as the runner compares it (absolute, symlinks resolved)."""
    return Path(os.fspath(path)).expanduser().resolve()


def _box_size(box: PixelBox) -> tuple[int, int]:
    return int(box.width), int(box.height)


def _available(known: Mapping[int, Artifact], limit: int = 20) -> str:
    if not known:
        return "no artifacts yet"
    items = sorted(known.values(), key=lambda a: a.id)[-limit:]
    return "; ".join(f"{a.ref} ({a.kind}: {a.summary or Path(a.path).name})" for a in items)


# --------------------------------------------------------------------------------------------
# Finished tiles kept across a stop
# --------------------------------------------------------------------------------------------
def _json_default(value: Any) -> Any:
    """JSON form of the numpy values and paths a fingerprint may hold."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    tolist = getattr(value, "tolist", None)  # numpy scalars and arrays
    if callable(tolist):
        return tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_json_default)


def _normalise_tile_result(result: Any, tool: str) -> Any:
    """A tile result as arrays: an ndarray stays one; a mapping becomes ``{name: ndarray}``."""
    import numpy as np

    if isinstance(result, np.ndarray):
        arrays = {"": result}
    elif isinstance(result, Mapping) and all(isinstance(k, str) and k for k in result):
        arrays = {k: np.asarray(v) for k, v in result.items()}
    else:
        raise ToolFailure(TILE_RESULT_TEMPLATE.format(got=type(result).__name__), tool=tool)
    for name, arr in arrays.items():
        if arr.dtype.hasobject:
            raise ToolFailure(
                TILE_RESULT_TEMPLATE.format(got=f"{name or 'the array'} of dtype object"),
                tool=tool,
            )
    return result if isinstance(result, np.ndarray) else arrays


class TileCache:
    """The finished tiles of one tool call, on disk, so a stopped call resumes where it stopped.

    One folder per call fingerprint (see :meth:`ToolContext.map_tiles`):
    ``RUN_DIR/.tiles/<tool>-<digest>/`` holds ``fingerprint.json`` (the canonical JSON the
    digest covers) and one ``tile-NNNNNN.npz`` per finished tile (uncompressed numpy arrays,
    ``allow_pickle`` off; plus the tile's box, checked on reading). Each tile file is written
    under an owner-named temporary (:func:`zoomearth.temporaries.temporary_sibling`), flushed to
    disk and renamed, so a file under the final name is always complete; a killed writer's
    temporary is swept when the cache is opened again.

    Disk use: the uncompressed size of the finished part of the outputs, until the call
    succeeds.
    """

    MANIFEST = "fingerprint.json"

    def __init__(self, folder: Path, fingerprint: str) -> None:
        self.folder = folder
        self.fingerprint = fingerprint

    @classmethod
    def open(cls, run_dir: Path, tool: str, material: Mapping[str, Any]) -> TileCache:
        """The cache of a call in ``run_dir`` (nothing is created until a tile is stored).

        Raises:
            TypeError, ValueError: ``material`` is not JSON-serialisable.
        """
        from zoomearth.temporaries import sweep_stale_temporaries

        text = _canonical_json(material)
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]
        cache = cls(Path(run_dir) / TILE_CACHE_DIR / f"{tool or 'tool'}-{digest}", text)
        if cache.folder.is_dir():
            sweep_stale_temporaries(cache.folder)
            try:
                same = (cache.folder / cls.MANIFEST).read_text(encoding="utf-8") == text
            except (OSError, UnicodeDecodeError):
                same = False
            if not same:  # another layout version, a damaged manifest: start afresh
                cache.discard()
        return cache

    def path(self, index: int) -> Path:
        """The file of tile ``index``."""
        return self.folder / f"tile-{index:06d}.npz"

    def tile_count(self) -> int:
        """Number of finished tiles stored."""
        if not self.folder.is_dir():
            return 0
        return sum(1 for p in self.folder.glob("tile-*.npz"))

    def load(self, tile: Tile) -> Any:
        """The stored result of ``tile`` (as :func:`_normalise_tile_result` gives it), or None.

        A file that cannot be read back completely (truncated, corrupt, another tile's) is
        removed and None returned, so the tile is computed again.
        """
        import zipfile

        import numpy as np

        path = self.path(tile.index)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
            box = arrays.pop("__box__")
            if box.tolist() != [int(v) for v in tile.box.as_list()]:
                raise ValueError("the file belongs to another tile")
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        if set(arrays) == {"a:"}:
            return arrays["a:"]
        return {name[2:]: arr for name, arr in arrays.items()}

    def store(self, tile: Tile, result: Any) -> None:
        """Keep the result of ``tile`` (an ndarray or ``{name: ndarray}``), atomically."""
        import numpy as np

        from zoomearth.temporaries import temporary_sibling

        self.folder.mkdir(parents=True, exist_ok=True)
        manifest = self.folder / self.MANIFEST
        if not manifest.exists():
            _write_atomically(manifest, self.fingerprint.encode("utf-8"))
        if isinstance(result, np.ndarray):
            arrays = {"a:": result}
        else:
            arrays = {f"k:{name}": np.asarray(arr) for name, arr in result.items()}
        arrays["__box__"] = np.asarray([int(v) for v in tile.box.as_list()], np.int64)
        final = self.path(tile.index)
        tmp = temporary_sibling(final)
        try:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)  # type: ignore[arg-type]
                fh.flush()
                os.fsync(fh.fileno())  # a power cut must not leave a renamed, empty tile
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    def discard(self) -> None:
        """Remove the folder (and ``.tiles`` when it is left empty); never raises."""
        shutil.rmtree(self.folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.folder.parent.rmdir()  # only when empty


def _write_atomically(final: Path, data: bytes) -> None:
    from zoomearth.temporaries import temporary_sibling

    tmp = temporary_sibling(final)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


_SOURCE_DIGESTS: dict[type, str] = {}


def _source_digest(cls: type) -> str:
    """A digest of the file defining a tool class: edited code never reuses old tiles."""
    if cls not in _SOURCE_DIGESTS:
        try:
            source = inspect.getsourcefile(cls)
            digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()[:16] if source else ""
        except (OSError, TypeError):
            digest = ""
        _SOURCE_DIGESTS[cls] = digest
    return _SOURCE_DIGESTS[cls]


# --------------------------------------------------------------------------------------------
# The tool base class
# --------------------------------------------------------------------------------------------
def _definition_error(cls: type, problem: str) -> ToolDefinitionError:
    return ToolDefinitionError(
        DEFINITION_TEMPLATE.format(
            qualname=cls.__qualname__, module=cls.__module__, problem=problem
        )
    )


class Tool:
    """Base class of tool nodes. Subclass it; the subclass is validated when defined.

    Class attributes to set:
        name: Identifier (lowercase, digits, underscores), unique across built-ins and plugins.
        description: One or two sentences for the planner: what the tool does, when to use it.
        Args: pydantic model of the arguments (default: none). Field descriptions appear in the
            planner prompt; use :func:`artifact_ref` / :func:`input_path` for references to
            earlier artifacts and for file paths.
        needs_approval: The graph asks the user before running it (e.g. generative edits).
        capabilities: :class:`Capabilities` (bands, dtypes, one-piece limit, streaming, memory).
        contract_version: The contract version the tool was written for.
        version: The tool's own version (default ``"1"``); bump it when results change. Part of
            the fingerprint of finished tiles (:meth:`ToolContext.map_tiles`), as is a digest of
            the file defining the class.

    Methods to override: :meth:`run` (required) and :meth:`check` (optional preflight).

    Pass ``abstract=True`` in the class statement for an intermediate base class that is not a
    tool itself (``class MyBase(Tool, abstract=True)``).

    Instances are created once per registry without arguments; keep ``__init__`` cheap and load
    models lazily through the pool inside :meth:`run`.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    Args: ClassVar[type[BaseModel]] = NoArgs
    needs_approval: ClassVar[bool] = False
    capabilities: ClassVar[Capabilities] = Capabilities()
    contract_version: ClassVar[int] = CONTRACT_VERSION
    version: ClassVar[str] = "1"

    def __init_subclass__(cls, abstract: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if abstract:
            return
        cls._validate_definition()

    @classmethod
    def _validate_definition(cls) -> None:
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise _definition_error(cls, BAD_NAME_PROBLEM.format(name=name))
        if keyword.iskeyword(name):
            raise _definition_error(cls, KEYWORD_NAME_PROBLEM.format(name=name))
        desc = getattr(cls, "description", None)
        if not isinstance(desc, str) or not desc.strip():
            raise _definition_error(cls, NO_DESCRIPTION_PROBLEM)
        args_cls = cls.Args
        if not (isinstance(args_cls, type) and issubclass(args_cls, BaseModel)):
            raise _definition_error(cls, BAD_ARGS_PROBLEM.format(got=args_cls))
        try:
            with warnings.catch_warnings():
                # pydantic drops unserialisable defaults with a warning; the planner would then
                # not know the default, so that is a definition error too.
                warnings.simplefilter("error", PydanticJsonSchemaWarning)
                json.dumps(args_cls.model_json_schema())
        except Exception as exc:  # noqa: BLE001 - any failure here is the problem we report
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            raise _definition_error(cls, SCHEMA_PROBLEM.format(reason=reason)) from exc
        reserved = sorted(set(args_cls.model_fields) & set(RESERVED_ARGS))
        if reserved:
            raise _definition_error(cls, RESERVED_ARG_PROBLEM.format(names=", ".join(reserved)))
        caps = cls.capabilities
        if isinstance(caps, Mapping):
            try:
                cls.capabilities = Capabilities.model_validate(caps)
            except ValidationError as exc:
                raise _definition_error(cls, BAD_CAPS_PROBLEM.format(reason=_short(exc))) from None
        elif not isinstance(caps, Capabilities):
            raise _definition_error(
                cls, BAD_CAPS_PROBLEM.format(reason=f"expected Capabilities, got {caps!r}")
            )
        if not isinstance(cls.needs_approval, bool):
            raise _definition_error(cls, BAD_APPROVAL_PROBLEM.format(got=cls.needs_approval))
        if not isinstance(cls.version, str) or not cls.version.strip():
            raise _definition_error(cls, BAD_TOOL_VERSION_PROBLEM.format(got=cls.version))
        if cls.contract_version not in SUPPORTED_CONTRACT_VERSIONS:
            raise _definition_error(
                cls,
                BAD_VERSION_PROBLEM.format(
                    got=cls.contract_version, supported=list(SUPPORTED_CONTRACT_VERSIONS)
                ),
            )
        run = getattr(cls, "run", None)
        if run is None or run is Tool.run:
            raise _definition_error(cls, NO_RUN_PROBLEM)
        try:
            params = list(inspect.signature(run).parameters.values())
        except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
            return
        positional = [
            p
            for p in params
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
        ]
        if len(positional) < 3 and not any(p.kind == p.VAR_POSITIONAL for p in positional):
            raise _definition_error(
                cls, RUN_SIGNATURE_PROBLEM.format(signature=inspect.signature(run))
            )

    def run(self, ctx: ToolContext, args: Any) -> ToolResult:
        """Process ``ctx.region`` of ``ctx.scene`` with validated ``args``; return the result.

        Read pixels through ``ctx.read``/``ctx.tiles`` (tile by tile when ``ctx.streamed``), write
        outputs atomically to ``ctx.output_path(...)``, call ``ctx.report(done, total)``
        regularly, raise :class:`ToolInputError` for problems the planner can fix.
        """
        raise NotImplementedError

    def check(self, ctx: ToolContext, args: Any) -> None:
        """Optional preflight: raise :class:`ToolInputError` for a call that cannot succeed.

        Called by :func:`run_tool` (and :func:`check_tool_call`) after the runner's own checks
        (arguments, capabilities, region, references, paths) and before :meth:`run`; the graph
        calls it before asking the user to approve a ``needs_approval`` tool, so the user is
        never asked about a call that would then be refused. Keep it cheap and free of side
        effects: read what is needed (``ctx.read``, ``ctx.get_artifact``), write nothing. The
        default accepts every call.
        """
        return None

    @classmethod
    def backend_status(cls) -> list[BackendStatus]:
        """Backends of the tool and whether each can run here (cheap: no model loading).

        Override to report optional packages or weights, e.g. SAM (weights missing) and GrabCut
        (available). The default reports one always-available backend.
        """
        return [BackendStatus("builtin", True, "no optional dependencies")]

    @classmethod
    def source_target(cls) -> str:
        """``module:QualName`` of the class."""
        return f"{cls.__module__}:{cls.__qualname__}"

    def __repr__(self) -> str:
        return f"<tool {self.name} ({self.source_target()})>"


def _short(exc: BaseException) -> str:
    text = str(exc)
    return " ".join(text.split())[:300]


# --------------------------------------------------------------------------------------------
# Argument descriptions for the planner
# --------------------------------------------------------------------------------------------
def _strip_titles(node: Any) -> Any:
    """Remove pydantic's ``title`` keys from schema objects (not from ``properties`` names)."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "title" and isinstance(v, str):
                continue
            if k in ("properties", "$defs", "definitions") and isinstance(v, dict):
                out[k] = {name: _strip_titles(sub) for name, sub in v.items()}
            else:
                out[k] = _strip_titles(v)
        return out
    if isinstance(node, list):
        return [_strip_titles(v) for v in node]
    return node


def prompt_schema(args_cls: type[BaseModel]) -> dict[str, Any]:
    """Compact JSON schema of an Args model for the planner (titles removed)."""
    schema = _strip_titles(args_cls.model_json_schema())
    # The tool's description says what the arguments are for; the model's docstring is noise.
    schema.pop("description", None)
    schema.pop("additionalProperties", None)
    schema.setdefault("type", "object")
    schema.setdefault("properties", {})
    return schema


def _schema_type(prop: Mapping[str, Any]) -> str:
    if "enum" in prop:
        return "one of " + ", ".join(json.dumps(v) for v in prop["enum"])
    if "const" in prop:
        return json.dumps(prop["const"])
    if "anyOf" in prop:
        parts = [_schema_type(p) for p in prop["anyOf"] if p.get("type") != "null"]
        nullable = any(p.get("type") == "null" for p in prop["anyOf"])
        return " or ".join(parts) + (" or null" if nullable else "")
    kind = prop.get("type", "value")
    if kind == "array":
        items = prop.get("items", {})
        text = f"list of {_schema_type(items)}"
        if "minItems" in prop and prop.get("minItems") == prop.get("maxItems"):
            text = f"list of {prop['minItems']} {_schema_type(items)}"
        return text
    fmt = prop.get("format")
    if fmt == "artifact-ref":
        return "'artifact:N'"
    if fmt == "path":
        return "file path"
    text = str(kind)
    lo = prop.get("minimum", prop.get("exclusiveMinimum"))
    hi = prop.get("maximum", prop.get("exclusiveMaximum"))
    if lo is not None and hi is not None:
        text += f" {lo}..{hi}"
    elif lo is not None:
        text += f" >= {lo}"
    elif hi is not None:
        text += f" <= {hi}"
    return text


def describe_arguments(args_cls: type[BaseModel]) -> str:
    """One line per argument: ``name (type, required|default X): description``; or "none"."""
    schema = args_cls.model_json_schema()
    defs = schema.get("$defs", {})
    required = set(schema.get("required", []))
    parts = []
    for name, prop in schema.get("properties", {}).items():
        if "$ref" in prop:
            prop = {**defs.get(prop["$ref"].rsplit("/", 1)[-1], {}), **prop}
        need = "required" if name in required else f"default {json.dumps(prop.get('default'))}"
        desc = prop.get("description", "")
        parts.append(f"{name} ({_schema_type(prop)}, {need})" + (f": {desc}" if desc else ""))
    return "; ".join(parts) if parts else "none (call it with {})"


def _format_validation_error(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(arguments)"
        if err.get("type") == "missing":
            problems.append(f"'{loc}' is required")
            continue
        got = json.dumps(err.get("input"), default=str)
        if len(got) > 60:
            got = got[:57] + "..."
        problems.append(f"'{loc}': {err.get('msg')} (got {got})")
    return "; ".join(problems)


def split_region_args(arguments: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a planner's tool arguments into the region part and the tool's own arguments.

    Returns:
        ``(region_args, tool_args)``: ``region_args`` holds the :data:`RESERVED_ARGS` present
        (``bbox_2d`` in the frame of view ``view``), for the graph to convert to ``ctx.region``.
    """
    region = {k: v for k, v in arguments.items() if k in RESERVED_ARGS}
    rest = {k: v for k, v in arguments.items() if k not in RESERVED_ARGS}
    return region, rest


# --------------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------------
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


def _box_code(message: str) -> str:
    low = message.lower()
    if "inverted" in low:
        return "inverted_box"
    if "outside" in low:
        return "box_outside_image"
    return "bad_box"


def _check_region(tool: Tool, ctx: ToolContext) -> tuple[PixelBox, bool]:
    scene = ctx.scene
    try:
        region, notes = scene.check_box(ctx.region)
    except BoxError as exc:
        raise ToolInputError(
            BOX_TEMPLATE.format(tool=tool.name, reason=exc),
            code=_box_code(str(exc)),
            tool=tool.name,
        ) from None
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


def _values(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [v for v in value if v is not None]
    return [value]


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
        raise ToolInputError(
            BOX_TEMPLATE.format(tool=instance.name, reason=exc),
            code=_box_code(str(exc)),
            tool=instance.name,
        ) from exc
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
) -> ToolOutcome:
    """Run one tool call through the contract's checks (the single code path for every caller).

    Args:
        tool: A tool instance, class, or registered name.
        ctx: The call's context (not modified: the runner works on a copy).
        args: Arguments as a mapping (the planner's JSON object without ``bbox_2d``/``view``) or an
            ``Args`` instance.
        registry: Registry for name lookups (default: the process registry).

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
        raise ToolInputError(
            BOX_TEMPLATE.format(tool=instance.name, reason=exc),
            code=_box_code(str(exc)),
            tool=instance.name,
        ) from exc
    except Exception as exc:
        _cleanup(ctx, created)
        raise _failure(instance, ctx, exc) from exc
    except BaseException:
        _cleanup(ctx, created)
        raise
    _discard_tiles(ctx)
    return outcome


def _call_fingerprint(
    tool: Tool, ctx: ToolContext, args: BaseModel, stamp: list[tuple[Path, int, int]]
) -> dict[str, Any]:
    """What every tile of this call depends on, besides the tile layout and the tool's key."""
    import zoomearth

    scene = ctx.scene
    return {
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


def _discard_tiles(ctx: ToolContext, created: bool = False) -> None:
    for cache in ctx._tile_caches:
        cache.discard()
    if created:
        with contextlib.suppress(OSError):
            ctx.run_dir.rmdir()  # a run directory this call made, left empty


# -- failure messages ---------------------------------------------------------------------------
# GDAL reports a full disk as text only (libtiff's "No space left on device" reaches stderr, the
# exception says "Write failed" or "writing a dirty block"), so the text is a signal as well as
# the errno of Python's own writes.
_NO_SPACE_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT})
_NO_SPACE_WORDS: Final = (
    "no space left on device",
    "disk quota exceeded",
    "free disk space available is",
    "disk full",
)
_WRITE_FAILED_WORDS: Final = (
    "write failed",
    "writing a dirty block",
    "iwriteblock failed",
    "write error",
    "_tiffwriteproc",
    "tiffappendtostrip",
    "error in writing",
)
def _scrub_temporaries(text: str, limit: int = 4000) -> str:
    """Internal temporary names in a message replaced by the file they become.

    Messages are short; a longer one is cut at ``limit`` characters first, which bounds the work
    of the (linear-time) pattern of :func:`zoomearth.scene.writing.mask_temporary_names`.
    """
    from zoomearth.scene.writing import mask_temporary_names

    return mask_temporary_names(text[:limit])


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its causes/contexts (also a context hidden by ``raise ... from None``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 16:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _free_bytes(path: Path) -> int | None:
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def _disk_full(ctx: ToolContext, exc: BaseException) -> bool:
    """Whether a failure was caused by a full disk (or quota).

    Certain when an ``OSError`` in the chain has errno ENOSPC/EDQUOT or a message says so. A
    GDAL write failure without a reason counts when the device holding the run directory has
    less free space than the region's uncompressed size (the partial output was removed by now,
    so "free == 0" cannot be asked).
    """
    write_failed = False
    for item in _exception_chain(exc):
        if isinstance(item, OSError) and item.errno in _NO_SPACE_ERRNOS:
            return True
        text = str(item).lower()
        if any(words in text for words in _NO_SPACE_WORDS):
            return True
        write_failed = write_failed or any(words in text for words in _WRITE_FAILED_WORDS)
    if not write_failed:
        return False
    free = _free_bytes(ctx.run_dir)
    if free is None or ctx.region is None:
        return False
    import numpy as np

    width, height = _box_size(ctx.region)
    try:
        itemsize = np.dtype(str(ctx.scene.dtype)).itemsize
    except TypeError:
        itemsize = 1
    return free < width * height * max(1, int(ctx.scene.count)) * itemsize + (1 << 20)


def _failure(tool: Tool, ctx: ToolContext, exc: BaseException) -> ToolFailure:
    """The ToolFailure for an unexpected exception of a call (the caller chains ``exc``)."""
    from zoomearth.errors import OutputWriteError

    for item in _exception_chain(exc):
        if isinstance(item, OutputWriteError):
            # The writer's own message already says what failed and what to do.
            return ToolFailure(_scrub_temporaries(str(item)), tool=tool.name)
    if _disk_full(ctx, exc):
        kept = sum(cache.tile_count() for cache in ctx._tile_caches)
        return ToolFailure(
            NO_SPACE_TEMPLATE.format(
                tool=tool.name,
                run_dir=ctx.run_dir,
                kept=TILES_KEPT_TEMPLATE.format(count=kept) if kept else "",
            ),
            tool=tool.name,
        )
    reason = _scrub_temporaries(" ".join(str(exc).split())[:500]) or "(no message)"
    return ToolFailure(
        FAILURE_TEMPLATE.format(tool=tool.name, kind=type(exc).__name__, reason=reason),
        tool=tool.name,
    )


def _contract_failure(tool: Tool, problem: str) -> ToolFailure:
    return ToolFailure(
        FAILURE_TEMPLATE.format(tool=tool.name, kind="ContractViolation", reason=problem),
        tool=tool.name,
    )


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
