"""Tool arguments as the planner sees them: the prompt schema and one-line descriptions.

:func:`prompt_schema` is the compact JSON schema of a tool's ``Args`` in the planner prompt;
:func:`describe_arguments` is the one-line-per-argument text that error messages list as the
valid arguments; :func:`split_region_args` separates the region the graph reserves
(:data:`~zoomearth.tools.contract.RESERVED_ARGS`) from the tool's own arguments.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from zoomearth.tools.contract import RESERVED_ARGS

__all__ = ["describe_arguments", "prompt_schema", "split_region_args"]

# --------------------------------------------------------------------------------------------
# Argument descriptions for the planner
# --------------------------------------------------------------------------------------------
def _strip_titles(node: Any) -> Any:
    """Remove pydantic's ``title`` keys from schema objects (not from ``properties`` names)."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "title" and isinstance(v, str):
                continue
            if k in ("properties", "$defs", "definitions") and isinstance(v, dict):
                out[k] = {name: _strip_titles(sub) for name, sub in v.items()}
            else:
                out[k] = _strip_titles(v)
        return out
    if isinstance(node, list):
        return [_strip_titles(v) for v in node]
    return node


def prompt_schema(args_cls: type[BaseModel]) -> dict[str, Any]:
    """Compact JSON schema of an Args model for the planner (titles removed)."""
    schema = _strip_titles(args_cls.model_json_schema())
    # The tool's description says what the arguments are for; the model's docstring is noise.
    schema.pop("description", None)
    schema.pop("additionalProperties", None)
    schema.setdefault("type", "object")
    schema.setdefault("properties", {})
    return schema


def _schema_type(prop: Mapping[str, Any]) -> str:
    if "enum" in prop:
        return "one of " + ", ".join(json.dumps(v) for v in prop["enum"])
    if "const" in prop:
        return json.dumps(prop["const"])
    if "anyOf" in prop:
        parts = [_schema_type(p) for p in prop["anyOf"] if p.get("type") != "null"]
        nullable = any(p.get("type") == "null" for p in prop["anyOf"])
        return " or ".join(parts) + (" or null" if nullable else "")
    kind = prop.get("type", "value")
    if kind == "array":
        items = prop.get("items", {})
        text = f"list of {_schema_type(items)}"
        if "minItems" in prop and prop.get("minItems") == prop.get("maxItems"):
            text = f"list of {prop['minItems']} {_schema_type(items)}"
        return text
    fmt = prop.get("format")
    if fmt == "artifact-ref":
        return "'artifact:N'"
    if fmt == "path":
        return "file path"
    text = str(kind)
    lo = prop.get("minimum", prop.get("exclusiveMinimum"))
    hi = prop.get("maximum", prop.get("exclusiveMaximum"))
    if lo is not None and hi is not None:
        text += f" {lo}..{hi}"
    elif lo is not None:
        text += f" >= {lo}"
    elif hi is not None:
        text += f" <= {hi}"
    return text


def describe_arguments(args_cls: type[BaseModel]) -> str:
    """One line per argument: ``name (type, required|default X): description``; or "none"."""
    schema = args_cls.model_json_schema()
    defs = schema.get("$defs", {})
    required = set(schema.get("required", []))
    parts = []
    for name, prop in schema.get("properties", {}).items():
        if "$ref" in prop:
            prop = {**defs.get(prop["$ref"].rsplit("/", 1)[-1], {}), **prop}
        need = "required" if name in required else f"default {json.dumps(prop.get('default'))}"
        desc = prop.get("description", "")
        parts.append(f"{name} ({_schema_type(prop)}, {need})" + (f": {desc}" if desc else ""))
    return "; ".join(parts) if parts else "none (call it with {})"


def _format_validation_error(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(arguments)"
        if err.get("type") == "missing":
            problems.append(f"'{loc}' is required")
            continue
        got = json.dumps(err.get("input"), default=str)
        if len(got) > 60:
            got = got[:57] + "..."
        problems.append(f"'{loc}': {err.get('msg')} (got {got})")
    return "; ".join(problems)


def split_region_args(arguments: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a planner's tool arguments into the region part and the tool's own arguments.

    Returns:
        ``(region_args, tool_args)``: ``region_args`` holds the :data:`RESERVED_ARGS` present
        (``bbox_2d`` in the frame of view ``view``), for the graph to convert to ``ctx.region``.
    """
    region = {k: v for k, v in arguments.items() if k in RESERVED_ARGS}
    rest = {k: v for k, v in arguments.items() if k not in RESERVED_ARGS}
    return region, rest
