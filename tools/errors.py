"""Errors of the tool layer and the message templates of the tool contract.

The exceptions (:class:`ToolError` and its subclasses) follow one policy: a
:class:`ToolInputError` is a problem the planner can fix (its message is shown to the model and
its ``code`` goes in the graph's error observation); a :class:`ToolFailure` is a broken tool or
environment (recorded, the run goes on to a best-effort answer; tests run strict and re-raise it);
a :class:`ToolCancelled` call kept nothing; a :class:`ToolDefinitionError` is raised when a tool
class breaking the contract is defined.

The ``*_TEMPLATE`` and ``*_PROBLEM`` constants are every message the contract
(:mod:`zoomearth.tools.contract`), the context (:mod:`zoomearth.tools.context`), the tile cache
(:mod:`zoomearth.tools.tiles`) and the runner (:mod:`zoomearth.tools.runner`) produce; tests and
documentation quote them.
"""

from __future__ import annotations

from collections.abc import Iterable

from zoomearth.errors import ZoomEarthError

__all__ = [
    "ToolCancelled",
    "ToolDefinitionError",
    "ToolError",
    "ToolFailure",
    "ToolInputError",
    "UnknownToolError",
]

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
