"""The tool registry: the single source of tools for the prompt, the graph, the CLI and the server.

Tools come from two places:

* **built-ins**, an explicit dict :data:`BUILTIN_TOOLS` of ``name -> "module:Class"`` (imported
  when first needed);
* **plugins**, entry points of the group ``zoomearth.tools`` in any installed distribution
  (``[project.entry-points."zoomearth.tools"]`` in the plugin's ``pyproject.toml``), discovered and
  imported the first time the registry is listed -- never when zoomearth is imported.

Rules: tool names are unique. A plugin whose name is already taken is rejected with a warning
naming both sources (a built-in always wins; two plugins with the same name are both rejected, as
neither is more right than the other). A plugin that fails to import, is not a :class:`Tool`
subclass or breaks the contract is skipped with a warning. Warnings never stop the registry (a
broken third-party package must not break the agent); ``zoomearth tools`` shows them, and
``ToolRegistry(strict=True)`` (tests) raises instead. Registering a duplicate explicitly with
:meth:`ToolRegistry.register` always raises :class:`DuplicateToolError`.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Final, TypeGuard

from zoomearth.tools.base import (
    RESERVED_ARGS,
    BackendStatus,
    Tool,
    ToolDefinitionError,
    ToolError,
    UnknownToolError,
    prompt_schema,
)

__all__ = [
    "BUILTIN_TOOLS",
    "ENTRY_POINT_GROUP",
    "DuplicateToolError",
    "PluginLoadError",
    "ToolEntry",
    "ToolRegistry",
    "get_registry",
    "get_tool",
    "list_tools",
    "reset_registry",
]

#: Entry-point group third-party packages use to contribute tools.
ENTRY_POINT_GROUP: Final = "zoomearth.tools"

#: Built-in tools: name -> "module:Class" (imported lazily).
BUILTIN_TOOLS: Final[dict[str, str]] = {
    "export_region": "zoomearth.tools.export:ExportRegion",
    "segmentation": "zoomearth.tools.segmentation:Segmentation",
    "denoise": "zoomearth.tools.denoise:Denoise",
    "edit": "zoomearth.tools.edit:Edit",
    "cloud_removal": "zoomearth.tools.cloud_removal:CloudRemoval",
    "change_detection": "zoomearth.tools.change_detection:ChangeDetection",
}

DUPLICATE_TEMPLATE = (
    "Tool name {name!r} is defined twice: by {first} and by {second}. Tool names must be unique; "
    "{resolution}"
)
PLUGIN_FAILED_TEMPLATE = "Skipped plugin tool {ep} from {source}: {reason}"
NOT_A_TOOL_TEMPLATE = "{target} is not a zoomearth Tool subclass (got {got})"
NAME_MISMATCH_TEMPLATE = (
    "Plugin entry point {ep!r} of {source} loads tool {name!r}, which is registered under its "
    "own name {name!r}; rename the entry point to {name!r} to avoid confusion."
)
BUILTIN_NAME_TEMPLATE = "Built-in {target} declares name {got!r}, registered under {name!r}."
BACKEND_FAILED_TEMPLATE = "backend check of tool {name!r} failed: {reason}"


class DuplicateToolError(ToolError, ValueError):
    """Two tools claim the same name; the message names both sources."""


class PluginLoadError(ToolError, ImportError):
    """A plugin could not be loaded (raised only by strict registries; otherwise a warning)."""


@dataclass(frozen=True)
class ToolEntry:
    """One registered tool and where it came from.

    Attributes:
        name: Tool name.
        cls: The tool class.
        source: ``"builtin"``, ``"plugin"`` or ``"runtime"`` (registered by code).
        package: Distribution providing it (``zoomearth`` for built-ins).
        package_version: Its version, when known.
        target: ``module:Class`` (the entry point's value for plugins).
        entry_point: Entry-point name for plugins, else None.
    """

    name: str
    cls: type[Tool]
    source: str
    package: str
    package_version: str | None = None
    target: str = ""
    entry_point: str | None = None

    def label(self) -> str:
        """Human description of the source, used in messages."""
        if self.source == "builtin":
            return f"built-in {self.target}"
        if self.source == "plugin":
            return (
                f"plugin package '{self.package}' (entry point {self.entry_point} = {self.target})"
            )
        return f"{self.target} (registered at runtime)"


@dataclass
class _Pending:
    """A plugin entry point not yet imported."""

    ep: Any
    package: str
    version: str | None
    warnings: list[str] = field(default_factory=list)


def _zoomearth_version() -> str | None:
    try:
        return metadata.version("zoomearth")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return None


def _is_tool_class(obj: Any) -> TypeGuard[type[Tool]]:
    return isinstance(obj, type) and issubclass(obj, Tool)


def _import_target(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


class ToolRegistry:
    """Built-in and plugin tools by name.

    Args:
        builtins: ``name -> "module:Class"`` or ``name -> Tool subclass``; default
            :data:`BUILTIN_TOOLS`.
        entry_point_group: Entry-point group of plugins; None disables plugins.
        strict: Raise on plugin problems instead of recording warnings (tests).
        entry_points: Callable returning the entry points of a group (default:
            :func:`importlib.metadata.entry_points`); for tests.
    """

    def __init__(
        self,
        builtins: Mapping[str, str | type[Tool]] | None = None,
        *,
        entry_point_group: str | None = ENTRY_POINT_GROUP,
        strict: bool = False,
        entry_points: Callable[..., Iterable[Any]] | None = None,
    ) -> None:
        self._builtin_specs = dict(BUILTIN_TOOLS if builtins is None else builtins)
        self.entry_point_group = entry_point_group
        self.strict = strict
        self._entry_points = entry_points
        self._entries: dict[str, ToolEntry] = {}
        self._instances: dict[str, Tool] = {}
        self._warnings: list[str] = []
        self._builtins_loaded = False
        self._plugins_loaded = False
        self._lock = threading.RLock()

    # ------------------------------------------------------------------------------------------
    # loading
    # ------------------------------------------------------------------------------------------
    def _warn(self, message: str, exc: BaseException | None = None) -> None:
        if self.strict:
            err = PluginLoadError(message)
            raise err from exc
        if message not in self._warnings:
            self._warnings.append(message)

    def _load_builtins(self) -> None:
        if self._builtins_loaded:
            return
        with self._lock:
            if self._builtins_loaded:
                return
            version = _zoomearth_version()
            for name, spec in self._builtin_specs.items():
                # Built-ins are part of zoomearth: a broken one is our bug and raises.
                cls: Any = _import_target(spec) if isinstance(spec, str) else spec
                if not _is_tool_class(cls):
                    raise ToolDefinitionError(
                        NOT_A_TOOL_TEMPLATE.format(target=spec, got=type(cls).__name__)
                    )
                if cls.name != name:
                    raise ToolDefinitionError(
                        BUILTIN_NAME_TEMPLATE.format(target=spec, got=cls.name, name=name)
                    )
                self._add(
                    ToolEntry(
                        name=name,
                        cls=cls,
                        source="builtin",
                        package="zoomearth",
                        package_version=version,
                        target=cls.source_target(),
                    )
                )
            self._builtins_loaded = True

    def _discover(self) -> list[_Pending]:
        if self.entry_point_group is None:
            return []
        finder = self._entry_points or metadata.entry_points
        try:
            eps = list(finder(group=self.entry_point_group))
        except Exception as exc:  # noqa: BLE001 - broken metadata of some other distribution
            self._warn(f"Could not list entry points of group {self.entry_point_group!r}: {exc}")
            return []
        pending = []
        seen: set[tuple[str, str]] = set()
        for ep in eps:
            dist = getattr(ep, "dist", None)
            package = getattr(dist, "name", None) or "unknown package"
            version = getattr(dist, "version", None)
            key = (ep.name, ep.value)
            if key in seen:  # the same distribution visible twice on sys.path
                continue
            seen.add(key)
            pending.append(_Pending(ep=ep, package=package, version=version))
        return sorted(pending, key=lambda p: (p.ep.name, p.package))

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        with self._lock:
            if self._plugins_loaded:
                return
            self._load_builtins()
            loaded: list[ToolEntry] = []
            for p in self._discover():
                entry = self._load_one(p)
                if entry is not None:
                    loaded.append(entry)
            by_name: dict[str, list[ToolEntry]] = {}
            for entry in loaded:
                by_name.setdefault(entry.name, []).append(entry)
            for name, entries in by_name.items():
                existing = self._entries.get(name)
                if existing is not None:
                    for e in entries:
                        self._warn(
                            DUPLICATE_TEMPLATE.format(
                                name=name,
                                first=existing.label(),
                                second=e.label(),
                                resolution=f"the {existing.source} one is kept and the plugin "
                                "is skipped; rename the plugin's tool.",
                            )
                        )
                    continue
                if len(entries) > 1:
                    for a, b in zip(entries, entries[1:], strict=False):
                        self._warn(
                            DUPLICATE_TEMPLATE.format(
                                name=name,
                                first=a.label(),
                                second=b.label(),
                                resolution="neither plugin is loaded; uninstall one or rename "
                                "its tool.",
                            )
                        )
                    continue
                self._add(entries[0])
            self._plugins_loaded = True

    def _load_one(self, p: _Pending) -> ToolEntry | None:
        ep = p.ep
        source = f"package '{p.package}'"
        try:
            cls: Any = ep.load()
        except Exception as exc:  # noqa: BLE001 - third-party import errors must not be fatal
            reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            self._warn(PLUGIN_FAILED_TEMPLATE.format(ep=ep.name, source=source, reason=reason), exc)
            return None
        if not _is_tool_class(cls):
            reason = NOT_A_TOOL_TEMPLATE.format(target=ep.value, got=repr(cls)[:80])
            self._warn(PLUGIN_FAILED_TEMPLATE.format(ep=ep.name, source=source, reason=reason))
            return None
        if cls.name != ep.name:
            self._warn(NAME_MISMATCH_TEMPLATE.format(ep=ep.name, source=source, name=cls.name))
        return ToolEntry(
            name=cls.name,
            cls=cls,
            source="plugin",
            package=p.package,
            package_version=p.version,
            target=ep.value,
            entry_point=ep.name,
        )

    def _add(self, entry: ToolEntry) -> None:
        existing = self._entries.get(entry.name)
        if existing is not None and existing.cls is not entry.cls:
            raise DuplicateToolError(
                DUPLICATE_TEMPLATE.format(
                    name=entry.name,
                    first=existing.label(),
                    second=entry.label(),
                    resolution="rename one of them.",
                )
            )
        self._entries[entry.name] = entry

    # ------------------------------------------------------------------------------------------
    # public API
    # ------------------------------------------------------------------------------------------
    def register(self, cls: type[Tool], *, package: str = "runtime") -> ToolEntry:
        """Register a tool class from code (tests, applications embedding zoomearth).

        Raises:
            DuplicateToolError: The name is taken (message names both sources).
            ToolDefinitionError: ``cls`` is not a Tool subclass.
        """
        if not _is_tool_class(cls):
            raise ToolDefinitionError(
                NOT_A_TOOL_TEMPLATE.format(target=cls, got=type(cls).__name__)
            )
        self._load_plugins()
        entry = ToolEntry(
            name=cls.name, cls=cls, source="runtime", package=package, target=cls.source_target()
        )
        with self._lock:
            self._add(entry)
            self._instances.pop(cls.name, None)
        return entry

    def list_tools(self) -> list[ToolEntry]:
        """All tools (built-ins first, then by name); loads plugins on first call."""
        self._load_plugins()
        return sorted(self._entries.values(), key=lambda e: (e.source != "builtin", e.name))

    def names(self) -> list[str]:
        """Names of all tools, in :meth:`list_tools` order."""
        return [e.name for e in self.list_tools()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def entry(self, name: str) -> ToolEntry:
        """The entry of a tool.

        Built-in names resolve without importing plugins; other names load them.

        Raises:
            UnknownToolError: No such tool (the message lists the available ones).
        """
        self._load_builtins()
        if name not in self._entries:
            self._load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownToolError(name, self._entries) from None

    def get_class(self, name: str) -> type[Tool]:
        """The class of a tool (see :meth:`entry`)."""
        return self.entry(name).cls

    def get_tool(self, name: str) -> Tool:
        """The (cached) instance of a tool (see :meth:`entry`)."""
        entry = self.entry(name)
        with self._lock:
            inst = self._instances.get(name)
            if inst is None:
                inst = entry.cls()
                self._instances[name] = inst
            return inst

    def argument_problem(self, name: str, arguments: Mapping[str, Any]) -> str | None:
        """What running tool ``name`` would say about ``arguments`` (None: accepted).

        ``arguments`` are a planner's: the region arguments (``bbox_2d``, ``view``) are split off
        first, as the graph does, and the rest is validated by the runner's own check
        (:func:`~zoomearth.tools.runner.argument_problem`, the tool's ``Args`` model).
        """
        from zoomearth.tools.runner import argument_problem
        from zoomearth.tools.schema import split_region_args

        _region, own = split_region_args(arguments)
        return argument_problem(self.get_tool(name), own)

    @property
    def warnings(self) -> list[str]:
        """Problems met while loading plugins (after the first listing)."""
        self._load_plugins()
        return list(self._warnings)

    def backend_status(self, name: str) -> tuple[list[BackendStatus], list[str]]:
        """Backends of a tool and any warning raised while checking them."""
        cls = self.get_class(name)
        try:
            return list(cls.backend_status()), []
        except Exception as exc:  # noqa: BLE001 - a plugin's check must not break listings
            return [], [BACKEND_FAILED_TEMPLATE.format(name=name, reason=exc)]

    def describe(self) -> list[dict[str, Any]]:
        """One JSON-serialisable row per tool (``zoomearth tools --json``, the server's model card).

        Keys: ``name``, ``description``, ``arguments`` (JSON schema of Args), ``needs_approval``,
        ``capabilities``, ``contract_version``, ``source`` (builtin/plugin/runtime),
        ``package``, ``package_version``, ``target``, ``entry_point``, ``backends`` (list of
        ``{name, available, detail}``), ``available`` (any backend available), ``warnings``.
        """
        rows = []
        for e in self.list_tools():
            backends, warns = self.backend_status(e.name)
            rows.append(
                {
                    "name": e.name,
                    "description": " ".join(e.cls.description.split()),
                    "arguments": prompt_schema(e.cls.Args),
                    "needs_approval": e.cls.needs_approval,
                    "capabilities": e.cls.capabilities.model_dump(mode="json"),
                    "contract_version": e.cls.contract_version,
                    "source": e.source,
                    "package": e.package,
                    "package_version": e.package_version,
                    "target": e.target,
                    "entry_point": e.entry_point,
                    "backends": [
                        {"name": b.name, "available": b.available, "detail": b.detail}
                        for b in backends
                    ],
                    "available": any(b.available for b in backends),
                    "warnings": warns + [w for w in self._warnings if repr(e.name) in w],
                }
            )
        return rows

    def tool_specs_for_prompt(self, *, region_args: bool = True) -> list[dict[str, Any]]:
        """Tool specifications for the planner prompt, in :meth:`list_tools` order.

        Each spec is ``{"name", "description", "parameters", "needs_approval"}`` where
        ``parameters`` is the JSON schema of the tool's arguments (titles stripped). With
        ``region_args`` the reserved region arguments (``bbox_2d`` in the frame of view ``view``)
        are added, as every tool works on a region the graph converts to full-resolution pixels.
        """
        specs = []
        for e in self.list_tools():
            params = prompt_schema(e.cls.Args)
            if region_args:
                props = dict(params.get("properties", {}))
                props.update(_REGION_SCHEMA)
                params = {**params, "properties": props}
            specs.append(
                {
                    "name": e.name,
                    "description": " ".join(e.cls.description.split()),
                    "parameters": params,
                    "needs_approval": e.cls.needs_approval,
                }
            )
        return specs


_REGION_SCHEMA: dict[str, Any] = {
    RESERVED_ARGS[0]: {
        "type": "array",
        "items": {"type": "number"},
        "minItems": 4,
        "maxItems": 4,
        "description": "Region to process as [x1, y1, x2, y2] in the pixels of the view named by "
        "'view' (default: the latest view). Omit it to process the region of a zoom made in the "
        "same turn, else the latest view if it is a zoom, else the whole image.",
    },
    RESERVED_ARGS[1]: {
        "type": "integer",
        "minimum": 0,
        "description": "Id of the view bbox_2d refers to (default: the latest view).",
    },
}

_default: ToolRegistry | None = None
_default_lock = threading.Lock()


def get_registry() -> ToolRegistry:
    """The process-wide registry (created on first use; plugins load on first listing)."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = ToolRegistry()
    return _default


def reset_registry() -> None:
    """Forget the process-wide registry (tests; after installing a plugin at runtime)."""
    global _default
    with _default_lock:
        _default = None


def get_tool(name: str) -> Tool:
    """The tool instance of the process-wide registry (raises UnknownToolError)."""
    return get_registry().get_tool(name)


def list_tools() -> list[ToolEntry]:
    """All tools of the process-wide registry."""
    return get_registry().list_tools()
