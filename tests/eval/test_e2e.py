"""End-to-end evaluation of the LRS-GRO sample records on small synthetic images.

The answers come from per-question scripts whose correctness is known by construction, so every
figure of the report can be worked out by hand.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from zoomearth.eval.questions import Question, load_questions
from zoomearth.eval.report import write_report
from zoomearth.eval.runner import RESULTS_FILE, apo_iou, run_eval

#: Correct answers written differently from the ground truth (each verified in test_scoring).
VARIANTS = {"gray": "grey", "airplanes": "airplane", "3": "three", "Yes": "yes"}


def _right(q: Question) -> str:
    return VARIANTS.get(q.ground_truth, q.ground_truth)


def oracle_plan(questions: list[Question]) -> dict[str, Any]:
    """Scripts: k-th boxed question stage 1 right iff k even, final right iff k % 3 != 0;
    j-th global question (answered at once) right iff j even."""
    plan: dict[str, Any] = {"questions": {}}
    k = j = 0
    for q in questions:
        if q.box_ref is None:
            turns = [[{"answer": _right(q) if j % 2 == 0 else "zzz"}]]
            j += 1
        else:
            turns = [
                [{"answer": _right(q) if k % 2 == 0 else "zzz"}],
                [{"answer": _right(q) if k % 3 != 0 else "qqq"}],
            ]
            k += 1
        plan["questions"][q.question_id] = {"turns": turns}
    return plan


@pytest.fixture()
def gro(gro_records: Path) -> list[Question]:
    return load_questions("lrs-gro", gro_records)


def _settings(settings: Any, tmp_path: Path, plan: dict[str, Any]) -> Any:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    return settings.model_copy(update={"plan_file": path})


def test_oracle_over_script_report(
    settings: Any, tmp_path: Path, gro: list[Question], gro_images: Path, wordnet_dir: Path
) -> None:
    s = _settings(settings, tmp_path, oracle_plan(gro))
    out = tmp_path / "out"
    records = run_eval(
        gro,
        settings=s,
        planner="oracle",
        inner="script",
        images_dir=gro_images,
        out_dir=out,
        workers=2,
        progress=False,
    )
    assert [r["question_id"] for r in records] == [q.question_id for q in gro]
    report = write_report(records, out)

    o = report["overall"]
    assert report["counts"] == {"total": 76, "answered": 76}
    # 65 boxed: stage 1 right for k = 0, 2, ..., 64 (33); final right unless k % 3 == 0 (65 - 22
    # = 43). 11 global, answered at once: right for j = 0, 2, ..., 10 (6), the same in both.
    assert (o["n"], o["correct_stage1"], o["correct_final"]) == (76, 39, 49)
    # fixed: k odd and k % 3 != 0 (32 odd k, 11 of them multiples of 3) = 21;
    # broken: k a multiple of 6 (0, 6, ..., 60) = 11.
    assert (o["fixed"], o["broken"]) == (21, 11)
    assert o["acc_stage1"] == pytest.approx(39 / 76)
    assert o["acc_final"] == pytest.approx(49 / 76)
    assert o["delta"] == pytest.approx(10 / 76)
    # The oracle's crop is the ground-truth crop: APO IoU 1 on all 65 boxed questions.
    assert (o["n_boxed"], o["apo_iou"]) == (65, 1.0)
    assert report["no_zoom_boxed"] == 0
    assert report["zoom_rate"] == pytest.approx(65 / 76)

    # Per type, from the same rules.
    expect: dict[str, list[int]] = {}
    k = j = 0
    for q in gro:
        e = expect.setdefault(q.type, [0, 0, 0])
        e[0] += 1
        if q.box_ref is None:
            e[1] += j % 2 == 0
            e[2] += j % 2 == 0
            j += 1
        else:
            e[1] += k % 2 == 0
            e[2] += k % 3 != 0
            k += 1
    assert expect["global"] == [11, 6, 6]
    for name, (n, c1, c2) in expect.items():
        got = report["by_type"][name]
        assert (got["n"], got["correct_stage1"], got["correct_final"]) == (n, c1, c2), name
    assert report["by_type"]["global"]["apo_iou"] is None  # no box: excluded

    rec = next(r for r in records if r["question_id"] == "LRS-GRO-4235")  # k = 0: broken
    assert (rec["answer1"], rec["answer2"]) == ("straight", "qqq")
    assert rec["bbox_ref"] == [613, 757, 665, 799]
    assert rec["bbox"] == [[383.0, 512.0, 895.0, 1024.0]]  # 512 crop centred, shifted inside
    assert rec["error"] is False and rec["type"] == "object"
    glob = next(r for r in records if r["question_id"] == "LRS-GRO-4232")
    assert glob["answer2"] is None and glob["bbox"] == [] and glob["apo_iou"] is None

    md = (out / "report.md").read_text()
    assert "| accuracy, final (%) | 64.47 |" in md  # 49 / 76
    assert "| APO IoU (questions with a box) | 1.0000 (65) |" in md
    assert "53.76" in md  # published figures table
    summary = (out / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("section,group,n,acc_stage1,acc_final")
    assert summary[1].startswith("overall,all,76,")
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((out / "questions.csv").read_text().splitlines()) == 77


def _subset(gro: list[Question], image: str) -> list[Question]:
    return [q for q in gro if q.images == [image]]


def test_script_zooms_apo_iou_and_resume(
    settings: Any, tmp_path: Path, gro: list[Question], gro_images: Path, wordnet_dir: Path
) -> None:
    qs = _subset(gro, "0838.png")[:6]  # 1024 x 1024: the long-1024 frame is full resolution
    ids = [q.question_id for q in qs]
    assert ids[3] == "LRS-GRO-4235"
    # Boxed questions 4235 and 4236 have the box [613, 757, 665, 799]: its 512 crop is
    # [383, 512, 895, 1024].
    plan = {"questions": {qid: {"turns": [[{"answer": "zzz"}]]} for qid in ids}}
    plan["questions"]["LRS-GRO-4235"] = {
        "turns": [
            [{"zoom": [511, 512, 1023, 1024], "frame": "full"}, {"answer": "curved"}],
            [{"answer": "straight"}],
        ]
    }  # crop overlap 384 x 512: IoU 384 / 640 = 0.6
    plan["questions"]["LRS-GRO-4236"] = {
        "turns": [[{"zoom": [0, 0, 100, 100], "frame": "full"}], [{"answer": "dark grey"}]]
    }  # IoU 0
    boxed_others = [
        q.question_id
        for q in qs
        if q.box_ref and q.question_id not in ("LRS-GRO-4235", "LRS-GRO-4236")
    ]
    s = _settings(settings, tmp_path, plan)
    out = tmp_path / "out"
    first = run_eval(
        qs,
        settings=s,
        planner="script",
        images_dir=gro_images,
        out_dir=out,
        limit=4,
        progress=False,
    )
    assert len(first) == 4
    records = run_eval(
        qs, settings=s, planner="script", images_dir=gro_images, out_dir=out, progress=False
    )
    lines = (out / RESULTS_FILE).read_text().splitlines()
    assert len(lines) == 6  # the second run did only the two remaining questions
    by_id = {r["question_id"]: r for r in records}
    assert by_id["LRS-GRO-4235"]["apo_iou"] == pytest.approx(0.6)
    assert by_id["LRS-GRO-4235"]["answer1"] == "curved"
    assert by_id["LRS-GRO-4235"]["answer2"] == "straight"
    assert by_id["LRS-GRO-4236"]["apo_iou"] == 0.0
    assert by_id["LRS-GRO-4236"]["answer1"] is None  # no answer with the zoom
    report = write_report(records, out)
    o = report["overall"]
    n_boxed = 2 + len(boxed_others)  # the others answer at once: no zoom, IoU 0
    assert o["n_boxed"] == n_boxed
    assert o["apo_iou"] == pytest.approx(0.6 / n_boxed)
    assert report["no_zoom_boxed"] == len(boxed_others)
    # finals: 4235 straight (right), 4236 dark grey (right), everything else zzz
    assert (o["correct_stage1"], o["correct_final"], o["fixed"]) == (0, 2, 2)


def test_apo_iou_rule() -> None:
    gt = [613, 757, 665, 799]
    assert apo_iou([383, 512, 895, 1024], gt, 1024, 1024) == 1.0
    assert apo_iou(None, gt, 1024, 1024) == 0.0
    # a small predicted box is expanded like the ground truth: the same centre gives 1.0
    assert apo_iou([630, 770, 648, 786], gt, 1024, 1024) == 1.0
    # fractional ground truth (long-1024 frame scaled): snapped out like the zoom's crop
    assert apo_iou([100, 100, 612, 612], [300.5, 300.5, 411.5, 411.5], 2048, 2048) == 1.0


def test_no_zoom_rules_missing_and_unsupported(
    settings: Any, tmp_path: Path, gro: list[Question], gro_images: Path, wordnet_dir: Path
) -> None:
    qs = _subset(gro, "0838.png")[3:5]
    plan = {
        "questions": {
            q.question_id: {
                "turns": [
                    [{"zoom": [511, 512, 1023, 1024], "frame": "full"}, {"answer": q.ground_truth}],
                    [{"answer": "later"}],
                ]
            }
            for q in qs
        }
    }
    s = _settings(settings, tmp_path, plan)
    recs = run_eval(
        qs,
        settings=s,
        planner="no-zoom",
        inner="script",
        images_dir=gro_images,
        out_dir=tmp_path / "nz",
        progress=False,
    )
    for r in recs:
        assert r["bbox"] == [] and r["apo_iou"] == 0.0  # overview only
        assert r["answer1"] == r["ground_truth"] and r["answer2"] is None
        assert r["planner"].startswith("no-zoom over script")

    rules = run_eval(
        qs,
        settings=s,
        planner="rules",
        images_dir=gro_images,
        out_dir=tmp_path / "rules",
        progress=False,
    )
    for r in rules:
        assert r["status"] == "answered"
        assert r["apo_iou"] is not None and 0.0 <= r["apo_iou"] <= 1.0

    missing = qs[0].model_copy(update={"question_id": "gone", "images": ["absent.png"]})
    double = qs[0].model_copy(update={"question_id": "two", "images": ["a.png", "b.png"]})
    recs = run_eval(
        [missing, double, qs[1]],
        settings=s,
        planner="script",
        images_dir=gro_images,
        out_dir=tmp_path / "mix",
        progress=False,
    )
    assert [r["status"] for r in recs] == ["missing_image", "unsupported", "answered"]
    assert "absent.png" in recs[0]["message"]
    report = write_report(recs, tmp_path / "mix")
    assert report["counts"] == {"total": 3, "answered": 1, "missing_image": 1, "unsupported": 1}
    assert report["overall"]["n"] == 1


def test_cli_eval(
    settings: Any,
    tmp_path: Path,
    gro: list[Question],
    gro_images: Path,
    wordnet_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from zoomearth.eval.cli import add_eval_command, cmd_eval

    qs = _subset(gro, "41.tif")
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(q.record) + "\n" for q in qs[:3]))
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"default": {"turns": [[{"answer": "yes"}]]}, "questions": {}}))
    parser = argparse.ArgumentParser()
    add_eval_command(parser.add_subparsers(dest="command"))
    out = tmp_path / "cli-out"
    args = parser.parse_args(
        [
            "eval",
            "lrs-gro",
            "--questions",
            str(path),
            "--images",
            str(gro_images),
            "--planner",
            "oracle",
            "--plan",
            str(plan),
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert cmd_eval(args, settings) == 0
    text = capsys.readouterr().out
    assert "answered 3" in text and "APO IoU 1.0000 (n=" in text
    recs = [json.loads(line) for line in (out / RESULTS_FILE).read_text().splitlines()]
    assert all(r["planner"].startswith("oracle over script") for r in recs)
    assert (out / "report.md").is_file()
