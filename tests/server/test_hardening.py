"""Regression tests of issue #14: malformed bodies, request ids, parameters and downloads."""

from __future__ import annotations

import httpx
import pytest

from tests.server.conftest import TOKEN
from tests.server.helpers import data_url, png_bytes, user

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def post_chat(server, content: bytes | str, **headers: str) -> httpx.Response:
    data = content.encode() if isinstance(content, str) else content
    return httpx.post(f"{server.url}/v1/chat/completions", content=data,
                      headers={**AUTH, "Content-Type": "application/json", **headers},
                      timeout=60)


def test_deep_json_nesting_is_a_400_with_the_request_id(server_env):
    server, _, _ = server_env
    for depth in (100, 100_000):
        body = '{"model": "zoomearth", "metadata": ' + "[" * depth + "]" * depth + "}"
        r = post_chat(server, body, **{"X-Request-Id": "deep-1"})
        assert r.status_code == 400, r.text
        assert "nested too deeply" in r.json()["error"]["message"]
        assert r.headers["x-request-id"] == "deep-1"


def test_lone_surrogate_is_a_400_not_a_unicode_error(server_env):
    server, _, _ = server_env
    url = data_url(png_bytes(), "image/png")
    for text in ('bad \\ud800 text', 'tail \\udfff'):
        body = ('{"model": "zoomearth", "messages": [{"role": "user", "content": ['
                f'{{"type": "text", "text": "{text}"}}, '
                f'{{"type": "image_url", "image_url": {{"url": "{url}"}}}}]}}]}}')
        r = post_chat(server, body, **{"X-Request-Id": "sur-1"})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert "lone UTF-16 surrogate" in err["message"] and err["code"] == "bad_unicode"
        assert "$.messages[0].content[0].text" in err["message"]
        assert r.headers["x-request-id"] == "sur-1"
    r = post_chat(server, '{"messages": [], "metadata": {"\\ud800": 1}}')
    assert r.status_code == 400 and "surrogate" in r.json()["error"]["message"]


def test_unhandled_error_is_a_500_naming_the_request_id(server_env, monkeypatch):
    server, _, _ = server_env
    import zoomearth.server.app as app_module

    def boom(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(app_module, "_prepare_turn", boom)
    body = {"model": "zoomearth", "messages": [user("hi")]}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body,
                   headers={**AUTH, "X-Request-Id": "client-rid-7"}, timeout=60)
    assert r.status_code == 500
    assert r.headers["x-request-id"] == "client-rid-7"
    err = r.json()["error"]
    assert "client-rid-7" in err["message"] and "secret" not in r.text
    assert err["type"] == "server_error"
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 500
    rid = r.headers["x-request-id"]
    assert rid and rid != "-" and rid in r.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/healthz", "/nowhere", "/v1/models"])
def test_every_response_carries_the_request_id(server_env, path):
    server, _, _ = server_env
    r = httpx.get(f"{server.url}{path}", headers={"X-Request-Id": "rid-x"})
    assert r.headers["x-request-id"] == "rid-x"


@pytest.mark.parametrize(("field", "value"), [
    ("n", 2), ("n", True), ("tools", [{"type": "function", "function": {"name": "f"}}]),
    ("tool_choice", "required"), ("response_format", {"type": "json_object"}),
    ("temperature", 5), ("temperature", "hot"), ("temperature", -0.1), ("top_p", 1.5),
])
def test_unsupported_parameters_are_refused(server_env, field, value):
    server, _, _ = server_env
    body = {"model": "zoomearth", "messages": [user("hi")], field: value}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == field and repr(field) in err["message"]


def test_honourable_parameters_are_accepted(server_env):
    server, _, _ = server_env
    body = {"model": "zoomearth", "messages": [], "n": 1, "temperature": 0.2, "top_p": 1,
            "tools": [], "tool_choice": "auto", "response_format": {"type": "text"}}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "no_messages"


def test_downloads_sniff_content_type_and_answer_head(server_env):
    server, settings, _ = server_env
    png = png_bytes(40, 30, seed=3)
    r = httpx.post(f"{server.url}/v1/files", headers=AUTH, timeout=60,
                   files={"file": ("page.html", png, "text/html")}, data={"purpose": "vision"})
    assert r.status_code == 200, r.text
    url = r.json()["url"]
    got = httpx.get(url)
    assert got.status_code == 200 and got.content == png
    assert got.headers["content-type"] == "image/png"
    assert got.headers["x-content-type-options"] == "nosniff"
    head = httpx.head(url)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == "image/png"
    assert int(head.headers["content-length"]) == len(png)

    run = settings.runs_dir / "conv-head" / "artifacts"
    run.mkdir(parents=True, exist_ok=True)
    (run / "note.html").write_text("<script>alert(1)</script>")
    (run / "crop.png").write_bytes(png)
    signer = server.server.config.app.state.zoomearth.signer
    for name, media in (("note.html", "text/plain"), ("crop.png", "image/png")):
        link = signer.url(server.url, f"/artifacts/conv-head/artifacts/{name}")
        for method in ("GET", "HEAD"):
            r = httpx.request(method, link)
            assert r.status_code == 200, (method, name, r.text)
            assert r.headers["content-type"].startswith(media)
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["x-request-id"]


def test_symlink_escape_does_not_disclose_its_target(server_env):
    server, settings, tmp = server_env
    outside = tmp / "outside-secret-dir"
    outside.mkdir(exist_ok=True)
    (outside / "scene.png").write_bytes(png_bytes())
    link = settings.allowed_roots[0] / "link.png"
    if not link.exists():
        link.symlink_to(outside / "scene.png")
    body = {"model": "zoomearth", "messages": [user("what?", link.as_uri())]}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 403, r.text
    message = r.json()["error"]["message"]
    assert "outside-secret-dir" not in message and "link.png" in message
    assert "symbolic link" in message


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory):
    """A server whose max_image_pixels is below any test image."""
    from tests.server.helpers import ServerThread, agent_factory
    from zoomearth.config import load_settings
    from zoomearth.server.app import create_app

    tmp = tmp_path_factory.mktemp("tiny")
    settings = load_settings(flags={
        "data_dir": tmp / "data", "cache_dir": tmp / "cache", "api_token": TOKEN,
        "max_image_pixels": 100}, environ={})
    with ServerThread(create_app(settings, agent_factory({}))) as server:
        yield server, tmp


def test_errors_do_not_disclose_temporary_names(tiny_server):
    server, tmp = tiny_server
    png = png_bytes(40, 30)
    r = httpx.post(f"{server.url}/v1/files", headers=AUTH, timeout=60,
                   files={"file": ("mine.png", png, "image/png")})
    assert r.status_code == 413, r.text
    message = r.json()["error"]["message"]
    assert "'mine.png'" in message and str(tmp) not in message and ".png declares" not in message
    body = {"model": "zoomearth", "messages": [user("what?", data_url(png, "image/png"))]}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 413, r.text
    message = r.json()["error"]["message"]
    assert "in the data URL" in message and str(tmp) not in message and ".part" not in message
