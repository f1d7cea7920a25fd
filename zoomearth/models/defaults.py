"""The process-wide default pool: one :class:`ModelPool` per pool configuration.

:func:`get_default_pool` hands every component (planner, tools, server) the pool of its settings,
so components with the same budgets share resident models and one budget;
:func:`set_default_pool` installs one pool for everything (embedding applications, tests);
:func:`pool_from_settings` builds a new pool from the settings.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zoomearth.models.pool import ModelPool

__all__ = ["get_default_pool", "pool_from_settings", "set_default_pool"]

_default_pool: ModelPool | None = None  # installed by set_default_pool: used for every call
_pools_by_config: dict[tuple[int | None, float, int], ModelPool] = {}
_default_pool_lock = threading.Lock()


def _pool_config(settings: Any) -> tuple[int | None, float, int]:
    """The pool configuration of ``settings`` (None: the defaults), as a hashable key."""
    budget = getattr(settings, "model_pool_budget_bytes", None)
    return (
        int(budget) if budget else None,
        float(getattr(settings, "model_pool_fraction", 0.8)),
        int(getattr(settings, "model_pool_concurrency", 1)),
    )


def pool_from_settings(settings: Any) -> ModelPool:
    """A new pool configured by the settings.

    Uses ``model_pool_budget_bytes`` (per device; None = a fraction of free memory),
    ``model_pool_fraction`` and ``model_pool_concurrency``.
    """
    # Imported here: zoomearth.models.pool imports this module (to keep exporting its names).
    from zoomearth.models.pool import ModelPool

    budget, fraction, concurrency = _pool_config(settings)
    budgets = {"cpu": budget, "cuda": budget} if budget else None
    return ModelPool(budgets, concurrency=concurrency, budget_fraction=fraction)


def get_default_pool(settings: Any = None) -> ModelPool:
    """The process-wide pool for ``settings``: shared by every component with the same budgets.

    There is one pool per distinct pool configuration (``model_pool_budget_bytes``,
    ``model_pool_fraction``, ``model_pool_concurrency``; see :func:`pool_from_settings`),
    created on first request and reused afterwards, so the planner and the tools of one
    configuration share their resident models and one budget. ``settings=None`` means the
    default configuration (the same pool as settings that leave the three values at their
    defaults). A second ``Agent`` built with another budget gets its own pool: models resident
    in the first pool stay there (owned by the first pool, freed by its LRU policy or
    :meth:`ModelPool.clear`); the two pools do not count each other's memory, so give every
    component of a process the same budget settings -- or pass one pool explicitly -- when
    they share a GPU.

    A pool installed with :func:`set_default_pool` overrides all of this: it is returned for
    every call, whatever the settings.
    """
    with _default_pool_lock:
        if _default_pool is not None:
            return _default_pool
        key = _pool_config(settings)
        pool = _pools_by_config.get(key)
        if pool is None:
            pool = _pools_by_config[key] = pool_from_settings(settings)
        return pool


def set_default_pool(pool: ModelPool | None) -> ModelPool | None:
    """Install ``pool`` as the pool of every :func:`get_default_pool` call (``None``: remove it).

    An embedding application uses this to make all components share one pool it configured;
    tests use it to install a pool with a small budget. Removing the installed pool also forgets
    the per-configuration pools, so the next requests create fresh ones (pools already handed
    out stay valid for their holders).

    Returns:
        The previously installed pool (None when there was none), so callers can restore it
        with ``set_default_pool(previous)``.
    """
    global _default_pool
    with _default_pool_lock:
        previous, _default_pool = _default_pool, pool
        if pool is None:
            _pools_by_config.clear()
        return previous
