"""The graph driven by the model backends end to end: an OpenAI-compatible server (real HTTP,
scripted ZoomEarth-format replies) and the tiny random Qwen2.5-VL through the transformers path."""

from __future__ import annotations

import base64
import io

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from PIL import Image

from tests.agent.test_backend_openai import FakeServer, Scripted, completion
from tests.scene.rasters import write_raster
from zoomearth.api import Agent
from zoomearth.tools.registry import ToolRegistry


@pytest.fixture(scope="module")
def scene_path(tmp_path_factory):
    # 6000 x 4000: the 512 x 341 overview is seen by Qwen2.5-VL as 504 x 336 (multiples of 28).
    path = tmp_path_factory.mktemp("models") / "scene.tif"
    return write_raster(path, 6000, 4000, 3, block=256, overviews=[2, 4, 8, 16])


def _image_sizes(request_json):
    sizes = []
    for message in request_json["messages"]:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            if part.get("type") == "image_url":
                data = part["image_url"]["url"].split(",", 1)[1]
                sizes.append(Image.open(io.BytesIO(base64.b64decode(data))).size)
    return sizes


def test_openai_backend_drives_the_graph(settings, scene_path):
    server = FakeServer()
    try:
        server.script.extend([
            Scripted(200, completion(
                '<think>The ship is near the right edge. '
                '{"bbox_2d": [441, 168, 462, 189], "label": "ship"}</think><answer>maybe</answer>')),
            Scripted(200, completion("<think>Clearly a ship.</think><answer>yes</answer>")),
        ])
        cfg = settings.model_copy(update={
            "planner": "openai", "planner_base_url": server.base_url,
            "planner_model": "HappyBug/ZoomEarth-3B", "planner_max_retries": 0,
        })
        agent = Agent(cfg, registry=ToolRegistry(builtins={}, entry_point_group=None),
                      checkpointer=InMemorySaver(), strict=True)
        result = agent.ask(scene_path, "Is there a ship on the right?")
    finally:
        server.close()
    assert result.answer == "yes" and result.stage_answers == ["maybe"]
    posts = [r for r in server.requests if r["method"] == "POST"]
    assert len(posts) == 2
    # Stage 1 sent the overview exactly as the model sees it; stage 2 overview + crop (504 x 504).
    assert _image_sizes(posts[0]["json"]) == [(504, 336)]
    assert _image_sizes(posts[1]["json"]) == [(504, 336), (504, 504)]
    # The box is in the 504 x 336 frame: x scale 6000/504, y scale 4000/336 ->
    # [5250, 2000, 5500, 2250] full-res, a 250 px box -> 512 min crop centred at (5375, 2125).
    (zoom,) = result.zooms
    assert zoom.box_xyxy == [5119, 1869, 5631, 2381]
    assert result.visual_tokens == 216 + (216 + 324)  # (504*336)/784 = 216; (504*504)/784 = 324


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    from zoomearth.testing_models import build_tiny_qwen25vl

    return build_tiny_qwen25vl(tmp_path_factory.mktemp("tinyqwen") / "model")


def test_tiny_transformers_planner_survives_garbage(settings, scene_path, tiny_qwen):
    cfg = settings.model_copy(update={
        "planner": "transformers", "planner_model": str(tiny_qwen), "planner_max_new_tokens": 24,
        "max_steps": 2,
    })
    agent = Agent(cfg, registry=ToolRegistry(builtins={}, entry_point_group=None),
                  checkpointer=InMemorySaver(), strict=True)
    result = agent.ask(scene_path, "What is in the centre?")
    assert result.status == "answered" and result.answer  # best effort at worst
    assert result.planner.startswith("transformers")
    assert result.visual_tokens > 0
    assert all(s["visual_tokens"] > 0 for s in result.steps)
