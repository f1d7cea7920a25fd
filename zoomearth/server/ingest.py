"""Ingest: images from chat messages become files, and the graph only ever sees their paths.

An ``image_url`` part (or a LangChain-style ``image`` part, as LangGraph Studio and Agent Chat UI
send) may name its image as

* a ``data:`` URL (base64): decoded (size-limited by ``max_upload_bytes``), written once into the
  conversation's run directory ``RUNS_DIR/<conversation>/inputs/<sha256>.<ext>`` (content-addressed,
  so a resent image is stored once), then checked by opening it as a
  :class:`~zoomearth.scene.Scene`;
* this server's own file-content URL ``.../v1/files/<id>/content`` (an upload, see
  :class:`FileStore`): used in place;
* a ``file://`` URL: allowed only inside the setting ``allowed_roots`` (no ``..``, no symlink
  escape; the same check as tool path arguments), used in place;
* an ``https://``, ``http://`` or ``s3://`` URL: only under the setting ``allowed_url_prefixes``
  (off when empty, the default), matched on scheme, host, port and whole path segments
  (:func:`zoomearth.scene.remote.check_url_allowed`; ``user@host`` forms, ``..`` segments and
  other schemes are refused); an http(s) URL is asked once before GDAL reads it, and a redirect
  to another host is refused (:func:`zoomearth.scene.remote.preflight`). The scene is then read
  in place (a COG a few tiles at a time), never stored here.

Other remote URLs are not fetched. GeoTIFFs are stored byte for byte, so they keep their
georeference. Nothing here puts pixels or base64 text into graph state.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from zoomearth.server.errors import ApiError

if TYPE_CHECKING:
    from zoomearth.config import Settings

__all__ = [
    "Conversation",
    "FileStore",
    "ImageRef",
    "Ingestor",
    "parse_conversation",
    "sniff_extension",
]

NOT_BASE64_TEMPLATE = (
    "Image data URL is not base64 ({head!r}...); send 'data:image/png;base64,<data>'."
)
BAD_BASE64_TEMPLATE = "Image data URL holds invalid base64 data ({reason})."
TOO_LARGE_TEMPLATE = (
    "Image is {size:,} bytes; this server accepts images up to {limit:,} bytes "
    "(setting max_upload_bytes). Send a smaller image or use a file:// path under allowed_roots."
)
TOO_MANY_PIXELS_TEMPLATE = (
    "Image is {width} x {height} = {pixels:,} pixels; this server accepts uploaded images up to "
    "{limit:,} pixels (setting max_upload_pixels). Use a file:// path under allowed_roots for "
    "larger rasters."
)
UNKNOWN_FORMAT_TEMPLATE = (
    "Image {what} is not a supported image format (TIFF/GeoTIFF, PNG, JPEG, JPEG 2000, WebP, "
    "BMP, GIF); check the file."
)
CORRUPT_TEMPLATE = "Image {what} could not be read as a raster: {reason}"
REMOTE_URL_TEMPLATE = (
    "Image URL {url!r} is not fetched: this server reads only data: URLs, its own file URLs "
    "(upload with POST /v1/files) and file:// paths under allowed_roots (and https:// or s3:// "
    "URLs under the setting allowed_url_prefixes, which is empty)."
)
UNKNOWN_FILE_TEMPLATE = (
    "File {file_id!r} does not exist on this server; upload it with POST /v1/files."
)
FILE_URL_TEMPLATE = "{reason}"
BAD_PART_TEMPLATE = "Message {index}: content part of type {kind!r} is not supported."

#: Magic bytes -> file extension of the formats GDAL reads that chat clients send.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"II*\x00", "tif"),
    (b"MM\x00*", "tif"),
    (b"II+\x00", "tif"),  # BigTIFF
    (b"MM\x00+", "tif"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpg"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "jp2"),
    (b"\xffO\xffQ", "j2k"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
)
_FILE_ID_RE = re.compile(r"^file-[0-9a-f]{24}$")
_OWN_FILE_PATH_RE = re.compile(r"(?:^|/)v1/files/(file-[0-9a-f]{24})/content$")


def sniff_extension(head: bytes) -> str | None:
    """The file extension for an image's first bytes, or None for an unknown format."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    for magic, ext in _MAGIC:
        if head.startswith(magic):
            return ext
    return None


@dataclass(frozen=True)
class ImageRef:
    """An ingested image: a file on disk and a stable identity.

    Attributes:
        path: Absolute path of the raster the scene opens. For a remote image (origin ``url``)
            a placeholder that never exists on disk (GDAL's virtual path; a Path cannot hold
            a URL): use :attr:`source`.
        identity: sha256 hex of the bytes (data URLs, uploads), of path, size and mtime
            (``file://`` paths, which may be too big to hash on every request), or of the URL.
        origin: ``data``, ``upload``, ``file`` or ``url``.
        url: The URL of a remote image (origin ``url``), else None.
    """

    path: Path
    identity: str
    origin: str
    url: str | None = None

    @property
    def source(self) -> str:
        """What to open (and record in graph state): the URL, or the path as a string."""
        return self.url if self.url is not None else str(self.path)


# ---------------------------------------------------------------------------------------------
# Conversation parsing
# ---------------------------------------------------------------------------------------------
@dataclass
class Conversation:
    """What the server needs from an OpenAI ``messages`` list.

    Attributes:
        first_user_text: Text of the first user message (conversation id derivation).
        last_user_text: Text of the latest user message (the question, or approve/deny).
        images: Image URLs of user messages in order (``data:``, own file URL, ``file://``).
        image_groups: The same URLs grouped by user message (messages without images left
            out): several images in one message are the dates of a time stack, the first one
            the reference grid.
        last_is_user: Whether the list ends with a user message.
    """

    first_user_text: str = ""
    last_user_text: str = ""
    images: list[str] = field(default_factory=list)
    image_groups: list[list[str]] = field(default_factory=list)
    last_is_user: bool = False


def _part_image_url(part: dict[str, Any]) -> str | None:
    kind = part.get("type")
    if kind == "image_url":
        ref = part.get("image_url")
        url = ref.get("url") if isinstance(ref, dict) else ref
        return url if isinstance(url, str) else None
    if kind == "image":  # LangChain / Agent Chat UI content blocks
        if isinstance(part.get("url"), str):
            return str(part["url"])
        data = part.get("data") or part.get("base64")
        if isinstance(data, str):
            mime = part.get("mime_type") or part.get("mimeType") or "application/octet-stream"
            return f"data:{mime};base64,{data}"
    return None


def parse_conversation(messages: Iterable[Any]) -> Conversation:
    """Collect user texts and image URLs from OpenAI-style (or LangChain-style) messages.

    Args:
        messages: ``[{"role": "user"|"assistant"|"system"|..., "content": str | [parts]}]``;
            LangChain's ``{"type": "human", ...}`` is accepted as a user message.

    Raises:
        ApiError: 400 for a malformed message or an unsupported content part.
    """
    conv = Conversation()
    user_seen = False
    for index, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise ApiError(400, f"Message {index} must be an object.", param="messages")
        role = msg.get("role") or {"human": "user", "ai": "assistant"}.get(str(msg.get("type")))
        content = msg.get("content")
        is_user = role == "user"
        conv.last_is_user = is_user
        if not is_user:
            continue
        texts: list[str] = []
        group: list[str] = []
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    raise ApiError(400, f"Message {index}: content parts must be objects.",
                                   param="messages")
                if part.get("type") == "text":
                    texts.append(str(part.get("text", "")))
                    continue
                url = _part_image_url(part)
                if url is None:
                    raise ApiError(400, BAD_PART_TEMPLATE.format(index=index,
                                                                 kind=part.get("type")),
                                   param="messages")
                conv.images.append(url)
                group.append(url)
        elif content is not None:
            raise ApiError(400, f"Message {index}: content must be a string or a list of parts.",
                           param="messages")
        if group:
            conv.image_groups.append(group)
        text = "\n".join(t for t in texts if t).strip()
        if not user_seen:
            conv.first_user_text = text
            user_seen = True
        conv.last_user_text = text
    return conv


# ---------------------------------------------------------------------------------------------
# Uploads
# ---------------------------------------------------------------------------------------------
class FileStore:
    """Uploaded images, content-addressed: ``DATA_DIR/server/files/<id>/image.<ext>``.

    The id is ``file-`` plus the first 24 hex digits of the content's sha256, so uploading the
    same bytes twice gives the same id. ``meta.json`` beside the file holds the OpenAI file record.

    Args:
        root: Directory of the store (created when missing).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def meta(self, file_id: str) -> dict[str, Any]:
        """The record of an upload.

        Raises:
            ApiError: 404 for an unknown or malformed id.
        """
        if not _FILE_ID_RE.match(file_id):
            raise ApiError(404, UNKNOWN_FILE_TEMPLATE.format(file_id=file_id), code="unknown_file",
                           type="not_found_error")
        try:
            data = json.loads((self.root / file_id / "meta.json").read_text())
        except (OSError, ValueError):
            raise ApiError(404, UNKNOWN_FILE_TEMPLATE.format(file_id=file_id),
                           code="unknown_file", type="not_found_error") from None
        return dict(data)

    def path_of(self, file_id: str) -> Path:
        """The stored file of an upload (raises 404 like :meth:`meta`)."""
        meta = self.meta(file_id)
        return self.root / file_id / meta["stored_name"]

    def add(self, tmp: Path, filename: str, purpose: str, info: dict[str, Any]) -> dict[str, Any]:
        """Move a validated temporary file into the store and return its record.

        Args:
            tmp: The uploaded bytes (moved, or deleted when the content is already stored).
            filename: The client's file name (kept for the record only).
            purpose: The OpenAI ``purpose`` field.
            info: ``{"ext", "sha256", "bytes", "width", "height", "georeferenced"}``.
        """
        file_id = "file-" + info["sha256"][:24]
        folder = self.root / file_id
        meta_path = folder / "meta.json"
        if meta_path.exists():
            tmp.unlink(missing_ok=True)
            return self.meta(file_id)
        stored = f"image.{info['ext']}"
        folder.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, folder / stored)
        except OSError:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: no folder without its file is left
            raise
        meta = {
            "id": file_id,
            "object": "file",
            "bytes": info["bytes"],
            "created_at": int(time.time()),
            "filename": Path(filename or stored).name[:200],
            "purpose": purpose,
            "status": "processed",
            "stored_name": stored,
            "sha256": info["sha256"],
            "width": info.get("width"),
            "height": info.get("height"),
            "georeferenced": info.get("georeferenced"),
        }
        from zoomearth.temporaries import temporary_sibling

        part = temporary_sibling(meta_path)
        try:
            part.write_text(json.dumps(meta))
            os.replace(part, meta_path)
        finally:
            part.unlink(missing_ok=True)
        return meta


# ---------------------------------------------------------------------------------------------
# Ingest
# ---------------------------------------------------------------------------------------------
class Ingestor:
    """Turns image URLs into :class:`ImageRef` files, enforcing the server's limits.

    Args:
        settings: Effective settings (``max_upload_bytes``, ``max_upload_pixels``,
            ``allowed_roots``, ``runs_dir``).
        store: The upload store.
    """

    def __init__(self, settings: Settings, store: FileStore) -> None:
        self.settings = settings
        self.store = store
        self._decoded: dict[str, tuple[bytes, str]] = {}  # one request's data URLs, by URL id

    # -- validation ----------------------------------------------------------------------------
    def check_size(self, size: int) -> None:
        """Refuse more than ``max_upload_bytes`` (413)."""
        limit = self.settings.max_upload_bytes
        if size > limit:
            raise ApiError(413, TOO_LARGE_TEMPLATE.format(size=size, limit=limit),
                           code="upload_too_large", type="invalid_request_error")

    def validate(
        self, path: Path | str, what: str, *, pixel_limit: bool = True
    ) -> dict[str, Any]:
        """Open ``path`` (a file, or a checked remote URL) as a scene (header only) and check it.

        Returns:
            ``{"width", "height", "georeferenced"}``.

        Raises:
            ApiError: 400 for an unreadable raster, 413 for too many pixels.
        """
        from zoomearth.errors import SceneError, ScenePrepareBudgetError, SceneTooLargeError
        from zoomearth.scene import Scene
        from zoomearth.scene.remote import (
            RemoteNotCloudOptimizedError,
            RemoteNotFoundError,
            RemoteReadError,
        )

        try:
            scene = Scene.open(path, settings=self.settings)
        except (RemoteNotFoundError, RemoteReadError) as exc:
            raise ApiError(_remote_status(exc), str(exc), code=exc.code,
                           param="messages") from None
        except ScenePrepareBudgetError as exc:
            raise ApiError(413, _hide_path(str(exc), path, f"Image {what}"),
                           code="prepare_budget_exceeded") from None
        except SceneTooLargeError as exc:
            # The scene names its file: hide the server-side (temporary) name.
            raise ApiError(413, _hide_path(str(exc), path, f"Image {what}"),
                           code="image_too_large") from None
        except (SceneError, OSError, ValueError) as exc:
            raise ApiError(400, CORRUPT_TEMPLATE.format(what=what, reason=_short(exc, path)),
                           code="corrupt_image") from None
        try:
            width, height = scene.width, scene.height
            limit = self.settings.max_upload_pixels
            if pixel_limit and width * height > limit:
                raise ApiError(413, TOO_MANY_PIXELS_TEMPLATE.format(
                    width=width, height=height, pixels=width * height, limit=limit),
                    code="image_too_large")
            try:
                # Header only: a raster that would need a prepared copy above the work budget
                # (max_prepare_pixels) is refused before any run starts (a small sparse TIFF
                # can declare 1.6e9 pixels: minutes of CPU to prepare). A remote file without
                # tiles and overviews above remote_max_plain_bytes is refused here too.
                scene.check_prepare_budget()
            except RemoteNotCloudOptimizedError as exc:
                raise ApiError(413, str(exc), code=exc.code) from None
            except ScenePrepareBudgetError as exc:
                raise ApiError(413, _hide_path(str(exc), path, f"Image {what}"),
                               code="prepare_budget_exceeded") from None
            if max(width, height) <= self.settings.prepare_min_side:
                # Small images: decode a thumbnail now, so a corrupt body fails here, clearly.
                try:
                    scene.read(scene.full_box, out_size=(min(width, 32), min(height, 32)))
                    if isinstance(path, Path) and path.suffix.lower() in _PIL_CHECKED:
                        _pil_decode(path)  # GDAL reads a cut-off PNG/JPEG without an error
                except ScenePrepareBudgetError as exc:
                    raise ApiError(413, _hide_path(str(exc), path, f"Image {what}"),
                                   code="prepare_budget_exceeded") from None
                except (RemoteNotFoundError, RemoteReadError) as exc:
                    raise ApiError(_remote_status(exc), str(exc), code=exc.code,
                                   param="messages") from None
                except (SceneError, OSError, ValueError) as exc:
                    raise ApiError(400, CORRUPT_TEMPLATE.format(what=what,
                                                                reason=_short(exc, path)),
                                   code="corrupt_image") from None
            return {"width": width, "height": height, "georeferenced": bool(scene.georeferenced)}
        finally:
            scene.close()

    # -- sources -------------------------------------------------------------------------------
    def _decode(self, url: str) -> tuple[bytes, str]:
        cached = self._decoded.get(url)
        if cached is not None:
            return cached
        header, sep, payload = url.partition(",")
        if not sep or not header.endswith(";base64"):
            raise ApiError(400, NOT_BASE64_TEMPLATE.format(head=url[:40]), code="bad_data_url",
                           param="messages")
        self.check_size(len(payload) * 3 // 4 - 2)
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ApiError(400, BAD_BASE64_TEMPLATE.format(reason=exc), code="bad_data_url",
                           param="messages") from None
        self.check_size(len(data))
        digest = hashlib.sha256(data).hexdigest()
        self._decoded[url] = (data, digest)
        return data, digest

    def _own_file_id(self, url: str) -> str | None:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https", ""):
            return None
        match = _OWN_FILE_PATH_RE.search(parsed.path)
        return match.group(1) if match else None

    def _remote_url(self, url: str) -> str | None:
        """The checked URL when ``url`` is a remote one (http(s)/s3, not this server's file).

        Raises:
            ApiError: 400 with the usual message when ``allowed_url_prefixes`` is empty; 403
                for a URL outside it (or malformed, or of another form that hides its host).
        """
        from zoomearth.scene import remote

        if self._own_file_id(url) is not None or not remote.is_remote(url):
            return None
        prefixes = list(getattr(self.settings, "allowed_url_prefixes", None) or [])
        if not prefixes:
            raise ApiError(400, REMOTE_URL_TEMPLATE.format(url=url[:200]),
                           code="unsupported_url", param="messages")
        try:
            return remote.check_url_allowed(url, prefixes)
        except remote.RemoteURLNotAllowedError as exc:
            raise ApiError(403, str(exc), code=exc.code, type="permission_error",
                           param="messages") from None

    def _remote_ref(self, url: str) -> ImageRef:
        """Check a remote image (redirects, existence, header) and reference it in place."""
        from zoomearth.scene import remote
        from zoomearth.scene.remote import RemoteRedirectError, RemoteURLNotAllowedError

        prefixes = list(getattr(self.settings, "allowed_url_prefixes", None) or [])
        try:
            final = remote.preflight(url, self.settings, prefixes)
        except (RemoteRedirectError, RemoteURLNotAllowedError) as exc:
            raise ApiError(403, str(exc), code=exc.code, type="permission_error",
                           param="messages") from None
        except OSError as exc:  # the remote errors are SceneNotFoundError/SceneReadError
            raise ApiError(_remote_status(exc), str(exc),
                           code=getattr(exc, "code", "remote_read_failed"),
                           param="messages") from None
        self.validate(final, final, pixel_limit=False)
        return ImageRef(path=Path(remote.gdal_path(final)), identity=self.identity(final),
                        origin="url", url=final)

    def identity(self, url: str) -> str:
        """A stable identity of an image URL without storing it (conversation ids)."""
        if url.startswith("data:"):
            return self._decode(url)[1]
        if url.startswith("file:"):
            path = self._allowed(url)
            st = path.stat()
            return hashlib.sha256(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
        file_id = self._own_file_id(url)
        if file_id is not None:
            return str(self.store.meta(file_id)["sha256"])
        checked = self._remote_url(url)
        if checked is not None:
            return hashlib.sha256(f"url|{checked}".encode()).hexdigest()
        raise ApiError(400, REMOTE_URL_TEMPLATE.format(url=url[:200]), code="unsupported_url",
                       param="messages")

    def _allowed(self, url: str) -> Path:
        from zoomearth.tools.paths import (
            PathNotAllowedError,
            check_allowed_path,
            path_from_file_url,
        )

        try:
            return check_allowed_path(url, self.settings.allowed_roots, purpose="Image path")
        except PathNotAllowedError as exc:
            reason = str(exc)
            with contextlib.suppress(Exception):
                # A symbolic link leading out of the roots: do not disclose where it leads.
                target = Path(path_from_file_url(url)).resolve()
                reason = reason.replace(f" resolves to {target},", " leads", 1)
            raise ApiError(403, FILE_URL_TEMPLATE.format(reason=reason), code="path_not_allowed",
                           type="permission_error", param="messages") from None

    def ingest(self, url: str, dest_dir: Path) -> ImageRef:
        """The file behind an image URL, stored into ``dest_dir`` when it came as data.

        Raises:
            ApiError: 400 (bad URL, corrupt image, remote URL with allowed_url_prefixes empty, a
                remote image that does not exist), 403 (path outside allowed roots, URL outside
                allowed_url_prefixes, a redirect to another host), 404 (unknown upload), 413
                (too large, or a remote file without tiles/overviews above
                remote_max_plain_bytes), 502/504 (the remote store failed or timed out).
        """
        if url.startswith("data:"):
            data, digest = self._decode(url)
            ext = sniff_extension(data[:16])
            if ext is None:
                raise ApiError(400, UNKNOWN_FORMAT_TEMPLATE.format(what="in the data URL"),
                               code="corrupt_image", param="messages")
            path = dest_dir / f"{digest[:32]}.{ext}"
            if not path.exists():
                tmp = _write_temporary(path, data)
                try:
                    self.validate(tmp, "in the data URL")
                    os.replace(tmp, path)
                finally:
                    # Refused, failed or cancelled: the temporary (and GDAL sidecars) go.
                    for leftover in dest_dir.glob(f"{tmp.name}*"):
                        leftover.unlink(missing_ok=True)
            return ImageRef(path=path.resolve(), identity=digest, origin="data")
        if url.startswith("file:"):
            path = self._allowed(url)
            self.validate(path, f"{path}", pixel_limit=False)
            return ImageRef(path=path, identity=self.identity(url), origin="file")
        file_id = self._own_file_id(url)
        if file_id is not None:
            meta = self.store.meta(file_id)
            return ImageRef(path=self.store.path_of(file_id).resolve(), identity=meta["sha256"],
                            origin="upload")
        checked = self._remote_url(url)
        if checked is not None:
            return self._remote_ref(checked)
        raise ApiError(400, REMOTE_URL_TEMPLATE.format(url=url[:200]), code="unsupported_url",
                       param="messages")

    def ingest_upload(self, tmp: Path, filename: str, purpose: str) -> dict[str, Any]:
        """Validate an uploaded temporary file and add it to the store (its record)."""
        size = tmp.stat().st_size
        self.check_size(size)
        with open(tmp, "rb") as fh:
            head = fh.read(16)
        ext = sniff_extension(head)
        if ext is None:
            raise ApiError(400, UNKNOWN_FORMAT_TEMPLATE.format(what=repr(filename)),
                           code="corrupt_image", param="file")
        # GDAL picks drivers by content, but some need the extension: give it one.
        typed = tmp.with_suffix(f".{ext}")
        os.replace(tmp, typed)
        try:
            info = self.validate(typed, repr(filename))
        except ApiError:
            typed.unlink(missing_ok=True)
            raise
        h = hashlib.sha256()
        with open(typed, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        info.update(ext=ext, sha256=h.hexdigest(), bytes=size)
        return self.store.add(typed, filename, purpose, info)


def _write_temporary(final: Path, data: bytes) -> Path:
    """Write ``data`` to an owner-named temporary beside ``final`` (its folder made as needed).

    The name records this host and PID (:func:`zoomearth.temporaries.temporary_sibling`), so a
    server killed mid-write leaves a file the next start removes. A folder removed meanwhile
    (the empty-folder clean-up of a refused request of the same conversation) is made again.
    """
    from zoomearth.temporaries import temporary_sibling

    tmp = temporary_sibling(final)
    for attempt in range(2):
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(tmp, "xb") as fh:
                fh.write(data)
            return tmp
        except FileNotFoundError:
            if attempt:
                raise
    return tmp  # pragma: no cover - the loop returns or raises


_PIL_CHECKED = frozenset({".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp"})


def _pil_decode(path: Path) -> None:
    """Decode a small PNG/JPEG/... fully with Pillow (raises OSError when it is truncated)."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()


def _remote_status(exc: BaseException) -> int:
    """The HTTP status for a remote image's failure: 400 missing, 403 refused, 502/504 upstream."""
    from zoomearth.scene.remote import RemoteAccessError, RemoteNotFoundError, RemoteTimeoutError

    if isinstance(exc, RemoteNotFoundError):
        return 400
    if isinstance(exc, RemoteAccessError):
        return 403
    if isinstance(exc, RemoteTimeoutError):
        return 504
    return 502


def _hide_path(text: str, path: Path | str, name: str) -> str:
    """``text`` with the server-side file ``path`` (as given or resolved) replaced by ``name``.

    A remote URL (a str) is the client's own: nothing to hide.
    """
    if not isinstance(path, Path):
        return text
    for form in sorted({str(path.resolve()), str(path)}, key=len, reverse=True):
        text = text.replace(form, name)
    return text


def _short(exc: BaseException, path: Path | str | None = None) -> str:
    """One line of an exception's text, with the server-side file path hidden."""
    text = " ".join(str(exc).split())
    if isinstance(path, Path):
        text = text.replace(str(path), "the image").replace(str(path.resolve()), "the image")
    return text[:300] or type(exc).__name__
