"""The graph under the zoomearth profile: exactly two stages, the reference's frame and crop,
the raw continuation text, and tools dispatched around ZoomEarth's zoom.

Model outputs are scripted (a random model writes no box); the planner records the exact inputs it
would feed the model (the same :func:`stage_inputs` the transformers and openai backends use).
The tiny random Qwen2.5-VL runs the same graph through the real transformers path at the end.
"""

from __future__ import annotations

import numpy as np
import pytest
from langgraph.checkpoint.memory import InMemorySaver

from tests.scene.rasters import write_raster
from zoomearth.agent.base import Planner, PlanReply, PlanRequest
from zoomearth.agent.profiles import ZoomEarthProfile, stage_inputs
from zoomearth.api import Agent
from zoomearth.tools.registry import ToolRegistry

PROMPT = (
    "\n<|im_start|>system\nYou are a test assistant. <|im_end|>\n<|im_start|>user\n"
    "<|vision_start|><|image_pad|><|vision_end|>{{question}}\nThink, crop, answer.\n"
    "<|im_end|><|im_start|>assistant\n"
)
QUESTION = "Are there any buildings on the top-right island?"


class ZoomEarthScripted(Planner):
    """Replays stage outputs; records each stage's raw text and images."""

    name = "scripted-zoomearth"
    profile = "zoomearth"
    profile_reason = "test"

    def __init__(self, outputs: list[str]) -> None:
        self.outputs = outputs
        self.profile_text = ZoomEarthProfile(PROMPT)
        self.calls: list[tuple[int, str, list[np.ndarray]]] = []

    def plan(self, request: PlanRequest) -> PlanReply:
        inputs = stage_inputs(self.profile_text, request)
        images = [request.render(v) for v in inputs.image_view_ids]
        self.calls.append((inputs.stage, inputs.text, images))
        text = self.outputs[len(self.calls) - 1]
        return PlanReply(text=text, backend=self.name, notes=[f"stage {inputs.stage}"])


@pytest.fixture(scope="module")
def scene_path(tmp_path_factory):
    # 5000 x 3000: the reference's overview is 512 x 307, box factor 5000 / 512 = 9.765625.
    path = tmp_path_factory.mktemp("ze") / "scene.tif"
    rng = np.random.default_rng(7)
    data = rng.integers(0, 255, (3, 3000, 5000), dtype=np.uint8)
    return write_raster(path, 5000, 3000, 3, data=data, block=256, overviews=[2, 4, 8])


def _agent(settings, planner, registry=None, **kw):
    registry = registry or ToolRegistry(builtins={}, entry_point_group=None)
    return Agent(
        settings,
        planner=planner,
        registry=registry,
        checkpointer=InMemorySaver(),
        strict=True,
        **kw,
    )


def test_two_stages_with_the_reference_frame_crop_and_continuation(settings, scene_path):
    stage1 = (
        '<think>An island group. [{"bbox_2d": [400, 20, 440, 60], "label": "island"}]</think>'
        "\n<answer>yes</answer>"
    )
    # Stage 2 writes another box: the reference ignores it; its answer is final.
    stage2 = '<think>Roofs. {"bbox_2d": [1, 2, 3, 4]}</think><answer>Yes</answer>'
    planner = ZoomEarthScripted([stage1, stage2])
    result = _agent(settings, planner).ask(scene_path, QUESTION)

    assert result.status == "answered" and result.answer == "Yes"
    assert result.answer_kind == "answer"
    assert result.profile == "zoomearth"
    assert [s["stage"] for s in result.steps] == [1, 2]
    assert result.stage_answers == ["yes"]
    (zoom,) = result.zooms
    # [400, 20, 440, 60] * 9.765625 = [3906.25, 195.3125, 4296.875, 585.9375] -> int
    # [3906, 195, 4296, 585]; both sides < 512: a 512 square centred on (4101, 390).
    assert zoom.box_xyxy == [3845, 134, 4357, 646]

    (s1, text1, images1), (s2, text2, images2) = planner.calls
    assert (s1, s2) == (1, 2)
    assert text1 == PROMPT.replace("{{question}}", QUESTION)
    assert text2 == text1 + stage1.split("<answer>")[0] + (
        "<|vision_start|><|image_pad|><|vision_end|>"
    )
    assert images1[0].shape == (307, 512, 3)
    assert [im.shape for im in images2] == [(307, 512, 3), (512, 512, 3)]
    # The crop is the exact window (a 512 square is not resized).
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(scene_path) as ds:
        window = ds.read(window=Window(3845, 134, 512, 512))
    assert np.array_equal(images2[1], np.moveaxis(window, 0, -1))
    assert not result.problems  # no feedback is ever injected in this profile


def test_no_box_in_stage_one_means_no_stage_two(settings, scene_path):
    planner = ZoomEarthScripted(["<think>Whole scene.</think><answer>urban</answer>"])
    result = _agent(settings, planner).ask(scene_path, "What kind of scene is this?")
    assert result.answer == "urban" and result.answer_kind == "answer"
    assert len(planner.calls) == 1 and not result.zooms


def test_large_box_reaching_outside_is_the_raw_unclipped_window(settings, scene_path):
    stage1 = '<think>{"bbox_2d": [-20, 100, 200, 330]}</think>'
    planner = ZoomEarthScripted([stage1, "<answer>water</answer>"])
    result = _agent(settings, planner).ask(scene_path, "What is on the left?")
    (zoom,) = result.zooms
    # [-195.3125, 976.5625, 1953.125, 3222.65625] -> int (towards zero) [-195, 976, 1953, 3222]
    assert zoom.box_xyxy == [-195, 976, 1953, 3222]
    crop = planner.calls[1][2][1]
    # 2148 x 2246 window, long side 2246 -> 512: int(2148 * 512 / 2246) = 489
    assert crop.shape == (512, 489, 3)
    assert not crop[:, :20].any() and not crop[-20:].any()  # PIL's black padding outside
    assert result.answer == "water"


def test_stage_two_without_an_answer_reports_the_stage_one_answer(settings, scene_path):
    planner = ZoomEarthScripted(
        ['<think>{"bbox_2d": [10, 10, 30, 30]}</think><answer>maybe</answer>', "<think>hm"]
    )
    result = _agent(settings, planner).ask(scene_path, "Is there a road?")
    assert result.answer == "maybe" and result.answer_kind == "best_effort"
    assert any("Stage 2 wrote no <answer>" in w for w in result.warnings)


def test_unusable_first_box_means_no_crop(settings, scene_path):
    planner = ZoomEarthScripted(['<think>{"bbox_2d": [1, 2, 3]}</think><answer>no</answer>'])
    result = _agent(settings, planner).ask(scene_path, "Any ships?")
    assert result.answer == "no" and not result.zooms
    assert any("3 numbers" in w for w in result.warnings)


@pytest.fixture(scope="module")
def cloudy_path(tmp_path_factory):
    from zoomearth.scene.synth import generate_scene

    out = tmp_path_factory.mktemp("cloudy") / "cloudy.tif"
    return generate_scene(out, 1536, seed=3, clouds=0.35, progress=False).image_path


def test_tools_run_on_zoomearths_region_and_stay_out_of_its_input(settings, cloudy_path):
    stage1 = '<think>The harbour is top left. {"bbox_2d": [40, 40, 200, 200]}</think>'
    planner = ZoomEarthScripted([stage1, "<think>Clear water.</think><answer>done</answer>"])
    from zoomearth.tools.registry import get_registry

    result = _agent(settings, planner, registry=get_registry()).ask(
        cloudy_path, "remove the clouds over the harbour"
    )
    assert result.status == "answered" and result.answer == "done"
    (zoom,) = result.zooms
    # [40, 40, 200, 200] * 3 = [120, 120, 600, 600]: both sides 480 < 512 -> centred square
    assert zoom.box_xyxy == [104, 104, 616, 616]
    (call,) = result.tool_calls
    assert call["name"] == "cloud_removal" and call["status"] == "ok" and call["error"] is None
    # The tool's text result reaches the user (record and summary), never the model's input.
    assert call["result"] and "cloud" in call["result"].lower()
    assert result.summary.startswith("done\n\nTools:\n- cloud_removal (ok): ")
    cloud_artifacts = [a for a in result.artifacts if a.get("tool") == "cloud_removal"]
    assert cloud_artifacts and all(
        a["region_xyxy"] == [104, 104, 616, 616] for a in cloud_artifacts
    )
    # ZoomEarth's stage-2 input is the reference continuation, no tool text in it.
    stage2_text = planner.calls[1][1]
    assert stage2_text.endswith(stage1 + "<|vision_start|><|image_pad|><|vision_end|>")
    assert "cloud" not in stage2_text.split(QUESTION)[-1].replace("remove the clouds", "")


def test_tiny_random_model_runs_the_profile_through_transformers(tmp_path):
    from zoomearth.config import load_settings
    from zoomearth.testing_models import build_tiny_qwen25vl

    tiny = build_tiny_qwen25vl(tmp_path / "tiny")
    prompt = tmp_path / "prompt.txt"
    prompt.write_bytes(PROMPT.encode("utf-8"))
    s = load_settings(
        flags={
            "data_dir": tmp_path / "data",
            "cache_dir": tmp_path / "cache",
            "planner": "transformers",
            "planner_model": str(tiny),
            "planner_profile": "zoomearth",
            "planner_prompt": str(prompt),
            "planner_max_new_tokens": 8,
            "planner_device": "cpu",
            "planner_seed": 0,
        },
        environ={},
    )
    from zoomearth.tools.registry import get_registry

    small = write_raster(tmp_path / "small.tif", 1200, 800, 3, block=256, overviews=[2])
    agent = Agent(s, registry=get_registry(), checkpointer=InMemorySaver(), strict=True)
    result = agent.ask(small, "denoise this scene")
    # Random weights write no box: one stage; the denoise intent runs on the whole scene.
    assert result.profile == "zoomearth" and [st["stage"] for st in result.steps] == [1]
    assert [c["name"] for c in result.tool_calls] == ["denoise"]
    assert result.status == "answered"


def test_oracle_and_no_zoom_baselines_keep_the_profile(settings, scene_path):
    from zoomearth.eval.baselines import NoZoomPlanner, OraclePlanner

    inner = ZoomEarthScripted(
        ['<think>{"bbox_2d": [10, 10, 20, 20], "label": "x"}</think>', "<answer>oracle</answer>"]
    )
    oracle = OraclePlanner(inner)
    oracle.set_target([1000.0, 1000.0, 1600.0, 1700.0])  # both sides >= 512: the raw box
    result = _agent(settings, oracle).ask(scene_path, "What is there?")
    assert result.profile == "zoomearth" and result.answer == "oracle"
    (zoom,) = result.zooms
    # 1000 / 9.765625 = 102.4 etc.: written in the 512 frame, mapped back, truncated to int
    assert zoom.box_xyxy == pytest.approx([1000, 1000, 1600, 1700], abs=1)

    inner = ZoomEarthScripted(['<think>{"bbox_2d": [10, 10, 20, 20]}</think><answer>a</answer>'])
    result = _agent(settings, NoZoomPlanner(inner)).ask(scene_path, "What is there?")
    assert result.answer == "a" and not result.zooms and len(inner.calls) == 1


def test_tiny_random_model_zooms_runs_the_tool_and_answers_in_stage_two(cloudy_path, tmp_path):
    """The clouds example through the real transformers path: the oracle writes stage 1's box
    (random weights write none), the tool runs on the crop, stage 2 sees two images."""
    from zoomearth.agent.backends.hf import TransformersPlanner
    from zoomearth.config import load_settings
    from zoomearth.eval.baselines import OraclePlanner
    from zoomearth.testing_models import build_tiny_qwen25vl
    from zoomearth.tools.registry import get_registry

    tiny = build_tiny_qwen25vl(tmp_path / "tiny")
    prompt = tmp_path / "prompt.txt"
    prompt.write_bytes(PROMPT.encode("utf-8"))
    s = load_settings(
        flags={
            "data_dir": tmp_path / "data",
            "cache_dir": tmp_path / "cache",
            "planner_model": str(tiny),
            "planner_profile": "zoomearth",
            "planner_prompt": str(prompt),
            "planner_max_new_tokens": 8,
            "planner_device": "cpu",
            "planner_seed": 0,
        },
        environ={},
    )
    inner = TransformersPlanner(s)
    oracle = OraclePlanner(inner)
    oracle.set_target([120.0, 120.0, 600.0, 600.0])
    agent = Agent(s, planner=oracle, registry=get_registry(), checkpointer=InMemorySaver(),
                  strict=True)
    result = agent.ask(cloudy_path, "remove the clouds over the harbour")
    assert result.profile == "zoomearth"
    assert [st["stage"] for st in result.steps] == [1, 2]
    (zoom,) = result.zooms
    assert zoom.box_xyxy == pytest.approx([104, 104, 616, 616], abs=1)
    (call,) = result.tool_calls
    assert call["name"] == "cloud_removal" and call["status"] == "ok"
    # Stage 2 went through the real processor with the overview and the crop.
    assert result.steps[1]["visual_tokens"] > result.steps[0]["visual_tokens"] > 0
