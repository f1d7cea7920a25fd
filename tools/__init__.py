"""Tool nodes: the tool contract, the registry (built-ins + entry-point plugins) and built-ins.

Importing this package is light: no torch, no rasterio, no plugin is imported (plugins load on the
registry's first listing; built-ins when first used). See ``docs/tools.md``.
"""

from zoomearth.artifacts import Artifact, ArtifactDraft, ArtifactKind, ArtifactStore
from zoomearth.tools.context import ToolContext
from zoomearth.tools.contract import (
    CONTRACT_VERSION,
    RESERVED_ARGS,
    ArtifactRef,
    BackendStatus,
    Capabilities,
    InputPath,
    NoArgs,
    Tool,
    ToolOutcome,
    ToolResult,
    artifact_ref,
    input_path,
    output_name,
)
from zoomearth.tools.errors import (
    ToolCancelled,
    ToolDefinitionError,
    ToolError,
    ToolFailure,
    ToolInputError,
    UnknownToolError,
)
from zoomearth.tools.paths import PathNotAllowedError, check_allowed_path
from zoomearth.tools.registry import (
    BUILTIN_TOOLS,
    ENTRY_POINT_GROUP,
    DuplicateToolError,
    PluginLoadError,
    ToolEntry,
    ToolRegistry,
    get_registry,
    get_tool,
    list_tools,
    reset_registry,
)
from zoomearth.tools.runner import check_tool_call, run_tool
from zoomearth.tools.schema import describe_arguments, split_region_args
from zoomearth.tools.tiles import Tile, TileCache

__all__ = [
    "BUILTIN_TOOLS",
    "CONTRACT_VERSION",
    "ENTRY_POINT_GROUP",
    "RESERVED_ARGS",
    "Artifact",
    "ArtifactDraft",
    "ArtifactKind",
    "ArtifactRef",
    "ArtifactStore",
    "BackendStatus",
    "Capabilities",
    "DuplicateToolError",
    "InputPath",
    "NoArgs",
    "PathNotAllowedError",
    "PluginLoadError",
    "Tile",
    "TileCache",
    "Tool",
    "ToolCancelled",
    "ToolContext",
    "ToolDefinitionError",
    "ToolEntry",
    "ToolError",
    "ToolFailure",
    "ToolInputError",
    "ToolOutcome",
    "ToolRegistry",
    "ToolResult",
    "UnknownToolError",
    "artifact_ref",
    "check_allowed_path",
    "check_tool_call",
    "describe_arguments",
    "get_registry",
    "get_tool",
    "input_path",
    "output_name",
    "list_tools",
    "reset_registry",
    "run_tool",
    "split_region_args",
]
