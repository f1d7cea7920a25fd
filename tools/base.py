"""Compatibility module: the names of the former ``tools/base.py``, which is now split by concept.

Import from :mod:`zoomearth.tools` (the public names) or from the module holding the concept:

- :mod:`zoomearth.tools.contract` -- the tool contract: :class:`Tool`, :class:`Capabilities`,
  :class:`BackendStatus`, :class:`NoArgs`, the argument markers (:func:`artifact_ref`,
  :func:`input_path`, :func:`path_argument_values`), :class:`ToolResult`, :class:`ToolOutcome`,
  the definition checks, ``CONTRACT_VERSION`` and ``RESERVED_ARGS``;
- :mod:`zoomearth.tools.errors` -- :class:`ToolError` and its subclasses (:class:`ToolInputError`,
  :class:`ToolFailure`, :class:`ToolCancelled`, :class:`ToolDefinitionError`,
  :class:`UnknownToolError`) and every ``*_TEMPLATE`` / ``*_PROBLEM`` message;
- :mod:`zoomearth.tools.context` -- :class:`ToolContext` (pixels, tiles, progress, outputs,
  artifacts of one call) and :func:`absolute_dir`;
- :mod:`zoomearth.tools.tiles` -- :class:`Tile` and the finished-tile cache :class:`TileCache`
  (``TILE_CACHE_DIR``);
- :mod:`zoomearth.tools.schema` -- the arguments as the planner sees them:
  :func:`prompt_schema`, :func:`describe_arguments`, :func:`split_region_args`;
- :mod:`zoomearth.tools.runner` -- :func:`run_tool`, the single code path that runs a tool, and
  :func:`check_tool_call` (its checks without running).

Every name below stays importable from here for plugins and older code.
"""

from __future__ import annotations

from zoomearth.tools.context import (
    CancelCheck,
    ProgressCallback,
    ToolContext,
    absolute_dir,
)
from zoomearth.tools.contract import (
    CONTRACT_VERSION,
    MAX_DATA_BYTES,
    MAX_TEXT_CHARS,
    RESERVED_ARGS,
    SUPPORTED_CONTRACT_VERSIONS,
    ArtifactRef,
    ArtifactRefSpec,
    BackendStatus,
    Capabilities,
    InputPath,
    NoArgs,
    PathArgSpec,
    Tool,
    ToolOutcome,
    ToolResult,
    artifact_ref,
    input_path,
    output_name,
    path_argument_values,
)
from zoomearth.tools.errors import (
    ARTIFACT_KIND_TEMPLATE,
    ARTIFACT_MISSING_FILE_TEMPLATE,
    BAD_APPROVAL_PROBLEM,
    BAD_ARGS_PROBLEM,
    BAD_CAPS_PROBLEM,
    BAD_NAME_PROBLEM,
    BAD_RESULT_TEMPLATE,
    BAD_TOOL_VERSION_PROBLEM,
    BAD_VERSION_PROBLEM,
    BANDS_TEMPLATE,
    BOX_TEMPLATE,
    CANCELLED_TEMPLATE,
    DATA_TEMPLATE,
    DEFINITION_TEMPLATE,
    DTYPES_TEMPLATE,
    FAILURE_TEMPLATE,
    GEOREF_TEMPLATE,
    INPUT_CHANGED_TEMPLATE,
    INVALID_ARGS_TEMPLATE,
    KEYWORD_NAME_PROBLEM,
    MISSING_ARTIFACT_TEMPLATE,
    NO_DESCRIPTION_PROBLEM,
    NO_REGION_TEMPLATE,
    NO_RUN_PROBLEM,
    NO_SPACE_TEMPLATE,
    NOT_A_FILE_TEMPLATE,
    NOT_OBJECT_TEMPLATE,
    OUTPUT_NAME_TEMPLATE,
    OUTSIDE_RUN_DIR_TEMPLATE,
    OVER_INPUT_TEMPLATE,
    OVERWRITES_ARTIFACT_TEMPLATE,
    PATH_ARG_TEMPLATE,
    PREVIEW_TYPE_TEMPLATE,
    READ_LIMIT_TEMPLATE,
    REGION_TOO_LARGE_TEMPLATE,
    RESERVED_ARG_PROBLEM,
    RESERVED_ARG_TEMPLATE,
    RUN_SIGNATURE_PROBLEM,
    SCHEMA_PROBLEM,
    TILE_KEY_TEMPLATE,
    TILE_RESULT_TEMPLATE,
    TILES_KEPT_CANCEL_TEMPLATE,
    TILES_KEPT_TEMPLATE,
    TILES_REUSED_TEMPLATE,
    TYPED_PATH_MISSING_TEMPLATE,
    TYPED_PATH_NOT_FILE_TEMPLATE,
    UNKNOWN_ARGS_TEMPLATE,
    UNKNOWN_ARTIFACT_TEMPLATE,
    UNKNOWN_TOOL_TEMPLATE,
    UNKNOWN_VIEW_TEMPLATE,
    ToolCancelled,
    ToolDefinitionError,
    ToolError,
    ToolFailure,
    ToolInputError,
    UnknownToolError,
)
from zoomearth.tools.runner import (
    check_tool_call,
    run_tool,
)
from zoomearth.tools.schema import (
    describe_arguments,
    prompt_schema,
    split_region_args,
)
from zoomearth.tools.tiles import (
    TILE_CACHE_DIR,
    TILE_CACHE_FORMAT,
    Tile,
    TileCache,
)

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
    "output_name",
    "path_argument_values",
    "prompt_schema",
    "run_tool",
    "split_region_args",
]

# Also importable from here, as before the split (tests and older code use some of them): the
# contract's limits, the callback types and every message template.
__all__ += [
    "CancelCheck",
    "ProgressCallback",
    "MAX_DATA_BYTES",
    "MAX_TEXT_CHARS",
    "ARTIFACT_KIND_TEMPLATE",
    "ARTIFACT_MISSING_FILE_TEMPLATE",
    "BAD_APPROVAL_PROBLEM",
    "BAD_ARGS_PROBLEM",
    "BAD_CAPS_PROBLEM",
    "BAD_NAME_PROBLEM",
    "BAD_RESULT_TEMPLATE",
    "BAD_TOOL_VERSION_PROBLEM",
    "BAD_VERSION_PROBLEM",
    "BANDS_TEMPLATE",
    "BOX_TEMPLATE",
    "CANCELLED_TEMPLATE",
    "DATA_TEMPLATE",
    "DEFINITION_TEMPLATE",
    "DTYPES_TEMPLATE",
    "FAILURE_TEMPLATE",
    "GEOREF_TEMPLATE",
    "INPUT_CHANGED_TEMPLATE",
    "INVALID_ARGS_TEMPLATE",
    "KEYWORD_NAME_PROBLEM",
    "MISSING_ARTIFACT_TEMPLATE",
    "NOT_A_FILE_TEMPLATE",
    "NOT_OBJECT_TEMPLATE",
    "NO_DESCRIPTION_PROBLEM",
    "NO_REGION_TEMPLATE",
    "NO_RUN_PROBLEM",
    "NO_SPACE_TEMPLATE",
    "OUTPUT_NAME_TEMPLATE",
    "OUTSIDE_RUN_DIR_TEMPLATE",
    "OVERWRITES_ARTIFACT_TEMPLATE",
    "OVER_INPUT_TEMPLATE",
    "PATH_ARG_TEMPLATE",
    "PREVIEW_TYPE_TEMPLATE",
    "READ_LIMIT_TEMPLATE",
    "REGION_TOO_LARGE_TEMPLATE",
    "RESERVED_ARG_PROBLEM",
    "RESERVED_ARG_TEMPLATE",
    "RUN_SIGNATURE_PROBLEM",
    "SCHEMA_PROBLEM",
    "TILES_KEPT_CANCEL_TEMPLATE",
    "TILES_KEPT_TEMPLATE",
    "TILES_REUSED_TEMPLATE",
    "TILE_KEY_TEMPLATE",
    "TILE_RESULT_TEMPLATE",
    "TYPED_PATH_MISSING_TEMPLATE",
    "TYPED_PATH_NOT_FILE_TEMPLATE",
    "UNKNOWN_ARGS_TEMPLATE",
    "UNKNOWN_ARTIFACT_TEMPLATE",
    "UNKNOWN_TOOL_TEMPLATE",
    "UNKNOWN_VIEW_TEMPLATE",
    "TILE_CACHE_FORMAT",
]

# The old module also had these in its namespace (imported from the core); plugins written
# against it may import them from here, so they stay.
from zoomearth.artifacts import (  # noqa: E402
    ARTIFACT_REF_PATTERN as ARTIFACT_REF_PATTERN,
)
from zoomearth.artifacts import Artifact as Artifact  # noqa: E402
from zoomearth.artifacts import ArtifactDraft as ArtifactDraft  # noqa: E402
from zoomearth.artifacts import ArtifactError as ArtifactError  # noqa: E402
from zoomearth.artifacts import ArtifactKind as ArtifactKind  # noqa: E402
from zoomearth.artifacts import ArtifactStore as ArtifactStore  # noqa: E402
from zoomearth.artifacts import artifacts_by_id as artifacts_by_id  # noqa: E402
from zoomearth.artifacts import format_artifact_ref as format_artifact_ref  # noqa: E402
from zoomearth.artifacts import guess_media_type as guess_media_type  # noqa: E402
from zoomearth.artifacts import parse_artifact_ref as parse_artifact_ref  # noqa: E402
from zoomearth.errors import BoxError as BoxError  # noqa: E402
from zoomearth.errors import ZoomEarthError as ZoomEarthError  # noqa: E402
from zoomearth.geometry import PixelBox as PixelBox  # noqa: E402
from zoomearth.geometry import ViewSpec as ViewSpec  # noqa: E402
