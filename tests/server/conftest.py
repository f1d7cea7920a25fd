"""Fixtures of the server tests: one real uvicorn server (with a token) per module."""

from __future__ import annotations

import pytest

from tests.server.helpers import (
    GatedEdit,
    ServerThread,
    SlowTool,
    agent_factory,
    tool_call,
    write_raster,
)

TOKEN = "test-token-123"
ZOOM = '<think>look closer {"bbox_2d": [0, 0, 100, 100], "label": "harbour"}</think>'


def plans(marker: str) -> dict[str, list[str]]:
    return {
        "again": ['<think>{"bbox_2d": [0, 0, 100, 100], "view": 1, "label": "pier"}</think>',
                  tool_call("export_region"), "<answer>exported again</answer>"],
        "edit": [tool_call("gated_edit"), "<answer>edit done</answer>"],
        "slow": [tool_call("slow_tool", steps=200, marker=marker), "<answer>slow done</answer>"],
        "default": [ZOOM, tool_call("export_region"), "<answer>three ships</answer>"],
    }


@pytest.fixture(scope="module")
def server_env(tmp_path_factory):
    """(server, settings, tmp) with a token, small limits and an allowed root."""
    from zoomearth.config import load_settings
    from zoomearth.server.app import create_app

    tmp = tmp_path_factory.mktemp("srv")
    allowed = tmp / "allowed"
    allowed.mkdir()
    write_raster(allowed / "scene.tif", 700, 500, 3, block=256, compress="deflate")
    settings = load_settings(flags={
        "data_dir": tmp / "data", "cache_dir": tmp / "cache", "allowed_roots": [allowed],
        "api_token": TOKEN, "max_upload_bytes": 2_500_000, "max_upload_pixels": 1_000_000,
        "max_concurrent_runs": 2, "max_queued_runs": 2,
    }, environ={})
    app = create_app(settings, agent_factory(plans(str(tmp / "slow.marker")), GatedEdit,
                                             SlowTool))
    with ServerThread(app) as server:
        yield server, settings, tmp
