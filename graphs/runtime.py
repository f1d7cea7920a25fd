"""Per-process resources of a running graph: open scenes, the view pixel cache, run directories.

None of this is graph state (it is not checkpointed): it can always be rebuilt from the state's
references. :class:`GraphRuntime` is created once per process (CLI run, server, Studio) and shared
by the nodes through the graph factory's closure.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from zoomearth.geometry import PixelBox, ViewSpec

if TYPE_CHECKING:
    from zoomearth.config import Settings
    from zoomearth.graphs.state import SceneRef, ViewRecord
    from zoomearth.scene import Scene
    from zoomearth.scene.stack import SceneStack

__all__ = ["GraphRuntime", "view_spec_of"]

ProgressFn = Callable[[dict[str, Any]], None]


def _stream_writer() -> Callable[[Any], None] | None:
    """LangGraph's custom-stream writer of the run executing this code, or None outside one."""
    try:
        from langgraph.config import get_stream_writer

        return get_stream_writer()
    except Exception:  # noqa: BLE001 - not inside a runnable context
        return None


def _current_thread_id() -> str | None:
    """The thread id of the graph run executing this code, or None outside one."""
    try:
        from langgraph.config import get_config

        return str(get_config()["configurable"]["thread_id"])
    except Exception:  # noqa: BLE001 - not inside a runnable context
        return None


def view_spec_of(rec: ViewRecord) -> ViewSpec:
    """The :class:`ViewSpec` of a stored view record."""
    x1, y1, x2, y2 = rec["region_xyxy"]
    return ViewSpec(
        int(rec["view_id"]), PixelBox(x1, y1, x2, y2), int(rec["width"]), int(rec["height"])
    )


@dataclass
class GraphRuntime:
    """Shared, non-checkpointed resources.

    Attributes:
        settings: Effective settings.
        pool: The model pool tools and planners use (None = the process default, on demand).
        auto_approve: Run approval-gated tools without asking.
        strict: Re-raise tool failures instead of recording them (tests, ``--strict``).
        on_event: Optional callback receiving progress events (CLI live display, server stream).
        max_cached_views: Size of the rendered-view LRU cache.
        max_open_scenes: Scenes kept open (least recently used closed first).
    """

    settings: Settings
    pool: Any = None
    auto_approve: bool = False
    strict: bool = False
    on_event: ProgressFn | None = None
    max_cached_views: int = 16
    max_open_scenes: int = 32
    _scenes: OrderedDict[tuple[str, tuple[int, ...] | None], Scene] = field(
        default_factory=OrderedDict
    )
    _views: OrderedDict[tuple[Any, ...], np.ndarray] = field(default_factory=OrderedDict)
    _stacks: OrderedDict[tuple[Any, ...], SceneStack] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- scenes ---------------------------------------------------------------------------------
    def scene(self, ref: SceneRef) -> Scene:
        """The open :class:`Scene` for a reference (opened once per process)."""
        from zoomearth.scene import Scene

        bands = ref.get("bands")
        key = (ref["path"], tuple(bands) if bands else None)
        with self._lock:
            scene = self._scenes.get(key)
            if scene is None:
                scene = Scene.open(
                    ref["path"],
                    bands=key[1],
                    settings=self.settings,
                    progress=self._prepare_progress(ref["path"]),
                )
                self._scenes[key] = scene
                # A long-running server sees many uploads: keep a bounded set of open scenes.
                while len(self._scenes) > self.max_open_scenes:
                    _, old = self._scenes.popitem(last=False)
                    old.close()
            else:
                self._scenes.move_to_end(key)
            return scene

    def _prepare_progress(self, path: str) -> Callable[[int, int, str], None]:
        """How a scene reports building its prepared copy (a one-time, possibly long step).

        The scene is opened once per process, but its copy is built lazily, inside whichever run
        first reads its pixels, so where the report goes is decided at each call: inside a graph
        run (or with ``on_event``) as ``prepare`` events
        ``{"event": "prepare", "scene": FILE NAME, "done": d, "total": t, "message": text}``
        (at least once a second; ``done`` of ``total`` progress units, see
        :func:`zoomearth.scene.cache.build_tiled_copy`), else as two lines on stderr. A pending
        cancellation of the run's thread raises
        :class:`~zoomearth.errors.ScenePrepareCancelled`, which stops the preparation worker.
        """
        name = Path(path).name
        announced: list[bool] = []

        def progress(done: int, total: int, message: str) -> None:
            event = {
                "event": "prepare",
                "scene": name,
                "done": int(done),
                "total": int(total),
                "message": message,
            }
            if not self.emit(event):
                if not announced:
                    announced.append(True)
                    print(f"Preparing a tiled copy of {name} (one-time) ...", file=sys.stderr,
                          flush=True)
                elif total and done >= total:
                    print(f"Prepared {name}.", file=sys.stderr, flush=True)
            thread = _current_thread_id()
            if thread is not None:
                from zoomearth.errors import ScenePrepareCancelled
                from zoomearth.graphs.tool_node import thread_cancelled

                if thread_cancelled(thread):
                    raise ScenePrepareCancelled(
                        f"Preparing {name} was cancelled with the run; nothing was kept."
                    )

        return progress

    def scene_ref(self, path: str | Path, bands: list[int] | None = None) -> SceneRef:
        """Open a scene and return the small reference stored in state.

        ``path`` is a local raster or the URL of a remote one (``https://``, ``s3://``): the
        reference keeps the absolute path, or the URL as given (never through ``Path``, which
        would collapse its ``//``).
        """
        from zoomearth.scene.remote import source_key

        ref: SceneRef = {
            "path": source_key(path),
            "bands": list(bands) if bands else None,
            "width": 0,
            "height": 0,
            "crs": None,
            "transform": None,
        }
        scene = self.scene(ref)
        scene.band_mapping()  # fail early on an ambiguous band layout
        ref.update(
            {
                "width": scene.width,
                "height": scene.height,
                "crs": scene.crs_string,
                "transform": list(scene.transform)[:6] if scene.georeferenced else None,
            }
        )
        return ref

    # -- time stacks ----------------------------------------------------------------------------
    @staticmethod
    def _stack_key(ref: SceneRef) -> tuple[Any, ...]:
        dates = ref.get("stack") or []
        return (
            ref["path"],
            tuple(ref.get("bands") or ()),
            int(ref.get("stack_reference", 0)),
            tuple((d["label"], d["source"]) for d in dates),
        )

    def attach_stack(self, ref: SceneRef, stack: SceneStack) -> SceneRef:
        """Record a time stack in a scene reference (its dates and reference index).

        ``ref`` must be the reference of the stack's reference date (:meth:`scene_ref` of its
        source). Only the dates are recorded: :meth:`stack` rebuilds the stack on this runtime's
        open scene (so the band mapping and handles are shared), other dates open lazily.
        """
        record = stack.describe()
        out: SceneRef = {
            **ref,
            "stack": record["dates"],
            "stack_reference": record["reference_index"],
        }
        return out

    def stack(self, ref: SceneRef) -> SceneStack | None:
        """The :class:`~zoomearth.scene.stack.SceneStack` of a reference; None for one date.

        Opened once per process (the other dates lazily, on their first read); its reference is
        :meth:`scene` of ``ref``, so a stack shares the scene's handle and band mapping.
        """
        if not ref.get("stack"):
            return None
        from zoomearth.scene.stack import SceneStack, StackDate

        key = self._stack_key(ref)
        with self._lock:
            found = self._stacks.get(key)
            if found is not None:
                self._stacks.move_to_end(key)
                return found
        scene = self.scene(ref)
        stack = SceneStack(
            scene,
            [StackDate.from_dict(d) for d in ref.get("stack") or []],
            int(ref.get("stack_reference", 0)),
            settings=self.settings,
            bands=ref.get("bands"),
        )
        with self._lock:
            found = self._stacks.setdefault(key, stack)
            while len(self._stacks) > self.max_open_scenes:
                _, old = self._stacks.popitem(last=False)
                old.close()
            return found

    def date_index(self, ref: SceneRef, label: str | None) -> int | None:
        """Index of the stack date ``label`` names; None for a one-date scene or no label."""
        stack = self.stack(ref) if label else None
        if stack is None or label is None:
            return None
        return stack.index_of(label)

    # -- views ----------------------------------------------------------------------------------
    def render(self, ref: SceneRef, rec: ViewRecord) -> np.ndarray:
        """Pixels of a view: RGB uint8 ``(height, width, 3)``, from the LRU cache or rendered.

        A view of a time stack's date (``rec["date"]``) other than the reference is rendered on
        the reference grid from that date (:meth:`SceneStack.render`).
        """
        key = (
            ref["path"],
            tuple(ref["bands"] or ()),
            rec.get("kind"),
            tuple(rec["region_xyxy"]),
            rec["width"],
            rec["height"],
            rec.get("path"),
            rec.get("date"),
        )
        with self._lock:
            hit = self._views.get(key)
            if hit is not None:
                self._views.move_to_end(key)
                return hit
        date = self.date_index(ref, rec.get("date")) if rec.get("kind") != "preview" else None
        if rec.get("kind") == "preview" and rec.get("path"):
            from PIL import Image

            with Image.open(rec["path"]) as im:
                rgb = np.asarray(im.convert("RGB"))
        elif date is not None and date != int(ref.get("stack_reference", 0)):
            rgb = self._render_date(ref, rec, date)
        elif rec.get("render") == "reference":
            rgb = self._render_reference(ref, rec)
        else:
            spec = view_spec_of(rec)
            view = self.scene(ref).render(spec.region, max_side=max(spec.width, spec.height))
            rgb = view.rgb
        with self._lock:
            self._views[key] = rgb
            while len(self._views) > self.max_cached_views:
                self._views.popitem(last=False)
        return rgb

    def _render_date(self, ref: SceneRef, rec: ViewRecord, index: int) -> np.ndarray:
        """A view of stack date ``index`` at exactly the record's size (reference grid)."""
        stack = self.stack(ref)
        assert stack is not None
        spec = view_spec_of(rec)
        view = stack.render(index, spec.region, max(spec.width, spec.height))
        rgb = view.rgb
        if rgb.shape[:2] != (spec.height, spec.width):
            # zoomearth-profile views have the reference's own sizes (PIL bicubic, int() sides).
            from PIL import Image

            rgb = np.asarray(
                Image.fromarray(rgb).resize((spec.width, spec.height), Image.Resampling.BICUBIC)
            )
        return rgb

    def _render_reference(self, ref: SceneRef, rec: ViewRecord) -> np.ndarray:
        """A view rendered as the ZoomEarth reference renders it (``zoomearth`` profile).

        The overview is PIL bicubic to long side 512 over every pixel (streamed) when the image has
        at most ``zoomearth_exact_overview_max_pixels`` pixels, else from an internal overview
        level; a zoom is the exact window (zero-padded outside the image) resized the same way.
        """
        from zoomearth.scene.reference import render_reference_crop, render_reference_overview

        scene = self.scene(ref)
        if rec.get("kind") == "overview":
            rgb, exact = render_reference_overview(
                scene, exact_max_pixels=self.settings.zoomearth_exact_overview_max_pixels
            )
            if not exact:
                self.emit(
                    {
                        "event": "note",
                        "text": "overview resampled from an internal overview level (the image "
                        "is above zoomearth_exact_overview_max_pixels); see docs/reproduce.md",
                    }
                )
            return rgb
        x1, y1, x2, y2 = (int(v) for v in rec["region_xyxy"])
        return render_reference_crop(scene, (x1, y1, x2, y2))

    # -- runs -----------------------------------------------------------------------------------
    def run_dir(self, thread_id: str, override: str | Path | None = None) -> Path:
        """The run directory of a thread (created on demand), always an absolute path.

        Args:
            thread_id: The thread (names the default directory ``runs_dir/<thread>``).
            override: A directory given by the caller (``--out``); relative to the current
                directory.

        Returns:
            The absolute directory (``~`` expanded, symlinks resolved): it is stored in the
            thread's state and joined to artifact names, so it must not depend on the working
            directory of later code.
        """
        from zoomearth.tools.base import absolute_dir

        if override:
            path = absolute_dir(override)
        else:
            assert self.settings.runs_dir is not None
            path = absolute_dir(Path(self.settings.runs_dir) / thread_id)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def emit(self, event: dict[str, Any]) -> bool:
        """Send a progress event to the run's stream (or ``on_event``); False if nobody listens.

        Inside a graph run the event goes on LangGraph's custom stream, which the facade forwards
        to its ``on_event`` (CLI live display, server stream); outside a run (direct calls) it
        goes to this runtime's ``on_event``, if any.
        """
        writer = _stream_writer()
        if writer is not None:
            writer(event)
            return True
        if self.on_event is not None:
            self.on_event(event)
            return True
        return False

    def close(self) -> None:
        """Close open scenes and drop cached pixels."""
        with self._lock:
            for stack in self._stacks.values():
                stack.close()
            self._stacks.clear()
            for scene in self._scenes.values():
                scene.close()
            self._scenes.clear()
            self._views.clear()
