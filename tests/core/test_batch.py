"""``zoomearth batch``: one record per question, honest statuses, resume, schema, Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.ray_cluster import local_ray
from zoomearth import batch as batch_module
from zoomearth.batch import BatchItem, BatchRunner, batch_schema, load_batch, run_batch


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    from zoomearth.scene.synth import generate_scene

    generate_scene(tmp_path / "a.tif", 600, seed=2, progress=False)
    generate_scene(tmp_path / "b.tif", 500, seed=4, progress=False)
    lines = [
        {"scene": "a.tif", "question": "what is in the top-right corner?"},
        {"id": "b-corner", "scene": "b.tif", "question": "what is in the bottom-left corner?",
         "max_steps": 3, "settings": {"min_crop": 256}},
        {"id": "later", "scene": "c.tif", "question": "what is in the centre?"},
        {"scene": "a.tif"},  # no question: invalid
        {"scene": "a.tif", "question": "what is in the top-right corner?"},  # repeated
    ]  # fmt: skip
    (tmp_path / "q.jsonl").write_text(
        "\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8"
    )
    return tmp_path


@pytest.fixture()
def rules(settings):
    return settings.model_copy(update={"planner": "rules"})


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_load_batch_ids_and_invalid_lines(folder):
    work = load_batch(folder / "q.jsonl")
    ids = [w["question_id"] for w in work]
    assert ids[1:4] == ["b-corner", "later", "line-4"]
    assert ids[0].startswith("q-") and ids[4] == ids[0] + "-2"  # same scene and question
    assert work[3]["item"] is None and "question: Field required" in work[3]["message"]
    # Ids do not depend on the position of the line.
    (folder / "r.jsonl").write_text((folder / "q.jsonl").read_text().splitlines()[4] + "\n")
    assert load_batch(folder / "r.jsonl")[0]["question_id"] == ids[0]


def test_records_statuses_and_resume(folder, rules):
    out = folder / "out"
    records = run_batch(folder / "q.jsonl", settings=rules, out_dir=out, progress=False)
    by_id = {r["question_id"]: r for r in records}
    assert len(records) == 5 and list(by_id) == [
        w["question_id"] for w in load_batch(folder / "q.jsonl")
    ]
    assert by_id["later"]["status"] == "missing_scene" and "c.tif" in by_id["later"]["message"]
    assert by_id["line-4"]["status"] == "invalid"
    answered = [r for r in records if r["status"] == "answered"]
    assert len(answered) == 3
    for rec in answered:
        assert rec["answer"] and rec["zooms"] and rec["planner"]
        assert Path(rec["run_dir"]).is_dir() and Path(rec["run_dir"]).parent == out / "runs"
    assert by_id["b-corner"]["steps"] <= 3
    assert set(_lines(out / "results.jsonl")[0]) == set(batch_module.RECORD_KEYS)

    # Resume: the answered and invalid ones are skipped, the missing scene is asked again.
    from zoomearth.scene.synth import generate_scene

    generate_scene(folder / "c.tif", 400, seed=5, progress=False)
    again = run_batch(folder / "q.jsonl", settings=rules, out_dir=out, progress=False)
    assert len(_lines(out / "results.jsonl")) == 6  # only one new record
    assert {r["question_id"]: r["status"] for r in again}["later"] == "answered"


class _Stopped(BaseException):
    """Stands for Ctrl-C / SIGTERM (pytest itself reacts to a real KeyboardInterrupt)."""


def test_an_interrupted_batch_resumes_where_it_stopped(folder, rules, monkeypatch):
    out = folder / "out"
    real = BatchRunner.run
    asked: list[str] = []
    stopped: list[bool] = []

    def interrupted(self, work):
        if work["question_id"] == "later" and not stopped:
            stopped.append(True)
            raise _Stopped  # the process stopped in the middle of the batch
        asked.append(work["question_id"])
        return real(self, work)

    monkeypatch.setattr(BatchRunner, "run", interrupted)
    with pytest.raises(_Stopped):
        run_batch(folder / "q.jsonl", settings=rules, out_dir=out, progress=False)
    first = [r["question_id"] for r in _lines(out / "results.jsonl")]
    assert len(first) == 2  # the two before the interruption were recorded
    asked.clear()
    records = run_batch(folder / "q.jsonl", settings=rules, out_dir=out, progress=False)
    assert not set(asked) & set(first)  # never asked twice
    assert len(records) == 5


def test_failed_runs_are_not_reported_as_answered(folder, rules):
    (folder / "bad.tif").write_bytes(b"not a raster")
    (folder / "q2.jsonl").write_text(
        json.dumps({"id": "bad", "scene": "bad.tif", "question": "what is this?"})
        + "\n"
        + json.dumps({"id": "s", "scene": "a.tif", "question": "x", "settings": {"max_steps": 0}})
        + "\n"
    )
    records = run_batch(folder / "q2.jsonl", settings=rules, out_dir=folder / "o", progress=False)
    assert [r["status"] for r in records] == ["error", "error"]
    assert "bad.tif" in records[0]["message"]
    assert "max_steps" in records[1]["message"]


def test_schema_file_is_the_models_schema_and_cli_planners_agree():
    from zoomearth.cli_batch import PLANNERS

    assert batch_schema() == BatchItem.model_json_schema()
    assert PLANNERS == batch_module.PLANNERS
    assert batch_schema()["required"] == ["scene", "question"]


def test_cli_batch(folder, tmp_path, capsys):
    from zoomearth.cli import main

    out = tmp_path / "cli-out"
    code = main(
        [
            "--set", f"data_dir={tmp_path / 'data'}", "--set", f"cache_dir={tmp_path / 'cache'}",
            "batch", str(folder / "q.jsonl"), "--out", str(out), "--planner", "rules",
            "--no-progress",
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 1  # not every question could be answered
    assert "5 question(s): answered 3, invalid 1, missing_scene 1" in captured.out
    assert "later: missing_scene" in captured.err
    assert main(["batch", "--schema"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "zoomearth batch question"


def test_batch_on_ray_gives_the_local_records(folder, rules, tmp_path):
    pytest.importorskip("ray", reason="the dist extra (ray) is not installed")

    local = run_batch(folder / "q.jsonl", settings=rules, out_dir=tmp_path / "l", progress=False)
    with local_ray():
        remote = run_batch(
            folder / "q.jsonl",
            settings=rules,
            out_dir=tmp_path / "r",
            ray_address="auto",
            progress=False,
        )
    same = ("question_id", "status", "answer", "zooms", "tools", "steps", "message")
    assert [{k: r[k] for k in same} for r in remote] == [{k: r[k] for k in same} for r in local]
