"""The example plugin's own tests: the contract kit plus one check of its numbers."""

from __future__ import annotations

import csv

import numpy as np
from zoomearth_example_plugin import BrightnessStats

from zoomearth.geometry import PixelBox
from zoomearth.scene import Scene
from zoomearth.testing import check_tool, write_kit_scene
from zoomearth.tools import ToolContext, run_tool


def test_contract():
    # Bad boxes, nodata-only and 1x1 regions, 1-band/16-bit/pixel-only scenes, a region above the
    # 1024 px limit (streamed), cancellation, atomic outputs, untouched input.
    check_tool(BrightnessStats)


def test_statistics_match_numpy(tmp_path, settings):
    path = write_kit_scene(tmp_path / "scene.tif", count=2)
    box = PixelBox(10, 10, 60, 40)  # overlaps the kit scene's nodata corner (0..16 x 0..16)
    with Scene.open(path, settings=settings) as scene:
        ctx = ToolContext(scene=scene, run_dir=tmp_path / "run", region=box)
        outcome = run_tool(BrightnessStats, ctx, {"bands": [2]})
        expected = scene.read(box, bands=(2,)).compressed().astype(float)
    (row,) = outcome.data["bands"]
    assert row["valid_pixels"] == expected.size < 50 * 30
    assert np.isclose(row["mean"], expected.mean(), atol=1e-3)
    assert np.isclose(row["std"], expected.std(), atol=1e-3)
    with open(outcome.artifacts[0].path, newline="") as fh:
        (written,) = list(csv.DictReader(fh))
    assert written["band"] == "2" and float(written["max"]) == expected.max()
