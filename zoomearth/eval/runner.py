"""Run benchmark questions through the real agent: in-process worker pool or a Ray cluster.

Every question goes through the same graph as ``zoomearth ask`` with any planner backend (or a
baseline of :mod:`zoomearth.eval.baselines`). Each worker owns one planner and one
:class:`~zoomearth.api.Agent` (in-memory checkpoints: resumability comes from the results file).
Results are appended, one JSON record per question, to ``<out>/results.jsonl`` as they finish; a
run started again on the same folder skips the ids already answered (or unsupported) and retries
the others (missing image, error). The last record of an id wins.

A record keeps the reference implementation's keys (``question_id``, ``ground_truth``,
``answer1``, ``answer2``, ``bbox_ref``, ``bbox``, ``prompt``, ``category``, ``type``, ``image``,
``error``, ``model_id``) so results compare directly, plus ours (see :data:`RECORD_KEYS`).
Frames: ``bbox_ref`` is the record's box as given (LRS-GRO: long side 1024), ``bbox_ref_full``
that box in full-resolution pixels, ``bbox`` the crop of every zoom in full-resolution pixels
(after the minimum-crop rule). As in the reference, ``answer2`` is None when no zoom happened and
``error`` is True when the run made no crop.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from zoomearth.errors import ZoomEarthError
from zoomearth.eval.questions import Question

if TYPE_CHECKING:
    from zoomearth.config import Settings

__all__ = [
    "RECORD_KEYS",
    "RESULTS_FILE",
    "QuestionRunner",
    "apo_iou",
    "load_results",
    "run_eval",
]

RESULTS_FILE: Final = "results.jsonl"
#: Statuses of finished questions (skipped on resume); others are retried.
DONE_STATUSES: Final = frozenset({"answered", "unsupported"})
RECORD_KEYS: Final[tuple[str, ...]] = (
    "question_id",
    "benchmark",
    "status",
    "ground_truth",
    "answer1",
    "answer2",
    "answer_kind",
    "bbox_ref",
    "bbox_ref_full",
    "bbox",
    "apo_iou",
    "prompt",
    "question",
    "choices",
    "category",
    "type",
    "level",
    "image",
    "images",
    "width",
    "height",
    "error",
    "model_id",
    "planner",
    "tools",
    "visual_tokens",
    "seconds",
    "steps",
    "message",
)
UNSUPPORTED_TEMPLATE: Final = (
    "{n} images per question (change detection); the agent takes one image per question"
)
MISSING_IMAGE_TEMPLATE: Final = "image not found: tried {tried}"
RAY_MISSING_TEMPLATE: Final = (
    "--ray needs Ray, which is not installed: pip install 'zoomearth[dist]' (or 'ray>=2.40')."
)


def apo_iou(
    crop_xyxy: Sequence[float] | None,
    box_full_xyxy: Sequence[float],
    width: int,
    height: int,
    min_crop: int = 512,
) -> float:
    """APO IoU: IoU of a crop and a ground-truth box, both expanded to the minimum crop.

    Both boxes go through the zoom's own rule (:func:`zoomearth.geometry.min_crop_xyxy`, snapped
    outwards to whole pixels and clipped), so a zoom to exactly the ground-truth box scores 1.0.

    Args:
        crop_xyxy: The first zoom's crop in full-resolution pixels; None (no zoom) scores 0.
        box_full_xyxy: The ground-truth box in full-resolution pixels.
        width: Image width in pixels.
        height: Image height in pixels.
        min_crop: Minimum crop side (the ``min_crop`` setting, 512 as in the reference).

    Returns:
        The IoU in [0, 1].
    """
    from zoomearth.geometry import PixelBox, min_crop_xyxy

    if crop_xyxy is None:
        return 0.0

    def expand(box: Sequence[float]) -> PixelBox:
        clipped = PixelBox(*map(float, box)).clip(width, height)
        return min_crop_xyxy(clipped, width, height, min_crop).snap_out().clip(width, height)

    return expand(crop_xyxy).iou(expand(box_full_xyxy))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80] or "q"


def resolve_image(images_dir: Path, name: str) -> tuple[Path | None, list[str]]:
    """Find a record's image: ``images_dir/name``, then ``images_dir/<basename>``.

    Returns:
        ``(path or None, the paths tried)``.
    """
    tried = []
    for cand in (images_dir / name, images_dir / Path(name).name):
        if str(cand) in tried:
            continue
        tried.append(str(cand))
        if cand.is_file():
            return cand, tried
    return None, tried


def _base_record(q: Question) -> dict[str, Any]:
    return {
        "question_id": q.question_id,
        "benchmark": q.benchmark,
        "status": "",
        "ground_truth": q.ground_truth,
        "answer1": None,
        "answer2": None,
        "answer_kind": None,
        "bbox_ref": q.box_ref if q.box_ref is not None else [],
        "bbox_ref_full": None,
        "bbox": [],
        "apo_iou": None,
        "prompt": q.prompt,
        "question": q.question,
        "choices": q.choices,
        "category": q.category,
        "type": q.type,
        "level": q.level,
        "image": q.images[0] if len(q.images) == 1 else q.images,
        "images": q.images,
        "width": None,
        "height": None,
        "error": True,
        "model_id": "",
        "planner": "",
        "tools": [],
        "visual_tokens": 0,
        "seconds": 0.0,
        "steps": 0,
        "message": None,
    }


class QuestionRunner:
    """One worker: a planner and an agent, answering questions one at a time.

    Args:
        settings: Effective settings (the agent's budgets, ``min_crop`` ...).
        planner: Planner name for :func:`~zoomearth.eval.baselines.make_eval_planner`.
        images_dir: Folder the records' image names are relative to.
        out_dir: Output folder (run directories go to ``<out>/runs/<question id>``).
        inner: The wrapped backend for the ``oracle`` / ``no-zoom`` baselines.
        planner_factory: Builds the planner instead of ``make_eval_planner`` (tests, custom
            backends); must return a new planner each call.
    """

    def __init__(
        self,
        settings: Settings,
        planner: str,
        images_dir: str | Path,
        out_dir: str | Path,
        *,
        inner: str | None = None,
        planner_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.settings = settings
        self.planner_name = planner
        self.inner = inner
        self.images_dir = Path(images_dir)
        self.out_dir = Path(out_dir)
        self._factory = planner_factory
        self._agent: Any = None

    def _get_agent(self) -> Any:
        if self._agent is None:
            from langgraph.checkpoint.memory import InMemorySaver

            from zoomearth.api import Agent
            from zoomearth.eval.baselines import make_eval_planner

            planner = (
                self._factory()
                if self._factory is not None
                else make_eval_planner(self.planner_name, self.settings, inner=self.inner)
            )
            self._agent = Agent(
                self.settings, planner=planner, checkpointer=InMemorySaver(), auto_approve=True
            )
        return self._agent

    def run(self, q: Question) -> dict[str, Any]:
        """Answer one question; returns its record (never raises for an unreadable image).

        Raises:
            Exception: Anything that is not a :class:`~zoomearth.errors.ZoomEarthError` (a bug).
        """
        from zoomearth.eval.baselines import select_question

        rec = _base_record(q)
        if not q.supported:
            rec.update(status="unsupported", message=UNSUPPORTED_TEMPLATE.format(n=len(q.images)))
            return rec
        path, tried = resolve_image(self.images_dir, q.images[0])
        if path is None:
            rec.update(
                status="missing_image",
                message=MISSING_IMAGE_TEMPLATE.format(tried=", ".join(tried)),
            )
            return rec
        agent = self._get_agent()
        thread = f"eval-{_safe(q.question_id)}-{uuid.uuid4().hex[:8]}"
        t0 = time.perf_counter()
        try:
            ref = agent.runtime.scene_ref(path)
            width, height = int(ref["width"]), int(ref["height"])
            rec.update(width=width, height=height)
            gt = q.box_full(width, height)
            rec["bbox_ref_full"] = gt
            select_question(agent.planner, q.question_id, gt)
            rec["planner"] = rec["model_id"] = agent.planner.describe()
            result = agent.ask(
                path,
                q.prompt,
                question_id=q.question_id,
                thread=thread,
                run_dir=self.out_dir / "runs" / _safe(q.question_id),
            )
        except ZoomEarthError as exc:
            rec.update(status="error", message=str(exc), seconds=round(time.perf_counter() - t0, 3))
            return rec
        finally:
            delete = getattr(agent.checkpointer, "delete_thread", None)
            if callable(delete):
                delete(thread)
        zooms = [list(z.box_xyxy) for z in result.zooms]
        first_zoom_step = next((s for s in result.steps if s.get("zooms")), None)
        if result.profile == "zoomearth":
            # As the reference records them: each stage's <answer> read with the reference's
            # reader, None when the stage wrote none (no best-effort text in their place).
            stages = {s.get("stage"): s for s in result.steps}
            answer1 = stages.get(1, {}).get("stage_answer")
            answer2 = stages[2].get("answer") if 2 in stages else None
        elif first_zoom_step is None:
            answer1, answer2 = result.answer, None
        else:
            answer1, answer2 = first_zoom_step.get("stage_answer"), result.answer
        rec.update(
            status="answered" if result.status == "answered" else result.status,
            answer1=answer1,
            answer2=answer2,
            answer_kind=result.answer_kind,
            bbox=zooms,
            error=not zooms,
            apo_iou=None
            if gt is None
            else round(
                apo_iou(zooms[0] if zooms else None, gt, width, height, self.settings.min_crop), 6
            ),
            tools=[t.get("name") for t in result.tool_calls],
            visual_tokens=int(result.visual_tokens),
            seconds=round(result.seconds, 3),
            steps=len(result.steps),
        )
        return rec

    def close(self) -> None:
        """Release the agent (scenes, planner)."""
        if self._agent is not None:
            self._agent.close()
            self._agent = None


class _RayWorkerBody:
    """The body of a Ray actor: one :class:`QuestionRunner` per actor."""

    def __init__(self, kwargs: dict[str, Any]) -> None:
        self.runner = QuestionRunner(**kwargs)

    def run(self, question: dict[str, Any]) -> dict[str, Any]:
        return self.runner.run(Question.model_validate(question))


def load_results(path: str | Path) -> dict[str, dict[str, Any]]:
    """Records of a results file by question id (the last record of an id wins).

    A truncated last line (a killed run) is ignored.
    """
    out: dict[str, dict[str, Any]] = {}
    p = Path(path)
    if not p.is_file():
        return out
    for line in p.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "question_id" in rec:
            out[str(rec["question_id"])] = rec
    return out


def append_records(
    stream: Iterable[dict[str, Any]],
    results_path: Path,
    done: dict[str, dict[str, Any]],
    total: int,
    desc: str,
    progress: bool | None,
) -> None:
    """Append each record of ``stream`` to the JSONL results file as it arrives (flushed).

    One line per finished question, written at once, is what makes a run resumable after an
    interruption; ``done`` (question id -> record) is updated in place.
    """
    bar = _progress(total, desc, progress)
    try:
        with results_path.open("a", encoding="utf-8") as fh:
            for rec in stream:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                fh.flush()
                done[str(rec["question_id"])] = rec
                bar.update(1)
    finally:
        bar.close()


def _progress(total: int, desc: str, enabled: bool | None) -> Any:
    from tqdm.auto import tqdm

    # disable=None: shown on a terminal only; the bar's right side shows the ETA.
    return tqdm(
        total=total,
        desc=desc,
        unit="q",
        disable=None if enabled is None else not enabled,
        smoothing=0.1,
        dynamic_ncols=True,
    )


def _inprocess(
    todo: list[Question], workers: int, make_runner: Callable[[], QuestionRunner]
) -> Iterator[dict[str, Any]]:
    local = threading.local()
    runners: list[QuestionRunner] = []
    lock = threading.Lock()

    def run_one(q: Question) -> dict[str, Any]:
        runner = getattr(local, "runner", None)
        if runner is None:
            runner = local.runner = make_runner()
            with lock:
                runners.append(runner)
        return runner.run(q)

    try:
        if workers <= 1:
            for q in todo:
                yield run_one(q)
            return
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="eval") as pool:
            futures = [pool.submit(run_one, q) for q in todo]
            try:
                for fut in as_completed(futures):
                    yield fut.result()
            finally:
                for fut in futures:
                    fut.cancel()
    finally:
        for runner in runners:
            runner.close()


def _ray_resources(
    ray: Any, planner: str, inner: str | None, settings: Settings, gpus_per_worker: float | None
) -> float:
    if gpus_per_worker is not None:
        return float(gpus_per_worker)
    backend = (inner or settings.planner) if planner in ("oracle", "no-zoom") else planner
    if backend == "auto":
        from zoomearth.agent.backends import resolve_backend

        backend = resolve_backend(settings)[0]
    gpus = float(ray.cluster_resources().get("GPU", 0.0))
    return 1.0 if backend == "transformers" and gpus >= 1 else 0.0


def _on_ray(
    todo: Sequence[Any],
    workers: int | None,
    address: str,
    kwargs: dict[str, Any],
    gpus_per_worker: float | None,
    *,
    body: type = _RayWorkerBody,
    payload: Callable[[Any], Any] = lambda q: q.model_dump(mode="json"),
) -> Iterator[dict[str, Any]]:
    """Run ``body(kwargs).run(payload(item))`` for every item on a pool of Ray actors.

    Also the Ray runner of ``zoomearth batch`` (:mod:`zoomearth.batch`), with its own ``body``.
    """
    try:
        import ray
        from ray.util import ActorPool
    except ImportError:
        raise ZoomEarthError(RAY_MISSING_TEMPLATE) from None
    started = False
    if not ray.is_initialized():
        if address in ("", "local"):
            ray.init(include_dashboard=False, log_to_driver=False)
        else:  # connecting to a cluster: its resources and dashboard are its own
            ray.init(address=address, log_to_driver=False)
        started = True
    try:
        gpus = _ray_resources(
            ray, kwargs["planner"], kwargs.get("inner"), kwargs["settings"], gpus_per_worker
        )
        if workers is None:
            res = ray.cluster_resources()
            workers = int(res.get("GPU", 1)) if gpus > 0 else max(1, int(res.get("CPU", 1)))
        actor_cls: Any = ray.remote(body).options(num_cpus=1, num_gpus=gpus)
        count = max(1, min(workers, len(todo)))
        actors: list[Any] = [actor_cls.remote(kwargs) for _ in range(count)]
        try:
            pool = ActorPool(actors)
            yield from pool.map_unordered(lambda actor, q: actor.run.remote(payload(q)), list(todo))
        finally:
            for actor in actors:
                ray.kill(actor)
    finally:
        if started:
            ray.shutdown()


def run_eval(
    questions: Iterable[Question],
    *,
    settings: Settings,
    planner: str,
    images_dir: str | Path,
    out_dir: str | Path,
    inner: str | None = None,
    limit: int | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
    gpus_per_worker: float | None = None,
    progress: bool | None = None,
    planner_factory: Callable[[], Any] | None = None,
) -> list[dict[str, Any]]:
    """Answer the questions not yet done in ``out_dir`` and return every record, in file order.

    Args:
        questions: The benchmark questions (file order).
        settings: Effective settings.
        planner: Planner name (a backend or a baseline, see ``EVAL_PLANNERS``).
        images_dir: Folder of the images.
        out_dir: Output folder; ``results.jsonl`` there is appended to and read back.
        inner: Inner backend of the ``oracle`` / ``no-zoom`` baselines.
        limit: Only the first ``limit`` questions.
        workers: In-process threads (default 1) or Ray actors (default: one per GPU when the
            planner needs one, else one per CPU of the cluster).
        ray_address: Run on Ray: ``auto``, ``ray://host:10001``, ``local`` (start one here); an
            already initialised Ray is used as is.
        gpus_per_worker: GPUs per Ray actor (default: 1 for the ``transformers`` backend when the
            cluster has GPUs, else 0).
        progress: Progress bar (None: on a terminal only).
        planner_factory: In-process only: builds each worker's planner (tests, custom backends).

    Returns:
        Records of the (limited) questions, in question order; questions never run are absent.
    """
    qs = list(questions)
    if limit is not None:
        qs = qs[: max(0, limit)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / RESULTS_FILE
    done = load_results(results_path)
    todo = [q for q in qs if done.get(q.question_id, {}).get("status") not in DONE_STATUSES]
    kwargs: dict[str, Any] = {
        "settings": settings,
        "planner": planner,
        "images_dir": str(images_dir),
        "out_dir": str(out),
        "inner": inner,
    }
    if todo:
        if ray_address:
            stream = _on_ray(todo, workers, ray_address, kwargs, gpus_per_worker)
        else:
            stream = _inprocess(
                todo,
                workers or 1,
                lambda: QuestionRunner(**kwargs, planner_factory=planner_factory),
            )
        append_records(stream, results_path, done, len(todo),
                       f"{qs[0].benchmark} ({planner})", progress)
    return [done[q.question_id] for q in qs if q.question_id in done]
