"""The ``script`` planner: replays a plan written in JSON or YAML.

For batch pipelines, reproducible demos and tests. A script is an object with a list of turns; turn
``i`` answers the ``i``-th planner call of a run (``i`` = the number of ``planner`` entries already
in the transcript). Each turn is either

* a string: raw model text in the ZoomEarth protocol, returned as :attr:`PlanReply.text` and
  parsed by the graph exactly like a model's reply (boxes in pixels of the view as seen; this
  backend reports every view's own rendered size in :attr:`PlanReply.seen_sizes`), or
* a list of actions, converted directly to a :class:`~zoomearth.agent.parsing.ParsedResponse`
  (:attr:`PlanReply.parsed`):

  - ``{"zoom": [x1, y1, x2, y2], "frame": "full" | "view", "view": k, "label": "..."}``:
    ``frame`` is required; ``full`` = full-resolution pixels of the raster
    (:attr:`ZoomRequest.frame` ``"full"``), ``view`` = pixels of view ``k`` as rendered (the latest
    view when ``view`` is absent),
  - ``{"tool": NAME, "args": {...}}``: arguments are passed as written; strings ``"artifact:N"``
    refer to earlier artifacts and are resolved by the tool layer,
  - ``{"answer": "..."}``: the final answer.

When the script has no turn left the planner answers, best effort, that the script ended without
an answer (listing the tool results so far); on a ``final`` turn without an answer it does the
same. A mapping file ``{"questions": {"<id>": <script>, ...}, "default": <script>}`` holds one
script per question id for evaluation; select one with :meth:`ScriptPlanner.set_question`.

The format is published as a JSON Schema (:data:`SCRIPT_SCHEMA`, also ``docs/script.schema.json``)
and documented with examples in ``docs/script.md``. Loading validates the plan and names the bad
turn and action in the error.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final

from zoomearth.agent.base import CoordMode, Layout, Planner, PlannerError, PlanReply, PlanRequest
from zoomearth.agent.parsing import ParsedResponse, ToolCallRequest, ZoomRequest, parse_response
from zoomearth.agent.protocol import clean_text, format_turn

if TYPE_CHECKING:
    from zoomearth.config import Settings

__all__ = [
    "SCRIPT_SCHEMA",
    "ScriptError",
    "ScriptPlanner",
    "load_plan",
    "schema_json",
    "validate_plan",
]

# ---------------------------------------------------------------------------------------------
# The published schema
# ---------------------------------------------------------------------------------------------

_DESCRIPTION: Final = (
    "A plan for the zoomearth 'script' planner: one script ({\"turns\": [...]}) or per-question "
    'scripts ({"questions": {"<id>": {"turns": [...]}}}). See docs/script.md.'
)

#: JSON Schema (draft 2020-12) of plan files; published as ``docs/script.schema.json``.
SCRIPT_SCHEMA: Final[dict[str, Any]] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "zoomearth planner script",
    "description": _DESCRIPTION,
    "oneOf": [{"$ref": "#/$defs/script"}, {"$ref": "#/$defs/questions"}],
    "$defs": {
        "script": {
            "type": "object",
            "description": "Turns replayed in order, one per planner call.",
            "properties": {
                "$schema": {"type": "string"},
                "description": {"type": "string"},
                "turns": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"$ref": "#/$defs/turn"},
                },
            },
            "required": ["turns"],
            "additionalProperties": False,
        },
        "questions": {
            "type": "object",
            "description": "One script per question id; 'default' serves ids not listed.",
            "properties": {
                "$schema": {"type": "string"},
                "description": {"type": "string"},
                "questions": {
                    "type": "object",
                    "additionalProperties": {"$ref": "#/$defs/script"},
                },
                "default": {"$ref": "#/$defs/script"},
            },
            "required": ["questions"],
            "additionalProperties": False,
        },
        "turn": {
            "oneOf": [
                {
                    "type": "string",
                    "minLength": 1,
                    "description": "Raw model text in the ZoomEarth protocol, parsed like a "
                    "model's reply.",
                },
                {
                    "type": "array",
                    "minItems": 1,
                    "items": {"$ref": "#/$defs/action"},
                    "description": "Structured actions of one turn.",
                },
            ]
        },
        "action": {
            "oneOf": [
                {"$ref": "#/$defs/zoom"},
                {"$ref": "#/$defs/tool"},
                {"$ref": "#/$defs/answer"},
            ]
        },
        "zoom": {
            "type": "object",
            "properties": {
                "zoom": {
                    "type": "array",
                    "items": {"type": "number"},
                    "minItems": 4,
                    "maxItems": 4,
                    "description": "[x1, y1, x2, y2] in the frame named by 'frame'.",
                },
                "frame": {
                    "enum": ["full", "view"],
                    "description": "full: full-resolution pixels of the raster; view: pixels of "
                    "a rendered view ('view', default the latest).",
                },
                "view": {"type": "integer", "minimum": 0},
                "label": {"type": "string"},
            },
            "required": ["zoom", "frame"],
            "additionalProperties": False,
            "if": {"properties": {"frame": {"const": "full"}}, "required": ["frame"]},
            "then": {"not": {"required": ["view"]}},
        },
        "tool": {
            "type": "object",
            "properties": {
                "tool": {"type": "string", "minLength": 1},
                "args": {
                    "type": "object",
                    "description": "Tool arguments; strings 'artifact:N' refer to earlier "
                    "artifacts.",
                },
            },
            "required": ["tool"],
            "additionalProperties": False,
        },
        "answer": {
            "type": "object",
            "properties": {"answer": {"type": "string", "minLength": 1}},
            "required": ["answer"],
            "additionalProperties": False,
        },
    },
}


def schema_json() -> str:
    """The schema as published in ``docs/script.schema.json`` (2-space JSON, trailing newline)."""
    return json.dumps(SCRIPT_SCHEMA, indent=2, ensure_ascii=False) + "\n"


# ---------------------------------------------------------------------------------------------
# Errors and messages
# ---------------------------------------------------------------------------------------------


class ScriptError(PlannerError, ValueError):
    """A plan file is missing, unreadable or invalid; the message names the bad turn."""


INVALID_PLAN_TEMPLATE: Final = (
    "The plan {source} is not a valid script:\n{problems}\n"
    "See docs/script.md (schema: docs/script.schema.json)."
)
NO_PLAN_TEMPLATE: Final = (
    "planner=script needs a plan: set plan_file=PATH (a JSON or YAML script, see docs/script.md)."
)
UNREADABLE_PLAN_TEMPLATE: Final = "Cannot read the plan {source}: {reason}"
NEEDS_QUESTION_TEMPLATE: Final = (
    "The plan {source} holds per-question scripts and has no 'default'; select one with "
    "set_question(question_id). Ids: {ids}."
)
UNKNOWN_QUESTION_TEMPLATE: Final = (
    "The plan {source} has no script for question {qid!r} and no 'default' script. Ids: {ids}."
)
EXHAUSTED_TEMPLATE: Final = (
    "The script ended after {count} turn(s) without an answer; this is a best-effort answer."
)
FINAL_NO_ANSWER_TEMPLATE: Final = (
    "No steps were left at script turn {turn}, which has no answer; this is a best-effort answer."
)
RESULTS_TEMPLATE: Final = " Tool results so far: {results}"

_MAX_LISTED: Final = 20
_ACTION_KEYS: Final = ("zoom", "tool", "answer")


# ---------------------------------------------------------------------------------------------
# Validation (clear messages first; the JSON Schema is checked too so the two cannot drift)
# ---------------------------------------------------------------------------------------------


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def _check_action(action: object, where: str, problems: list[str]) -> str | None:
    """Check one action; return its kind (zoom/tool/answer) or None when unusable."""
    if not isinstance(action, Mapping):
        problems.append(
            f"{where}: an action must be an object such as "
            f'{{"zoom": [x1, y1, x2, y2], "frame": "full"}}, {{"tool": NAME, "args": {{}}}} or '
            f'{{"answer": "..."}}; got {_kind(action)}'
        )
        return None
    kinds = [k for k in _ACTION_KEYS if k in action]
    if len(kinds) != 1:
        got = ", ".join(repr(str(k)) for k in action) or "no keys"
        problems.append(
            f"{where}: an action needs exactly one of 'zoom', 'tool' or 'answer'; got {got}"
        )
        return None
    kind = kinds[0]
    allowed = {"zoom": {"zoom", "frame", "view", "label"}, "tool": {"tool", "args"}}.get(
        kind, {"answer"}
    )
    extra = sorted(str(k) for k in action if k not in allowed)
    if extra:
        problems.append(
            f"{where}: unknown key(s) {', '.join(map(repr, extra))} in a {kind} action "
            f"(allowed: {', '.join(sorted(allowed))})"
        )
    if kind == "zoom":
        box = action["zoom"]
        if (
            not isinstance(box, list | tuple)
            or len(box) != 4
            or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                for v in box
            )
        ):
            problems.append(
                f"{where}: 'zoom' must be four finite numbers [x1, y1, x2, y2]; got {box!r}"
            )
        frame = action.get("frame")
        if frame not in ("full", "view"):
            problems.append(
                f"{where}: 'frame' is required and must be \"full\" (full-resolution pixels) or "
                f'"view" (pixels of a rendered view); got {frame!r}'
            )
        if "view" in action:
            view = action["view"]
            if not isinstance(view, int) or isinstance(view, bool) or view < 0:
                problems.append(
                    f"{where}: 'view' must be a view id (an integer >= 0); got {view!r}"
                )
            elif frame == "full":
                problems.append(
                    f'{where}: \'view\' applies only to "frame": "view"; a full-resolution box '
                    "needs no view"
                )
        if "label" in action and not isinstance(action["label"], str):
            problems.append(f"{where}: 'label' must be a string; got {_kind(action['label'])}")
    elif kind == "tool":
        name = action["tool"]
        if not isinstance(name, str) or not name.strip():
            problems.append(f"{where}: 'tool' must be the tool's name (a string); got {name!r}")
        if "args" in action and not isinstance(action["args"], Mapping):
            problems.append(
                f"{where}: 'args' must be an object of arguments; got {_kind(action['args'])}"
            )
    else:
        answer = action["answer"]
        if not isinstance(answer, str) or not answer.strip():
            problems.append(f"{where}: 'answer' must be a non-empty string; got {answer!r}")
    return kind


def _check_script(script: object, where: str, problems: list[str]) -> None:
    prefix = f"{where}: " if where else ""
    if not isinstance(script, Mapping):
        problems.append(
            f'{prefix}a script must be an object {{"turns": [...]}}; got {_kind(script)}'
        )
        return
    extra = sorted(str(k) for k in script if k not in ("turns", "description", "$schema"))
    if extra:
        problems.append(
            f"{prefix}unknown key(s) {', '.join(map(repr, extra))} (a script has 'turns' and an "
            "optional 'description')"
        )
    if "description" in script and not isinstance(script["description"], str):
        problems.append(f"{prefix}'description' must be a string")
    turns = script.get("turns")
    if not isinstance(turns, list) or not turns:
        problems.append(
            f"{prefix}'turns' must be a non-empty list (raw model texts or lists of actions); "
            f"got {_kind(turns) if turns != [] else 'an empty list'}"
        )
        return
    for i, turn in enumerate(turns, start=1):
        here = f"{prefix}turn {i}"
        if isinstance(turn, str):
            if not turn.strip():
                problems.append(f"{here}: raw model text must not be empty")
            continue
        if not isinstance(turn, list) or not turn:
            problems.append(
                f"{here}: a turn is raw model text (a string) or a non-empty list of actions; "
                f"got {_kind(turn) if turn != [] else 'an empty list'}"
            )
            continue
        answers = 0
        for j, action in enumerate(turn, start=1):
            answers += _check_action(action, f"{here}, action {j}", problems) == "answer"
        if answers > 1:
            problems.append(f"{here}: a turn may hold at most one answer; found {answers}")


def _schema_problems(data: object) -> list[str]:
    """Problems the published JSON Schema reports (normally none once the checks above pass)."""
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - jsonschema is a core dependency
        return []
    validator = jsonschema.Draft202012Validator(SCRIPT_SCHEMA)
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is None:
        return []
    path = "/".join(str(p) for p in error.absolute_path) or "(top level)"
    return [f"at {path}: {error.message}"]


def validate_plan(data: object, source: str = "plan") -> None:
    """Check a loaded plan (a script or per-question scripts).

    Args:
        data: The plan as loaded from JSON or YAML.
        source: How to name the plan in messages (its path).

    Raises:
        ScriptError: Listing every problem found, each naming its question, turn and action
            (turns and actions are numbered from 1).
    """
    problems: list[str] = []
    if not isinstance(data, Mapping):
        problems.append(
            'the plan must be an object: {"turns": [...]} for one script or '
            '{"questions": {"<id>": {"turns": [...]}}} for per-question scripts; '
            f"got {_kind(data)}"
        )
    elif "questions" in data:
        extra = sorted(
            str(k) for k in data if k not in ("questions", "default", "description", "$schema")
        )
        if extra:
            problems.append(
                f"unknown key(s) {', '.join(map(repr, extra))} (a per-question plan has "
                "'questions', 'default' and 'description')"
            )
        questions = data["questions"]
        if not isinstance(questions, Mapping):
            problems.append(f"'questions' must map question ids to scripts; got {_kind(questions)}")
        else:
            for qid, script in questions.items():
                _check_script(script, f"question {str(qid)!r}", problems)
        if "default" in data:
            _check_script(data["default"], "default", problems)
    elif "turns" in data:
        _check_script(data, "", problems)
    else:
        keys = ", ".join(repr(str(k)) for k in data) or "none"
        problems.append(
            "the plan needs 'turns' (one script) or 'questions' (per-question scripts); "
            f"its keys are: {keys}"
        )
    if not problems:
        problems = _schema_problems(data)
    if problems:
        shown = problems[:_MAX_LISTED]
        if len(problems) > _MAX_LISTED:
            shown.append(f"... and {len(problems) - _MAX_LISTED} more")
        raise ScriptError(
            INVALID_PLAN_TEMPLATE.format(
                source=source, problems="\n".join(f"  - {p}" for p in shown)
            )
        )


def load_plan(path: str | Path) -> Any:
    """Read a plan file (JSON, or YAML for ``.yaml``/``.yml``; other suffixes: JSON, then YAML).

    Args:
        path: The plan file.

    Returns:
        The validated plan data.

    Raises:
        ScriptError: When the file is missing, unreadable or invalid.
    """
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScriptError(UNREADABLE_PLAN_TEMPLATE.format(source=p, reason=exc)) from None
    suffix = p.suffix.lower()
    data: Any
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ScriptError(
                UNREADABLE_PLAN_TEMPLATE.format(source=p, reason=f"invalid JSON: {exc}")
            ) from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)  # YAML is a superset of JSON: both forms load here
        except yaml.YAMLError as exc:
            raise ScriptError(
                UNREADABLE_PLAN_TEMPLATE.format(source=p, reason=f"invalid YAML: {exc}")
            ) from None
    validate_plan(data, str(p))
    return data


# ---------------------------------------------------------------------------------------------
# The planner
# ---------------------------------------------------------------------------------------------


def _parsed_turn(actions: Sequence[Mapping[str, Any]], turn: int) -> tuple[str, ParsedResponse]:
    """Convert a structured turn to a ParsedResponse and its protocol text (for the log).

    Args:
        actions: The turn's validated actions.
        turn: The turn's number (from 1), named in the reasoning.

    Returns:
        ``(text, parsed)``: the text is written by :func:`format_turn` from ``parsed``, so it
        parses back to the same zooms (boxes rounded to 4 decimals in the text), tool calls and
        answer, with protocol tags removed from the free text.
    """
    zooms: list[ZoomRequest] = []
    calls: list[ToolCallRequest] = []
    answer: str | None = None
    for action in actions:
        source = json.dumps(action, ensure_ascii=False)
        if "zoom" in action:
            frame = str(action["frame"])
            box = tuple(float(v) for v in action["zoom"])
            view = int(action["view"]) if frame == "view" and "view" in action else None
            label = action.get("label")
            zooms.append(ZoomRequest(box, label, view, source, frame))  # type: ignore[arg-type]
        elif "tool" in action:
            args = dict(action.get("args") or {})
            raw = json.dumps(args, ensure_ascii=False)
            calls.append(ToolCallRequest(str(action["tool"]), args, raw, source))
        else:
            answer = str(action["answer"]).strip()
    think = f"script turn {turn}"
    parsed = ParsedResponse(
        think=think,
        zooms=tuple(zooms),
        tool_calls=tuple(calls),
        answer=answer,
        answer_closed=answer is not None,
        problems=(),
    )
    return format_turn(think, parsed.zooms, parsed.tool_calls, answer), parsed


class ScriptPlanner(Planner):
    """Replays a JSON/YAML plan (see the module docstring and ``docs/script.md``).

    Args:
        settings: The effective settings; ``plan_file`` is read when ``plan`` is None.
        pool: Unused (accepted for the common backend signature).
        plan: The plan itself (already loaded data) or a path to it; overrides ``plan_file``.

    Raises:
        ScriptError: No plan configured, or the plan is unreadable or invalid.
    """

    name: ClassVar[str] = "script"
    coord_mode: CoordMode = "pixels"
    layout: Layout = "chat"

    def __init__(
        self,
        settings: Settings | None = None,
        pool: Any = None,
        plan: Mapping[str, Any] | str | Path | None = None,
    ) -> None:
        self._pool = pool
        if plan is None:
            plan = getattr(settings, "plan_file", None)
        if plan is None:
            raise ScriptError(NO_PLAN_TEMPLATE)
        if isinstance(plan, str | Path):
            self._source = str(plan)
            self._data = load_plan(plan)
        else:
            self._source = "(given plan)"
            validate_plan(plan, self._source)
            self._data = plan
        self._question: str | None = None

    @property
    def per_question(self) -> bool:
        """Whether the plan holds per-question scripts."""
        return "questions" in self._data

    @property
    def question_ids(self) -> list[str]:
        """Question ids with their own script (empty for a single script)."""
        return [str(k) for k in self._data.get("questions", {})] if self.per_question else []

    def describe(self) -> str:
        """One line naming the backend and the plan."""
        which = f", question {self._question}" if self._question is not None else ""
        return f"script ({self._source}{which})"

    def set_question(self, question_id: str | None) -> None:
        """Select the script of one question (per-question plans; a no-op for a single script).

        Args:
            question_id: The question id; None clears the selection.

        Raises:
            ScriptError: When the id has no script and the plan has no ``default``.
        """
        if question_id is not None and self.per_question:
            if str(question_id) not in self._data["questions"] and "default" not in self._data:
                raise ScriptError(
                    UNKNOWN_QUESTION_TEMPLATE.format(
                        source=self._source, qid=str(question_id), ids=self._ids()
                    )
                )
        self._question = None if question_id is None else str(question_id)

    def _ids(self) -> str:
        ids = self.question_ids
        shown = ", ".join(ids[:10]) + (f", ... ({len(ids)} in all)" if len(ids) > 10 else "")
        return shown or "none"

    def _turns(self) -> list[Any]:
        if not self.per_question:
            return list(self._data["turns"])
        questions = self._data["questions"]
        if self._question is not None and self._question in questions:
            return list(questions[self._question]["turns"])
        if "default" in self._data:
            return list(self._data["default"]["turns"])
        raise ScriptError(NEEDS_QUESTION_TEMPLATE.format(source=self._source, ids=self._ids()))

    def plan(self, request: PlanRequest) -> PlanReply:
        """Return the script's turn for this call (or a best-effort answer past its end).

        Args:
            request: The turn's request; the turn index is the number of ``planner`` entries in
                its transcript.

        Returns:
            Raw text turns as ``text``; structured turns as ``parsed`` (with ``text`` for the
            log); ``seen_sizes`` are the views' own rendered sizes.

        Raises:
            ScriptError: A per-question plan with no script selected and no default.
        """
        turns = self._turns()
        index = sum(1 for e in request.transcript if e.kind == "planner")
        seen = {vid: (int(v.width), int(v.height)) for vid, v in request.views.items()}
        reply = PlanReply(text="", seen_sizes=seen, backend=self.name, model=self._source)
        if index >= len(turns):
            reply.text = self._best_effort(request, EXHAUSTED_TEMPLATE.format(count=len(turns)))
            reply.notes.append(f"script exhausted after {len(turns)} turn(s)")
            return reply
        turn = turns[index]
        reply.notes.append(f"script turn {index + 1} of {len(turns)}")
        if isinstance(turn, str):
            has_answer = parse_response(turn).answer is not None
            reply.text = turn
        else:
            reply.text, reply.parsed = _parsed_turn(turn, index + 1)
            has_answer = reply.parsed.answer is not None
        if request.final and not has_answer:
            reply.text = self._best_effort(request, FINAL_NO_ANSWER_TEMPLATE.format(turn=index + 1))
            reply.parsed = None
        return reply

    @staticmethod
    def _best_effort(request: PlanRequest, head: str) -> str:
        results = [
            (
                f"{e.data.get('tool')}: "
                if isinstance(e.data, Mapping) and e.data.get("tool")
                else ""
            )
            + clean_text(e.text)
            for e in request.transcript
            if e.kind == "tool_result"
        ]
        body = head + (RESULTS_TEMPLATE.format(results="; ".join(results)) if results else "")
        return format_turn(answer=body)
