"""Loaders: the real LRS-GRO / LRS-VQA sample records, hand-written MME-RealWorld / XLRS ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zoomearth.eval.questions import QuestionFileError, canonical_benchmark, load_questions

MME_RECORDS = [
    {
        "Question_id": "perception/remote_sensing/color/0001",
        "Image": "remote_sensing/03553.jpg",
        "Text": "What color is the roof of the building in the lower left corner?",
        "Question Type": "Multiple Choice",
        "Answer choices": [
            "(A) Red",
            "(B) Blue",
            "(C) White",
            "(D) Green",
            "(E) The image does not feature the roof.",
        ],
        "Ground truth": "C",
        "Task": "Perception",
        "Subtask": "Remote Sensing",
        "Category": "color",
    },
    {
        "Question_id": "perception/remote_sensing/count/0002",
        "Image": "remote_sensing/01811.png",
        "Text": "How many ships are docked?",
        "Question Type": "Multiple Choice",
        "Answer choices": [
            "(A) 3",
            "(B) 5",
            "(C) 7",
            "(D) 9",
            "(E) The image does not feature ships.",
        ],
        "Ground truth": "B",
        "Task": "Perception",
        "Subtask": "Remote Sensing",
        "Category": "count",
    },
]
XLRS_RECORDS = [
    {
        "index": 17,
        "image": ["xlrs/0017.png"],
        "question": "Which land-use types appear in the image?",
        "multi-choice options": ["(A) farmland", "(B) residential", "(C) water", "(D) forest"],
        "answer": "AC",
        "category": "Land use classification/Overall Land use classification",
        "l2-category": "perception/scene",
    },
    {
        "index": 18,
        "image": ["xlrs/0018_t1.png", "xlrs/0018_t2.png"],
        "question": "How many buildings were added between the two images?",
        "multi-choice options": ["(A) 1", "(B) 2", "(C) 3", "(D) 4"],
        "answer": "B",
        "category": "Counting/Counting with changing detection",
        "l2-category": "reasoning/change",
    },
]


def _write(path: Path, records: list[dict], as_list: bool = False) -> Path:
    if as_list:
        path.write_text(json.dumps(records))
    else:
        path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_lrs_gro_sample(gro_records: Path) -> None:
    qs = load_questions("lrs-gro", gro_records)
    assert len(qs) == 76
    first = qs[0]
    assert first.question_id == "LRS-GRO-4232"
    assert first.images == ["0838.png"]
    assert first.box_ref is None and first.box_full(4000, 3000) is None
    assert first.type == "global" and first.level == "reasoning"
    assert first.ground_truth == "sports complex"
    assert first.prompt == first.question
    boxed = qs[3]
    assert boxed.box_ref == [613, 757, 665, 799] and boxed.box_frame == "long1024"
    # long-side-1024 frame: scale by max(W, H) / 1024 = 4096 / 1024 = 4
    assert boxed.box_full(4096, 2048) == [2452.0, 3028.0, 2660.0, 3196.0]
    assert boxed.box_full(2048, 4096) == [2452.0, 3028.0, 2660.0, 3196.0]
    assert sum(q.box_ref is not None for q in qs) == 65
    assert {q.type for q in qs} == {"global", "region", "object"}
    assert all(q.supported for q in qs)


def test_lrs_vqa_sample(shared_data: Path) -> None:
    qs = load_questions("lrs-vqa", shared_data / "benchmarks" / "lrs_vqa_sample.jsonl")
    assert len(qs) == 40
    q = qs[0]
    assert q.question_id == "STAR_1320" and q.type == "STAR"
    assert q.images == ["LRS_VQA/image/0689.png"]
    assert q.prompt.endswith("Answer the question using a single word or phrase.")
    # hbox is already in full-resolution pixels
    assert q.box_frame == "full" and q.box_full(8352, 5248) == [1579, 387, 5628, 2262]
    assert {x.type for x in qs} == {"STAR", "FAIR", "GLH-Bridge"}
    assert sum(x.box_ref is not None for x in qs) == 33


def test_mme_records(tmp_path: Path) -> None:
    qs = load_questions("mme-realworld-rs", _write(tmp_path / "mme.json", MME_RECORDS, True))
    assert [q.question_id for q in qs] == [r["Question_id"] for r in MME_RECORDS]
    q = qs[0]
    assert q.choices[2] == "(C) White" and q.ground_truth == "C"
    assert q.type == "Perception" and q.level == "Remote Sensing" and q.category == "color"
    assert q.prompt == (
        "What color is the roof of the building in the lower left corner? The choices are listed "
        "below:\n(A) Red\n(B) Blue\n(C) White\n(D) Green\n(E) The image does not feature the "
        "roof.\nSelect the best answer to the above multiple-choice question based on the image. "
        "Respond with only the letter (A, B, C, D, or E) of the correct option.\nThe best answer "
        "is:"
    )


def test_xlrs_records(tmp_path: Path) -> None:
    qs = load_questions("xlrs", _write(tmp_path / "xlrs.jsonl", XLRS_RECORDS))
    multi, change = qs
    assert multi.question_id == "17" and multi.supported
    assert multi.ground_truth == "AC"
    assert "There may be more than one correct option" in multi.prompt
    assert multi.type == "Land use classification"
    assert not change.supported and len(change.images) == 2
    assert change.prompt.endswith("(A, B, C, D).\nThe answer is:")


def test_aliases_and_errors(tmp_path: Path) -> None:
    assert canonical_benchmark("LRS_GRO") == "lrs-gro"
    assert canonical_benchmark("mme") == "mme-realworld-rs"
    with pytest.raises(QuestionFileError, match="valid benchmarks are"):
        canonical_benchmark("coco")
    with pytest.raises(QuestionFileError, match="missing field 'Answer choices'.*mme-realworld-rs"):
        load_questions("mme", _write(tmp_path / "x.jsonl", XLRS_RECORDS))
    with pytest.raises(QuestionFileError, match="line 2 is not JSON"):
        (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{oops\n')
        load_questions("lrs-gro", tmp_path / "bad.jsonl")
    dup = [dict(MME_RECORDS[0]), dict(MME_RECORDS[0])]
    with pytest.raises(QuestionFileError, match="occurs more than once"):
        load_questions("mme", _write(tmp_path / "dup.jsonl", dup))
    bad_box = [
        {
            "question_id": "q",
            "image_name": "a.png",
            "question": "?",
            "ground_truth": "x",
            "bbox": [1, 2, 3],
            "type": "object",
        }
    ]
    with pytest.raises(QuestionFileError, match="four numbers"):
        load_questions("lrs-gro", _write(tmp_path / "box.jsonl", bad_box))
    with pytest.raises(QuestionFileError, match="Cannot read"):
        load_questions("lrs-gro", tmp_path / "absent.jsonl")


def test_cli_choices_match_the_modules():
    from zoomearth.eval import baselines, cli, questions

    assert tuple(cli.BENCHMARKS) == tuple(questions.BENCHMARKS)
    assert tuple(cli.EVAL_PLANNERS) == tuple(baselines.EVAL_PLANNERS)
