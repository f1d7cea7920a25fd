"""The run record says what happened: per-call statuses, run status and exit code (issue #13).

* every way a tool call can go wrong (invalid arguments, a tool that does not exist, a tool that
  raises, approval denied, cancellation) shows in ``zoomearth ask --json`` and in the exit code;
* a call the planner corrects later does not fail the run; a failure that stays does;
* "that crop" is the latest zoom, never a tool's preview, also on a follow-up question;
* every plan in ``docs/script.md`` is valid and runs cleanly.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from langgraph.checkpoint.memory import InMemorySaver

from tests.graphs.fakes import ScriptedPlanner
from tests.scene.rasters import write_raster
from zoomearth.api import Agent, AskResult, run_outcome
from zoomearth.tools.base import Tool, ToolResult
from zoomearth.tools.registry import ToolRegistry, get_registry

REPO = Path(__file__).resolve().parents[2]
EXIT = {"answered": 0, "awaiting_approval": 3, "partial": 4, "failed": 5, "cancelled": 130}


# ----------------------------------------------------------------------------------------------
# fixtures and helpers
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("honesty") / "scene.tif"
    return write_raster(path, 1024, 1024, 3, block=256, overviews=[2])


@pytest.fixture(scope="module")
def cloudy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from zoomearth.scene.synth import generate_scene

    out = tmp_path_factory.mktemp("cloudy") / "cloudy.tif"
    return Path(generate_scene(out, 2048, seed=3, clouds=0.35, progress=False).image_path)


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory for PYTHONPATH holding a plugin distribution with two misbehaving tools."""
    root = tmp_path_factory.mktemp("plugin")
    (root / "zoomearth_honesty_plugin.py").write_text(
        textwrap.dedent(
            '''
            """Test plugin: a tool that is cancelled as soon as it runs."""
            from zoomearth.tools.base import Tool, ToolCancelled


            class CancelledTool(Tool):
                name = "cancelled_tool"
                description = "Stops as a cancellation request would stop it."

                def run(self, ctx, args):
                    raise ToolCancelled("Tool cancelled_tool was cancelled; nothing was kept.")
            '''
        )
    )
    dist = root / "zoomearth_honesty_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: zoomearth-honesty-plugin\nVersion: 0.1\n"
    )
    (dist / "entry_points.txt").write_text(
        "[zoomearth.tools]\n"
        "always_fails = tests.graphs.fakes:FailingTool\n"
        "cancelled_tool = zoomearth_honesty_plugin:CancelledTool\n"
    )
    return root


def ask(
    *args: str, env: dict[str, str], plugin: Path | None = None
) -> tuple[int, dict[str, Any], str]:
    """Run ``zoomearth ask ... --json``; return the exit code, the record and stderr."""
    full_env = {**os.environ, **env}
    if plugin is not None:
        full_env["PYTHONPATH"] = os.pathsep.join(
            [str(plugin), str(REPO), full_env.get("PYTHONPATH", "")]
        ).rstrip(os.pathsep)
    proc = subprocess.run(
        [sys.executable, "-m", "zoomearth.cli", "ask", *args, "--json"],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout, f"exit {proc.returncode}, no record\nstderr: {proc.stderr}"
    record = json.loads(proc.stdout)
    AskResult.model_validate(record)
    return proc.returncode, record, proc.stderr


def plan_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "plan.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def check_exit(code: int, record: dict[str, Any], stderr: str) -> None:
    assert code == EXIT[record["status"]], stderr
    if record["status"] != "answered":
        assert record["status_reason"] and f"run {record['status']}" in stderr


# ----------------------------------------------------------------------------------------------
# one test per way a tool call can go wrong, through the command line
# ----------------------------------------------------------------------------------------------
def test_invalid_arguments_fail_the_run(scene: Path, tmp_path: Path) -> None:
    plan = plan_file(
        tmp_path,
        """
        turns:
          - - {zoom: [0, 0, 512, 512], frame: full}
            - {tool: denoise, args: {box: [0, 0, 512, 512], prompt: clean}}
          - - {answer: Denoised the crop.}
        """,
    )
    code, record, stderr = ask(
        str(scene), "denoise", "--plan", plan, env={"ZOOMEARTH_DATA_DIR": str(tmp_path / "d")}
    )
    assert (code, record["status"]) == (5, "failed")
    assert record["answer"] == "Denoised the crop."  # the scripted answer is kept, not trusted
    (call,) = record["tool_calls"]
    assert call["name"] == "denoise" and call["status"] == "invalid_arguments"
    assert call["code"] == "invalid_arguments" and "'box'" in call["error"]
    assert call["arguments"] == {"box": [0, 0, 512, 512], "prompt": "clean"}
    assert call["recovered"] is False and call["artifacts"] == []
    assert "denoise" in record["status_reason"]
    check_exit(code, record, stderr)


def test_unknown_tool_fails_the_run(scene: Path, tmp_path: Path) -> None:
    plan = plan_file(
        tmp_path,
        """
        turns:
          - - {tool: segmentaton, args: {}}
          - - {answer: Segmented.}
        """,
    )
    code, record, stderr = ask(
        str(scene), "segment", "--plan", plan, env={"ZOOMEARTH_DATA_DIR": str(tmp_path / "d")}
    )
    assert (code, record["status"]) == (5, "failed")
    # Rejected before any tool ran: a problem, not a call.
    assert record["tool_calls"] == []
    assert [p["code"] for p in record["problems"]] == ["unknown_tool"]
    assert "unknown_tool" in record["status_reason"] and "segmentaton" in record["status_reason"]
    check_exit(code, record, stderr)


def test_tool_that_raises_is_failed_and_other_calls_make_it_partial(
    scene: Path, tmp_path: Path, plugin_path: Path
) -> None:
    plan = plan_file(
        tmp_path,
        """
        turns:
          - - {zoom: [0, 0, 512, 512], frame: full}
            - {tool: export_region, args: {}}
            - {tool: always_fails, args: {}}
          - - {answer: Exported and analysed.}
        """,
    )
    code, record, stderr = ask(
        str(scene),
        "export and analyse",
        "--plan",
        plan,
        env={"ZOOMEARTH_DATA_DIR": str(tmp_path / "d")},
        plugin=plugin_path,
    )
    assert (code, record["status"]) == (4, "partial")
    by_name = {c["name"]: c for c in record["tool_calls"]}
    assert by_name["export_region"]["status"] == "ok" and by_name["export_region"]["artifacts"]
    failed = by_name["always_fails"]
    assert failed["status"] == "failed" and failed["code"] == "tool_failure"
    assert "boom from a broken tool" in failed["error"]
    assert record["status_reason"].startswith("1 of 2 tool requests")
    check_exit(code, record, stderr)


def test_denied_approval_is_recorded(scene: Path, tmp_path: Path) -> None:
    plan = plan_file(
        tmp_path,
        """
        turns:
          - - {zoom: [600, 600, 700, 700], frame: full}
            - {tool: edit, args: {instruction: remove the object, target_box: [620, 620, 680, 680]}}
          - - {answer: edited}
        """,
    )
    env = {"ZOOMEARTH_DATA_DIR": str(tmp_path / "d")}
    code, record, stderr = ask(str(scene), "remove the object", "--plan", plan, env=env)
    assert (code, record["status"]) == (3, "awaiting_approval")
    (call,) = record["tool_calls"]
    assert call["status"] == "pending" and call["error"] is None
    code, record, stderr = ask(
        "--thread", record["thread_id"], "--resume", "--deny", "--plan", plan, env=env
    )
    assert (code, record["status"]) == (5, "failed")
    (call,) = record["tool_calls"]
    assert call["status"] == "denied" and call["code"] == "denied"
    assert "did not approve" in call["error"]
    check_exit(code, record, stderr)


def test_cancelled_tool_call_is_recorded_and_exits_130(
    scene: Path, tmp_path: Path, plugin_path: Path
) -> None:
    plan = plan_file(
        tmp_path,
        """
        turns:
          - - {tool: cancelled_tool, args: {}}
          - - {answer: done}
        """,
    )
    code, record, stderr = ask(
        str(scene),
        "q",
        "--plan",
        plan,
        env={"ZOOMEARTH_DATA_DIR": str(tmp_path / "d")},
        plugin=plugin_path,
    )
    assert (code, record["status"]) == (130, "cancelled")
    assert record["answer"] is None
    (call,) = record["tool_calls"]
    assert call["status"] == "cancelled" and "was cancelled" in call["error"]
    assert "resume" in record["status_reason"]
    check_exit(code, record, stderr)


def test_corrected_call_is_recovered_and_the_run_answered(scene: Path, tmp_path: Path) -> None:
    plan = plan_file(
        tmp_path,
        """
        turns:
          - - {zoom: [0, 0, 512, 512], frame: full}
            - {tool: denoise, args: {strenght: 2}}
          - - {tool: denoise, args: {strength: 2}}
          - - {answer: Denoised.}
        """,
    )
    code, record, stderr = ask(
        str(scene), "denoise", "--plan", plan, env={"ZOOMEARTH_DATA_DIR": str(tmp_path / "d")}
    )
    assert (code, record["status"], record["status_reason"]) == (0, "answered", ""), stderr
    first, second = record["tool_calls"]
    assert first["status"] == "invalid_arguments" and first["recovered"] is True
    assert second["status"] == "ok" and second["step"] == 2


# ----------------------------------------------------------------------------------------------
# the rule, and cancellation through the API
# ----------------------------------------------------------------------------------------------
def _call(name: str, status: str, step: int = 1, recovered: bool = False) -> dict[str, Any]:
    return {
        "name": name, "arguments": {}, "step": step, "action_id": None, "status": status,
        "error": None if status == "ok" else "why", "code": None, "artifacts": [],
        "seconds": None, "recovered": recovered,
    }


@pytest.mark.parametrize(
    ("calls", "rejected_steps", "expected"),
    [
        ([], [], "answered"),
        ([_call("a", "ok")], [], "answered"),
        ([_call("a", "failed")], [], "failed"),
        ([_call("a", "denied"), _call("b", "ok", 2)], [], "partial"),
        # corrected later: answered; a failure after a success: partial
        ([_call("a", "invalid_arguments", 1, True), _call("a", "ok", 2)], [], "answered"),
        ([_call("a", "ok"), _call("a", "failed", 2)], [], "partial"),
        # an unknown tool: recovered by a success in a later step only
        ([_call("b", "ok", 2)], [1], "answered"),
        ([_call("b", "ok", 1)], [1], "partial"),
        ([], [1], "failed"),
    ],
)
def test_status_rule(calls: list[dict[str, Any]], rejected_steps: list[int], expected: str) -> None:
    rejected = [(s, {"code": "unknown_tool", "message": "no such tool"}) for s in rejected_steps]
    status, reason = run_outcome(calls, rejected)  # type: ignore[arg-type]
    assert status == expected
    assert bool(reason) == (expected != "answered")


class WaitsForCancel(Tool):
    """Runs until a cancellation request arrives (at most a few seconds), unless ``wait`` is off."""

    name = "waits_for_cancel"
    description = "A long tool that checks its cancellation hook."
    wait = True

    def run(self, ctx, args):  # noqa: ANN001, ANN201 - the Tool interface
        import time

        for _ in range(100):
            if not WaitsForCancel.wait:
                break
            ctx.check_cancelled()
            time.sleep(0.05)
        return ToolResult(text="finished")


def test_cancel_thread_stops_the_call_and_resume_runs_it_again(settings, scene: Path) -> None:
    from zoomearth.graphs.tool_node import cancel_thread

    registry = ToolRegistry(builtins={"waits_for_cancel": WaitsForCancel}, entry_point_group=None)
    planner = ScriptedPlanner(
        [
            '<tool_call>{"name": "waits_for_cancel", "arguments": {}}</tool_call>',
            "<answer>done</answer>",
        ]
    )

    def on_event(event: dict[str, Any]) -> None:
        if event.get("event") == "tool_start":
            # As the server does when a client disconnects, from another thread.
            threading.Thread(target=cancel_thread, args=("t-cancel",)).start()

    WaitsForCancel.wait = True
    agent = Agent(
        settings, planner=planner, registry=registry, checkpointer=InMemorySaver(),
        on_event=on_event,
    )
    result = agent.ask(scene, "q", thread="t-cancel")
    assert result.status == "cancelled" and result.answer is None
    (call,) = result.tool_calls
    assert call["status"] == "cancelled" and call["code"] == "cancelled"
    assert "cancel" in call["error"]

    WaitsForCancel.wait = False
    agent.on_event = None
    resumed = agent.resume("t-cancel")
    assert resumed.status == "answered" and resumed.answer == "done"
    (call,) = resumed.tool_calls
    assert call["status"] == "ok"


def test_follow_up_question_records_only_its_own_calls(settings, scene: Path) -> None:
    planner = ScriptedPlanner(  # turns count over the whole thread
        [
            '{"bbox_2d": [0, 0, 10, 10]}<tool_call>{"name": "denoise", "arguments": '
            '{"bad": 1}}</tool_call>',
            "<answer>first</answer>",
            '<tool_call>{"name": "denoise", "arguments": {}}</tool_call>',
            "<answer>second</answer>",
        ]
    )
    agent = Agent(settings, planner=planner, registry=get_registry(), checkpointer=InMemorySaver())
    first = agent.ask(scene, "q1", thread="t-two")
    assert first.status == "failed" and len(first.tool_calls) == 1
    second = agent.ask(None, "q2", thread="t-two")
    # The earlier question's failure is not this question's: one call, ok.
    assert second.status == "answered"
    (call,) = second.tool_calls
    assert call["status"] == "ok" and call["step"] == 1


# ----------------------------------------------------------------------------------------------
# "that crop" is the latest zoom
# ----------------------------------------------------------------------------------------------
def test_now_denoise_that_crop_uses_the_zoom_not_the_preview(settings, scene: Path) -> None:
    agent = Agent(settings, planner="rules", registry=get_registry(), checkpointer=InMemorySaver())
    first = agent.ask(scene, "segment the buildings in the top-left")
    (zoom,) = first.zooms
    assert zoom.box_xyxy == [0, 0, 512, 512]
    assert first.tool_calls[0]["name"] == "segmentation" and first.status == "answered"
    # The latest image shown was the segmentation preview, not the zoom.
    values = agent.graph.get_state({"configurable": {"thread_id": first.thread_id}}).values
    shown = [e["view_id"] for e in values["transcript"] if e.get("view_id") is not None]
    assert values["views"][str(shown[-1])]["kind"] == "preview"

    second = agent.ask(None, "now denoise that crop", thread=first.thread_id)
    (call,) = second.tool_calls
    assert call["name"] == "denoise" and call["status"] == "ok"
    denoised = [a for a in second.artifacts if a["tool"] == "denoise"]
    assert denoised and all(a["region_xyxy"] == zoom.box_xyxy for a in denoised)


def test_second_tool_of_a_question_works_on_the_zoom_after_a_preview(settings, scene) -> None:
    planner = ScriptedPlanner(
        [
            '{"bbox_2d": [0, 0, 10, 10]}<tool_call>{"name": "denoise", "arguments": {}}'
            "</tool_call>",
            '<tool_call>{"name": "export_region", "arguments": {}}</tool_call>',
            "<answer>done</answer>",
        ]
    )
    agent = Agent(settings, planner=planner, registry=get_registry(), checkpointer=InMemorySaver())
    result = agent.ask(scene, "denoise then export")
    (zoom,) = result.zooms
    exported = [a for a in result.artifacts if a["tool"] == "export_region"]
    assert exported and all(a["region_xyxy"] == zoom.box_xyxy for a in exported)


# ----------------------------------------------------------------------------------------------
# the documentation's plans
# ----------------------------------------------------------------------------------------------
_FENCE = re.compile(r"^```(yaml|json)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _doc_plans() -> list[tuple[str, dict[str, Any], str | None]]:
    """(label, plan, question id) for every plan block in docs/script.md."""
    text = (REPO / "docs" / "script.md").read_text()
    plans = []
    for n, (lang, body) in enumerate(_FENCE.findall(text), start=1):
        data = json.loads(body) if lang == "json" else yaml.safe_load(body)
        if not isinstance(data, dict):
            continue
        if "turns" in data:
            plans.append((f"block {n}", data, None))
        for qid in data.get("questions", {}):
            plans.append((f"block {n} {qid}", data, qid))
        if "questions" in data and "default" in data:
            plans.append((f"block {n} default", data, "no-such-id"))
    return plans


DOC_PLANS = _doc_plans()


def test_docs_have_plans() -> None:
    assert len(DOC_PLANS) >= 6


@pytest.mark.parametrize(("label", "plan", "qid"), DOC_PLANS, ids=[p[0] for p in DOC_PLANS])
def test_docs_plan_runs_cleanly(
    settings, cloudy: Path, label: str, plan: dict[str, Any], qid: str | None
) -> None:
    from zoomearth.agent.backends.script import ScriptPlanner

    planner = ScriptPlanner(settings, plan=plan)
    planner.set_question(qid)
    agent = Agent(
        settings, planner=planner, registry=get_registry(), checkpointer=InMemorySaver(),
        auto_approve=True,
    )
    result = agent.ask(cloudy, "the documented plan")
    assert [(c["name"], c["status"], c["error"]) for c in result.tool_calls] == [
        (c["name"], "ok", None) for c in result.tool_calls
    ]
    assert result.problems == [], label
    assert result.status == "answered" and result.answer_kind == "answer", result.status_reason


# ----------------------------------------------------------------------------------------------
# the server: a failed run does not read as a clean success
# ----------------------------------------------------------------------------------------------
def test_server_reports_failed_runs(tmp_path: Path) -> None:
    from tests.server.helpers import (
        ServerThread,
        agent_factory,
        client,
        data_url,
        geotiff_bytes,
        tool_call,
        user,
    )
    from zoomearth.config import load_settings
    from zoomearth.server.app import create_app

    settings = load_settings(
        flags={"data_dir": tmp_path / "data", "cache_dir": tmp_path / "cache"}, environ={}
    )
    plans = {
        "broken": [tool_call("export_region", box=[0, 0, 10, 10]), "<answer>exported</answer>"],
        "default": [tool_call("export_region"), "<answer>exported</answer>"],
    }
    image = data_url(geotiff_bytes(tmp_path, 600, 400))
    with ServerThread(create_app(settings, agent_factory(plans))) as server:
        c = client(server)
        ok = c.chat.completions.create(model="zoomearth", messages=[user("export it", image)])
        assert ok.model_extra["zoomearth"]["status"] == "answered"
        assert "status_reason" not in ok.model_extra["zoomearth"]
        assert "Run status" not in ok.choices[0].message.content

        bad = c.chat.completions.create(
            model="zoomearth", messages=[user("broken export", image)]
        )
        extra = bad.model_extra["zoomearth"]
        assert extra["status"] == "failed" and "export_region" in extra["status_reason"]
        content = bad.choices[0].message.content
        assert content.startswith("exported")
        assert "Run status: failed. No tool request of the question succeeded" in content

        stream = c.chat.completions.create(
            model="zoomearth", stream=True, messages=[user("broken export again", image)],
            extra_headers={"X-Conversation-Id": "honesty-stream"},
        )
        text, last = "", {}
        for chunk in stream:
            text += chunk.choices[0].delta.content or ""
            if chunk.choices[0].finish_reason:
                last = (chunk.model_extra or {}).get("zoomearth", {})
        assert last["status"] == "failed" and last["status_reason"]
        assert "Run status: failed." in text
