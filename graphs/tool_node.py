"""The body of every tool node (:class:`~zoomearth.graphs.nodes.ToolActionNode`): one tool call.

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
  thread runs the call again -- with the same arguments, so a tool that keeps its finished tiles
  (``ToolContext.map_tiles``) computes only the rest.

Before a ``needs_approval`` tool interrupts for the user's approval, :func:`check_tool_action`
runs the call's checks without running it (``zoomearth.tools.check_tool_call``: arguments,
region, references, the tool's own ``check``); a call that would be refused comes back to the
planner as an ``invalid_arguments`` result and the user is never asked.
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
    from zoomearth.tools.base import ToolContext

__all__ = ["check_tool_action", "run_tool_action", "cancel_thread", "clear_cancel"]

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


def thread_cancelled(thread_id: str) -> bool:
    """Whether a cancellation request for this thread is pending."""
    with _CANCEL_LOCK:
        return thread_id in _CANCELLED


def clear_cancel(thread_id: str) -> None:
    """Forget a cancellation request (before a thread runs again)."""
    with _CANCEL_LOCK:
        _CANCELLED.discard(thread_id)


def _entry(text: str, view_id: int | None, **data: Any) -> dict[str, Any]:
    return {"kind": "tool_result", "text": text, "view_id": view_id, "data": data}


def _call_data(name: str, payload: ActionPayload) -> dict[str, Any]:
    # Chat-layout backends pair each tool result with the call that produced it.
    return {"tool": name, "arguments": dict(payload.get("arguments") or {})}


def _tool_and_context(
    tool_entry: Any,
    payload: ActionPayload,
    runtime: GraphRuntime,
    registry: Any,
    thread_id: str,
    emit: Callable[[dict[str, Any]], None],
    run_dir: str | None,
    state_views: dict[str, ViewRecord] | None,
    state_artifacts: list[dict[str, Any]] | None,
) -> tuple[Any, ToolContext, int]:
    """The tool instance, the call's context and its step (see :func:`run_tool_action`)."""
    from zoomearth.artifacts import Artifact, ArtifactStore
    from zoomearth.tools.base import ToolContext

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
        stack=runtime.stack(scene_ref),
    )
    return tool, ctx, step


def _tool_event(name: str, text: str, status: str, step: Any, **extra: Any) -> dict[str, Any]:
    """The ``tool`` stream event of a finished call (``ok`` only when ``status`` is ``"ok"``)."""
    return {
        "event": "tool",
        "tool": name,
        "text": text,
        "ok": status == "ok",
        "status": status,
        "step": step,
        **extra,
    }


def _input_error_update(
    name: str,
    payload: ActionPayload,
    exc: Exception,
    emit: Callable[[dict[str, Any]], None],
    base: dict[str, Any],
) -> dict[str, Any]:
    """State update of a call the tool layer refused (a ToolInputError): feedback, no run."""
    text = TOOL_INPUT_TEMPLATE.format(tool=name, reason=exc)
    emit(_tool_event(name, text, "invalid_arguments", base.get("step")))
    code = str(getattr(exc, "code", "") or "invalid_arguments")
    return {
        "transcript": [_entry(text, None, **_call_data(name, payload), error="input")],
        "results": [{**base, "status": "invalid_arguments", "error": str(exc), "code": code}],
    }


def check_tool_action(
    tool_entry: Any,
    payload: ActionPayload,
    runtime: GraphRuntime,
    registry: Any,
    thread_id: str,
    emit: Callable[[dict[str, Any]], None],
    run_dir: str | None = None,
    state_views: dict[str, ViewRecord] | None = None,
    state_artifacts: list[dict[str, Any]] | None = None,
) -> dict[str, Any] | None:
    """Check a tool action without running it (before asking the user to approve it).

    Arguments as for :func:`run_tool_action`. Runs :func:`~zoomearth.tools.check_tool_call`:
    the runner's checks and the tool's :meth:`~zoomearth.tools.Tool.check`. Writes nothing.

    Returns:
        None when the call may go ahead; else the state update of the refused call (the same
        ``invalid_arguments`` result :func:`run_tool_action` gives), for the planner to read.
        A check that itself breaks is not a refusal: the call goes ahead and the run reports
        the failure.
    """
    from zoomearth.tools.base import ToolCancelled, ToolInputError, check_tool_call

    tool, ctx, step = _tool_and_context(
        tool_entry, payload, runtime, registry, thread_id, emit, run_dir, state_views,
        state_artifacts,
    )
    try:
        check_tool_call(tool, ctx, payload.get("arguments") or {}, registry=registry)
    except ToolInputError as exc:
        base = {"action_id": payload["action_id"], "tool": tool_entry.name, "step": step}
        return _input_error_update(tool_entry.name, payload, exc, emit, base)
    except ToolCancelled:
        raise
    except Exception as exc:  # noqa: BLE001 - reported when the call runs
        log.warning("preflight check of %s failed (%s); asking for approval", tool_entry.name, exc)
    return None


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
    from zoomearth.tools.base import ToolCancelled, ToolInputError, run_tool

    name = tool_entry.name
    tool, ctx, step = _tool_and_context(
        tool_entry, payload, runtime, registry, thread_id, emit, run_dir, state_views,
        state_artifacts,
    )
    pool = ctx.pool
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
        return _input_error_update(name, payload, exc, emit, base)
    except ToolCancelled as exc:
        emit(_tool_event(name, str(exc), "cancelled", step))
        raise
    except Exception as exc:
        if runtime.strict:
            raise
        cause = " ".join(str(exc).split())[:300] or type(exc).__name__
        text = TOOL_FAILED_TEMPLATE.format(tool=name, cause=cause)
        log.warning("%s", text)
        emit(_tool_event(name, text, "failed", step))
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
    emit(_tool_event(name, outcome.text, "ok", step, artifacts=records))
    return update
