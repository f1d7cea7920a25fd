r"""Signed, expiring links for files the server hands out (uploads, artifacts).

A link carries ``exp`` (Unix seconds) and ``sig`` (hex HMAC-SHA256 of ``"<path>\n<exp>"``) as query
parameters, so a chat UI can show an artifact in an ``<img>`` tag without the bearer header.
The key is 32 random bytes stored in ``DATA_DIR/server/signing.key`` (mode 0600), created once;
every server process using the same data directory (several workers) shares it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path
from urllib.parse import quote

__all__ = ["Signer", "load_or_create_key"]

KEY_FILE = "signing.key"
KEY_BYTES = 32


def load_or_create_key(directory: Path) -> bytes:
    """The signing key in ``directory`` (created atomically with mode 0600 when missing).

    Args:
        directory: Where the key file lives (created when missing).

    Returns:
        The raw key bytes.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another worker may be writing it right now
            data = path.read_bytes()
            if len(data) == KEY_BYTES * 2:
                return bytes.fromhex(data.decode())
            time.sleep(0.02)
        raise RuntimeError(
            f"signing key file {path} is unreadable; delete it to regenerate it"
        ) from None
    key = secrets.token_bytes(KEY_BYTES)
    with os.fdopen(fd, "w") as fh:
        fh.write(key.hex())
    return key


class Signer:
    """Makes and checks signed, expiring link query strings.

    Args:
        key: The HMAC key.
        ttl_s: Lifetime of a link in seconds.
    """

    def __init__(self, key: bytes, ttl_s: int) -> None:
        self._key = key
        self.ttl_s = ttl_s

    def _mac(self, path: str, exp: int) -> str:
        msg = f"{path}\n{exp}".encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()

    def sign(self, path: str, now: float | None = None) -> str:
        """The query string ``exp=...&sig=...`` for a URL path (decoded, as the server sees it)."""
        exp = int((time.time() if now is None else now) + self.ttl_s)
        return f"exp={exp}&sig={self._mac(path, exp)}"

    def verify(self, path: str, exp: str | None, sig: str | None, now: float | None = None) -> bool:
        """Whether ``sig`` signs ``path`` until ``exp`` and ``exp`` has not passed."""
        if not exp or not sig or not exp.isdigit():
            return False
        if int(exp) < (time.time() if now is None else now):
            return False
        return hmac.compare_digest(self._mac(path, int(exp)), sig)

    def url(self, base: str, path: str) -> str:
        """An absolute signed URL: ``base`` (scheme://host[:port]) + quoted ``path`` + query."""
        return f"{base.rstrip('/')}{quote(path)}?{self.sign(path)}"
