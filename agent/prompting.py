"""Prompt templates as data, rendered strictly.

The planner's wording lives in ``prompts/zoomearth.yaml`` (package ``zoomearth.prompts``): a
mapping of *sections* (``system``, ``user``, ``tools``, ``final``, ``feedback``, ``zoom_caption``,
``tool_result``), each a jinja2 template. Rendering is strict (``StrictUndefined``): a variable a
section uses but the caller did not give is a :class:`PromptError` that names it, never a silent
empty string.

The setting ``planner_prompt`` points to a replacement file, so a user can supply a checkpoint's
exact training prompt:

* a ``.yaml`` / ``.yml`` file: a mapping that redefines any of the sections (the others keep the
  default text); unknown section names are an error;
* any other file: its whole text replaces the ``user`` section.

Example:
    >>> from zoomearth.agent.prompting import render_prompt
    >>> render_prompt("zoom_caption", view_id=3, caption="harbour", coord_mode="pixels",
    ...               layout="chat")
    'View 3: harbour'
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

from zoomearth.errors import ZoomEarthError

__all__ = [
    "DEFAULT_TEMPLATE_FILE",
    "SECTIONS",
    "PromptError",
    "PromptTemplate",
    "load_template",
    "qwen2_vl_chat_template",
    "render_prompt",
    "render_tool_section",
    "tool_json",
]

#: Name of the default template file inside the ``zoomearth.prompts`` package.
DEFAULT_TEMPLATE_FILE: Final = "zoomearth.yaml"
#: The packaged Qwen2-VL chat template (Hugging Face ``chat_template.json`` format).
CHAT_TEMPLATE_FILE: Final = "qwen2_vl_chat_template.json"
#: The sections every template set has.
SECTIONS: Final = ("system", "user", "tools", "final", "feedback", "zoom_caption", "tool_result")

MISSING_VARIABLE_TEMPLATE: Final = (
    "Prompt section '{section}' of {source} uses the variable '{name}', which was not given "
    "(given: {given}). Pass it to the renderer, or remove it from the template."
)
UNDEFINED_TEMPLATE: Final = (
    "Prompt section '{section}' of {source} refers to something undefined: {error}. "
    "Check the variables and attributes the template uses (given: {given})."
)
SYNTAX_TEMPLATE: Final = (
    "Prompt section '{section}' of {source} is not a valid jinja2 template "
    "(line {line}: {error}). Fix the template."
)
UNKNOWN_SECTION_TEMPLATE: Final = (
    "Prompt file {source} has no section '{section}'; sections: {sections}."
)
UNKNOWN_SECTIONS_IN_FILE_TEMPLATE: Final = (
    "Prompt file {source} defines unknown section(s) {names}; valid sections: {sections}."
)
NOT_A_MAPPING_TEMPLATE: Final = (
    "Prompt file {source} must be a YAML mapping of section names to template strings; got {kind}."
)
SECTION_NOT_TEXT_TEMPLATE: Final = (
    "Section '{section}' of prompt file {source} must be a string; got {kind}."
)
UNREADABLE_TEMPLATE: Final = (
    "Cannot read the prompt file {source}: {error}. Check the setting planner_prompt."
)
RENDER_FAILED_TEMPLATE: Final = "Prompt section '{section}' of {source} failed to render: {error}."


class PromptError(ZoomEarthError, ValueError):
    """A prompt template is unreadable, invalid, or was rendered without a variable it needs."""


@dataclass(frozen=True)
class PromptTemplate:
    """A set of prompt sections (jinja2 source text) and where they came from.

    Attributes:
        sections: Section name -> jinja2 template text.
        source: Where the text came from, for error messages (a path or ``package:zoomearth.yaml``).
    """

    sections: Mapping[str, str]
    source: str

    def render(self, section: str, /, **variables: Any) -> str:
        """Render one section strictly.

        Args:
            section: One of :data:`SECTIONS` (or any section the file defines).
            **variables: The template variables.

        Returns:
            The rendered text, stripped of leading and trailing whitespace.

        Raises:
            PromptError: Unknown section, a variable the section uses was not given, or the
                template is invalid.
        """
        if section not in self.sections:
            raise PromptError(
                UNKNOWN_SECTION_TEMPLATE.format(
                    source=self.source, section=section, sections=", ".join(sorted(self.sections))
                )
            )
        import jinja2

        given = ", ".join(sorted(variables)) or "none"
        template, needed = _compile(self.sections[section], section, self.source)
        missing = sorted(needed - set(variables))
        if missing:
            raise PromptError(
                MISSING_VARIABLE_TEMPLATE.format(
                    section=section, source=self.source, name=missing[0], given=given
                )
            )
        try:
            return template.render(**variables).strip()
        except jinja2.UndefinedError as exc:
            raise PromptError(
                UNDEFINED_TEMPLATE.format(
                    section=section, source=self.source, error=exc, given=given
                )
            ) from None
        except jinja2.TemplateError as exc:
            raise PromptError(
                RENDER_FAILED_TEMPLATE.format(section=section, source=self.source, error=exc)
            ) from None

    def check(self) -> None:
        """Compile every section (raises :class:`PromptError` on a syntax error)."""
        for name, text in self.sections.items():
            _compile(text, name, self.source)


@functools.lru_cache(maxsize=256)
def _compile(text: str, section: str, source: str) -> tuple[Any, frozenset[str]]:
    """Compile a section; return the template and the undeclared variables it uses."""
    import jinja2
    from jinja2 import meta

    env = _environment()
    try:
        ast = env.parse(text)
    except jinja2.TemplateSyntaxError as exc:
        raise PromptError(
            SYNTAX_TEMPLATE.format(section=section, source=source, line=exc.lineno, error=exc)
        ) from None
    needed = frozenset(meta.find_undeclared_variables(ast))
    return env.from_string(text), needed


@functools.lru_cache(maxsize=1)
def _environment() -> Any:
    import jinja2

    # Prompts are plain text for a model: no HTML autoescaping; strict about undefined names.
    return jinja2.Environment(  # noqa: S701 - not HTML
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
    )


def _read_yaml_sections(text: str, source: str) -> dict[str, str]:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PromptError(UNREADABLE_TEMPLATE.format(source=source, error=exc)) from None
    if not isinstance(data, dict):
        raise PromptError(NOT_A_MAPPING_TEMPLATE.format(source=source, kind=type(data).__name__))
    out: dict[str, str] = {}
    for key, value in data.items():
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise PromptError(
                SECTION_NOT_TEXT_TEMPLATE.format(
                    section=key, source=source, kind=type(value).__name__
                )
            )
        out[str(key)] = value
    return out


@functools.lru_cache(maxsize=1)
def _default_template() -> PromptTemplate:
    source = f"package:zoomearth.prompts/{DEFAULT_TEMPLATE_FILE}"
    text = resources.files("zoomearth.prompts").joinpath(DEFAULT_TEMPLATE_FILE).read_text("utf-8")
    template = PromptTemplate(_read_yaml_sections(text, source), source)
    template.check()
    return template


def load_template(path: str | Path | None = None) -> PromptTemplate:
    """Load the prompt sections: the packaged default, or a replacement file over it.

    Args:
        path: None for the default (``prompts/zoomearth.yaml``); else a replacement file: YAML
            (``.yaml``/``.yml``) redefining some sections, or any other text file whose content
            replaces the ``user`` section.

    Returns:
        The template set; every section is compiled, so syntax errors surface here.

    Raises:
        PromptError: The file cannot be read, is not a mapping of strings, names unknown sections
            or contains invalid jinja2.
    """
    default = _default_template()
    if path is None:
        return default
    p = Path(path).expanduser()
    source = str(p)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptError(UNREADABLE_TEMPLATE.format(source=source, error=exc)) from None
    if p.suffix.lower() in {".yaml", ".yml"}:
        overrides = _read_yaml_sections(text, source)
        unknown = sorted(set(overrides) - set(SECTIONS))
        if unknown:
            raise PromptError(
                UNKNOWN_SECTIONS_IN_FILE_TEMPLATE.format(
                    source=source, names=", ".join(unknown), sections=", ".join(SECTIONS)
                )
            )
    else:
        overrides = {"user": text}
    template = PromptTemplate({**default.sections, **overrides}, source)
    template.check()
    return template


def render_prompt(name: str, /, **variables: Any) -> str:
    """Render one section of the default template strictly.

    Args:
        name: The section (see :data:`SECTIONS`).
        **variables: Its variables.

    Returns:
        The rendered text (stripped).

    Raises:
        PromptError: A variable the section uses is missing (the message names it), or the
            section does not exist.
    """
    return load_template(None).render(name, **variables)


def tool_json(tool: Mapping[str, Any]) -> str:
    """One tool spec as the JSON line the ``tools`` section lists (Qwen's function format).

    Args:
        tool: A registry tool description: ``name``, ``description``, ``parameters`` (JSON Schema).

    Returns:
        ``{"type": "function", "function": {"name": ..., "description": ..., "parameters": ...}}``
        serialised compactly, non-ASCII kept.
    """
    function = {
        "name": str(tool.get("name", "")),
        "description": str(tool.get("description", "")),
        "parameters": tool.get("parameters") or {"type": "object", "properties": {}},
    }
    return json.dumps({"type": "function", "function": function}, ensure_ascii=False)


def render_tool_section(
    template: PromptTemplate, tools: Sequence[Mapping[str, Any]], **common: Any
) -> str:
    """Render the ``tools`` section for the registry's tool specs ("" when there are none).

    Args:
        template: The template set.
        tools: Tool descriptions (``name``, ``description``, ``parameters``).
        **common: The variables every section receives (``coord_mode``, ``layout``).

    Returns:
        The tool section text, or ``""`` for an empty tool list.
    """
    if not tools:
        return ""
    return template.render(
        "tools", tools=list(tools), tools_json=[tool_json(t) for t in tools], **common
    )


@functools.lru_cache(maxsize=1)
def qwen2_vl_chat_template() -> str:
    """The Qwen2-VL / Qwen2.5-VL chat template (jinja2 source, from ``prompts/``).

    Read from ``prompts/qwen2_vl_chat_template.json`` (Hugging Face's format). Used for
    checkpoints whose processor carries no chat template, and by the tiny test model.
    """
    text = resources.files("zoomearth.prompts").joinpath(CHAT_TEMPLATE_FILE).read_text("utf-8")
    return str(json.loads(text)["chat_template"])
