"""Print the docs inventory (executed, skipped by reason, synopsis, data) after a run of tests/docs.

Skipped examples are not pytest skips (CI fails on unexpected skips): each carries a marker that
says why it cannot run here, and this summary counts them.
"""

from __future__ import annotations

import pytest


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not any("tests/docs/" in item for item in _collected):
        return
    from tests.docs.test_docs_examples import inventory_line

    terminalreporter.write_sep("-", "docs examples")
    terminalreporter.write_line(inventory_line())


_collected: list[str] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    _collected.extend(item.nodeid for item in items)
