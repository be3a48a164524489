"""Host and Origin checks for the front doors (spec 2025-11-25 transports §Security Warning).

- Bound to a loopback address, the gateway answers only Host names in
  ``allowed_hosts``, by default ``localhost``, ``127.0.0.1`` and ``[::1]``:
  a DNS-rebinding page reaches 127.0.0.1 under its own name and gets 421.
- An ``Origin`` header, when present, must name an allowed host, or the
  request's own Host, or be listed in ``allowed_origins``; otherwise 403.
  A missing Origin is allowed (non-browser clients send none).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from aiohttp import web

from bridge.errors import ForbiddenOrigin, MisdirectedHost

LOOPBACK_NAMES: Final = frozenset({"localhost", "127.0.0.1", "::1"})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _hostname(url: str) -> str | None:
    """The host of a URL or ``//authority``; None if absent or malformed."""
    try:
        return urlsplit(url).hostname
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return None


@dataclass(frozen=True, slots=True)
class Guard:
    hosts: frozenset[str] | None  # None: any Host
    origins: frozenset[str]

    @classmethod
    def for_bind(cls, bind_host: str, hosts: list[str], origins: list[str]) -> Guard:
        allowed: frozenset[str] | None = frozenset(h.lower() for h in hosts) or None
        if allowed is None and is_loopback(bind_host):
            allowed = LOOPBACK_NAMES
        return cls(allowed, frozenset(o.rstrip("/").lower() for o in origins))

    def check(self, request: web.Request) -> None:
        """Raise MisdirectedHost (421) or ForbiddenOrigin (403) for a foreign request."""
        host = _hostname("//" + request.headers.get("Host", ""))
        if self.hosts is not None and (host is None or host.lower() not in self.hosts):
            raise MisdirectedHost("Host header not allowed")
        origin = request.headers.get("Origin")
        if origin is None or origin.rstrip("/").lower() in self.origins:
            return
        origin_host = _hostname(origin)
        allowed = self.hosts if self.hosts is not None else {host}
        if origin_host is None or origin_host not in allowed:
            raise ForbiddenOrigin("Origin not allowed")
