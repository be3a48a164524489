"""A bounded fuzz of every front door over loopback (issue #5 "Bad input").

A real gateway (subprocess, stdio example upstream) gets at least
:data:`TOTAL` malformed or hostile requests from a seeded RNG
(:mod:`tests.fuzzcases`), :data:`CONCURRENCY` at a time, over raw sockets
(requests broken at the HTTP level) and aiohttp. Then:

- no answer has a status of 500 or more, and the gateway logged neither a
  5xx nor a traceback, including for requests cut short by the client;
- every 4xx JSON answer on an MCP route is a JSON-RPC error object;
- nothing hangs: every request ends within :data:`REQUEST_TIMEOUT`, except
  GET streams the gateway legitimately keeps open, which the fuzzer reads
  for :data:`STREAM_WINDOW` and closes;
- no answer carries session B's marker: the fuzzer presents only session A's
  id (or made-up ones), with Last-Event-IDs of B's streams among others;
  B itself still gets its marker back by resuming (so the check has teeth);
- a foreign-Host/Origin DELETE of session A never ends it: A still answers;
- the process is alive and serves an MCP SDK client normally afterwards.

A second fuzz (:func:`test_fuzz_every_route_with_credentials`, issue #15)
aims :class:`tests.fuzzcases.RouteFuzzer` at every route of a gateway with
API keys, OAuth and an admin token: probes, metrics, admin, RFC 9728
metadata and both front doors, with good and bad credentials, JWT header
permutations (``alg`` against each ``kid``'s key type, odd ``alg``/``kid``
values, broken structure), header bytes outside ASCII, and ``initialize``
for legacy SSE servers whose ``endpoint`` URLs are malformed. No 500; those
initializes get 502 with -32031; only the admin token opens ``/admin``; no
answer or log line carries the API key or the admin token.

Run with ``pytest -s`` to see the counts by route and by status.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from secrets import token_hex
from typing import Any, Final
from urllib.parse import quote

import aiohttp
import jwt
import yarl
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client
from multidict import CIMultiDict

from bridge import errors
from bridge.events.ids import session_tag
from tests.conftest import REPO, GatewayFactory, Proc, ProcFactory, example_stdio, start_gateway
from tests.fuzzcases import (
    DEEP_PREFIX,
    MALFORMED_ENDPOINTS,
    Case,
    Fuzzer,
    RouteFuzzer,
    RouteTargets,
    Targets,
    jwt_permutations,
)
from tests.rawclient import RawClient, read_events

SEED: Final = 20260505
TOTAL: Final = 10_000  # requests at least
TIME_BOUND: Final = 60.0  # seconds for the whole fuzz; fewer than TOTAL by then fails
REQUEST_TIMEOUT: Final = 10.0  # seconds for one request; beyond is a hang
STREAM_WINDOW: Final = 0.05  # seconds an accepted GET stream is read before closing it
CONCURRENCY: Final = 16
BODY_LIMIT: Final = 32 * 1024
SERVER: Final = "default"  # the name --stdio gives its server
EXAMPLE: Final = f"{sys.executable} -m bridge.examples.server"
BOUND: Final = 30.0  # seconds for setup and final checks
# Framing aiohttp does itself; raw-socket cases cover getting it wrong.
FRAMING: Final = frozenset(
    {"content-length", "transfer-encoding", "connection", "expect", "upgrade"}
)
SKIP_AUTO: Final = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


@dataclass
class Answer:
    status: int | None  # None: the connection ended without a response
    content_type: str = ""
    body: bytes = b""
    open_stream: bool = False  # a GET stream the fuzzer closed itself


@dataclass
class Tally:
    sent: int = 0
    by_route: Counter[str] = field(default_factory=Counter)
    by_status: Counter[str] = field(default_factory=Counter)
    by_channel: Counter[str] = field(default_factory=Counter)
    checks: Counter[str] = field(default_factory=Counter)  # what the answers were checked for
    failures: list[str] = field(default_factory=list)

    def fail(self, case: Case, why: str) -> None:
        head, _, body = case.wire().partition(b"\r\n\r\n")
        self.failures.append(f"{why}: {case.route} {head[:2000]!r} + {body[:200]!r}")


# -- sending -----------------------------------------------------------------


async def read_window(read: Callable[[], Awaitable[bytes]]) -> bytes:
    """What an open stream sends within STREAM_WINDOW (a replay comes at once)."""
    data = b""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(STREAM_WINDOW):
            while chunk := await read():
                data += chunk
    return data


def dechunk(raw: bytes) -> bytes:
    """The payload of chunked transfer coding, as far as it is complete."""
    out = b""
    while b"\r\n" in raw:
        size_line, _, rest = raw.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            break
        if size == 0 or len(rest) < size:
            out += rest[:size]
            break
        out, raw = out + rest[:size], rest[size + 2 :]
    return out


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # no trailers from aiohttp
            return body
        body += (await reader.readexactly(size + 2))[:size]


async def read_answer(reader: asyncio.StreamReader, method: str) -> Answer:
    while True:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        except (asyncio.IncompleteReadError, ConnectionResetError):
            return Answer(None)
        status_line, *lines = head.split("\r\n")
        status = int(status_line.split()[1])
        if not (100 <= status < 200) or status == 101:
            break  # 100 Continue and such come before the real answer
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if method == "HEAD":  # anything after the head is a stray body (or a stream)
        return Answer(status, content_type, await read_window(lambda: reader.read(65536)))
    if status in (101, 204, 304):
        return Answer(status, content_type)
    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    if content_type == "text/event-stream" and status == 200 and method != "POST":
        raw = await read_window(lambda: reader.read(65536))
        return Answer(status, content_type, dechunk(raw) if chunked else raw, open_stream=True)
    if chunked:
        body = await read_chunked(reader)
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        body = await reader.read()  # until the server closes
    return Answer(status, content_type, body)


async def send_raw(port: int, case: Case) -> Answer:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(case.wire())
            await writer.drain()
        if case.truncated:  # hang up mid-body: the gateway must cope, nobody reads
            return Answer(None)
        try:
            return await read_answer(reader, case.sent_method)
        except (asyncio.IncompleteReadError, ConnectionResetError):
            return Answer(None)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def send_aiohttp(http: aiohttp.ClientSession, base: str, case: Case) -> Answer:
    headers = CIMultiDict((n, v) for n, v in case.headers if n.lower() not in FRAMING)
    url = yarl.URL(base + case.target, encoded=True)
    async with http.request(
        case.method,
        url,
        headers=headers,
        data=case.body or None,
        skip_auto_headers=SKIP_AUTO,
        allow_redirects=False,
    ) as response:
        content_type = response.content_type
        if content_type == "text/event-stream" and response.status == 200 and case.method != "POST":
            body = await read_window(response.content.readany)
            response.close()
            return Answer(response.status, content_type, body, open_stream=True)
        return Answer(response.status, content_type, await response.read())


# -- checking ------------------------------------------------------------------


def is_jsonrpc_error(body: bytes) -> bool:
    try:
        value = json.loads(body)
    except ValueError:
        return False
    error = value.get("error") if isinstance(value, dict) else None
    return (
        value.get("jsonrpc") == "2.0"
        and "id" in value
        and isinstance(error, dict)
        and type(error.get("code")) is int
        and isinstance(error.get("message"), str)
    )


def check(tally: Tally, case: Case, answer: Answer, marker: bytes, b_ids: set[str]) -> None:
    tally.by_route[case.route] += 1
    if any(n.lower() == "last-event-id" and v in b_ids for n, v in case.headers):
        tally.checks["requests presenting a Last-Event-ID of session B"] += 1
    if answer.status is None:
        tally.by_status["hung up by client" if case.truncated else "no response"] += 1
        return
    tally.by_status[str(answer.status) + (" (open stream)" if answer.open_stream else "")] += 1
    if answer.status >= 500:
        tally.fail(case, f"status {answer.status} {answer.body[:200]!r}")
    if marker in answer.body:
        tally.fail(case, "session B's marker leaked")
    # aiohttp's own plain-text 400 for a request it cannot parse ignores HEAD;
    # the gateway's answers must not.
    if case.sent_method == "HEAD" and answer.body and answer.content_type != "text/plain":
        tally.fail(case, f"a HEAD answer with a body: {answer.body[:100]!r}")
    if case.mcp and 400 <= answer.status < 500 and answer.content_type == "application/json":
        tally.checks["4xx JSON bodies checked for JSON-RPC errors"] += 1
        if answer.body and not is_jsonrpc_error(answer.body):
            tally.fail(case, f"4xx JSON that is no JSON-RPC error: {answer.body[:200]!r}")


async def fuzz(base: str, fuzzer: Fuzzer, marker: bytes, b_ids: set[str]) -> tuple[Tally, float]:
    port = yarl.URL(base).port
    assert port is not None
    tally = Tally()
    connector = aiohttp.TCPConnector(limit=CONCURRENCY, force_close=True)
    started = time.monotonic()
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(case: Case, via_aiohttp: bool) -> Answer:
            if via_aiohttp:
                try:
                    answer = await send_aiohttp(http, base, case)
                    tally.by_channel["aiohttp"] += 1
                    return answer
                except (ValueError, aiohttp.InvalidURL):
                    pass  # the client refuses to send it: send it raw
            tally.by_channel["raw socket"] += 1
            return await send_raw(port, case)

        async def worker() -> None:
            while tally.sent < TOTAL and time.monotonic() - started < TIME_BOUND:
                case = fuzzer.case()
                # HEAD goes raw, where an answer's stray body bytes can be seen.
                via_aiohttp = case.raw is None and case.method != "HEAD" and fuzzer.chance(0.4)
                tally.sent += 1
                try:
                    async with asyncio.timeout(REQUEST_TIMEOUT):
                        answer = await one(case, via_aiohttp)
                except TimeoutError:
                    tally.by_route[case.route] += 1
                    tally.by_status["timeout"] += 1
                    tally.fail(case, "no answer within REQUEST_TIMEOUT")
                    continue
                except aiohttp.ClientError as exc:  # e.g. the server closed unanswered
                    tally.by_route[case.route] += 1
                    tally.by_status[f"client error {type(exc).__name__}"] += 1
                    if isinstance(exc, aiohttp.ClientResponseError):  # an answer it cannot parse
                        tally.fail(case, f"unreadable answer: {exc}")
                    continue
                check(tally, case, answer, marker, b_ids)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return tally, time.monotonic() - started


# -- sessions --------------------------------------------------------------------


def call(client: RawClient, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return client.request("tools/call", {"name": tool, "arguments": arguments})


async def event_ids_of_a_call(client: RawClient, text: str) -> list[str]:
    """Run echo(text) on ``client``'s session; the SSE event ids of its reply stream."""
    message = call(client, "echo", {"text": text})
    async with client.http.post(client.url, json=message, headers=client.headers()) as response:
        assert response.status == 200
        events, raw = await read_events(response)
    assert text.encode() in raw
    return [e.id for e in events if e.id]


@dataclass
class LegacyClient:
    """A legacy SSE connection kept open (and drained) for the whole fuzz."""

    connection_id: str
    seen: bytearray
    task: asyncio.Task[None]


@contextlib.asynccontextmanager
async def legacy_client(http: aiohttp.ClientSession, base: str) -> AsyncIterator[LegacyClient]:
    response = await http.get(f"{base}/sse", headers={"Accept": "text/event-stream"})
    assert response.status == 200
    endpoint = b""
    while b"\n\n" not in endpoint.replace(b"\r\n", b"\n"):
        endpoint += await response.content.readany()
    path = next(
        line.partition(":")[2].strip()
        for line in endpoint.decode().splitlines()
        if line.startswith("data:")
    )
    connection_id = yarl.URL(path).query["session_id"]
    seen = bytearray()

    async def drain() -> None:
        while chunk := await response.content.readany():
            seen.extend(chunk)

    task = asyncio.ensure_future(drain())
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2024-11-05",
            "capabilities": {},
            "clientInfo": {"name": "fuzz-legacy", "version": "0"},
        },
    }
    url = f"{base}{path}"
    async with http.post(url, json=init) as posted:
        assert posted.status == 202
    async with http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}) as r:
        assert r.status == 202
    try:
        yield LegacyClient(connection_id, seen, task)
    finally:
        task.cancel()
        response.close()
        await asyncio.gather(task, return_exceptions=True)


def crafted_event_ids(a_ids: list[str], b_ids: list[str], a_session: str) -> list[str]:
    """Real ids of A and B, and B's streams and positions under A's tag, and the reverse."""
    tag_a = session_tag(a_session)
    crafted = [*a_ids, *b_ids]
    for b_id in b_ids:
        tag_b, stream, position = b_id.split(".")
        crafted += [
            f"{tag_a}.{stream}.{position}",
            f"{tag_a}.{stream}.0",
            f"{tag_b}.get.{position}",
        ]
    for a_id in a_ids:
        _, stream, position = a_id.split(".")
        crafted.append(f"{session_tag('not-' + a_session)}.{stream}.{position}")
    return [*crafted, f"{tag_a}.get.0", f"{tag_a}.get.1", f"{tag_a}.get.", f"{tag_a}.get.-1"]


async def gateway_ok(proc: Proc) -> None:
    """Nothing the gateway logged says it failed (a 5xx, a traceback)."""
    assert proc.process.returncode is None, "the gateway died"
    statuses = Counter(e.get("status") for e in proc.json_events("request"))
    print(f"gateway log: {sum(statuses.values())} requests by status {sorted(statuses.items())}")
    assert not [s for s in statuses if isinstance(s, int) and s >= 500], statuses
    print(
        f"gateway log: {len(proc.json_events('malformed_http_request'))} refused by the HTTP parser"
    )
    assert not proc.json_events("request_failed")
    tracebacks = [i for i, line in enumerate(proc.lines) if "Traceback" in line]
    assert not tracebacks, "\n".join(proc.lines[tracebacks[0] - 3 : tracebacks[0] + 40])


async def sdk_client_is_served(url: str) -> None:
    async with (
        streamable_http_client(url) as (read, write, _),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        tools = {t.name for t in (await session.list_tools()).tools}
        assert {"echo", "add"} <= tools
        result = await session.call_tool("echo", {"text": "after the fuzz"})
        assert [c.text for c in result.content if isinstance(c, types.TextContent)] == [
            "after the fuzz"
        ]


def report(tally: Tally, seconds: float) -> None:
    print(f"\nfuzz: {tally.sent} requests in {seconds:.1f} s ({tally.sent / seconds:.0f}/s)")
    print("by channel:", dict(tally.by_channel))
    print("checked:", dict(tally.checks))
    print("by status:")
    for status, count in sorted(tally.by_status.items()):
        print(f"  {status:>28} {count}")
    print("by route:")
    for route, count in sorted(tally.by_route.items()):
        print(f"  {route:>34} {count}")
    for failure in tally.failures[:20]:
        print("FAILURE", failure)


async def test_fuzz_front_doors(procs: ProcFactory) -> None:
    proc, base = await start_gateway(procs, "--stdio", EXAMPLE, "--max-body-bytes", str(BODY_LIMIT))
    marker = f"B-MARKER-{token_hex(16)}"
    async with aiohttp.ClientSession() as http:
        async with asyncio.timeout(BOUND):
            b = RawClient(http, f"{base}/mcp")
            await b.initialize()
            b_ids = await event_ids_of_a_call(b, marker)
            a = RawClient(http, f"{base}/mcp")
            await a.initialize("2025-03-26")  # batches allowed
            a2 = RawClient(http, f"{base}/servers/{SERVER}/http")
            await a2.initialize()
            assert a.session_id
            assert a2.session_id
            assert b.session_id
            a_ids = await event_ids_of_a_call(a2, "a-side") + await event_ids_of_a_call(a, "a")
        async with legacy_client(http, base) as legacy:
            targets = Targets(
                host=yarl.URL(base).raw_authority,
                server=SERVER,
                sessions=(a.session_id, a2.session_id),
                legacy_ids=(legacy.connection_id,),
                event_ids=tuple(crafted_event_ids(a_ids, b_ids, a2.session_id)),
            )
            fuzzer = Fuzzer(SEED, targets, BODY_LIMIT)
            tally, seconds = await fuzz(base, fuzzer, marker.encode(), set(b_ids))
            report(tally, seconds)
            assert marker.encode() not in legacy.seen
            assert not legacy.task.done(), "the legacy connection ended"
        assert tally.sent >= TOTAL, f"only {tally.sent} requests within {TIME_BOUND} s"
        assert not tally.failures, f"{len(tally.failures)} failures, first: {tally.failures[0]}"
        assert not [s for s in tally.by_status if s[:1] == "5"]
        assert tally.checks["requests presenting a Last-Event-ID of session B"] >= 100

        async with asyncio.timeout(BOUND):
            await gateway_ok(proc)
            for client in (a, a2, b):  # foreign DELETEs ended nothing
                assert (await client.post(client.request("ping"))).status == 200
            # B presenting its own id and event id does get its marker: the leak
            # check above would have seen it.
            headers = b.headers(Accept="text/event-stream", **{"Last-Event-ID": b_ids[0]})
            async with http.get(b.url, headers=headers) as resumed:
                assert resumed.status == 200
                _, raw = await read_events(resumed)
            assert marker.encode() in raw
            await sdk_client_is_served(f"{base}/mcp")
            await gateway_ok(proc)


# -- every route, with credentials -------------------------------------------------

ROUTE_TOTAL: Final = 4_000  # requests at least
ROUTE_TIME_BOUND: Final = 60.0  # seconds for the whole fuzz
ISSUER: Final = "https://issuer.fuzz"
PUBLIC: Final = "https://mcp.example.com/gw"
HOSTILE: Final = REPO / "tests" / "fixtures" / "hostile_upstream.py"
#: Every family, so that each alg/kid permutation reaches the key-type check.
ALGORITHMS: Final = ["RS256", "PS256", "ES256", "HS256", "EdDSA"]


@dataclass
class Secrets:
    api_key: str = field(default_factory=lambda: f"tok-{token_hex(16)}")
    admin: str = field(default_factory=lambda: f"admin-{token_hex(16)}")
    hmac: str = field(default_factory=lambda: token_hex(32))


async def jwks_url(aiohttp_server: AiohttpServer, keys: dict[str, Any]) -> str:
    """A local issuer's JWKS publishing the public half of ``keys`` (kid -> private key)."""
    published = []
    for kid, key in keys.items():
        if isinstance(key, ec.EllipticCurvePrivateKey):
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        else:
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        published.append({**jwk, "kid": kid, "use": "sig"})

    async def serve(request: web.Request) -> web.Response:
        return web.json_response({"keys": published})

    app = web.Application()
    app.router.add_get("/jwks.json", serve)
    server = await aiohttp_server(app)
    return f"http://127.0.0.1:{server.port}/jwks.json"


def check_route(
    tally: Tally, case: Case, credential: str, answer: Answer, secrets: Secrets
) -> None:
    """:func:`check`'s rules, but a hostile server's initialize must get 502 and -32031,
    only the admin token opens /admin, and no answer carries a secret."""
    tally.checks[f"credentials: {credential}"] += 1
    if case.route == "POST /servers/HOSTILE/mcp" and answer.status == 502:
        tally.by_route[case.route] += 1
        tally.by_status["502 (a hostile endpoint refused)"] += 1
        body = json.loads(answer.body)
        if body["error"]["code"] != errors.UPSTREAM_PROTOCOL_ERROR:
            tally.fail(case, f"502 with {body}")
        tally.checks["malformed endpoint URLs refused: 502, -32031"] += 1
        return
    check(tally, case, answer, secrets.api_key.encode(), set())
    if secrets.admin.encode() in answer.body:
        tally.fail(case, "the admin token leaked")
    admin = case.target.startswith("/admin/") and case.method in ("GET", "DELETE")
    if admin and answer.status in (200, 404) and answer.content_type == "application/json":
        tally.checks["admin answers (200, 404) to the admin token"] += 1
        if not credential.startswith("admin token"):
            tally.fail(case, f"/admin answered {answer.status} to {credential}")


async def test_fuzz_every_route_with_credentials(
    procs: ProcFactory, aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    """Every route of a gateway with API keys, OAuth and an admin token, with good and bad
    credentials, JWT header permutations, header bytes outside ASCII, and legacy SSE
    upstreams whose endpoint URLs are malformed (issue #15): no 500, nothing leaks."""
    secrets = Secrets()
    keys = {
        "k1": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "e1": ec.generate_private_key(ec.SECP256R1()),
    }
    jwks = await jwks_url(aiohttp_server, keys)
    tokens = jwt_permutations(ISSUER, f"{PUBLIC}/servers/{SERVER}/mcp", keys, secrets.hmac)
    hostile = await procs(sys.executable, HOSTILE)
    upstream = (await hostile.wait_for(r"listening on (http://\S+)", BOUND)).group(1)
    servers: dict[str, Any] = {SERVER: {"command": sys.executable, "args": EXAMPLE.split()[1:]}}
    for n, url in enumerate(MALFORMED_ENDPOINTS):
        servers[f"bad-{n}"] = {
            "url": f"{upstream}/legacy/endpoint-from-query?endpoint={quote(url, safe='')}",
            "type": "sse",
            "share": "none",
        }
    config = tmp_path / "servers.json"
    config.write_text(json.dumps({"mcpServers": servers}))
    proc, base = await start_gateway(
        procs, "--config", str(config), "--max-body-bytes", str(BODY_LIMIT),
        "--api-keys", f"fuzz:{secrets.api_key}", "--admin-token", secrets.admin,
        "--oauth-issuer", ISSUER, "--oauth-jwks-url", jwks, "--public-url", PUBLIC,
        env={"BRIDGE_OAUTH_ALGORITHMS": json.dumps(ALGORITHMS)},
    )  # fmt: skip
    good = {name: t for name, t in tokens.items() if name.startswith("good")}
    credentials = {
        "api key": (f"Bearer {secrets.api_key}", f"bearer  {secrets.api_key}"),
        "admin token": (f"Bearer {secrets.admin}",),
        "good JWT": tuple(f"Bearer {t}" for t in good.values()),
        "JWT permutation": tuple(f"Bearer {t}" for n, t in tokens.items() if n not in good),
        "wrong": ("Bearer wrong", "Basic dXNlcjpwYXNz", "", "Bearer", f"Bearer {secrets.admin}x",
                  f"Bearer {secrets.api_key} {secrets.api_key}", "Bearer " + "a" * 9000),
    }  # fmt: skip
    targets = RouteTargets(
        host=yarl.URL(base).raw_authority,
        server=SERVER,
        hostile=tuple(f"bad-{n}" for n in range(len(MALFORMED_ENDPOINTS))),
        credentials=credentials,
    )
    fuzzer = RouteFuzzer(SEED, targets, BODY_LIMIT)
    port = yarl.URL(base).port
    assert port is not None
    tally = Tally()
    started = time.monotonic()

    async def worker() -> None:
        while tally.sent < ROUTE_TOTAL and time.monotonic() - started < ROUTE_TIME_BOUND:
            case, credential = fuzzer.route_case()
            tally.sent += 1
            tally.by_channel["raw socket"] += 1
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    answer = await send_raw(port, case)
            except TimeoutError:
                tally.by_route[case.route] += 1
                tally.by_status["timeout"] += 1
                tally.fail(case, "no answer within REQUEST_TIMEOUT")
                continue
            check_route(tally, case, credential, answer, secrets)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    report(tally, time.monotonic() - started)
    assert tally.sent >= ROUTE_TOTAL, f"only {tally.sent} requests within {ROUTE_TIME_BOUND} s"
    assert not tally.failures, f"{len(tally.failures)} failures, first: {tally.failures[0]}"
    refused = tally.by_status["502 (a hostile endpoint refused)"]
    assert not [s for s in tally.by_status if s[:1] == "5" and not s.startswith("502 (")]
    assert refused >= 50  # the malformed endpoint URLs were met, not only 401s
    assert tally.checks["admin answers (200, 404) to the admin token"] >= 10
    permutations = sum(n for k, n in tally.checks.items() if "JWT permutation" in k)
    assert permutations >= 400
    # Every answer is in; a last request's log line comes after all of theirs.
    done = f"/fuzz-done-{token_hex(4)}"
    async with aiohttp.ClientSession() as http, http.get(base + done) as response:
        assert response.status == 404
    await proc.wait_for(f'"path": "{done}"', BOUND)
    assert proc.process.returncode is None, "the gateway died"
    statuses = Counter(e.get("status") for e in proc.json_events("request"))
    print(f"gateway log: {sum(statuses.values())} requests by status {sorted(statuses.items())}")
    assert [s for s in statuses if isinstance(s, int) and s >= 500] == [502]
    assert statuses[502] == refused
    assert not proc.json_events("request_failed")
    assert not [line for line in proc.lines if "Traceback" in line]
    assert not [line for line in proc.lines if secrets.admin in line or secrets.api_key in line]
    assert not proc.json_events("child_started")  # nobody initialized the stdio server


# -- what the fuzz found, pinned -------------------------------------------------


async def test_what_the_fuzz_found(gateway: GatewayFactory) -> None:
    """Each of these was a 500, a hang or a broken answer before (issue #5)."""
    base = (await gateway([example_stdio()], max_body_bytes=BODY_LIMIT)).url
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, f"{base}/mcp")
        await client.initialize()
        async with asyncio.timeout(BOUND):
            # HEAD ran the GET handler: it took the session's standalone stream
            # and wrote events into an answer that must have no body.
            async with http.head(client.url, headers=client.headers()) as head:
                assert head.status == 405
            async with http.get(client.url, headers=client.headers()) as get:
                assert get.status == 200  # the standalone stream is still free
            bodies = {
                "corrupt gzip": b"\x1f\x8b\x08\x00garbage",  # 500: RequestPayloadError
                "nesting": b"[" * 5000,  # 500: RecursionError
                "lone surrogate": b'{"jsonrpc":"2.0","id":"\\ud800","method":"ping"}',  # 500
                "deep params": DEEP_PREFIX + b"[" * 300 + b"]" * 300 + b"}}",  # upstream hang
                "NaN": b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"n":NaN}}',
            }
            for name, body in bodies.items():
                headers = {"Content-Encoding": "gzip"} if name == "corrupt gzip" else {}
                reply = await client.post(None, body, **headers)
                assert (reply.status, reply.error_code) == (400, errors.PARSE_ERROR), name
            assert (await client.post(client.request("ping"))).status == 200
