"""The Ray path gives the same records as the in-process run (local Ray, 2 CPUs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from zoomearth.eval.questions import Question, load_questions
from zoomearth.eval.runner import run_eval

#: Fields that must agree between the two runs (times and the run folders may differ).
SAME = (
    "question_id",
    "status",
    "answer1",
    "answer2",
    "bbox",
    "bbox_ref_full",
    "apo_iou",
    "error",
    "tools",
    "visual_tokens",
    "steps",
    "width",
    "height",
)


def test_ray_matches_in_process(
    settings: Any,
    tmp_path: Path,
    gro_records: Path,
    gro_images: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ray = pytest.importorskip("ray", reason="the dist extra (ray) is not installed")
    qs: list[Question] = [
        q for q in load_questions("lrs-gro", gro_records) if q.images == ["0245.png"]
    ][:6]
    plan = {
        "questions": {
            q.question_id: {
                "turns": [
                    [{"zoom": [100, 200, 400, 300], "frame": "full"}, {"answer": "first"}],
                    [{"answer": q.ground_truth}],
                ]
            }
            for q in qs
        }
    }
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    s = settings.model_copy(update={"plan_file": tmp_path / "plan.json"})
    local = run_eval(
        qs,
        settings=s,
        planner="oracle",
        inner="script",
        images_dir=gro_images,
        out_dir=tmp_path / "local",
        workers=2,
        progress=False,
    )

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = run_eval(
            qs,
            settings=s,
            planner="oracle",
            inner="script",
            images_dir=gro_images,
            out_dir=tmp_path / "ray",
            workers=2,
            ray_address="auto",
            progress=False,
        )
    finally:
        ray.shutdown()
    assert len(local) == len(remote) == 6
    assert [{k: r[k] for k in SAME} for r in remote] == [{k: r[k] for k in SAME} for r in local]
    # the oracle zoomed on the boxed questions, the script on none (oracle overrides)
    assert any(r["bbox"] for r in remote)
    assert all(r["apo_iou"] in (None, 1.0) for r in remote)
