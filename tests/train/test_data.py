"""``zoomearth train prepare``: frames, layout, crops, resumability, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from zoomearth.agent.frames import planner_box_to_full, seen_size, zoom_region

from zoomearth.geometry import PixelBox, ViewSpec
from zoomearth.train.data import (
    PrepareError,
    bbox_to_full,
    full_to_seen_box,
    load_jsonl,
    prepare,
)

from .conftest import make_settings


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
    written = json.loads(row["stage1"].split("look closer at ", 1)[1].split(".</think>")[0])
    assert written["bbox_2d"] == g["gt_box_view"]
    ov = ViewSpec(0, PixelBox(0, 0, 1536, 1024), 224, 149)
    assert tuple(g["gt_box_view"]) == full_to_seen_box(PixelBox(*obj.box_xyxy), ov, (224, 140))
    # The crop is what the agent would read for that box.
    region, _ = zoom_region(
        planner_box_to_full(written["bbox_2d"], "pixels", ov, (224, 140)), 1536, 1024
    )
    assert row["crop_spec"]["region_xyxy"] == pytest.approx(region.snap_out().as_list())
    with Image.open(prepared / row["crop"]) as crop:
        assert max(crop.size) == 224
    with Image.open(prepared / row["overview"]) as overview:
        assert overview.size == (224, 149)

    # Layout: user = overview + text; assistant = stage 1 cut, crop, stage 2.
    user, assistant = row["messages"]
    assert [p["type"] for p in user["content"]] == ["image", "text"]
    assert user["content"][1]["text"].startswith(scenes["records"][0]["question"])
    assert [p["type"] for p in assistant["content"]] == ["text", "image", "text"]
    assert "<answer>" not in assistant["content"][0]["text"]
    assert assistant["content"][2]["text"].endswith(
        f"<answer>{obj.label.replace('_', ' ')}</answer>"
    )

    # A global question: no crop, answer in stage 1.
    glob = sft["A-g"]
    assert (
        glob["crop"] is None and glob["stage2"] == "" and "<answer>rural</answer>" in glob["stage1"]
    )
    assert [p["type"] for p in glob["messages"][1]["content"]] == ["text"]
    assert grpo["A-g"]["gt_box_full"] == [] and grpo["A-g"]["prompt"] == "A-g"
    # One overview PNG per scene.
    assert sorted(p.name for p in (prepared / "images").glob("*.overview.png")) == [
        "a.overview.png",
        "b.overview.png",
    ]


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
