#!/usr/bin/env python3
"""Run mypy over the whole ``zoomearth`` package under its installed module names.

``pyproject.toml`` maps folders into the package (``[tool.setuptools] package-dir``: ``agent/`` is
``zoomearth.agent``, ``tools/`` is ``zoomearth.tools``, ...). mypy reads folders, not that map:
pointed at ``zoomearth/`` it never sees the mapped folders, and every ``zoomearth.agent`` import
becomes ``Any``. So this script mirrors the installed layout with symbolic links under
``build/typecheck/`` (rebuilt on every run, from the map), runs mypy on the mirror (the
``files`` of ``[tool.mypy]``) and prints each reported path as the source file's path
(``build/typecheck/zoomearth/agent/base.py`` -> ``agent/base.py``), so it can be clicked.

Usage (``make lint`` runs it)::

    .venv/bin/python scripts/typecheck.py [mypy options]

Exit status: mypy's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The mirror, relative to ROOT (``[tool.mypy] files`` names the packages in it).
TREE = Path("build") / "typecheck"


def package_dirs(pyproject: Path) -> dict[str, Path]:
    """``{package name: source folder}`` from ``[tool.setuptools] package-dir``."""
    with pyproject.open("rb") as f:
        mapping = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    return {name: Path(folder) for name, folder in mapping.items()}


def build_tree(root: Path, tree: Path, packages: dict[str, Path]) -> list[Path]:
    """Mirror the installed layout under ``tree``; return the top-level package folders.

    A package with no mapped subpackage is one link to its folder; a package with mapped
    subpackages is a folder of links to its entries, plus the subpackages' own mirrors.
    """
    if tree.is_symlink() or tree.is_file():
        tree.unlink()
    elif tree.exists():
        shutil.rmtree(tree)
    tree.mkdir(parents=True)
    tops: list[Path] = []
    for name in sorted(packages, key=lambda n: n.count(".")):
        parent, _, leaf = name.rpartition(".")
        if parent and parent not in packages:
            raise SystemExit(f"typecheck: {name} is mapped but its parent package {parent} is not")
        dest = tree.joinpath(*name.split("."))
        src = root / packages[name]
        children = {n.rpartition(".")[2] for n in packages if n.rpartition(".")[0] == name}
        if not children:
            dest.symlink_to(os.path.relpath(src, dest.parent), target_is_directory=True)
        else:
            dest.mkdir()
            for entry in sorted(src.iterdir()):
                if entry.name in children or entry.name == "__pycache__":
                    continue  # a mapped subpackage wins, as in the installed package
                dest.joinpath(entry.name).symlink_to(os.path.relpath(entry, dest))
        if not parent:
            tops.append(dest)
    return tops


def source_path(path: str, root: Path, tree: Path, packages: dict[str, Path]) -> str:
    """The source file behind a mirror path (relative or absolute, as mypy printed it)."""
    for base, prefix in ((tree, ""), (root / tree, f"{root}{os.sep}")):
        rel = Path(path)
        if not rel.is_relative_to(base):
            continue
        parts = rel.relative_to(base).parts
        for depth in range(len(parts) - 1, 0, -1):
            name = ".".join(parts[:depth])
            if name in packages:
                return prefix + str(packages[name].joinpath(*parts[depth:]))
    return path


def main(argv: list[str]) -> int:
    """Build the mirror, run mypy with ``argv`` and print its output with source paths."""
    os.chdir(ROOT)
    packages = package_dirs(ROOT / "pyproject.toml")
    build_tree(ROOT, TREE, packages)
    env = dict(os.environ)
    if sys.stdout.isatty():
        env.setdefault("MYPY_FORCE_COLOR", "1")  # the output goes through a pipe below
    # A path at the start of a line, before ":<line>" (errors, notes) or ": " (file errors).
    path_re = re.compile(r"^(\S+?\.pyi?)(?=:)")
    with subprocess.Popen(
        [sys.executable, "-m", "mypy", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = path_re.sub(lambda m: source_path(m[1], ROOT, TREE, packages), line)
            sys.stdout.write(line)
            sys.stdout.flush()
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
