"""Benchmark evaluation: loaders, official scorers, baselines, the runner and the report.

``zoomearth eval BENCHMARK --questions FILE --images DIR`` (see ``docs/eval.md``). Importing this
package imports nothing heavy (no pydantic models, no WordNet, no Ray): names load on first use,
so the CLI, which registers ``eval`` at start-up, stays fast.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BENCHMARKS", "Question", "QuestionFileError", "load_questions"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from zoomearth.eval import questions

        return getattr(questions, name)
    raise AttributeError(f"module 'zoomearth.eval' has no attribute {name!r}")
