"""The workbench's server side (issue 17): page shell, layers, tiles, run events, thread history.

One real uvicorn server per module (token set, as off loopback), the default agent with the
offline ``rules`` planner and the real tools, a synthetic georeferenced scene and a PNG without
georeference under ``allowed_roots``; every request goes through httpx.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.server.helpers import ServerThread, rules_server, write_raster

# rio-tiler calls rasterio's `Affine * ...`, which rasterio 1.4 flags as pending deprecation (the
# server filters these out itself; pytest resets warning filters for every test).
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")

TOKEN = "wb-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
SEGMENT = "segment the building in box 430,400,590,600"
DECLOUD = "remove clouds in box 430,400,590,600"
EDIT = "remove the car in box 430,400,590,600"


@pytest.fixture(scope="module")
def wb(tmp_path_factory):
    """(server, settings, paths) with a token, the rules planner and an allowed root."""
    from zoomearth.synth import generate_scene

    tmp = tmp_path_factory.mktemp("wb")
    allowed = tmp / "allowed"
    outside = tmp / "outside"
    allowed.mkdir()
    outside.mkdir()
    generate_scene(allowed / "scene.tif", size=2048, seed=3)
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:500, 0:700]
    plain = np.stack([(xx * 255 // 699), (yy * 255 // 499), rng.integers(0, 255, (500, 700))],
                     axis=-1).astype(np.uint8)
    Image.fromarray(plain).save(allowed / "plain.png")
    (allowed / "notes.txt").write_text("not a raster")
    write_raster(outside / "secret.tif", 300, 200, 3, block=64)
    os.symlink(outside / "secret.tif", allowed / "link.tif")
    with rules_server(tmp, TOKEN, allowed_roots=[allowed], max_concurrent_runs=2) as server:
        yield server, server.settings, {"allowed": allowed, "outside": outside, "plain": plain}


def http(server: ServerThread) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=120)


def layer_for(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post("/v1/workbench/layers", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()


def png_rgba(content: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(content)) as im:
        assert im.mode == "RGBA" and im.size == (256, 256)
        return np.asarray(im)


def lonlat_tile(lon: float, lat: float, z: int) -> tuple[int, int]:
    n = 2 ** z
    x = int((lon + 180.0) / 360.0 * n)
    y = int((1.0 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2.0 * n)
    return x, y


def stream_chat(client: httpx.Client, conversation: str, text: str,
                image: str | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run one streamed chat turn; the RunEvents in order and the final zoomearth object."""
    content: list[dict[str, Any]] = [{"type": "text", "text": text}]
    if image:
        content.append({"type": "image_url", "image_url": {"url": image}})
    body = {"model": "zoomearth", "stream": True,
            "messages": [{"role": "user", "content": content}]}
    events: list[dict[str, Any]] = []
    final: dict[str, Any] = {}
    with client.stream("POST", "/v1/chat/completions", json=body,
                       headers={**AUTH, "X-Conversation-Id": conversation}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            assert "error" not in chunk, chunk
            if "zoomearth_event" in chunk:
                assert chunk["choices"][0]["delta"] == {}
                events.append(chunk["zoomearth_event"])
            if "zoomearth" in chunk:
                final = chunk["zoomearth"]
    return events, final


# ----------------------------------------------------------------------------------------------
# The page shell
# ----------------------------------------------------------------------------------------------
def test_page_shell_is_served_without_token_with_csp_and_nosniff(wb):
    from zoomearth.server.workbench import STATIC_DIR

    server, _, _ = wb
    with http(server) as c:
        r = c.get("/")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert r.headers["content-security-policy"].startswith(CSP)
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["cache-control"] == "no-cache"
        assert r.content == (STATIC_DIR / "index.html").read_bytes()
        # No inline script or style (the CSP would block them).
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", r.text)
        assert "<style" not in r.text and " style=" not in r.text
        served = 0
        for path in sorted(STATIC_DIR.rglob("*")):
            rel = path.relative_to(STATIC_DIR).as_posix()
            if not path.is_file() or path.suffix not in (".js", ".css", ".png", ".html"):
                continue
            r = c.get(f"/workbench/static/{rel}")
            assert r.status_code == 200, rel
            assert r.content == path.read_bytes()
            expected = {".js": "text/javascript", ".css": "text/css", ".png": "image/png",
                        ".html": "text/html"}[path.suffix]
            assert r.headers["content-type"].startswith(expected), rel
            assert r.headers["content-security-policy"].startswith(CSP)
            assert r.headers["x-content-type-options"] == "nosniff"
            served += 1
        assert served >= 3
        # Revalidation: the ETag answers 304.
        r = c.get("/workbench/static/index.html")
        again = c.get("/workbench/static/index.html",
                      headers={"If-None-Match": r.headers["etag"]})
        assert again.status_code == 304


@pytest.mark.parametrize("raw_path", [
    "/workbench/static/../routes.py",
    "/workbench/static/%2e%2e/routes.py",
    "/workbench/static/..%2froutes.py",
    "/workbench/static/..%5croutes.py",
    "/workbench/static/%2e%2e/%2e%2e/tiles.py",
    "/workbench/static//etc/passwd",
    "/workbench/static/.hidden.js",
    "/workbench/static/vendor/../../__init__.py",
    "/workbench/static/index.html%00.png",
    "/workbench/static/no-such-file.js",
    "/workbench/static/",
])
def test_static_files_stay_inside_the_static_folder(wb, raw_path):
    server, _, _ = wb
    # Sent as raw bytes: httpx would normalise the dots away before they reach the server.
    with httpx.Client(base_url=server.url, timeout=30) as c:
        request = c.build_request("GET", server.url)
        request.url = request.url.copy_with(raw_path=raw_path.encode())
        r = c.send(request)
    assert r.status_code == 404, (raw_path, r.status_code, r.text[:200])
    assert "import " not in r.text and "root:" not in r.text


def test_no_wildcard_cors_anywhere(wb):
    server, _, _ = wb
    with http(server) as c:
        hostile = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST",
                   "Access-Control-Request-Headers": "authorization,content-type"}
        for method, path in [("OPTIONS", "/v1/chat/completions"),
                             ("OPTIONS", "/v1/tiles/x/0/0/0.png"), ("GET", "/"),
                             ("GET", "/v1/workbench/config"), ("GET", "/v1/workbench/scenes")]:
            r = c.request(method, path, headers={**hostile, **AUTH})
            assert "access-control-allow-origin" not in r.headers, (method, path)
            assert "access-control-allow-credentials" not in r.headers


def test_every_data_route_needs_the_token(wb):
    server, _, paths = wb
    with http(server) as c:
        config = c.get("/v1/workbench/config")
        assert config.status_code == 200
        assert config.json() == {"token_required": True, "model": "zoomearth",
                                 "remote_urls": False, "link_ttl_s": 3600}
        layer = layer_for(c, {"path": str(paths["allowed"] / "scene.tif")})
        unsigned = layer["tiles"].split("?")[0].format(z=0, x=0, y=0)
        for method, path, body in [
            ("GET", "/v1/workbench/scenes", None),
            ("POST", "/v1/workbench/layers", {"path": str(paths["allowed"] / "scene.tif")}),
            ("GET", "/v1/workbench/threads/anything", None),
            ("GET", unsigned, None),
            ("GET", layer["image_url"].split("?")[0], None),
            ("GET", "/v1/models", None),
        ]:
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                r = c.request(method, path, json=body, headers=headers)
                assert r.status_code == 401, (method, path, r.status_code)
                assert r.headers["www-authenticate"] == "Bearer"
        assert c.get(unsigned, headers=AUTH).status_code in (200, 404)  # the token suffices


# ----------------------------------------------------------------------------------------------
# Scenes and layers
# ----------------------------------------------------------------------------------------------
def test_scenes_lists_rasters_inside_the_allowed_roots_only(wb):
    server, _, paths = wb
    with http(server) as c:
        scenes = c.get("/v1/workbench/scenes", headers=AUTH).json()["scenes"]
    names = {s["name"] for s in scenes}
    assert {"plain.png", "scene.tif"} <= names
    assert not names & {"notes.txt", "link.tif"}  # no text, no symlink leaving the root
    for s in scenes:
        assert Path(s["path"]).parent == paths["allowed"].resolve()
        assert s["size_bytes"] == Path(s["path"]).stat().st_size


@pytest.mark.parametrize("body, status, code", [
    ({"path": "OUTSIDE/secret.tif"}, 403, "path_not_allowed"),
    ({"path": "ALLOWED/../outside/secret.tif"}, 403, "path_not_allowed"),
    ({"path": "ALLOWED/link.tif"}, 403, "path_not_allowed"),
    ({"path": "ALLOWED/missing.tif"}, 403, "path_not_allowed"),
    ({"path": "ALLOWED/notes.txt"}, 400, "bad_layer"),
    ({"file_id": "file-000000000000000000000000"}, 404, "unknown_file"),
    ({"file_id": "../../etc/passwd"}, 404, "unknown_file"),
    ({"url": "https://example.org/scene.tif"}, 400, "unsupported_url"),
    ({"conversation_id": "../x"}, 400, "bad_conversation_id"),
    ({"conversation_id": "nobody-here"}, 404, "unknown_thread"),
    ({"conversation_id": "nobody-here", "artifact_id": 0}, 400, "bad_artifact_id"),
    ({"path": "ALLOWED/scene.tif", "file_id": "file-0"}, 400, "bad_layer_request"),
    ({}, 400, "bad_layer_request"),
])
def test_layer_requests_are_confined_and_refused_clearly(wb, body, status, code):
    server, _, paths = wb
    body = {k: v.replace("ALLOWED", str(paths["allowed"])).replace("OUTSIDE", str(
        paths["outside"])) if isinstance(v, str) else v for k, v in body.items()}
    with http(server) as c:
        r = c.post("/v1/workbench/layers", json=body, headers=AUTH)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code
    assert "\n" not in error["message"]
    if body.get("path", "").endswith("link.tif"):
        # A symbolic link leading out of the roots is refused without saying where it leads.
        assert "secret.tif" not in error["message"]
        assert str(paths["outside"]) not in error["message"]


def test_georeferenced_scene_tiles_render_in_web_mercator(wb):
    server, settings, paths = wb
    with http(server) as c:
        layer = layer_for(c, {"path": str(paths["allowed"] / "scene.tif")})
        assert layer["frame"] == "lonlat" and layer["kind"] == "scene"
        assert (layer["width"], layer["height"]) == (2048, 2048)
        (south, west), (north, east) = layer["bounds"]
        assert -90 < south < north < 90 and -180 < west < east < 180
        assert layer["min_zoom"] <= layer["native_zoom"] <= layer["max_zoom"]
        z = layer["native_zoom"] - 1
        x, y = lonlat_tile((west + east) / 2, (south + north) / 2, z)
        r = c.get(layer["tiles"].format(z=z, x=x, y=y))
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        rgba = png_rgba(r.content)
        assert (rgba[..., 3] == 255).all()  # inside the image: opaque
        assert rgba[..., :3].std() > 10  # not blank
        # The tile at the north-west corner is partly outside: transparent there.
        x0, y0 = lonlat_tile(west, north, z)
        corner = png_rgba(c.get(layer["tiles"].format(z=z, x=x0, y=y0)).content)
        assert (corner[..., 3] == 0).any() and (corner[..., 3] == 255).any()
        # Outside the image: 404; not a tile: 400.
        far = c.get(layer["tiles"].format(z=z, x=(x + 50) % 2 ** z, y=y))
        assert far.status_code == 404 and far.json()["error"]["code"] == "tile_outside"
        assert c.get(layer["tiles"].format(z=3, x=8, y=0)).status_code == 400
        # The whole image, decimated.
        r = c.get(layer["image_url"])
        assert r.status_code == 200
        with Image.open(io.BytesIO(r.content)) as im:
            assert im.size == (1024, 1024) and im.mode == "RGBA"


def test_tiles_refuse_bad_and_expired_signatures(wb):
    from zoomearth.server.signing import Signer, load_or_create_key

    server, settings, paths = wb
    with http(server) as c:
        layer = layer_for(c, {"path": str(paths["allowed"] / "scene.tif")})
        url = layer["tiles"].format(z=layer["min_zoom"], x=0, y=0)
        base, query = url.split("?")
        bad = c.get(base + "?" + re.sub(r"sig=[0-9a-f]+", "sig=" + "0" * 64, query))
        assert bad.status_code == 403 and bad.json()["error"]["code"] == "bad_link"
        later = re.sub(r"exp=(\d+)", lambda m: f"exp={int(m.group(1)) + 10}", query)
        assert c.get(f"{base}?{later}").status_code == 403  # the expiry is signed too
        # A link whose expiry has passed (signed with the server's own key).
        path = "/v1/tiles/" + layer["layer_id"]
        expired = Signer(load_or_create_key(settings.data_dir / "server"), -60).sign(path)
        r = c.get(f"{base}?{expired}")
        assert r.status_code == 403 and r.json()["error"]["code"] == "bad_link"
        # A signature of one layer does not open another layer (another file).
        plain = layer_for(c, {"path": str(paths["allowed"] / "plain.png")})
        swapped = plain["tiles"].split("?")[0].format(z=0, x=0, y=0) + "?" + query
        assert c.get(swapped).status_code == 403


def test_layer_ids_never_reach_outside_their_roots(wb):
    import base64

    server, _, paths = wb

    def pid(text: str) -> str:
        return "p." + base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    with http(server) as c:
        for layer_id in [pid(str(paths["outside"] / "secret.tif")),
                         pid(str(paths["allowed"] / ".." / "outside" / "secret.tif")),
                         pid(str(paths["allowed"] / "link.tif")), pid("/etc/passwd")]:
            for suffix in ("0/0/0.png", "image.png"):
                r = c.get(f"/v1/tiles/{layer_id}/{suffix}", headers=AUTH)
                assert r.status_code == 403 and r.json()["error"]["code"] == "path_not_allowed"
        r = c.get(f"/v1/tiles/{pid(str(paths['allowed'] / 'link.tif'))}/0/0/0.png",
                  headers=AUTH)
        assert "secret.tif" not in r.json()["error"]["message"]  # where the link leads
        for raw in ["/v1/tiles/a.1.%2e%2e/0/0/0.png", "/v1/tiles/a.1..%2f..%2fetc/0/0/0.png",
                    "/v1/tiles/s.%2e%2e/0/0/0.png", "/v1/tiles/x.abc/0/0/0.png",
                    "/v1/tiles/f.file-../0/0/0.png", "/v1/tiles/..%2f..%2fetc%2fpasswd/0/0/0.png"]:
            request = c.build_request("GET", server.url, headers=AUTH)
            request.url = request.url.copy_with(raw_path=raw.encode())
            r = c.send(request)
            assert r.status_code == 404, (raw, r.status_code, r.text[:200])


def test_png_without_georeference_is_tiled_in_pixel_space(wb):
    server, _, paths = wb
    plain = paths["plain"]
    with http(server) as c:
        layer = layer_for(c, {"path": str(paths["allowed"] / "plain.png")})
        assert layer["frame"] == "pixel" and (layer["width"], layer["height"]) == (700, 500)
        nz = layer["native_zoom"]
        assert nz == 2  # 700 -> 350 -> 175: the whole image fits one tile at zoom 0
        k = 2 ** nz
        assert layer["bounds"] == [[-500 / k, 0.0], [0.0, 700 / k]]
        # At the native zoom a tile is the full-resolution pixels, exactly.
        rgba = png_rgba(c.get(layer["tiles"].format(z=nz, x=1, y=0)).content)
        assert (rgba[..., :3] == plain[0:256, 256:512]).all() and (rgba[..., 3] == 255).all()
        edge = png_rgba(c.get(layer["tiles"].format(z=nz, x=2, y=1)).content)
        assert (edge[:244, :188, 3] == 255).all()  # pixels 512-700 x 256-500 of the image
        assert (edge[244:, :, 3] == 0).all() and (edge[:, 188:, 3] == 0).all()
        assert (edge[:244, :188, :3] == plain[256:500, 512:700]).all()
        # Zoom 0: the whole image in one tile (decimated), transparent beyond it.
        whole = png_rgba(c.get(layer["tiles"].format(z=0, x=0, y=0)).content)
        assert whole[..., :3].std() > 10
        assert (whole[:, 180:, 3] == 0).all() and (whole[:120, :170, 3] == 255).all()
        assert c.get(layer["tiles"].format(z=nz, x=3, y=0)).status_code == 404


def test_float_scene_is_stretched_like_zoomearth_view_and_nodata_is_transparent(wb):
    from zoomearth.scene import Scene

    server, settings, paths = wb
    data = np.linspace(0.0, 1000.0, 300 * 400, dtype=np.float32).reshape(1, 300, 400)
    data = np.repeat(data, 3, axis=0)
    data[:, :50, :] = -9999.0  # nodata rows at the top
    path = write_raster(paths["allowed"] / "float.tif", 400, 300, 3, "float32", data=data,
                        georef=False, block=64, nodata=-9999.0)
    with http(server) as c:
        layer = layer_for(c, {"path": str(path)})
        assert layer["frame"] == "pixel" and layer["native_zoom"] == 1
        rgba = png_rgba(c.get(layer["tiles"].format(z=1, x=0, y=0)).content)
    assert (rgba[:50, :, 3] == 0).all() and (rgba[50:256, :, 3] == 255).all()
    # The same display range as `zoomearth view` (Scene.render), pixel for pixel.
    with Scene.open(path, settings=settings) as scene:
        view = scene.render(None, max_side=None)
    assert np.abs(rgba[50:256, :, :3].astype(int) - view.rgb[50:256, :256].astype(int)).max() <= 1


def test_upload_layer(wb):
    server, _, paths = wb
    with http(server) as c:
        data = (paths["allowed"] / "plain.png").read_bytes()
        up = c.post("/v1/files", files={"file": ("mine.png", data, "image/png")},
                    data={"purpose": "vision"}, headers=AUTH)
        assert up.status_code == 200, up.text
        layer = layer_for(c, {"file_id": up.json()["id"]})
        assert layer["frame"] == "pixel" and layer["name"] == "mine.png"
        assert c.get(layer["tiles"].format(z=0, x=0, y=0)).status_code == 200


# ----------------------------------------------------------------------------------------------
# Run events, histories, thread scope
# ----------------------------------------------------------------------------------------------
def test_run_events_stream_in_order_and_history_restores_the_thread(wb):
    server, _, paths = wb
    scene = "file://" + str(paths["allowed"] / "scene.tif")
    with http(server) as c:
        events, final = stream_chat(c, "wb-thread-a", SEGMENT, scene)
        assert final["status"] == "answered"
        types = [e["type"] for e in events]
        assert types[0] == "view" and types[-1] == "answer"
        view = events[0]
        assert view["view_id"] == 1 and view["box_xyxy"] == [254.0, 244.0, 766.0, 756.0]
        assert len(view["polygon"]) == 5 and view["polygon"][0] == view["polygon"][-1]
        tools = [e for e in events if e["type"] == "tool"]
        assert [(t["name"], t["status"]) for t in tools] == [("segmentation", "started"),
                                                              ("segmentation", "ok")]
        assert tools[0]["call_id"] == tools[1]["call_id"]
        arts = [e for e in events if e["type"] == "artifact"]
        assert types.index("view") < types.index("tool") < types.index("artifact")
        assert {a["kind"] for a in arts} == {"raster", "vector", "image"}
        for a in arts:
            assert a["call_id"] == tools[0]["call_id"]
            assert c.get(a["download_url"]).status_code == 200  # signed, no token
        raster = next(a for a in arts if a["kind"] == "raster")
        vector = next(a for a in arts if a["kind"] == "vector")
        assert "area_m2" in vector["properties_hint"] and "label" in vector["properties_hint"]

        # The view polygon and the vector lie inside the scene layer, in lon/lat.
        scene_layer = layer_for(c, {"conversation_id": "wb-thread-a"})
        (south, west), (north, east) = scene_layer["bounds"]
        for lat, lng in view["polygon"]:
            assert south <= lat <= north and west <= lng <= east
        gj = c.get(vector["geojson_url"])
        assert gj.status_code == 200 and gj.headers["content-type"] == "application/geo+json"
        collection = gj.json()
        assert collection["zoomearth:frame"] == "lonlat" and "crs" not in collection
        feature = collection["features"][0]
        assert feature["properties"]["area_m2"] > 0
        lngs = [p[0] for p in feature["geometry"]["coordinates"][0]]
        lats = [p[1] for p in feature["geometry"]["coordinates"][0]]
        (v_south, v_west), (v_north, v_east) = (min(p[0] for p in view["polygon"]),
                                                min(p[1] for p in view["polygon"])), \
            (max(p[0] for p in view["polygon"]), max(p[1] for p in view["polygon"]))
        assert v_west <= min(lngs) and max(lngs) <= v_east
        assert v_south <= min(lats) and max(lats) <= v_north

        # The mask is a tile layer: translucent where the object is, transparent elsewhere.
        mask = raster["layer"]
        assert mask["kind"] == "artifact" and mask["render"] == "mask"
        (m_south, m_west), (m_north, m_east) = mask["bounds"]
        z = mask["native_zoom"]
        seen = np.zeros(0, np.uint8)
        x0, y0 = lonlat_tile(m_west, m_north, z)
        x1, y1 = lonlat_tile(m_east, m_south, z)
        for x in range(x0, x1 + 1):
            for y in range(y0, y1 + 1):
                r = c.get(mask["tiles"].format(z=z, x=x, y=y))
                assert r.status_code == 200
                seen = np.concatenate([seen, png_rgba(r.content)[..., 3].ravel()])
        assert (seen == 0).any() and (seen == 150).any()

        # A follow-up in the same thread: a raster artifact (RGB) as a tile layer.
        events2, final2 = stream_chat(c, "wb-thread-a", DECLOUD)
        assert final2["status"] == "answered"
        rasters = [e for e in events2 if e["type"] == "artifact" and e["kind"] == "raster"]
        cloudfree = next(a for a in rasters if a["layer"]["render"] == "rgb")
        z = cloudfree["layer"]["native_zoom"]
        (c_south, c_west), (c_north, c_east) = cloudfree["layer"]["bounds"]
        x, y = lonlat_tile((c_west + c_east) / 2, (c_south + c_north) / 2, z)
        rgba = png_rgba(c.get(cloudfree["layer"]["tiles"].format(z=z, x=x, y=y)).content)
        assert rgba[..., :3].std() > 5

        history = c.get("/v1/workbench/threads/wb-thread-a", headers=AUTH)
        assert history.status_code == 200
        h = history.json()
    assert h["conversation_id"] == "wb-thread-a" and h["pending_approval"] is None
    assert h["scene"]["layer_id"] == "s.wb-thread-a" and h["scene"]["frame"] == "lonlat"
    # How a new thread names the same image (a file under allowed_roots).
    assert h["image_url"] == (paths["allowed"] / "scene.tif").resolve().as_uri()
    assert [m["role"] for m in h["messages"]] == ["user", "assistant", "user", "assistant"]
    assert [m["content"] for m in h["messages"][::2]] == [SEGMENT, DECLOUD]
    assert "Segmentation" in h["messages"][1]["content"]
    assert "Cloud removal" in h["messages"][3]["content"]
    # The history holds the streamed events (but "started"), in the same order.
    streamed = [e for e in events + events2 if e.get("status") != "started"]

    def key(e: dict[str, Any]) -> tuple[Any, ...]:
        return (e["type"], e.get("view_id"), e.get("name"), e.get("status"),
                e.get("artifact_id"), e.get("call_id"))

    assert [key(e) for e in h["events"]] == [key(e) for e in streamed]
    hist_view = h["events"][0]
    assert hist_view["polygon"] == view["polygon"]
    hist_vector = next(e for e in h["events"] if e.get("kind") == "vector")
    with http(server) as c:
        assert c.get(hist_vector["geojson_url"]).json() == collection


def test_layers_of_one_thread_are_not_readable_with_another_threads_signature(wb):
    server, _, paths = wb
    scene = "file://" + str(paths["allowed"] / "scene.tif")
    with http(server) as c:
        events_a, _ = stream_chat(c, "wb-scope-a", SEGMENT, scene)
        events_b, _ = stream_chat(c, "wb-scope-b", SEGMENT, scene)
        mask_a = next(e for e in events_a if e.get("kind") == "raster")["layer"]
        mask_b = next(e for e in events_b if e.get("kind") == "raster")["layer"]
        vec_b = next(e for e in events_b if e.get("kind") == "vector")["geojson_url"]
        z = mask_a["native_zoom"]
        (s, w), (n, e) = mask_a["bounds"]
        x, y = lonlat_tile((w + e) / 2, (s + n) / 2, z)
        own = mask_b["tiles"].format(z=z, x=x, y=y)
        assert c.get(own).status_code == 200
        # Thread B's signature on thread A's artifact, scene and GeoJSON: refused.
        query_b = own.split("?")[1]
        for path in [mask_a["tiles"].split("?")[0].format(z=z, x=x, y=y),
                     f"/v1/tiles/s.wb-scope-a/{z}/{x}/{y}.png",
                     "/v1/tiles/a.2.wb-scope-a/features.geojson",
                     vec_b.split("?")[0].replace("wb-scope-b", "wb-scope-a")]:
            url = path if path.startswith("http") else server.url + path
            r = c.get(f"{url}?{query_b}")
            assert r.status_code == 403, (path, r.status_code)
        # A's own signature works (the files exist; only the scope differs).
        assert c.get(mask_a["tiles"].format(z=z, x=x, y=y)).status_code == 200
        # An artifact that is no raster has no tiles; unknown artifacts and threads are 404.
        r = c.post("/v1/workbench/layers", headers=AUTH,
                   json={"conversation_id": "wb-scope-a", "artifact_id": 2})
        assert r.status_code == 400 and r.json()["error"]["code"] == "not_a_raster"
        r = c.post("/v1/workbench/layers", headers=AUTH,
                   json={"conversation_id": "wb-scope-a", "artifact_id": 99})
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_artifact"
        r = c.get("/v1/workbench/threads/wb-nobody", headers=AUTH)
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_thread"
        r = c.get("/v1/workbench/threads/..%2f..", headers=AUTH)
        assert r.status_code in (400, 404)


def test_history_shows_a_pending_approval_then_the_decision(wb):
    server, _, paths = wb
    scene = "file://" + str(paths["allowed"] / "scene.tif")
    with http(server) as c:
        events, final = stream_chat(c, "wb-approve", EDIT, scene)
        assert final["status"] == "awaiting_approval"
        assert [e["type"] for e in events] == ["view", "tool", "answer"]
        assert events[1]["status"] == "needs_approval" and events[1]["name"] == "edit"
        assert events[2]["status"] == "awaiting_approval"
        h = c.get("/v1/workbench/threads/wb-approve", headers=AUTH).json()
        pending = h["pending_approval"]
        assert pending["tool"] == "edit" and pending["arguments"]["instruction"] == "remove the car"
        assert "Reply 'approve' or 'deny'" in pending["text"]
        assert h["events"][-1]["status"] == "needs_approval"

        events, final = stream_chat(c, "wb-approve", "deny")
        assert final["status"] == "partial" or final["status"] == "failed"
        denied = [e for e in events if e["type"] == "tool"]
        assert [(e["name"], e["status"]) for e in denied] == [("edit", "denied")]
        assert not [e for e in events if e["type"] == "artifact"]
        h = c.get("/v1/workbench/threads/wb-approve", headers=AUTH).json()
        assert h["pending_approval"] is None
        tools = [e for e in h["events"] if e["type"] == "tool"]
        assert [e["status"] for e in tools] == ["denied"]
        assert tools[0]["call_id"] == denied[0]["call_id"] and tools[0]["step"] == 1

        events, final = stream_chat(c, "wb-approve", EDIT)
        assert final["status"] == "awaiting_approval"
        events, final = stream_chat(c, "wb-approve", "approve")
        assert final["status"] == "answered"
        tools = [(e["name"], e["status"]) for e in events if e["type"] == "tool"]
        assert tools == [("edit", "started"), ("edit", "ok")]
        assert any(e["type"] == "artifact" and e["kind"] == "raster" for e in events)


# ----------------------------------------------------------------------------------------------
# Units: frames
# ----------------------------------------------------------------------------------------------
def test_pixel_frame_geometry_and_geojson_follow_leaflet_crs_simple():
    from zoomearth.server.tiles import LayerGeometry, pixel_native_zoom, reproject_geojson

    assert [pixel_native_zoom(w, h) for w, h in [(256, 10), (257, 10), (700, 500),
                                                  (20_000, 20_000)]] == [0, 1, 2, 7]
    g = LayerGeometry("pixel", 2)
    assert g.polygon([0, 0, 8, 4]) == [[0.0, 0.0], [0.0, 2.0], [-1.0, 2.0], [-1.0, 0.0],
                                       [0.0, 0.0]]
    offset = LayerGeometry("pixel", 2, offset=(100.0, 40.0), scale=(2.0, 2.0))
    assert offset.latlng([0, 10], [0, 10]) == [[-10.0, 25.0], [-15.0, 30.0]]
    collection = {"type": "FeatureCollection", "zoomearth:frame": "pixel", "features": [
        {"type": "Feature", "properties": {"area_px": 4, "label": 1},
         "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [8, 0], [8, 4], [0, 0]]]}}]}
    out = reproject_geojson(collection, g, scene=None)
    assert out["zoomearth:frame"] == "pixel"
    assert out["features"][0]["geometry"]["coordinates"] == [[[0.0, 0.0], [2.0, 0.0],
                                                              [2.0, -1.0], [0.0, 0.0]]]
    assert out["features"][0]["properties"] == {"area_px": 4, "label": 1}


# ----------------------------------------------------------------------------------------------
# Remote scenes (allowed_url_prefixes), read in place from a range-capable HTTP server
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def remote_wb(tmp_path_factory):
    """(server, files server, tmp): remote URLs allowed under <files>/ok/ only."""
    from zoomearth.scene.rangeserver import RangeServerProcess

    tmp = tmp_path_factory.mktemp("wb-remote")
    served = tmp / "served"
    (served / "ok").mkdir(parents=True)
    (served / "secret").mkdir()
    noise = np.random.default_rng(5).integers(0, 255, (3, 2000, 2400), dtype=np.uint8)
    write_raster(served / "ok" / "cog.tif", 2400, 2000, 3, data=noise, block=256,
                 overviews=[2, 4, 8], compress="deflate")
    write_raster(served / "secret" / "other.tif", 300, 200, 3, block=64)
    # In a child process: GDAL reads over HTTP while holding this process's GIL.
    with RangeServerProcess(served) as files:
        with rules_server(
            tmp, TOKEN, allowed_url_prefixes=[files.url + "ok/"], remote_timeout_s=10,
            remote_max_retries=1,
        ) as server:
            yield server, files


def test_remote_cog_layer_is_tiled_in_place_under_the_allow_list(remote_wb):
    from zoomearth.server.tiles import layer_id_for_url

    server, files = remote_wb
    with http(server) as c:
        assert c.get("/v1/workbench/config").json()["remote_urls"] is True
        layer = layer_for(c, {"url": files.url_for("ok/cog.tif")})
        assert layer["frame"] == "lonlat" and layer["name"] == "cog.tif"
        (south, west), (north, east) = layer["bounds"]
        z = layer["native_zoom"]
        x, y = lonlat_tile((west + east) / 2, (south + north) / 2, z)
        files.reset()
        r = c.get(layer["tiles"].format(z=z, x=x, y=y))
        assert r.status_code == 200
        assert png_rgba(r.content)[..., :3].std() > 10
        # A tile reads a few blocks (or none: GDAL's cache), never the whole file.
        _, sent = files.stats()
        assert sent < (files.root / "ok" / "cog.tif").stat().st_size / 4
        for url, code in [(files.url_for("secret/other.tif"), "url_not_allowed"),
                          (files.url_for("ok/../secret/other.tif"), "url_not_allowed"),
                          (files.url.replace("127.0.0.1", "127.0.0.1@evil.example")
                           + "ok/cog.tif", "url_not_allowed")]:
            r = c.post("/v1/workbench/layers", json={"url": url}, headers=AUTH)
            assert r.status_code == 403 and r.json()["error"]["code"] == code, (url, r.text)
        # A crafted layer id is checked against the allow-list too.
        crafted = layer_id_for_url(files.url_for("secret/other.tif"))
        r = c.get(f"/v1/tiles/{crafted}/0/0/0.png", headers=AUTH)
        assert r.status_code == 403 and r.json()["error"]["code"] == "url_not_allowed"
        # A redirect to another host (here: another port) is refused.
        files.configure(redirects={"/ok/moved.tif": "http://127.0.0.2:9/secret/other.tif"})
        r = c.post("/v1/workbench/layers", json={"url": files.url_for("ok/moved.tif")},
                   headers=AUTH)
        assert r.status_code == 400 and "redirect" in r.json()["error"]["message"].lower()
