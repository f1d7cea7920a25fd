"""Structured run events for the workbench: in the chat stream and in a thread's history.

A **RunEvent** is a small JSON object with ``type`` and ``step`` (docs/server.md, "Run events"):

* ``view``: a zoom, the moment the zoom node records it: ``view_id``, ``box_xyxy``
  (full-resolution pixels), ``label``, ``date``, and ``polygon`` -- the box as a closed ring of
  5 Leaflet ``[lat, lng]`` points in the frame of the thread's scene layer
  (:class:`~zoomearth.server.tiles.LayerGeometry`);
* ``tool``: a tool call's status: ``call_id``, ``name``, ``status`` (``started``, ``ok``,
  ``failed``, ``needs_approval``, ``denied``), ``message``, and ``detail`` for failures
  (``invalid_arguments``, ``failed``, ``cancelled``);
* ``artifact``: a file a call wrote: ``artifact_id``, ``name``, ``kind`` (``raster``, ``vector``,
  ``image``, ``other``), ``download_url`` (signed), a ``layer`` for rasters, a ``geojson_url``
  (signed; the GeoJSON in the layer frame) and ``properties_hint`` for vectors;
* ``answer``: ``status`` (the run record's) and ``text``, at the end of a run.

:class:`RunEvents` turns the graph's progress events (``zoom``, ``tool_start``, ``tool``,
``approval``, ``plan``) into RunEvents while a run streams; :func:`thread_history` rebuilds the
same events for a whole thread from its checkpoints (one record per question,
:func:`zoomearth.run_record.ask_result`). :class:`Links` makes the signed URLs both use.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from zoomearth.server.errors import ApiError
from zoomearth.server.tiles import (
    LayerGeometry,
    TileService,
    layer_id_for_artifact,
    layer_id_for_thread_scene,
)

if TYPE_CHECKING:
    from zoomearth.api import Agent, AskResult

__all__ = ["Links", "RunEvents", "artifact_event_kind", "thread_history"]

log = logging.getLogger("zoomearth.server")

#: Graph progress events that become RunEvents (``plan`` only updates the current step).
SOURCE_EVENTS = frozenset({"zoom", "tool_start", "tool", "approval", "plan"})
#: Run-record tool-call statuses -> RunEvent tool statuses (others are ``failed``).
_CALL_STATUS = {"ok": "ok", "denied": "denied", "pending": "needs_approval"}
_IMAGE_MEDIA = ("image/png", "image/jpeg", "image/webp", "image/gif")
MAX_HINT_KEYS = 16


def tiles_path(layer_id: str) -> str:
    """The path a layer's signature signs: ``/v1/tiles/<layer id>``."""
    return f"/v1/tiles/{layer_id}"


@dataclass
class Links:
    """Signed URLs and Layer objects for one response (one base URL).

    Args:
        tiles: The tile service (opens layers).
        signer: The server's link signer (:class:`zoomearth.server.signing.Signer`).
        base: The base URL links start with (never from the client's ``Host``).
        runs_dir: ``RUNS_DIR`` (artifact downloads are ``/artifacts/<path below it>``).
    """

    tiles: TileService
    signer: Any
    base: str
    runs_dir: Path

    def layer(self, layer_id: str) -> dict[str, Any]:
        """The Layer JSON of a layer (opens it; raises ApiError like :meth:`TileService.open`).

        ``tiles`` is a template signed for the whole layer (the signature covers
        ``/v1/tiles/<layer id>`` and an expiry, not z/x/y); ``image_url`` the whole raster as
        one PNG under the same signature.
        """
        layer = self.tiles.open(layer_id)
        path = tiles_path(layer_id)
        query = self.signer.sign(path)
        root = f"{self.base.rstrip('/')}{quote(path)}"
        return {**layer.describe(), "tiles": f"{root}/{{z}}/{{x}}/{{y}}.png?{query}",
                "image_url": f"{root}/image.png?{query}",
                "expires_in_s": int(self.signer.ttl_s)}

    def download(self, path: str | Path) -> str | None:
        """The signed download URL of a file in ``RUNS_DIR`` (None when outside it)."""
        try:
            rel = Path(path).resolve().relative_to(self.runs_dir.resolve())
        except (OSError, ValueError):
            return None
        return str(self.signer.url(self.base, f"/artifacts/{rel.as_posix()}"))

    def geojson(self, thread: str, artifact_id: int) -> str:
        """The signed URL of a vector artifact's GeoJSON in its thread's layer frame."""
        path = tiles_path(layer_id_for_artifact(thread, artifact_id))
        return f"{self.base.rstrip('/')}{quote(path)}/features.geojson?{self.signer.sign(path)}"


def artifact_event_kind(record: dict[str, Any]) -> str:
    """``raster``, ``vector``, ``image`` or ``other`` for an artifact record."""
    suffix = Path(str(record.get("path", ""))).suffix.lower()
    kind = str(record.get("kind", ""))
    if kind in ("raster", "mask") and suffix in (".tif", ".tiff"):
        return "raster"
    if kind == "vector" and suffix in (".geojson", ".json"):
        return "vector"
    if str(record.get("media_type", "")).split(";")[0] in _IMAGE_MEDIA:
        return "image"
    return "other"


def _properties_hint(path: Path) -> list[str]:
    """Property names of a GeoJSON file's first feature (what popups can show)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        features = data.get("features") or []
        props = (features[0].get("properties") or {}) if features else {}
        return [str(k) for k in props][:MAX_HINT_KEYS]
    except (OSError, ValueError, AttributeError, TypeError):
        return []


class RunEvents:
    """Builds the RunEvents of one streamed run from its graph progress events.

    Call :meth:`wants` on the event loop (cheap) and the instance itself off the loop (it may
    open the thread's scene or an artifact raster to build a Layer). Call ids are
    ``s<step>.<tool>.<k>`` (``k`` counts that tool's calls in the step), the same scheme the
    history uses for calls without an action id.

    Args:
        links: Signed URLs and layers.
        thread: The thread the run works on.
        current_step: Reads the step of the thread's pending calls from its checkpoint, for
            events that carry none before any ``plan`` event (a resumed approval's denial);
            called by :meth:`prime`, before the run resumes.
    """

    def __init__(self, links: Links, thread: str,
                 current_step: Callable[[], int | None] | None = None) -> None:
        self.links = links
        self.thread = thread
        self.current_step = current_step
        self.step: int | None = None
        self._geometry: LayerGeometry | None = None
        self._counts: dict[tuple[int | None, str], int] = {}
        self._open: dict[tuple[int | None, str], list[str]] = {}

    def prime(self) -> None:
        """Read the step of the pending calls (blocking; call before a resumed run starts)."""
        if self.current_step is not None:
            self.step = self.current_step()

    def wants(self, event: dict[str, Any]) -> bool:
        """Whether ``event`` yields RunEvents (tracks the current step from ``plan`` events)."""
        kind = event.get("event")
        if kind == "plan":
            if isinstance(event.get("step"), int):
                self.step = int(event["step"])
            return False
        return kind in SOURCE_EVENTS

    def geometry(self) -> LayerGeometry | None:
        """The frame of the thread's scene layer (None while the thread has no scene)."""
        if self._geometry is None:
            try:
                self._geometry = self.links.tiles.open(
                    layer_id_for_thread_scene(self.thread)).geometry
            except ApiError as exc:
                log.info("no scene layer for thread %s: %s", self.thread, exc.message)
        return self._geometry

    def _start_call(self, step: int | None, tool: str) -> str:
        key = (step, tool)
        self._counts[key] = self._counts.get(key, 0) + 1
        call_id = f"s{step if step is not None else 0}.{tool}.{self._counts[key]}"
        self._open.setdefault(key, []).append(call_id)
        return call_id

    def _end_call(self, step: int | None, tool: str) -> str:
        pending = self._open.get((step, tool))
        if pending:
            return pending.pop(0)
        return self.closed_id(step, tool)

    def closed_id(self, step: int | None, tool: str) -> str:
        """A new call id for a call whose start was not seen (approvals, history)."""
        call_id = self._start_call(step, tool)
        self._open[(step, tool)].pop()
        return call_id

    def __call__(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """The RunEvents of one graph progress event (blocking)."""
        kind = event.get("event")
        step = event.get("step") if isinstance(event.get("step"), int) else self.step
        if isinstance(step, int):
            self.step = step
        if kind == "zoom":
            return [self.view(event.get("view_id"), event.get("region_xyxy") or [],
                              step=step, label=event.get("label"), date=event.get("date"))]
        tool = str(event.get("tool") or "")
        if kind == "tool_start":
            return [{"type": "tool", "step": step, "call_id": self._start_call(step, tool),
                     "name": tool, "status": "started",
                     "message": json.dumps(event.get("arguments") or {}, default=str),
                     "arguments": event.get("arguments") or {},
                     "box_xyxy": event.get("region_xyxy")}]
        if kind == "approval":
            return [{"type": "tool", "step": step, "call_id": self.closed_id(step, tool),
                     "name": tool, "status": "needs_approval",
                     "message": str(event.get("question") or ""),
                     "arguments": event.get("arguments") or {},
                     "box_xyxy": event.get("region_xyxy")}]
        if kind != "tool":
            return []
        status, detail = _tool_status(event, tool)
        call_id = self._end_call(step, tool)
        out: list[dict[str, Any]] = [{
            "type": "tool", "step": step, "call_id": call_id, "name": tool, "status": status,
            "message": " ".join(str(event.get("text", "")).split())[:400],
            **({"detail": detail} if detail else {}),
        }]
        for record in event.get("artifacts") or []:
            out.append(self.artifact(record, step=step, call_id=call_id))
        return out

    def view(self, view_id: Any, box: list[float], *, step: int | None, label: Any = None,
             date: Any = None) -> dict[str, Any]:
        """A ``view`` RunEvent (polygon None when the scene layer cannot be opened)."""
        geometry = self.geometry()
        polygon = None
        if geometry is not None and len(box) == 4:
            try:
                polygon = geometry.polygon(box)
            except Exception as exc:  # noqa: BLE001 - a box the CRS cannot project: no polygon
                log.info("view polygon of %s failed: %s", box, exc)
        return {"type": "view", "step": step, "view_id": view_id,
                "box_xyxy": [float(v) for v in box], "label": label, "date": date,
                "polygon": polygon}

    def artifact(self, record: dict[str, Any], *, step: int | None,
                 call_id: str | None) -> dict[str, Any]:
        """An ``artifact`` RunEvent for an artifact record (with its Layer or GeoJSON URL)."""
        path = Path(str(record.get("path", "")))
        kind = artifact_event_kind(record)
        artifact_id = int(record.get("id", 0))
        event: dict[str, Any] = {
            "type": "artifact", "step": step, "call_id": call_id, "artifact_id": artifact_id,
            "name": path.name, "kind": kind, "artifact_kind": record.get("kind"),
            "tool": record.get("tool"), "summary": record.get("summary", ""),
            "box_xyxy": list(record["region_xyxy"]) if record.get("region_xyxy") else None,
            "download_url": self.links.download(path),
        }
        if kind == "raster":
            try:
                event["layer"] = self.links.layer(layer_id_for_artifact(self.thread,
                                                                        artifact_id))
            except ApiError as exc:
                event["layer"] = None
                event["layer_error"] = exc.message
        elif kind == "vector":
            event["geojson_url"] = self.links.geojson(self.thread, artifact_id)
            event["properties_hint"] = _properties_hint(path)
        return event

    @staticmethod
    def answer(result: AskResult, text: str) -> dict[str, Any]:
        """The ``answer`` RunEvent at the end of a run (``text``: the answer or the question)."""
        event: dict[str, Any] = {"type": "answer", "step": None, "status": result.status,
                                 "text": text}
        if result.status_reason:
            event["status_reason"] = result.status_reason
        return event


def _tool_status(event: dict[str, Any], tool: str) -> tuple[str, str | None]:
    from zoomearth.graphs.state import DENIED_TEMPLATE

    status = event.get("status")
    if status == "ok" or event.get("ok") is True:
        return "ok", None
    if status is None and str(event.get("text", "")) == DENIED_TEMPLATE.format(tool=tool):
        return "denied", None
    return "failed", str(status or "failed")


def answer_text(result: AskResult) -> str:
    """What the assistant said for a run record: its answer, the approval question, or why not.

    The same words as the chat endpoint's answer, without artifact links (the events carry
    them).
    """
    from zoomearth.server.chat import (
        APPROVAL_TEMPLATE,
        FINISHED_STATUSES,
        NOT_FINISHED_MESSAGE,
        RUN_NOT_CLEAN_TEMPLATE,
    )

    if result.status == "awaiting_approval":
        pending = result.pending_approval[0] if result.pending_approval else {}
        return APPROVAL_TEMPLATE.format(question=pending.get("question", "Run the tool?"))
    if result.status in FINISHED_STATUSES and result.answer:
        text = str(result.answer)
        if result.status != "answered":
            text += "\n\n" + RUN_NOT_CLEAN_TEMPLATE.format(status=result.status,
                                                         reason=result.status_reason)
        return text
    return NOT_FINISHED_MESSAGE


def thread_history(agent: Agent, thread: str, links: Links) -> dict[str, Any] | None:
    """A thread's questions, steps, views, artifacts and pending approval (blocking).

    One run record per question is rebuilt from the newest checkpoint of that question
    (:func:`zoomearth.run_record.ask_result`), so earlier questions keep their own answers.

    Returns:
        ``{"conversation_id", "scene", "messages", "events", "pending_approval"}`` (see
        docs/server.md), or None when the thread does not exist.
    """
    from zoomearth.run_record import ask_result

    config: Any = {"configurable": {"thread_id": thread}}
    current = agent.graph.get_state(config)
    if not current or not current.values:
        return None
    latest_index = int(current.values.get("question_index", 0))
    finished: dict[int, Any] = {}
    newest: dict[int, Any] = {latest_index: current}
    for snap in agent.graph.get_state_history(config):
        values = snap.values or {}
        if "question_index" not in values:
            continue
        qi = int(values["question_index"])
        newest.setdefault(qi, snap)
        if not snap.next and values.get("status") == "answered":
            finished.setdefault(qi, snap)
    run_dir = links.runs_dir / thread
    records_by_id = {int(a["id"]): a for a in current.values.get("artifacts", [])
                     if isinstance(a, dict) and "id" in a}
    messages: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    record: AskResult | None = None
    for qi in sorted(set(newest) | set(finished)):
        chosen = current if qi == latest_index else finished.get(qi, newest.get(qi))
        record = ask_result(chosen, thread, 0.0, lambda: run_dir)
        # Call ids as the stream of that question gave them (counted per question).
        builder = RunEvents(links, thread)
        messages.append({"role": "user", "content": record.question})
        items: list[tuple[int, int, list[dict[str, Any]]]] = []
        for order, zoom in enumerate(record.zooms):
            items.append((zoom.step, order, [builder.view(
                zoom.view_id, zoom.box_xyxy, step=zoom.step, label=zoom.label,
                date=getattr(zoom, "date", None))]))
        for order, call in enumerate(record.tool_calls, start=len(items)):
            status = _CALL_STATUS.get(call["status"], "failed")
            if call["status"] == "pending" and record.status != "awaiting_approval":
                continue  # not run: the run stopped before it
            call_id = builder.closed_id(call["step"], call["name"])
            message = call["result"] or call["error"] or ""
            if status == "needs_approval":
                pending = record.pending_approval[0] if record.pending_approval else {}
                message = str(pending.get("question", ""))
            tool_event: dict[str, Any] = {
                "type": "tool", "step": call["step"], "call_id": call_id, "name": call["name"],
                "status": status, "message": " ".join(str(message).split())[:400],
                "arguments": call["arguments"],
            }
            if status == "failed":
                tool_event["detail"] = call["status"]
            group = [tool_event]
            for artifact_id in call["artifacts"]:
                rec = records_by_id.get(int(artifact_id))
                if rec is not None:
                    group.append(builder.artifact(rec, step=call["step"], call_id=call_id))
            items.append((call["step"], 10_000 + order, group))
        for _step, _order, group in sorted(items, key=lambda it: (it[0], it[1])):
            events.extend(group)
        if record.status != "running":
            text = answer_text(record)
            messages.append({"role": "assistant", "content": text})
            if record.status != "awaiting_approval":
                events.append(RunEvents.answer(record, text))
    pending_approval = None
    if record is not None and record.status == "awaiting_approval" and record.pending_approval:
        head = record.pending_approval[0]
        pending_approval = {"tool": head.get("tool"), "arguments": head.get("arguments") or {},
                            "box_xyxy": head.get("region_xyxy"),
                            "text": answer_text(record)}
    try:
        scene = links.layer(layer_id_for_thread_scene(thread))
    except ApiError as exc:
        log.info("thread %s: no scene layer (%s)", thread, exc.message)
        scene = None
    source = reusable_image_url(current.values.get("scene"), links.tiles.settings)
    return {"conversation_id": thread, "thread_id": thread,
            "status": record.status if record is not None else None, "scene": scene,
            "image_url": source,
            "messages": messages, "events": events, "pending_approval": pending_approval}


def reusable_image_url(scene: Any, settings: Any) -> str | None:
    """How a new thread's first message can name this thread's image, or None.

    A remote image is its URL; a file under ``allowed_roots`` a ``file://`` URL. An uploaded or
    inlined image (a copy in the thread's run folder) cannot be named again: None.
    """
    path = str((scene or {}).get("path") or "") if isinstance(scene, dict) else ""
    if not path:
        return None
    if "://" in path:
        return path
    from zoomearth.tools.paths import PathNotAllowedError, check_allowed_path

    url = Path(path).as_uri()
    try:
        check_allowed_path(url, list(getattr(settings, "allowed_roots", None) or []),
                           purpose="Image path")
    except (PathNotAllowedError, ValueError, OSError):
        return None
    return url
