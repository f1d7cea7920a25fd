"""The split of the rules planner and the reply parser keeps the old module paths working.

``zoomearth.agent.backends.rules`` re-exports the text-understanding modules of
``zoomearth.agent.text`` and ``zoomearth.agent.parsing`` the parts in ``zoomearth.agent.reply``.
The adversarial-text test and benchmark find the compiled patterns by walking the globals of the
old modules, so every pattern of a new module must be reachable from its old module.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from zoomearth.agent import parsing
from zoomearth.agent.backends import rules

TEXT_MODULES = ("locations", "coordinates", "intents", "arguments", "masking")
REPLY_MODULES = ("records", "messages", "lenient_json", "tags", "zooms", "tool_calls")


def _patterns(value: Any, depth: int = 0) -> Iterator[re.Pattern[str]]:
    if isinstance(value, re.Pattern):
        yield value
    elif depth < 4 and isinstance(value, tuple | list):
        for item in value:
            yield from _patterns(item, depth + 1)
    elif depth < 4 and isinstance(value, dict):
        for item in value.values():
            yield from _patterns(item, depth + 1)
    elif depth < 4 and hasattr(value, "__dataclass_fields__") and not isinstance(value, type):
        for name in value.__dataclass_fields__:
            yield from _patterns(getattr(value, name), depth + 1)


def _module_patterns(module: ModuleType) -> set[int]:
    out: set[int] = set()
    for attr, value in vars(module).items():
        if attr.startswith("__") or isinstance(value, ModuleType):
            continue
        out.update(id(p) for p in _patterns(value))
    return out


@pytest.mark.parametrize(
    ("package", "names", "old"),
    [
        ("zoomearth.agent.text", TEXT_MODULES, rules),
        ("zoomearth.agent.reply", REPLY_MODULES, parsing),
    ],
)
def test_every_pattern_of_the_new_modules_is_reachable_from_the_old_module(
    package: str, names: tuple[str, ...], old: ModuleType
) -> None:
    reachable = _module_patterns(old)
    for name in names:
        module = importlib.import_module(f"{package}.{name}")
        missing = [
            attr
            for attr, value in vars(module).items()
            if not attr.startswith("__") and any(id(p) not in reachable for p in _patterns(value))
        ]
        assert not missing, f"{package}.{name}: re-export {missing} from {old.__name__}"


def test_old_paths_are_the_same_objects() -> None:
    from zoomearth.agent.text import arguments, coordinates, intents, locations

    for module in (locations, coordinates, intents, arguments):
        for name in getattr(module, "__all__", ()):
            if hasattr(rules, name):
                assert getattr(rules, name) is getattr(module, name), name
    assert rules.is_box_argument is arguments.is_box_argument
    assert rules.find_tool_intents is intents.find_tool_intents
    from zoomearth.agent.reply import messages, records

    for name in records.__all__:
        assert getattr(parsing, name) is getattr(records, name), name
    for name, value in vars(messages).items():
        if name.endswith("_TEMPLATE") or name.startswith("MAX_") or name.endswith("_FORMAT"):
            assert getattr(parsing, name) is value, name

