"""Front-door header checks: Accept matching and the Host/Origin guard.

- :func:`bridge.frontends.streamable_http.accepts` decides the 406 of spec
  2025-11-25 transports §Sending Messages 2 (spec-notes §1.2): exact types,
  ``type/*`` and ``*/*`` wildcards, parameters, case, and ``q=0`` meaning
  "not acceptable".
- :class:`bridge.frontends.guard.Guard` is the DNS-rebinding defence of
  §Security Warning (spec-notes §1.14): bound to loopback it serves only
  loopback Host names (else 421); a present Origin must name an allowed host,
  the request's own host, or a listed origin (else 403); a missing Origin is
  allowed.
"""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from bridge.errors import ForbiddenOrigin, MisdirectedHost
from bridge.frontends.guard import LOOPBACK_NAMES, Guard
from bridge.frontends.streamable_http import accepts, visible_ascii

JSON = "application/json"
SSE = "text/event-stream"

# -- accepts() -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "json_ok", "sse_ok"),
    [
        (f"{JSON}, {SSE}", True, True),
        (f"{SSE},{JSON}", True, True),
        (JSON, True, False),
        (SSE, False, True),
        ("", False, False),
        (" application/json ,\ttext/event-stream ", True, True),
        # wildcards
        ("*/*", True, True),
        ("application/*", True, False),
        ("text/*", False, True),
        ("application/*, text/*", True, True),
        # parameters
        (f"{JSON}; charset=utf-8, {SSE};charset=utf-8", True, True),
        (f"{JSON};q=0.9, {SSE};q=0.1", True, True),
        (f"{JSON};q=0.001", True, False),
        # case
        ("Application/JSON, TEXT/Event-Stream", True, True),
        ("APPLICATION/*", True, False),
        # q=0 excludes, in every spelling
        (f"{JSON};q=0, {SSE}", False, True),
        (f"{JSON}; q=0.0, {SSE};q=0.00", False, False),
        (f"{JSON};charset=utf-8;q=0.000, {SSE}", False, True),
        ("*/*;q=0", False, False),
        ("application/*;q=0, text/*", False, True),
        # near misses are not matches
        ("application/json-seq, text/event-streams", False, False),
        ("application/jsonx, text", False, False),
        ("application, json", False, False),
        ("application/*json", False, False),
    ],
)
def test_accepts(header: str, json_ok: bool, sse_ok: bool) -> None:
    assert accepts(header, JSON) is json_ok
    assert accepts(header, SSE) is sse_ok


def test_accepts_uppercase_q_zero_excludes() -> None:
    assert not accepts(f"{JSON};Q=0, {SSE}", JSON)


def test_accepts_specific_q_zero_beats_a_wildcard() -> None:
    assert not accepts(f"{JSON};q=0, */*", JSON)


# -- Guard.for_bind ---------------------------------------------------------------


@pytest.mark.parametrize("bind", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_bind_serves_loopback_names_only(bind: str) -> None:
    guard = Guard.for_bind(bind, [], [])
    assert guard.hosts == LOOPBACK_NAMES
    assert frozenset({"localhost", "127.0.0.1", "::1"}) == LOOPBACK_NAMES
    assert guard.origins == frozenset()


@pytest.mark.parametrize("bind", ["0.0.0.0", "::", "192.0.2.10", "mcp.example"])
def test_other_binds_serve_any_host(bind: str) -> None:
    assert Guard.for_bind(bind, [], []).hosts is None


def test_explicit_lists_are_normalised_and_replace_the_loopback_default() -> None:
    guard = Guard.for_bind("127.0.0.1", ["MCP.Example"], ["https://App.example/", "http://x:3"])
    assert guard.hosts == frozenset({"mcp.example"})
    assert guard.origins == {"https://app.example", "http://x:3"}


# -- Guard.check ----------------------------------------------------------------------


def check(guard: Guard, host: str | None, origin: str | None = None) -> None:
    headers = {}
    if host is not None:
        headers["Host"] = host
    if origin is not None:
        headers["Origin"] = origin
    request: web.Request = make_mocked_request("POST", "/mcp", headers=headers)
    guard.check(request)


LOOPBACK = Guard.for_bind("127.0.0.1", [], [])
ANY_HOST = Guard.for_bind("0.0.0.0", [], [])
NAMED = Guard.for_bind("0.0.0.0", ["mcp.example"], ["https://app.example"])


@pytest.mark.parametrize(
    "host", ["localhost:8080", "localhost", "LocalHost:1", "127.0.0.1:8080", "[::1]:8080", "[::1]"]
)
def test_loopback_host_names_pass(host: str) -> None:
    check(LOOPBACK, host)


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:8080", "127.0.0.1.evil.example", "localhost.evil", ""]
)
def test_foreign_host_is_misdirected(host: str) -> None:
    with pytest.raises(MisdirectedHost) as info:
        check(LOOPBACK, host)
    assert info.value.http_status == 421


def test_missing_host_is_misdirected_when_hosts_are_restricted() -> None:
    with pytest.raises(MisdirectedHost):
        check(LOOPBACK, None)


@pytest.mark.parametrize("guard", [LOOPBACK, ANY_HOST, NAMED])
def test_missing_origin_is_allowed(guard: Guard) -> None:
    host = "mcp.example" if guard is NAMED else "localhost:8080"
    check(guard, host, origin=None)


@pytest.mark.parametrize(
    "origin",
    ["http://localhost:3000", "http://localhost", "https://127.0.0.1:5173", "http://[::1]:9"],
)
def test_loopback_origins_pass_on_loopback(origin: str) -> None:
    check(LOOPBACK, "localhost:8080", origin)


@pytest.mark.parametrize(
    "origin",
    ["http://evil.example", "http://localhost.evil.example", "null", "file://", "evil.example"],
)
def test_foreign_origin_is_forbidden(origin: str) -> None:
    with pytest.raises(ForbiddenOrigin) as info:
        check(LOOPBACK, "localhost:8080", origin)
    assert info.value.http_status == 403


def test_host_is_checked_before_origin() -> None:
    with pytest.raises(MisdirectedHost):
        check(LOOPBACK, "evil.example", "http://evil.example")


def test_any_host_guard_allows_same_host_origins_only() -> None:
    check(ANY_HOST, "gateway.internal:8080")
    check(ANY_HOST, "gateway.internal:8080", "http://gateway.internal:3000")
    check(ANY_HOST, "Gateway.Internal", "https://gateway.internal")
    with pytest.raises(ForbiddenOrigin):
        check(ANY_HOST, "gateway.internal:8080", "http://localhost:3000")
    with pytest.raises(ForbiddenOrigin):
        check(ANY_HOST, None, "http://gateway.internal")


def test_allowed_hosts_and_origins() -> None:
    check(NAMED, "mcp.example")
    check(NAMED, "MCP.EXAMPLE:443", "https://mcp.example")
    check(NAMED, "mcp.example", "https://app.example")
    check(NAMED, "mcp.example", "HTTPS://APP.EXAMPLE/")
    with pytest.raises(MisdirectedHost):
        check(NAMED, "localhost:8080")
    with pytest.raises(ForbiddenOrigin):
        check(NAMED, "mcp.example", "https://app.example:8443")  # listed origins are exact
    with pytest.raises(ForbiddenOrigin):
        check(NAMED, "mcp.example", "http://other.example")


def test_malformed_host_is_misdirected_not_a_crash() -> None:
    with pytest.raises(MisdirectedHost):
        check(LOOPBACK, "[::1")


def test_malformed_origin_is_forbidden_not_a_crash() -> None:
    with pytest.raises(ForbiddenOrigin):
        check(LOOPBACK, "localhost", "http://[::1")


@pytest.mark.parametrize(
    ("value", "visible"),
    [
        ("0f3c-ABC_~!", True),
        ("".join(map(chr, range(0x21, 0x7F))), True),
        ("a b", False),
        ("a\tb", False),
        ("a\x7f", False),
        ("\x00", False),
        ("caf\u00e9", False),  # encode("ascii", "replace") once let this through as "caf?"
        ("\x80", False),
    ],
)
def test_session_ids_are_visible_ascii_only(value: str, visible: bool) -> None:
    assert visible_ascii(value) is visible
