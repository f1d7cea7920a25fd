"""File downloads of the server (:mod:`zoomearth.server.app`): uploads and run artifacts.

A download's content type comes from the file's first bytes (images) or from the server-chosen
name, never from an uploaded name, is never one a browser would run, and is sent with
``X-Content-Type-Options: nosniff``. Imported by :mod:`zoomearth.server.app` only (FastAPI).
"""

from __future__ import annotations

from pathlib import Path

from fastapi.responses import FileResponse

from zoomearth.server.ingest import sniff_extension

#: Sniffed image extension -> the content type downloads are served with.
_SNIFFED_MEDIA = {"tif": "image/tiff", "png": "image/png", "jpg": "image/jpeg",
                  "jp2": "image/jp2", "j2k": "image/jp2", "gif": "image/gif",
                  "bmp": "image/bmp", "webp": "image/webp"}
#: Content types a browser would render as active content: served as plain text instead.
_ACTIVE_MEDIA = ("text/html", "application/xhtml+xml", "image/svg+xml", "text/javascript",
                 "application/javascript", "text/xml", "application/xml")


def _download(path: Path, *, filename: str | None = None,
              fallback: str = "application/octet-stream") -> FileResponse:
    """A file response whose content type comes from the file's first bytes, with nosniff.

    Images get their sniffed type (never the uploaded name's); other files get ``fallback``
    (artifacts: derived from the server-chosen name), except types a browser would run.
    """
    with open(path, "rb") as fh:
        ext = sniff_extension(fh.read(16))
    media = _SNIFFED_MEDIA.get(ext or "") or fallback
    if media.split(";")[0].strip().lower() in _ACTIVE_MEDIA:
        media = "text/plain"
    return FileResponse(path, media_type=media, filename=filename,
                        headers={"X-Content-Type-Options": "nosniff"})
