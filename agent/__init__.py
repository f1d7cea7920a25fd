"""The planner side of the agent: prompt rendering, response parsing and planner backends.

Importing this package is cheap: it loads no model and no heavy library (no torch).
"""

from __future__ import annotations

from zoomearth.agent.parsing import (
    ParsedResponse,
    Problem,
    ProblemCode,
    ToolCallRequest,
    TurnDecision,
    ZoomRequest,
    parse_response,
    resolve_turn,
)

__all__ = [
    "ParsedResponse",
    "Problem",
    "ProblemCode",
    "ToolCallRequest",
    "TurnDecision",
    "ZoomRequest",
    "parse_response",
    "resolve_turn",
]
