"""One question model for four benchmarks, and their loaders.

=====================  ======================================================================
benchmark              record fields read (JSONL, or a JSON list)
=====================  ======================================================================
``lrs-gro``            ``question_id``, ``image_name``, ``question``, ``ground_truth``, ``bbox``
                       (``[]`` or xyxy in the **long-side-1024 frame**), ``type``,
                       ``higher_level``, ``category``
``lrs-vqa``            ``question_id`` (source prefix before ``_``), ``image``, ``text``,
                       ``ground_truth``, ``category``, optional ``hbox`` (full-resolution xyxy)
``mme-realworld-rs``   ``Question_id``, ``Image``, ``Text``, ``Answer choices``, ``Ground truth``,
                       ``Task``, ``Subtask``, ``Category``
``xlrs``               ``index``, ``image`` (a list; change-detection items have two),
                       ``question``, ``multi-choice options``, ``answer``, ``category``
                       (``Task/Subtask``), ``l2-category``
=====================  ======================================================================

``Question.prompt`` is the text the agent is asked: the record's question plus, for the
multiple-choice benchmarks, the official option list and instruction.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, Field

from zoomearth.errors import ZoomEarthError

__all__ = [
    "BENCHMARKS",
    "Question",
    "QuestionFileError",
    "load_questions",
    "parse_record",
]

Benchmark = Literal["lrs-gro", "lrs-vqa", "mme-realworld-rs", "xlrs"]
BENCHMARKS: Final[tuple[str, ...]] = ("lrs-gro", "lrs-vqa", "mme-realworld-rs", "xlrs")
#: Accepted spellings of the benchmark names.
ALIASES: Final[dict[str, str]] = {
    "lrs-gro": "lrs-gro",
    "lrsgro": "lrs-gro",
    "gro": "lrs-gro",
    "lrs-vqa": "lrs-vqa",
    "lrsvqa": "lrs-vqa",
    "mme-realworld-rs": "mme-realworld-rs",
    "mme-realworld": "mme-realworld-rs",
    "mme-rs": "mme-realworld-rs",
    "mme": "mme-realworld-rs",
    "xlrs": "xlrs",
    "xlrs-bench": "xlrs",
    "xlrs-lite": "xlrs",
}

UNKNOWN_BENCHMARK_TEMPLATE: Final = "Unknown benchmark {name!r}; valid benchmarks are: {valid}."
UNREADABLE_TEMPLATE: Final = "Cannot read the question file {path}: {reason}."
BAD_RECORD_TEMPLATE: Final = (
    "{path}, record {index}: {reason}. Is this a {benchmark} file? (Expected fields: {fields}.)"
)
DUPLICATE_TEMPLATE: Final = (
    "{path}: question id {qid!r} occurs more than once (records {first} and {second}); ids must "
    "be unique for resumable runs."
)

MME_OPTION_HEAD: Final = "The choices are listed below:"
MME_INSTRUCTION: Final = (
    "Select the best answer to the above multiple-choice question based on the image. Respond "
    "with only the letter (A, B, C, D, or E) of the correct option.\nThe best answer is:"
)
XLRS_MULTI_CATEGORY: Final = "Land use classification/Overall Land use classification"
XLRS_MULTI_INSTRUCTION: Final = (
    "Select the best answer(s) for the multiple-choice question based on the image. There may "
    "be more than one correct option. Only respond with the letter(s) corresponding to the "
    "correct answer(s) (A, B, C, D), with multiple choices separated by spaces.The answer(s) "
    "is(are):"
)
XLRS_SINGLE_INSTRUCTION: Final = (
    "Select the best answer for the multiple-choice question based on the image. Only respond "
    "with the letter corresponding to the correct answer (A, B, C, D).\nThe answer is:"
)

_FIELDS: Final[dict[str, str]] = {
    "lrs-gro": "question_id, image_name, question, ground_truth, bbox, type",
    "lrs-vqa": "question_id, image, text, ground_truth, category",
    "mme-realworld-rs": "Question_id, Image, Text, Answer choices, Ground truth, Category",
    "xlrs": "index, image, question, multi-choice options, answer, category",
}


class QuestionFileError(ZoomEarthError, ValueError):
    """A question file is unreadable or its records do not fit the benchmark's format."""


class Question(BaseModel):
    """One benchmark question, whatever its source format.

    Attributes:
        benchmark: Which benchmark (selects the scorer).
        question_id: Unique id (the record's own id, as a string).
        images: Image names as the record gives them (relative to ``--images``); more than one
            for XLRS change-detection items.
        question: The record's question text.
        prompt: What the agent is asked (question plus options and instruction).
        choices: Multiple-choice option strings (``"(A) ..."``); empty for open questions.
        ground_truth: The ground truth as given (a phrase, a letter, or letters).
        box_ref: The ground-truth box exactly as the record gives it (None without one).
        box_frame: ``long1024`` (LRS-GRO: long side 1024 of the image) or ``full``
            (full-resolution pixels); None without a box.
        type: LRS-GRO ``type`` (global/region/object); the source prefix for LRS-VQA
            (FAIR/GLH-Bridge/STAR); the ``Task`` for MME-RealWorld; the task for XLRS.
        level: LRS-GRO ``higher_level``; the ``Subtask`` for MME; ``l2-category`` for XLRS.
        category: The finest category of the record.
        record: The record itself (kept for the output).
    """

    benchmark: Benchmark
    question_id: str
    images: list[str]
    question: str
    prompt: str
    choices: list[str] = Field(default_factory=list)
    ground_truth: str
    box_ref: list[float] | None = None
    box_frame: Literal["long1024", "full"] | None = None
    type: str = ""
    level: str = ""
    category: str = ""
    record: dict[str, Any] = Field(default_factory=dict)

    @property
    def supported(self) -> bool:
        """Whether the agent can take the question (one image per question)."""
        return len(self.images) == 1

    def box_full(self, width: int, height: int) -> list[float] | None:
        """The ground-truth box in full-resolution pixels (xyxy), or None without one.

        Args:
            width: Image width in pixels (from the raster header).
            height: Image height in pixels.

        Returns:
            ``[x1, y1, x2, y2]``; LRS-GRO boxes are scaled by ``max(width, height) / 1024``.
        """
        if self.box_ref is None:
            return None
        if self.box_frame == "long1024":
            scale = max(width, height) / 1024.0
            return [float(v) * scale for v in self.box_ref]
        return [float(v) for v in self.box_ref]


def canonical_benchmark(name: str) -> str:
    """The canonical benchmark name for an accepted spelling.

    Raises:
        QuestionFileError: For an unknown name.
    """
    key = name.strip().lower().replace("_", "-")
    if key not in ALIASES:
        raise QuestionFileError(
            UNKNOWN_BENCHMARK_TEMPLATE.format(name=name, valid=", ".join(BENCHMARKS))
        )
    return ALIASES[key]


def _box(value: Any) -> list[float] | None:
    if value is None or value == []:
        return None
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or len(value) != 4
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        raise ValueError(f"a box must be [] or four numbers x1, y1, x2, y2; got {value!r}")
    return [float(v) for v in value]


def _options_prompt(question: str, options: Sequence[str], instruction: str) -> str:
    return f"{question} {MME_OPTION_HEAD}\n" + "\n".join(options) + f"\n{instruction}"


def parse_record(benchmark: str, rec: Mapping[str, Any]) -> Question:
    """Convert one record of a benchmark into a :class:`Question`.

    Args:
        benchmark: Canonical benchmark name.
        rec: The record.

    Returns:
        The question.

    Raises:
        KeyError: A required field is missing.
        ValueError: A field has the wrong shape.
    """
    if benchmark == "lrs-gro":
        box = _box(rec.get("bbox"))
        return Question(
            benchmark="lrs-gro",
            question_id=str(rec["question_id"]),
            images=[str(rec["image_name"])],
            question=str(rec["question"]),
            prompt=str(rec["question"]),
            ground_truth=str(rec["ground_truth"]),
            box_ref=box,
            box_frame="long1024" if box else None,
            type=str(rec.get("type", "")),
            level=str(rec.get("higher_level", "")),
            category=str(rec.get("category", "")),
            record=dict(rec),
        )
    if benchmark == "lrs-vqa":
        qid = str(rec["question_id"])
        box = _box(rec.get("hbox"))
        return Question(
            benchmark="lrs-vqa",
            question_id=qid,
            images=[str(rec["image"])],
            question=str(rec["text"]),
            prompt=str(rec["text"]),
            ground_truth=str(rec.get("ground_truth", "")),
            box_ref=box,
            box_frame="full" if box else None,
            type=qid.split("_")[0],
            level=str(rec.get("size_bin", "")),
            category=str(rec.get("category", "")),
            record=dict(rec),
        )
    if benchmark == "mme-realworld-rs":
        choices = [str(c) for c in rec["Answer choices"]]
        return Question(
            benchmark="mme-realworld-rs",
            question_id=str(rec["Question_id"]),
            images=[str(rec["Image"])],
            question=str(rec["Text"]),
            prompt=_options_prompt(str(rec["Text"]), choices, MME_INSTRUCTION),
            choices=choices,
            ground_truth=str(rec["Ground truth"]),
            type=str(rec.get("Task", "")),
            level=str(rec.get("Subtask", "")),
            category=str(rec.get("Category", "")),
            record=dict(rec),
        )
    if benchmark == "xlrs":
        images = rec["image"]
        images = [str(i) for i in images] if isinstance(images, list) else [str(images)]
        options = [str(o) for o in rec["multi-choice options"]]
        category = str(rec.get("category", ""))
        instruction = (
            XLRS_MULTI_INSTRUCTION if category == XLRS_MULTI_CATEGORY else XLRS_SINGLE_INSTRUCTION
        )
        # lmms-eval: question + "The choices are listed below:" + options + "\n" + instruction
        prompt = (
            str(rec["question"])
            + f"{MME_OPTION_HEAD}\n"
            + "\n".join(options)
            + "\n\n"
            + instruction
        )
        answer = rec["answer"]
        return Question(
            benchmark="xlrs",
            question_id=str(rec["index"]),
            images=images,
            question=str(rec["question"]),
            prompt=prompt,
            choices=options,
            ground_truth="".join(answer) if isinstance(answer, list) else str(answer),
            type=category.split("/")[0],
            level=str(rec.get("l2-category", "")),
            category=category,
            record=dict(rec),
        )
    raise QuestionFileError(
        UNKNOWN_BENCHMARK_TEMPLATE.format(name=benchmark, valid=", ".join(BENCHMARKS))
    )


def _read_records(path: Path) -> list[Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise QuestionFileError(UNREADABLE_TEMPLATE.format(path=path, reason=exc)) from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise QuestionFileError(
                UNREADABLE_TEMPLATE.format(path=path, reason=f"invalid JSON: {exc}")
            ) from None
        return list(data)
    records = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise QuestionFileError(
                UNREADABLE_TEMPLATE.format(path=path, reason=f"line {n} is not JSON: {exc}")
            ) from None
    return records


def load_questions(benchmark: str, path: str | Path) -> list[Question]:
    """Load a benchmark's question file (JSONL, or one JSON list).

    Args:
        benchmark: Benchmark name (see :data:`ALIASES`).
        path: The file.

    Returns:
        The questions in file order.

    Raises:
        QuestionFileError: Unreadable file, a record that does not fit, or duplicate ids.
    """
    name = canonical_benchmark(benchmark)
    p = Path(path).expanduser()
    questions: list[Question] = []
    seen: dict[str, int] = {}
    for index, rec in enumerate(_read_records(p), start=1):
        if not isinstance(rec, Mapping):
            raise QuestionFileError(
                BAD_RECORD_TEMPLATE.format(
                    path=p,
                    index=index,
                    reason="not a JSON object",
                    benchmark=name,
                    fields=_FIELDS[name],
                )
            )
        try:
            q = parse_record(name, rec)
        except KeyError as exc:
            raise QuestionFileError(
                BAD_RECORD_TEMPLATE.format(
                    path=p,
                    index=index,
                    reason=f"missing field {exc}",
                    benchmark=name,
                    fields=_FIELDS[name],
                )
            ) from None
        except (TypeError, ValueError) as exc:
            raise QuestionFileError(
                BAD_RECORD_TEMPLATE.format(
                    path=p,
                    index=index,
                    reason=str(exc).splitlines()[0],
                    benchmark=name,
                    fields=_FIELDS[name],
                )
            ) from None
        if q.question_id in seen:
            raise QuestionFileError(
                DUPLICATE_TEMPLATE.format(
                    path=p, qid=q.question_id, first=seen[q.question_id], second=index
                )
            )
        seen[q.question_id] = index
        questions.append(q)
    return questions
