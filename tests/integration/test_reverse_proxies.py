"""deploy/proxy/nginx.conf and deploy/proxy/Caddyfile, run for real in front of a gateway.

Debian's nginx and Caddy (``.ci/run`` installs them) serve each snippet on a
free port on 127.0.0.1, with as few changes as running it here needs: plain
HTTP on that port instead of TLS on 443 for mcp.example.com, the gateway's
port instead of 8080, and files in a temporary directory. Everything else,
the routes, buffering, timeouts and headers, is the snippet as shipped.

Through each: the official SDK client's scenario on both front doors
(Streamable HTTP and legacy HTTP+SSE, whose stream never ends, so a buffering
proxy hangs it), OAuth protected-resource metadata discovery (RFC 9728), the
private paths answering 404, and two replicas on one Redis (a legacy
connection's POSTs must reach the replica that holds its stream).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Final

import aiohttp
import pytest

from tests.conftest import FIXTURE_SERVER, REPO, Proc, ProcFactory, free_port, start_gateway
from tests.integration.test_legacy_front_door import run_legacy_scenario
from tests.integration.test_sdk_clients import FASTMCP, run_scenario
from tests.redis_server import RedisServer

PROXY: Final = REPO / "deploy" / "proxy"
START: Final = 15.0  # seconds for a proxy to say it serves
STOP: Final = 15.0  # seconds for it to stop on SIGTERM
#: Paths the snippets must not route: probes, metrics and admin stay private.
PRIVATE: Final = ("/healthz", "/readyz", "/metrics", "/admin/sessions")
SERVER: Final = "fixture"
ISSUER: Final = "https://issuer.test"
PING: Final = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
ACCEPT: Final = {"Accept": "application/json, text/event-stream"}


def replace_once(text: str, old: str, new: str, times: int = 1) -> str:
    """``text`` with ``old`` replaced; the snippet must hold it exactly ``times`` times."""
    assert text.count(old) == times, f"the snippet no longer holds {old!r} {times}x"
    return text.replace(old, new)


def nginx_config(tmp: Path, port: int, gateway_ports: list[int], affinity: bool = True) -> Path:
    """nginx.conf inside a whole configuration whose files all live in ``tmp``.

    Without ``affinity``, the snippet's ``hash`` line goes: round robin.
    """
    snippet = (PROXY / "nginx.conf").read_text()
    if not affinity:
        snippet = replace_once(snippet, "    hash $mcp_bridge_affinity consistent;\n", "")
    snippet = replace_once(snippet, "listen 443 ssl http2;", f"listen 127.0.0.1:{port};")
    for directive in ("ssl_certificate ", "ssl_certificate_key "):
        line = next(ln for ln in snippet.splitlines() if ln.strip().startswith(directive))
        snippet = replace_once(snippet, line + "\n", "")
    servers = "\n    ".join(f"server 127.0.0.1:{p};" for p in gateway_ports)
    snippet = replace_once(snippet, "server 127.0.0.1:8080;", servers)
    (tmp / "mcp-bridge.conf").write_text(snippet)
    # As root, nginx's workers would switch to "nobody", who cannot enter
    # pytest's private temporary directory.
    user = "user root root;" if os.geteuid() == 0 else ""
    temp_paths = "\n".join(
        f"    {kind}_temp_path {tmp}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"""{user}
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log stderr notice;
events {{ worker_connections 256; }}
http {{
    access_log {tmp}/access.log;
{temp_paths}
    include {tmp}/mcp-bridge.conf;
}}
"""
    )
    return conf


def caddy_config(tmp: Path, port: int, gateway_ports: list[int], affinity: bool = True) -> Path:
    """The Caddyfile with global options that keep Caddy's state in ``tmp``.

    Without ``affinity``, both ``lb_policy`` lines say ``round_robin``.
    """
    snippet = (PROXY / "Caddyfile").read_text()
    if not affinity:
        for policy in ("lb_policy ip_hash", "lb_policy header Mcp-Session-Id"):
            snippet = replace_once(snippet, policy, "lb_policy round_robin")
    snippet = replace_once(snippet, "mcp.example.com {", f"http://127.0.0.1:{port} {{")
    upstreams = " ".join(f"127.0.0.1:{p}" for p in gateway_ports)
    snippet = replace_once(
        snippet, "reverse_proxy 127.0.0.1:8080 {", f"reverse_proxy {upstreams} {{", times=2
    )
    conf = tmp / "Caddyfile"
    conf.write_text(
        f"{{\n\tadmin off\n\tauto_https off\n\tstorage file_system {tmp}/caddy-data\n}}\n\n"
        + snippet
    )
    return conf


async def run_nginx(
    procs: ProcFactory, tmp: Path, gateway_ports: list[int], port: int, affinity: bool = True
) -> str:
    conf = nginx_config(tmp, port, gateway_ports, affinity)
    # Debian installs it in /usr/sbin, which a non-root PATH may lack.
    nginx = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    assert nginx, "nginx is not installed (.ci/run installs it)"
    proc = await procs(nginx, "-p", tmp, "-e", "stderr", "-c", conf)
    await proc.wait_for("start worker process", within=START)
    return f"http://127.0.0.1:{port}"


async def run_caddy(
    procs: ProcFactory, tmp: Path, gateway_ports: list[int], port: int, affinity: bool = True
) -> str:
    conf = caddy_config(tmp, port, gateway_ports, affinity)
    caddy = shutil.which("caddy")
    assert caddy, "caddy is not installed (.ci/run installs it)"
    env = {
        "HOME": str(tmp),
        "XDG_DATA_HOME": str(tmp / "data"),
        "XDG_CONFIG_HOME": str(tmp / "config"),
    }
    proc = await procs(caddy, "run", "--config", conf, "--adapter", "caddyfile", env=env)
    await proc.wait_for("serving initial configuration", within=START)
    return f"http://127.0.0.1:{port}"


Runner = Callable[..., Awaitable[str]]  # (procs, tmp, gateway ports, port, affinity=True)


@pytest.fixture
async def procs_stopped_first(procs: ProcFactory) -> AsyncIterator[ProcFactory]:
    """``procs``; nginx gets SIGTERM and is waited for before ``procs`` kills everything.

    nginx's workers hold its output pipes: with the master killed first, they
    would be left open. SIGTERM stops the workers, then the master.
    """
    started: list[Proc] = []

    async def start(*argv: str | Path, env: dict[str, str] | None = None) -> Proc:
        proc = await procs(*argv, env=env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.name == "nginx" and proc.process.returncode is None:
            proc.process.send_signal(signal.SIGTERM)
            await proc.exited(within=STOP)


PROXIES: Final = [
    pytest.param(run_nginx, id="nginx"),
    pytest.param(run_caddy, id="caddy"),
]


async def gateway_behind(
    procs: ProcFactory, tmp_path: Path, run: Runner, *options: str, port: int | None = None
) -> tuple[str, str]:
    """A gateway subprocess in front of the fixture server (stdio), and ``run``'s proxy."""
    config = tmp_path / "servers.json"
    server = {"command": sys.executable, "args": [str(FIXTURE_SERVER)]}
    config.write_text(json.dumps({"mcpServers": {SERVER: server}}))
    _, gateway = await start_gateway(procs, "--config", str(config), *options)
    tmp = tmp_path / "proxy"
    tmp.mkdir()
    gateway_port = int(gateway.rsplit(":", 1)[1])
    return gateway, await run(procs, tmp, [gateway_port], port or free_port())


@pytest.mark.parametrize("run", PROXIES)
async def test_sdk_clients_through_the_proxy(
    run: Runner, procs_stopped_first: ProcFactory, tmp_path: Path
) -> None:
    _, proxy = await gateway_behind(procs_stopped_first, tmp_path, run)
    await run_scenario(f"{proxy}/http", FASTMCP)
    await run_scenario(f"{proxy}/servers/{SERVER}/mcp", FASTMCP)
    # Legacy: a never-ending GET stream whose first event names /messages/.
    await run_legacy_scenario(f"{proxy}/sse", FASTMCP)
    await run_legacy_scenario(f"{proxy}/servers/{SERVER}/sse", FASTMCP)


@pytest.mark.parametrize("run", PROXIES)
async def test_private_paths_stay_private(
    run: Runner, procs_stopped_first: ProcFactory, tmp_path: Path
) -> None:
    gateway, proxy = await gateway_behind(procs_stopped_first, tmp_path, run)
    async with aiohttp.ClientSession() as http:
        for path in PRIVATE[:3]:
            async with http.get(gateway + path) as direct:
                assert direct.status == 200, path
        for path in PRIVATE:
            async with http.get(proxy + path) as response:
                assert response.status == 404, path


@pytest.mark.parametrize("run", PROXIES)
async def test_oauth_discovery_through_the_proxy(
    run: Runner, procs_stopped_first: ProcFactory, tmp_path: Path
) -> None:
    """A client without a token follows the 401's resource_metadata URL (RFC 9728 §5.1)."""
    port = free_port()  # known before the gateway starts: its BRIDGE_PUBLIC_URL
    public = f"http://127.0.0.1:{port}"
    _, proxy = await gateway_behind(
        procs_stopped_first, tmp_path, run,
        "--oauth-issuer", ISSUER,
        "--oauth-jwks-url", f"{ISSUER}/jwks.json",  # never fetched: no token is sent
        "--oauth-scopes", '["mcp:use"]',
        "--public-url", public,
        port=port,
    )  # fmt: skip
    assert proxy == public
    async with aiohttp.ClientSession() as http:
        for method, path in (
            ("POST", "/mcp"),
            ("POST", f"/servers/{SERVER}/http"),
            ("GET", "/sse"),
            ("GET", f"/servers/{SERVER}/sse"),
        ):
            async with http.request(method, proxy + path, json=PING, headers=ACCEPT) as response:
                assert response.status == 401, path
                challenge = response.headers["WWW-Authenticate"]
            metadata = challenge.split('resource_metadata="', 1)[1].split('"', 1)[0]
            assert metadata == f"{public}/.well-known/oauth-protected-resource{path}"
            async with http.get(metadata) as response:
                assert response.status == 200, metadata
                body = await response.json()
            assert body["resource"] == public + path
            assert body["authorization_servers"] == [ISSUER]


async def two_replicas_behind(
    run: Runner, procs: ProcFactory, tmp_path: Path, redis: RedisServer, affinity: bool = True
) -> tuple[list[int], str]:
    """Two gateways on ``redis`` in front of the fixture (stdio), and ``run``'s proxy
    in front of them: their ports and the proxy's URL."""
    config = tmp_path / "servers.json"
    server = {"command": sys.executable, "args": [str(FIXTURE_SERVER)]}
    config.write_text(json.dumps({"mcpServers": {SERVER: server}}))
    ports = []
    for _ in range(2):
        _, gateway = await start_gateway(procs, "--config", str(config), "--store-url", redis.url)
        ports.append(int(gateway.rsplit(":", 1)[1]))
    tmp = tmp_path / "proxy"
    tmp.mkdir()
    return ports, await run(procs, tmp, ports, free_port(), affinity=affinity)


@pytest.mark.parametrize("run", PROXIES)
async def test_two_replicas_keep_each_client_on_its_replica(
    run: Runner, procs_stopped_first: ProcFactory, tmp_path: Path, redis: RedisServer
) -> None:
    """Two gateways on one Redis: a legacy connection (process-local) must get its
    POSTs on the replica holding its GET stream; Streamable HTTP sessions work too."""
    _, proxy = await two_replicas_behind(run, procs_stopped_first, tmp_path, redis)
    for _ in range(3):  # round-robin would send some POSTs to the other replica
        await run_legacy_scenario(f"{proxy}/sse", FASTMCP)
    await run_scenario(f"{proxy}/mcp", FASTMCP)


@pytest.mark.parametrize("run", PROXIES)
async def test_two_replicas_need_no_affinity(
    run: Runner, procs_stopped_first: ProcFactory, tmp_path: Path, redis: RedisServer
) -> None:
    """The snippets with their affinity taken out (round robin): every message of a
    session, sampling answers included, still reaches the replica holding it (issue #12)."""
    ports, proxy = await two_replicas_behind(
        run, procs_stopped_first, tmp_path, redis, affinity=False
    )
    await run_legacy_scenario(f"{proxy}/sse", FASTMCP)
    await run_scenario(f"{proxy}/mcp", FASTMCP)
    async with aiohttp.ClientSession() as http:
        forwarded = 0
        for port in ports:
            async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                forwarded += (await response.json())["replica"]["forwarded"]
    assert forwarded > 0  # round robin did split sessions over the replicas
