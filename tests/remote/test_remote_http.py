"""Remote scenes over HTTP(S): a real range-capable server on loopback, real GDAL reads.

The COG is read in place (a few ranges per view, pixels identical to the local file); HTTP
failures give one-line errors; a plain (non-COG) remote file is refused above the size cap with
the conversion advice, or downloaded once below it; tools and the CLI take URLs and write local,
georeferenced outputs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from tests.remote.conftest import free_port, write_cog
from zoomearth.cli import main
from zoomearth.geometry import PixelBox
from zoomearth.scene import Scene, remote
from zoomearth.scene.remote import (
    RemoteAccessError,
    RemoteConnectionError,
    RemoteNotCloudOptimizedError,
    RemoteNotFoundError,
    RemoteReadError,
    RemoteTimeoutError,
)
from zoomearth.scene.scene import SceneWarning

ZOOM = PixelBox(2000, 1500, 2512, 2012)
ZOOMEARTH = str(Path(sys.executable).parent / "zoomearth")


def test_names_of_remote_sources():
    assert remote.is_remote("https://h.example/a.tif") and remote.is_remote("S3://b/k.tif")
    assert remote.is_remote("/vsicurl/http://h/a.tif") and remote.is_remote("/vsis3/b/k.tif")
    assert not remote.is_remote("a.tif") and not remote.is_remote(Path("/tmp/https:/x"))
    assert not remote.is_remote("file:///tmp/a.tif") and not remote.is_remote("ftp://h/a.tif")
    assert remote.gdal_path("HTTPS://h.example/d/a.tif?sig=1") == (
        "/vsicurl/https://h.example/d/a.tif?sig=1"
    )
    assert remote.gdal_path("s3://bucket/dir/a.tif") == "/vsis3/bucket/dir/a.tif"
    assert remote.normalize_url("/vsis3/bucket/a.tif") == "s3://bucket/a.tif"
    assert remote.source_key("https://h/x/a.tif") == "https://h/x/a.tif"  # never through Path
    assert remote.source_key("rel.tif") == str(Path("rel.tif").resolve())
    for bad in ("s3://bucket", "https:///a.tif", "https://h/a b.tif"):
        with pytest.raises(RemoteReadError, match="not a usable remote image URL"):
            remote.gdal_path(bad)


def test_gdal_options_for_partial_reads(remote_settings, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_S3_ENDPOINT", raising=False)
    opts = remote.gdal_options(remote_settings, "https://h/d/scene.TIF?x=1")
    assert opts["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
    # Only the file's own extension: no sidecar (.ovr, .aux.xml, .msk) is ever asked for.
    assert opts["CPL_VSIL_CURL_ALLOWED_EXTENSIONS"] == ".TIF,.tif"
    assert opts["GDAL_HTTP_TIMEOUT"] == "5" and opts["GDAL_HTTP_MAX_RETRY"] == "1"
    assert opts["GDAL_HTTP_MERGE_CONSECUTIVE_RANGES"] == "YES"
    assert int(opts["CPL_VSIL_CURL_CACHE_SIZE"]) == 64 * 1024 * 1024
    assert "AWS_S3_ENDPOINT" not in opts
    # No extension GDAL knows: no restriction (a download URL without one still opens).
    assert "CPL_VSIL_CURL_ALLOWED_EXTENSIONS" not in remote.gdal_options(None, "https://h/get?id=3")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    s3 = remote.gdal_options(None, "s3://b/k.tif")
    assert (s3["AWS_S3_ENDPOINT"], s3["AWS_HTTPS"], s3["AWS_VIRTUAL_HOSTING"]) == (
        "127.0.0.1:9000", "NO", "FALSE")
    remote_settings.s3_endpoint_url = "https://minio.example:9443"
    s3 = remote.gdal_options(remote_settings, "s3://b/k.tif")
    assert (s3["AWS_S3_ENDPOINT"], s3["AWS_HTTPS"]) == ("minio.example:9443", "YES")


def test_cog_by_url_reads_a_small_fraction_and_the_same_pixels(
    http_server, remote_files, remote_settings
):
    url = http_server.url_for("cog.tif")
    size = (remote_files / "cog.tif").stat().st_size
    http_server.reset()
    with Scene.open(url, settings=remote_settings) as scene:
        assert scene.is_remote and scene.source == url
        assert scene.tiled and scene.overview_factors and not scene.needs_preparation()
        assert scene.file_size == size and scene.identity.startswith(url + f"|{size}|")
        # The placeholder path never exists; its name is the URL's file name (output tags).
        assert not scene.path.exists() and scene.path.name == "cog.tif"
        overview = scene.render(None, max_side=512)
        zoom = scene.render(ZOOM, max_side=None)
        info = scene.info()
    requests, sent = http_server.stats()
    assert info["path"] == url and info["remote"] is True and info["file_size"] == size
    # Header + one overview tile + the 4 full-resolution tiles of a 512-px zoom astride tile
    # edges: a few requests and under a tenth of this small 4096 px COG (7 % measured);
    # benchmarks/remote.py shows < 1 % on a 20,000 px one.
    assert requests <= 12, http_server.log()
    assert sent < 0.10 * size, (sent, size)
    assert all(r.status in (200, 206) for r in http_server.log())
    assert all(r.range for r in http_server.log() if r.method == "GET"), "a whole-file GET"
    with Scene.open(remote_files / "cog.tif", settings=remote_settings) as local:
        np.testing.assert_array_equal(overview.rgb, local.render(None, max_side=512).rgb)
        np.testing.assert_array_equal(zoom.rgb, local.render(ZOOM, max_side=None).rgb)


def test_http_errors_are_one_line_and_say_what_to_do(http_server, remote_settings):
    with pytest.raises(RemoteNotFoundError, match=r"No such remote image: .*nope\.tif \(HTTP 404"):
        Scene.open(http_server.url_for("nope.tif"), settings=remote_settings)
    http_server.configure(fail_status={"/denied.tif": 403, "/broken.tif": 500})
    try:
        with pytest.raises(RemoteAccessError, match=r"refused \(HTTP 403\).*AWS_NO_SIGN_REQUEST"):
            Scene.open(http_server.url_for("denied.tif"), settings=remote_settings)
        with pytest.raises(RemoteReadError, match=r"HTTP 500") as info:
            Scene.open(http_server.url_for("broken.tif"), settings=remote_settings)
        assert "\n" not in str(info.value)
    finally:
        http_server.configure(fail_status={})
    closed = f"http://127.0.0.1:{free_port()}/x.tif"
    with pytest.raises(RemoteConnectionError, match="Cannot connect to 127.0.0.1"):
        Scene.open(closed, settings=remote_settings)


def test_a_slow_server_times_out_with_the_setting_to_raise(http_server, remote_settings):
    remote_settings.remote_timeout_s = 1
    remote_settings.remote_max_retries = 0
    with Scene.open(http_server.url_for("sub/small.tif"), settings=remote_settings) as scene:
        http_server.configure(delay_s=2.5)
        try:
            with pytest.raises(RemoteTimeoutError, match="remote_timeout_s") as info:
                scene.render(PixelBox(0, 0, 1024, 1024), max_side=None)
            with pytest.raises(RemoteTimeoutError, match=r"no answer within 1 s"):
                Scene.open(http_server.url_for("cog.tif"), settings=remote_settings)
        finally:
            http_server.configure(delay_s=0)
    assert "\n" not in str(info.value)


def test_a_plain_remote_file_above_the_cap_is_refused_with_the_conversion(
    http_server, remote_settings
):
    remote_settings.prepare_min_side = 1024  # the 1,500 px strip TIFF would need preparing
    remote_settings.remote_max_plain_bytes = 1_000_000
    url = http_server.url_for("strip.tif")
    with Scene.open(url, settings=remote_settings) as scene:  # headers: fine
        assert scene.needs_preparation() and not scene.tiled
        http_server.reset()
        with pytest.raises(RemoteNotCloudOptimizedError) as info:
            scene.render(None, max_side=256)
        with pytest.raises(RemoteNotCloudOptimizedError):
            scene.check_prepare_budget()  # header-only: what the server's upload check calls
    text = str(info.value)
    assert "rio cogeo create" in text and "gdal_translate -of COG" in text
    assert "remote_max_plain_bytes" in text and "\n" not in text
    assert http_server.stats()[1] < 100_000  # refused before any download


def test_a_plain_remote_file_below_the_cap_is_downloaded_once_and_prepared(
    http_server, remote_files, remote_settings
):
    remote_settings.prepare_min_side = 1024
    url = http_server.url_for("strip.tif")
    size = (remote_files / "strip.tif").stat().st_size
    http_server.reset()
    with Scene.open(url, settings=remote_settings) as scene:
        with pytest.warns(SceneWarning, match="downloading it once"):
            view = scene.render(None, max_side=256)
        prepared = scene.pixel_path()
    assert http_server.stats()[1] >= size  # the whole file, once
    from zoomearth.scene.cache import SceneCache

    entries = SceneCache.from_settings(remote_settings).entries()
    assert [e.source for e in entries] == [url] and entries[0].path == prepared
    with Scene.open(remote_files / "strip.tif", settings=remote_settings) as local:
        # The local file prepared the same way: the same pixels.
        np.testing.assert_array_equal(view.rgb, local.render(None, max_side=256).rgb)
    assert not [p for p in prepared.parent.iterdir() if "strip" in p.name]  # download removed
    http_server.reset()
    with Scene.open(url, settings=remote_settings) as again, warnings.catch_warnings():
        warnings.simplefilter("error", SceneWarning)
        again.render(None, max_side=256)
        assert again.pixel_path() == prepared
    assert http_server.stats()[1] < 100_000  # the cached copy, no second download


def test_identity_follows_the_remote_file(http_server, remote_files, remote_settings):
    target = remote_files / "replaced.tif"
    target.write_bytes((remote_files / "sub" / "small.tif").read_bytes())
    url = http_server.url_for("replaced.tif")
    try:
        with Scene.open(url, settings=remote_settings) as scene:
            first = scene.identity
        write_cog(target, side=768)
        with Scene.open(url, settings=remote_settings) as scene:
            assert scene.width == 768 and scene.identity != first  # no stale GDAL cache
    finally:
        target.unlink()


def test_same_host_redirects_are_followed_for_the_cli_user(http_server, remote_settings):
    http_server.configure(redirects={"/moved.tif": "/cog.tif"})
    try:
        with Scene.open(http_server.url_for("moved.tif"), settings=remote_settings) as scene:
            assert scene.render(None, max_side=64).rgb.shape == (64, 64, 3)
    finally:
        http_server.configure(redirects={})


def test_cli_info_view_and_tool_on_a_url(http_server, remote_files, tmp_path, capsys):
    url = http_server.url_for("cog.tif")
    assert main(["info", url, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["path"] == url and info["width"] == 4096 and info["remote"] is True
    out = tmp_path / "view.tif"
    assert main(["view", url, "--box", "0,0,1024,1024", "--side", "512", "-o", str(out)]) == 0
    with rasterio.open(out) as ds, rasterio.open(remote_files / "cog.tif") as src:
        assert ds.crs == src.crs and ds.width == 512
    assert main(["info", http_server.url_for("missing.tif")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No such remote image" in err


def test_tool_on_a_remote_scene_writes_local_georeferenced_outputs(
    http_server, remote_files, tmp_path
):
    url = http_server.url_for("cog.tif")
    run = tmp_path / "run"
    env_cmd = [ZOOMEARTH, "tool", "denoise", url, "--box",
               "1000,600,1512,1112", "--out", str(run), "--json"]
    proc = subprocess.run(env_cmd, capture_output=True, text=True, timeout=300,
                          env={**_clean_env(), "ZOOMEARTH_DATA_DIR": str(tmp_path / "data"),
                               "ZOOMEARTH_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    outcome = json.loads(proc.stdout)
    rasters = [a["path"] for a in outcome["artifacts"] if a["kind"] == "raster"]
    assert rasters and all(Path(p).parent == run for p in rasters)
    with rasterio.open(rasters[0]) as out, rasterio.open(remote_files / "cog.tif") as src:
        assert out.crs == src.crs
        assert out.transform == window_transform(Window(1000, 600, 512, 512), src.transform)
        assert out.tags().get("ZOOMEARTH_SOURCE") == "cog.tif"
        assert (out.width, out.height) == (512, 512)


def test_ask_accepts_a_url(http_server, tmp_path):
    url = http_server.url_for("cog.tif")
    proc = subprocess.run(
        [ZOOMEARTH, "ask", url, "what is in the top-right corner?",
         "--planner", "rules", "--json", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=300,
        env={**_clean_env(), "ZOOMEARTH_DATA_DIR": str(tmp_path / "data"),
             "ZOOMEARTH_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(proc.stdout)
    assert record["status"] == "answered", record
    assert json.dumps(record).count(url) >= 1


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("ZOOMEARTH_")}
