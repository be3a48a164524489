"""Hostile HTTP requests for the gateway's front doors, drawn from a seeded RNG.

:class:`Fuzzer` makes :class:`Case` values: a method, a request target and
headers that may be missing, duplicated or absurd, and a body that may be
invalid JSON, the wrong JSON-RPC shape, deeply nested, over the body limit,
or cut short. A case with ``raw`` set is broken at the HTTP level and must
go out over a plain socket byte for byte (aiohttp's client refuses to send
it); the others can go through any client.

The fuzzer only ever presents the session ids in :class:`Targets` (the
caller's session A, never another) or made-up ones, so a test can assert
that no answer carries another session's data. It never writes a well-formed
``initialize``: each would start an upstream process.

:class:`RouteFuzzer` aims at every route of a gateway that asks for
credentials (probes, metrics, admin, RFC 9728 metadata, both front doors),
with credentials good and bad (API key, admin token, JWT header
permutations from :func:`jwt_permutations`) and header bytes outside ASCII.
Its well-formed ``initialize`` goes only to legacy SSE servers whose
``endpoint`` event names one of :data:`MALFORMED_ENDPOINTS`: a connection
the gateway must refuse, starting no process.
"""

from __future__ import annotations

import base64
import gzip
import json
import random
import string
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar
from urllib.parse import quote

import jwt

T = TypeVar("T")
ACCEPT_BOTH: Final = "application/json, text/event-stream"
# Printable ASCII without line breaks: header values stay one header each
# (header injection has cases of its own).
SAFE_TEXT: Final = string.ascii_letters + string.digits + string.punctuation + " \t"
VERSIONS: Final = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
# Streamable HTTP routes and legacy routes, as (label, path). NAME stands for
# the configured server in labels.
MCP_PATHS: Final = (
    ("/mcp", "/mcp"),
    ("/http", "/http"),
    ("/servers/NAME/mcp", "/servers/{server}/mcp"),
    ("/servers/NAME/http", "/servers/{server}/http"),
    ("/servers/UNKNOWN/mcp", "/servers/nope/mcp"),
)
SSE_PATHS: Final = (
    ("/sse", "/sse"),
    ("/servers/NAME/sse", "/servers/{server}/sse"),
    ("/servers/UNKNOWN/sse", "/servers/nope/sse"),
)
MESSAGE_PATHS: Final = (
    ("/messages/", "/messages/"),
    ("/servers/NAME/messages/", "/servers/{server}/messages/"),
    ("/servers/UNKNOWN/messages/", "/servers/nope/messages/"),
)
UNKNOWN_PATHS: Final = (
    "/", "/mcp/", "/MCP", "/mcp/x", "/servers", "/servers/", "/servers/{server}",
    "/servers/{server}/other", "/servers/{server}/mcp/..", "/%2e%2e/mcp", "/mcp%00",
    "/messages", "/sse/", "/admin/sessions", "/metrics/x", "/.well-known/nothing",
    "/" + "a" * 3000, "/servers/" + "%ff" * 20 + "/mcp",
)  # fmt: skip
METHODS: Final = ("POST", "GET", "DELETE", "PUT", "PATCH", "OPTIONS", "HEAD", "TRACE", "FOO")
RPC_METHODS: Final = (
    "ping", "tools/list", "tools/call", "resources/list", "resources/read", "prompts/list",
    "prompts/get", "logging/setLevel", "completion/complete", "no/such/method", "",
    "notifications/initialized", "notifications/cancelled", "notifications/progress",
    "notifications/roots/list_changed", "sampling/createMessage", "rpc.discover",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Targets:
    """What the fuzzer may aim at; none of it belongs to a session it must not touch."""

    host: str  # "127.0.0.1:PORT": a Host the gateway accepts
    server: str  # the configured server's name
    sessions: tuple[str, ...]  # Streamable HTTP session ids it may present (session A)
    legacy_ids: tuple[str, ...]  # legacy connection ids it may present
    event_ids: tuple[str, ...]  # Last-Event-ID candidates (real ones of A and B, crafted)


@dataclass(frozen=True, slots=True)
class Case:
    route: str  # "METHOD label", for counting
    mcp: bool  # an MCP front-door route (its errors carry JSON-RPC bodies)
    method: str
    target: str  # path and query
    headers: tuple[tuple[str, str], ...]
    body: bytes
    raw: bytes | None = None  # exact bytes for a request broken at the HTTP level
    truncated: bool = False  # the body is cut short and the client hangs up

    @property
    def sent_method(self) -> str:
        """The method as the gateway reads it (a broken request line may change it)."""
        return self.wire().split(b" ", 1)[0].decode("latin-1")

    def wire(self) -> bytes:
        """The request as bytes on a socket (``raw`` if set)."""
        if self.raw is not None:
            return self.raw
        head = f"{self.method} {self.target} HTTP/1.1\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in self.headers)
        return head.encode("latin-1") + b"\r\n" + self.body


class Fuzzer:
    """Draws hostile cases; the same seed and targets give the same cases."""

    def __init__(self, seed: int, targets: Targets, body_limit: int) -> None:
        self.rng = random.Random(seed)
        self.targets = targets
        self.limit = body_limit
        self._bomb = gzip.compress(b"0" * (4 * body_limit))  # small on the wire, big inflated

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def pick(self, options: Sequence[T]) -> T:
        return self.rng.choice(options)

    def text(self, size: int, alphabet: str = SAFE_TEXT) -> str:
        return "".join(self.rng.choices(alphabet, k=size))

    # -- cases -------------------------------------------------------------

    def case(self) -> Case:
        if self.targets.sessions and self.chance(0.01):
            return self._foreign_delete()
        route_kind = self.rng.choices(["mcp", "sse", "messages", "unknown"], [55, 12, 23, 10])[0]
        method = self._method(route_kind)
        label, path, mcp = self._path(route_kind)
        target = path + self._query(route_kind)
        body = self._body(method) if method not in ("GET", "HEAD") or self.chance(0.1) else b""
        headers = self._headers(route_kind, method, body)
        case = Case(f"{method} {label}", mcp, method, target, tuple(headers), body)
        if self.chance(0.3):
            return self._break_http(case)
        return case

    def _foreign_delete(self) -> Case:
        """DELETE of session A from a foreign Host or Origin: the guard must refuse it."""
        label, path = self.pick(MCP_PATHS[:4])
        path = path.replace("{server}", self.targets.server)
        bad = self.pick([("Host", "evil.example.com"), ("Origin", "http://evil.example.com")])
        host = bad[1] if bad[0] == "Host" else self.targets.host
        headers = [("Host", host), ("Mcp-Session-Id", self.pick(self.targets.sessions))]
        if bad[0] == "Origin":
            headers.append(bad)
        headers.append(("Connection", "close"))
        return Case(f"DELETE {label}", True, "DELETE", path, tuple(headers), b"")

    def _method(self, route_kind: str) -> str:
        usual = {"mcp": ("POST", "GET", "DELETE"), "sse": ("GET",), "messages": ("POST",)}
        if route_kind in usual and self.chance(0.8):
            return str(self.pick(usual[route_kind]))
        return str(self.pick(METHODS))

    def _path(self, route_kind: str) -> tuple[str, str, bool]:
        server = self.targets.server
        if route_kind == "unknown":
            path = str(self.pick(UNKNOWN_PATHS)).replace("{server}", server)
            return "unknown", path, False
        table = {"mcp": MCP_PATHS, "sse": SSE_PATHS, "messages": MESSAGE_PATHS}[route_kind]
        label, path = self.pick(table)
        return label, path.replace("{server}", server), True

    def _query(self, route_kind: str) -> str:
        if route_kind != "messages":
            return (
                ""
                if self.chance(0.9)
                else "?" + self.pick(["x=1", "session_id=", "%zz", "a=" + "b" * 500])
            )
        roll = self.rng.random()
        if roll < 0.55 and self.targets.legacy_ids:
            value = self.pick(self.targets.legacy_ids)
        elif roll < 0.65:
            return ""
        else:
            value = self._fake_session_id()
        value = quote(value, safe="")
        extra = "" if self.chance(0.8) else self.pick(["&session_id=x", "&sessionId=1", "&x=%ff"])
        return f"?session_id={value}{extra}"

    # -- headers -------------------------------------------------------------

    def _headers(self, route_kind: str, method: str, body: bytes) -> list[tuple[str, str]]:
        targets = self.targets
        headers: list[tuple[str, str]] = [("Host", targets.host)]
        headers.append(("Accept", ACCEPT_BOTH if route_kind == "mcp" else "text/event-stream"))
        if body or method == "POST":
            headers.append(("Content-Type", "application/json"))
            headers.append(("Content-Length", str(len(body))))
        if route_kind == "mcp" and self.chance(0.75):
            # Session A's id, but never on a DELETE: that would end it for real.
            real = targets.sessions and method != "DELETE" and self.chance(0.8)
            headers.append(
                ("Mcp-Session-Id", self.pick(targets.sessions) if real else self._fake_session_id())
            )
        if self.chance(0.5):
            headers.append(("MCP-Protocol-Version", self.pick(VERSIONS)))
        if method == "GET" and self.chance(0.5):
            headers.append(("Last-Event-ID", self._last_event_id()))
        headers.append(("Connection", "close"))
        for _ in range(self.rng.randrange(0, 4)):
            headers = self._mutate_headers(headers, method)
        return headers

    def _mutate_headers(self, headers: list[tuple[str, str]], method: str) -> list[tuple[str, str]]:
        name = str(self.pick(list(HOSTILE_VALUES)))
        value = self._hostile_value(name)
        if name == "Mcp-Session-Id" and method == "DELETE":
            value = self._fake_session_id()  # never end session A for real
        action = self.rng.random()
        if action < 0.15:  # drop it
            return [(n, v) for n, v in headers if n.lower() != name.lower()]
        if action < 0.35:  # duplicate it, with a different value
            return [*headers, (name, value)]
        kept = [(n, v) for n, v in headers if n.lower() != name.lower()]
        return [*kept, (name, value)]

    def _hostile_value(self, name: str) -> str:
        choice = self.pick(HOSTILE_VALUES[name])
        if callable(choice):
            return str(choice(self))
        return str(choice).replace("{host}", self.targets.host)

    def _fake_session_id(self) -> str:
        value = str(self.pick(FAKE_SESSION_IDS)(self))
        return value + "x" if value in self.targets.sessions else value

    def _last_event_id(self) -> str:
        if self.targets.event_ids and self.chance(0.6):
            return str(self.pick(self.targets.event_ids))
        return str(self.pick(FAKE_EVENT_IDS)(self))

    # -- bodies ----------------------------------------------------------------

    def _body(self, method: str) -> bytes:
        roll = self.rng.random()
        if roll < 0.30:
            return json.dumps(self._plausible()).encode()
        if roll < 0.55:
            return json.dumps(self._wrong_shape()).encode()
        if roll < 0.95:
            return self._bad_json()
        if roll < 0.97:
            return self._oversized()
        return gzip.compress(json.dumps(self._plausible()).encode())  # with or without the header

    def _plausible(self) -> Any:
        """A well-formed message that is not initialize (maybe a 2025-03-26 batch)."""
        if self.chance(0.1):
            return [self._plausible_one() for _ in range(self.rng.randrange(1, 5))]
        return self._plausible_one()

    def _plausible_one(self) -> dict[str, Any]:
        method = str(self.pick(RPC_METHODS))
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if method == "tools/call":
            text = self.text(self.rng.randrange(0, 40))
            tool = self.pick(["echo", "add", "nope"])
            message["params"] = {"name": tool, "arguments": {"text": text}}
        elif method == "notifications/cancelled":
            message["params"] = {"requestId": self.pick([1, "x", 2**70, None]), "reason": "fuzz"}
        elif self.chance(0.5):
            message["params"] = {"_meta": {"progressToken": self.pick([1, "t", 1.5, None, True])}}
        if not method.startswith("notifications/") or self.chance(0.1):
            message["id"] = self.pick([self.rng.randrange(-(2**40), 2**40), self.text(8), "", 0])
        if self.chance(0.1):  # a response to a server request that never was
            return {"jsonrpc": "2.0", "id": self.rng.randrange(1000), "result": {}}
        return message

    def _wrong_shape(self) -> Any:
        base: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        key = self.pick(["jsonrpc", "id", "method", "params", "result", "error", "batch", "scalar"])
        if key == "batch":
            initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize"}
            return self.pick([[], [[]], [1, 2], [base, "x"], [initialize]])  # no batch may hold it
        if key == "scalar":
            return self.pick([None, 1, "ping", True, 1.5])
        values: dict[str, list[Any]] = {
            "jsonrpc": [None, "1.0", 2.0, "2.0 ", ["2.0"]],
            "id": [None, True, False, 1.5, [1], {"a": 1}, 2**70, -0.0],
            "method": [None, 1, ["ping"], {"m": 1}, "initialize"],
            "params": ["x", 1, True],
            "result": [{}, None, [1]],
            "error": ["boom", None, {"code": "x"}, 1],
        }
        value = self.pick(values[key])
        if key == "method" and value == "initialize":  # refused before any upstream starts
            return {**base, "method": "initialize", "id": True}
        if key in ("result", "error") and self.chance(0.5):
            del base["method"]
        if self.chance(0.15):  # without the key instead
            return {k: v for k, v in base.items() if k != key}
        return {**base, key: value}

    def _bad_json(self) -> bytes:
        good = json.dumps(self._plausible_one()).encode()
        kind = self.rng.randrange(13)
        if kind == 0:
            return good[: self.rng.randrange(len(good))]  # truncated JSON
        if kind == 1:
            return self.rng.randbytes(self.rng.randrange(1, 200))
        if kind == 2:  # invalid UTF-8 inside a string, or at the end
            return (
                good.replace(b'"2.0"', b'"2.0\xff\xfe"', 1) if self.chance(0.5) else good + b"\xc3"
            )
        if kind == 3:
            depth = self.pick(DEPTHS)
            return DEEP_PREFIX + b"[" * depth + b"]" * depth + b"}}"
        if kind == 4:
            return b"[" * self.rng.randrange(1, 30000)
        if kind == 5:
            return self.pick(NUMBER_BODIES) % self.pick(NUMBERS)
        if kind == 6:
            return good.decode().encode(self.pick(["utf-16", "utf-32", "utf-16-be"]))
        if kind == 7:
            return b"\xef\xbb\xbf" + good
        if kind == 8:  # trailing garbage, or two messages
            return good + self.pick([b"x", b" {}", b"\n" + good, b"\x00"])
        if kind == 9:  # a wide batch
            return b"[" + b",".join([good] * self.rng.randrange(50, 250)) + b"]"
        if kind == 10:
            return good.replace(b'"jsonrpc"', b"jsonrpc", 1)  # unquoted key
        return self.pick(ODD_BODIES)

    def _oversized(self) -> bytes:
        size = self.limit + self.rng.randrange(1, self.limit)
        return OVERSIZED_PREFIX + b"x" * (size - len(OVERSIZED_PREFIX) - 4) + b'"}}}'

    # -- HTTP-level breakage (raw sockets only) ----------------------------------

    def _break_http(self, case: Case) -> Case:
        """The case broken at the HTTP level: framing, request line, header syntax."""
        kind = self.rng.randrange(14)
        lines = [f"{n}: {v}" for n, v in case.headers if n.lower() != "content-length"]
        body = case.body
        start = f"{case.method} {case.target} HTTP/1.1"
        length = f"Content-Length: {len(body)}"
        truncated = False
        if kind == 0:  # Content-Length larger than the body, then hang up
            declared = len(body) + self.rng.randrange(1, 5000)
            raw = _http([start, *lines, f"Content-Length: {declared}"], body[: len(body) // 2])
            truncated = True
        elif kind == 1:  # chunked, maybe with broken chunks
            chunks = b"".join(
                f"{len(body[i : i + 7]):x}\r\n".encode() + body[i : i + 7] + b"\r\n"
                for i in range(0, len(body), 7)
            )
            tail = self.pick(CHUNK_TAILS)
            te = self.pick(TRANSFER_CODINGS)
            raw = _http([start, *lines, f"Transfer-Encoding: {te}"], chunks + tail)
            truncated = tail == CHUNK_TAILS[-1]  # a chunk longer than what follows
        elif kind == 2:  # Content-Length and Transfer-Encoding together (smuggling)
            raw = _http([start, *lines, length, "Transfer-Encoding: chunked"], body)
        elif kind == 3:  # conflicting or invalid Content-Length
            values = self.pick(
                [[str(len(body)), str(len(body) + 1)], [f"{len(body)}, {len(body)}"]]
            )
            values = values if self.chance(0.3) else [self.pick(BAD_LENGTHS)]
            raw = _http([start, *lines, *(f"Content-Length: {v}" for v in values)], body)
        elif kind == 4:  # a broken request line
            bad = self.pick(BAD_REQUEST_LINES).format(m=case.method, t=case.target, a="a" * 9000)
            raw = _http([bad, *lines, length], body)
        elif kind == 5:  # a broken header line
            raw = _http([start, *lines, self.pick(BAD_HEADER_LINES), length], body)
        elif kind == 6:  # bare LF line ends
            raw = _http([start, *lines, length], body, b"\n")
        elif kind == 7:  # non-ASCII header bytes (latin-1 and invalid UTF-8)
            raw = _http([start, *lines, length], body).replace(
                b"\r\n", b"\r\n" + self.pick(NON_ASCII_HEADERS) + b"\r\n", 1
            )
        elif kind == 8:  # no Host at all, or two
            kept = [h for h in lines if not h.lower().startswith("host:")]
            ours, evil = f"Host: {self.targets.host}", "Host: evil.example.com"
            hosts = self.pick([[], [ours, evil], [evil, ours]])
            raw = _http([start, *hosts, *kept, length], body)
        elif kind == 9:  # many headers
            many = [f"X-Pad-{i}: {'v' * 50}" for i in range(self.pick([50, 150, 500]))]
            raw = _http([start, *lines, *many, length], body)
        elif kind == 10:  # Content-Encoding that does not match the body, or a gzip bomb
            encoded = self.pick([body, self._bomb, b"\x1f\x8b\x08\x00garbage"])
            coding = f"Content-Encoding: {self.pick(CONTENT_CODINGS)}"
            raw = _http([start, *lines, coding, f"Content-Length: {len(encoded)}"], encoded)
        else:  # Content-Length smaller than the body: the rest reads as a second request
            raw = _http([start, *lines, f"Content-Length: {len(body) // 2}"], body)
        return Case(
            case.route, case.mcp, case.method, case.target, case.headers, body, raw, truncated
        )


def _http(lines: list[str], body: bytes, eol: bytes = b"\r\n") -> bytes:
    return eol.join(line.encode("latin-1") for line in lines) + eol + eol + body


DEPTHS: Final = (129, 500, 990, 1200, 5000, 15000)
DEEP_PREFIX: Final = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":'
NUMBERS: Final = (
    b"1" * 5000,
    b"1e999",
    b"-1e400",
    b"NaN",
    b"Infinity",
    b"1" * 4300,
    b"0." + b"0" * 5000 + b"1",
)
NUMBER_BODIES: Final = (
    b'{"jsonrpc":"2.0","id":%s,"method":"ping"}',
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","arguments":{"a":%s,"b":1}}}',
)
ODD_BODIES: Final = (
    b'{"jsonrpc":"2.0","id":"\\ud800","method":"ping"}',
    b'{"jsonrpc":"2.0","id":1,"method":"\\udfff"}',
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"\\ud800"}}}',
    b'{"jsonrpc":"2.0","id":1,"method":"ping","id":true,"method":"initialize"}',  # duplicate keys
    b"", b" ", b"null", b"{}", b"[]", b"[[]]", b"{", b"}", b"\x00", b'""', b"true",
)  # fmt: skip
OVERSIZED_PREFIX: Final = (
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"'
)
CHUNK_TAILS: Final = (
    b"0\r\n\r\n", b"zz\r\n", b"0\r\nX-Trailer: 1\r\n\r\n", b"-1\r\n\r\n",
    b"5;ext=1\r\nabc\r\n0\r\n\r\n", b"fffffffffffffffffff\r\nabc",
)  # fmt: skip
TRANSFER_CODINGS: Final = (
    "chunked",
    "Chunked",
    "gzip, chunked",
    "chunked, chunked",
    "identity, chunked",
)
BAD_LENGTHS: Final = ("-1", "abc", "+5", " 1", "99999999999999999999999", "0x10")
BAD_REQUEST_LINES: Final = (
    "{m} {t} HTTP/9.9", "{m} {t}", "{m}  {t} HTTP/1.1", "{m} http://evil.example.com{t} HTTP/1.1",
    "{m} * HTTP/1.1", "{m} {t} HTTP/1.0", "GET /mcp{a} HTTP/1.1", "\x16\x03\x01\x02\x00\x01\x00",
    "{m} {t}\x00 HTTP/1.1", "P\tST {t} HTTP/1.1", "post {t} HTTP/1.1",
)  # fmt: skip
BAD_HEADER_LINES: Final = (
    "NoColonHere", "Host : evil.example.com", " folded: continuation", "X: a\x00b",
    "X-Long: " + "a" * 9000, ": empty-name", "Bad Name: x", "X: \x7f\x01",
)  # fmt: skip
NON_ASCII_HEADERS: Final = (
    b"Mcp-Session-Id: \xff\xfe\xc3", b"X-\xe9: \xe9", b"MCP-Protocol-Version: 2025-11-25\xff",
    b"Last-Event-ID: \xc3\x28.get.1", b"Origin: http://\xe9vil.example.com",
)  # fmt: skip
CONTENT_CODINGS: Final = ("gzip", "deflate", "br", "zstd", "x-bogus", "gzip, gzip", "identity")


def _random_token(f: Fuzzer) -> str:
    return f.text(f.rng.randrange(1, 40), string.ascii_letters + string.digits + "-_")


FAKE_SESSION_IDS: Final[tuple[Callable[[Fuzzer], str], ...]] = (
    _random_token,
    lambda f: "",
    lambda f: " ",
    lambda f: "a" * 5000,
    lambda f: "bad\tid",
    lambda f: "ümlaut",
    lambda f: f.text(43, string.ascii_letters + string.digits + "-_"),  # shaped like a real one
    lambda f: (f.pick(f.targets.sessions) + "x") if f.targets.sessions else "x",
    lambda f: (f.pick(f.targets.sessions).upper()) if f.targets.sessions else "X",
    lambda f: "../../etc/passwd",
    lambda f: "%00",
)
FAKE_EVENT_IDS: Final[tuple[Callable[[Fuzzer], str], ...]] = (
    lambda f: f.text(f.rng.randrange(0, 60)),
    lambda f: "",
    lambda f: "a.b",
    lambda f: "a.b.c.d",
    lambda f: f"{f.text(12, string.hexdigits.lower())}.get.{f.rng.randrange(10**6)}",
    lambda f: f"{f.text(12, string.hexdigits.lower())}.p{f.text(16, string.hexdigits.lower())}.1",
    lambda f: f"{f.text(12, string.hexdigits.lower())}.get.99999999999999999999999999",
    lambda f: f"{f.text(12, string.hexdigits.lower())}.get.-1",
    lambda f: f"{f.text(12, string.hexdigits.lower())}.get.abc",
    lambda f: "x" * 64 + ".get.1",
    lambda f: "x" * 65 + ".get.1",
    lambda f: " . . ",
    lambda f: "é.get.1",
)


def _accept(f: Fuzzer) -> str:
    return ", ".join(
        f.rng.sample(
            [
                "application/json",
                "text/event-stream",
                "*/*",
                "text/*",
                "application/*",
                "text/html",
            ],
            f.rng.randrange(0, 4),
        )
    )


HOSTILE_VALUES: Final[dict[str, tuple[Any, ...]]] = {
    "Accept": (
        "", "*/*", "application/json", "text/event-stream", "text/html",
        "application/json;q=0, text/event-stream", "application/json;q=abc, text/event-stream;q=nan",
        "application/json, text/event-stream;q=0.0", ";;;,,,", "a" * 4000, "application/*, text/*",
        "APPLICATION/JSON, TEXT/EVENT-STREAM", _accept,
    ),
    "Content-Type": (
        "", "text/plain", "application/json; charset=utf-16", "application/json; charset=latin-1",
        "multipart/form-data; boundary=x", "application/x-www-form-urlencoded", "application/json;;;",
        "application/jsonx", "APPLICATION/JSON", "application/json; boundary=\"", "*/*",
    ),
    "Mcp-Session-Id": (lambda f: f._fake_session_id(), lambda f: f.pick(f.targets.sessions) if f.targets.sessions else ""),
    "MCP-Protocol-Version": ("", "2026-07-28", "1999-01-01", "2025-11-25, 2025-06-18", "x" * 1000, "latest", "2025-11-25 "),
    "Last-Event-ID": (lambda f: f._last_event_id(),),
    "Host": ("", "evil.example.com", "127.0.0.1:1", "localhost", "[::1]", "[::1", "a b", "127.0.0.1:99999", "{host}.evil.example.com", "LOCALHOST", "127.0.0.1:"),
    "Origin": ("null", "http://evil.example.com", "http://{host}", "http://[::1", "file://", "javascript:alert(1)", "http://localhost:99999", "http://127.0.0.1.evil.example.com", ""),
    "Content-Encoding": ("gzip", "deflate", "br", "x-bogus", "identity", "gzip, gzip"),
    "Transfer-Encoding": ("identity", "gzip", "x-bogus"),
    "Expect": ("100-continue", "x-bogus"),
    "Connection": ("keep-alive", "upgrade", "close, close"),
    "Upgrade": ("websocket", "h2c"),
    "Authorization": ("Bearer x", "Basic Og==", "Bearer " + "a" * 3000, ""),
    "Range": ("bytes=0-1", "bytes=-1"),
}  # fmt: skip


# -- every route, with credentials ------------------------------------------------

#: ``endpoint`` event URLs a legacy SSE upstream may send that the gateway must
#: refuse (``{host}`` is the upstream's own host and port): bad ports, broken
#: hosts, userinfo, other origins. Each was a 500 or a POST elsewhere before.
MALFORMED_ENDPOINTS: Final = (
    "http://127.0.0.1:99999/messages", "http://127.0.0.1:-1/messages",
    "http://127.0.0.1:port/messages", "http://127.0.0.1:+80/messages",
    "http://127.0.0.1: 80/messages", "http://127.0.0.1:0/messages",
    "http://127.0.0.1:65536/messages", "http://[::1/messages", "http://[zz]/messages",
    "http://[::1]:99999/messages", "http://[v1.x]/messages", "http://%zz/messages",
    "http://user:pw@{host}/messages", "http://user@{host}/messages", "http://:@{host}/messages",
    "//{host}@evil.example.com/messages", "http://{host}@evil.example.com/messages",
    "javascript:alert(1)", "file:///etc/passwd", "ftp://{host}/messages",
    "https://{host}/messages", "http://1.2.3.4.5/messages", "//evil.example.com/messages",
    "http://evil.example.com:{host}/messages",
)  # fmt: skip
#: Raw header lines with bytes outside ASCII (latin-1, invalid UTF-8, valid UTF-8).
NON_ASCII_LINES: Final = (
    *NON_ASCII_HEADERS,
    b"Authorization: Bearer \xff\xfe", b"Authorization: Bearer \xc3\xa9t\xc3\xa9",
    b"Authorization: \xe9", b"Authorization: Bearer tok\x80\x81", b"Authorization: B\xe9arer x",
    b"Host: 127.0.0.1\xff", b"Accept: text/event-stream\xff", b"Content-Type: application/json\xfe",
    b"Cookie: \xff=\xfe", b"X-Forwarded-For: \xc0\xaf", b"User-Agent: \xf0\x9f\x98\x80",
    b"Access-Control-Request-Method: P\xd6ST", b"Origin: http://127.0.0.1\xff",
)  # fmt: skip
ROUTE_METHODS: Final = ("GET", "GET", "POST", "DELETE", "OPTIONS", "HEAD", "PUT")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_jwt(header: Any, claims: Any, signature: bytes = b"not-a-signature") -> str:
    """A JWT of any header and claims (JSON values, or bytes as they are), unsigned."""
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    body = claims if isinstance(claims, bytes) else json.dumps(claims).encode()
    return f"{_b64(head)}.{_b64(body)}.{_b64(signature)}"


def jwt_permutations(
    issuer: str, audience: str, keys: dict[str, Any], hmac_secret: str
) -> dict[str, str]:
    """Tokens for an issuer whose JWKS publishes ``keys`` (kid -> private key; RSA
    ``k1``, EC ``e1``): one good one per key, then header permutations that must
    all get 401: ``alg`` against each ``kid``'s key type (signed for real),
    odd ``alg`` and ``kid`` values, extra header fields, broken structure."""
    now = int(time.time())
    claims = {"iss": issuer, "aud": audience, "sub": "fuzz", "exp": now + 3600, "iat": now}
    tokens = {
        "good RS256 k1": jwt.encode(claims, keys["k1"], "RS256", headers={"kid": "k1"}),
        "good ES256 e1": jwt.encode(claims, keys["e1"], "ES256", headers={"kid": "e1"}),
    }
    signers = {"RS256": keys["k1"], "PS256": keys["k1"], "ES256": keys["e1"], "HS256": hmac_secret}
    for alg, signer in signers.items():
        for kid in ("k1", "e1"):
            name = f"{alg} signed, kid {kid}"
            if name not in ("RS256 signed, kid k1", "ES256 signed, kid e1"):
                tokens[name] = jwt.encode(claims, signer, alg, headers={"kid": kid})
    algs: tuple[Any, ...] = ("RS256", "ES256", "PS256", "HS256", "EdDSA", "none", "", "rs256",
                             "RS256 ", None, 5, ["RS256"], {"a": 1})  # fmt: skip
    kids: tuple[Any, ...] = ("k1", "e1", "nope", "", 5, None, ["k1"], {"k": 1}, "k1" * 2000)
    for alg in algs:
        for kid in kids:
            header = {"typ": "JWT", "alg": alg, "kid": kid}
            tokens[f"alg {alg!r:.12} kid {kid!r:.12}"] = raw_jwt(header, claims)
        tokens[f"alg {alg!r:.12} no kid"] = raw_jwt({"alg": alg}, claims)
    extras: dict[str, Any] = {
        "crit": {"alg": "RS256", "kid": "k1", "crit": ["exp"]},
        "jku": {"alg": "RS256", "kid": "k1", "jku": "http://evil.example.com/jwks"},
        "x5u": {"alg": "RS256", "kid": "k1", "x5u": "http://evil.example.com/cert"},
        "jwk": {"alg": "RS256", "jwk": {"kty": "oct", "k": "c2VjcmV0"}},
        "b64 false": {"alg": "RS256", "kid": "k1", "b64": False, "crit": ["b64"]},
        "no alg": {"kid": "k1"},
        "list header": ["RS256"],
        "number header": 5,
        "null header": None,
    }
    for name, header in extras.items():
        tokens[f"header {name}"] = raw_jwt(header, claims)
    tokens |= {
        "header not JSON": raw_jwt(b"{not json", claims),
        "header not UTF-8": raw_jwt(b"\xff\xfe", claims),
        "claims not JSON": raw_jwt({"alg": "RS256", "kid": "k1"}, b"\xff{"),
        "claims a list": raw_jwt({"alg": "RS256", "kid": "k1"}, [1, 2]),
        "two parts": "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0",
        "four parts": "a.b.c.d",
        "dots": "..",
        "bad base64": "eyJ!.eyJ!.sig",
        "huge": raw_jwt({"alg": "RS256", "kid": "k1", "pad": "x" * 6000}, claims),
    }
    return tokens


@dataclass(frozen=True, slots=True)
class RouteTargets:
    """What :class:`RouteFuzzer` aims at on a gateway that asks for credentials."""

    host: str  # "127.0.0.1:PORT"
    server: str  # a working server, never initialized by the fuzz
    hostile: tuple[str, ...]  # legacy SSE servers with a MALFORMED_ENDPOINTS endpoint
    credentials: dict[str, tuple[str, ...]]  # kind -> Authorization values of that kind


class RouteFuzzer(Fuzzer):
    """Every route, every credential, header bytes outside ASCII; all sent raw."""

    def __init__(self, seed: int, targets: RouteTargets, body_limit: int) -> None:
        super().__init__(seed, Targets(targets.host, targets.server, (), (), ()), body_limit)
        self.routes = targets

    def route_case(self) -> tuple[Case, str]:
        """A case and the kind of credentials it presents."""
        label, target, mcp, hostile = self._route()
        method = "POST" if hostile and self.chance(0.8) else str(self.pick(ROUTE_METHODS))
        initialize = hostile and method == "POST" and self.chance(0.7)
        if initialize:
            body = json.dumps(INITIALIZE).encode()
        elif method in ("POST", "PUT", "DELETE") and self.chance(0.8):
            body = self._body(method)
        else:
            body = b""
        headers: list[tuple[str, str]] = [("Host", self.routes.host)]
        accept = ACCEPT_BOTH if initialize else self.pick([ACCEPT_BOTH, "text/event-stream", "*/*"])
        headers.append(("Accept", accept))
        credential = "no credentials"
        if hostile and initialize and self.chance(0.7):  # mostly past the front door
            credential = str(self.pick(["api key", "good JWT"]))
            headers.append(("Authorization", self.pick(self.routes.credentials[credential])))
        elif self.chance(0.9):
            credential = str(self.pick(sorted(self.routes.credentials)))
            headers.append(("Authorization", self.pick(self.routes.credentials[credential])))
        if body:
            headers.append(("Content-Type", "application/json"))
        if method == "OPTIONS" and self.chance(0.7):
            headers.append(("Origin", self.pick(["http://evil.example", "http://localhost:6274"])))
            headers.append(("Access-Control-Request-Method", "POST"))
        if mcp and not initialize and self.chance(0.5):
            headers.append(("Mcp-Session-Id", self._fake_session_id()))
        if self.chance(0.3):
            headers.append(("MCP-Protocol-Version", self.pick(VERSIONS)))
        headers += [("Content-Length", str(len(body))), ("Connection", "close")]
        route = f"{method} {label}"
        raw = _http([f"{method} {target} HTTP/1.1"] + [f"{n}: {v}" for n, v in headers], body)
        if self.chance(0.5):  # one or two header lines with bytes outside ASCII
            for _ in range(self.rng.randrange(1, 3)):
                line = self.pick(NON_ASCII_LINES)
                raw = raw.replace(b"\r\n", b"\r\n" + line + b"\r\n", 1)
            credential += " + non-ASCII header"
        return Case(route, mcp, method, target, tuple(headers), body, raw), credential

    def _route(self) -> tuple[str, str, bool, bool]:
        """(label, target, an MCP front-door route, a hostile server's route)."""
        server, hostile = self.routes.server, self.pick(self.routes.hostile)
        kind = self.rng.randrange(14)
        if kind == 0:
            return "/healthz", "/healthz", False, False
        if kind == 1:
            return "/readyz", "/readyz", False, False
        if kind == 2:
            return "/metrics", "/metrics", False, False
        if kind == 3:
            limit = self.pick(["", "?limit=5", "?limit=-1", "?limit=x", "?limit=" + "9" * 30])
            return "/admin/sessions", "/admin/sessions" + limit, False, False
        if kind == 4:
            fake = quote(self._fake_session_id(), safe="")
            return "/admin/sessions/ID", f"/admin/sessions/{fake or 'x'}", False, False
        if kind == 5:
            path = self.pick(["", "/gw/mcp", f"/gw/servers/{server}/http", "/nope", "/%ff"])
            return "/.well-known/...", f"/.well-known/oauth-protected-resource{path}", False, False
        if kind in (6, 7):
            leaf = self.pick(["mcp", "http"])
            return f"/servers/NAME/{leaf}", f"/servers/{server}/{leaf}", True, False
        if kind == 8:
            query = self.pick(["", "?session_id=x", "?session_id=" + "a" * 43])
            label = "/servers/NAME/messages/"
            return label, f"/servers/{server}/messages/{query}", True, False
        if kind == 9:
            return "/servers/NAME/sse", f"/servers/{server}/sse", True, False
        if kind in (10, 11, 12):
            return "/servers/HOSTILE/mcp", f"/servers/{hostile}/mcp", True, True
        return "unknown", self.pick(UNKNOWN_PATHS).replace("{server}", server), False, False


INITIALIZE: Final = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "route-fuzz", "version": "0"},
    },
}
