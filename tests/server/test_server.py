"""The OpenAI-compatible server driven by the real ``openai`` client over a real uvicorn."""

from __future__ import annotations

import hashlib
import json
import re
import time

import httpx
import openai
import pytest

from tests.server.conftest import TOKEN
from tests.server.helpers import client, data_url, geotiff_bytes, png_bytes, user
from zoomearth.server.security import conversation_id_for

LINK_RE = re.compile(r"\((http://[^)\s]+)\)")


def stream_parts(stream):
    reasoning, content, extra = [], [], {}
    for chunk in stream:
        delta = chunk.choices[0].delta
        if getattr(delta, "reasoning_content", None):
            reasoning.append(delta.reasoning_content)
        if delta.content:
            content.append(delta.content)
        if chunk.choices[0].finish_reason:
            extra = (chunk.model_extra or {}).get("zoomearth", {})
    return "".join(reasoning), "".join(content), extra


@pytest.fixture(scope="module")
def image(server_env):
    _, _, tmp = server_env
    raw = geotiff_bytes(tmp, 800, 600)
    return raw, data_url(raw)


def test_models_card_names_registry_tools_and_planner(server_env):
    server, _, _ = server_env
    (model,) = client(server, TOKEN).models.list().data
    assert model.id == "zoomearth"
    extra = model.model_extra or {}
    for name in ("export_region", "gated_edit", "slow_tool"):
        assert name in extra["description"]
    assert "Planner: auto (dispatch)" in extra["description"]
    assert [t["name"] for t in extra["tools"]] == ["export_region", "gated_edit", "slow_tool"]


def test_healthz_needs_no_token_and_echoes_request_id(server_env):
    server, _, _ = server_env
    r = httpx.get(f"{server.url}/healthz", headers={"X-Request-Id": "abc-123"})
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert r.headers["x-request-id"] == "abc-123"


def test_streaming_progress_then_answer_with_signed_artifact_links(server_env, image):
    server, _, _ = server_env
    c = client(server, TOKEN)
    stream = c.chat.completions.create(model="zoomearth", stream=True,
                                       messages=[user("How many ships in the harbour?", image[1])])
    reasoning, content, extra = stream_parts(stream)
    assert "Zoom 'harbour' -> view 1: [0, 0, 512, 512]" in reasoning
    assert "Tool export_region" in reasoning and "-> export_region: Exported region" in reasoning
    assert content.startswith("three ships")
    assert extra["status"] == "answered"
    assert extra["conversation_id"] == conversation_id_for(
        "How many ships in the harbour?", hashlib.sha256(image[0]).hexdigest())
    links = LINK_RE.findall(content)
    png = next(u for u in links if u.split("?")[0].endswith("region.png"))
    assert "![" in content  # a markdown image preview
    # Signed links work without the bearer header (an <img> tag), tampered ones do not.
    r = httpx.get(png)
    assert r.status_code == 200 and r.content.startswith(b"\x89PNG")
    assert r.headers["content-type"] == "image/png"
    bad = png[:-4] + ("0000" if not png.endswith("0000") else "1111")
    r = httpx.get(bad)
    assert r.status_code == 403 and "expired" in r.json()["error"]["message"]
    # Without a signature the bearer token is required.
    unsigned = png.split("?")[0]
    assert httpx.get(unsigned).status_code == 401
    assert httpx.get(unsigned, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_non_streaming_returns_the_same_as_one_message(server_env, image):
    server, _, _ = server_env
    r = client(server, TOKEN).chat.completions.create(
        model="zoomearth", messages=[user("Count ships, non-streaming", image[1])])
    message = r.choices[0].message
    assert message.content.startswith("three ships")
    assert "Zoom 'harbour'" in (message.model_extra or {})["reasoning_content"]
    assert r.choices[0].finish_reason == "stop"


def test_upload_then_file_url_keeps_georeference(server_env, image):
    server, settings, _ = server_env
    c = client(server, TOKEN)
    f = c.files.create(file=("scene.tif", image[0], "image/tiff"), purpose="vision")
    extra = f.model_extra or {}
    assert f.id.startswith("file-") and f.bytes == len(image[0])
    assert extra["georeferenced"] is True and (extra["width"], extra["height"]) == (800, 600)
    # the content URL serves the very bytes (georeference kept)
    assert httpx.get(extra["url"]).content == image[0]
    r = c.chat.completions.create(model="zoomearth", messages=[user("Ships? (upload)",
                                                                     extra["url"])])
    assert r.choices[0].message.content.startswith("three ships")
    conv = (r.model_extra or {})["zoomearth"]["thread_id"]
    scene = _thread_values(server, conv)["scene"]  # the thread's scene is the uploaded file
    assert scene["path"].endswith(".tif") and scene["crs"] and scene["transform"]


def _thread_values(server, thread):
    app = server.server.config.app
    agent = app.state.zoomearth.agent
    return agent.graph.get_state({"configurable": {"thread_id": thread}}).values


def test_follow_up_continues_with_the_same_views_and_artifacts(server_env, image):
    server, _, _ = server_env
    c = client(server, TOKEN)
    headers = {"X-Conversation-Id": "follow-up-1"}
    first = [user("Where is the harbour?", image[1])]
    r1 = c.chat.completions.create(model="zoomearth", messages=first, extra_headers=headers)
    assert r1.choices[0].message.content.startswith("three ships")
    history = first + [{"role": "assistant", "content": r1.choices[0].message.content},
                       user("Now zoom on the pier again and export it")]
    reasoning, content, extra = stream_parts(c.chat.completions.create(
        model="zoomearth", messages=history, stream=True, extra_headers=headers))
    assert extra["thread_id"] == "follow-up-1"
    # the follow-up zoomed inside view 1 of the first question: views were kept
    assert "Zoom 'pier' -> view 3: [0, 0, 512, 512]" in reasoning
    assert content.startswith("exported again")
    # only this turn's artifacts are linked; their ids continue the thread's (3 and 4)
    values = _thread_values(server, "follow-up-1")
    assert [a["id"] for a in values["artifacts"]] == [1, 2, 3, 4]
    assert content.count("- [") == 2


def test_derived_conversation_id_is_deterministic(server_env, image):
    server, _, _ = server_env
    c = client(server, TOKEN)
    msgs = [user("Deterministic question", image[1])]
    a = c.chat.completions.create(model="zoomearth", messages=msgs).model_extra["zoomearth"]
    msgs2 = msgs + [{"role": "assistant", "content": "three ships"}, user("and again?")]
    b = c.chat.completions.create(model="zoomearth", messages=msgs2).model_extra["zoomearth"]
    assert a["conversation_id"] == b["conversation_id"] == a["thread_id"]
    assert a["conversation_id"] == conversation_id_for("Deterministic question",
                                                       hashlib.sha256(image[0]).hexdigest())


def test_metadata_conversation_id_and_new_image_gets_its_own_thread(server_env, image):
    server, _, tmp = server_env
    c = client(server, TOKEN)
    meta = {"conversation_id": "meta-conv"}
    r = c.chat.completions.create(model="zoomearth", metadata=meta,
                                  messages=[user("first image", image[1])])
    assert r.model_extra["zoomearth"]["thread_id"] == "meta-conv"
    other = png_bytes(300, 200, seed=3)
    r2 = c.chat.completions.create(model="zoomearth", metadata=meta, messages=[
        user("first image", image[1]), {"role": "assistant", "content": "ok"},
        user("and this one", data_url(other, "image/png"))])
    z = r2.model_extra["zoomearth"]
    assert z["conversation_id"] == "meta-conv"
    assert z["thread_id"] == "meta-conv." + hashlib.sha256(other).hexdigest()[:12]


def test_approval_is_asked_and_answered_in_the_next_message(server_env, image):
    server, _, _ = server_env
    c = client(server, TOKEN)
    headers = {"X-Conversation-Id": "approval-1"}
    msgs = [user("Please edit out the cloud", image[1])]
    r = c.chat.completions.create(model="zoomearth", messages=msgs, extra_headers=headers)
    text = r.choices[0].message.content
    assert text == "Run gated_edit with {}? Reply 'approve' or 'deny'."
    assert r.model_extra["zoomearth"]["status"] == "awaiting_approval"
    msgs += [{"role": "assistant", "content": text}, user("hmm, what?")]
    r = c.chat.completions.create(model="zoomearth", messages=msgs, extra_headers=headers)
    assert "waiting for your approval" in r.choices[0].message.content
    msgs += [{"role": "assistant", "content": r.choices[0].message.content}, user("approve")]
    reasoning, content, extra = stream_parts(c.chat.completions.create(
        model="zoomearth", messages=msgs, stream=True, extra_headers=headers))
    assert "-> gated_edit: edited (pretend)" in reasoning
    assert content.startswith("edit done") and extra["status"] == "answered"


def test_disconnect_cancels_the_run_and_the_checkpoint_resumes(server_env, image):
    server, _, tmp = server_env
    c = client(server, TOKEN)
    headers = {"X-Conversation-Id": "disconnect-1"}
    msgs = [user("Run the slow analysis", image[1])]
    stream = c.chat.completions.create(model="zoomearth", messages=msgs, stream=True,
                                       extra_headers=headers)
    for chunk in stream:
        delta = chunk.choices[0].delta
        if "slow_tool: " in (getattr(delta, "reasoning_content", None) or ""):
            break  # the tool is running and reporting progress
    stream.close()  # the client goes away mid-run
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        health = httpx.get(f"{server.url}/healthz").json()
        if health["runs"]["running"] == 0:
            break
        time.sleep(0.1)
    assert health["runs"]["running"] == 0, "the run was not cancelled"
    snapshot = server.server.config.app.state.zoomearth.agent.graph.get_state(
        {"configurable": {"thread_id": "disconnect-1"}})
    assert snapshot.next == ("slow_tool",)  # stopped inside the tool; resumable
    assert snapshot.values.get("status") != "answered"
    # The same message again continues from the checkpoint and finishes.
    reasoning, content, extra = stream_parts(c.chat.completions.create(
        model="zoomearth", messages=msgs, stream=True, extra_headers=headers))
    assert "slow tool finished 200 steps" in reasoning
    assert content.startswith("slow done") and extra["status"] == "answered"


# ---------------------------------------------------------------------------------------------
# Bad inputs: each with the right status and a clear message
# ---------------------------------------------------------------------------------------------
def _error(fn):
    with pytest.raises(openai.APIStatusError) as info:
        fn()
    body = info.value.body
    assert isinstance(body, dict) and body.get("message"), body
    assert "Traceback" not in json.dumps(body)
    return info.value.status_code, body


def test_no_image(server_env):
    server, _, _ = server_env
    c = client(server, TOKEN)
    status, body = _error(lambda: c.chat.completions.create(
        model="zoomearth", messages=[{"role": "user", "content": "what is here?"}]))
    assert status == 400 and body["code"] == "no_image" and "image_url" in body["message"]


def test_corrupt_image(server_env):
    server, _, _ = server_env
    c = client(server, TOKEN)
    corrupt = png_bytes(200, 100)[:300]  # a PNG cut short
    status, body = _error(lambda: c.chat.completions.create(
        model="zoomearth", messages=[user("q", data_url(corrupt, "image/png"))]))
    assert status == 400 and body["code"] == "corrupt_image"
    assert "could not be read" in body["message"] and "/tmp" not in body["message"]
    status, body = _error(lambda: c.chat.completions.create(
        model="zoomearth", messages=[user("q", data_url(b"hello world, not an image"))]))
    assert status == 400 and "not a supported image format" in body["message"]
    status, body = _error(lambda: c.chat.completions.create(
        model="zoomearth", messages=[user("q", "data:image/png;base64,@@@notbase64")]))
    assert status == 400 and "invalid base64" in body["message"]


def test_oversized_upload_and_data_url_and_pixels(server_env):
    server, _, _ = server_env
    c = client(server, TOKEN)
    big = png_bytes(1000, 1000, seed=1)  # ~3 MB of noise > max_upload_bytes 2.5 MB
    status, body = _error(lambda: c.files.create(file=("big.png", big), purpose="vision"))
    assert status == 413 and "max_upload_bytes" in body["message"]
    status, body = _error(lambda: c.chat.completions.create(
        model="zoomearth", messages=[user("q", data_url(big, "image/png"))]))
    assert status == 413 and "max_upload_bytes" in body["message"]
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (1200, 1000)).save(buf, format="PNG")  # 1.2 Mpx > 1 Mpx, few bytes
    status, body = _error(lambda: c.files.create(file=("wide.png", buf.getvalue()),
                                                 purpose="vision"))
    assert status == 413 and "max_upload_pixels" in body["message"]


def test_unknown_file_and_remote_url_and_unknown_model(server_env):
    server, _, _ = server_env
    c = client(server, TOKEN)
    url = f"{server.url}/v1/files/file-{'0' * 24}/content"
    status, body = _error(lambda: c.chat.completions.create(
        model="zoomearth", messages=[user("q", url)]))
    assert status == 404 and "POST /v1/files" in body["message"]
    status, body = _error(lambda: c.chat.completions.create(
        model="zoomearth", messages=[user("q", "https://example.com/a.png")]))
    assert status == 400 and "not fetched" in body["message"]
    status, body = _error(lambda: c.chat.completions.create(
        model="gpt-4o", messages=[user("q", "https://example.com/a.png")]))
    assert status == 404 and "zoomearth" in body["message"]
    assert httpx.get(f"{server.url}/v1/files/file-{'1' * 24}",
                     headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404


def test_file_urls_only_inside_allowed_roots(server_env):
    server, settings, tmp = server_env
    c = client(server, TOKEN)
    root = settings.allowed_roots[0]
    r = c.chat.completions.create(model="zoomearth",
                                  messages=[user("ships here?", f"file://{root}/scene.tif")])
    assert r.choices[0].message.content.startswith("three ships")
    outside = tmp / "outside.tif"
    outside.write_bytes((root / "scene.tif").read_bytes())
    (root / "escape.tif").symlink_to(outside)
    for url, words in ((f"file://{outside}", "outside the allowed"),
                       (f"file://{root}/../outside.tif", "'..'"),
                       (f"file://{root}/escape.tif", "symbolic link")):
        status, body = _error(lambda url=url: c.chat.completions.create(
            model="zoomearth", messages=[user("q", url)]))
        assert status == 403 and words in body["message"], body


def test_missing_or_invalid_token(server_env):
    server, _, _ = server_env
    status, body = _error(lambda: client(server, None).models.list())
    assert status == 401 and "bearer token" in body["message"].lower()
    r = httpx.post(f"{server.url}/v1/chat/completions", json={"model": "zoomearth",
                                                              "messages": []})
    assert r.status_code == 401 and "Authorization: Bearer" in r.json()["error"]["message"]
    assert r.headers["www-authenticate"] == "Bearer"
    status, body = _error(lambda: client(server, "wrong").chat.completions.create(
        model="zoomearth", messages=[user("q")]))
    assert status == 401 and "Invalid bearer token" in body["message"]


def test_malformed_requests(server_env):
    server, _, _ = server_env
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = httpx.post(f"{server.url}/v1/chat/completions", content=b"{not json", headers=auth)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(f"{server.url}/v1/chat/completions", headers=auth,
                   json={"model": "zoomearth", "messages": []})
    assert r.status_code == 400 and "non-empty" in r.json()["error"]["message"]
    r = httpx.post(f"{server.url}/v1/chat/completions", headers={**auth,
                   "X-Conversation-Id": "../../etc"},
                   json={"model": "zoomearth", "messages": [{"role": "user", "content": "q"}]})
    assert r.status_code == 400 and "Conversation id" in r.json()["error"]["message"]
    r = httpx.get(f"{server.url}/artifacts/../../etc/passwd", headers=auth)
    assert r.status_code == 404
    r = httpx.get(f"{server.url}/nowhere", headers=auth)
    assert r.status_code == 404 and r.json()["error"]["message"] == "Not found: /nowhere"
