"""A tool's arguments filled from its JSON Schema with what the question gives.

:func:`_fill_arguments` fills box arguments (:func:`is_box_argument`), text prompts, edit
instructions and modes from a :class:`~zoomearth.agent.text.intents.ToolIntent` and a
full-resolution box; the result is checked by the tool runner's own validation
(:attr:`~zoomearth.agent.base.PlanRequest.check_arguments`, the tool's ``Args`` model), which the
graph hands the planner; :func:`_validate_arguments` (the JSON Schema the planner was shown) is
the fallback where no registry is at hand. :func:`_set_whole_scene` makes a tool work on the
whole scene explicitly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from zoomearth.agent.text.intents import ToolIntent
from zoomearth.geometry import PixelBox

if TYPE_CHECKING:
    from zoomearth.geometry import ViewSpec

__all__ = ["is_box_argument"]

# Region arguments every tool gets in the prompt (tools.base.RESERVED_ARGS): a box in the frame of
# a view. The rules planner never fills them; it zooms in the same turn instead.
_REGION_ARGS: Final = frozenset({"bbox_2d", "view"})
_BOX_ARGS: Final = frozenset(
    {"box", "bbox", "bbox_2d", "box_xyxy", "bbox_xyxy", "region", "region_xyxy", "roi", "xyxy"}
)
_TEXT_ARGS: Final = frozenset(
    {"prompt", "text", "text_prompt", "target", "label", "query", "object", "objects", "classes",
     "class_name", "what", "category"}
)  # fmt: skip
_INSTRUCTION_ARGS: Final = frozenset(
    {"instruction", "edit_instruction", "prompt", "text", "command", "edit"}
)
_MODE_ARGS: Final = frozenset({"mode", "operation", "task", "action", "method", "kind", "type"})
_MODE_PREFERENCES: Final[dict[str, tuple[str, ...]]] = {
    "edit": ("remove", "removal", "inpaint", "erase", "delete"),
    "segmentation": ("box", "auto", "automatic", "everything"),
    "cloud_removal": ("auto", "automatic"),
    "denoise": ("auto", "automatic"),
}

#: Boolean arguments switched on when the matched phrase holds one of the words: "remove the
#: haze" asks cloud_removal to look for thin haze away from clouds too.
_FLAG_WORDS: Final[dict[tuple[str, str], tuple[str, ...]]] = {
    ("cloud_removal", "thin_haze"): ("haze", "hazy", "dehaz", "smog", "fog"),
}


class _CannotFill(Exception):
    """Internal: a required argument cannot be inferred (carries its name)."""


def _resolve(schema: Any, root: Mapping[str, Any]) -> dict[str, Any]:
    """Follow local ``$ref`` and pick the first non-null alternative of ``anyOf``/``oneOf``."""
    for _ in range(8):
        if not isinstance(schema, Mapping):
            return {}
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            node: Any = root
            for part in ref[2:].split("/"):
                node = node.get(part, {}) if isinstance(node, Mapping) else {}
            schema = node
            continue
        for key in ("anyOf", "oneOf", "allOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                non_null = [
                    o for o in options if not (isinstance(o, Mapping) and o.get("type") == "null")
                ]
                schema = non_null[0] if non_null else options[0]
                break
        else:
            return dict(schema)
    return {}


def _types(schema: Mapping[str, Any]) -> set[str]:
    t = schema.get("type")
    if isinstance(t, str):
        return {t}
    if isinstance(t, list):
        return {str(x) for x in t}
    return set()


def _box_value(box: PixelBox, schema: Mapping[str, Any]) -> Any:
    numbers = [int(round(v)) for v in box.as_list()]
    types = _types(schema)
    if "string" in types and "array" not in types:
        return ",".join(str(v) for v in numbers)
    item_types = _types(_resolve(schema.get("items", {}), schema))
    if item_types and "integer" not in item_types and "number" in item_types:
        return [float(v) for v in numbers]
    return numbers


def _text_value(text: str, schema: Mapping[str, Any]) -> Any:
    return [text] if "array" in _types(schema) else text


def _fill_arguments(
    kind: str,
    intent: ToolIntent,
    parameters: Mapping[str, Any],
    box: PixelBox | None,
    whole: PixelBox,
) -> dict[str, Any]:
    """Fill a tool's arguments from its JSON Schema with what the question gives.

    Raises:
        _CannotFill: A required argument has no default and cannot be inferred.
    """
    properties = parameters.get("properties", {})
    required = set(parameters.get("required", []))
    args: dict[str, Any] = {}
    if not isinstance(properties, Mapping):
        return args
    for name, raw_schema in properties.items():
        if name in _REGION_ARGS:
            # The graph's own region arguments (boxes in a view's frame): the tool works on the
            # zoom this turn makes, so they stay unset.
            continue
        schema = _resolve(raw_schema, parameters)
        key = str(name).lower()
        is_required = name in required and "default" not in schema
        value: Any = None
        if is_box_argument(key):
            if box is not None:
                value = _box_value(box, schema)
            elif is_required:
                value = _box_value(whole, schema)
        elif kind == "edit" and key in _INSTRUCTION_ARGS and intent.instruction:
            value = _text_value(intent.instruction, schema)
        elif (
            key in _TEXT_ARGS
            and intent.target
            and "string" in (_types(schema) | _types(_resolve(schema.get("items", {}), parameters)))
        ):
            value = _text_value(intent.target, schema)
        elif (kind, key) in _FLAG_WORDS and "boolean" in _types(schema):
            phrase = intent.phrase.lower()
            if any(word in phrase for word in _FLAG_WORDS[(kind, key)]):
                value = True
        elif (
            key in _MODE_ARGS
            and isinstance(schema.get("enum"), list)
            and (is_required or "default" not in schema)
        ):
            choices = [str(c) for c in schema["enum"]]
            for preferred in _MODE_PREFERENCES.get(kind, ()):
                if preferred == "box" and box is None:
                    continue
                if preferred in choices:
                    value = preferred
                    break
            if value is None and not is_required:
                continue
        if value is not None:
            args[str(name)] = value
        elif is_required:
            raise _CannotFill(str(name))
    return args


def _validate_arguments(args: Mapping[str, Any], parameters: Mapping[str, Any]) -> str | None:
    """The first JSON Schema error of ``args``, or None when they are valid (or unchecked)."""
    if not parameters:
        return None
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - jsonschema is a core dependency
        return None
    try:
        validator_cls = jsonschema.validators.validator_for(parameters)
        validator = validator_cls(dict(parameters))
        error = jsonschema.exceptions.best_match(validator.iter_errors(dict(args)))
    except jsonschema.exceptions.SchemaError as exc:
        return f"its schema is invalid: {exc.message}"
    return None if error is None else error.message


def _set_whole_scene(
    args: dict[str, Any],
    parameters: Mapping[str, Any],
    overview: ViewSpec | None,
    overview_id: int,
    whole: PixelBox,
) -> None:
    """Make a tool work on the whole scene, explicitly (the question named the whole image).

    Left unset, the graph would give the tool the thread's latest zoom (an earlier question's
    crop). The graph's region argument ``bbox_2d`` is set to the whole overview, in the frame of
    the overview view as seen (this backend sees views at their own size), when the tool offers
    it; the tool's own box arguments then keep their meaning (e.g. an object's box prompt) and
    are left as they are. A tool without ``bbox_2d`` gets the whole scene in its own box
    arguments, in full-resolution pixels.
    """
    properties = parameters.get("properties", {})
    if not isinstance(properties, Mapping):
        return
    if overview is not None and "bbox_2d" in properties:
        args["bbox_2d"] = [0, 0, int(overview.width), int(overview.height)]
        if "view" in properties:
            args["view"] = int(overview_id)
        return
    for key in _box_keys(parameters):
        args.setdefault(key, _box_value(whole, _resolve(properties[key], parameters)))


def _box_keys(parameters: Mapping[str, Any]) -> list[str]:
    properties = parameters.get("properties", {})
    if not isinstance(properties, Mapping):
        return []
    return [str(k) for k in properties if k not in _REGION_ARGS and is_box_argument(str(k).lower())]


def is_box_argument(key: str) -> bool:
    """Whether an argument name holds a full-resolution box (``target_box``, ``roi_xyxy`` ...)."""
    return key in _BOX_ARGS or key.endswith(("_xyxy", "_box")) or "bbox" in key
