"""Bind-address security, link base URLs and conversation ids (no web framework imported here).

Links the server hands out (signed artifact and upload URLs) must not be built from what a client
claims: a ``Host`` or ``X-Forwarded-Host`` header would otherwise put an attacker's host into a
link that the server signs (host-header poisoning). :func:`link_base_url` therefore uses, in order,
the setting ``public_base_url``; the ``X-Forwarded-Host``/``-Proto`` headers only when the
connection comes from an address in ``trusted_proxies``; else the address of the server's own
socket that the connection arrived on.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from zoomearth.config import Settings

__all__ = [
    "check_bind_security",
    "check_proxy_settings",
    "conversation_id_for",
    "is_loopback",
    "link_base_url",
    "peer_is_trusted",
]

BAD_PUBLIC_URL_TEMPLATE = (
    "Setting public_base_url={value!r} is not usable: give scheme and host, optionally a port "
    "and path, e.g. https://zoom.example.org or http://10.0.0.5:8000 (no query or fragment)."
)
BAD_PROXY_TEMPLATE = (
    "Setting trusted_proxies entry {value!r} is not an IP address or network (e.g. 10.0.0.7 or "
    "10.0.0.0/24); fix or remove it."
)
#: A host[:port] as a proxy may forward it: DNS name, IPv4 or bracketed IPv6, optional port.
_HOST_RE = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])"
                      r"(?::[0-9]{1,5})?$")

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


def check_proxy_settings(settings: Settings) -> None:
    """Validate ``public_base_url`` and ``trusted_proxies`` at start-up.

    Raises:
        ConfigError: A base URL that is not ``http(s)://host[:port][/path]``, or a proxy entry
            that is not an IP address or network.
    """
    from zoomearth.errors import ConfigError

    url = settings.public_base_url
    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query \
                or parts.fragment or not _HOST_RE.match(parts.netloc):
            raise ConfigError(BAD_PUBLIC_URL_TEMPLATE.format(value=url))
    for entry in settings.trusted_proxies:
        try:
            ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            raise ConfigError(BAD_PROXY_TEMPLATE.format(value=entry)) from None


def peer_is_trusted(peer: str | None, trusted: list[str]) -> bool:
    """Whether the connection's peer address is one of ``trusted`` (addresses or networks)."""
    if not peer or not trusted:
        return False
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    for entry in trusted:
        try:
            if address in ipaddress.ip_network(entry.strip(), strict=False):
                return True
        except ValueError:
            continue
    return False


def _first(value: str | None) -> str:
    # A proxy chain appends: "client-facing, next, ..."; the first is what the client used.
    return (value or "").split(",")[0].strip()


def link_base_url(settings: Settings, *, scheme: str, server: tuple[str, int] | None,
                  peer: str | None, headers: Mapping[str, str]) -> str:
    """The ``scheme://host[:port][/path]`` that links the server hands out start with.

    Args:
        settings: ``public_base_url``, ``trusted_proxies``, ``server_host``, ``server_port``.
        scheme: The connection's scheme as the server itself sees it (``http``/``https``).
        server: The local (address, port) of the socket the connection arrived on.
        peer: The connection's peer address (not taken from any header).
        headers: The request headers (lower-case names).

    Returns:
        The base URL without a trailing slash; never built from ``Host``, and from
        ``X-Forwarded-Host``/``-Proto`` only when ``peer`` is a trusted proxy.
    """
    if settings.public_base_url:
        return settings.public_base_url.rstrip("/")
    if peer_is_trusted(peer, settings.trusted_proxies):
        host = _first(headers.get("x-forwarded-host"))
        proto = _first(headers.get("x-forwarded-proto")).lower()
        if host and _HOST_RE.match(host):
            return f"{proto if proto in ('http', 'https') else scheme}://{host}"
    if server and server[0]:
        host, port = server
    else:
        host, port = settings.server_host, settings.server_port
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6
    default = (scheme == "http" and port == 80) or (scheme == "https" and port == 443)
    return f"{scheme}://{host}" if default else f"{scheme}://{host}:{port}"
