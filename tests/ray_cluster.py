"""A local Ray cluster for tests: 2 CPUs in this process, workers that can import ``tests``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def local_ray(num_cpus: int = 2) -> Iterator[Any]:
    """``ray.init`` on this machine (no dashboard, no usage stats), shut down on exit; yields ray.

    The workers get the repository on ``PYTHONPATH``, so test tools pickled by reference
    (``tests.tools.tile_tools``) import there too.
    """
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
    )
    try:
        yield ray
    finally:
        ray.shutdown()
