"""What each layer may import (docs/architecture.md, "Layers").

The core -- configuration, errors, geometry, temporaries, the scene engine, the model pool,
artifacts and the synthetic-scene generator -- imports none of the agent (``agent/``), the tools
(``tools/``), the graph (``graphs/``) or anything above them (facade, CLI, server, evaluation,
training). The check reads every import statement of every core module, function-level imports
included, so a lazy import cannot hide a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

CORE_FILES = sorted(
    [
        *(REPO / "zoomearth" / name for name in (
            "config.py", "errors.py", "geometry.py", "temporaries.py", "artifacts.py",
            "threadlock.py",
        )),
        *(REPO / "zoomearth" / "scene").rglob("*.py"),
        *(REPO / "zoomearth" / "models").rglob("*.py"),
        # The synthetic-scene generator (demo and test data) builds on the scene engine only.
        *(REPO / "zoomearth" / "synth").rglob("*.py"),
    ]
)
#: Packages (and modules) above the core.
ABOVE_CORE = (
    "zoomearth.agent", "zoomearth.tools", "zoomearth.graphs", "zoomearth.prompts",
    "zoomearth.api", "zoomearth.run_record", "zoomearth.cli", "zoomearth.cli_common",
    "zoomearth.cli_ask", "zoomearth.cli_tools", "zoomearth.cli_planner", "zoomearth.server",
    "zoomearth.eval", "zoomearth.train", "zoomearth.testing", "zoomearth.testing_models",
    "zoomearth.demo",
)


def package_of(path: Path) -> str:
    """The dotted package of a repository file (``zoomearth/scene/x.py``: ``zoomearth.scene``)."""
    return ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])


#: Upward imports that are allowed, each with its reason (like import-linter's ignore_imports).
ALLOWED = {
    # ``python -m zoomearth.scene.synth`` (kept for old scripts) runs the one ``zoomearth synth``
    # command line; a lazy import inside ``main``, never at import time.
    ("zoomearth/synth/__init__.py", "zoomearth.cli"),
    ("zoomearth/synth/__init__.py", "zoomearth.cli.main"),
}


def imported_modules(path: Path, package: str) -> list[tuple[int, str]]:
    """``(line, module)`` of every import in a file, at any depth (relative ones resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            found.extend((node.lineno, f"{module}.{alias.name}") for alias in node.names)
    return found


def layer_violations(path: Path, package: str | None = None) -> list[str]:
    where = path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else path.name
    return [
        f"{path.name}:{line} imports {module}"
        for line, module in imported_modules(path, package or package_of(path))
        if any(module == top or module.startswith(top + ".") for top in ABOVE_CORE)
        and (where, module) not in ALLOWED
    ]


def test_the_core_is_listed() -> None:
    names = {p.relative_to(REPO).as_posix() for p in CORE_FILES}
    assert {"zoomearth/scene/scene.py", "zoomearth/models/pool.py", "zoomearth/config.py"} <= names


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_core_imports_nothing_above_it(path: Path) -> None:
    assert layer_violations(path) == []


def test_the_check_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import numpy\n"
        "from zoomearth.geometry import PixelBox\n"
        "def f():\n    from zoomearth.agent.profiles import x\n"
        "def g():\n    from ..tools import base\n"
        "import zoomearth.graphs.builder\n",
        encoding="utf-8",
    )
    found = sorted(layer_violations(probe, package="zoomearth.scene"))
    assert found == [
        "probe.py:4 imports zoomearth.agent.profiles",
        "probe.py:4 imports zoomearth.agent.profiles.x",
        "probe.py:6 imports zoomearth.tools",
        "probe.py:6 imports zoomearth.tools.base",
        "probe.py:7 imports zoomearth.graphs.builder",
    ]
