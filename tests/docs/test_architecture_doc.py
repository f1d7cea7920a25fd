"""docs/architecture.md is drawn from the code: the compiled graph, modules that exist."""

from __future__ import annotations

import re
from pathlib import Path

from tests.graphs.fakes import ScriptedPlanner
from zoomearth.graphs.builder import build_graph
from zoomearth.graphs.runtime import GraphRuntime
from zoomearth.tools.registry import ToolRegistry

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "architecture.md"


def _graph_block(text: str) -> str:
    match = re.search(r"<!-- architecture: graph -->\n```mermaid\n(.*?)```", text, re.S)
    assert match, "docs/architecture.md lost its marked mermaid block"
    return match.group(1)


def _without_front_matter(mermaid: str) -> str:
    return re.sub(r"\A---\n.*?\n---\n", "", mermaid, flags=re.S)


def test_the_pictured_graph_is_the_compiled_graph(settings) -> None:
    graph = build_graph(ScriptedPlanner([]), ToolRegistry(entry_point_group=None),
                        GraphRuntime(settings=settings))
    drawn = _without_front_matter(graph.get_graph().draw_mermaid())
    assert _graph_block(PAGE.read_text(encoding="utf-8")) == drawn, (
        "the graph changed: paste the new picture (graph.get_graph().draw_mermaid(), without "
        "its front matter) into docs/architecture.md"
    )


def test_every_module_the_page_names_exists() -> None:
    text = PAGE.read_text(encoding="utf-8")
    named = set(re.findall(r"`([\w./]+\.py)`", text)) | set(re.findall(r"`([\w/]+/)`", text))
    assert len(named) > 40
    everywhere = {p.name for p in REPO.rglob("*.py") if ".venv" not in p.parts}
    missing = sorted(
        name for name in named
        if not ((REPO / name).exists() if "/" in name.rstrip("/") or name.endswith("/")
                else name in everywhere)
    )
    assert missing == [], f"docs/architecture.md names modules that do not exist: {missing}"
