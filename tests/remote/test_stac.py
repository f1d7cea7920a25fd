"""STAC items as scenes and ``zoomearth search`` on a static catalog (zoomearth.scene.stac).

The catalog is made by the test with pystac in a temporary folder: a root catalog, two
collections, dated items whose assets are tiny COGs (relative hrefs, as a self-contained catalog
has them), served over the project's range HTTP server on loopback. Nothing touches the internet.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.io import MemoryFile

from zoomearth.cli import main
from zoomearth.scene.rangeserver import RangeServer
from zoomearth.scene.stac import (
    StacError,
    choose_asset,
    is_stac_source,
    item_datetime,
    load_items,
    parse_bbox,
    parse_datetime_range,
    resolve_image,
    resolve_item,
    search,
    split_asset,
    stack_sources,
)

UTC = dt.UTC

# id, collection, date, cloud cover, lon/lat bbox, fill value
ITEMS = [
    ("tile-2019", "tiles", dt.datetime(2019, 6, 1, 10, tzinfo=UTC), 5.0, (10.0, 45.0, 10.1, 45.1)),
    ("tile-2020", "tiles", dt.datetime(2020, 6, 1, 10, tzinfo=UTC), 40.0, (10.0, 45.0, 10.1, 45.1)),
    ("tile-2021", "tiles", dt.datetime(2021, 6, 1, 10, tzinfo=UTC), 12.5, (11.0, 46.0, 11.1, 46.1)),
    ("other-2020", "other", dt.datetime(2020, 8, 15, 10, tzinfo=UTC), 0.0, (10, 45, 10.1, 45.1)),
]
SIDE = 256


def write_cog(path: Path, count: int, seed: int, when: dt.datetime) -> Path:
    """A tiny tiled, overviewed GeoTIFF made with GDAL's COG driver (UTM 32N, 1 m pixels)."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 255, size=(count, SIDE, SIDE), dtype=np.uint8)
    profile = {
        "driver": "GTiff", "width": SIDE, "height": SIDE, "count": count, "dtype": "uint8",
        "crs": "EPSG:32632", "transform": Affine(1, 0, 600_000, 0, -1, 5_000_000),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with MemoryFile() as mem:
        with mem.open(**profile) as ds:
            ds.write(data)
            ds.update_tags(TIFFTAG_DATETIME=when.strftime("%Y:%m:%d %H:%M:%S"))
        with mem.open() as src:
            rasterio.shutil.copy(
                src, path, driver="COG", blocksize=128, overview_resampling="average"
            )
    return path


def make_catalog(root: Path) -> Path:
    """Write the static catalog under ``root``; returns the path of catalog.json."""
    catalog = pystac.Catalog("zoomearth-test", "Test catalog of tiny COGs")
    collections: dict[str, pystac.Collection] = {}
    for n, (item_id, coll_id, when, cloud, bbox) in enumerate(ITEMS):
        if coll_id not in collections:
            extent = pystac.Extent(
                pystac.SpatialExtent([[-180.0, -90.0, 180.0, 90.0]]),
                pystac.TemporalExtent([[dt.datetime(2019, 1, 1, tzinfo=UTC), None]]),
            )
            collections[coll_id] = pystac.Collection(coll_id, f"{coll_id} collection", extent)
            catalog.add_child(collections[coll_id])
        w, s, e, nn = bbox
        item = pystac.Item(
            item_id,
            {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, nn], [w, nn], [w, s]]]},
            list(bbox),
            when,
            {"eo:cloud_cover": cloud},
        )
        folder = root / coll_id / item_id
        visual = write_cog(folder / "visual.tif", 3, n, when)
        nir = write_cog(folder / "nir.tif", 1, 100 + n, when)
        cog = pystac.MediaType.COG
        item.add_asset("visual", pystac.Asset(str(visual), media_type=cog, roles=["visual"]))
        item.add_asset("nir", pystac.Asset(str(nir), media_type=cog, roles=["data"]))
        item.add_asset(
            "thumbnail", pystac.Asset("https://example.invalid/thumb.png",
                                      media_type=pystac.MediaType.PNG, roles=["thumbnail"])
        )
        collections[coll_id].add_item(item)
    catalog.normalize_hrefs(str(root))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    return root / "catalog.json"


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stac")
    make_catalog(root)
    return root


@pytest.fixture(scope="module")
def server(tree):
    with RangeServer(tree) as srv:
        yield srv


def item_path(tree: Path, item_id: str) -> Path:
    coll = next(c for i, c, *_ in ITEMS if i == item_id)
    return tree / coll / item_id / f"{item_id}.json"


def ids(result) -> list[str]:
    return [i.id for i in result.items]


# ----------------------------------------------------------------------------------------------
# naming
# ----------------------------------------------------------------------------------------------
def test_stac_sources_are_recognised_and_rasters_are_not():
    assert is_stac_source("item.json") and is_stac_source("dir/Item.JSON#nir")
    assert is_stac_source("https://h/items/x.json?sig=1")
    assert is_stac_source("https://api.example/collections/s2/items/S2A_1")
    assert is_stac_source("s3://bucket/items/x.geojson")
    assert not is_stac_source("scene.tif") and not is_stac_source("https://h/a.tif")
    assert not is_stac_source("https://h/collections/s2/items/S2A_1/visual.tif")
    assert not is_stac_source(None)
    assert split_asset("item.json#nir") == ("item.json", "nir")
    assert split_asset("odd#name.tif") == ("odd#name.tif", None)  # a raster keeps its '#'


def test_raster_source_is_returned_unchanged_without_reading(tmp_path):
    missing = tmp_path / "nothing-here.tif"
    assert resolve_image(missing) is missing
    with pytest.raises(StacError, match=r"--asset nir applies to STAC items"):
        resolve_image(str(missing), "nir")


# ----------------------------------------------------------------------------------------------
# items and assets
# ----------------------------------------------------------------------------------------------
def test_local_item_resolves_to_the_visual_asset_with_its_date(tree):
    path = item_path(tree, "tile-2020")
    raw = json.loads(path.read_text())
    assert raw["assets"]["visual"]["href"] == "./visual.tif"  # relative in the file
    r = resolve_item(path)
    assert r.asset == "visual" and r.item_id == "tile-2020" and r.collection == "tiles"
    assert r.href == str((path.parent / "visual.tif").resolve())
    assert r.when == dt.datetime(2020, 6, 1, 10, tzinfo=UTC) and r.label == "2020-06-01"
    assert resolve_image(str(path)) == r.href


def test_asset_by_option_or_fragment(tree):
    path = item_path(tree, "tile-2019")
    nir = str((path.parent / "nir.tif").resolve())
    assert resolve_item(path, "nir").href == nir
    assert resolve_item(f"{path}#nir").href == nir
    assert resolve_item(f"{path}#nir", "nir").href == nir
    with pytest.raises(StacError, match=r"Two asset keys given: --asset visual and #nir"):
        resolve_item(f"{path}#nir", "visual")


def test_missing_asset_lists_the_available_keys(tree):
    with pytest.raises(StacError) as err:
        resolve_item(item_path(tree, "tile-2019"), "red")
    msg = str(err.value)
    assert "has no asset 'red'" in msg and "--asset KEY" in msg
    assert "visual (image/tiff)" in msg and "nir (image/tiff)" in msg and "thumbnail" in msg
    assert err.value.code == "stac_asset"


def _item(**assets: pystac.Asset) -> pystac.Item:
    item = pystac.Item("x", None, None, dt.datetime(2020, 1, 1, tzinfo=UTC), {})
    for key, asset in assets.items():
        item.add_asset(key, asset)
    return item


def test_default_asset_order():
    cog, png = pystac.MediaType.COG, pystac.MediaType.PNG
    a = pystac.Asset
    three = {"eo:bands": [{"name": "r"}, {"name": "g"}, {"name": "b"}]}
    # a named key wins over a role, in DEFAULT_ASSET_KEYS order
    assert choose_asset(_item(image=a("i.tif", media_type=cog), rgb=a("r.tif"))) == "rgb"
    assert choose_asset(_item(b=a("b.tif", roles=["visual"]), visual=a("v.tif"))) == "visual"
    # then the role 'visual'
    item = _item(red=a("r.tif", media_type=cog), tci=a("t.tif", roles=["visual"]))
    assert choose_asset(item) == "tci"
    # then a data GeoTIFF with 3+ bands
    item = _item(
        red=a("r.tif", media_type=cog, roles=["data"]),
        bgr=a("m.tif", media_type=cog, roles=["data"], extra_fields=three),
    )
    assert choose_asset(item) == "bgr"
    # then the only raster (thumbnails aside)
    item = _item(thumb=a("t.png", media_type=png, roles=["thumbnail"]),
                 data=a("d.tif", roles=["data"]))
    assert choose_asset(item) == "data"
    # several single-band rasters: no default, the error lists them
    item = _item(red=a("r.tif", media_type=cog), green=a("g.tif", media_type=cog))
    with pytest.raises(StacError, match=r"no visual/RGB asset.*red \(image/tiff\), green"):
        choose_asset(item, source="item.json")


def test_item_datetime_falls_back_to_start_datetime():
    item = pystac.Item("x", None, None, None, {
        "start_datetime": "2018-03-01T00:00:00Z", "end_datetime": "2018-03-31T00:00:00Z"})
    assert item_datetime(item) == dt.datetime(2018, 3, 1, tzinfo=UTC)
    naive = pystac.Item("y", None, None, dt.datetime(2017, 5, 4), {})
    assert item_datetime(naive) == dt.datetime(2017, 5, 4, tzinfo=UTC)


def test_item_over_http_resolves_relative_hrefs_against_its_url(server):
    url = server.url_for("tiles/tile-2021/tile-2021.json")
    r = resolve_item(url)
    assert r.href == server.url_for("tiles/tile-2021/visual.tif")
    assert resolve_image(url + "#nir") == server.url_for("tiles/tile-2021/nir.tif")
    # the thumbnail's absolute https href is kept as it is
    item = load_items(url)[0]
    assert item.assets["thumbnail"].get_absolute_href() == "https://example.invalid/thumb.png"


def test_stale_self_link_does_not_redirect_relative_hrefs(tmp_path, tree):
    src = item_path(tree, "tile-2019")
    data = json.loads(src.read_text())
    data["links"] = [{"rel": "self", "href": "https://moved.example/old/tile-2019.json"}]
    copy = tmp_path / "copy" / "tile-2019.json"
    copy.parent.mkdir()
    copy.write_text(json.dumps(data))
    assert resolve_item(copy).href == str(tmp_path / "copy" / "visual.tif")


def test_s3_and_https_asset_hrefs_are_kept(tmp_path):
    item = _item(visual=pystac.Asset("s3://bucket/scenes/v.tif"),
                 nir=pystac.Asset("https://cdn.example/n.tif"))
    path = tmp_path / "item.json"
    path.write_text(json.dumps(item.to_dict(include_self_link=False)))
    assert resolve_image(str(path)) == "s3://bucket/scenes/v.tif"
    assert resolve_image(str(path), "nir") == "https://cdn.example/n.tif"


def test_clear_errors_for_things_that_are_not_items(tmp_path, tree, server):
    with pytest.raises(StacError, match=r"type 'Catalog'.*zoomearth search --url"):
        resolve_item(tree / "catalog.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": "Feature", ')
    with pytest.raises(StacError, match=r"bad.json is not valid JSON \(line 1"):
        resolve_item(bad)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(StacError, match=r"JSON but not an object \(got list\)"):
        resolve_item(tmp_path / "list.json")
    (tmp_path / "geo.json").write_text(json.dumps(
        {"type": "Feature", "geometry": None, "properties": {}}))
    with pytest.raises(StacError, match=r"GeoJSON Feature but not a STAC Item \(no stac_version"):
        resolve_item(tmp_path / "geo.json")
    with pytest.raises(StacError, match=r"No such STAC file: .*nope.json"):
        resolve_item(tmp_path / "nope.json")
    with pytest.raises(StacError, match=r"HTTP 404"):
        resolve_item(server.url_for("tiles/missing.json"))


# ----------------------------------------------------------------------------------------------
# search filters on the static catalog
# ----------------------------------------------------------------------------------------------
def test_parse_bbox_and_datetime():
    assert parse_bbox("10,45,10.5,45.5") == (10.0, 45.0, 10.5, 45.5)
    for bad in ("10,45,10.5", "a,b,c,d", "11,45,10,46", "0,-91,1,1"):
        with pytest.raises(StacError, match=r"--bbox expects W,S,E,N"):
            parse_bbox(bad)
    start, end = parse_datetime_range("2020")
    assert start == dt.datetime(2020, 1, 1, tzinfo=UTC)
    assert end == dt.datetime(2020, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    start, end = parse_datetime_range("2020-12/..")
    assert start == dt.datetime(2020, 12, 1, tzinfo=UTC) and end is None
    start, end = parse_datetime_range("2020-06-01T10:00:00Z")
    assert start == end == dt.datetime(2020, 6, 1, 10, tzinfo=UTC)
    for bad in ("yesterday", "../..", "2021/2020", "2020/2021/2022"):
        with pytest.raises(StacError, match=r"--datetime"):
            parse_datetime_range(bad)


def test_static_search_filters(tree):
    url = str(tree / "catalog.json")
    assert ids(search(url)) == ["tile-2021", "other-2020", "tile-2020", "tile-2019"]  # newest first
    assert ids(search(url, collections=["tiles"])) == ["tile-2021", "tile-2020", "tile-2019"]
    assert ids(search(url, bbox=(10.9, 45.9, 11.05, 46.05))) == ["tile-2021"]
    assert ids(search(url, datetime="2020")) == ["other-2020", "tile-2020"]
    assert ids(search(url, datetime="2020-07-01/..")) == ["tile-2021", "other-2020"]
    assert ids(search(url, datetime="../2019-12-31")) == ["tile-2019"]
    assert ids(search(url, max_cloud=12.5)) == ["tile-2021", "other-2020", "tile-2019"]
    assert ids(search(url, limit=2)) == ["tile-2021", "other-2020"]
    both = search(url, collections=["tiles"], bbox=(9, 44, 10.5, 45.5), max_cloud=10)
    assert ids(both) == ["tile-2019"] and both.kind == "static" and both.cloud_filter == "local"
    # assets of found items are absolute
    href = both.items[0].assets["visual"].href
    assert Path(href).is_absolute() and Path(href).exists()


def test_static_search_over_http(server):
    result = search(server.url_for("catalog.json"), collections=["tiles"], datetime="2021")
    assert ids(result) == ["tile-2021"]
    assert result.rows()[0]["href"] == server.url_for("tiles/tile-2021/tile-2021.json")
    assert result.items[0].assets["visual"].href == server.url_for("tiles/tile-2021/visual.tif")


def test_search_errors(tree, tmp_path):
    with pytest.raises(StacError, match=r"not a STAC catalog, collection or API landing page"):
        search(str(item_path(tree, "tile-2019")))
    with pytest.raises(StacError, match=r"--max-cloud is a cloud cover in percent"):
        search(str(tree / "catalog.json"), max_cloud=120)
    broken = tmp_path / "broken"
    shutil.copytree(tree, broken)
    (broken / "tiles" / "tile-2020" / "tile-2020.json").unlink()
    with pytest.raises(StacError, match=r"Walking the static catalog .* failed"):
        search(str(broken / "catalog.json"))


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------
def test_cli_info_on_a_local_item(tree, capsys):
    path = item_path(tree, "tile-2019")
    assert main(["info", str(path), "--json"]) == 0
    out, err = capsys.readouterr()
    info = json.loads(out)
    assert info["count"] == 3 and info["width"] == SIDE and info["path"].endswith("visual.tif")
    assert "STAC item 'tile-2019', asset 'visual' (2019-06-01T10:00:00+00:00)" in err
    assert main(["info", str(path), "--asset", "nir", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 1


def test_cli_info_on_an_item_url(server, capsys):
    url = server.url_for("tiles/tile-2020/tile-2020.json")
    assert main(["info", url, "--asset", "nir", "--json"]) == 0
    out, err = capsys.readouterr()
    info = json.loads(out)
    assert info["count"] == 1 and info["width"] == SIDE
    assert server.url_for("tiles/tile-2020/nir.tif") in err


def test_cli_errors_are_one_line(tree, tmp_path, capsys):
    raster = write_cog(tmp_path / "plain.tif", 3, 7, dt.datetime(2020, 1, 1, tzinfo=UTC))
    assert main(["info", str(raster), "--asset", "visual"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--asset visual applies to STAC items" in err
    assert main(["info", str(item_path(tree, "tile-2019")), "--asset", "swir"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no asset 'swir'" in err and "visual (image/tiff)" in err
    assert main(["search", "--url", str(tree / "catalog.json"), "--bbox", "1,2,3"]) == 2
    assert "--bbox expects W,S,E,N" in capsys.readouterr().err


def test_cli_search_table_json_and_save(server, tmp_path, capsys):
    url = server.url_for("catalog.json")
    assert main(["search", "--url", url, "--collection", "tiles", "--max-cloud", "20"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["id", "datetime", "cloud", "assets", "href"]
    assert out[1].split() == [
        "tile-2021", "2021-06-01T10:00:00Z", "12.5%", "visual,nir,thumbnail",
        server.url_for("tiles/tile-2021/tile-2021.json"),
    ]
    assert out[2].startswith("tile-2019")
    assert out[-1].startswith("2 item(s) from the static catalog")

    saved = tmp_path / "found.json"
    assert main(["search", "--url", url, "--bbox", "10.95,45.95,11.2,46.2", "--json",
                 "--save", str(saved)]) == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert [r["id"] for r in rows] == ["tile-2021"] and rows[0]["cloud_cover"] == 12.5
    assert "saved 1 item(s)" in captured.err
    doc = json.loads(saved.read_text())
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == 1
    assert doc["features"][0]["assets"]["visual"]["href"] == server.url_for(
        "tiles/tile-2021/visual.tif")
    # a one-item saved search is that item
    assert resolve_image(str(saved)) == server.url_for("tiles/tile-2021/visual.tif")

    assert main(["search", "--url", url, "--datetime", "1990"]) == 0
    assert "no items matched" in capsys.readouterr().out


def test_saved_search_of_several_items_is_a_stack(tree, tmp_path, capsys):
    saved = tmp_path / "stack.json"
    assert main(["search", "--url", str(tree / "catalog.json"), "--collection", "tiles",
                 "--save", str(saved)]) == 0
    capsys.readouterr()
    dates = stack_sources(saved)
    assert [d.item_id for d in dates] == ["tile-2019", "tile-2020", "tile-2021"]  # oldest first
    assert [d.label for d in dates] == ["2019-06-01", "2020-06-01", "2021-06-01"]
    assert all(Path(d.href).exists() for d in dates)
    # `info` takes one scene: a stack of items is refused with a pointer
    assert main(["info", str(saved)]) == 2
    err = capsys.readouterr().err
    assert "holds 3 STAC items (a saved search: a time stack)" in err and err.count("\n") == 1
    with pytest.raises(StacError, match=r"holds 3 STAC items"):
        resolve_image(str(saved))


def test_ask_with_rules_planner_on_an_item(tree, tmp_path, capsys):
    path = item_path(tree, "tile-2021")
    out_dir = tmp_path / "run"
    code = main(["ask", str(path), "denoise the top-left corner", "--planner", "rules",
                 "--out", str(out_dir), "--json", "--set", f"data_dir={tmp_path / 'data'}"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    record = json.loads(captured.out)
    assert record["status"] == "answered"
    assert "STAC item 'tile-2021', asset 'visual'" in captured.err
    assert [c["name"] for c in record["tool_calls"]] == ["denoise"]
    written = [a for a in record["artifacts"] if a["path"].endswith(".tif")]
    assert written and Path(written[0]["path"]).is_relative_to(out_dir)
    with rasterio.open(written[0]["path"]) as ds:  # the source asset's georeferencing is kept
        assert ds.crs.to_epsg() == 32632 and ds.width <= SIDE  # (min crop: the whole tile)
        assert ds.transform.c == 600_000 and ds.transform.f == 5_000_000


def test_ask_with_rules_planner_on_an_item_url(server, tmp_path, capsys):
    url = server.url_for("tiles/tile-2020/tile-2020.json")
    code = main(["ask", url, "what is in this image overall?", "--planner", "rules",
                 "--out", str(tmp_path / "run"), "--json",
                 "--set", f"data_dir={tmp_path / 'data'}"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    record = json.loads(captured.out)
    assert record["status"] == "answered" and record["answer"]


def test_item_in_s3_resolves_through_boto3(monkeypatch, tmp_path):
    """An item read from a real S3 API on loopback (moto's server) with an unsigned client."""
    import boto3
    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    try:
        host, port = moto.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}.items():
            monkeypatch.setenv(key, value)
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="imagery")
        item = _item(visual=pystac.Asset("../cogs/v.tif"), nir=pystac.Asset("s3://other/n.tif"))
        s3.put_object(Bucket="imagery", Key="items/x.json",
                      Body=json.dumps(item.to_dict(include_self_link=False)).encode())
        assert resolve_image("s3://imagery/items/x.json") == "s3://imagery/cogs/v.tif"
        assert resolve_image("s3://imagery/items/x.json#nir") == "s3://other/n.tif"
        with pytest.raises(StacError, match=r"Cannot read s3://imagery/items/missing.json \("):
            resolve_item("s3://imagery/items/missing.json")
    finally:
        moto.stop()


def test_ask_on_a_saved_search_of_several_items_is_a_time_stack(tree, tmp_path, capsys):
    saved = tmp_path / "tiles.json"
    assert main(["search", "--url", str(tree / "catalog.json"), "--collection", "tiles",
                 "--save", str(saved)]) == 0
    capsys.readouterr()
    code = main(["ask", str(saved), "what changed between 2019 and 2021?", "--planner", "rules",
                 "--out", str(tmp_path / "run"), "--json",
                 "--set", f"data_dir={tmp_path / 'data'}"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "a saved search of 3 items, a time stack" in captured.err
    record = json.loads(captured.out)
    calls = record["tool_calls"]
    assert [c["name"] for c in calls] == ["change_detection"] and calls[0]["status"] == "ok"
    text = json.dumps(calls[0])
    assert "2019-06-01" in text and "2021-06-01" in text


def test_cli_view_of_an_item_asset(tree, tmp_path, capsys):
    out = tmp_path / "nir.png"
    path = item_path(tree, "tile-2021")
    assert main(["view", f"{path}#nir", "--side", "64", "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "asset 'nir'" in captured.err and "wrote" in captured.out and out.exists()


def test_cli_tool_on_an_item(tree, tmp_path, capsys):
    out_dir = tmp_path / "tool-run"
    path = item_path(tree, "tile-2019")
    code = main(["tool", "denoise", str(path), "--asset", "visual", "--box", "0,0,128,128",
                 "--out", str(out_dir), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "STAC item 'tile-2019', asset 'visual'" in captured.err
    record = json.loads(captured.out)
    tifs = [a["path"] for a in record["artifacts"] if a["path"].endswith(".tif")]
    assert tifs and all(Path(t).is_relative_to(out_dir) for t in tifs)


def test_stack_option_takes_items(tree, tmp_path, capsys):
    code = main(["ask", str(item_path(tree, "tile-2021")), "what changed since 2019?",
                 "--stack", str(item_path(tree, "tile-2019")), "--planner", "rules",
                 "--out", str(tmp_path / "run"), "--json",
                 "--set", f"data_dir={tmp_path / 'data'}"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    calls = json.loads(captured.out)["tool_calls"]
    assert [c["name"] for c in calls] == ["change_detection"] and calls[0]["status"] == "ok"
    assert "2019-06-01" in json.dumps(calls[0])
