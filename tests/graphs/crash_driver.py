"""Subprocess driver for the crash-safety test: ask (may be killed) or resume one thread."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.graphs.fakes import ScriptedPlanner, StatsTool
from zoomearth.api import Agent
from zoomearth.config import load_settings
from zoomearth.graphs.persistence import open_sqlite_checkpointer
from zoomearth.tools.registry import ToolRegistry

TURNS = [
    '{"bbox_2d": [0, 0, 64, 64], "label": "corner"}'
    '<tool_call>{"name": "region_stats", "arguments": {}}</tool_call>',
    "<answer>resumed fine</answer>",
]


def main() -> None:
    mode, workdir, image = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    settings = load_settings(flags={"data_dir": workdir / "data", "cache_dir": workdir / "cache"})
    events = workdir / "events.log"

    def log_event(event: dict) -> None:
        with open(events, "a") as fh:
            fh.write(json.dumps({"event": event.get("event"), "tool": event.get("tool")}) + "\n")

    agent = Agent(
        settings,
        planner=ScriptedPlanner(TURNS, counter_file=workdir / "planner.log"),
        registry=ToolRegistry(builtins={"region_stats": StatsTool}, entry_point_group=None),
        checkpointer=open_sqlite_checkpointer(workdir / "ck.sqlite"),
        strict=True,
        on_event=log_event,
    )
    if mode == "ask":
        result = agent.ask(image, "stats of the corner", thread="crash-thread")
    else:
        result = agent.resume("crash-thread")
    print(result.model_dump_json())


if __name__ == "__main__":
    main()
