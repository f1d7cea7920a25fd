"""The workbench page in a real browser (issue 17): Debian's Chromium driven by Playwright against
a real ``zoomearth serve`` with the offline rules planner.

One analyst session, step by step, in one page (each step needs the one before: the follow-up
continues the thread, the reload restores what the steps made):

1. the page loads and the scene's tiles render (tile responses 200, the map is not blank);
2. "segment the building in box ...": a numbered zoom box and a polygon layer appear; clicking
   the polygon opens a popup with its area in m²; clicking the step flies to the box;
3. a cloud-removal follow-up in the same thread: a raster layer appears and the swipe clips it;
4. an edit asks for approval: Deny leaves no output, asking again and Approve gives one;
5. a reload restores the thread (messages, boxes, layers);
6. the thread's link opened in another browser, then "New thread": the first question of the
   new thread names the same image and is answered;
7. no console errors, page errors or failed requests at any point.

Apart: a scene without georeferencing is shown in pixel space; a page left open renews its
signed tile and download URLs before they expire (a server with 10 s links); and a server bound
off loopback
with a token refuses a browser context without it (login box, data routes 401), while the
token typed into the login box opens the scene.

Screenshots: ``build/test-artifacts/workbench/*.png`` (or ``$ZOOMEARTH_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import io
import re
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.workbench.conftest import PageLog, Serve, artifacts_dir, non_loopback_ipv4

TURN_TIMEOUT_MS = 120_000  # one agent turn on two busy cores (tools run on the CPU)
SEGMENT = "segment the building in box 440,400,580,590"
CLOUDS = "remove clouds in box 0,0,1024,1024"
EDIT = "remove the building in box 440,400,580,590"
VIEWPORT = {"width": 1400, "height": 860}


def shot(page: Any, name: str) -> Image.Image:
    """Save a screenshot of the page (for the record) and return the map's own screenshot."""
    page.screenshot(path=str(artifacts_dir() / f"{name}.png"))
    return Image.open(io.BytesIO(page.locator("#map").screenshot())).convert("RGB")


def wait_idle(page: Any) -> None:
    """Wait for the page to be ready and no turn to be running, and for the tiles to settle."""
    page.wait_for_selector("body[data-ready=true][data-busy=false]", timeout=TURN_TIMEOUT_MS)
    page.wait_for_function(
        "() => document.querySelectorAll('.leaflet-tile-container img.leaflet-tile:not("
        ".leaflet-tile-loaded)').length === 0", timeout=30_000)
    page.wait_for_timeout(400)  # Leaflet fades new tiles in (0.2 s)


def ask(page: Any, text: str) -> None:
    """Type a question, send it, and wait until its answer has streamed in."""
    before = page.locator(".msg-assistant").count()
    page.fill("#prompt", text)
    page.click("#send")
    page.wait_for_function(f"() => document.querySelectorAll('.msg-assistant').length > {before}")
    wait_idle(page)


def open_page(browser: Any, **context_options: Any) -> tuple[Any, Any, PageLog]:
    """A new browser context at the test viewport, its page, and the page's log."""
    context = browser.new_context(viewport=VIEWPORT, **context_options)
    page = context.new_page()
    log = PageLog()
    log.attach(page)
    return context, page, log


def map_variance(img: Image.Image) -> float:
    return float(np.asarray(img, dtype=np.float32).std())


def assert_clean(log: PageLog, step: str) -> None:
    problems = log.problems()
    assert not problems, f"after {step}: browser reported {problems}"


@pytest.fixture
def session_page(browser: Any, server: Serve) -> Any:
    context, page, log = open_page(browser)
    page.set_default_timeout(30_000)
    try:
        yield page, log
    finally:
        context.close()


def test_analyst_session(session_page: Any, server: Serve, browser: Any) -> None:
    page, log = session_page

    # 1. Load: the first scene of the allowed roots opens; its tiles render.
    page.goto(f"{server.url}/")
    wait_idle(page)
    assert page.title() == "ZoomEarth workbench"
    assert "scene.tif" in page.inner_text("#scene-title")
    assert "georeferenced" in page.inner_text("#scene-title")
    img = shot(page, "01-loaded")
    assert map_variance(img) > 15, "the map screenshot is blank: the scene tiles did not render"
    assert log.tiles, "the page requested no tiles"
    assert all(status == 200 for status, _ in log.tiles), log.tiles
    assert_clean(log, "loading the page")

    # 2. Segmentation: a numbered box, a polygon layer, a popup with the area.
    ask(page, SEGMENT)
    page.wait_for_selector("path.ze-box")
    assert page.locator(".ze-box-label span").first.inner_text() == "1"
    step = page.locator(".step-view").first
    assert step.locator(".badge").inner_text() == "1"
    assert "segmentation" in page.inner_text(".msg-assistant >> nth=-1")
    page.wait_for_selector("[data-kind=vector]")
    vector = page.locator("path.ze-vector").first
    vector.wait_for()
    # Fly to the box first (the step in the chat), so the polygon is big enough to click.
    zoom_before = page.evaluate("() => window.zoomearthWorkbench.mapView.map.getZoom()")
    step.click()
    page.wait_for_function(
        f"() => window.zoomearthWorkbench.mapView.map.getZoom() > {zoom_before}")
    page.wait_for_timeout(900)  # the fly animation
    wait_idle(page)
    vector.click()
    popup = page.locator(".leaflet-popup-content")
    popup.wait_for()
    page.wait_for_timeout(400)  # the popup's fade-in
    area = popup.locator(".ze-area").inner_text()
    assert re.fullmatch(r"[\d,]+(\.\d)? m²", area), area
    assert float(area.split()[0].replace(",", "")) > 100
    shot(page, "02-segmentation-popup")
    page.locator(".leaflet-popup-close-button").click()
    assert_clean(log, "the segmentation")

    # 3. Cloud removal in the same thread: a raster layer, and the swipe clips it.
    rasters_before = page.locator("[data-kind=raster]").count()
    tiles_before = len(log.tiles)
    ask(page, CLOUDS)
    assert page.locator(".ze-box-label").count() == 2
    assert page.locator("[data-kind=raster]").count() > rasters_before
    assert "cloud_removal" in page.inner_text(".msg-assistant >> nth=-1")
    # The cloud-free raster (masks are listed too, hidden).
    raster = page.locator("[data-kind=raster][data-artifact-kind=raster]"
                          "[data-tool=cloud_removal]").first
    assert raster.locator("[data-role=visible]").is_checked()
    raster.locator("[data-role=zoom]").click()
    page.wait_for_timeout(900)
    wait_idle(page)
    output_tiles = [u for s, u in log.tiles[tiles_before:] if s == 200]
    key = raster.get_attribute("data-key")
    layer_id = page.evaluate(
        f"() => window.zoomearthWorkbench.layers.items.get('{key}').art.layer.layer_id")
    assert any(f"/v1/tiles/{layer_id}/" in u for u in output_tiles), \
        "no tile of the cloud-free layer was loaded"
    raster.locator("[data-role=swipe]").click()
    page.wait_for_selector("#swipe:not([hidden])")
    clip_of = ("() => window.zoomearthWorkbench.swipe.layer.getContainer().style.clip")
    page.locator("#swipe-range").fill("700")
    clip_a = page.evaluate(clip_of)
    img_a = shot(page, "03-swipe-70")
    page.locator("#swipe-range").fill("200")
    clip_b = page.evaluate(clip_of)
    img_b = shot(page, "03-swipe-20")
    assert clip_a.startswith("rect(") and clip_b.startswith("rect("), (clip_a, clip_b)
    assert clip_a != clip_b, "moving the swipe did not change the clip"
    left = lambda c: float(c.rstrip(")").split(",")[3].strip().removesuffix("px"))  # noqa: E731
    assert left(clip_b) < left(clip_a), (clip_a, clip_b)
    # The pixels between the two divider positions changed (before <-> after there).
    w, h = img_a.size
    band = (int(w * 0.3), 0, int(w * 0.6), h)
    diff = np.abs(np.asarray(img_a.crop(band), np.float32)
                  - np.asarray(img_b.crop(band), np.float32))
    assert diff.mean() > 1.0, "the swipe did not change what the map shows"
    raster.locator("[data-role=swipe]").click()  # swipe off
    assert_clean(log, "the cloud removal and swipe")

    # 4. An edit needs approval: Deny leaves no output; Approve gives one. The decision is
    # answered inside the question's turn (one reply per question, as the history has it).
    outputs = page.locator("[data-kind=raster], [data-kind=vector]").count()
    ask(page, EDIT)
    page.wait_for_selector("#approval:not([hidden])")
    assert "approve" in page.inner_text("#approval-text").lower()
    last = page.locator(".msg-assistant >> nth=-1")
    assert last.locator(".step-tool[data-status=needs_approval]").count() == 1
    shot(page, "04-approval")
    page.click("#deny")
    wait_idle(page)
    assert page.locator("#approval").is_hidden()
    assert last.locator(".step-tool[data-status=denied]").count() == 1
    assert last.locator(".step-artifact").count() == 0, "Deny produced an output"
    assert page.locator("[data-kind=raster], [data-kind=vector]").count() == outputs, \
        "Deny produced an output layer"
    ask(page, EDIT)
    page.wait_for_selector("#approval:not([hidden])")
    page.click("#approve")
    wait_idle(page)
    last = page.locator(".msg-assistant >> nth=-1")
    assert last.locator(".step-tool[data-status=ok]").count() == 1
    assert last.locator(".step-artifact").count() >= 1, "Approve produced no output"
    assert last.locator(".step-artifact a.download").count() >= 1
    assert page.locator("[data-kind=raster]").count() > rasters_before + 1, \
        "the edited raster is not a layer"
    shot(page, "05-approved")
    assert_clean(log, "the approval")

    # 5. Reload: the thread comes back from the server.
    counts = {sel: page.locator(sel).count() for sel in
              (".msg-user", ".msg-assistant", ".ze-box-label", "[data-kind=raster]",
               "[data-kind=vector]", ".step-view", ".step-artifact")}
    thread = page.evaluate("() => window.zoomearthWorkbench.state.conv")
    assert f"thread={thread}" in page.url
    page.reload()
    wait_idle(page)
    page.wait_for_selector("path.ze-vector")
    assert page.evaluate("() => window.zoomearthWorkbench.state.conv") == thread
    after = {sel: page.locator(sel).count() for sel in counts}
    assert after == counts, f"reload restored {after}, expected {counts}"
    assert SEGMENT in page.inner_text("#messages")
    img = shot(page, "06-reloaded")
    assert map_variance(img) > 15
    assert_clean(log, "the reload")

    # The download links work (signed, no bearer header needed).
    href = page.locator(".step-artifact a.download").first.get_attribute("href")
    assert href
    assert httpx.get(href if href.startswith("http") else f"{server.url}{href}",
                     timeout=30).status_code == 200

    # 6. The thread's link in another browser (nothing stored there): "New thread" keeps the
    # scene, and its first question names the same image (the history's image_url).
    context, other, other_log = open_page(browser)
    try:
        other.goto(page.url)
        wait_idle(other)
        other.wait_for_selector("path.ze-vector")
        other.click("#new-thread")
        fresh = other.evaluate("() => window.zoomearthWorkbench.state.conv")
        assert fresh != thread
        ask(other, "what is in the top-left corner?")
        assert other.locator(".msg-assistant").count() == 1
        assert other.locator(".msg-assistant .error").count() == 0
        assert other.locator(".msg-assistant .answer").inner_text().strip()
        assert not other.locator("#messages > .note").count(), other.inner_text("#messages")
        history = httpx.get(f"{server.url}/v1/workbench/threads/{fresh}", timeout=30).json()
        assert [m["role"] for m in history["messages"]] == ["user", "assistant"]
        assert history["scene"]["name"] == "scene.tif"
        assert history["image_url"].startswith("file://")
        shot(other, "06b-new-thread-from-link")
        assert_clean(other_log, "a new thread from a shared link")
    finally:
        context.close()


def test_pixel_space_scene(browser: Any, server: Serve) -> None:
    """A PNG without georeferencing opens in pixel space (L.CRS.Simple); its tiles render."""
    context, page, log = open_page(browser)
    try:
        page.goto(f"{server.url}/")
        wait_idle(page)
        path = page.eval_on_selector(
            "#scene-select", "s => [...s.options].find(o => o.value.endsWith('plain.png')).value")
        page.select_option("#scene-select", path)
        page.click("#scene-open")
        page.wait_for_function(
            "() => (window.zoomearthWorkbench.state.scene || {}).name === 'plain.png'")
        wait_idle(page)
        assert "pixel space" in page.inner_text("#scene-title")
        assert page.evaluate("() => window.zoomearthWorkbench.mapView.map.options.crs "
                             "=== L.CRS.Simple")
        img = shot(page, "07-pixel-space")
        assert map_variance(img) > 15
        assert any(s == 200 for s, _ in log.tiles)
        assert all(s == 200 for s, _ in log.tiles), log.tiles
        assert_clean(log, "opening a scene without georeferencing")
    finally:
        context.close()


def test_upload_a_scene_and_ask(browser: Any, server: Serve, tmp_path: Any) -> None:
    """A raster uploaded from the page (POST /v1/files) opens on the map and can be asked about."""
    from zoomearth.scene.synth import generate_scene

    upload = generate_scene(tmp_path / "mine.tif", 600, seed=2, progress=False).image_path
    context, page, log = open_page(browser)
    try:
        page.goto(f"{server.url}/")
        wait_idle(page)
        page.set_input_files("#scene-upload", str(upload))
        page.wait_for_function(
            "() => ((window.zoomearthWorkbench.state.source || {}).file_id || '')"
            ".startsWith('file-')")
        wait_idle(page)
        assert "600 × 600" in page.inner_text("#scene-title")
        assert map_variance(shot(page, "10-uploaded")) > 15
        ask(page, "what is in the top-right corner?")
        page.wait_for_selector("path.ze-box")
        assert page.locator(".msg-assistant .answer").inner_text().strip()
        shot(page, "11-uploaded-asked")
        assert all(s == 200 for s, _ in log.tiles), log.tiles
        assert_clean(log, "uploading a scene and asking about it")
    finally:
        context.close()


def test_signed_urls_are_renewed_before_they_expire(
    browser: Any, scenes: Any, tmp_path: Any
) -> None:
    """Links live link_ttl_s (10 s here): a page left open renews the signed tile URLs of the
    scene and of a tool's raster layer by itself, so tiles requested after the first links
    expired still load (no 403), and an expired download link is renewed when clicked."""
    srv = Serve(tmp_path / "short-links", [scenes], sets=("link_ttl_s=10",))
    context, page, log = open_page(browser, accept_downloads=True)
    try:
        page.goto(f"{srv.url}/")
        wait_idle(page)
        ask(page, CLOUDS)
        raster = page.locator("[data-kind=raster][data-artifact-kind=raster]"
                              "[data-tool=cloud_removal]").first
        key = raster.get_attribute("data-key")
        urls = (f"() => [window.zoomearthWorkbench.mapView.sceneLayer._url, "
                f"window.zoomearthWorkbench.layers.items.get('{key}').leaflet._url]")
        first = page.evaluate(urls)
        assert all("exp=" in u for u in first)
        page.wait_for_function(f"() => ({urls})().every((u, i) => u !== {first!r}[i])",
                               timeout=20_000)
        page.wait_for_timeout(11_000)  # the first signatures have expired by now
        # New tiles (zoomed in, over the cloud-free output) carry the renewed signatures.
        tiles_before = len(log.tiles)
        raster.locator("[data-role=zoom]").click()
        page.wait_for_timeout(900)
        page.evaluate("() => window.zoomearthWorkbench.mapView.map.zoomIn(1, {animate: false})")
        wait_idle(page)
        fresh = log.tiles[tiles_before:]
        assert fresh, "zooming in requested no tile"
        layer_id = page.evaluate(
            f"() => window.zoomearthWorkbench.layers.items.get('{key}').art.layer.layer_id")
        assert any(f"/v1/tiles/{layer_id}/" in u for _, u in fresh), "no output tile requested"
        assert all(status == 200 for status, _ in fresh), fresh
        # The chat's download link of the cloud-free GeoTIFF expired long ago: renewed on click.
        link = page.locator(".step-artifact a.download[download$='cloudfree.tif']").first
        with page.expect_download() as info:
            link.click()
        with open(info.value.path(), "rb") as fh:
            assert fh.read(4) in (b"II*\x00", b"MM\x00*", b"II+\x00"), "not a GeoTIFF"
        assert_clean(log, "renewing signed URLs")
    finally:
        context.close()
        srv.stop()


def test_token_required_off_loopback(browser: Any, scenes: Any, tmp_path: Any) -> None:
    """A server bound off loopback requires its token: the page asks for it, data routes 401.

    The browser connects through the machine's own non-loopback address when it has one (a
    server with a token requires it from every client; loopback is the fallback address).
    """
    token = "wb-test-token-4f1c"
    ip = non_loopback_ipv4() or "127.0.0.1"
    srv = Serve(tmp_path / "offloop", [scenes], host="0.0.0.0", token=token, connect=ip)
    try:
        # A context without the token: login box, and the data routes refuse it.
        context = browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        page.goto(f"{srv.url}/")
        page.wait_for_selector("#login:not([hidden])")
        assert page.locator("#map .leaflet-tile").count() == 0
        shot(page, "08-login-required")
        for path in ("/v1/workbench/scenes", "/v1/models"):
            r = page.request.get(f"{srv.url}{path}")
            assert r.status == 401, (path, r.status)
        r = page.request.post(f"{srv.url}/v1/workbench/layers",
                              data={"path": str(scenes / "scene.tif")})
        assert r.status == 401
        # A wrong token is refused in the login box.
        page.fill("#login-token", "wrong")
        page.click("#login-submit")
        page.wait_for_selector("#login-error:not([hidden])")
        context.close()

        # Typing the right token opens the scene; tiles load through signed URLs.
        context, page, log = open_page(browser)
        page.goto(f"{srv.url}/")
        page.wait_for_selector("#login:not([hidden])")
        page.fill("#login-token", token)
        page.click("#login-submit")
        page.wait_for_selector("#login", state="hidden")
        wait_idle(page)
        img = shot(page, "09-signed-in")
        assert map_variance(img) > 15
        assert log.tiles and all(s == 200 for s, _ in log.tiles), log.tiles
        tile = log.tiles[0][1]
        # The tile URL is signed: it works without the header, and not unsigned.
        assert httpx.get(tile, timeout=30).status_code == 200
        assert httpx.get(tile.split("?")[0], timeout=30).status_code in (401, 403)
        assert not log.console and not log.errors, log.problems()
        context.close()
    finally:
        srv.stop()
