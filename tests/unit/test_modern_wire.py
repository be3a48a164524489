"""The 2026-07-28 wire rules, sans-IO (bridge.modern.wire, bridge.modern.state)."""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import pytest

from bridge import errors
from bridge.errors import (
    HeaderMismatch,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    MissingSession,
    VersionNotServed,
)
from bridge.jsonrpc import Kind
from bridge.modern import state, wire

V = "2026-07-28"


def request(method: str = "tools/list", **params: Any) -> dict[str, Any]:
    meta = {wire.META_VERSION: V, wire.META_CAPABILITIES: {}}
    meta.update(params.pop("_meta", {}))
    return {"jsonrpc": "2.0", "id": 7, "method": method, "params": {**params, "_meta": meta}}


def headers(method: str = "tools/list", **extra: str) -> dict[str, str]:
    return {wire.VERSION_HEADER: V, wire.METHOD_HEADER: method, **extra}


def b64(text: str) -> str:
    return "=?base64?" + base64.b64encode(text.encode()).decode() + "?="


def test_era_is_chosen_by_meta_or_header_not_by_initialize() -> None:
    legacy_init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
    assert not wire.is_modern(legacy_init, {})
    assert not wire.is_modern(legacy_init, {wire.VERSION_HEADER: V})
    assert wire.is_modern(request("initialize"), {})
    assert wire.is_modern({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers())
    assert not wire.is_modern(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, {wire.VERSION_HEADER: "2025-11-25"}
    )


def test_a_valid_request_is_checked_and_described() -> None:
    checked = wire.check(request(_meta={wire.META_LOG_LEVEL: "info"}), Kind.REQUEST, headers())
    assert (checked.method, checked.version, checked.log_level) == ("tools/list", V, "info")


@pytest.mark.parametrize(
    ("body", "hdrs", "error", "code"),
    [
        (  # _meta missing altogether, header says 2026-07-28
            {"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {}},
            headers("server/discover"), InvalidParams, -32602,
        ),
        (request(_meta={wire.META_CAPABILITIES: None}), headers(), InvalidParams, -32602),
        (request(_meta={wire.META_LOG_LEVEL: "loud"}), headers(), InvalidParams, -32602),
        (request(_meta={wire.META_VERSION: "v999"}), headers(), HeaderMismatch, -32020),
        (
            request(_meta={wire.META_VERSION: "v999"}),
            {**headers(), wire.VERSION_HEADER: "v999"}, VersionNotServed, -32022,
        ),
        (request(), {wire.METHOD_HEADER: "tools/list"}, HeaderMismatch, -32020),
        (request(), headers("tools/call"), HeaderMismatch, -32020),
        (request(), {wire.VERSION_HEADER: V}, HeaderMismatch, -32020),
        (request("tools/call", name="a"), headers("tools/call"), HeaderMismatch, -32020),
        (
            request("tools/call", name="a"),
            headers("tools/call", **{wire.NAME_HEADER: "b"}), HeaderMismatch, -32020,
        ),
        (request("ping"), headers("ping"), MethodNotFound, -32601),
        (request("logging/setLevel"), headers("logging/setLevel"), MethodNotFound, -32601),
        (request("initialize"), headers("initialize"), MethodNotFound, -32601),
        (request("unknown/method"), headers("unknown/method"), MethodNotFound, -32601),
        (  # a session-era version without a session: plain 400, so the client initializes
            request(_meta={wire.META_VERSION: "2025-11-25"}),
            {**headers(), wire.VERSION_HEADER: "2025-11-25"}, MissingSession, -32600,
        ),
    ],
)  # fmt: skip
def test_refusals_in_the_spec_order(
    body: dict[str, Any], hdrs: dict[str, str], error: type[Exception], code: int
) -> None:
    with pytest.raises(error) as caught:
        wire.check(body, Kind.REQUEST, hdrs)
    assert isinstance(caught.value, errors.BridgeError)
    assert caught.value.jsonrpc_code == code


def test_unsupported_version_names_what_is_served() -> None:
    with pytest.raises(VersionNotServed) as caught:
        wire.check(request(_meta={wire.META_VERSION: "1900-01-01"}), Kind.REQUEST,
                   {**headers(), wire.VERSION_HEADER: "1900-01-01"})  # fmt: skip
    assert caught.value.http_status == 400
    assert caught.value.data == {"supported": list(wire.ALL_VERSIONS), "requested": "1900-01-01"}


def test_notifications_and_responses_are_not_requests_here() -> None:
    with pytest.raises(InvalidRequest):
        wire.check({"jsonrpc": "2.0", "method": "notifications/cancelled"}, Kind.NOTIFICATION,
                   headers())  # fmt: skip


@pytest.mark.parametrize(
    ("header", "body", "ok"),
    [
        ("get_weather", "get_weather", True),
        (b64("Hello, 世界"), "Hello, 世界", True),
        (b64(" padded "), " padded ", True),
        (b64("=?base64?literal?="), "=?base64?literal?=", True),
        ("=?BASE64?aGk=?=", "hi", False),  # markers are case-sensitive: plain text
        ("=?base64?!!notbase64?=", "x", False),
        ("caf\xe9", "café", False),  # outside visible ASCII: must be encoded
    ],
)
def test_mcp_name_is_decoded_before_comparing(header: str, body: str, ok: bool) -> None:
    message = request("tools/call", name=body)
    hdrs = headers("tools/call", **{wire.NAME_HEADER: header})
    if ok:
        assert wire.check(message, Kind.REQUEST, hdrs).params["name"] == body
    else:
        with pytest.raises(HeaderMismatch):
            wire.check(message, Kind.REQUEST, hdrs)


SCHEMA = {
    "type": "object",
    "properties": {
        "region": {"type": "string", "x-mcp-header": "Region"},
        "limit": {"type": "integer", "x-mcp-header": "Limit"},
        "dry": {"type": "boolean", "x-mcp-header": "Dry"},
        "nested": {"type": "object", "properties": {"zone": {"type": "string", "x-mcp-header": "Zone"}}},
        "list": {"type": "array", "items": {"type": "string", "x-mcp-header": "Ignored"}},
        "query": {"type": "string"},
    },
}  # fmt: skip


def test_param_headers_follow_only_properties_chains() -> None:
    found = dict(wire.param_headers(SCHEMA))
    assert found == {"Region": ("region",), "Limit": ("limit",), "Dry": ("dry",),
                     "Zone": ("nested", "zone")}  # fmt: skip


@pytest.mark.parametrize(
    ("arguments", "hdrs", "ok"),
    [
        ({"query": "q"}, {}, True),  # nothing annotated in the body: nothing expected
        ({"region": None}, {}, True),  # null: the header is omitted
        ({"region": "us-west1"}, {"Mcp-Param-Region": "us-west1"}, True),
        ({"region": "us-west1"}, {}, False),  # the value without its header
        ({"region": "us-west1"}, {"Mcp-Param-Region": "eu"}, False),
        ({"limit": 42}, {"Mcp-Param-Limit": "42.0"}, True),  # integers compare numerically
        ({"dry": True}, {"Mcp-Param-Dry": "true"}, True),
        ({"dry": False}, {"Mcp-Param-Dry": "true"}, False),
        ({"nested": {"zone": "a b"}}, {"Mcp-Param-Zone": b64("a b")}, True),
        ({"region": "日本"}, {"Mcp-Param-Region": b64("日本")}, True),
    ],
)
def test_param_headers_must_match_arguments(
    arguments: dict[str, Any], hdrs: dict[str, str], ok: bool
) -> None:
    if ok:
        wire.check_param_headers(SCHEMA, arguments, hdrs)
    else:
        with pytest.raises(HeaderMismatch):
            wire.check_param_headers(SCHEMA, arguments, hdrs)


def test_results_get_result_type_server_info_and_cache_hints() -> None:
    info = {"name": "up", "version": "1"}
    listed = wire.complete({"tools": []}, "tools/list", info)
    assert listed["resultType"] == "complete"
    assert listed["_meta"][wire.META_SERVER_INFO] == info
    assert (listed["ttlMs"], listed["cacheScope"]) == (0, "private")
    called = wire.complete({"content": []}, "tools/call", info)
    assert "ttlMs" not in called
    kept = wire.complete(
        {"contents": [], "ttlMs": 5000, "cacheScope": "public"}, "resources/read", info
    )
    assert (kept["ttlMs"], kept["cacheScope"]) == (5000, "public")
    retried = wire.complete({"contents": [], "ttlMs": 5000}, "resources/read", info, retried=True)
    assert retried["ttlMs"] == 0  # caching §Cache Key: MRTR retries MUST NOT be cached


def test_upstream_errors_move_to_this_revisions_codes() -> None:
    read = wire.check(
        request("resources/read", uri="test://x"), Kind.REQUEST,
        headers("resources/read", **{wire.NAME_HEADER: "test://x"}),
    )  # fmt: skip
    not_found = wire.upstream_error({"code": -32002, "message": "nope"}, read)
    assert not_found == {"code": -32602, "message": "nope", "data": {"uri": "test://x"}}
    gateway = wire.upstream_error({"code": errors.UPSTREAM_TIMEOUT, "message": "slow"}, read)
    assert gateway["code"] == -31032  # outside the range 2026-07-28 reserves
    assert errors.for_modern(errors.HEADER_MISMATCH) == errors.HEADER_MISMATCH


# -- requestState ------------------------------------------------------------------

KEY = b"k" * 32


def sealed(**changes: Any) -> str:
    claims = state.Claims("h1", 1, state.principal_digest("alice"), "d1", 2000.0)
    return state.seal(dataclasses.replace(claims, **changes), KEY)


def test_a_token_opens_for_its_caller_and_request() -> None:
    claims = state.unseal(sealed(), KEY, principal="alice", digest="d1", now=1000.0)
    assert (claims.hold, claims.round) == ("h1", 1)


@pytest.mark.parametrize(
    ("token", "principal", "digest", "now", "reason"),
    [
        (sealed() + "x", "alice", "d1", 1000.0, "integrity"),
        (sealed()[:-2] + "AA", "alice", "d1", 1000.0, "integrity"),
        (sealed(), "alice", "d1", 1000.0, None),
        (sealed(), "bob", "d1", 1000.0, "another caller"),
        (sealed(), None, "d1", 1000.0, "another caller"),
        (sealed(), "alice", "d2", 1000.0, "another request"),
        (sealed(), "alice", "d1", 2001.0, "expired"),
        ("not-a-token", "alice", "d1", 1000.0, "not one"),
        ({"h": "h1"}, "alice", "d1", 1000.0, "not one"),
        ("a.b.c", "alice", "d1", 1000.0, "not one"),
    ],
)
def test_forged_altered_foreign_or_expired_tokens_are_refused(
    token: object, principal: str | None, digest: str, now: float, reason: str | None
) -> None:
    if reason is None:
        state.unseal(token, KEY, principal=principal, digest=digest, now=now)
        return
    with pytest.raises(state.StateRejected, match=reason) as caught:
        state.unseal(token, KEY, principal=principal, digest=digest, now=now)
    assert caught.value.jsonrpc_code == -32602


def test_a_token_of_another_key_is_refused() -> None:
    with pytest.raises(state.StateRejected, match="integrity"):
        state.unseal(sealed(), b"other" * 8, principal="alice", digest="d1", now=1000.0)


def test_the_digest_ignores_meta_and_mrtr_fields_only() -> None:
    def digest(**params: Any) -> str:
        return wire.ModernRequest(request("tools/call", **params), V, {}, None, None).digest()

    base = digest(name="t", arguments={"a": 1})
    assert base == digest(name="t", arguments={"a": 1}, requestState="s", inputResponses={"k": {}})
    assert base != digest(name="t", arguments={"a": 2})
    assert base != digest(name="u", arguments={"a": 1})
