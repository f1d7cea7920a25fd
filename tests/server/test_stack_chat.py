"""Several images in one chat message are a time stack; the first one is the reference grid."""

from __future__ import annotations

import pytest
import rasterio

from tests.scene.test_stack import GRID, smooth, to_crs, write_geo
from tests.server.helpers import client, data_url, rules_server, user

TOKEN = "stack-token"


@pytest.fixture(scope="module")
def stack_server(tmp_path_factory):
    """A real server with the rules planner; (server, tmp)."""
    tmp = tmp_path_factory.mktemp("stacksrv")
    with rules_server(tmp, TOKEN, allowed_roots=[tmp]) as server:
        yield server, tmp


def _values(server, thread):
    agent = server.server.config.app.state.zoomearth.agent
    return agent.graph.get_state({"configurable": {"thread_id": thread}}).values


def test_uploads_in_one_message_are_a_stack(stack_server):
    server, tmp = stack_server
    old = write_geo(tmp / "u_old.tif", smooth(300, 200, seed=30.0), GRID)
    new = to_crs(write_geo(tmp / "u_new.tif", smooth(300, 200), GRID), tmp / "u_new4326.tif",
                 "EPSG:4326")
    c = client(server, TOKEN)
    # The upload names carry the dates; the stored files do not.
    f_old = c.files.create(file=("harbour_2012.tif", old.read_bytes(), "image/tiff"),
                           purpose="vision")
    f_new = c.files.create(file=("harbour_2020.tif", new.read_bytes(), "image/tiff"),
                           purpose="vision")
    urls = [(f.model_extra or {})["url"] for f in (f_old, f_new)]
    r = c.chat.completions.create(
        model="zoomearth", messages=[user("What is in the top-left in 2012?", *urls)]
    )
    thread = r.model_extra["zoomearth"]["thread_id"]
    values = _values(server, thread)
    scene = values["scene"]
    # The first image of the message is the reference grid, although it is the older date.
    assert [d["label"] for d in scene["stack"]] == ["2012", "2020"]
    assert scene["stack_reference"] == 0
    assert (scene["width"], scene["height"]) == (300, 200)
    assert values["stack_dates"]["viewing"] == "2012"
    assert {v.get("date") for v in values["views"].values()} == {"2012"}

    # A follow-up without images keeps the stack; naming no date shows the newest.
    history = [user("What is in the top-left in 2012?", *urls),
               {"role": "assistant", "content": r.choices[0].message.content},
               user("and the bottom-right?")]
    r2 = c.chat.completions.create(model="zoomearth", messages=history)
    assert r2.model_extra["zoomearth"]["thread_id"] == thread
    values = _values(server, thread)
    assert values["stack_dates"]["viewing"] == "2020"
    zooms = [v for v in values["views"].values() if v["kind"] == "zoom"]
    assert [z["date"] for z in sorted(zooms, key=lambda z: z["view_id"])] == ["2012", "2020"]


def test_data_urls_dated_by_metadata_or_by_order(stack_server):
    server, tmp = stack_server
    a = write_geo(tmp / "d_a.tif", smooth(200, 150), GRID)
    b = write_geo(tmp / "d_b.tif", smooth(200, 150, seed=20.0), GRID)
    with rasterio.open(b, "r+") as ds:
        ds.update_tags(TIFFTAG_DATETIME="2019:05:04 10:00:00")
    c = client(server, TOKEN)
    r = c.chat.completions.create(model="zoomearth", messages=[
        user("what is in the top-right?", data_url(a.read_bytes()), data_url(b.read_bytes()))])
    values = _values(server, r.model_extra["zoomearth"]["thread_id"])
    # No date in a data URL's name: b's TIFF metadata dates it; a has none, so the stack keeps
    # the message's order with an order label.
    assert [d["label"] for d in values["scene"]["stack"]] == ["image 1", "2019-05-04"]
    assert values["scene"]["stack_reference"] == 0
    assert values["stack_dates"]["viewing"] == "2019-05-04"


def test_file_urls_in_one_message(stack_server):
    server, tmp = stack_server
    first = write_geo(tmp / "f_2016-07-01.tif", smooth(200, 150), GRID)
    second = write_geo(tmp / "f_2018-07-01.tif", smooth(200, 150, seed=9.0), GRID)
    c = client(server, TOKEN)
    r = c.chat.completions.create(model="zoomearth", messages=[
        user("what is in the middle?", f"file://{second}", f"file://{first}")])
    values = _values(server, r.model_extra["zoomearth"]["thread_id"])
    assert [d["label"] for d in values["scene"]["stack"]] == ["2016-07-01", "2018-07-01"]
    assert values["scene"]["stack_reference"] == 1  # the message's first image
    assert values["scene"]["path"] == str(second.resolve())

    # One image per message stays a one-date scene.
    r = c.chat.completions.create(model="zoomearth", messages=[
        user("what is in the middle, single?", f"file://{first}")])
    values = _values(server, r.model_extra["zoomearth"]["thread_id"])
    assert "stack" not in values["scene"]
    assert values["stack_dates"] is None
