"""``zoomearth search`` against a real STAC API served locally: stac-fastapi-pgstac on PostGIS.

A throwaway PostgreSQL cluster is started (tests/pg_cluster.py, as for
tests/server/test_postgres.py), the pgstac schema is installed with ``pypgstac migrate`` (it
creates the PostGIS extension: Debian's ``postgresql-15-postgis-3``, which ``make test``
installs), the test catalog's collections and
items are loaded with pypgstac's loader, their assets pointing at the COGs served by the range
HTTP server, and ``stac_fastapi.pgstac`` runs under uvicorn on loopback. Without PostgreSQL,
PostGIS or the packages the tests fail with what to install (CI allows no unexpected skips).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pystac
import pytest

from tests.pg_cluster import postgres_cluster
from tests.remote.test_stac import ITEMS, SIDE, make_catalog
from zoomearth.cli import main
from zoomearth.scene.rangeserver import RangeServer
from zoomearth.scene.stac import StacError, is_stac_source, resolve_item, search

MISSING = (
    "{what} not found: install Debian's 'postgresql' and 'postgresql-15-postgis-3' packages "
    "(make test installs them when run as root)."
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def pg_dsn():
    with postgres_cluster("zoomearth-pgstac-") as url:
        yield url


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("stac-api-files")
    make_catalog(root)
    with RangeServer(root) as srv:
        yield root, srv


def _load(dsn: str, root: Path, server: RangeServer) -> None:
    migrate = subprocess.run(
        [sys.executable, "-m", "pypgstac.pypgstac", "migrate", "--dsn", dsn],
        capture_output=True, text=True, timeout=300,
    )
    if migrate.returncode != 0:
        pytest.fail(
            "pypgstac migrate failed (is PostGIS installed? "
            f"{MISSING.format(what='PostGIS')}): {migrate.stderr[-800:]}"
        )
    from pypgstac.db import PgstacDB
    from pypgstac.load import Loader, Methods

    catalog = pystac.Catalog.from_file(str(root / "catalog.json"))
    collections, items = [], []
    for coll in catalog.get_children():
        collections.append(coll.to_dict(include_self_link=False, transform_hrefs=False))
        for item in coll.get_items():
            item.make_asset_hrefs_absolute()
            data = item.to_dict(include_self_link=False, transform_hrefs=False)
            data["links"] = []
            for asset in data["assets"].values():
                if asset["href"].startswith(str(root)):  # the COGs, served over HTTP
                    asset["href"] = server.url_for(str(Path(asset["href"]).relative_to(root)))
            items.append(data)
    with PgstacDB(dsn=dsn) as db:
        loader = Loader(db)
        loader.load_collections(iter(collections), Methods.upsert)
        loader.load_items(iter(items), Methods.upsert)


@pytest.fixture(scope="module")
def api(pg_dsn, served, tmp_path_factory):
    root, server = served
    _load(pg_dsn, root, server)
    port = free_port()
    host_port = pg_dsn.rsplit("@", 1)[1].split("/", 1)[0]
    env = {
        **os.environ,
        "PGUSER": "postgres", "PGPASSWORD": "unused", "PGDATABASE": "postgres",
        "PGHOST": host_port.split(":")[0], "PGPORT": host_port.split(":")[1],
        "STAC_FASTAPI_TITLE": "zoomearth test API", "STAC_FASTAPI_DESCRIPTION": "loopback",
        "STAC_FASTAPI_LANDING_ID": "zoomearth-test", "STAC_FASTAPI_VERSION": "1",
    }
    workdir = tmp_path_factory.mktemp("stac-api-run")  # no stray .env is read from the repo
    log = workdir / "uvicorn.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "stac_fastapi.pgstac.app:create_app", "--factory",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        env=env, cwd=workdir, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"stac-fastapi-pgstac did not start: {log.read_text()[-1500:]}")
            time.sleep(0.2)
        yield url, server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ids(result) -> list[str]:
    return sorted(i.id for i in result.items)


def test_api_search_with_each_filter(api):
    url, _ = api
    everything = search(url)
    assert everything.kind == "api" and ids(everything) == sorted(i[0] for i in ITEMS)
    assert ids(search(url, collections=["tiles"])) == ["tile-2019", "tile-2020", "tile-2021"]
    assert ids(search(url, bbox=(10.9, 45.9, 11.05, 46.05))) == ["tile-2021"]
    assert ids(search(url, datetime="2020")) == ["other-2020", "tile-2020"]
    assert ids(search(url, datetime="2020-07-01/..")) == ["other-2020", "tile-2021"]
    assert len(search(url, limit=2).items) == 2


@pytest.mark.parametrize("mode", ["auto", "filter", "query", "local"])
def test_api_cloud_cover_through_filter_query_or_here(api, mode):
    url, _ = api
    result = search(url, collections=["tiles"], max_cloud=12.5, cloud_filter=mode)
    assert ids(result) == ["tile-2019", "tile-2021"]
    assert result.cloud_filter == ("filter" if mode == "auto" else mode)


def test_api_item_url_is_a_scene_source(api, capsys):
    url, server = api
    item_url = f"{url}collections/tiles/items/tile-2019"
    assert is_stac_source(item_url)
    r = resolve_item(item_url, "nir")
    assert r.href == server.url_for("tiles/tile-2019/nir.tif") and r.label == "2019-06-01"
    assert main(["info", item_url, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == 3 and info["width"] == SIDE
    with pytest.raises(StacError, match=r"HTTP 404"):
        resolve_item(f"{url}collections/tiles/items/no-such-item")


def test_cli_search_api_save_and_open(api, tmp_path, capsys):
    url, server = api
    saved = tmp_path / "one.json"
    code = main(["search", "--url", url, "--collection", "tiles", "--max-cloud", "20",
                 "--datetime", "2021-01-01/2021-12-31", "--save", str(saved)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.splitlines()
    assert lines[1].split()[:3] == ["tile-2021", "2021-06-01T10:00:00Z", "12.5%"]
    assert lines[1].split()[-1] == f"{url}collections/tiles/items/tile-2021"
    assert lines[-1] == f"1 item(s) from the STAC API {url}"
    assert main(["info", str(saved), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["path"] == server.url_for("tiles/tile-2021/visual.tif")
    assert main(["search", "--url", url, "--cloud-filter", "query", "--max-cloud", "1",
                 "--json"]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == ["other-2020"]
