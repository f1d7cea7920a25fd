"""STAC items as scenes, and searches of STAC APIs and static catalogs.

A scene may be named by a STAC Item instead of a raster: a local JSON file, an ``http(s)://`` or
``s3://`` URL of one, or the item URL of a STAC API (``.../collections/C/items/ID``). The item is
read (a few kB), one of its assets is chosen and the scene is that asset's raster, opened like any
other path or URL (:class:`~zoomearth.scene.scene.Scene`). :func:`resolve_image` does this for
every entry point (the command line's ``IMAGE`` with ``--asset KEY``, ``Agent.ask(image=...)``):
anything that is not a STAC source is returned unchanged, so callers call it unconditionally.

**Naming a STAC source.** A source is taken as STAC when, its ``#fragment`` and ``?query``
aside, it ends in ``.json`` or ``.geojson`` (rasters never do), or it is an ``http(s)`` URL of a
STAC API item (a path ending ``/collections/<id>/items/<id>``). The asset key may follow as the
fragment: ``item.json#nir`` or ``https://host/items/x.json#visual`` (a fragment is never sent to a
server). A saved search (an ItemCollection, ``FeatureCollection`` JSON) of one item names that
item; one of several items is a time stack (:func:`stack_sources`).

**Default asset** (:data:`DEFAULT_ASSET_KEYS`), the first that exists:

1. the asset keyed ``visual``, then ``rgb``, then ``image`` (the names used by Sentinel-2/Landsat
   true-colour, Maxar/Planet and NAIP items);
2. the first asset whose roles include ``visual``;
3. the first raster asset (GeoTIFF/COG or JPEG2000 by media type or extension) with roles
   ``data`` and at least three bands (``eo:bands`` or ``raster:bands``);
4. the only raster asset, when there is exactly one (thumbnails and overviews aside).

Otherwise the error lists the asset keys with their types and asks for ``--asset KEY``.

**Relative hrefs** resolve against where the item was read from (its file or URL), which is where
a static catalog's relative links point; absolute ``https://`` and ``s3://`` hrefs are kept as
they are. A local item whose asset is a relative path gives an absolute local path.

**Searches** (:func:`search`): a STAC API root (one whose landing page declares the
``item-search`` conformance class) is searched through ``pystac-client``; anything else
(a static ``catalog.json``, local or by URL) is walked with ``pystac`` and the same filters are
applied here. Filters: collections, bbox (``W,S,E,N`` in WGS84 degrees, intersecting the item's
bbox), datetime (RFC 3339 instant or ``start/end`` interval, ``..`` open; a bare ``2020`` or
``2020-06`` means that whole year or month, as in pystac-client) and maximum ``eo:cloud_cover``
(percent; items without it are left out, as a server's filter does). The cloud-cover filter is
sent with the CQL2 ``filter`` extension when the API declares it, else the ``query`` extension,
else applied to the items the API returned (:data:`CLOUD_FILTER_MODES`).

Reading JSON: local files; ``http(s)`` through ``httpx`` (timeout: the setting
``remote_timeout_s``, :data:`HTTP_TIMEOUT_S` without settings; the standard proxy variables);
``s3://`` through ``boto3`` (the ``cloud`` extra) with the standard AWS credentials, the same
endpoint the rasters use (:func:`zoomearth.scene.remote.s3_endpoint`: the setting
``s3_endpoint_url``, ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL`` or GDAL's ``AWS_S3_ENDPOINT``
with ``AWS_HTTPS``) and ``AWS_NO_SIGN_REQUEST=YES`` for public buckets. Every failure is a
one-line :class:`StacError` that says what to do.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import posixpath
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from zoomearth.errors import SceneError

__all__ = [
    "CLOUD_FILTER_MODES",
    "DEFAULT_ASSET_KEYS",
    "ResolvedItem",
    "SearchResult",
    "StacError",
    "choose_asset",
    "is_stac_source",
    "item_datetime",
    "load_items",
    "parse_bbox",
    "parse_datetime_range",
    "read_json",
    "resolve_image",
    "resolve_item",
    "save_item_collection",
    "search",
    "split_asset",
    "stack_sources",
]

#: Asset keys tried first, in order, when no asset key is given.
DEFAULT_ASSET_KEYS: tuple[str, ...] = ("visual", "rgb", "image")
#: How ``--max-cloud`` reaches an API: ``auto`` picks ``filter`` (CQL2) when the API declares
#: the filter extension, else ``query``, else ``local``; ``local`` filters the returned items here.
CLOUD_FILTER_MODES: tuple[str, ...] = ("auto", "filter", "query", "local")
#: Seconds before an HTTP read of a STAC document gives up (connect and each read).
HTTP_TIMEOUT_S = 30.0

_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_API_ITEM_RE = re.compile(r"/collections/[^/]+/items/[^/]+/?$")
_RASTER_TYPES = ("image/tiff", "image/jp2", "image/vnd.stac.geotiff", "application/x-geotiff")
_RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt")
_NOT_SCENE_ROLES = frozenset({"thumbnail", "overview", "metadata"})
_ITEM_SEARCH_RE = re.compile(r"https://api\.stacspec\.org/v1\.\d+\.\d+(-[\w.]+)?/item-search$")
_FILTER_RE = re.compile(
    r"https://api\.stacspec\.org/v1\.\d+\.\d+(-[\w.]+)?/item-search#filter$"
    r"|http://www\.opengis\.net/spec/ogcapi-features-3/1\.0/conf/filter$"
)
_QUERY_RE = re.compile(r"https://api\.stacspec\.org/v1\.\d+\.\d+(-[\w.]+)?/item-search#query$")

NOT_STAC_TEMPLATE = (
    "{source} is not a STAC Item: its JSON has type {kind!r} (a STAC Item is a GeoJSON "
    '"Feature" with "stac_version" and "assets"). Give an item (or a saved search), not {what}.'
)
ASSET_MISSING_TEMPLATE = (
    "STAC item {item!r} has no asset {key!r}; its assets are: {assets}. Choose one with "
    "--asset KEY (or {source}#KEY)."
)
NO_DEFAULT_ASSET_TEMPLATE = (
    "STAC item {item!r} has no visual/RGB asset to open by default (tried the keys "
    "{keys}, the role 'visual' and a 3+ band GeoTIFF); its assets are: {assets}. Choose one "
    "with --asset KEY (or {source}#KEY)."
)
ASSET_OPTION_TEMPLATE = (
    "--asset {key} applies to STAC items (ITEM.json, an item URL or a saved search), but "
    "{source} is a raster; drop --asset or give the item."
)
SEVERAL_ITEMS_TEMPLATE = (
    "{source} holds {count} STAC items (a saved search: a time stack); open one of them by its "
    "self href ({examples}) or use it as a stack."
)
NO_ITEMS_TEMPLATE = "{source} holds no STAC items (an empty search result); search again."
BBOX_TEMPLATE = (
    "--bbox expects W,S,E,N in degrees (west <= east, south <= north, within -180..180 and "
    "-90..90), e.g. --bbox 5.9,45.8,10.5,47.8; got {text!r}"
)
DATETIME_TEMPLATE = (
    "--datetime expects an RFC 3339 date or time, or an interval start/end with '..' for an "
    "open end, e.g. 2020-06-01, 2020, 2019-01-01/2020-12-31 or 2020-01-01/..; got {text!r}"
)


class StacError(SceneError, ValueError):
    """A STAC item, asset, catalog or search cannot be used (the message says why and what to do).

    ``code`` is a stable identifier for API clients: ``stac_unreadable`` (the document cannot be
    read or parsed), ``stac_not_item`` (valid JSON, not an item), ``stac_asset`` (no such asset
    or no default one), ``stac_search`` (a search failed or was given bad filters).
    """

    def __init__(self, message: str, code: str = "stac_error") -> None:
        super().__init__(message)
        self.code = code


# ----------------------------------------------------------------------------------------------
# naming and reading
# ----------------------------------------------------------------------------------------------
def _is_url(text: str) -> bool:
    return bool(_URL_RE.match(text))


def split_asset(source: str | os.PathLike[str]) -> tuple[str, str | None]:
    """Split ``ITEM#KEY`` into ``(ITEM, KEY)``; ``(source, None)`` without a fragment.

    Only STAC sources carry an asset fragment: a raster path containing ``#`` is returned whole.
    """
    text = os.fspath(source)
    base, sep, fragment = text.partition("#")
    if sep and fragment and _looks_like_stac(base):
        return base, fragment
    return text, None


def _looks_like_stac(text: str) -> bool:
    path = urlsplit(text).path if _is_url(text) else text
    lower = path.lower().rstrip("/")
    if lower.endswith((".json", ".geojson")):
        return True
    return text.lower().startswith(("http://", "https://")) and bool(_API_ITEM_RE.search(path))


def is_stac_source(source: str | os.PathLike[str] | None) -> bool:
    """Whether ``source`` names a STAC item or saved search (see the module docstring)."""
    if source is None:
        return False
    base, _ = split_asset(source)
    return _looks_like_stac(base)


def _absolute_local(text: str) -> str:
    return str(Path(text).expanduser().resolve())


def _timeout(settings: Any) -> float:
    return float(getattr(settings, "remote_timeout_s", None) or HTTP_TIMEOUT_S)


def _read_http(url: str, settings: Any = None) -> bytes:
    import httpx

    timeout = _timeout(settings)
    try:
        response = httpx.get(url, timeout=timeout, follow_redirects=True)
    except httpx.TimeoutException:
        raise StacError(
            f"Reading {url} timed out after {timeout:g} s; check the server or try again.",
            "stac_unreadable",
        ) from None
    except httpx.HTTPError as exc:
        reason = str(exc).split("\n")[0] or type(exc).__name__
        raise StacError(
            f"Cannot reach {url} ({reason}); check the URL and the network.", "stac_unreadable"
        ) from None
    if response.status_code >= 400:
        raise StacError(
            f"Reading {url} failed with HTTP {response.status_code} {response.reason_phrase}; "
            "check the URL (and credentials for a private catalog).",
            "stac_unreadable",
        )
    return response.content


def _s3_client(settings: Any = None) -> Any:
    try:
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config
    except ImportError:
        raise StacError(
            "Reading STAC JSON from s3:// needs boto3: pip install 'zoomearth[cloud]'.",
            "stac_unreadable",
        ) from None
    from zoomearth.scene.remote import s3_endpoint

    kwargs: dict[str, Any] = {}
    # The same endpoint GDAL is given for the rasters: setting s3_endpoint_url or AWS variables.
    endpoint = s3_endpoint(settings)
    if endpoint and "://" not in endpoint:  # GDAL's AWS_S3_ENDPOINT spelling: host[:port]
        https = os.environ.get("AWS_HTTPS", "YES").upper() not in {"NO", "FALSE", "0", "OFF"}
        endpoint = f"{'https' if https else 'http'}://{endpoint}"
    if endpoint:
        kwargs["endpoint_url"] = endpoint
    if os.environ.get("AWS_NO_SIGN_REQUEST", "").upper() in {"YES", "TRUE", "1", "ON"}:
        kwargs["config"] = Config(signature_version=UNSIGNED)
    return boto3.client("s3", **kwargs)


def _read_s3(url: str, settings: Any = None) -> bytes:
    parts = urlsplit(url)
    bucket, key = parts.netloc, parts.path.lstrip("/")
    try:
        body = _s3_client(settings).get_object(Bucket=bucket, Key=key)["Body"]
        return bytes(body.read())
    except StacError:
        raise
    except Exception as exc:  # noqa: BLE001 - botocore's many error types all become one line
        reason = str(exc).split("\n")[0] or type(exc).__name__
        raise StacError(
            f"Cannot read {url} ({reason}); check the bucket, the key and the AWS credentials "
            "(AWS_NO_SIGN_REQUEST=YES for a public bucket).",
            "stac_unreadable",
        ) from None


def read_bytes(source: str, settings: Any = None) -> bytes:
    """The bytes of a local file or an ``http(s)://`` or ``s3://`` URL (a STAC document).

    ``settings`` (optional) gives ``remote_timeout_s`` and ``s3_endpoint_url``.
    """
    if _is_url(source):
        scheme = source.split("://", 1)[0].lower()
        if scheme in {"http", "https"}:
            return _read_http(source, settings)
        if scheme == "s3":
            return _read_s3(source, settings)
        if scheme == "file":
            source = urlsplit(source).path
        else:
            raise StacError(
                f"Cannot read {source}: the scheme {scheme}:// is not supported (use a local "
                "path, http(s):// or s3://).",
                "stac_unreadable",
            )
    path = Path(source).expanduser()
    if not path.exists():
        raise StacError(
            f"No such STAC file: {path}. Check the path (relative paths are from {Path.cwd()}).",
            "stac_unreadable",
        )
    if path.is_dir():
        raise StacError(f"{path} is a folder; give the STAC item's JSON file.", "stac_unreadable")
    return path.read_bytes()


def read_json(source: str, settings: Any = None) -> dict[str, Any]:
    """Read and parse a STAC JSON document (local file or URL); the top level must be an object.

    Raises:
        StacError: Unreadable source, invalid JSON or a top level that is not an object.
    """
    raw = read_bytes(source, settings)
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = ""
        if isinstance(exc, json.JSONDecodeError):
            where = f" (line {exc.lineno}, column {exc.colno})"
        raise StacError(
            f"{source} is not valid JSON{where}; a STAC item or catalog is a JSON document.",
            "stac_unreadable",
        ) from None
    if not isinstance(data, dict):
        raise StacError(
            f"{source} is JSON but not an object (got {type(data).__name__}); a STAC item is a "
            'GeoJSON "Feature" object.',
            "stac_not_item",
        )
    return data


def _location(source: str) -> str:
    """The absolute location of a document: what its relative hrefs resolve against."""
    if _is_url(source):
        return source
    return _absolute_local(source)


def _pystac() -> Any:
    """The ``pystac`` module, or a one-line error naming the extra that installs it."""
    try:
        import pystac
    except ImportError:
        raise StacError(
            "STAC items and searches need pystac and pystac-client: "
            "pip install 'zoomearth[cloud]'.",
            "stac_unreadable",
        ) from None
    return pystac


def _item_from_dict(data: dict[str, Any], location: str) -> Any:
    pystac = _pystac()
    if "stac_version" not in data or "assets" not in data:
        missing = [k for k in ("stac_version", "assets") if k not in data]
        raise StacError(
            f"{location} is a GeoJSON Feature but not a STAC Item (no {' or '.join(missing)}).",
            "stac_not_item",
        )
    try:
        # Parsed without migration hooks (they may fetch remote schemas); href set below.
        item = pystac.Item.from_dict(data, preserve_dict=True, migrate=False)
    except Exception as exc:  # noqa: BLE001 - pystac raises KeyError/ValueError/STACError alike
        reason = str(exc).split("\n")[0] or type(exc).__name__
        raise StacError(
            f"{location} is not a valid STAC Item ({reason}).", "stac_not_item"
        ) from None
    # Relative asset hrefs resolve against where the item was read from (see module docstring),
    # not against a self link it carries: a copied or moved catalog keeps stale self links.
    item.remove_links("self")
    item.set_self_href(location)
    return item


def load_items(source: str | os.PathLike[str], settings: Any = None) -> list[Any]:
    """The STAC items of a document: one for an Item, all of them for an ItemCollection.

    Args:
        source: A local path or ``http(s)``/``s3`` URL (an asset fragment is ignored).
        settings: Optional settings (``remote_timeout_s``, ``s3_endpoint_url``).

    Returns:
        ``pystac.Item`` objects whose self href is where each was read from (an item of a saved
        search keeps its own ``self`` link when it has an absolute one).

    Raises:
        StacError: Unreadable document, or JSON that is neither an Item nor an ItemCollection.
    """
    base, _ = split_asset(source)
    location = _location(base)
    data = read_json(location, settings)
    kind = data.get("type")
    if kind == "Feature":
        return [_item_from_dict(data, location)]
    if kind == "FeatureCollection":
        features = data.get("features")
        if not isinstance(features, list):
            raise StacError(
                f"{location} is a FeatureCollection without a 'features' list.", "stac_not_item"
            )
        items = []
        for i, feature in enumerate(features):
            if not isinstance(feature, dict) or feature.get("type") != "Feature":
                raise StacError(
                    f"{location}: feature {i} is not a GeoJSON Feature.", "stac_not_item"
                )
            own = _self_link(feature)
            # A saved search's items carry absolute self links (the item's home); relative
            # asset hrefs then resolve against that, not against the saved file.
            home = own if own and (_is_url(own) or os.path.isabs(own)) else location
            items.append(_item_from_dict(feature, home))
        return items
    what = {
        "Catalog": "a catalog (search it with 'zoomearth search --url')",
        "Collection": "a collection (search it with 'zoomearth search --url')",
    }.get(str(kind), "another document")
    raise StacError(
        NOT_STAC_TEMPLATE.format(source=location, kind=kind, what=what), "stac_not_item"
    )


def _self_link(data: dict[str, Any]) -> str | None:
    for link in data.get("links") or []:
        if isinstance(link, dict) and link.get("rel") == "self" and link.get("href"):
            return str(link["href"])
    return None


# ----------------------------------------------------------------------------------------------
# assets
# ----------------------------------------------------------------------------------------------
def _is_raster(asset: Any) -> bool:
    media = (asset.media_type or "").lower()
    if media:
        return media.startswith(_RASTER_TYPES)
    return urlsplit(asset.href).path.lower().endswith(_RASTER_SUFFIXES)


def _band_count(asset: Any) -> int:
    extra = asset.extra_fields
    counts = [len(extra.get(k) or []) for k in ("eo:bands", "raster:bands", "bands")]
    return max(counts)


def _describe_assets(item: Any) -> str:
    parts = []
    for key, asset in item.assets.items():
        media = (asset.media_type or "").split(";")[0] or "no type"
        parts.append(f"{key} ({media})")
    return ", ".join(parts) or "none"


def choose_asset(item: Any, key: str | None = None, *, source: str = "ITEM") -> str:
    """The asset key to open: ``key`` when given, else the default (see the module docstring).

    Raises:
        StacError: ``key`` is not an asset of the item, or no asset qualifies as the default.
    """
    assets = item.assets
    if key is not None:
        if key not in assets:
            raise StacError(
                ASSET_MISSING_TEMPLATE.format(
                    item=item.id, key=key, assets=_describe_assets(item), source=source
                ),
                "stac_asset",
            )
        return key
    for name in DEFAULT_ASSET_KEYS:
        if name in assets:
            return name
    for name, asset in assets.items():
        if "visual" in (asset.roles or []):
            return name
    candidates = [
        (name, asset)
        for name, asset in assets.items()
        if _is_raster(asset) and not _NOT_SCENE_ROLES.intersection(asset.roles or [])
    ]
    for name, asset in candidates:
        if "data" in (asset.roles or []) and _band_count(asset) >= 3:
            return name
    if len(candidates) == 1:
        return candidates[0][0]
    raise StacError(
        NO_DEFAULT_ASSET_TEMPLATE.format(
            item=item.id,
            keys=", ".join(DEFAULT_ASSET_KEYS),
            assets=_describe_assets(item),
            source=source,
        ),
        "stac_asset",
    )


def _asset_href(item: Any, key: str) -> str:
    asset = item.assets[key]
    href = str(asset.href)
    if _is_url(href) or os.path.isabs(href):
        return href
    base = item.get_self_href()
    if base and _is_url(base):
        parts = urlsplit(base)
        if parts.scheme.lower() in {"http", "https"}:
            return urljoin(base, href)
        # urljoin leaves other schemes (s3://) alone: join the key's path by hand.
        path = posixpath.normpath(posixpath.join(posixpath.dirname(parts.path), href))
        return f"{parts.scheme}://{parts.netloc}{path}"
    if base:
        return str((Path(base).parent / href).resolve())
    return href


def item_datetime(item: Any) -> dt.datetime | None:
    """The item's acquisition time (timezone-aware, UTC when the item gives none).

    ``datetime`` when set, else ``start_datetime`` (an item with a range but no instant); None
    when the item has neither.
    """
    when = item.datetime
    if when is None:
        when = item.common_metadata.start_datetime
    if when is not None and when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when


@dataclass(frozen=True)
class ResolvedItem:
    """One asset of one STAC item, resolved to the raster to open.

    Attributes:
        href: The raster's absolute local path or URL (``https://``, ``s3://``).
        item_id: The item's id.
        asset: The asset key chosen.
        when: The item's acquisition time (:func:`item_datetime`), or None.
        source: Where the item was read from.
        collection: The item's collection id, or None.
    """

    href: str
    item_id: str
    asset: str
    when: dt.datetime | None
    source: str
    collection: str | None = None

    @property
    def label(self) -> str:
        """A short date label for stacks: the item's date (``YYYY-MM-DD``), else its id."""
        return self.when.date().isoformat() if self.when else self.item_id

    def describe(self) -> str:
        """One line for notes: ``STAC item ID, asset KEY (DATE): HREF``."""
        when = f" ({self.when.isoformat()})" if self.when else ""
        return f"STAC item {self.item_id!r}, asset {self.asset!r}{when}: {self.href}"


def _resolve(item: Any, key: str | None, source: str) -> ResolvedItem:
    chosen = choose_asset(item, key, source=source)
    return ResolvedItem(
        href=_asset_href(item, chosen),
        item_id=str(item.id),
        asset=chosen,
        when=item_datetime(item),
        source=str(item.get_self_href() or source),
        collection=item.collection_id,
    )


def _asset_key(source: str | os.PathLike[str], asset: str | None) -> tuple[str, str | None]:
    base, fragment = split_asset(source)
    if asset and fragment and asset != fragment:
        raise StacError(
            f"Two asset keys given: --asset {asset} and #{fragment} in {source}; give one.",
            "stac_asset",
        )
    return base, asset or fragment


def resolve_item(
    source: str | os.PathLike[str], asset: str | None = None, *, settings: Any = None
) -> ResolvedItem:
    """Resolve a STAC item (or a one-item saved search) and an asset key to the raster to open.

    Args:
        source: Local path or URL of the item, optionally with ``#ASSET``.
        asset: Asset key (wins over none; must agree with a ``#ASSET`` fragment).
        settings: Optional settings (``remote_timeout_s``, ``s3_endpoint_url``).

    Raises:
        StacError: Unreadable or not an item, several items, or no such/default asset.
    """
    base, key = _asset_key(source, asset)
    items = load_items(base, settings)
    if not items:
        raise StacError(NO_ITEMS_TEMPLATE.format(source=base), "stac_not_item")
    if len(items) > 1:
        examples = ", ".join(str(i.get_self_href()) for i in items[:2])
        raise StacError(
            SEVERAL_ITEMS_TEMPLATE.format(source=base, count=len(items), examples=examples),
            "stac_not_item",
        )
    return _resolve(items[0], key, base)


def resolve_image(
    source: str | os.PathLike[str], asset: str | None = None, *, settings: Any = None
) -> str | os.PathLike[str]:
    """What to open for a scene source: the asset's href for a STAC source, else ``source``.

    Call it on every user-given scene source: a raster path or URL comes back unchanged (the
    same object), so no file is read for it.

    Raises:
        StacError: A STAC source that cannot be resolved (:func:`resolve_item`), or ``asset``
            given for a source that is not STAC.
    """
    if not is_stac_source(source):
        if asset:
            raise StacError(
                ASSET_OPTION_TEMPLATE.format(key=asset, source=source), "stac_asset"
            )
        return source
    return resolve_item(source, asset, settings=settings).href


def stack_sources(
    source: str | os.PathLike[str], asset: str | None = None, *, settings: Any = None
) -> list[ResolvedItem]:
    """Every item of a STAC source (one item or a saved search), oldest first: a time stack.

    Items without a date keep their order, after the dated ones. The same asset key (given or
    the default of each item) is used for every item.
    """
    base, key = _asset_key(source, asset)
    items = load_items(base, settings)
    if not items:
        raise StacError(NO_ITEMS_TEMPLATE.format(source=base), "stac_not_item")
    resolved = [_resolve(item, key, base) for item in items]
    far_future = dt.datetime.max.replace(tzinfo=dt.UTC)
    return sorted(resolved, key=lambda r: r.when or far_future)


# ----------------------------------------------------------------------------------------------
# search filters
# ----------------------------------------------------------------------------------------------
def parse_bbox(text: str) -> tuple[float, float, float, float]:
    """``W,S,E,N`` in WGS84 degrees -> a tuple; :class:`StacError` with an example otherwise."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise StacError(BBOX_TEMPLATE.format(text=text), "stac_search")
    west, south, east, north = values
    if not (
        -180 <= west <= east <= 180 and -90 <= south <= north <= 90
    ):
        raise StacError(BBOX_TEMPLATE.format(text=text), "stac_search")
    return west, south, east, north


_DATE_PARTS_RE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")


def _instant_range(text: str, full: str) -> tuple[dt.datetime, dt.datetime] | None:
    """The interval one component covers: a whole year/month/day, or one instant; None = open."""
    text = text.strip()
    if text in {"", ".."}:
        return None
    utc = dt.UTC
    m = _DATE_PARTS_RE.match(text)
    try:
        if m:
            year, month, day = int(m.group(1)), m.group(2), m.group(3)
            if day:
                start = dt.datetime(year, int(month), int(day), tzinfo=utc)
                end = start + dt.timedelta(days=1)
            elif month:
                start = dt.datetime(year, int(month), 1, tzinfo=utc)
                end = dt.datetime(year + int(month) // 12, int(month) % 12 + 1, 1, tzinfo=utc)
            else:
                start = dt.datetime(year, 1, 1, tzinfo=utc)
                end = dt.datetime(year + 1, 1, 1, tzinfo=utc)
            return start, end - dt.timedelta(microseconds=1)
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise StacError(DATETIME_TEMPLATE.format(text=full), "stac_search") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=utc)
    return when, when


def parse_datetime_range(text: str) -> tuple[dt.datetime | None, dt.datetime | None]:
    """``--datetime`` -> ``(start, end)`` inclusive, timezone-aware; None = open end.

    Raises:
        StacError: Not an instant or interval (the message gives examples), or start after end.
    """
    parts = text.split("/")
    if len(parts) > 2 or not text.strip():
        raise StacError(DATETIME_TEMPLATE.format(text=text), "stac_search")
    if len(parts) == 1:
        span = _instant_range(parts[0], text)
        if span is None:
            raise StacError(DATETIME_TEMPLATE.format(text=text), "stac_search")
        return span
    first, last = _instant_range(parts[0], text), _instant_range(parts[1], text)
    if first is None and last is None:
        raise StacError(DATETIME_TEMPLATE.format(text=text), "stac_search")
    start = first[0] if first else None
    end = last[1] if last else None
    if start and end and start > end:
        raise StacError(
            f"--datetime {text!r}: the start is after the end; swap them.", "stac_search"
        )
    return start, end


def _item_interval(item: Any) -> tuple[dt.datetime | None, dt.datetime | None]:
    common = item.common_metadata
    start = item.datetime or common.start_datetime
    end = item.datetime or common.end_datetime or start

    def aware(value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value

    return aware(start), aware(end)


def _cloud_cover(item: Any) -> float | None:
    value = item.properties.get("eo:cloud_cover")
    return float(value) if isinstance(value, int | float) else None


@dataclass(frozen=True)
class _Filters:
    collections: tuple[str, ...] = ()
    bbox: tuple[float, float, float, float] | None = None
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    max_cloud: float | None = None

    def collection_ok(self, item: Any) -> bool:
        return not self.collections or item.collection_id in self.collections

    def bbox_ok(self, item: Any) -> bool:
        if self.bbox is None:
            return True
        box = item.bbox
        if not box and item.geometry:
            from shapely.geometry import shape

            box = shape(item.geometry).bounds
        if not box:
            return False
        w, s, e, n = self.bbox
        # 3D bboxes hold (minx, miny, minz, maxx, maxy, maxz).
        bw, bs, be, bn = (box[0], box[1], box[3], box[4]) if len(box) == 6 else tuple(box[:4])
        return bw <= e and be >= w and bs <= n and bn >= s

    def time_ok(self, item: Any) -> bool:
        if self.start is None and self.end is None:
            return True
        first, last = _item_interval(item)
        if first is None or last is None:
            return False
        before_end = self.end is None or first <= self.end
        return before_end and (self.start is None or last >= self.start)

    def cloud_ok(self, item: Any) -> bool:
        if self.max_cloud is None:
            return True
        cover = _cloud_cover(item)
        return cover is not None and cover <= self.max_cloud

    def __call__(self, item: Any) -> bool:
        return (
            self.collection_ok(item)
            and self.bbox_ok(item)
            and self.time_ok(item)
            and self.cloud_ok(item)
        )


@dataclass
class SearchResult:
    """The items a search found, newest first for a static catalog (the API's order otherwise).

    Attributes:
        items: ``pystac.Item`` objects with absolute self and asset hrefs.
        source: The catalog or API searched.
        kind: ``"api"`` (STAC API item search) or ``"static"`` (a catalog walked here).
        cloud_filter: How the cloud-cover filter was applied: ``filter``, ``query``, ``local``
            or None (no cloud filter).
        notes: Things the user should know (e.g. a filter applied locally).
    """

    items: list[Any]
    source: str
    kind: str
    cloud_filter: str | None = None
    notes: list[str] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        """One JSON-friendly dict per item: id, collection, datetime, cloud cover, assets, href."""
        out = []
        for item in self.items:
            when = item_datetime(item)
            out.append(
                {
                    "id": item.id,
                    "collection": item.collection_id,
                    "datetime": when.isoformat() if when else None,
                    "cloud_cover": _cloud_cover(item),
                    "assets": list(item.assets),
                    "href": item.get_self_href(),
                    "bbox": list(item.bbox) if item.bbox else None,
                }
            )
        return out


def _conformance(root: dict[str, Any]) -> list[str]:
    value = root.get("conformsTo") or []
    return [str(v) for v in value] if isinstance(value, list) else []


def search(
    url: str,
    *,
    collections: Sequence[str] = (),
    bbox: tuple[float, float, float, float] | None = None,
    datetime: str | None = None,
    max_cloud: float | None = None,
    limit: int | None = 20,
    cloud_filter: str = "auto",
    settings: Any = None,
) -> SearchResult:
    """Search a STAC API or walk a static catalog with the same filters.

    Args:
        url: A STAC API landing page, or a static catalog/collection JSON (local path or URL).
        collections: Collection ids (any of them); empty = all.
        bbox: ``(W, S, E, N)`` in WGS84 degrees (:func:`parse_bbox`); items intersecting it.
        datetime: An instant or interval (:func:`parse_datetime_range`).
        max_cloud: Maximum ``eo:cloud_cover`` in percent (0-100).
        limit: At most this many items (None = all).
        cloud_filter: One of :data:`CLOUD_FILTER_MODES` (APIs only; a static catalog is always
            filtered here).
        settings: Optional settings (``remote_timeout_s``, ``s3_endpoint_url``).

    Raises:
        StacError: Bad filters, an unreadable catalog or a failing API.
    """
    if cloud_filter not in CLOUD_FILTER_MODES:
        raise StacError(
            f"cloud filter mode must be one of {', '.join(CLOUD_FILTER_MODES)}; got "
            f"{cloud_filter!r}",
            "stac_search",
        )
    if max_cloud is not None and not 0 <= max_cloud <= 100:
        raise StacError(
            f"--max-cloud is a cloud cover in percent, 0 to 100; got {max_cloud:g}",
            "stac_search",
        )
    if limit is not None and limit < 1:
        raise StacError(f"--limit must be at least 1; got {limit}", "stac_search")
    start, end = parse_datetime_range(datetime) if datetime else (None, None)
    filters = _Filters(tuple(collections), bbox, start, end, max_cloud)
    location = _location(url)
    root = read_json(location, settings)
    if root.get("type") not in {"Catalog", "Collection"}:
        raise StacError(
            f"{location} is not a STAC catalog, collection or API landing page (type "
            f"{root.get('type')!r}); give the catalog's root JSON or the API's URL.",
            "stac_search",
        )
    conforms = _conformance(root)
    if any(_ITEM_SEARCH_RE.match(c) for c in conforms):
        return _search_api(location, conforms, filters, datetime, limit, cloud_filter)
    return _search_static(location, filters, limit, settings)


def _search_api(
    url: str,
    conforms: list[str],
    filters: _Filters,
    datetime: str | None,
    limit: int | None,
    mode: str,
) -> SearchResult:
    from pystac_client import Client
    from pystac_client.exceptions import APIError

    notes: list[str] = []
    params: dict[str, Any] = {}
    if filters.collections:
        params["collections"] = list(filters.collections)
    if filters.bbox:
        params["bbox"] = list(filters.bbox)
    if datetime:
        params["datetime"] = datetime
    used: str | None = None
    if filters.max_cloud is not None:
        has_filter = any(_FILTER_RE.match(c) for c in conforms)
        has_query = any(_QUERY_RE.match(c) for c in conforms)
        used = mode
        if mode == "auto":
            used = "filter" if has_filter else "query" if has_query else "local"
        if used in {"filter", "query"} and not (has_filter if used == "filter" else has_query):
            raise StacError(
                f"{url} does not declare the {used} extension; use --cloud-filter auto or local.",
                "stac_search",
            )
        if used == "filter":
            params["filter"] = {
                "op": "<=",
                "args": [{"property": "eo:cloud_cover"}, filters.max_cloud],
            }
            params["filter_lang"] = "cql2-json"
        elif used == "query":
            params["query"] = {"eo:cloud_cover": {"lte": filters.max_cloud}}
        else:
            notes.append(
                "the API declares neither the filter nor the query extension: the cloud-cover "
                "limit was applied to the items it returned"
            )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # conformance notices: handled above
            client = Client.open(url)
            found = client.search(
                max_items=None if used == "local" else limit,
                limit=min(limit or 100, 100),
                **params,
            )
            items: list[Any] = []
            for item in found.items():
                if used == "local" and not filters.cloud_ok(item):
                    continue
                items.append(item)
                if limit is not None and len(items) >= limit:
                    break
    except APIError as exc:
        reason = " ".join(str(exc).split())[:300]
        raise StacError(
            f"The STAC API at {url} answered an error: {reason}", "stac_search"
        ) from None
    except OSError as exc:
        raise StacError(f"Cannot reach the STAC API at {url} ({exc}).", "stac_search") from None
    for item in items:
        item.make_asset_hrefs_absolute()
    return SearchResult(items, url, "api", used, notes)


def _search_static(
    url: str, filters: _Filters, limit: int | None, settings: Any = None
) -> SearchResult:
    pystac = _pystac()
    io = _stac_io(settings)
    try:
        root = pystac.read_file(url, stac_io=io)
        if not isinstance(root, pystac.Catalog):
            raise StacError(f"{url} is not a STAC catalog or collection.", "stac_search")
        matches = [item for item in root.get_items(recursive=True) if filters(item)]
    except StacError:
        raise
    except Exception as exc:  # noqa: BLE001 - a broken link anywhere in the tree: one line
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise StacError(
            f"Walking the static catalog {url} failed ({reason}).", "stac_search"
        ) from None
    far_past = dt.datetime.min.replace(tzinfo=dt.UTC)
    matches.sort(key=lambda i: item_datetime(i) or far_past, reverse=True)
    if limit is not None:
        matches = matches[:limit]
    for item in matches:
        item.make_asset_hrefs_absolute()
    return SearchResult(matches, url, "static", "local" if filters.max_cloud is not None else None)


def _stac_io(settings: Any = None) -> Any:
    """A pystac ``StacIO`` reading through this module (httpx, boto3; one-line errors).

    Built on demand: pystac is imported only when a catalog is walked.
    """
    from pystac.stac_io import DefaultStacIO

    class _StacIO(DefaultStacIO):  # type: ignore[misc]
        def read_text(self, source: Any, *args: Any, **kwargs: Any) -> str:
            href = source if isinstance(source, str) else str(getattr(source, "href", source))
            return read_bytes(href, settings).decode("utf-8")

    return _StacIO()


def save_item_collection(items: Iterable[Any], path: str | os.PathLike[str]) -> Path:
    """Write items as a GeoJSON ItemCollection (absolute hrefs), atomically; returns the path.

    The file can be given wherever an item is accepted (one item) or as a time stack (several);
    each item keeps an absolute ``self`` link so its relative hrefs still resolve.
    """
    from zoomearth.scene.atomic import atomic_path

    features = []
    for item in items:
        item.make_asset_hrefs_absolute()
        data = item.to_dict(include_self_link=True, transform_hrefs=False)
        features.append(data)
    doc = {"type": "FeatureCollection", "features": features}
    out = Path(path).expanduser()
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return out
