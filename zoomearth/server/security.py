"""Bind-address security and conversation ids (no web framework imported here)."""

from __future__ import annotations

import hashlib
import ipaddress
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zoomearth.config import Settings

__all__ = ["check_bind_security", "conversation_id_for", "is_loopback"]

TOKEN_REQUIRED_TEMPLATE = (
    "Refusing to serve on {host!r} without a bearer token: a server reachable from other machines "
    "must require one. Set api_token (e.g. ZOOMEARTH_API_TOKEN=$(openssl rand -hex 32)) or bind "
    "127.0.0.1."
)


def is_loopback(host: str) -> bool:
    """Whether a bind address is reachable only from this machine."""
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind_security(settings: Settings) -> None:
    """Refuse a non-loopback bind address without ``api_token``.

    Raises:
        ConfigError: The server would be reachable from other machines without a token.
    """
    from zoomearth.errors import ConfigError

    if not is_loopback(settings.server_host) and not settings.api_token:
        raise ConfigError(TOKEN_REQUIRED_TEMPLATE.format(host=settings.server_host))


def conversation_id_for(first_user_text: str, first_image_identity: str) -> str:
    """The derived conversation id: ``conv-`` + 32 hex digits of sha256(text NUL identity).

    ``first_image_identity`` is the sha256 of the first image's bytes (data URLs, uploads) or of
    its path, size and modification time (``file://`` paths); empty when there is no image.
    """
    raw = first_user_text.strip().encode() + b"\0" + first_image_identity.encode()
    return "conv-" + hashlib.sha256(raw).hexdigest()[:32]
