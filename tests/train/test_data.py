"""``zoomearth train prepare``: frames, layout, crops, resumability, errors; both profiles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zoomearth.agent.frames import planner_box_to_full, seen_size, zoom_region
from zoomearth.agent.protocol import (
    VISION_PLACEHOLDER,
    format_turn,
    reference_answer,
    reference_bboxes,
    stage2_prefix,
)
from zoomearth.geometry import PixelBox, ViewSpec
from zoomearth.train.data import (
    PrepareError,
    bbox_to_full,
    full_to_reference_box,
    full_to_seen_box,
    load_jsonl,
    prepare,
    stage_texts,
)

from .conftest import TEST_PROMPT, make_settings


def test_bbox_frame_is_long_side_1024() -> None:
    box = bbox_to_full([613, 757, 665, 799], 5000, 4000)
    assert box.as_list() == pytest.approx(
        [613 * 5000 / 1024, 757 * 5000 / 1024, 665 * 5000 / 1024, 799 * 5000 / 1024]
    )


def test_full_to_seen_box_round_trip() -> None:
    overview = ViewSpec(0, PixelBox(0, 0, 5120, 5120), 512, 512)
    seen = seen_size(512, 512)
    assert seen == (504, 504)
    box = full_to_seen_box(PixelBox(1000, 1000, 1100, 1100), overview, seen)
    # 1000 * 504 / 5120 = 98.4 -> 98; 1100 * 504 / 5120 = 108.3 -> 108.
    assert box == (98, 98, 108, 108)
    back = planner_box_to_full(box, "pixels", overview, seen)
    assert abs(back.x1 - 1000) < 5120 / 504 and abs(back.x2 - 1100) < 5120 / 504
    # A box thinner than a seen pixel stays one pixel wide.
    assert full_to_seen_box(PixelBox(1000, 1000, 1001, 1001), overview, seen)[2:] == (99, 99)


def test_prepare_layout_frames_and_crops(prepared: Path, scenes: dict) -> None:
    sft = {r["question_id"]: r for r in load_jsonl(prepared / "sft.jsonl")}
    grpo = {r["question_id"]: r for r in load_jsonl(prepared / "grpo.jsonl")}
    assert set(sft) == set(grpo) == {r["question_id"] for r in scenes["records"]}

    obj = scenes["a"].objects[0]
    row, g = sft["A-0"], grpo["A-0"]
    assert row["scene_size"] == [1536, 1024]
    # Overview long side 224 -> 224 x 149, seen by Qwen2.5-VL as 224 x 140.
    assert row["overview_spec"]["width"] == 224 and row["overview_spec"]["height"] == 149
    assert row["overview_seen"] == [224, 140]
    # Ground truth back in full resolution = the planted object (bbox rounded to 0.01 in 1024).
    assert g["gt_box_full"] == pytest.approx(list(obj.box_xyxy), abs=0.02)
    # The box written in stage 1 is the ground truth in the seen frame.
    assert row["profile"] == g["profile"] == "agent"
    (written,) = reference_bboxes(row["stage1"])
    assert written == g["gt_box_view"]
    ov = ViewSpec(0, PixelBox(0, 0, 1536, 1024), 224, 149)
    assert tuple(g["gt_box_view"]) == full_to_seen_box(PixelBox(*obj.box_xyxy), ov, (224, 140))
    # The crop is what the agent would read for that box.
    region, _ = zoom_region(planner_box_to_full(written, "pixels", ov, (224, 140)), 1536, 1024)
    assert row["crop_spec"]["region_xyxy"] == pytest.approx(region.snap_out().as_list())
    with Image.open(prepared / row["crop"]) as crop:
        assert max(crop.size) == 224
    with Image.open(prepared / row["overview"]) as overview:
        assert overview.size == (224, 149)

    # Layout: the planner's chat conversation -- user = overview + the user section; assistant =
    # stage 1; user = the caption the graph's zoom node writes + the crop; assistant = stage 2.
    user, turn1, zoom, turn2 = row["messages"]
    assert [m["role"] for m in row["messages"]] == ["user", "assistant", "user", "assistant"]
    assert [p["type"] for p in user["content"]] == ["image", "text"]
    assert user["content"][0]["image"] == row["overview"]
    text = user["content"][1]["text"]
    assert text.startswith(scenes["records"][0]["question"])
    assert "The full image is 1536 x 1024 pixels." in text and "# Tools" not in text
    assert turn1["content"] == [{"type": "text", "text": row["stage1"]}]
    assert "<answer>" not in row["stage1"]
    (x1, y1, x2, y2) = row["crop_spec"]["region_xyxy"]
    caption = (
        f"full-resolution region [{x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f}] "
        f"({x2 - x1:.0f}x{y2 - y1:.0f} px) shown at 224x224 (object)"
    )
    # The zoom_caption section ("View k: <entry text>") over the graph's entry text.
    assert zoom["content"] == [
        {"type": "text", "text": f"View 1: {caption}\n"},
        {"type": "image", "image": row["crop"]},
    ]
    assert turn2["content"] == [{"type": "text", "text": row["stage2"]}]
    assert row["stage2"].endswith(f"<answer>{obj.label.replace('_', ' ')}</answer>")
    # The GRPO row carries the scene facts the graph gives the planner, not rendered text.
    assert g["scene_info"]["width"] == 1536 and g["scene_info"]["height"] == 1024
    assert g["scene_info"]["path"] == g["image_path"] and "user_text" not in g
    prompt = json.loads((prepared / "agent_prompt.json").read_text())
    assert prompt["tools"] == [] and prompt["coord_mode"] == "pixels"

    # A global question: no crop, answer in stage 1.
    glob = sft["A-g"]
    assert (
        glob["crop"] is None and glob["stage2"] == "" and "<answer>rural</answer>" in glob["stage1"]
    )
    assert [m["role"] for m in glob["messages"]] == ["user", "assistant"]
    assert glob["messages"][1]["content"] == [{"type": "text", "text": glob["stage1"]}]
    assert grpo["A-g"]["gt_box_full"] == [] and grpo["A-g"]["prompt"] == "A-g"
    # One overview PNG per scene.
    assert sorted(p.name for p in (prepared / "images").glob("*.overview.png")) == [
        "a.overview.png",
        "b.overview.png",
    ]


def test_stage_texts_are_format_turn() -> None:
    record = {"ground_truth": "ship ", "type": "object"}
    stage1, stage2 = stage_texts(record, (10, 20, 30, 40))
    assert stage1 == format_turn(
        "The object in question is too small to judge in the overview; I will look closer at it.",
        [{"bbox_2d": [10, 20, 30, 40], "label": "object"}],
    )
    assert reference_bboxes(stage1) == [[10, 20, 30, 40]] and "<answer>" not in stage1
    assert reference_answer(stage2) == "ship" and stage2.startswith("<think>")
    glob, empty = stage_texts({"ground_truth": "rural", "type": "global"}, None)
    assert empty == "" and reference_answer(glob) == "rural"


def test_full_to_reference_box() -> None:
    # 1536 x 1024: the overview is 512 x 341, one unit = 3 px; rounded, inside, at least 1 px.
    assert full_to_reference_box(PixelBox(300, 600, 331, 631), 1536, 1024) == (100, 200, 110, 210)
    assert full_to_reference_box(PixelBox(1535, 1023, 1536, 1024), 1536, 1024) == (
        511, 340, 512, 341
    )
    # Under 512 px the overview is the image (factor 1).
    assert full_to_reference_box(PixelBox(10, 10, 20, 20), 400, 300) == (10, 10, 20, 20)


def test_prepare_zoomearth_profile(
    prepared_zoomearth: Path, scenes: dict, prompt_file: Path
) -> None:
    from PIL import Image

    from zoomearth.agent.profiles import (
        ZoomEarthProfile,
        load_zoomearth_prompt,
        reference_crop_xyxy,
        reference_resized_size,
    )
    from zoomearth.scene import Scene

    profile = ZoomEarthProfile(load_zoomearth_prompt(prompt_file))
    sft = {r["question_id"]: r for r in load_jsonl(prepared_zoomearth / "sft.jsonl")}
    grpo = {r["question_id"]: r for r in load_jsonl(prepared_zoomearth / "grpo.jsonl")}
    row, g = sft["A-0"], grpo["A-0"]
    assert row["profile"] == g["profile"] == "zoomearth"
    # Stage-1 input: the profile's raw text (the made-up prompt, question substituted).
    question = scenes["records"][0]["question"]
    assert row["prompt_text"] == g["prompt_text"] == profile.stage1_text(question)
    assert row["prompt_text"] == TEST_PROMPT.replace("{{question}}", question)
    # Overview: the reference's 512-long-side bicubic resize, pixel for pixel.
    with Scene.open(scenes["a"].image_path) as scene:
        full = Image.fromarray(scene.render(None, max_side=None).rgb)
    with Image.open(prepared_zoomearth / row["overview"]) as overview:
        spec = row["overview_spec"]
        assert overview.size == (512, 341) == (spec["width"], spec["height"])
        expected = full.resize((512, 341), Image.Resampling.BICUBIC)
        assert np.array_equal(np.asarray(overview.convert("RGB")), np.asarray(expected))
    assert row["overview_seen"] == [504, 336] and row["overview_exact"] is True
    # The written box: the ground truth in the 512 frame (1536 / 512 = 3 px per unit).
    (written,) = reference_bboxes(row["stage1"])
    assert written == g["gt_box_view"]
    assert tuple(written) == full_to_reference_box(PixelBox(*g["gt_box_full"]), 1536, 1024)
    # The crop: the reference's window for that box, resized to long side 512.
    window = reference_crop_xyxy([v * 3 for v in written], 1536, 1024)
    assert row["crop_spec"]["region_xyxy"] == list(window)
    with Image.open(prepared_zoomearth / row["crop"]) as crop:
        expected = full.crop(window)
        size = reference_resized_size(*expected.size)
        if size != expected.size:
            expected = expected.resize(size, Image.Resampling.BICUBIC)
        assert crop.size == expected.size
        assert np.array_equal(np.asarray(crop.convert("RGB")), np.asarray(expected))
    # The SFT sequence: the reference's stage-2 input continued by the stage-2 output.
    assert row["target_text"] == stage2_prefix(row["stage1"]) + VISION_PLACEHOLDER + row["stage2"]
    assert row["prompt_text"] + row["target_text"] == (
        profile.stage2_text(question, row["stage1"]) + row["stage2"]
    )
    assert row["images"] == [row["overview"], row["crop"]] and "messages" not in row
    glob = sft["A-g"]
    assert glob["target_text"] == glob["stage1"] and glob["images"] == [glob["overview"]]


def test_prepare_zoomearth_needs_the_prompt_file(tmp_path: Path, scenes: dict) -> None:
    with pytest.raises(PrepareError, match="planner_prompt"):
        prepare(
            scenes["records"][:1],
            scenes["folder"],
            tmp_path / "o",
            settings=make_settings(tmp_path),
            profile="zoomearth",
        )


def test_prepare_resumes_and_repairs_a_torn_line(tmp_path: Path, scenes: dict) -> None:
    settings = make_settings(tmp_path)
    records = scenes["records"][:3]
    first = prepare(records, scenes["folder"], tmp_path / "out", settings=settings, limit=2)
    assert (first.written, first.skipped_existing) == (2, 0)
    # Simulate a crash in the middle of writing the next line.
    with (tmp_path / "out" / "sft.jsonl").open("a") as fh:
        fh.write('{"question_id": "A-g", "trunc')
    again = prepare(records, scenes["folder"], tmp_path / "out", settings=settings)
    assert (again.written, again.skipped_existing) == (1, 2)
    ids = [r["question_id"] for r in load_jsonl(tmp_path / "out" / "sft.jsonl")]
    assert ids == ["A-0", "A-1", "A-g"]
    assert len(load_jsonl(tmp_path / "out" / "grpo.jsonl")) == 3


def test_prepare_counts_missing_images_and_bad_boxes(tmp_path: Path, scenes: dict) -> None:
    records = [
        {**scenes["records"][0], "question_id": "m", "image_name": "missing.tif"},
        {**scenes["records"][0], "question_id": "bad", "bbox": [5000, 5000, 5001, 5001]},
    ]
    stats = prepare(records, scenes["folder"], tmp_path / "o", settings=make_settings(tmp_path))
    assert (stats.missing_images, stats.bad_boxes, stats.written) == (1, 1, 1)
    row = load_jsonl(tmp_path / "o" / "sft.jsonl")[0]
    assert row["question_id"] == "bad" and row["crop"] is None
    # The reward still scores against the LRS-GRO box, as the reference does.
    g = load_jsonl(tmp_path / "o" / "grpo.jsonl")[0]
    assert g["gt_box_full"] == pytest.approx([7500, 7500, 7501.5, 7501.5])


def test_prepare_errors(tmp_path: Path, scenes: dict) -> None:
    with pytest.raises(PrepareError, match="does not exist"):
        prepare(tmp_path / "nope.jsonl", scenes["folder"], tmp_path / "o")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": 1}\n')
    with pytest.raises(PrepareError, match="Line 1"):
        prepare(bad, scenes["folder"], tmp_path / "o", settings=make_settings(tmp_path))
    with pytest.raises(PrepareError, match="image folder"):
        prepare(bad, tmp_path / "no-images", tmp_path / "o")


def test_real_lrs_gro_records_parse(tmp_path: Path) -> None:
    from tests.conftest import SHARED_DATA

    path = SHARED_DATA / "benchmarks" / "lrs_gro_sample.jsonl"
    if not path.exists():
        pytest.skip("shared LRS-GRO sample not present")
    from zoomearth.train.data import iter_records

    records = list(iter_records(path))
    assert len(records) == 76
    # Their images are not included: every question is reported missing, nothing is written.
    (tmp_path / "imgs").mkdir()
    stats = prepare(path, tmp_path / "imgs", tmp_path / "o", settings=make_settings(tmp_path))
    assert (stats.missing_images, stats.written) == (76, 0)


def test_prepare_agent_refuses_a_folder_of_older_rows(tmp_path: Path, scenes: dict) -> None:
    settings = make_settings(tmp_path)
    records = scenes["records"][:1]
    prepare(records, scenes["folder"], tmp_path / "o", settings=settings, tools=[])
    # Rows without agent_prompt.json: an earlier version's layout (or the zoomearth profile's).
    (tmp_path / "o" / "agent_prompt.json").unlink()
    with pytest.raises(PrepareError, match="earlier version"):
        prepare(records, scenes["folder"], tmp_path / "o", settings=settings, tools=[])
