"""The server's allow-list of URL prefixes (``allowed_url_prefixes``) for chat image URLs.

Off by default (the existing "not fetched" refusal). On, a URL must match a prefix by scheme,
host, port and whole path segments; look-alike hosts, ``user@host`` forms, dot segments,
encoded slashes and other schemes are refused, and so is a redirect to another host.
"""

from __future__ import annotations

import pytest

from tests.server.helpers import ServerThread, client
from zoomearth.scene.remote import (
    RemoteNotFoundError,
    RemoteRedirectError,
    RemoteURLNotAllowedError,
    check_url_allowed,
    preflight,
    url_allowed,
)
from zoomearth.server.errors import ApiError

PREFIXES = ["https://good.example.com/data", "s3://bucket/cogs/", "http://127.0.0.1:8080/"]


@pytest.mark.parametrize("url", [
    "https://good.example.com/data/scene.tif",
    "https://good.example.com/data",
    "HTTPS://GOOD.example.com/data/sub/dir/scene.tif?X-Amz-Signature=abc",
    "https://good.example.com:443/data/scene.tif",
    "https://good.example.com./data/scene.tif",
    "s3://bucket/cogs/a/b.tif",
    "http://127.0.0.1:8080/anything.tif",
])
def test_urls_under_a_prefix_are_allowed(url):
    assert url_allowed(url, PREFIXES)
    assert check_url_allowed(url, PREFIXES)


@pytest.mark.parametrize("url", [
    "https://good.example.com.evil.example/data/scene.tif",   # look-alike host
    "https://good.example.com@evil.example/data/scene.tif",   # user@host hides the host
    "https://good.example.com:443@evil.example/data/x.tif",
    "https://evil.example/good.example.com/data/scene.tif",   # host in the path
    "https://good.example.com/database.tif",                  # not a whole path segment
    "https://good.example.com/other/scene.tif",
    "https://good.example.com/data/../secret.tif",            # dot segments
    "https://good.example.com/data/%2e%2e/secret.tif",
    "https://good.example.com/data%2F..%2Fsecret.tif",        # encoded slash
    "https://good.example.com/data\\..\\secret.tif",          # backslashes
    "http://good.example.com/data/scene.tif",                 # another scheme
    "https://good.example.com:8443/data/scene.tif",           # another port
    "http://127.0.0.1:8081/anything.tif",
    "http://127.0.0.1/anything.tif",
    "s3://bucket/other/a.tif",
    "s3://bucket2/cogs/a.tif",
    "ftp://good.example.com/data/scene.tif",
    "file:///data/scene.tif",
    "gopher://good.example.com/data",
    "https://good.example.com/data/a b.tif",
    "https://good.example.com/data/a.tif\n",
])
def test_look_alikes_and_other_forms_are_refused(url):
    assert not url_allowed(url, PREFIXES)
    with pytest.raises(RemoteURLNotAllowedError, match="allowed_url_prefixes"):
        check_url_allowed(url, PREFIXES)


def test_empty_allow_list_allows_nothing():
    with pytest.raises(RemoteURLNotAllowedError, match="remote URLs are off"):
        check_url_allowed("https://good.example.com/data/a.tif", [])


def test_bad_prefixes_are_refused_when_settings_load():
    from zoomearth.config import load_settings
    from zoomearth.errors import ConfigError

    for bad in ('["ftp://h/x/"]', '["https://"]', '["https://u@h/x/"]', '["/local/dir"]'):
        with pytest.raises(ConfigError, match="allowed_url_prefixes"):
            load_settings(environ={"ZOOMEARTH_ALLOWED_URL_PREFIXES": bad})


def test_preflight_refuses_a_redirect_to_another_host(http_server, remote_files, remote_settings):
    from zoomearth.scene.rangeserver import RangeServerProcess

    prefixes = [http_server.url]
    with RangeServerProcess(remote_files) as other:
        http_server.configure(redirects={
            "/away.tif": other.url_for("cog.tif"),          # another port: another origin
            "/here.tif": "/sub/small.tif",                  # same origin, inside the prefix
        })
        try:
            with pytest.raises(RemoteRedirectError, match="redirects to another host"):
                preflight(http_server.url_for("away.tif"), remote_settings, prefixes)
            assert other.stats() == (0, 0)  # the other host was never asked
            final = preflight(http_server.url_for("here.tif"), remote_settings, prefixes)
            assert final == http_server.url_for("sub/small.tif")
            with pytest.raises(RemoteURLNotAllowedError):
                preflight(http_server.url_for("here.tif"), remote_settings,
                          [http_server.url_for("here.tif")])  # target outside the prefix
            with pytest.raises(RemoteNotFoundError):
                preflight(http_server.url_for("gone.tif"), remote_settings, prefixes)
        finally:
            http_server.configure(redirects={})


def _ingestor(settings, tmp_path):
    from zoomearth.server.ingest import FileStore, Ingestor

    return Ingestor(settings, FileStore(tmp_path / "files"))


def test_ingest_off_by_default_keeps_the_existing_refusal(http_server, remote_settings, tmp_path):
    ingestor = _ingestor(remote_settings, tmp_path)
    with pytest.raises(ApiError) as info:
        ingestor.ingest(http_server.url_for("cog.tif"), tmp_path / "inputs")
    assert info.value.status == 400 and info.value.code == "unsupported_url"
    assert "not fetched" in info.value.message and "allowed_url_prefixes" in info.value.message


def test_ingest_reads_allowed_urls_in_place(http_server, remote_settings, tmp_path):
    remote_settings.allowed_url_prefixes = [http_server.url_for("sub/")]
    ingestor = _ingestor(remote_settings, tmp_path)
    url = http_server.url_for("sub/small.tif")
    ref = ingestor.ingest(url, tmp_path / "inputs")
    assert ref.origin == "url" and ref.url == url and ref.source == url
    assert ref.identity == ingestor.identity(url)
    assert not (tmp_path / "inputs").exists()  # nothing stored: read in place
    for outside in (http_server.url_for("cog.tif"), http_server.url_for("sub/../cog.tif")):
        with pytest.raises(ApiError) as info:
            ingestor.ingest(outside, tmp_path / "inputs")
        assert info.value.status == 403 and info.value.code == "url_not_allowed"
    with pytest.raises(ApiError) as info:
        ingestor.ingest(http_server.url_for("sub/missing.tif"), tmp_path / "inputs")
    assert info.value.status == 400 and info.value.code == "remote_not_found"


def test_ingest_refuses_a_plain_remote_file_above_the_cap(http_server, remote_settings, tmp_path):
    remote_settings.allowed_url_prefixes = [http_server.url]
    remote_settings.prepare_min_side = 1024
    remote_settings.remote_max_plain_bytes = 1_000_000
    http_server.reset()
    with pytest.raises(ApiError) as info:
        _ingestor(remote_settings, tmp_path).ingest(http_server.url_for("strip.tif"), tmp_path)
    assert info.value.status == 413 and info.value.code == "remote_not_cloud_optimized"
    assert "gdal_translate -of COG" in info.value.message
    assert http_server.stats()[1] < 100_000  # headers only


def test_server_refuses_urls_outside_the_allow_list_and_redirects(
    http_server, remote_files, tmp_path
):
    import openai

    from zoomearth.config import load_settings
    from zoomearth.scene.rangeserver import RangeServerProcess
    from zoomearth.server.app import create_app

    settings = load_settings(flags={
        "data_dir": tmp_path / "data", "cache_dir": tmp_path / "cache",
        "allowed_url_prefixes": [http_server.url_for("sub/")], "remote_timeout_s": 5,
    }, environ={})

    def ask(url):
        c = client(server)
        with pytest.raises(openai.APIStatusError) as info:
            c.chat.completions.create(model="zoomearth", messages=[{"role": "user", "content": [
                {"type": "text", "text": "what is here?"},
                {"type": "image_url", "image_url": {"url": url}}]}])
        return info.value.status_code, info.value.body

    with ServerThread(create_app(settings)) as server, RangeServerProcess(remote_files) as other:
        status, body = ask(http_server.url_for("cog.tif"))
        assert status == 403 and body["code"] == "url_not_allowed"
        status, body = ask(http_server.url.replace("127.0.0.1", "127.0.0.1@localhost") + "x.tif")
        assert status == 403 and body["code"] == "url_not_allowed"
        http_server.configure(redirects={"/sub/away.tif": other.url_for("cog.tif")})
        try:
            status, body = ask(http_server.url_for("sub/away.tif"))
        finally:
            http_server.configure(redirects={})
        assert status == 403 and body["code"] == "remote_redirect_refused"
        assert other.stats() == (0, 0)
        status, body = ask("file:///etc/passwd")
        assert status == 403
