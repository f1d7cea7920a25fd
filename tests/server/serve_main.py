"""``python -m tests.server.serve_main [serve options]``: ``zoomearth serve`` with test tools.

The real server command (:func:`zoomearth.server.cli.main`: argument parsing, logging, uvicorn,
signal handling) with the scripted planner of the tests, so a test can start it as a subprocess
and stop it with real signals. Questions containing "temp" run :class:`TempWritingTool` for
``steps`` progress steps (50 ms each); others answer at once.
"""

from __future__ import annotations

import sys

from tests.server.helpers import TempWritingTool, agent_factory, tool_call

PLANS = {
    "temp": [tool_call("temp_tool", steps=2000), "<answer>temp done</answer>"],
    "default": ["<answer>quick</answer>"],
}


def main(argv: list[str]) -> int:
    from zoomearth.server.cli import main as serve_main

    return serve_main(argv, agent_factory=agent_factory(PLANS, TempWritingTool))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
