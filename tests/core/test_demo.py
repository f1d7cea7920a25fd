"""``make demo`` (``python -m zoomearth.demo``) writes every file it promises (issue #13)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
SIZE = 1024


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, str]:
    """Run the demo once on a small scene: its output folder and stdout."""
    out = tmp_path_factory.mktemp("demo") / "demo-out"
    proc = subprocess.run(
        [sys.executable, "-m", "zoomearth.demo", str(out), "--size", str(SIZE)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


def test_demo_writes_everything_it_promises(demo):
    out, stdout = demo
    summary = stdout.split("\n== done\n", 1)[1]

    # Every "label: path" line of the final summary names a file or folder that exists.
    printed = dict(re.findall(r"^(\w+):\s+(\S+)", summary, flags=re.MULTILINE))
    assert {"scene", "overview", "zoom", "run"} <= set(printed)
    for label, path in printed.items():
        assert Path(path).exists(), f"the demo printed {label}: {path}, which does not exist"
    assert (Path(printed["run"]) / "trajectory.png").is_file()

    # Every demo-out/... file the README promises exists (at the test's smaller scene size).
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    promised = set(re.findall(r"`demo-out/([^`]+)`", readme))
    assert {"overview.png", "zoom.png"} <= promised
    for name in promised:
        assert (out / name.replace("8192", str(SIZE))).is_file(), f"demo-out/{name} is missing"


def test_demo_zoom_is_the_agents_zoom_at_full_resolution(demo):
    out, stdout = demo
    x1, y1, x2, y2 = (int(v) for v in re.search(r"region (\d+),(\d+),(\d+),(\d+)", stdout).groups())
    # The rules planner reported this zoom; zoom.png shows it pixel for pixel.
    assert f"full-resolution pixels [{x1}, {y1}, {x2}, {y2}]" in stdout
    assert Image.open(out / "zoom.png").size == (x2 - x1, y2 - y1)
