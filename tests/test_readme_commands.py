"""Every shell command README.md gives is run by a test, or checked by one (issue #14).

:func:`readme_commands` extracts the command lines of README.md's ``sh``,
``bash`` and ``console`` blocks (continuations joined, comments dropped).
:data:`COVERAGE` says, for each, which test covers it: :class:`Run`, a test
in this file runs it as written (a port or a placeholder substituted, said
where); :class:`Static`, a test elsewhere checks it without running it (the
Docker, Kubernetes and install commands, which need Docker, a cluster or a
published package). A command added to the README without an entry here, or
an entry whose command or test is gone, fails :func:`test_every_readme_command_is_covered`.

The commands run here run from the repository, as a clone's user would, with
this venv's ``bin`` first on ``PATH`` (what ``. .venv/bin/activate`` does),
``XDG_STATE_HOME`` in ``tmp_path`` so the user's state directory is never
touched, and every wait bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aiohttp

from bridge.settings import Settings
from tests.conftest import NODE22_BIN, REPO, ProcFactory
from tests.integration.test_modern_clients import INSPECTOR_CLI, INSPECTOR_CLI_DIR, NODE
from tests.rawclient import RawClient

README: Final = REPO / "README.md"
COMMAND_TIMEOUT: Final = 20.0  # seconds for one short command (a CLI call, --check) to exit
INSPECTOR_TIMEOUT: Final = 25.0  # seconds for one Inspector CLI run (Node start, connect, list)
EXAMPLE_TOOLS: Final = {"echo", "add", "slow"}  # bridge.examples.server's tools


# --- extracting the commands ---------------------------------------------------------


def _strip_comment(line: str) -> str:
    """``line`` without its ``#`` comment (a ``#`` outside quotes, at a word's start)."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def join_continuations(text: str) -> str:
    """``text`` with each line ending in ``\\`` joined to the next by one space."""
    return re.sub(r"[ \t]*\\\n\s*", " ", text)


def readme_commands(text: str) -> list[str]:
    """The command lines of ``text``'s ``sh``/``bash``/``console`` fenced blocks, in order.

    A line ending in ``\\`` is joined to the next with one space; comments and
    blank lines are dropped. In ``console`` blocks only ``$ `` lines are
    commands (the rest is output), given without the prompt.
    """
    commands = []
    for lang, block in re.findall(r"^```(sh|bash|console)\n(.*?)^```", text, re.DOTALL | re.M):
        for raw in join_continuations(block).splitlines():
            line = raw
            if lang == "console":
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            if command := _strip_comment(line).strip():
                commands.append(command)
    return commands


# --- what covers each command ---------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """A test in this file runs the command."""

    test: str


@dataclass(frozen=True)
class Static:
    """``test`` (``path::name``) checks the command without running it, for ``why``."""

    test: str
    why: str


RUN_LINE: Final = (
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[example]'"
    " && mcp-bridge --config config/example.json"
)
INSPECTOR: Final = (
    "npx @modelcontextprotocol/inspector --cli http://127.0.0.1:8080/mcp"
    " --transport http --method tools/list"
)
COMPOSE_INSPECTOR: Final = INSPECTOR.replace("127.0.0.1", "localhost")
SSE_EXAMPLE: Final = "mcp-bridge --sse http://old-host:8000/sse"
STDIO_EXAMPLE: Final = 'mcp-bridge --stdio "npx -y @modelcontextprotocol/server-filesystem /data"'
DEV_INSTALL: Final = (
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[dev]'"
    " && npm ci --prefix tests/npm && python3 -m venv .venv-sdk2"
    " && .venv-sdk2/bin/pip install -q -r tests/modern_clients/requirements.txt"
)
TEST_COMMAND: Final = "python -m pytest"
SESSIONS_LIST: Final = "mcp-bridge sessions list   [--store-url URL] [--limit N]"
SESSIONS_SHOW: Final = "mcp-bridge sessions show   SESSION_ID"
SESSIONS_DELETE: Final = "mcp-bridge sessions delete SESSION_ID"

NEEDS_DOCKER: Final = "needs Docker"
DOCKER_COMMANDS: Final = Static(
    "tests/test_deploy.py::test_readme_docker_commands_work_as_written", NEEDS_DOCKER
)
NOT_PUBLISHED: Final = "installs the published distribution from PyPI"

COVERAGE: Final[dict[str, Run | Static]] = {
    "pipx install mcp-bridge-gateway": Static(
        "tests/test_packaging.py::test_readme_install_lines_name_the_distribution", NOT_PUBLISHED
    ),
    "uvx mcp-bridge-gateway --config servers.json": Static(
        "tests/test_packaging.py::test_readme_install_lines_name_the_distribution", NOT_PUBLISHED
    ),
    RUN_LINE: Run("test_readme_run_command_answers_the_inspector"),
    INSPECTOR: Run("test_readme_run_command_answers_the_inspector"),
    SSE_EXAMPLE: Run("test_readme_flag_examples_check_ok"),
    STDIO_EXAMPLE: Run("test_readme_flag_examples_check_ok"),
    DEV_INSTALL: Static(
        "tests/test_readme_commands.py::test_ci_installs_what_the_readme_test_section_does",
        ".ci/run runs it, on a fresh machine",
    ),
    TEST_COMMAND: Static(
        "tests/test_repo.py::test_ci_runs_the_readme_test_command",
        ".ci/run runs it (it is the whole suite, this test among it)",
    ),
    SESSIONS_LIST: Run("test_readme_sessions_commands_see_and_evict"),
    SESSIONS_SHOW: Run("test_readme_sessions_commands_see_and_evict"),
    SESSIONS_DELETE: Run("test_readme_sessions_commands_see_and_evict"),
    "docker build --build-arg EXTRAS=example -t mcp-bridge-example .": DOCKER_COMMANDS,
    'docker run --rm -p 127.0.0.1:8080:8080 -v "$PWD/config:/config:ro"'
    " -v mcp-bridge-data:/data -e BRIDGE_CONFIG=/config/example.json"
    ' -e BRIDGE_ALLOWED_HOSTS=\'["localhost", "127.0.0.1"]\''
    " --stop-timeout 15 mcp-bridge-example": Static(
        "tests/test_deploy.py::test_readme_docker_run_serves_on_the_host",
        NEEDS_DOCKER + "; test_readme_docker_commands_work_as_written checks its flags",
    ),
    "docker build --target node -t mcp-bridge:node .": DOCKER_COMMANDS,
    'docker run --rm -p 127.0.0.1:8080:8080 -v "$PWD/config:/config:ro"'
    " -e BRIDGE_CONFIG=/config/everything.json"
    " -e BRIDGE_ALLOWED_HOSTS='[\"localhost\"]' mcp-bridge:node": DOCKER_COMMANDS,
    "docker compose up --build": Static(
        "tests/test_deploy.py::test_compose_stack_runs_on_the_host",
        NEEDS_DOCKER + "; the services run as host processes",
    ),
    "docker compose --profile replicas up --build": Static(
        "tests/test_deploy.py::test_compose_replicas_profile_balances_without_affinity",
        NEEDS_DOCKER + "; tests/integration/test_reverse_proxies.py::"
        "test_two_replicas_need_no_affinity runs nginx round robin over two replicas",
    ),
    # Run here against the gateway on the host; the compose stack itself
    # answers tools/list in tests/test_deploy.py::test_compose_stack_runs_on_the_host.
    COMPOSE_INSPECTOR: Run("test_readme_run_command_answers_the_inspector"),
    "kubectl apply -k deploy/k8s": Static(
        "tests/test_deploy.py::test_rendered_manifests_validate_against_the_kubernetes_schema",
        "needs a cluster; the kustomization's manifests are validated against the schema",
    ),
}


def _test_exists(test: str) -> bool:
    path, _, name = test.rpartition("::")
    source = (REPO / path).read_text() if path else Path(__file__).read_text()
    return re.search(rf"^(async )?def {re.escape(name)}\(", source, re.M) is not None


def test_extraction_joins_continuations_and_drops_comments() -> None:
    text = (
        "```sh\n# a comment\nfoo --a 'x # y' \\\n  --b   # why\n\n```\n"
        "```console\n$ bar\noutput\n```\n```json\n{}\n```\n```\nplain\n```\n"
    )
    assert readme_commands(text) == ["foo --a 'x # y' --b", "bar"]


def test_every_readme_command_is_covered() -> None:
    commands = readme_commands(README.read_text())
    assert commands
    missing = [c for c in commands if c not in COVERAGE]
    assert not missing, f"README commands with no test (add them to COVERAGE): {missing}"
    gone = [c for c in COVERAGE if c not in commands]
    assert not gone, f"COVERAGE names commands README.md no longer gives: {gone}"
    no_test = [(c, k.test) for c, k in COVERAGE.items() if not _test_exists(k.test)]
    assert not no_test, f"COVERAGE names tests that do not exist: {no_test}"


# --- running them ------------------------------------------------------------------


@dataclass(frozen=True)
class Done:
    code: int
    out: str
    err: str


def activated_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment after ``. .venv/bin/activate``, with the state directory in ``tmp_path``."""
    venv_bin = Path(sys.executable).parent
    return {
        **os.environ,
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', os.defpath)}",
        "VIRTUAL_ENV": str(venv_bin.parent),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def executable(argv: list[str], env: dict[str, str]) -> list[str]:
    found = shutil.which(argv[0], path=env["PATH"])
    assert found, f"{argv[0]} is not on PATH"
    return [found, *argv[1:]]


async def run_command(
    argv: Sequence[str | Path],
    env: dict[str, str],
    cwd: Path = REPO,
    within: float = COMMAND_TIMEOUT,
) -> Done:
    """Run ``argv`` to its end (bounded); its whole process group is killed if it overstays."""
    process = await asyncio.create_subprocess_exec(
        *map(str, argv),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env=env,
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(within):
            out, err = await process.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        raise
    assert process.returncode is not None
    return Done(process.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


def fill(command: str, values: dict[str, str]) -> list[str]:
    """``command``'s words, its ``[optional]`` parts kept and its PLACEHOLDERS given ``values``."""
    words = shlex.split(re.sub(r"\[([^]]*)\]", r"\1", command))
    return [values.get(word, word) for word in words]


def with_port(command: str, port: int) -> list[str]:
    """``command``'s words, its ``:8080`` URLs pointed at ``port``."""
    return [w.replace(":8080/", f":{port}/") if "://" in w else w for w in shlex.split(command)]


def defined_extras() -> set[str]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    return set(pyproject["project"]["optional-dependencies"])


async def inspector_tools(command: str, port: int) -> set[str]:
    """Run README's ``npx @modelcontextprotocol/inspector --cli ...`` line: the tool names.

    ``npx @modelcontextprotocol/inspector`` would download the Inspector; its
    ``--cli`` mode is ``@modelcontextprotocol/inspector-cli``, which tests/npm
    pins, so that binary runs with the same arguments (see
    tests/integration/test_modern_clients.py::run_inspector_cli for its cwd
    and Node).
    """
    argv = with_port(command, port)
    assert argv[:2] == ["npx", "@modelcontextprotocol/inspector"], argv
    env = {**os.environ, "PATH": f"{NODE22_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = await run_command(
        [NODE, INSPECTOR_CLI, *argv[2:]],
        env,
        cwd=INSPECTOR_CLI_DIR / "build",
        within=INSPECTOR_TIMEOUT,
    )
    assert done.code == 0, done.err
    return {tool["name"] for tool in json.loads(done.out)["tools"]}


async def test_readme_run_command_answers_the_inspector(procs: ProcFactory, tmp_path: Path) -> None:
    """README's run line, then its two Inspector lines against what it serves.

    The venv and install steps are this test run's own venv (the ``example``
    extra must exist, and the example server's ``mcp`` SDK be installed);
    ``mcp-bridge --config config/example.json`` runs as written from the
    repository, on a free port and with the memory store (through the
    environment, as the settings allow).
    """
    *setup, run = (part.strip() for part in RUN_LINE.split("&&"))
    assert setup == ["python3 -m venv .venv", ". .venv/bin/activate", "pip install -e '.[example]'"]
    assert "example" in defined_extras()
    # "It listens on http://127.0.0.1:8080/http": the defaults the port is overridden from.
    assert (Settings.model_fields["host"].default, Settings.model_fields["port"].default) == (
        "127.0.0.1",
        8080,
    )
    env = activated_env(
        tmp_path, BRIDGE_PORT="0", BRIDGE_STORE_URL="memory://", BRIDGE_LOG_FORMAT="json"
    )
    gateway = await procs(*executable(shlex.split(run), env), env=env, cwd=REPO)
    listening = json.loads((await gateway.wait_for(r'"event": "listening"')).string)
    assert listening["host"] == "127.0.0.1"

    for command in (INSPECTOR, COMPOSE_INSPECTOR):
        assert await inspector_tools(command, listening["port"]) >= EXAMPLE_TOOLS, command
    assert not (tmp_path / "state").exists()  # memory://: nothing written to the state dir


async def test_readme_sessions_commands_see_and_evict(procs: ProcFactory, tmp_path: Path) -> None:
    """``mcp-bridge sessions list/show/delete`` on the SQLite store a gateway just used."""
    store = f"sqlite:///{tmp_path / 'sessions.db'}"
    env = activated_env(tmp_path, BRIDGE_STORE_URL=store)
    gateway = await procs(
        *executable(["mcp-bridge"], env),
        *("--config", "config/example.json", "--port", "0", "--log-format", "json"),
        env=env,
        cwd=REPO,
    )
    port = json.loads((await gateway.wait_for(r'"event": "listening"')).string)["port"]
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, f"http://127.0.0.1:{port}/http")
        await client.initialize()
    session_id = client.session_id
    assert session_id

    listed = await run_command(executable(fill(SESSIONS_LIST, {"URL": store, "N": "10"}), env), env)
    assert listed.code == 0, listed.err
    summaries = [json.loads(line) for line in listed.out.splitlines()]
    assert [(s["session_id"], s["server"], s["client"]) for s in summaries] == [
        (session_id, "example", "raw-test-client 0")
    ]

    values = {"SESSION_ID": session_id}
    shown = await run_command(executable(fill(SESSIONS_SHOW, values), env), env)
    assert shown.code == 0, shown.err
    record = json.loads(shown.out)
    assert (record["session_id"], record["server"]) == (session_id, "example")

    deleted = await run_command(executable(fill(SESSIONS_DELETE, values), env), env)
    assert deleted.code == 0, deleted.err
    assert json.loads(deleted.out) == {"session_id": session_id, "deleted": True}

    after = await run_command(executable(fill(SESSIONS_LIST, {"URL": store, "N": "10"}), env), env)
    assert (after.code, after.out) == (0, "")
    gone = await run_command(executable(fill(SESSIONS_SHOW, values), env), env)
    assert gone.code == 1
    assert json.loads(gone.out) == {"session_id": session_id, "found": False}


async def test_readme_flag_examples_check_ok(tmp_path: Path) -> None:
    """``mcp-bridge --sse URL`` and ``--stdio COMMAND``, with ``--check``: valid, and planned.

    The hosts are placeholders, so the commands run with ``--check`` appended,
    which validates everything a start would (settings, the stdio command on
    PATH, the default store's directory) and prints the plan without serving.
    """
    env = activated_env(tmp_path)
    for command, plan in (
        (SSE_EXAMPLE, "legacy SSE: http://old-host:8000/sse"),
        (STDIO_EXAMPLE, "stdio: npx -y @modelcontextprotocol/server-filesystem /data"),
    ):
        done = await run_command([*executable(shlex.split(command), env), "--check"], env)
        assert done.code == 0, done.err
        assert plan in done.out, done.out
        assert "configuration OK" in done.out, done.out
    assert not (tmp_path / "state").exists()  # --check creates no store


# --- checked statically -------------------------------------------------------------


def _quiet_free(command: str) -> list[str]:
    """``command``'s words without output-only flags and the ``python -m`` before pip."""
    words = [w for w in shlex.split(command) if w not in ("-q", "--no-audit", "--no-fund")]
    words = [w for w in words if not w.startswith("--loglevel=")]
    return words[2:] if words[:3] == ["python", "-m", "pip"] else words


def test_ci_installs_what_the_readme_test_section_does() -> None:
    """Each step of README's install line is a step of .ci/run, which then runs the tests."""
    ci_steps = [
        _quiet_free(step)
        for line in join_continuations((REPO / ".ci" / "run").read_text()).splitlines()
        for step in _strip_comment(line).split("&&")
        if step.strip()
    ]
    for step in DEV_INSTALL.split("&&"):
        assert _quiet_free(step) in ci_steps, step
    assert "dev" in defined_extras()
