"""Remote scenes: rasters named by an ``https://``, ``http://`` or ``s3://`` URL, read in place.

A remote Cloud-Optimized GeoTIFF (internal tiles + overviews) is never downloaded: GDAL's
virtual file systems (``/vsicurl/`` for http(s), ``/vsis3/`` for S3) fetch the header and then
only the byte ranges of the tiles a view needs, so an overview plus one zoom of a 20,000 px COG
moves well under 1 % of the file (``benchmarks/remote.py``). This module is the one place that

* recognises a remote source (:func:`is_remote`) and names it for GDAL (:func:`gdal_path`) and
  for graph state (:func:`source_key`);
* holds the GDAL configuration the project sets for partial reads (:func:`gdal_options`,
  applied with :func:`remote_env` around every open and read of a remote dataset): no directory
  listing on open, only the source's own extension (no sidecar probes), a bounded range cache,
  timeouts, retries with exponential backoff, merged consecutive ranges, and the S3 endpoint and
  addressing from the settings or the standard AWS environment variables;
* reads a remote file's size and identity (ETag, Last-Modified) through GDAL
  (:func:`stat_remote`), downloads one when it must (:func:`download`), and turns GDAL's HTTP
  failures into one-line errors that say what to do (:func:`remote_failure`);
* checks URLs a server client sends against the allow-list ``allowed_url_prefixes``
  (:func:`check_url_allowed`, :func:`preflight`).

A remote raster *without* tiles and overviews would be read whole for any overview: above the
setting ``remote_max_plain_bytes`` it is refused with the conversion to a COG; below, it is
downloaded once into the scene cache (with a warning) and prepared like a local strip TIFF.

Credentials are never handled here: GDAL reads ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/
``AWS_SESSION_TOKEN``/``AWS_REGION``/``AWS_NO_SIGN_REQUEST`` (and ``~/.aws``) itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import email.utils
import hashlib
import os
import posixpath
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urljoin, urlsplit

from zoomearth.errors import SceneNotFoundError, SceneReadError, SceneTooLargeError

if TYPE_CHECKING:
    from zoomearth.config import Settings

__all__ = [
    "RASTER_EXTENSIONS",
    "RemoteAccessError",
    "RemoteConnectionError",
    "RemoteNotCloudOptimizedError",
    "RemoteNotFoundError",
    "RemoteReadError",
    "RemoteRedirectError",
    "RemoteStat",
    "RemoteTimeoutError",
    "RemoteURLNotAllowedError",
    "check_url_allowed",
    "display_name",
    "download",
    "gdal_options",
    "gdal_path",
    "is_remote",
    "normalize_url",
    "preflight",
    "remote_env",
    "remote_failure",
    "source_key",
    "stat_remote",
    "url_allowed",
]

#: Schemes a remote scene may use.
REMOTE_SCHEMES = ("http", "https", "s3")
#: Extensions of rasters GDAL may open remotely; the source's own one becomes
#: ``CPL_VSIL_CURL_ALLOWED_EXTENSIONS`` (so GDAL never probes ``.aux.xml``/``.ovr``/``.msk``
#: sidecars over the network).
RASTER_EXTENSIONS = (".tif", ".tiff", ".gtiff", ".jp2", ".vrt", ".png", ".jpg", ".jpeg", ".webp")
#: Delay before GDAL's first retry; GDAL multiplies it for each further retry (backoff).
RETRY_DELAY_S = 0.5
#: Connect timeout (seconds), capped by ``remote_timeout_s``.
CONNECT_TIMEOUT_S = 10.0
#: GDAL's status codes worth a retry (transient server or rate-limit answers).
RETRY_CODES = "429,500,502,503,504"

NOT_FOUND_TEMPLATE = (
    "No such remote image: {url} ({reason}). Check the URL (and, for s3://, the bucket and key)."
)
ACCESS_TEMPLATE = (
    "Access to {url} was refused ({reason}). For s3:// set AWS_ACCESS_KEY_ID and "
    "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or AWS_NO_SIGN_REQUEST=YES for a public bucket; "
    "for https:// check that the URL is public or that its signature has not expired."
)
TIMEOUT_TEMPLATE = (
    "Reading {url} timed out (no answer within {timeout:g} s, {retries} retries). Check the "
    "network, or raise the setting remote_timeout_s (e.g. ZOOMEARTH_REMOTE_TIMEOUT_S={suggest:g})."
)
CONNECT_TEMPLATE = (
    "Cannot connect to {where} for {url} ({reason}). Check the URL and the network (for an "
    "S3-compatible store, the setting s3_endpoint_url or AWS_ENDPOINT_URL)."
)
HTTP_FAILED_TEMPLATE = (
    "Reading {url} failed ({reason}). Retry later; if it persists, check the URL and the server."
)
NOT_COG_TEMPLATE = (
    "{url} is {size} and {reason}, so every view would read the whole file; remote files like "
    "that are read only up to {limit} (setting remote_max_plain_bytes). Convert it once to a "
    "Cloud-Optimized GeoTIFF and read that instead (rio cogeo create in.tif out.tif, or "
    "gdal_translate -of COG -co BLOCKSIZE=512 in.tif out.tif), or raise the limit "
    "(ZOOMEARTH_REMOTE_MAX_PLAIN_BYTES={suggest}) to download it."
)
DOWNLOAD_WARNING_TEMPLATE = (
    "{url} has no internal tiles or overviews: downloading it once ({size}) into the scene "
    "cache to prepare it. A Cloud-Optimized GeoTIFF would be read in place, a few tiles at a time."
)
NOT_ALLOWED_TEMPLATE = (
    "Image URL {url!r} is not fetched: {reason}. This server reads remote images only under "
    "the URL prefixes of the setting allowed_url_prefixes{listing}."
)
REDIRECT_TEMPLATE = (
    "Image URL {url!r} redirects to another host ({target}); this server does not follow "
    "redirects to other hosts. Use the final URL, under allowed_url_prefixes."
)
BAD_URL_TEMPLATE = (
    "{url!r} is not a usable remote image URL ({reason}); use https://HOST/PATH, "
    "http://HOST/PATH or s3://BUCKET/KEY."
)


class RemoteNotFoundError(SceneNotFoundError):
    """A remote image does not exist (HTTP 404, S3 NoSuchKey/NoSuchBucket)."""

    code = "remote_not_found"


class RemoteReadError(SceneReadError):
    """A remote image could not be read (an HTTP error, a broken connection)."""

    code = "remote_read_failed"


class RemoteAccessError(RemoteReadError):
    """The remote store refused access (HTTP 401/403, S3 AccessDenied, bad credentials)."""

    code = "remote_access_denied"


class RemoteTimeoutError(RemoteReadError):
    """The remote store did not answer in time (after the retries)."""

    code = "remote_timeout"


class RemoteConnectionError(RemoteReadError):
    """No connection could be made to the remote store (refused, unknown host)."""

    code = "remote_connection_failed"


class RemoteRedirectError(RemoteReadError):
    """A URL from a server client redirects to another host (refused)."""

    code = "remote_redirect_refused"


class RemoteURLNotAllowedError(RemoteReadError):
    """A URL from a server client is outside ``allowed_url_prefixes`` (or malformed)."""

    code = "url_not_allowed"


class RemoteNotCloudOptimizedError(SceneTooLargeError):
    """A remote raster without tiles and overviews is larger than ``remote_max_plain_bytes``."""

    code = "remote_not_cloud_optimized"


# ---------------------------------------------------------------------------------------------
# naming
# ---------------------------------------------------------------------------------------------
def _text(source: Any) -> str | None:
    if isinstance(source, str):
        return source.strip()
    return None


def is_remote(source: Any) -> bool:
    """Whether ``source`` names a remote raster.

    True for ``https://``, ``http://`` and ``s3://`` URLs (any letter case of the scheme) and
    for GDAL's own ``/vsicurl/URL`` and ``/vsis3/BUCKET/KEY`` forms; False for local paths
    (``str`` or ``os.PathLike`` -- a ``Path`` can never hold a URL: it collapses ``//``).
    """
    text = _text(source)
    if not text:
        return False
    if text.startswith(("/vsicurl/", "/vsis3/")):
        return True
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.lower() in REMOTE_SCHEMES


def normalize_url(source: str) -> str:
    """The URL of a remote source: GDAL's ``/vsicurl/``/``/vsis3/`` forms become URLs.

    The scheme is lower-cased; everything else is kept as given (a signed URL's query string
    must not change).

    Raises:
        RemoteURLNotAllowedError: Not a remote source, no host/bucket, or a control character.
    """
    text = source.strip()
    if text.startswith("/vsicurl/"):
        text = text[len("/vsicurl/"):]
        # ``str(Path("/vsicurl/https://h/a.tif"))`` lost a slash: a scene's placeholder path
        # (``Scene.path``) still names its URL.
        text = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*):/(?!/)", r"\1://", text)
    elif text.startswith("/vsis3/"):
        text = "s3://" + text[len("/vsis3/"):]
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() not in REMOTE_SCHEMES:
        raise RemoteURLNotAllowedError(
            BAD_URL_TEMPLATE.format(url=source, reason="not an http(s) or s3 URL")
        )
    if any(ord(c) < 0x20 or c in " \x7f" for c in text):
        raise RemoteURLNotAllowedError(
            BAD_URL_TEMPLATE.format(url=source, reason="it holds spaces or control characters")
        )
    url = scheme.lower() + "://" + rest
    parts = urlsplit(url)
    if not parts.hostname:
        raise RemoteURLNotAllowedError(BAD_URL_TEMPLATE.format(url=source, reason="no host"))
    if parts.scheme == "s3" and not parts.path.strip("/"):
        raise RemoteURLNotAllowedError(BAD_URL_TEMPLATE.format(url=source, reason="no key"))
    return url


def gdal_path(source: str) -> str:
    """GDAL's name of a remote source: ``/vsicurl/URL`` or ``/vsis3/BUCKET/KEY``."""
    url = normalize_url(source)
    if url.startswith("s3://"):
        return "/vsis3/" + url[len("s3://"):]
    return "/vsicurl/" + url


def source_key(source: str | os.PathLike[str]) -> str:
    """How graph state names a scene: the URL for a remote one, else the absolute local path."""
    if is_remote(source):
        return normalize_url(str(source))
    return str(Path(source).expanduser().resolve())


def display_name(source: str) -> str:
    """The file name part of a remote source's URL (for messages and output tags)."""
    path = urlsplit(normalize_url(source)).path
    return posixpath.basename(path.rstrip("/")) or "image"


def _extension(url: str) -> str:
    return posixpath.splitext(urlsplit(url).path)[1].lower()


# ---------------------------------------------------------------------------------------------
# GDAL configuration
# ---------------------------------------------------------------------------------------------
def s3_endpoint(settings: Settings | None, environ: dict[str, str] | None = None) -> str | None:
    """The S3-compatible endpoint URL, or None for AWS itself.

    The setting ``s3_endpoint_url``, else ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL`` or GDAL's
    ``AWS_S3_ENDPOINT`` from the environment.
    """
    env = os.environ if environ is None else environ
    value = getattr(settings, "s3_endpoint_url", None) if settings is not None else None
    for candidate in (value, env.get("AWS_ENDPOINT_URL_S3"), env.get("AWS_ENDPOINT_URL"),
                      env.get("AWS_S3_ENDPOINT")):
        if candidate and str(candidate).strip():
            return str(candidate).strip()
    return None


def gdal_options(settings: Settings | None, source: str | None = None) -> dict[str, str]:
    """GDAL configuration options for reading ``source`` (or any remote source) partially.

    Returns:
        Option name -> value, for :class:`rasterio.Env`. Values from the settings
        ``remote_timeout_s``, ``remote_max_retries``, ``remote_cache_mb`` and
        ``s3_endpoint_url``.
    """
    timeout = float(getattr(settings, "remote_timeout_s", 30.0))
    retries = int(getattr(settings, "remote_max_retries", 3))
    cache_mb = int(getattr(settings, "remote_cache_mb", 64))
    opts: dict[str, str] = {
        # Never list the remote "directory" (one request per sidecar guess, or a whole S3 prefix).
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        # One shared, bounded cache of fetched ranges; no second per-handle VSI cache on top.
        "CPL_VSIL_CURL_CACHE_SIZE": str(cache_mb * 1024 * 1024),
        "VSI_CACHE": "FALSE",
        "GDAL_HTTP_TIMEOUT": f"{max(1, round(timeout))}",
        "GDAL_HTTP_CONNECTTIMEOUT": f"{max(1, round(min(timeout, CONNECT_TIMEOUT_S)))}",
        "GDAL_HTTP_MAX_RETRY": str(retries),
        # GDAL multiplies the delay for each further retry: exponential backoff.
        "GDAL_HTTP_RETRY_DELAY": f"{RETRY_DELAY_S:g}",
        "GDAL_HTTP_RETRY_CODES": RETRY_CODES,
        # Adjacent tiles in one request; several ranges of one read in parallel requests (not
        # one multi-range GET: S3 does not support those).
        "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
        "GDAL_HTTP_MULTIRANGE": "PARALLEL",
        "GDAL_HTTP_USERAGENT": "zoomearth (GDAL /vsicurl/)",
    }
    if source is not None:
        ext = _extension(normalize_url(source))
        if ext in RASTER_EXTENSIONS:
            # Only the source's own extension: GDAL then never asks the server for sidecars.
            opts["CPL_VSIL_CURL_ALLOWED_EXTENSIONS"] = ",".join(sorted({ext, ext.upper()}))
    endpoint = s3_endpoint(settings)
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else "https://" + endpoint)
        opts["AWS_S3_ENDPOINT"] = parts.netloc + parts.path.rstrip("/")
        opts["AWS_HTTPS"] = "NO" if parts.scheme == "http" else "YES"
        # S3-compatible stores (MinIO, moto, Ceph) answer path-style requests.
        opts["AWS_VIRTUAL_HOSTING"] = os.environ.get("AWS_VIRTUAL_HOSTING", "FALSE")
    return opts


@contextlib.contextmanager
def remote_env(settings: Settings | None, source: str | None = None) -> Iterator[None]:
    """``rasterio.Env`` with :func:`gdal_options` for the duration of a block."""
    import rasterio

    with rasterio.Env(**gdal_options(settings, source)):
        yield


# ---------------------------------------------------------------------------------------------
# GDAL's virtual file API (size, headers, download), through the GDAL library rasterio loaded
# ---------------------------------------------------------------------------------------------
_VSI_LOCK = threading.Lock()
_VSI: Any = None


def _find_libgdal() -> str | None:
    """The path of the GDAL library this process uses (the one rasterio loaded)."""
    import rasterio  # noqa: F401 - loads libgdal

    with contextlib.suppress(OSError):
        with open("/proc/self/maps") as fh:
            for line in fh:
                if "libgdal" in line and "/" in line:
                    return line.split(None, 5)[-1].strip()
    base = Path(rasterio.__file__).resolve().parent
    for folder in (base.parent / "rasterio.libs", base / ".dylibs"):
        for lib in sorted(folder.glob("libgdal*")) if folder.is_dir() else []:
            return str(lib)
    return ctypes.util.find_library("gdal")


def _vsi() -> Any:
    """Bindings of the few GDAL VSI functions rasterio does not expose (None when absent)."""
    global _VSI
    with _VSI_LOCK:
        if _VSI is None:
            _VSI = False
            path = _find_libgdal()
            if path:
                try:
                    lib = ctypes.CDLL(path)
                    vp, cp = ctypes.c_void_p, ctypes.c_char_p
                    lib.VSIFOpenExL.restype = vp
                    lib.VSIFOpenExL.argtypes = [cp, cp, ctypes.c_int]
                    lib.VSIFSeekL.restype = ctypes.c_int
                    lib.VSIFSeekL.argtypes = [vp, ctypes.c_uint64, ctypes.c_int]
                    lib.VSIFTellL.restype = ctypes.c_uint64
                    lib.VSIFTellL.argtypes = [vp]
                    lib.VSIFReadL.restype = ctypes.c_size_t
                    lib.VSIFReadL.argtypes = [vp, ctypes.c_size_t, ctypes.c_size_t, vp]
                    lib.VSIFCloseL.restype = ctypes.c_int
                    lib.VSIFCloseL.argtypes = [vp]
                    lib.VSIGetFileMetadata.restype = ctypes.POINTER(cp)
                    lib.VSIGetFileMetadata.argtypes = [cp, cp, vp]
                    lib.CSLDestroy.restype = None
                    lib.CSLDestroy.argtypes = [ctypes.POINTER(cp)]
                    lib.VSICurlPartialClearCache.restype = None
                    lib.VSICurlPartialClearCache.argtypes = [cp]
                    lib.VSICurlClearCache.restype = None
                    lib.VSICurlClearCache.argtypes = []
                    _VSI = lib
                except (OSError, AttributeError):
                    _VSI = False
        return _VSI or None


_AWS_SEEN: tuple[tuple[str, str], ...] | None = None


def _aws_configuration(settings: Settings | None) -> tuple[tuple[str, str], ...]:
    names = sorted(k for k in os.environ if k.startswith(("AWS_", "CPL_AWS_")))
    return (*((k, os.environ[k]) for k in names), ("endpoint", s3_endpoint(settings) or ""))


def clear_cache(source: str, settings: Settings | None = None) -> None:
    """Forget what GDAL cached about ``source`` (size, existence, fetched ranges).

    A fresh :class:`~zoomearth.scene.Scene` then sees the file as it is now (replaced, deleted).
    When the AWS configuration (environment variables, endpoint) changed since the last call,
    everything is forgotten: GDAL keeps the S3 credentials it found for the whole process.
    """
    global _AWS_SEEN
    lib = _vsi()
    if lib is None:
        return
    if normalize_url(source).startswith("s3://"):
        seen = _aws_configuration(settings)
        with _VSI_LOCK:
            changed, _AWS_SEEN = _AWS_SEEN is not None and seen != _AWS_SEEN, seen
        if changed:
            lib.VSICurlClearCache()
            return
    lib.VSICurlPartialClearCache(gdal_path(source).encode())


@dataclass(frozen=True)
class RemoteStat:
    """Size and identity of a remote file.

    Attributes:
        size: Bytes (0 when GDAL could not tell).
        etag: The ``ETag`` header (quotes kept), or None.
        last_modified: The ``Last-Modified`` header, or None.
        mtime_ns: ``Last-Modified`` in ns since the epoch (0 when absent).
    """

    size: int
    etag: str | None
    last_modified: str | None
    mtime_ns: int

    def identity(self, url: str) -> str:
        """A stable identity: URL, size, ETag and Last-Modified (a replaced file changes it)."""
        return f"{url}|{self.size}|{self.etag or ''}|{self.last_modified or ''}"


def stat_remote(source: str, *, headers: bool = True) -> RemoteStat:
    """Size, ETag and Last-Modified of a remote file, from GDAL (call inside :func:`remote_env`).

    The size is what GDAL learnt when it opened the file (no request); the headers (``ETag``,
    ``Last-Modified``) cost one ``HEAD`` request, so ``headers=False`` leaves them out. Without
    the GDAL library's VSI functions, returns zeros.
    """
    lib = _vsi()
    if lib is None:
        return RemoteStat(0, None, None, 0)
    path = gdal_path(source).encode()
    size = 0
    fp = lib.VSIFOpenExL(path, b"rb", 0)
    if fp:
        try:
            if lib.VSIFSeekL(fp, 0, 2) == 0:
                size = int(lib.VSIFTellL(fp))
        finally:
            lib.VSIFCloseL(fp)
    answer: dict[str, str] = {}
    md = lib.VSIGetFileMetadata(path, b"HEADERS", None) if headers else None
    if md:
        try:
            i = 0
            while md[i] is not None:
                key, _, value = md[i].decode("utf-8", "replace").partition("=")
                answer[key.strip().lower()] = value.strip()
                i += 1
        finally:
            lib.CSLDestroy(md)
    if not size and answer.get("content-length", "").isdigit():
        size = int(answer["content-length"])
    last = answer.get("last-modified")
    mtime_ns = 0
    if last:
        with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
            mtime_ns = int(email.utils.parsedate_to_datetime(last).timestamp() * 1e9)
    return RemoteStat(size, answer.get("etag"), last, mtime_ns)


def download(source: str, dest: Path, settings: Settings | None, *, chunk: int = 1 << 22) -> Path:
    """Copy a remote file to ``dest`` (a temporary the caller renames), through GDAL.

    Uses the same credentials, endpoint, timeouts and retries as the reads.

    Raises:
        RemoteReadError (or a subclass): The file could not be read whole.
    """
    lib = _vsi()
    if lib is None:
        raise RemoteReadError(HTTP_FAILED_TEMPLATE.format(
            url=source, reason="GDAL's file API is not available to download it"))
    started = time.monotonic()
    from zoomearth.scene.gdal import capture_gdal_messages

    with remote_env(settings, source), capture_gdal_messages() as messages:
        fp = lib.VSIFOpenExL(gdal_path(source).encode(), b"rb", 1)
        if not fp:
            raise remote_failure(source, None, messages, settings=settings,
                                 elapsed=time.monotonic() - started) or RemoteReadError(
                HTTP_FAILED_TEMPLATE.format(url=source, reason="it could not be opened"))
        buf = ctypes.create_string_buffer(chunk)
        try:
            with open(dest, "wb") as out:
                while True:
                    n = lib.VSIFReadL(buf, 1, chunk, fp)
                    if n:
                        out.write(buf.raw[:n])
                    if n < chunk:
                        break
        finally:
            lib.VSIFCloseL(fp)
        expected = stat_remote(source, headers=False).size
    got = dest.stat().st_size
    if expected and got != expected:
        raise remote_failure(source, None, messages, settings=settings,
                             elapsed=time.monotonic() - started) or RemoteReadError(
            HTTP_FAILED_TEMPLATE.format(
                url=source, reason=f"only {got:,} of {expected:,} bytes arrived"))
    return dest


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------
_HTTP_CODE_RE = re.compile(r"HTTP (?:response|error) code:?\s*(\d{1,3})", re.IGNORECASE)
_S3_NOT_FOUND = ("NoSuchKey", "NoSuchBucket", "specified key does not exist",
                 "specified bucket does not exist")
_S3_DENIED = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
              "InvalidToken", "Forbidden")
_TIMEOUT_WORDS = ("timed out", "timeout was reached", "operation too slow")
_READ_FAILED_WORDS = ("read failed", "got 0 bytes", "ireadblock failed", "read error",
                      "can not read", "cannot read", "failed to read")
_CONNECT_WORDS = ("could not connect", "couldn't connect", "failed to connect",
                  "could not resolve", "couldn't resolve", "connection refused",
                  "empty reply", "recv failure", "connection reset")


def remote_failure(
    source: str,
    exc: BaseException | None,
    messages: list[str],
    *,
    settings: Settings | None,
    elapsed: float,
) -> SceneNotFoundError | RemoteReadError | None:
    """The one-line error for a failed open/read of a remote source, or None if not HTTP.

    Args:
        source: The URL.
        exc: The exception GDAL/rasterio raised (None for a failed VSI call).
        messages: GDAL's messages logged meanwhile (:func:`~zoomearth.scene.gdal.
            capture_gdal_messages`): retries and HTTP codes are only there.
        settings: For the timeout and retries named in the message.
        elapsed: Seconds the failed operation took (tells a timeout from a refused connection
            when GDAL only says "HTTP error code: 0").
    """
    url = normalize_url(source)
    texts: list[str] = []
    while exc is not None and len(texts) < 6:
        texts.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    texts += messages
    blob = " | ".join(t.replace("\n", " ") for t in texts)
    low = blob.lower()
    codes = [int(c) for c in _HTTP_CODE_RE.findall(blob)]
    real = [c for c in codes if c >= 300]
    code = real[-1] if real else (0 if codes else None)
    timeout = float(getattr(settings, "remote_timeout_s", 30.0))
    retries = int(getattr(settings, "remote_max_retries", 3))
    if code == 404 or any(w in blob for w in _S3_NOT_FOUND):
        return RemoteNotFoundError(NOT_FOUND_TEMPLATE.format(
            url=url, reason=f"HTTP {code}" if code else "the store says it does not exist"))
    if code in (401, 403) or any(w in blob for w in _S3_DENIED):
        word = next((w for w in _S3_DENIED if w in blob), None)
        return RemoteAccessError(ACCESS_TEMPLATE.format(
            url=url, reason=f"HTTP {code}" + (f", {word}" if word else "") if code else word))
    # GDAL names a timeout as "HTTP error code: 0" before a retry, and without retries not at
    # all: a failed read that lasted the timeout is one.
    timed_out = any(w in low for w in _TIMEOUT_WORDS) or (
        code in (0, None)
        and elapsed >= 0.9 * timeout
        and not any(w in low for w in _CONNECT_WORDS)
        and (code == 0 or any(w in low for w in _READ_FAILED_WORDS))
    )
    if timed_out:
        return RemoteTimeoutError(TIMEOUT_TEMPLATE.format(
            url=url, timeout=timeout, retries=retries, suggest=max(60.0, timeout * 2)))
    if code == 0 or any(w in low for w in _CONNECT_WORDS):
        parts = urlsplit(url)
        where = parts.netloc if parts.scheme != "s3" else (
            s3_endpoint(settings) or "the S3 endpoint")
        reason = next((t for t in texts if any(w in t.lower() for w in _CONNECT_WORDS)), None)
        reason = (reason or "no connection").split("CURL error:")[-1].strip()[:160]
        return RemoteConnectionError(CONNECT_TEMPLATE.format(where=where, url=url, reason=reason))
    if code is not None and code >= 400:
        return RemoteReadError(HTTP_FAILED_TEMPLATE.format(url=url, reason=f"HTTP {code}"))
    return None


def not_cloud_optimized(source: str, size: int, reason: str, limit: int) -> (
        RemoteNotCloudOptimizedError):
    """The refusal of a remote raster without tiles/overviews above ``remote_max_plain_bytes``."""
    return RemoteNotCloudOptimizedError(NOT_COG_TEMPLATE.format(
        url=normalize_url(source), size=_mb(size) if size else "of a size its server withholds",
        reason=reason, limit=_mb(limit), suggest=1 << max(20, (size - 1).bit_length())))


def download_warning(source: str, size: int) -> str:
    """The warning issued when a plain (non-COG) remote raster is downloaded to be prepared."""
    return DOWNLOAD_WARNING_TEMPLATE.format(url=normalize_url(source), size=_mb(size))


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 100_000 else f"{n:,} bytes"


def cache_key(identity: str) -> str:
    """Scene-cache key of a remote file's identity (see :meth:`RemoteStat.identity`)."""
    return hashlib.sha256(("remote|" + identity).encode()).hexdigest()[:24]


# ---------------------------------------------------------------------------------------------
# the server's allow-list
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Origin:
    scheme: str
    host: str
    port: int | None
    path: str


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _parse(url: str, *, what: str) -> _Origin:
    """Scheme, host, port and path of a URL, refusing the forms that hide another host."""
    text = url
    if any(ord(c) < 0x21 or c in "\\\x7f" for c in text):
        raise ValueError(f"{what} holds spaces, control characters or backslashes")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in REMOTE_SCHEMES:
        raise ValueError(f"{what} uses the scheme {parts.scheme or 'none'!r}; only http, https "
                         "and s3 are read")
    if "@" in parts.netloc:
        raise ValueError(f"{what} names a user (user@host), which can hide the real host")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise ValueError(f"{what} has an invalid port") from None
    if not host:
        raise ValueError(f"{what} has no host")
    host = host.rstrip(".").lower()
    if scheme == "s3":
        port = None
    elif port is None:
        port = _DEFAULT_PORTS[scheme]
    raw_path = parts.path or "/"
    decoded = unquote(raw_path)
    if "%2f" in raw_path.lower() or "%5c" in raw_path.lower():
        raise ValueError(f"{what} has an encoded slash in its path")
    if any(seg in (".", "..") for seg in decoded.split("/")):
        raise ValueError(f"{what} has '.' or '..' path segments")
    return _Origin(scheme, host, port, decoded)


def url_allowed(url: str, prefixes: list[str]) -> bool:
    """Whether ``url`` lies under one of ``prefixes`` (scheme, host, port and path prefix).

    A prefix's path matches whole segments: ``https://h/data`` allows ``https://h/data/x.tif``
    and ``https://h/data`` but not ``https://h/database.tif``. Malformed URLs are not allowed.
    """
    try:
        target = _parse(url, what="the URL")
    except ValueError:
        return False
    for prefix in prefixes:
        try:
            p = _parse(prefix.strip(), what="the prefix")
        except ValueError:
            continue
        if (p.scheme, p.host, p.port) != (target.scheme, target.host, target.port):
            continue
        base = p.path
        if base.endswith("/"):
            if target.path.startswith(base):
                return True
        elif target.path == base or target.path.startswith(base + "/"):
            return True
    return False


def check_url_allowed(url: str, prefixes: list[str]) -> str:
    """The normalized URL when it is under ``prefixes``; otherwise raise.

    Raises:
        RemoteURLNotAllowedError: Empty allow-list, another scheme, a user@host form, dot
            segments, or a URL under no prefix; the message names the setting.
    """
    shown = url[:200]
    listing = f" ({', '.join(prefixes[:5])})" if prefixes else ", which is empty (off)"
    if not prefixes:
        raise RemoteURLNotAllowedError(NOT_ALLOWED_TEMPLATE.format(
            url=shown, reason="remote URLs are off", listing=listing))
    try:
        _parse(url, what="the URL")
    except ValueError as exc:
        raise RemoteURLNotAllowedError(NOT_ALLOWED_TEMPLATE.format(
            url=shown, reason=str(exc), listing=listing)) from None
    if not url_allowed(url, prefixes):
        raise RemoteURLNotAllowedError(NOT_ALLOWED_TEMPLATE.format(
            url=shown, reason="it is under none of them", listing=listing))
    return normalize_url(url)


def preflight(url: str, settings: Settings | None, prefixes: list[str] | None = None,
              *, max_hops: int = 5) -> str:
    """Check an http(s) URL before GDAL reads it: it answers, and any redirect stays put.

    Asks with ``HEAD`` (``GET`` of byte 0 where a server refuses ``HEAD``), following no
    redirect itself: a redirect to another scheme, host or port is refused, and one on the same
    host must stay under ``prefixes`` (when given). ``s3://`` URLs need no check (GDAL talks to
    the configured endpoint only).

    Returns:
        The URL GDAL should read (the last same-host redirect target, or ``url``).

    Raises:
        RemoteRedirectError, RemoteURLNotAllowedError, RemoteNotFoundError, RemoteAccessError,
        RemoteTimeoutError, RemoteConnectionError, RemoteReadError.
    """
    import httpx

    current = normalize_url(url)
    if current.startswith("s3://"):
        return current
    timeout = float(getattr(settings, "remote_timeout_s", 30.0))
    origin = _parse(current, what="the URL")
    with httpx.Client(follow_redirects=False, timeout=timeout,
                      headers={"User-Agent": "zoomearth (preflight)"}) as client:
        for _ in range(max_hops + 1):
            try:
                resp = client.head(current)
                if resp.status_code in (403, 405, 501):
                    # Some stores (pre-signed GET URLs) refuse HEAD: ask for one byte instead.
                    with client.stream("GET", current, headers={"Range": "bytes=0-0"}) as r:
                        resp = r
            except httpx.TimeoutException:
                raise RemoteTimeoutError(TIMEOUT_TEMPLATE.format(
                    url=current, timeout=timeout, retries=0, suggest=max(60.0, timeout * 2))
                ) from None
            except httpx.HTTPError as exc:
                raise RemoteConnectionError(CONNECT_TEMPLATE.format(
                    where=urlsplit(current).netloc, url=current, reason=str(exc)[:160])) from None
            if resp.is_redirect:
                target = urljoin(current, resp.headers.get("location", ""))
                try:
                    t = _parse(target, what="the redirect target")
                except ValueError as exc:
                    raise RemoteRedirectError(REDIRECT_TEMPLATE.format(
                        url=url[:200], target=f"{target[:200]}: {exc}")) from None
                if (t.scheme, t.host, t.port) != (origin.scheme, origin.host, origin.port):
                    raise RemoteRedirectError(REDIRECT_TEMPLATE.format(
                        url=url[:200], target=f"{t.scheme}://{t.host}:{t.port}"))
                if prefixes is not None:
                    check_url_allowed(target, prefixes)
                current = target
                continue
            if resp.status_code >= 400:
                failure = remote_failure(current, None, [f"HTTP response code: {resp.status_code}"],
                                         settings=settings, elapsed=0.0)
                assert failure is not None
                raise failure
            return current
    raise RemoteRedirectError(REDIRECT_TEMPLATE.format(url=url[:200], target="too many redirects"))
