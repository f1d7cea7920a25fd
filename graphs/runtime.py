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
        """Open a scene and return the small reference stored in state."""
        ref: SceneRef = {
            "path": str(Path(path).expanduser().resolve()),
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

    # -- views ----------------------------------------------------------------------------------
    def render(self, ref: SceneRef, rec: ViewRecord) -> np.ndarray:
        """Pixels of a view: RGB uint8 ``(height, width, 3)``, from the LRU cache or rendered."""
        key = (
            ref["path"],
            tuple(ref["bands"] or ()),
            rec.get("kind"),
            tuple(rec["region_xyxy"]),
            rec["width"],
            rec["height"],
            rec.get("path"),
        )
        with self._lock:
            hit = self._views.get(key)
            if hit is not None:
                self._views.move_to_end(key)
                return hit
        if rec.get("kind") == "preview" and rec.get("path"):
            from PIL import Image

            with Image.open(rec["path"]) as im:
                rgb = np.asarray(im.convert("RGB"))
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
            for scene in self._scenes.values():
                scene.close()
            self._scenes.clear()
            self._views.clear()
