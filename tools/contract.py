"""The tool contract: what a tool node is, what it declares, and what it returns.

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

The class is validated when it is defined (:class:`~zoomearth.tools.errors.ToolDefinitionError`
names the problem). This module holds the declarations a tool makes (:class:`Tool`,
:class:`Capabilities`, :class:`BackendStatus`, the argument markers :func:`artifact_ref` and
:func:`input_path`), what ``run`` returns (:class:`ToolResult`) and what the runner returns
(:class:`ToolOutcome`). What a call receives is :class:`~zoomearth.tools.context.ToolContext`;
the one code path that runs a tool is :func:`~zoomearth.tools.runner.run_tool`.
"""

from __future__ import annotations

import inspect
import json
import keyword
import re
import typing
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.json_schema import PydanticJsonSchemaWarning

from zoomearth.artifacts import ARTIFACT_REF_PATTERN, Artifact, ArtifactDraft
from zoomearth.tools.errors import (
    BAD_APPROVAL_PROBLEM,
    BAD_ARGS_PROBLEM,
    BAD_CAPS_PROBLEM,
    BAD_NAME_PROBLEM,
    BAD_TOOL_VERSION_PROBLEM,
    BAD_VERSION_PROBLEM,
    DEFINITION_TEMPLATE,
    KEYWORD_NAME_PROBLEM,
    NO_DESCRIPTION_PROBLEM,
    NO_RUN_PROBLEM,
    RESERVED_ARG_PROBLEM,
    RUN_SIGNATURE_PROBLEM,
    SCHEMA_PROBLEM,
    ToolDefinitionError,
)

if TYPE_CHECKING:
    from zoomearth.tools.context import ToolContext

__all__ = [
    "CONTRACT_VERSION",
    "MAX_DATA_BYTES",
    "MAX_TEXT_CHARS",
    "RESERVED_ARGS",
    "SUPPORTED_CONTRACT_VERSIONS",
    "ArtifactRef",
    "ArtifactRefSpec",
    "BackendStatus",
    "Capabilities",
    "InputPath",
    "NoArgs",
    "PathArgSpec",
    "Tool",
    "ToolOutcome",
    "ToolResult",
    "artifact_ref",
    "input_path",
    "output_name",
    "path_argument_values",
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
            disk, so a stopped call (timeout, Ctrl-C, SIGTERM, kill) resumes where it stopped,
            and computes the tiles in parallel (see ``parallel_tiles``).
        parallel_tiles: How :meth:`ToolContext.map_tiles` runs the tiles of a tool with
            ``independent_tiles`` (setting ``tool_workers`` workers; 1 = one after the other):
            ``"threads"`` (default; for tile functions whose heavy work releases the GIL --
            OpenCV, numpy on large arrays, GDAL reads -- and that share no mutable state
            between tiles), ``"processes"`` (a pool of fresh processes, for pure-Python work;
            the tile function is sent to them with cloudpickle, see
            :mod:`zoomearth.tools.distributed`) or ``"serial"``. Results are yielded in order
            either way, and ``zoomearth tool --ray`` runs the same tiles as Ray tasks.
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
    parallel_tiles: Literal["threads", "processes", "serial"] = "threads"

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


#: What an output file name stem may hold: it becomes part of a file name in the run folder.
OUTPUT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


def output_name(default: str) -> Any:
    """The ``name`` argument of a tool writing files: an output file name stem, ``default`` unset.

    Use as ``name: str = output_name("denoised")``.
    """
    return Field(
        default,
        pattern=OUTPUT_NAME_PATTERN,
        description="Output file name stem (letters, digits, '_' and '-')",
    )


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


def _values(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [v for v in value if v is not None]
    return [value]


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
