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


def test_openai_backend_drives_the_zoomearth_profile(settings, scene_path, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_bytes(
        b"\n<|im_start|>system\nTest. <|im_end|>\n<|im_start|>user\n"
        b"<|vision_start|><|image_pad|><|vision_end|>{{question}}\nGo.\n<|im_end|>"
        b"<|im_start|>assistant\n"
    )
    stage1 = (
        '<think>The ship is near the right edge. '
        '{"bbox_2d": [441, 168, 462, 189], "label": "ship"}</think><answer>maybe</answer>'
    )
    server = FakeServer()
    try:
        server.script.extend([
            Scripted(200, completion(stage1)),
            Scripted(200, completion("<think>Clearly a ship.</think><answer>yes</answer>")),
        ])
        cfg = settings.model_copy(update={
            "planner": "openai", "planner_base_url": server.base_url,
            "planner_model": "HappyBug/ZoomEarth-3B", "planner_max_retries": 0,
            "planner_prompt": prompt,
        })
        agent = Agent(cfg, registry=ToolRegistry(builtins={}, entry_point_group=None),
                      checkpointer=InMemorySaver(), strict=True)
        result = agent.ask(scene_path, "Is there a ship on the right?")
    finally:
        server.close()
    assert result.profile == "zoomearth" and "names a ZoomEarth checkpoint" in result.profile_reason
    assert result.answer == "yes" and result.stage_answers == ["maybe"]
    posts = [r for r in server.requests if r["method"] == "POST"]
    assert len(posts) == 2
    # The reference's images: the 512 x 341 overview (int(4000 * 512 / 6000)) and the 512 crop,
    # sent as rendered; the server's processor resizes them as the reference's did.
    assert _image_sizes(posts[0]["json"]) == [(512, 341)]
    assert _image_sizes(posts[1]["json"]) == [(512, 341), (512, 512)]
    text2 = posts[1]["json"]["messages"][0]["content"][0]["text"]
    placeholder = "<|vision_start|><|image_pad|><|vision_end|>"
    assert text2.endswith(stage1.split("<answer>")[0] + placeholder)
    # The box is in the 512 frame on both axes: x and y scale 6000 / 512 = 11.71875 ->
    # [5167, 1968, 5414, 2214] (int) -> a 512 square centred at (5290, 2091).
    (zoom,) = result.zooms
    assert zoom.box_xyxy == [5034, 1835, 5546, 2347]
    assert result.visual_tokens == 216 + (216 + 324)  # the processor's 504 x 336 and 504 x 504


def test_served_model_name_sets_the_profile_before_the_graph_runs(settings, scene_path, tmp_path):
    # No planner_model: the profile follows the name the server lists, learned before stage 1.
    prompt = tmp_path / "prompt.txt"
    prompt.write_bytes(b"{{question}}<|vision_start|><|image_pad|><|vision_end|>")
    server = FakeServer()
    server.models = ["HappyBug/ZoomEarth-3B"]
    try:
        server.script.extend([
            Scripted(200, completion('<think>{"bbox_2d": [10, 10, 60, 60]}</think>')),
            Scripted(200, completion("<answer>ok</answer>")),
        ])
        cfg = settings.model_copy(update={
            "planner": "openai", "planner_base_url": server.base_url, "planner_model": None,
            "planner_max_retries": 0, "planner_prompt": prompt,
        })
        agent = Agent(cfg, registry=ToolRegistry(builtins={}, entry_point_group=None),
                      checkpointer=InMemorySaver(), strict=True)
        result = agent.ask(scene_path, "Is there a ship?")
    finally:
        server.close()
    assert result.profile == "zoomearth" and result.answer == "ok"
    (zoom,) = result.zooms
    # [10, 10, 60, 60] * 6000 / 512 -> [117, 117, 703, 703]: both sides >= 512, the raw box
    assert zoom.box_xyxy == [117, 117, 703, 703]


def test_openai_backend_drives_the_agent_profile(settings, scene_path):
    server = FakeServer()
    try:
        server.script.extend([
            Scripted(200, completion(
                '<think>The ship is near the right edge. '
                '{"bbox_2d": [441, 168, 462, 189], "label": "ship"}</think>'
                '<answer>maybe</answer>')),
            Scripted(200, completion("<think>Clearly a ship.</think><answer>yes</answer>")),
        ])
        cfg = settings.model_copy(update={
            "planner": "openai", "planner_base_url": server.base_url,
            "planner_model": "Qwen/Qwen2.5-VL-7B-Instruct", "planner_max_retries": 0,
        })
        agent = Agent(cfg, registry=ToolRegistry(builtins={}, entry_point_group=None),
                      checkpointer=InMemorySaver(), strict=True)
        result = agent.ask(scene_path, "Is there a ship on the right?")
    finally:
        server.close()
    assert result.profile == "agent"
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
