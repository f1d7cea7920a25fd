"""The graph's tool node: preflight before approval, and resumed calls reuse finished tiles.

* The rules planner asked for approval of an edit that then could not run ("the edit mask covers
  the whole region"). The node now runs the call's checks (``Tool.check``) first: such a call
  goes back to the planner as ``invalid_arguments`` and the user is never asked.
* A run cancelled in the middle of a streamed ``denoise`` and resumed through ``Agent.resume``
  computes only the tiles the stopped call had not finished.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from langgraph.checkpoint.memory import InMemorySaver
from rasterio.errors import NotGeoreferencedWarning

import zoomearth.tools.denoise as denoise_module
from tests.graphs.fakes import ScriptedPlanner
from tests.scene.rasters import write_raster
from zoomearth.api import Agent
from zoomearth.graphs.tool_node import cancel_thread
from zoomearth.scene import Scene
from zoomearth.tools import ToolContext, get_registry, run_tool
from zoomearth.tools.base import TILE_CACHE_DIR
from zoomearth.tools.denoise import Denoise


@pytest.fixture(scope="module")
def big_scene(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("scene") / "scene.tif"
    return write_raster(path, 2000, 2000, 3, block=256, overviews=[2, 4, 8])


@pytest.mark.parametrize(
    ("question", "asked"),
    [
        # The rules planner zooms on the pixel and gives the zoom itself as target_box: the
        # mask would cover the whole region, so the call is refused without asking.
        ("remove the car at pixel 800, 800", False),
        # A box inside the zoomed region: a call that can run, so the user is asked.
        ("remove the car in box [600, 600, 700, 700]", True),
    ],
)
def test_rules_planner_is_not_asked_to_approve_an_edit_that_cannot_run(
    settings, big_scene, question, asked
):
    events: list[dict[str, Any]] = []
    agent = Agent(settings, planner="rules", checkpointer=InMemorySaver(), on_event=events.append)
    result = agent.ask(big_scene, question, thread=f"t-{asked}")
    (call,) = result.tool_calls
    assert call["name"] == "edit"
    if asked:
        assert result.status == "awaiting_approval"
        assert result.pending_approval[0]["tool"] == "edit"
        return
    assert result.status != "awaiting_approval" and not result.pending_approval
    assert call["status"] == "invalid_arguments" and call["code"] == "mask_covers_region"
    assert "covers the whole region" in call["error"]
    assert not any(e.get("event") == "tool_start" for e in events)  # the tool never ran
    assert "covers the whole region" in (result.answer or "")  # the planner read the refusal


def _noisy_scene(path: Path) -> Path:
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:150, 0:200]
    clean = np.stack([(x + 2 * y + 40 * b) % 200 for b in range(3)]).astype(np.float64)
    noisy = np.clip(np.rint(clean + rng.normal(0, 12, clean.shape)), 0, 255).astype(np.uint8)
    profile = {
        "driver": "GTiff", "width": 200, "height": 150, "count": 3, "dtype": "uint8",
        "crs": "EPSG:32614", "transform": Affine(1.0, 0, 600_000, 0, -1.0, 5_200_000),
    }  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(noisy)
    return path


def test_cancelled_run_resumes_the_tool_from_its_finished_tiles(tmp_path, settings, monkeypatch):
    # 200 x 150 -> 5 x 4 = 20 tiles, one at a time: the test counts the tiles done before a stop.
    s = settings.model_copy(update={"tool_tile_side": 48, "tool_workers": 1})
    image = _noisy_scene(tmp_path / "noisy.tif")
    calls = {"n": 0}
    real = denoise_module.dct_denoise

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(denoise_module, "dct_denoise", counting)
    with Scene.open(image, settings=s, progress=False) as scene:
        ctx = ToolContext(scene=scene, run_dir=tmp_path / "ref", settings=s)
        reference = run_tool(Denoise, ctx, {"preview": False})
    with rasterio.open(reference.artifacts[0].path) as ds:
        want = ds.read()
    assert calls["n"] == 20

    k = 8
    thread = "t-resume-tiles"
    cancel_after = {"n": k}

    def cancelling(*args, **kwargs):
        # As the server does when a client disconnects (or the CLI on Ctrl-C / SIGTERM), but
        # from inside the k-th tile, so the stop lands at the same tile every time (a cancel
        # sent from the event stream reaches the tool a tile or two later).
        out = counting(*args, **kwargs)
        if calls["n"] == cancel_after["n"]:
            cancel_thread(thread)
        return out

    monkeypatch.setattr(denoise_module, "dct_denoise", cancelling)

    planner = ScriptedPlanner(
        [
            '<tool_call>{"name": "denoise", "arguments": {"preview": false}}</tool_call>',
            "<answer>denoised</answer>",
        ]
    )
    agent = Agent(s, planner=planner, registry=get_registry(), checkpointer=InMemorySaver())
    calls["n"] = 0
    stopped = agent.ask(image, "denoise the image", thread=thread)
    assert stopped.status == "cancelled" and calls["n"] == k
    run_dir = Path(stopped.run_dir)
    assert len(list((run_dir / TILE_CACHE_DIR).glob("*/tile-*.npz"))) == k

    progress: list[int] = []
    agent.on_event = lambda e: progress.append(e["done"]) if e.get("event") == "progress" else None
    calls["n"] = 0
    cancel_after["n"] = -1
    resumed = agent.resume(thread)
    assert resumed.status == "answered" and resumed.answer == "denoised"
    assert calls["n"] == 20 - k  # the finished tiles were not computed again
    assert progress == list(range(1, 21))
    (raster,) = [a for a in resumed.artifacts if a["kind"] == "raster"]
    with rasterio.open(raster["path"]) as ds:
        assert np.array_equal(ds.read(), want)
    assert not (run_dir / TILE_CACHE_DIR).exists()
