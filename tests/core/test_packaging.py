"""Every package folder is in pyproject's explicit ``packages`` list, so the wheel ships it.

An editable install finds a new sub-package without the list; a wheel (``pip install .``) does
not, and the first user who installs one gets an ImportError. This test catches that.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_package_folder_is_listed() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    setup = config["tool"]["setuptools"]
    listed = set(setup["packages"])
    found: set[str] = set()
    for name, folder in setup["package-dir"].items():
        root = REPO / folder
        for init in root.rglob("__init__.py"):
            parts = init.parent.relative_to(root).parts
            found.add(".".join([name, *parts]))
    missing = sorted(found - listed)
    assert missing == [], f"add these to [tool.setuptools] packages in pyproject.toml: {missing}"
    assert {"zoomearth", "zoomearth.agent", "zoomearth.tools"} <= found
