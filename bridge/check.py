"""``mcp-bridge --check``: validate and resolve a configuration without serving it.

Finds at once everything a start would trip on, and more a start finds only
when a client connects: every setting; every server entry (``${VAR}``
expansion, fields, URLs); each stdio command on the ``PATH`` its child would
get, and its ``cwd``; the API keys; the store reachable (a probe record
written and read back within ``BRIDGE_STORE_PROBE_TIMEOUT``; an SQLite file
that does not exist yet is not created, its directory must be creatable).
Prints what would run to stdout; every problem to stderr, one per line.
Exit status 0, or 2 if anything is wrong.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Final, TextIO

from bridge import auth, options
from bridge.app import stores_for
from bridge.errors import ConfigError
from bridge.servers import (
    AutoHttpServer,
    ServerFile,
    ServerSpec,
    SseServer,
    StdioServer,
    read_server_sources,
)
from bridge.sessions.store import StoreUnavailable
from bridge.settings import ServerSources, Settings
from bridge.stores import redact, sqlite_path
from bridge.upstreams.stdio import SAFE_ENV

EXIT_OK: Final = 0
EXIT_BAD: Final = 2


def command_problem(spec: StdioServer, environ: dict[str, str]) -> str | None:
    """Why ``spec``'s command would not start, or None: looked up as the child's exec would.

    The child's ``PATH`` is its own ``env``'s, else the gateway's (the child
    gets only :data:`SAFE_ENV` from the gateway); a command with a ``/`` is
    taken relative to ``cwd``.
    """
    child_env = {k: environ[k] for k in SAFE_ENV if k in environ} | spec.env
    cwd = Path(spec.cwd) if spec.cwd else Path.cwd()
    if spec.cwd and not cwd.is_dir():
        return f"cwd {spec.cwd!r} is not a directory"
    if "/" in spec.command:
        path = cwd / spec.command
        if not (path.is_file() and os.access(path, os.X_OK)):
            return f"command {spec.command!r} is not an executable file"
        return None
    search = child_env.get("PATH", os.defpath)
    if shutil.which(spec.command, path=search) is None:
        return f"command {spec.command!r} is not found on PATH {search!r}"
    return None


async def store_problem(settings: Settings) -> str | None:
    """Why the store could not be used, or None."""
    url = settings.store_url
    if url.lower().startswith("sqlite:"):
        path = sqlite_path(url)
        if not path.exists():
            ancestor = next(p for p in path.parents if p.exists())
            if not os.access(ancestor, os.W_OK | os.X_OK):
                return f"store {url}: cannot create {path}: {ancestor} is not writable"
            return None  # created on first start
    try:
        stores = await stores_for(settings, lock=False)
    except ConfigError as exc:
        return str(exc)
    try:
        async with asyncio.timeout(settings.store_probe_timeout):
            await stores.sessions.ping()
    except StoreUnavailable as exc:
        return f"store {redact(url)}: unavailable: {exc}"
    except TimeoutError:
        return f"store {redact(url)}: no answer within {settings.store_probe_timeout:g} s"
    finally:
        await stores.aclose()
    return None


def _describe(spec: ServerSpec, base: str, single: bool) -> list[str]:
    if isinstance(spec, StdioServer):
        what = f"stdio: {spec.command} {' '.join(spec.args)}".rstrip()
        if spec.cwd:
            what += f" (cwd {spec.cwd})"
        if spec.env:
            what += f" (env {', '.join(sorted(spec.env))})"  # names only: values may be secrets
    else:
        kind = {SseServer: "legacy SSE", AutoHttpServer: "HTTP, transport detected"}.get(
            type(spec), "Streamable HTTP"
        )
        what = f"{kind}: {spec.url}"
    root = f"{base}/servers/{spec.name}"
    also = (" (also {base}/mcp)", " (also {base}/sse)") if single else ("", "")
    return [
        f"server {spec.name}: {what}",
        f"  Streamable HTTP: {root}/mcp{also[0].format(base=base)}",
        f"  legacy SSE:      {root}/sse{also[1].format(base=base)}",
    ]


async def _resolve(settings: Settings, found: ServerFile, out: TextIO) -> list[str]:
    problems = []
    try:
        auth.from_settings(settings, lambda _path: False)
    except ConfigError as exc:
        problems.append(str(exc))
    if why := await store_problem(settings):
        problems.append(why)
    base = f"http://{settings.host}:{settings.port}"
    print(f"listen: {base}", file=out)
    print(f"store: {redact(settings.store_url)}", file=out)
    print(f"auth: {'on' if settings.auth_enabled else 'off'}", file=out)
    for spec in found.specs:
        for line in _describe(spec, base, len(found.specs) == 1):
            print(line, file=out)
    for name in found.disabled:
        print(f"server {name}: disabled", file=out)
    for name, keys in found.ignored.items():
        print(f"server {name}: client-only keys ignored: {', '.join(keys)}", file=out)
    return problems


def run(
    flags: dict[str, Any],
    environ: dict[str, str] | None = None,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Check the configuration ``flags`` and the environment give; print, and return the status."""
    env = dict(os.environ) if environ is None else environ
    problems: list[str] = []
    settings: Settings | None = None
    sources: ServerSources | None
    try:
        settings = options.settings_from(flags)
        sources = settings
    except ConfigError as exc:
        problems += str(exc).splitlines()
        try:
            sources = options.sources_from(flags)
        except ConfigError:
            sources = None
    found = ServerFile()
    if sources is not None:
        try:
            found = read_server_sources(sources, env)
        except ConfigError as exc:
            problems += str(exc).splitlines()
        problems += found.problems
    for spec in found.specs:
        if isinstance(spec, StdioServer) and (why := command_problem(spec, env)):
            problems.append(f"server {spec.name!r}: {why}")
    if settings is not None:
        problems += asyncio.run(_resolve(settings, found, out))
    for problem in problems:
        print(f"mcp-bridge: {problem}", file=err)
    if problems:
        print(f"mcp-bridge: {len(problems)} problem(s); nothing was started", file=err)
        return EXIT_BAD
    print("configuration OK", file=out)
    return EXIT_OK
