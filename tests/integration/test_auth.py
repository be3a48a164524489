"""Who gets in (issue #5; spec-notes §1.14 to §1.16).

A real gateway on a loopback socket, real MCP servers behind it, and real
SDK clients or raw HTTP in front:

- API keys: 401 with ``WWW-Authenticate`` without or with a wrong key; the
  SDK client works with a right one, inline or stored as a SHA-256 digest.
- Sessions are bound to the principal that made them: another principal's
  POST, GET, ``Last-Event-ID`` resume, DELETE and legacy POST all get the
  404 of an unknown session, live or released, and start no upstream.
- OAuth 2.1 resource-server mode: JWTs minted here with local RSA keys and
  served from a local JWKS; RFC 9728 metadata; every way a token can be
  wrong gets 401 ``invalid_token``, a missing scope 403, a JWKS outage 503.
- CORS for browser clients, and the client's ``Authorization`` never
  reaching an upstream (token passthrough is forbidden).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import pytest
import structlog
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from pydantic import SecretStr

from bridge.app import build_app
from bridge.errors import SESSION_NOT_FOUND, UNAUTHORIZED
from bridge.settings import Settings, SseServer, StreamableHttpServer
from tests.conftest import (
    GatewayFactory,
    ProcFactory,
    RunningGateway,
    example_stdio,
    free_port,
    start_fixture_http,
)
from tests.rawclient import ACCEPT_BOTH, RawClient, next_event

KEYS = "alice:tok-alice, bob:sha256:" + hashlib.sha256(b"tok-bob").hexdigest()
ALICE = {"Authorization": "Bearer tok-alice"}
BOB = {"Authorization": "Bearer tok-bob"}


def raw(http: aiohttp.ClientSession, url: str, who: dict[str, str]) -> RawClient:
    client = RawClient(http, url)
    headers = client.headers

    def with_credentials(**extra: str) -> dict[str, str]:
        return headers(**{**who, **extra})

    client.headers = with_credentials  # type: ignore[method-assign]
    return client


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def api_key_gateway(gateway: GatewayFactory) -> RunningGateway:
    return await gateway([example_stdio()], api_keys=SecretStr(KEYS))


# -- API keys --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "headers", "error"),
    [
        ("POST", "/mcp", {}, None),
        ("POST", "/mcp", {"Authorization": "Bearer wrong"}, "invalid_token"),
        ("POST", "/mcp", {"Authorization": "Basic dG9rLWFsaWNlOg=="}, None),
        ("POST", "/mcp", {"Authorization": "Bearer tok-alice extra"}, None),
        ("GET", "/mcp", {}, None),
        ("DELETE", "/mcp", {"Authorization": "Bearer tok-alic"}, "invalid_token"),
        ("GET", "/sse", {}, None),
        ("POST", "/messages/?session_id=x", {}, None),
        ("POST", "/servers/nope/mcp", {}, None),  # no hint which servers exist
    ],
)
async def test_missing_or_wrong_credentials_get_401_with_a_challenge(
    gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    headers: dict[str, str],
    error: str | None,
) -> None:
    gw = await api_key_gateway(gateway)
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    headers = {"Accept": ACCEPT_BOTH, "Content-Type": "application/json", **headers}
    async with http.request(method, gw.url + path, data=body, headers=headers) as response:
        assert response.status == 401
        challenge = response.headers["WWW-Authenticate"]
        reply = await response.json()
    assert challenge.startswith('Bearer realm="mcp-bridge"')
    assert (f'error="{error}"' in challenge) == (error is not None)
    assert reply["error"]["code"] == UNAUTHORIZED
    assert "tok-" not in challenge + json.dumps(reply)


async def test_health_endpoints_need_no_credentials(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await api_key_gateway(gateway)
    for path in ("/healthz", "/readyz", "/metrics"):
        async with http.get(gw.url + path) as response:
            assert response.status == 200, path


@pytest.mark.parametrize("who", [ALICE, BOB], ids=["inline-key", "sha256-key"])
async def test_sdk_client_with_an_api_key(gateway: GatewayFactory, who: dict[str, str]) -> None:
    gw = await api_key_gateway(gateway)
    async with (
        create_mcp_http_client(headers=who) as client,
        streamable_http_client(f"{gw.url}/mcp", http_client=client) as (read, write, _),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        result = await session.call_tool("echo", {"text": "keyed"})
        assert "keyed" in str(result.content)
        [record] = await gw.hub.stores.sessions.list(10)
    assert record.principal == ("key:alice" if who is ALICE else "key:bob")


async def alice_session_with_a_stream(
    http: aiohttp.ClientSession, url: str
) -> tuple[RawClient, str]:
    """Alice's session and the id of an event on one of its POST streams."""
    alice = raw(http, url, ALICE)
    await alice.initialize()
    message = alice.request("tools/call", {"name": "echo", "arguments": {"text": "secret-a"}})
    async with http.post(url, json=message, headers=alice.headers()) as response:
        event = await next_event(response)
        await response.read()
    return alice, event["id"]


async def assert_strangers_get_404(
    http: aiohttp.ClientSession, url: str, alice: RawClient, event_id: str
) -> None:
    assert alice.session_id is not None
    bob = raw(http, url, BOB)
    bob.session_id = alice.session_id
    reply = await bob.post(bob.request("tools/list"))
    assert (reply.status, reply.error_code) == (404, SESSION_NOT_FOUND)
    for extra in ({}, {"Last-Event-ID": event_id}):
        async with http.get(url, headers=bob.headers(Accept="text/event-stream", **extra)) as r:
            assert r.status == 404
            assert "secret-a" not in await r.text()
    assert await bob.delete() == 404


async def test_a_session_is_bound_to_its_principal(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await api_key_gateway(gateway)
    url = f"{gw.url}/mcp"
    alice, event_id = await alice_session_with_a_stream(http, url)
    await assert_strangers_get_404(http, url, alice, event_id)
    assert (await alice.post(alice.request("tools/list"))).status == 200
    # Released (idle, upstream lost, another replica): the stored record decides,
    # and a stranger does not even get an upstream started for it.
    for session in gw.hub.live():
        await session.close("test: upstream released")
    await assert_strangers_get_404(http, url, alice, event_id)
    assert len(gw.hub) == 0
    async with http.get(
        url, headers=alice.headers(Accept="text/event-stream", **{"Last-Event-ID": event_id})
    ) as response:
        assert response.status == 200
        assert "secret-a" in (await next_event(response))["data"]
    assert await alice.delete() == 200


async def test_a_legacy_connection_is_bound_to_its_principal(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await api_key_gateway(gateway)
    async with http.get(f"{gw.url}/sse", headers=ALICE) as stream:
        endpoint = (await next_event(stream))["data"]
        initialize = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {"protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {}},
        }
        async with http.post(gw.url + endpoint, json=initialize, headers=BOB) as response:
            assert response.status == 404
        async with http.post(gw.url + endpoint, json=initialize, headers=ALICE) as response:
            assert response.status == 202
        assert json.loads((await next_event(stream))["data"])["id"] == 1


@pytest.mark.parametrize("keys", [None, KEYS])
async def test_binding_without_auth_on_a_network_address_warns(keys: str | None) -> None:
    settings = Settings(
        store_url="memory://", host="0.0.0.0", api_keys=SecretStr(keys) if keys else None
    )
    with structlog.testing.capture_logs() as logs:
        runner = web.AppRunner(await build_app(settings, [example_stdio()]))  # never listens
        await runner.setup()
        await runner.cleanup()
    warned = [e for e in logs if e["event"] == "auth_disabled_on_network"]
    assert bool(warned) == (keys is None), logs
    assert all(e["log_level"] == "warning" for e in warned)


# -- OAuth 2.1 resource server ---------------------------------------------------

ISSUER = "https://issuer.test"
PUBLIC = "https://mcp.example.com/gw"
SCOPE = "mcp:use"


@dataclass
class Issuer:
    """A local authorization server: RSA keys, a JWKS endpoint and a token mint."""

    jwks_url: str = ""
    keys: dict[str, Any] = field(default_factory=dict)  # kid -> private key
    published: list[str] = field(default_factory=list)  # kids in the JWKS
    fetches: int = 0

    def add_key(self, kid: str, publish: bool = True, kind: str = "RSA") -> None:
        if kind == "EC":
            self.keys[kid] = ec.generate_private_key(ec.SECP256R1())
        else:
            self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if publish:
            self.published.append(kid)

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid in self.published:
            key = self.keys[kid]
            if isinstance(key, ec.EllipticCurvePrivateKey):
                jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
                keys.append({**jwk, "kid": kid, "use": "sig", "alg": "ES256"})
            else:
                jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
                keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return {"keys": keys}

    def token(self, kid: str = "k1", alg: str = "RS256", **claims: Any) -> str:
        now = int(time.time())
        body = {
            "iss": ISSUER,
            "sub": "alice",
            "aud": f"{PUBLIC}/mcp",
            "iat": now,
            "exp": now + 300,
            "scope": SCOPE,
            **claims,
        }
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, self.keys[kid], algorithm=alg, headers={"kid": kid})


@pytest.fixture
async def issuer(aiohttp_server: AiohttpServer) -> Issuer:
    found = Issuer()
    found.add_key("k1")
    found.add_key("rogue", publish=False)  # signs tokens the JWKS does not vouch for

    async def serve(request: web.Request) -> web.Response:
        found.fetches += 1
        return web.json_response(found.jwks())

    app = web.Application()
    app.router.add_get("/jwks.json", serve)
    server = await aiohttp_server(app)
    found.jwks_url = f"http://127.0.0.1:{server.port}/jwks.json"
    return found


async def oauth_gateway(gateway: GatewayFactory, jwks_url: str, **extra: Any) -> RunningGateway:
    return await gateway(
        [example_stdio()],
        oauth_issuer=ISSUER,
        oauth_jwks_url=jwks_url,
        oauth_scopes=[SCOPE],
        public_url=PUBLIC,
        **extra,
    )


async def test_protected_resource_metadata(
    gateway: GatewayFactory, issuer: Issuer, http: aiohttp.ClientSession
) -> None:
    gw = await oauth_gateway(gateway, issuer.jwks_url)
    well_known = f"{gw.url}/.well-known/oauth-protected-resource"
    for path, resource in [
        ("/gw/mcp", f"{PUBLIC}/mcp"),  # RFC 9728 §3.1: well-known, then the resource's path
        ("/mcp", f"{PUBLIC}/mcp"),  # a proxy that strips the mount path
        ("/gw/servers/example/http", f"{PUBLIC}/servers/example/http"),
        ("", PUBLIC),
    ]:
        async with http.get(well_known + path) as response:
            assert response.status == 200, path
            body = await response.json()
        assert body["resource"] == resource
        assert body["authorization_servers"] == [ISSUER]
        assert body["scopes_supported"] == [SCOPE]
        assert body["bearer_methods_supported"] == ["header"]
    async with http.get(well_known + "/gw/nothing-here") as response:
        assert response.status == 404


async def test_a_401_names_the_metadata(
    gateway: GatewayFactory, issuer: Issuer, http: aiohttp.ClientSession
) -> None:
    gw = await oauth_gateway(gateway, issuer.jwks_url)
    async with http.post(f"{gw.url}/mcp", json={}, headers={"Accept": ACCEPT_BOTH}) as response:
        assert response.status == 401
        challenge = response.headers["WWW-Authenticate"]
    metadata = "https://mcp.example.com/.well-known/oauth-protected-resource/gw/mcp"
    assert challenge == f'Bearer resource_metadata="{metadata}", scope="{SCOPE}"'


async def test_sdk_client_with_a_valid_token(gateway: GatewayFactory, issuer: Issuer) -> None:
    gw = await oauth_gateway(gateway, issuer.jwks_url)
    headers = {"Authorization": f"Bearer {issuer.token()}"}
    async with (
        create_mcp_http_client(headers=headers) as client,
        streamable_http_client(f"{gw.url}/mcp", http_client=client) as (read, write, _),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        assert "ok" in str((await session.call_tool("echo", {"text": "ok"})).content)
        [record] = await gw.hub.stores.sessions.list(10)
    assert record.principal == f"oauth:{ISSUER}#alice"


BAD_TOKENS: dict[str, Callable[[Issuer], str]] = {
    "expired": lambda i: i.token(exp=int(time.time()) - 3600),
    "not-yet-valid": lambda i: i.token(nbf=int(time.time()) + 3600),
    "other-audience": lambda i: i.token(aud="https://other.example.com/mcp"),
    "no-audience": lambda i: i.token(aud=None),
    "other-issuer": lambda i: i.token(iss="https://evil.test"),
    "no-expiry": lambda i: i.token(exp=None),
    "unpublished-key": lambda i: i.token(kid="rogue"),
    "hs256-with-public-key": lambda i: jwt.encode(
        {"iss": ISSUER, "aud": f"{PUBLIC}/mcp", "exp": int(time.time()) + 60, "sub": "x"},
        "k1-public-key-used-as-an-hmac-secret-here",
        algorithm="HS256",
        headers={"kid": "k1"},
    ),
    "alg-none": lambda i: jwt.encode(
        {"iss": ISSUER, "aud": f"{PUBLIC}/mcp", "exp": int(time.time()) + 60},
        "",
        algorithm="none",
        headers={"kid": "k1"},
    ),
    "tampered": lambda i: i.token()[:-4] + "AAAA",
    "not-a-jwt": lambda i: "abc.def.ghi",
}


@pytest.mark.parametrize("case", list(BAD_TOKENS))
async def test_bad_tokens_get_401_invalid_token(
    gateway: GatewayFactory, issuer: Issuer, http: aiohttp.ClientSession, case: str
) -> None:
    gw = await oauth_gateway(gateway, issuer.jwks_url)
    token = BAD_TOKENS[case](issuer)
    client = raw(http, f"{gw.url}/mcp", {"Authorization": f"Bearer {token}"})
    async with http.post(
        client.url, json=client.request("tools/list"), headers=client.headers()
    ) as response:
        assert response.status == 401
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
        assert (await response.json())["error"]["code"] == UNAUTHORIZED
    assert len(gw.hub) == 0


def signed(alg: str, kid: str, key: Any) -> str:
    """A token with good claims whose header says ``alg`` and ``kid``, signed with ``key``."""
    claims = {"iss": ISSUER, "aud": f"{PUBLIC}/mcp", "exp": int(time.time()) + 60, "sub": "x"}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


#: Header permutations whose ``alg`` does not fit the key ``kid`` names (issue
#: #15: each was a 500, ``TypeError: Expecting a PEM-formatted key``).
MISFIT_TOKENS: dict[str, Callable[[Issuer], str]] = {
    "es256-with-rsa-kid": lambda i: signed("ES256", "k1", i.keys["e1"]),
    "rs256-with-ec-kid": lambda i: signed("RS256", "e1", i.keys["k1"]),
    "ps256-with-ec-kid": lambda i: signed("PS256", "e1", i.keys["k1"]),
    "hs256-with-rsa-kid": lambda i: signed("HS256", "k1", "an-hmac-secret-of-32-bytes-or-more!"),
    "hs256-with-ec-kid": lambda i: signed("HS256", "e1", "an-hmac-secret-of-32-bytes-or-more!"),
    "eddsa-with-rsa-kid": lambda i: signed("EdDSA", "k1", Ed25519PrivateKey.generate()),
}


@pytest.mark.parametrize("case", list(MISFIT_TOKENS))
async def test_a_token_whose_alg_does_not_fit_its_key_gets_401(
    gateway: GatewayFactory, issuer: Issuer, http: aiohttp.ClientSession, case: str
) -> None:
    issuer.add_key("e1", kind="EC")
    algorithms = ["RS256", "PS256", "ES256", "HS256", "EdDSA"]  # every family allowed
    gw = await oauth_gateway(gateway, issuer.jwks_url, oauth_algorithms=algorithms)
    # The EC key itself works: only the mismatch is refused.
    good = raw(http, f"{gw.url}/mcp", {"Authorization": f"Bearer {issuer.token('e1', 'ES256')}"})
    assert (await good.post(good.request("ping"))).status == 400  # authorised; no session yet
    client = raw(http, f"{gw.url}/mcp", {"Authorization": f"Bearer {MISFIT_TOKENS[case](issuer)}"})
    reply = await client.post(client.request("tools/list"))
    assert (reply.status, reply.error_code) == (401, UNAUTHORIZED)
    assert 'error="invalid_token"' in reply.headers["WWW-Authenticate"]


async def test_a_token_without_the_scope_gets_403(
    gateway: GatewayFactory, issuer: Issuer, http: aiohttp.ClientSession
) -> None:
    gw = await oauth_gateway(gateway, issuer.jwks_url)
    headers = {"Authorization": f"Bearer {issuer.token(scope='other')}", "Accept": ACCEPT_BOTH}
    async with http.post(f"{gw.url}/mcp", json={}, headers=headers) as response:
        assert response.status == 403
        challenge = response.headers["WWW-Authenticate"]
    assert 'error="insufficient_scope"' in challenge
    assert f'scope="{SCOPE}"' in challenge


async def test_configured_audience_replaces_the_endpoint_url(
    gateway: GatewayFactory, issuer: Issuer, http: aiohttp.ClientSession
) -> None:
    gw = await oauth_gateway(gateway, issuer.jwks_url, oauth_audience=["api://mcp"])
    for audience, status in [("api://mcp", 200), (f"{PUBLIC}/mcp", 401)]:
        client = raw(
            http, f"{gw.url}/mcp", {"Authorization": f"Bearer {issuer.token(aud=audience)}"}
        )
        reply = await client.post(client.request("ping"))
        assert reply.status in (status, 400), reply  # 400: authorised, but no session yet
        assert (reply.status == 401) == (status == 401)


async def test_a_rotated_key_is_fetched_once(
    gateway: GatewayFactory, issuer: Issuer, http: aiohttp.ClientSession
) -> None:
    gw = await oauth_gateway(gateway, issuer.jwks_url)
    alice = raw(http, f"{gw.url}/mcp", {"Authorization": f"Bearer {issuer.token()}"})
    await alice.initialize()
    assert issuer.fetches == 1
    issuer.add_key("k2")  # the issuer rotates; the gateway's cached JWKS lacks k2
    alice = raw(http, f"{gw.url}/mcp", {"Authorization": f"Bearer {issuer.token(kid='k2')}"})
    await alice.initialize()
    assert issuer.fetches == 2
    # Unknown kids do not make the gateway hammer the issuer.
    for n in range(5):
        issuer.add_key(f"unpublished-{n}", publish=False)
        token = issuer.token(kid=f"unpublished-{n}")
        client = raw(http, f"{gw.url}/mcp", {"Authorization": f"Bearer {token}"})
        assert (await client.post(client.request("ping"))).status == 401
    assert issuer.fetches == 2


async def test_an_unreachable_jwks_is_a_503_not_a_401(
    gateway: GatewayFactory, issuer: Issuer, http: aiohttp.ClientSession
) -> None:
    gw = await oauth_gateway(gateway, f"http://127.0.0.1:{free_port()}/jwks.json")
    client = raw(http, f"{gw.url}/mcp", {"Authorization": f"Bearer {issuer.token()}"})
    reply = await client.post(client.request("ping"))
    assert (reply.status, reply.error_code) == (503, UNAUTHORIZED)


@dataclass
class SlowJwks:
    """A JWKS endpoint that holds every fetch until released (or answers 500), counting them."""

    url: str = ""
    fetches: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    fetched: asyncio.Event = field(default_factory=asyncio.Event)
    failing: bool = False


@pytest.fixture
async def slow_jwks(aiohttp_server: AiohttpServer, issuer: Issuer) -> SlowJwks:
    slow = SlowJwks()

    async def serve(request: web.Request) -> web.Response:
        slow.fetches += 1
        slow.fetched.set()
        if slow.failing:
            return web.Response(status=500)
        async with asyncio.timeout(60):  # a bound for the test, far past its own
            await slow.release.wait()
        return web.json_response(issuer.jwks())

    app = web.Application()
    app.router.add_get("/jwks.json", serve)
    server = await aiohttp_server(app)
    slow.url = f"http://127.0.0.1:{server.port}/jwks.json"
    return slow


FORGED = 40  # concurrent well-formed tokens signed by a key the issuer never published


async def test_a_slow_jwks_is_fetched_once_and_stalls_no_one_else(
    gateway: GatewayFactory,
    issuer: Issuer,
    slow_jwks: SlowJwks,
    procs: ProcFactory,
    http: aiohttp.ClientSession,
) -> None:
    """Issue #15: forged tokens each fetched the JWKS on the default executor, which
    aiohttp's DNS lookups share, so an API-key client's initialize stalled for 30 s."""
    _, upstream = await start_fixture_http(procs)
    upstream = upstream.replace("127.0.0.1", "localhost")  # resolved on the default executor
    gw = await gateway(
        [StreamableHttpServer(name="remote", url=upstream, type="streamable-http")],
        api_keys=SecretStr(KEYS),
        oauth_issuer=ISSUER,
        oauth_jwks_url=slow_jwks.url,
        oauth_scopes=[SCOPE],
        public_url=PUBLIC,
        oauth_jwks_timeout=30.0,  # the issuer is slow, not down
    )
    url = f"{gw.url}/mcp"
    for n in range(FORGED):
        issuer.add_key(f"forged-{n}", publish=False)
    forged = [
        raw(http, url, {"Authorization": f"Bearer {issuer.token(kid=f'forged-{n}')}"})
        for n in range(FORGED)
    ]
    attempts = [asyncio.ensure_future(c.post(c.request("ping"))) for c in forged]
    try:
        async with asyncio.timeout(10):
            await slow_jwks.fetched.wait()
        alice = raw(http, url, ALICE)
        async with asyncio.timeout(10):  # while all of them wait for the JWKS
            await alice.initialize()
            assert (await alice.post(alice.request("tools/list"))).status == 200
        assert not any(a.done() for a in attempts)  # still held by the issuer
        assert slow_jwks.fetches == 1  # one fetch in flight for all of them
    finally:
        slow_jwks.release.set()
        async with asyncio.timeout(30):
            replies = await asyncio.gather(*attempts)
    assert {r.status for r in replies} == {401}
    assert slow_jwks.fetches <= 2  # then at most one refresh for the unknown kids


async def test_a_failed_jwks_fetch_is_shared_and_remembered_with_retry_after(
    gateway: GatewayFactory, issuer: Issuer, slow_jwks: SlowJwks, http: aiohttp.ClientSession
) -> None:
    slow_jwks.failing = True
    gw = await oauth_gateway(gateway, slow_jwks.url, oauth_jwks_failure_ttl=60.0)
    url = f"{gw.url}/mcp"
    clients = [raw(http, url, {"Authorization": f"Bearer {issuer.token()}"}) for _ in range(FORGED)]
    async with asyncio.timeout(30):
        replies = await asyncio.gather(*(c.post(c.request("ping")) for c in clients))
        assert {(r.status, r.error_code) for r in replies} == {(503, UNAUTHORIZED)}
        assert all(1 <= int(r.headers["Retry-After"]) <= 60 for r in replies)
        assert slow_jwks.fetches == 1
        slow_jwks.failing = False  # back, but the failure is remembered for its TTL
        again = await clients[0].post(clients[0].request("ping"))
    assert (again.status, again.error_code) == (503, UNAUTHORIZED)
    assert again.headers["Retry-After"]
    assert slow_jwks.fetches == 1


async def test_oauth_sessions_are_bound_to_the_subject(
    gateway: GatewayFactory, issuer: Issuer, http: aiohttp.ClientSession
) -> None:
    gw = await oauth_gateway(gateway, issuer.jwks_url)
    alice = raw(http, f"{gw.url}/mcp", {"Authorization": f"Bearer {issuer.token()}"})
    await alice.initialize()
    mallory = raw(http, f"{gw.url}/mcp", {"Authorization": f"Bearer {issuer.token(sub='m')}"})
    mallory.session_id = alice.session_id
    reply = await mallory.post(mallory.request("tools/list"))
    assert (reply.status, reply.error_code) == (404, SESSION_NOT_FOUND)
    # A fresh token of the same subject is the same principal.
    alice2 = raw(http, f"{gw.url}/mcp", {"Authorization": f"Bearer {issuer.token(jti='x')}"})
    alice2.session_id = alice.session_id
    assert (await alice2.post(alice2.request("tools/list"))).status == 200


async def test_users_and_clients_are_different_principals(
    gateway: GatewayFactory, issuer: Issuer, http: aiohttp.ClientSession
) -> None:
    """A token without ``sub`` (client credentials) names its client, apart from every
    user: a client ``alice`` is not the user ``alice``, nor a user ``client:alice``
    (issue #15: both were ``oauth:ISS#alice``)."""
    gw = await oauth_gateway(gateway, issuer.jwks_url)
    tokens = {
        "user alice": issuer.token(sub="alice"),
        "client alice": issuer.token(sub=None, client_id="alice"),
        "azp alice": issuer.token(sub=None, azp="alice"),
        "user client:alice": issuer.token(sub="client:alice"),
        "user sub:client:alice": issuer.token(sub="sub:client:alice"),
    }
    clients = {}
    for who, token in tokens.items():
        clients[who] = raw(http, f"{gw.url}/mcp", {"Authorization": f"Bearer {token}"})
        await clients[who].initialize()
    stored = {r.session_id: r.principal for r in await gw.hub.stores.sessions.list(10)}
    principals = {who: stored[str(c.session_id)] for who, c in clients.items()}
    assert principals == {
        "user alice": f"oauth:{ISSUER}#alice",
        "client alice": f"oauth:{ISSUER}#client:alice",
        "azp alice": f"oauth:{ISSUER}#client:alice",  # azp names the client too
        "user client:alice": f"oauth:{ISSUER}#sub:client:alice",
        "user sub:client:alice": f"oauth:{ISSUER}#sub:sub:client:alice",
    }
    for who in clients:
        for other, session in clients.items():
            if principals[other] == principals[who]:
                continue
            stranger = raw(http, f"{gw.url}/mcp", {"Authorization": f"Bearer {tokens[who]}"})
            stranger.session_id = session.session_id
            reply = await stranger.post(stranger.request("tools/list"))
            assert (reply.status, reply.error_code) == (404, SESSION_NOT_FOUND), (who, other)


def test_oauth_mode_needs_a_public_url_and_jwks() -> None:
    with pytest.raises(ValueError, match="oauth_jwks_url and public_url"):
        Settings(oauth_issuer=ISSUER, oauth_jwks_url="http://127.0.0.1/jwks.json")


# -- CORS ------------------------------------------------------------------------------


async def test_cors_preflight_and_exposed_headers(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway([example_stdio()])
    origin = "http://localhost:6274"  # the MCP inspector's page
    preflight = {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, mcp-session-id, mcp-protocol-version, "
        "authorization, last-event-id",
    }
    async with http.options(f"{gw.url}/mcp", headers=preflight) as response:
        assert response.status == 200
        allowed = response.headers["Access-Control-Allow-Headers"].lower()
        assert response.headers["Access-Control-Allow-Origin"] in (origin, "*")
        assert "POST" in response.headers["Access-Control-Allow-Methods"]
    for name in ("content-type", "mcp-session-id", "mcp-protocol-version", "authorization"):
        assert name in allowed
    client = RawClient(http, f"{gw.url}/mcp")
    headers = client.headers(Origin=origin)
    message = client.request(
        "initialize",
        {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "b"}},
    )
    async with http.post(client.url, json=message, headers=headers) as response:
        assert response.status == 200
        exposed = response.headers["Access-Control-Expose-Headers"].lower()
        assert response.headers["Access-Control-Allow-Origin"] in (origin, "*")
    for name in ("mcp-session-id", "mcp-protocol-version", "www-authenticate", "last-event-id"):
        assert name in exposed
    async with http.post(
        client.url, json=message, headers=client.headers(Origin="https://evil.example")
    ) as response:
        assert response.status == 403


# -- no token passthrough ---------------------------------------------------------


@dataclass
class HeaderRecorder:
    """A minimal Streamable HTTP MCP server (JSON replies) that records request headers."""

    seen: list[dict[str, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(dict(request.headers))
        if request.method != "POST":
            return web.Response(status=405)
        message = await request.json()
        if "id" not in message:
            return web.Response(status=202)
        result: dict[str, Any] = {"tools": []}
        if message["method"] == "initialize":
            result = {
                "protocolVersion": message["params"]["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "recorder", "version": "0"},
            }
        body = {"jsonrpc": "2.0", "id": message["id"], "result": result}
        return web.json_response(body, headers={"Mcp-Session-Id": "upstream-1"})


@pytest.mark.parametrize(
    ("configured", "forward", "expected"),
    [
        ({"Authorization": "Bearer upstream-credential"}, (), "Bearer upstream-credential"),
        ({}, (), None),
        # Opt-in passthrough: the server's config lists the header by name.
        ({"Authorization": "Bearer upstream-credential"}, ("authorization",), "Bearer tok-alice"),
    ],
    ids=["configured-credential", "nothing", "forward_headers"],
)
async def test_client_credentials_reach_the_upstream_only_when_listed(
    gateway: GatewayFactory,
    aiohttp_server: AiohttpServer,
    http: aiohttp.ClientSession,
    configured: dict[str, str],
    forward: tuple[str, ...],
    expected: str | None,
) -> None:
    recorder = HeaderRecorder()
    app = web.Application()
    app.router.add_route("*", "/mcp", recorder.handle)
    upstream = await aiohttp_server(app)
    spec = StreamableHttpServer(
        name="up",
        url=f"http://127.0.0.1:{upstream.port}/mcp",
        type="http",
        headers=configured,
        forward_headers=forward,
    )
    gw = await gateway([spec], api_keys=SecretStr(KEYS))
    alice = raw(http, f"{gw.url}/mcp", {**ALICE, "Cookie": "c=1", "X-Other": "o"})
    await alice.initialize()
    assert (await alice.post(alice.request("tools/list"))).status == 200
    assert len(recorder.seen) >= 3  # initialize, initialized, tools/list
    for seen in recorder.seen:
        assert seen.get("Authorization") == expected
        assert "Cookie" not in seen
        assert "X-Other" not in seen
        assert ("tok-alice" in json.dumps(seen)) == (expected == "Bearer tok-alice")


@pytest.mark.parametrize("name", ["Host", "mcp-session-id", "Content-Length", "Bad Name"])
def test_transport_headers_cannot_be_forwarded(name: str) -> None:
    with pytest.raises(ValueError, match="cannot be forwarded"):
        StreamableHttpServer(url="http://127.0.0.1/mcp", forward_headers=(name,))


@dataclass
class LegacyRecorder:
    """A minimal legacy HTTP+SSE MCP server (spec 2024-11-05) that records request headers."""

    seen: list[dict[str, str]] = field(default_factory=list)
    outbox: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(dict(request.headers))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"event: endpoint\ndata: /messages?session_id=1\n\n")
        while True:
            message = await self.outbox.get()
            await response.write(f"event: message\ndata: {json.dumps(message)}\n\n".encode())

    async def post(self, request: web.Request) -> web.Response:
        self.seen.append(dict(request.headers))
        message = await request.json()
        if "id" in message:
            result: dict[str, Any] = {"tools": []}
            if message["method"] == "initialize":
                result = {
                    "protocolVersion": "2024-11-05",
                    "capabilities": {"tools": {}},
                    "serverInfo": {"name": "legacy-recorder", "version": "0"},
                }
            self.outbox.put_nowait({"jsonrpc": "2.0", "id": message["id"], "result": result})
        return web.Response(status=202)


async def test_forward_headers_reach_a_legacy_sse_upstream(
    gateway: GatewayFactory, aiohttp_server: AiohttpServer, http: aiohttp.ClientSession
) -> None:
    recorder = LegacyRecorder()
    app = web.Application()
    app.router.add_get("/sse", recorder.stream)
    app.router.add_post("/messages", recorder.post)
    upstream = await aiohttp_server(app)
    spec = SseServer(
        name="old",
        url=f"http://127.0.0.1:{upstream.port}/sse",
        type="sse",
        forward_headers=("Authorization", "X-Tenant"),
    )
    gw = await gateway([spec], api_keys=SecretStr(KEYS))
    alice = raw(http, f"{gw.url}/mcp", {**ALICE, "X-Tenant": "acme"})
    await alice.initialize("2024-11-05")
    assert (await alice.post(alice.request("tools/list"))).status == 200
    assert len(recorder.seen) >= 4  # GET /sse, then initialize, initialized, tools/list
    for seen in recorder.seen:
        assert (seen.get("Authorization"), seen.get("X-Tenant")) == ("Bearer tok-alice", "acme")
