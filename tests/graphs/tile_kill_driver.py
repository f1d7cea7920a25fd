"""Subprocess driver: a thread whose ``denoise`` call is killed mid-tool, then resumed.

``ask``: runs the thread with every tile slowed down (so the test can kill the process between
tiles); ``resume``: resumes the thread at full speed. Prints the run's record as JSON.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tests.graphs.fakes import ScriptedPlanner
from zoomearth.api import Agent
from zoomearth.config import load_settings
from zoomearth.graphs.persistence import open_sqlite_checkpointer
from zoomearth.tools.registry import get_registry

TURNS = [
    '<tool_call>{"name": "denoise", "arguments": {"preview": false}}</tool_call>',
    "<answer>denoised</answer>",
]


def main() -> None:
    mode, workdir, image = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    settings = load_settings(
        flags={"data_dir": workdir / "data", "cache_dir": workdir / "cache", "tool_tile_side": 48}
    )
    if mode == "ask":
        import zoomearth.tools.denoise as denoise

        real = denoise.dct_denoise

        def slow(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - a pass-through
            time.sleep(0.25)
            return real(*args, **kwargs)

        denoise.dct_denoise = slow  # type: ignore[assignment]
    agent = Agent(
        settings,
        planner=ScriptedPlanner(TURNS),
        registry=get_registry(),
        checkpointer=open_sqlite_checkpointer(workdir / "ck.sqlite"),
        strict=True,
    )
    if mode == "ask":
        result = agent.ask(image, "denoise it", thread="kill-thread")
    else:
        result = agent.resume("kill-thread")
    print(result.model_dump_json())


if __name__ == "__main__":
    main()
