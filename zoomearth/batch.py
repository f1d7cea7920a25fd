"""``zoomearth batch``: answer many questions over many scenes, here or on a Ray cluster.

Input: a JSON Lines file, one question a line (:class:`BatchItem`, JSON Schema
``zoomearth/schemas/batch.schema.json``, :func:`batch_schema`)::

    {"scene": "scene.tif", "question": "what is in the top-right corner?"}
    {"id": "q2", "scene": "s3://bucket/b.tif", "question": "...", "planner": "rules",
     "bands": [4, 3, 2], "max_steps": 4, "settings": {"min_crop": 256}}

A relative ``scene`` is relative to the folder of the questions file. Without ``id`` a line's id
is derived from its scene and question (``q-`` and 12 hex digits of their SHA-256), so it stays the
same when lines are added, removed or reordered; a repeated scene and question gets ``-2``,
``-3`` ...

Output: ``OUT/results.jsonl``, one record per question appended as it finishes (see
:data:`RECORD_KEYS`), and each question's run directory under ``OUT/runs/<id>/``. The status is
honest: ``answered`` only when the agent finished and every tool request succeeded; otherwise the
run's own status (``partial``, ``failed`` ...), ``missing_scene``, ``invalid`` (a line that is not
a valid question; its ``message`` says why) or ``error`` (the scene could not be read, a setting
is invalid ...). Running the same command again resumes: ids whose last record is ``answered`` or
``invalid`` are skipped, the others are asked again; the last record of an id wins
(:func:`zoomearth.eval.runner.load_results`).

Workers: each holds one agent per planner and settings (in-memory checkpoints: resumability comes
from the results file) and answers one question at a time. Locally they are threads
(``workers``, default 1); with ``ray_address`` they are Ray actors, one per CPU of the cluster by
default, run by the evaluation's Ray runner (:func:`zoomearth.eval.runner._on_ray`). Scenes must be
readable from every worker (a shared filesystem or URLs).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from zoomearth.errors import ZoomEarthError

if TYPE_CHECKING:
    from zoomearth.config import Settings

__all__ = [
    "RECORD_KEYS",
    "RESULTS_FILE",
    "BatchItem",
    "BatchRunner",
    "batch_schema",
    "load_batch",
    "run_batch",
]

RESULTS_FILE: Final = "results.jsonl"
SCHEMA_FILE: Final = "schemas/batch.schema.json"
#: Statuses that are final: a resumed batch skips them.
DONE_STATUSES: Final = frozenset({"answered", "invalid"})
RECORD_KEYS: Final[tuple[str, ...]] = (
    "question_id",
    "line",
    "scene",
    "question",
    "status",
    "status_reason",
    "answer",
    "answer_kind",
    "planner",
    "zooms",
    "tools",
    "steps",
    "visual_tokens",
    "seconds",
    "run_dir",
    "message",
)
MISSING_SCENE_TEMPLATE: Final = "scene not found: {path}"
BAD_LINE_TEMPLATE: Final = "line {line}: {reason}"
QUESTIONS_FILE_TEMPLATE: Final = "cannot read the questions file {path}: {reason}."
PLANNERS: Final = ("auto", "transformers", "openai", "rules", "script")
_ID_RE: Final = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
_Bands = Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1, max_length=3)]


class BatchItem(BaseModel):
    """One question of a batch (one line of the questions file)."""

    model_config = ConfigDict(extra="forbid", title="zoomearth batch question")

    scene: Annotated[str, Field(min_length=1)] = Field(
        description="Raster to ask about: a path (relative to the questions file) or a URL"
    )
    question: Annotated[str, Field(min_length=1)] = Field(description="The question or command")
    id: Annotated[str, Field(pattern=_ID_RE)] | None = Field(
        None,
        description="Id of the question in the results (default: from its scene and question); "
        "unique within the file",
    )
    planner: Literal["auto", "transformers", "openai", "rules", "script"] | None = Field(
        None, description="Planner backend for this question (default: the setting planner)"
    )
    bands: _Bands | None = Field(None, description="1-based band mapping shown as RGB (1 or 3)")
    max_steps: Annotated[int, Field(ge=1)] | None = Field(None, description="Step budget")
    max_zooms: Annotated[int, Field(ge=0)] | None = Field(None, description="Zoom budget")
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="Settings for this question (names as in 'zoomearth config'), over the "
        "command's own",
    )


def batch_schema() -> dict[str, Any]:
    """The JSON Schema of one line, as shipped in ``zoomearth/schemas/batch.schema.json``."""
    text = resources.files("zoomearth").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    return json.loads(text)  # type: ignore[no-any-return]


def _auto_id(scene: str, question: str) -> str:
    digest = hashlib.sha256(f"{scene}\n{question}".encode()).hexdigest()
    return f"q-{digest[:12]}"


def load_batch(path: str | Path) -> list[dict[str, Any]]:
    """Read a questions file: one work item per non-empty line, in file order.

    Returns:
        ``{"question_id", "line", "item"}`` dicts; ``item`` is the validated line as a dict, or
        None with ``"message"`` saying why the line is not a question (status ``invalid``).

    Raises:
        ZoomEarthError: The file cannot be read.
    """
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ZoomEarthError(QUESTIONS_FILE_TEMPLATE.format(path=p, reason=exc)) from None
    out: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = BatchItem.model_validate_json(line)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            reason = f"{where}: {first['msg']}" if where else first["msg"]
            out.append(
                {
                    "question_id": f"line-{number}",
                    "line": number,
                    "item": None,
                    "message": BAD_LINE_TEMPLATE.format(line=number, reason=reason),
                }
            )
            continue
        qid = item.id or _auto_id(item.scene, item.question)
        seen[qid] = seen.get(qid, 0) + 1
        if seen[qid] > 1:
            if item.id:  # an explicit id given twice: the later line is refused
                out.append(
                    {
                        "question_id": f"line-{number}",
                        "line": number,
                        "item": None,
                        "message": BAD_LINE_TEMPLATE.format(
                            line=number, reason=f"id {qid!r} is used by an earlier line"
                        ),
                    }
                )
                continue
            qid = f"{qid}-{seen[qid]}"
        out.append({"question_id": qid, "line": number, "item": item.model_dump(mode="json")})
    return out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80] or "q"


def _base_record(work: dict[str, Any]) -> dict[str, Any]:
    item = work.get("item") or {}
    rec: dict[str, Any] = dict.fromkeys(RECORD_KEYS)
    rec.update(
        question_id=work["question_id"],
        line=work["line"],
        scene=item.get("scene"),
        question=item.get("question"),
        status="",
        zooms=[],
        tools=[],
        steps=0,
        visual_tokens=0,
        seconds=0.0,
        message=work.get("message"),
    )
    return rec


class BatchRunner:
    """One worker: answers batch questions one at a time, one agent per planner and settings.

    Args:
        settings: The command's settings (a line's ``settings`` and ``planner`` go over them).
        out_dir: Output folder (run directories go to ``<out>/runs/<id>``).
        base_dir: Folder relative scene paths are relative to (the questions file's).
        planner: Default planner backend (None: the setting ``planner``).
        planner_factory: Builds the planner instead of the backend (tests): ``f(settings)``.
    """

    def __init__(
        self,
        settings: Settings,
        out_dir: str | Path,
        base_dir: str | Path,
        planner: str | None = None,
        planner_factory: Callable[[Settings], Any] | None = None,
    ) -> None:
        self.settings = settings
        self.out_dir = Path(out_dir)
        self.base_dir = Path(base_dir)
        self.planner = planner
        self._factory = planner_factory
        self._agents: dict[str, Any] = {}

    def _agent(self, item: dict[str, Any]) -> Any:
        from langgraph.checkpoint.memory import InMemorySaver

        from zoomearth.api import Agent
        from zoomearth.config import Settings

        overrides = dict(item.get("settings") or {})
        planner = item.get("planner") or self.planner
        if planner:
            overrides["planner"] = planner
        key = json.dumps(overrides, sort_keys=True, default=str)
        agent = self._agents.get(key)
        if agent is None:
            settings = (
                Settings.model_validate({**self.settings.model_dump(), **overrides})
                if overrides
                else self.settings
            )
            made = self._factory(settings) if self._factory is not None else None
            agent = Agent(
                settings,
                planner=made if made is not None else settings.planner,
                checkpointer=InMemorySaver(),
                auto_approve=True,
            )
            self._agents[key] = agent
        return agent

    def _scene(self, scene: str) -> tuple[str, bool]:
        if "://" in scene:
            return scene, True
        path = Path(scene).expanduser()
        if not path.is_absolute():
            path = self.base_dir / path
        return str(path), path.exists()

    def run(self, work: dict[str, Any]) -> dict[str, Any]:
        """Answer one work item of :func:`load_batch` and return its record.

        Never raises for bad input: the record's status and message say what went wrong.
        """
        rec = _base_record(work)
        item = work.get("item")
        if item is None:
            rec["status"] = "invalid"
            return rec
        scene, found = self._scene(item["scene"])
        if not found:
            rec.update(status="missing_scene", message=MISSING_SCENE_TEMPLATE.format(path=scene))
            return rec
        t0 = time.perf_counter()
        try:
            agent = self._agent(item)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            rec.update(status="error", message=f"settings.{where}: {first['msg']}")
            return rec
        except ZoomEarthError as exc:
            rec.update(status="error", message=str(exc).splitlines()[0])
            return rec
        run_dir = self.out_dir / "runs" / _safe(work["question_id"])
        try:
            result = agent.ask(
                scene,
                item["question"],
                thread=None,  # a new thread per question (its id from the scene and question)
                question_id=work["question_id"],
                run_dir=run_dir,
                bands=item.get("bands"),
                max_steps=item.get("max_steps"),
                max_zooms=item.get("max_zooms"),
            )
        except ZoomEarthError as exc:
            rec.update(
                status="error",
                message=str(exc).splitlines()[0],
                seconds=round(time.perf_counter() - t0, 3),
            )
            return rec
        finally:
            delete = getattr(agent.checkpointer, "delete_thread", None)
            if callable(delete) and agent.current_thread:
                delete(agent.current_thread)
        rec.update(
            status=result.status,
            status_reason=result.status_reason or None,
            answer=result.answer,
            answer_kind=result.answer_kind,
            planner=result.planner,
            zooms=[list(z.box_xyxy) for z in result.zooms],
            tools=[t.get("name") for t in result.tool_calls],
            steps=len(result.steps),
            visual_tokens=int(result.visual_tokens),
            seconds=round(result.seconds, 3),
            run_dir=str(result.run_dir or run_dir),
        )
        return rec

    def close(self) -> None:
        """Release the agents (scenes, planners)."""
        for agent in self._agents.values():
            agent.close()
        self._agents.clear()


class _RayBatchBody:
    """The body of a Ray actor: one :class:`BatchRunner` per actor."""

    def __init__(self, kwargs: dict[str, Any]) -> None:
        self.runner = BatchRunner(**kwargs)

    def run(self, work: dict[str, Any]) -> dict[str, Any]:
        return self.runner.run(work)


def run_batch(
    questions: str | Path,
    *,
    settings: Settings,
    out_dir: str | Path,
    planner: str | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
    progress: bool | None = None,
    planner_factory: Callable[[Settings], Any] | None = None,
) -> list[dict[str, Any]]:
    """Answer the questions of a questions file not yet done in ``out_dir``; return all records.

    Args:
        questions: The JSON Lines file (see the module docstring).
        settings: Effective settings.
        out_dir: Output folder; ``results.jsonl`` there is appended to and read back.
        planner: Default planner backend (a line's ``planner`` wins; None: the setting).
        workers: Local threads (default 1) or Ray actors (default: one per cluster CPU, or per
            GPU when the planner needs one).
        ray_address: Run on Ray: ``local`` (start one here), ``auto``, ``HOST:PORT`` or
            ``ray://HOST:10001``; an initialised Ray is used as is.
        progress: Progress bar (None: on a terminal only).
        planner_factory: Local runs only: builds each agent's planner from its settings (tests).

    Returns:
        The record of every question in file order (questions never run are absent).
    """
    from zoomearth.eval.runner import _inprocess, _on_ray, append_records, load_results

    qpath = Path(questions)
    work = load_batch(qpath)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / RESULTS_FILE
    done = load_results(results_path)
    todo = [w for w in work if done.get(w["question_id"], {}).get("status") not in DONE_STATUSES]
    kwargs: dict[str, Any] = {
        "settings": settings,
        "out_dir": str(out.resolve()),
        "base_dir": str(qpath.resolve().parent),
        "planner": planner or settings.planner,
    }
    if todo:
        stream: Iterable[dict[str, Any]]
        if ray_address:
            stream = _on_ray(
                todo, workers, ray_address, kwargs, None, body=_RayBatchBody, payload=lambda w: w
            )
        else:
            stream = _inprocess(
                todo,  # type: ignore[arg-type]
                workers or 1,
                lambda: BatchRunner(**kwargs, planner_factory=planner_factory),  # type: ignore[arg-type,return-value]
            )
        append_records(stream, results_path, done, len(todo), f"batch {qpath.name}", progress)
    return [done[w["question_id"]] for w in work if w["question_id"] in done]
