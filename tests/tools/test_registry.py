"""The registry: built-ins, entry-point plugins (the installed example plugin and simulated ones),
duplicate names, broken plugins as warnings, lazy loading, and what it feeds to prompt and CLI."""

from __future__ import annotations

import importlib.metadata
import json

import pytest

from tests.tools.helpers import EchoTool
from zoomearth.tools import (
    DuplicateToolError,
    PluginLoadError,
    Tool,
    ToolRegistry,
    ToolResult,
    UnknownToolError,
)
from zoomearth.tools.export import ExportRegion
from zoomearth.tools.registry import BUILTIN_TOOLS

EXAMPLE_HINT = "install the example plugin: pip install -e tests/plugins/example_plugin"


class FakeDist:
    def __init__(self, name: str, version: str = "1.0") -> None:
        self.name = name
        self.version = version


class FakeEntryPoint:
    """Stands in for importlib.metadata.EntryPoint (name, value, group, dist, load)."""

    def __init__(self, name: str, target, dist: str, group: str = "zoomearth.tools") -> None:
        self.name = name
        self.group = group
        self.dist = FakeDist(dist)
        self._target = target
        self.value = target if isinstance(target, str) else f"{dist.replace('-', '_')}:{name}"

    def load(self):
        if isinstance(self._target, BaseException):
            raise self._target
        if isinstance(self._target, str):
            module, _, attr = self._target.partition(":")
            return getattr(importlib.import_module(module), attr)
        return self._target


def make_tool(tool_name: str, qual: str = "Plugged"):
    def run(self, ctx, args):
        return ToolResult(text="ok")

    return type(qual, (Tool,), {"name": tool_name, "description": "A plugin tool.", "run": run})


def patch_eps(monkeypatch, eps):
    calls = []

    def fake(**kw):
        calls.append(kw)
        return [ep for ep in eps if ep.group == kw.get("group")]

    monkeypatch.setattr(importlib.metadata, "entry_points", fake)
    return calls


def test_builtins_and_installed_example_plugin():
    reg = ToolRegistry()
    names = reg.names()
    # built-ins first (sorted by name), then plugins
    assert names[: len(BUILTIN_TOOLS)] == sorted(BUILTIN_TOOLS), names
    assert "brightness_stats" in names, EXAMPLE_HINT
    entry = reg.entry("brightness_stats")
    assert entry.source == "plugin" and entry.package == "zoomearth-example-plugin"
    assert entry.target == "zoomearth_example_plugin:BrightnessStats"
    assert reg.entry("export_region").source == "builtin"
    assert reg.warnings == []


def test_describe_rows_are_json_with_source_and_backends():
    rows = {r["name"]: r for r in ToolRegistry().describe()}
    json.dumps(rows)
    plugin = rows["brightness_stats"]
    assert plugin["package"] == "zoomearth-example-plugin" and plugin["package_version"] == "0.1.0"
    assert plugin["arguments"]["properties"]["bands"]["description"]
    assert plugin["available"] is True and plugin["backends"][0]["name"] == "numpy"
    builtin = rows["export_region"]
    assert builtin["source"] == "builtin" and builtin["capabilities"]["max_side"] == 2048
    assert "title" not in json.dumps(builtin["arguments"])


def test_prompt_specs_include_plugin_and_region_arguments():
    specs = {s["name"]: s for s in ToolRegistry().tool_specs_for_prompt()}
    assert {"export_region", "brightness_stats"} <= set(specs)
    params = specs["brightness_stats"]["parameters"]
    assert params["type"] == "object"
    assert {"bands", "bbox_2d", "view"} <= set(params["properties"])
    bare = ToolRegistry().tool_specs_for_prompt(region_args=False)
    assert "bbox_2d" not in bare[0]["parameters"]["properties"]


def test_simulated_plugin_loaded_lazily(monkeypatch):
    plug = make_tool("lazy_tool")
    calls = patch_eps(monkeypatch, [FakeEntryPoint("lazy_tool", plug, "lazy-pkg")])
    reg = ToolRegistry()
    assert calls == []  # nothing discovered at construction
    assert isinstance(reg.get_tool("export_region"), ExportRegion)
    assert calls == []  # a built-in resolves without touching plugins
    assert reg.get_class("lazy_tool") is plug and len(calls) == 1
    reg.names()
    assert len(calls) == 1  # discovered once
    assert reg.get_tool("lazy_tool") is reg.get_tool("lazy_tool")  # one cached instance


def test_plugin_duplicating_builtin_is_skipped_naming_both(monkeypatch):
    dup = make_tool("export_region", "Impostor")
    patch_eps(monkeypatch, [FakeEntryPoint("export_region", dup, "evil-pkg")])
    reg = ToolRegistry()
    assert reg.get_class("export_region") is ExportRegion
    (warning,) = reg.warnings
    assert "'export_region' is defined twice" in warning
    assert "zoomearth.tools.export:ExportRegion" in warning and "'evil-pkg'" in warning


def test_two_plugins_with_one_name_are_both_rejected(monkeypatch):
    a, b = make_tool("same_name", "A"), make_tool("same_name", "B")
    patch_eps(
        monkeypatch,
        [FakeEntryPoint("same_name", a, "pkg-one"), FakeEntryPoint("same_name", b, "pkg-two")],
    )
    reg = ToolRegistry()
    assert "same_name" not in reg.names()
    (warning,) = reg.warnings
    assert "'pkg-one'" in warning and "'pkg-two'" in warning and "neither" in warning
    with pytest.raises(PluginLoadError, match="defined twice"):
        ToolRegistry(strict=True).names()


def test_broken_plugin_is_a_warning_not_fatal(monkeypatch):
    good = make_tool("good_plugin")
    patch_eps(
        monkeypatch,
        [
            FakeEntryPoint("broken", ImportError("No module named 'missing_dep'"), "broken-pkg"),
            FakeEntryPoint("not_tool", "json:dumps", "odd-pkg"),
            FakeEntryPoint("good_plugin", good, "good-pkg"),
        ],
    )
    reg = ToolRegistry()
    assert reg.names() == [*sorted(BUILTIN_TOOLS), "good_plugin"]
    text = "\n".join(reg.warnings)
    assert "broken-pkg" in text and "missing_dep" in text
    assert "odd-pkg" in text and "not a zoomearth Tool subclass" in text
    with pytest.raises(PluginLoadError, match="missing_dep"):
        ToolRegistry(strict=True).names()


def test_plugin_breaking_the_contract_at_import_is_a_warning(monkeypatch):
    def load_bad():
        return type("Bad", (Tool,), {"name": "Bad Name", "description": "x"})

    class LoadsBadTool(FakeEntryPoint):
        def load(self):
            return load_bad()

    patch_eps(monkeypatch, [LoadsBadTool("bad", "x", "bad-pkg")])
    reg = ToolRegistry()
    assert reg.names() == sorted(BUILTIN_TOOLS)
    assert "not a valid tool name" in reg.warnings[0] and "bad-pkg" in reg.warnings[0]


def test_entry_point_name_mismatch_warns(monkeypatch):
    patch_eps(monkeypatch, [FakeEntryPoint("alias", make_tool("real_name"), "pkg")])
    reg = ToolRegistry()
    assert "real_name" in reg.names()
    assert "rename the entry point" in reg.warnings[0]


def test_register_duplicate_raises_naming_both():
    reg = ToolRegistry(entry_point_group=None)
    reg.register(EchoTool)
    other = make_tool("echo_region", "OtherEcho")
    with pytest.raises(DuplicateToolError) as info:
        reg.register(other)
    msg = str(info.value)
    assert "tests.tools.helpers:EchoTool" in msg and "OtherEcho" in msg


def test_unknown_tool_lists_available():
    reg = ToolRegistry(entry_point_group=None)
    available = ", ".join(sorted(BUILTIN_TOOLS))
    with pytest.raises(UnknownToolError, match=f"Available tools: {available}") as info:
        reg.get_tool("segmentaton")
    assert info.value.code == "unknown_tool"
    assert "'segmentaton'" in str(info.value)
