"""Real 2026-07-28 clients through the gateway: the official SDKs in auto mode.

Clients, each run as a subprocess that prints one JSON line (tests/modern_clients/):

- ``py_client.py``: the Python SDK 2.x ``mcp.Client`` (``mode="auto"``), run by
  ``.venv-sdk2/bin/python`` since the main venv holds SDK 1.x;
- ``ts_client.mjs``: the TypeScript SDK v2 ``Client`` from
  ``@modelcontextprotocol/client`` (``versionNegotiation: {mode: "auto"}``), run
  by the Node 22 in tests/npm.

Both probe with ``server/discover`` first and fall back to ``initialize`` when
the answer is not a DiscoverResult naming 2026-07-28, so a gateway that only
speaks the session era still "works" with them: the tests assert the
negotiated version (2026-07-28), not just success. Then tools/list, a
tools/call with progress (every notification before the result), resources,
prompts, and an elicitation round trip, which at 2026-07-28 is an
InputRequiredResult the client answers and retries, the gateway turning it
into the session-era upstream's elicitation/create.

Upstream: the session-era conformance fixture (FastMCP, SDK 1.x) over stdio and
over Streamable HTTP; also stdio behind an API key, the scripts sending the
bearer token. On the same gateway URL, an SDK 1.x client's session is opened
before the modern clients run and exercised after them (the
test_sdk_clients scenario), so both eras are served side by side.

The Inspector's CLI (``@modelcontextprotocol/inspector-cli``, SDK 1.x) runs on
the same URL at the same time as the SDK 2.x client, and gets a session.

tests/modern_clients/native_server.py is an SDK 2.x server with the same
tools, not used here: run the scripts against it by hand to tell a script
fault from a gateway fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.context import RequestContext
from pydantic import SecretStr

from bridge.settings import ServerSpec, StreamableHttpServer
from tests.conftest import (
    NODE22_BIN,
    NPM_BIN,
    REPO,
    GatewayFactory,
    ProcFactory,
    fixture_stdio,
    start_fixture_http,
)
from tests.integration.test_sdk_clients import FASTMCP, SAMPLED, exercise

MODERN = "2026-07-28"
SESSION_ERA = "2025-11-25"  # what SDK 1.x negotiates through the gateway
SCRIPTS = REPO / "tests" / "modern_clients"
PY_CLIENT = SCRIPTS / "py_client.py"
TS_CLIENT = SCRIPTS / "ts_client.mjs"
NATIVE_SERVER = SCRIPTS / "native_server.py"
SDK2_PYTHON = REPO / ".venv-sdk2" / "bin" / "python"
NODE = NODE22_BIN / "node"
CLIENT_TIMEOUT = 45.0  # seconds for one client script to print its line and exit
TOKEN = "modern-clients-token"
RESULT_LINE = r'^\{"client": ?"'  # the scripts' one JSON line (stdout; stderr is free text)
ELICITATION_PREFIX = "User response: action=accept, content="


def _pinned_sdk2() -> str:
    """The mcp version tests/modern_clients/requirements.txt pins."""
    text = (SCRIPTS / "requirements.txt").read_text()
    match = re.search(r"^mcp==(\S+)$", text, re.MULTILINE)
    assert match, text
    return match.group(1)


def _pinned_ts_client() -> str:
    package = json.loads((REPO / "tests" / "npm" / "package.json").read_text())
    version = package["dependencies"]["@modelcontextprotocol/client"]
    assert isinstance(version, str)
    return version


def client_commands(url: str, token: str | None) -> dict[str, list[str | Path]]:
    """Each modern client's command line, by the name it reports in ``client``."""
    extra = ["--token", token] if token else []
    return {
        f"python-sdk-{_pinned_sdk2()}": [SDK2_PYTHON, PY_CLIENT, url, *extra],
        f"typescript-sdk-{_pinned_ts_client()}": [NODE, TS_CLIENT, url, *extra],
    }


async def run_client(procs: ProcFactory, argv: list[str | Path]) -> dict[str, Any]:
    """Run one client script; its JSON line once it has exited 0."""
    assert SDK2_PYTHON.exists(), "no .venv-sdk2: see README.md 'Test it'"
    proc = await procs(*argv)
    match = await proc.wait_for(RESULT_LINE, within=CLIENT_TIMEOUT)
    code = await proc.exited(CLIENT_TIMEOUT)
    assert code == 0, "\n".join(proc.lines)
    result: dict[str, Any] = json.loads(match.string)
    return result


def check_scenario(result: dict[str, Any], era: str) -> None:
    """Every field a client script reports, against the conformance fixture's answers.

    ``era`` is the protocol version the client must have negotiated.
    """
    assert result["protocol_version"] == era, result
    assert result["era"] == ("modern" if era == MODERN else "legacy"), result
    assert {"test_simple_text", "test_tool_with_progress", "test_elicitation"} <= set(
        result["tools"]
    ), result["tools"]
    assert result["simple_text"] == "This is a simple text response for testing."
    assert result["progress"] == [
        {"progress": step, "total": 100, "message": f"Completed step {step} of 100"}
        for step in (0, 50, 100)
    ]
    assert result["progress_result"] == "Tool with progress executed successfully"
    assert "test://static-text" in result["resources"], result["resources"]
    assert result["resource_text"] == "This is the content of the static text resource."
    assert "test_simple_prompt" in result["prompts"], result["prompts"]
    assert result["prompt_text"] == "This is a simple prompt for testing."
    # The upstream's question reached the handler once, and its answer reached the tool.
    assert result["elicitations"] == [
        {"message": result["elicitation_message"], "fields": ["email", "username"]}
    ]
    text = result["elicitation_result"]
    assert text.startswith(ELICITATION_PREFIX), text
    assert json.loads(text.removeprefix(ELICITATION_PREFIX)) == result["elicited_content"]


async def _sampling(
    context: RequestContext[ClientSession, Any], params: types.CreateMessageRequestParams
) -> types.CreateMessageResult:
    return types.CreateMessageResult(
        role="assistant", content=types.TextContent(type="text", text=SAMPLED), model="test"
    )


Setup = Callable[[ProcFactory], Awaitable[ServerSpec]]


async def _fixture_stdio(procs: ProcFactory) -> ServerSpec:
    return fixture_stdio()


async def _fixture_http(procs: ProcFactory) -> ServerSpec:
    _, url = await start_fixture_http(procs)
    return StreamableHttpServer(name="remote", url=url, type="streamable-http")


@pytest.mark.parametrize(
    ("setup", "token"),
    [
        pytest.param(_fixture_stdio, None, id="stdio"),
        pytest.param(_fixture_http, None, id="streamable-http"),
        pytest.param(_fixture_stdio, TOKEN, id="stdio-api-key"),
    ],
)
async def test_modern_clients_reach_2026_07_28(
    setup: Setup, token: str | None, procs: ProcFactory, gateway: GatewayFactory
) -> None:
    spec = await setup(procs)
    overrides = {"api_keys": SecretStr(f"tester:{token}")} if token else {}
    url = f"{(await gateway([spec], **overrides)).url}/mcp"
    headers = {"Authorization": f"Bearer {token}"} if token else None

    async with AsyncExitStack() as stack:
        # An SDK 1.x session on the same URL, open while the modern clients run.
        http = await stack.enter_async_context(
            httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(30.0, read=300.0))
        )
        read, write, get_session_id = await stack.enter_async_context(
            streamable_http_client(url, http_client=http)
        )
        session = await stack.enter_async_context(
            ClientSession(read, write, sampling_callback=_sampling)
        )
        assert (await session.initialize()).protocolVersion == SESSION_ERA
        assert get_session_id()

        for name, argv in client_commands(url, token).items():
            result = await run_client(procs, argv)
            assert result["client"] == name
            check_scenario(result, MODERN)

        await exercise(session, FASTMCP)


def test_sdk2_scripts_type_check() -> None:
    """mypy strict over the SDK 2.x scripts against .venv-sdk2 (the main run sees SDK 1.x)."""
    assert SDK2_PYTHON.exists(), "no .venv-sdk2: see README.md 'Test it'"
    command = [
        sys.executable, "-m", "mypy", "--python-executable", str(SDK2_PYTHON),
        "--cache-dir", str(REPO / ".mypy_cache" / "sdk2"), str(PY_CLIENT), str(NATIVE_SERVER),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


# -- the MCP Inspector's CLI on the same URL ----------------------------------

INSPECTOR_CLI_PACKAGE = "@modelcontextprotocol/inspector-cli"
# The launcher (build/cli.js): with --cli it spawns ``node build/index.js``, node from PATH.
INSPECTOR_CLI = NPM_BIN / "mcp-inspector-cli"
INSPECTOR_CLI_DIR = REPO / "tests" / "npm" / "node_modules" / INSPECTOR_CLI_PACKAGE
SIMPLE_TEXT = "This is a simple text response for testing."


def _pinned_npm(package: str) -> str:
    """The exact version tests/npm/package.json pins for ``package``."""
    pinned = json.loads((REPO / "tests" / "npm" / "package.json").read_text())
    version = pinned["dependencies"][package]
    assert isinstance(version, str)
    return version


async def run_inspector_cli(url: str, *method: str) -> dict[str, Any]:
    """``mcp-inspector-cli --cli URL --transport http --method ...``: its stdout, parsed.

    Run by the Node 22 in tests/npm, first on PATH for the CLI process the
    launcher spawns. stdout and stderr are read apart: stdout must be the bare
    JSON (what a CI job pipes into jq), stderr carries the launcher's v1
    deprecation notice. The cwd is the package's build/ because 1.0.3 probes
    ``../package.json`` relative to the cwd but imports it relative to the
    module (modelcontextprotocol/inspector#1503, #1702): from a cwd whose parent
    holds no package.json it dies with ERR_MODULE_NOT_FOUND before connecting.
    """
    argv = [NODE, INSPECTOR_CLI, "--cli", url, "--transport", "http", "--method", *method]
    process = await asyncio.create_subprocess_exec(
        *map(str, argv),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=INSPECTOR_CLI_DIR / "build",
        env={**os.environ, "PATH": f"{NODE22_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"},
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(CLIENT_TIMEOUT):
            out, err = await process.communicate()  # both pipes at EOF: the spawned CLI is gone too
    except BaseException:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # the launcher and the CLI it spawned
        await process.wait()
        raise
    assert process.returncode == 0, err.decode(errors="replace")
    result = json.loads(out)
    assert isinstance(result, dict), out
    return result


async def test_inspector_cli_on_the_same_url(procs: ProcFactory, gateway: GatewayFactory) -> None:
    """The Inspector's CLI (SDK 1.x) and the Python SDK 2.x client on one URL, at once.

    The CLI (@modelcontextprotocol/inspector-cli, what ``npx
    @modelcontextprotocol/inspector@0.x --cli`` runs) is a session-era client:
    it must still get a session, at 2025-11-25, while the SDK 2.x client, run
    concurrently, reaches 2026-07-28 sessionless on the same ``/mcp``.
    """
    gw = await gateway([fixture_stdio()])
    url = f"{gw.url}/mcp"
    python_sdk = f"python-sdk-{_pinned_sdk2()}"

    listed, called, modern = await asyncio.gather(
        run_inspector_cli(url, "tools/list"),
        run_inspector_cli(url, "tools/call", "--tool-name", "test_simple_text"),
        run_client(procs, client_commands(url, None)[python_sdk]),
    )

    assert "test_simple_text" in {tool["name"] for tool in listed["tools"]}, listed
    assert called == {"content": [{"type": "text", "text": SIMPLE_TEXT}], "isError": False}
    assert modern["client"] == python_sdk
    check_scenario(modern, MODERN)

    # One session per CLI run, at the session era (the CLI closes its transport
    # without a DELETE, so both are still live), and none for the SDK 2.x client.
    cli = f"inspector-cli {_pinned_npm(INSPECTOR_CLI_PACKAGE)}"  # its clientInfo
    sessions = [(s.record.summary()["client"], s.record.protocol_version) for s in gw.hub.live()]
    assert sessions == [(cli, SESSION_ERA), (cli, SESSION_ERA)], sessions
