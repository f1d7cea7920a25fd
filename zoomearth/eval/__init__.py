"""Benchmark evaluation: loaders, official scorers, baselines, the runner and the report.

``zoomearth eval BENCHMARK --questions FILE --images DIR`` (see ``docs/eval.md``). Importing this
package imports no model library, no WordNet and no Ray.
"""

from __future__ import annotations

from zoomearth.eval.questions import BENCHMARKS, Question, QuestionFileError, load_questions

__all__ = ["BENCHMARKS", "Question", "QuestionFileError", "load_questions"]
