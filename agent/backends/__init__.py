"""Planner backends and the choice between them.

=================  ================================================================  ===========
backend            class (imported lazily, by module path)                           needs
=================  ================================================================  ===========
``transformers``   ``zoomearth.agent.backends.hf:TransformersPlanner``               weights
``openai``         ``zoomearth.agent.backends.openai_compat:OpenAIPlanner``          a server
``rules``          ``zoomearth.agent.backends.rules:RulesPlanner``                   nothing
``script``         ``zoomearth.agent.backends.script:ScriptPlanner``                 a plan file
=================  ================================================================  ===========

``planner = "auto"`` (the default) resolves, in order, to ``transformers`` when ``planner_model``
is a local checkpoint directory (it holds a ``config.json``) or a hub id already present in the
Hugging Face cache (checked offline), else ``openai`` when ``planner_base_url`` is set, else
``rules``. :func:`resolve_backend` returns the choice with a one-line reason that the run shows.

Importing this package imports no backend module, no model library and touches no network.
"""

from __future__ import annotations

import importlib
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from zoomearth.agent.base import Planner, PlannerError

if TYPE_CHECKING:
    from zoomearth.config import Settings

__all__ = [
    "BACKENDS",
    "make_planner",
    "resolve_auto",
    "resolve_backend",
]

_log = logging.getLogger(__name__)

#: Backend name -> ``module:Class`` of its planner (constructed as ``Cls(settings, pool=None)``).
BACKENDS: Final[dict[str, str]] = {
    "transformers": "zoomearth.agent.backends.hf:TransformersPlanner",
    "openai": "zoomearth.agent.backends.openai_compat:OpenAIPlanner",
    "rules": "zoomearth.agent.backends.rules:RulesPlanner",
    "script": "zoomearth.agent.backends.script:ScriptPlanner",
}

UNKNOWN_BACKEND_TEMPLATE: Final = (
    "Unknown planner backend {name!r}; valid backends are: {valid}. "
    "Set it with planner=NAME (see `zoomearth config`)."
)
BACKEND_MISSING_TEMPLATE: Final = (
    "The planner backend {name!r} is not available in this installation (module {module} could "
    "not be imported: {reason}). Choose another with planner=NAME; valid backends are: {valid}."
)
AUTO_LOCAL_TEMPLATE: Final = (
    "planner=auto chose transformers: planner_model {model} is a local checkpoint "
    "(config.json found)."
)
AUTO_CACHED_TEMPLATE: Final = (
    "planner=auto chose transformers: planner_model {model} is in the Hugging Face cache."
)
AUTO_OPENAI_TEMPLATE: Final = (
    "planner=auto chose openai: planner_base_url is set ({url}){model_note}."
)
AUTO_RULES_TEMPLATE: Final = (
    "planner=auto chose rules (offline, no vision-language model): {why}. It follows explicit "
    "commands (regions, coordinates, tool keywords) but cannot answer open questions; configure a "
    "model with planner=transformers and planner_model=PATH, or planner=openai with "
    "planner_base_url=URL (see `zoomearth config`)."
)
EXPLICIT_TEMPLATE: Final = "planner={name} (set explicitly)."

# A hub id: "name" or "owner/name" (letters, digits, "-", "_", "."), as the hub accepts them.
_HUB_ID_RE: Final = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}(?:/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?"
)


def _local_checkpoint(model: str) -> tuple[bool, str | None]:
    """Whether ``model`` names a local checkpoint directory; and why not, when it looks like one."""
    path = Path(model).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return True, None
        return False, f"planner_model {model} is a directory without config.json"
    return False, None


def _in_hf_cache(model: str, cache_dir: str | Path | None) -> bool:
    """Whether ``model`` (a hub id) has a ``config.json`` in the local Hugging Face cache.

    Offline by construction: only the cache folders are read.
    """
    if not _HUB_ID_RE.fullmatch(model) or ".." in model:
        return False
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # the transformers extra is not installed: nothing can be cached
        return False
    try:
        found = try_to_load_from_cache(model, "config.json", cache_dir=cache_dir)
    except ValueError:  # HFValidationError: not a valid repo id after all
        return False
    return isinstance(found, str)


def resolve_auto(settings: Settings, *, hf_cache_dir: str | Path | None = None) -> tuple[str, str]:
    """Choose the backend that ``planner = "auto"`` stands for.

    Args:
        settings: The effective settings (``planner_model`` and ``planner_base_url`` are read).
        hf_cache_dir: Hugging Face hub cache to look in (default: the hub's own default, which
            honours ``HF_HUB_CACHE`` / ``HF_HOME``).

    Returns:
        ``(backend_name, reason)``: one of ``transformers``, ``openai``, ``rules``, and a one-line
        reason for the run log that says which was chosen and why.
    """
    model = settings.planner_model
    url = settings.planner_base_url
    why_not_local: str | None = None
    if model:
        is_local, why_not_local = _local_checkpoint(model)
        if is_local:
            return "transformers", AUTO_LOCAL_TEMPLATE.format(model=model)
        if why_not_local is None and _in_hf_cache(model, hf_cache_dir):
            return "transformers", AUTO_CACHED_TEMPLATE.format(model=model)
    if url:
        model_note = f", serving model {model}" if model else ""
        return "openai", AUTO_OPENAI_TEMPLATE.format(url=url, model_note=model_note)
    if not model:
        why = "planner_model and planner_base_url are not set"
    elif why_not_local:
        why = f"{why_not_local} and planner_base_url is not set"
    else:
        why = (
            f"planner_model {model} is neither a local checkpoint nor in the Hugging Face cache "
            "(auto never downloads; set planner=transformers to download it) and "
            "planner_base_url is not set"
        )
    return "rules", AUTO_RULES_TEMPLATE.format(why=why)


def resolve_backend(
    settings: Settings, *, hf_cache_dir: str | Path | None = None
) -> tuple[str, str]:
    """The backend :func:`make_planner` builds for these settings, with the reason.

    Args:
        settings: The effective settings.
        hf_cache_dir: Passed to :func:`resolve_auto`.

    Returns:
        ``(backend_name, reason)``.

    Raises:
        PlannerError: When ``settings.planner`` names no known backend.
    """
    name = str(settings.planner)
    if name == "auto":
        return resolve_auto(settings, hf_cache_dir=hf_cache_dir)
    if name not in BACKENDS:
        raise PlannerError(
            UNKNOWN_BACKEND_TEMPLATE.format(name=name, valid=", ".join(["auto", *BACKENDS]))
        )
    return name, EXPLICIT_TEMPLATE.format(name=name)


def _load_class(name: str) -> type[Planner]:
    module_name, _, attr = BACKENDS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise  # a dependency of the backend is missing: its own error says what to install
        raise PlannerError(
            BACKEND_MISSING_TEMPLATE.format(
                name=name,
                module=module_name,
                reason=exc,
                valid=", ".join(["auto", *BACKENDS]),
            )
        ) from None
    cls: type[Planner] = getattr(module, attr)
    return cls


def make_planner(settings: Settings, pool: Any = None) -> Planner:
    """Build the planner backend named by ``settings.planner`` (resolving ``auto``).

    Nothing heavy happens here: backends load weights or open clients on their first
    :meth:`~zoomearth.agent.base.Planner.plan` call. The choice and its reason are logged at INFO
    level and kept on the planner as ``planner.selection``, which the graph shows in the run.

    Args:
        settings: The effective settings.
        pool: The shared model pool (used by the ``transformers`` backend).

    Returns:
        The planner.

    Raises:
        PlannerError: Unknown backend name, a backend module that is missing from the
            installation, or a backend that cannot be configured (e.g. ``script`` without a plan).
    """
    name, reason = resolve_backend(settings)
    _log.info("%s", reason)
    cls = _load_class(name)
    planner = cls(settings, pool=pool)  # type: ignore[call-arg]
    planner.selection = reason  # shown in the run (live display and run record)
    return planner
