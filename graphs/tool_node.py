"""The body of every tool node: one tool call through the contract's single code path.

The node builds a :class:`~zoomearth.tools.base.ToolContext` from the state's references (scene,
region in full-resolution pixels, views, earlier artifacts, the model pool, the run directory,
progress and cancellation hooks), calls :func:`~zoomearth.tools.base.run_tool`, and turns the
outcome into state updates: a ``tool_result`` transcript entry (the text the planner reads, with
the artifact ids it may reference as ``artifact:N``), the artifact records, and a preview view.

Every call leaves one record in ``results`` (:class:`~zoomearth.graphs.state.ToolResultRecord`)
with its status, which the ``--json`` record and the run's status are built from:

* ``ToolInputError`` (the planner can fix the call) becomes an observation and status
  ``invalid_arguments``, with the tool layer's message and problem code;
* any other failure is recorded with its cause (status ``failed``) and the run goes on; with
  ``runtime.strict`` it is re-raised;
* ``ToolCancelled`` (a cancellation request, :func:`cancel_thread`) is re-raised: the run stops,
  the checkpointer keeps the task's error (read back as status ``cancelled``) and resuming the
  thread runs the call again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from zoomearth.geometry import PixelBox
from zoomearth.graphs.runtime import view_spec_of

if TYPE_CHECKING:
    from zoomearth.graphs.runtime import GraphRuntime
    from zoomearth.graphs.state import ActionPayload, ViewRecord

__all__ = ["run_tool_action", "cancel_thread", "clear_cancel"]

log = logging.getLogger(__name__)

TOOL_INPUT_TEMPLATE = "Tool {tool} could not run: {reason}"
TOOL_FAILED_TEMPLATE = "Tool {tool} failed ({cause}); the run continues without its result."
#: Problem code recorded for a tool that ran and raised.
TOOL_FAILURE_CODE = "tool_failure"

# Cancellation requests by thread id (set by the server when a client disconnects).
_CANCELLED: set[str] = set()
_CANCEL_LOCK = threading.Lock()


def cancel_thread(thread_id: str) -> None:
    """Ask running tools of a thread to stop at their next cancellation check."""
    with _CANCEL_LOCK:
        _CANCELLED.add(thread_id)


def clear_cancel(thread_id: str) -> None:
    """Forget a cancellation request (before a thread runs again)."""
    with _CANCEL_LOCK:
        _CANCELLED.discard(thread_id)


def _entry(text: str, view_id: int | None, **data: Any) -> dict[str, Any]:
    return {"kind": "tool_result", "text": text, "view_id": view_id, "data": data}


def _call_data(name: str, payload: ActionPayload) -> dict[str, Any]:
    # Chat-layout backends pair each tool result with the call that produced it.
    return {"tool": name, "arguments": dict(payload.get("arguments") or {})}


def run_tool_action(
    tool_entry: Any,
    payload: ActionPayload,
    runtime: GraphRuntime,
    registry: Any,
    thread_id: str,
    emit: Callable[[dict[str, Any]], None],
    run_dir: str | None = None,
    state_views: dict[str, ViewRecord] | None = None,
    state_artifacts: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run one tool action and return the state update.

    Args:
        tool_entry: The registry entry (``.name``, ``.cls``) of the tool.
        payload: The action sent by the router (region already in full-resolution pixels).
        runtime: Shared resources (scene, pool, settings, strictness).
        registry: The tool registry.
        thread_id: The LangGraph thread (run directory, cancellation).
        emit: Progress event sink (LangGraph custom stream).
        run_dir: The run directory (default: ``runs_dir/<thread>``).
        state_views: Views of the thread (tools may read them).
        state_artifacts: Artifact records of the thread (``artifact:N`` references).
    """
    from zoomearth.artifacts import Artifact, ArtifactStore
    from zoomearth.tools.base import (
        ToolCancelled,
        ToolContext,
        ToolInputError,
        run_tool,
    )

    name = tool_entry.name
    # One cached instance per registry (tools keep expensive setup, e.g. a predictor, lazily).
    tool = registry.get_tool(name) if hasattr(registry, "get_tool") else tool_entry.cls()
    scene_ref = payload["scene"]  # type: ignore[typeddict-item]
    scene = runtime.scene(scene_ref)
    out_dir = runtime.run_dir(thread_id, run_dir)
    region_xyxy = payload.get("region_xyxy")
    region = PixelBox(*region_xyxy) if region_xyxy else None
    views = [view_spec_of(v) for v in (state_views or {}).values()]
    artifacts = {int(a["id"]): Artifact.model_validate(a) for a in (state_artifacts or [])}
    step = int(payload.get("step", 0))

    def progress(done: int, total: int, message: str = "") -> None:
        emit(
            {
                "event": "progress",
                "tool": name,
                "done": done,
                "total": total,
                "message": message,
                "step": step,
            }
        )

    def is_cancelled() -> bool:
        with _CANCEL_LOCK:
            return thread_id in _CANCELLED

    pool = runtime.pool
    if pool is None:
        from zoomearth.models import get_default_pool

        pool = get_default_pool(runtime.settings)
    ctx = ToolContext(
        scene=scene,
        run_dir=out_dir,
        region=region,
        views=views,
        artifacts=artifacts,
        pool=pool,
        settings=runtime.settings,
        progress=progress,
        is_cancelled=is_cancelled,
        step=step,
        store=ArtifactStore(out_dir),
    )
    emit(
        {
            "event": "tool_start",
            "tool": name,
            "arguments": payload.get("arguments", {}),
            "region_xyxy": payload.get("region_xyxy"),
            "step": step,
        }
    )
    base = {"action_id": payload["action_id"], "tool": name, "step": step}
    collect = getattr(pool, "collect_warnings", None)
    pool_warnings: list[Any] = []
    try:
        if collect is not None:
            with collect() as pool_warnings:
                outcome = run_tool(tool, ctx, payload.get("arguments") or {}, registry=registry)
        else:
            outcome = run_tool(tool, ctx, payload.get("arguments") or {}, registry=registry)
    except ToolInputError as exc:
        text = TOOL_INPUT_TEMPLATE.format(tool=name, reason=exc)
        emit(
            {
                "event": "tool",
                "tool": name,
                "text": text,
                "ok": False,
                "status": "invalid_arguments",
                "step": step,
            }
        )
        code = str(getattr(exc, "code", "") or "invalid_arguments")
        return {
            "transcript": [_entry(text, None, **_call_data(name, payload), error="input")],
            "results": [{**base, "status": "invalid_arguments", "error": str(exc), "code": code}],
        }
    except ToolCancelled as exc:
        emit(
            {
                "event": "tool",
                "tool": name,
                "text": str(exc),
                "ok": False,
                "status": "cancelled",
                "step": step,
            }
        )
        raise
    except Exception as exc:
        if runtime.strict:
            raise
        cause = " ".join(str(exc).split())[:300] or type(exc).__name__
        text = TOOL_FAILED_TEMPLATE.format(tool=name, cause=cause)
        log.warning("%s", text)
        emit(
            {
                "event": "tool",
                "tool": name,
                "text": text,
                "ok": False,
                "status": "failed",
                "step": step,
            }
        )
        return {
            "transcript": [_entry(text, None, **_call_data(name, payload), error="failure")],
            "results": [{**base, "status": "failed", "error": cause, "code": TOOL_FAILURE_CODE}],
            "warnings": [text],
        }

    records = [a.model_dump(mode="json") for a in outcome.artifacts]
    update: dict[str, Any] = {"artifacts": records}
    preview_view: int | None = None
    preview = next((a for a in outcome.artifacts if a.id == outcome.preview_id), None)
    if preview is not None:
        from PIL import Image

        with Image.open(preview.path) as im:
            w, h = im.size
        region_xyxy = list(outcome.region_xyxy)
        preview_view = int(payload["view_id"])
        update["views"] = {
            str(preview_view): {
                "view_id": preview_view,
                "kind": "preview",
                "region_xyxy": region_xyxy,
                "width": w,
                "height": h,
                "path": str(preview.path),
                "label": name,
                "step": step,
            }
        }
    text = outcome.observation()
    warnings = list(outcome.warnings) + [str(w) for w in pool_warnings]
    update["transcript"] = [
        _entry(
            text,
            preview_view,
            **_call_data(name, payload),
            artifacts=[a.id for a in outcome.artifacts],
        )
    ]
    update["results"] = [
        {
            **base,
            "status": "ok",
            "seconds": round(outcome.elapsed_s, 3),
            "artifacts": [a.id for a in outcome.artifacts],
            "streamed": outcome.streamed,
            "result": text,
        }
    ]
    if warnings:
        update["warnings"] = warnings
    emit(
        {
            "event": "tool",
            "tool": name,
            "text": outcome.text,
            "ok": True,
            "status": "ok",
            "step": step,
            "artifacts": records,
        }
    )
    return update
