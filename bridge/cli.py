"""``mcp-bridge``: argv -> Settings -> logging -> servers -> serve. No protocol logic."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import signal
import sys
from collections.abc import Sequence

import structlog
from aiohttp import web
from pydantic import ValidationError

from bridge import log as bridge_log
from bridge import memory, tasks
from bridge.app import GATE, HUB, build_app
from bridge.errors import ConfigError
from bridge.frontends.connections import AcceptErrors, GuardedSite
from bridge.loop import loop_factory
from bridge.settings import ServerSpec, Settings, load_servers
from bridge.upstreams import descendants

EXIT_CONFIG = 2
#: Short flags the issues name, for settings whose field names are longer.
_ALIASES = {"--store": "--store-url"}
log = structlog.get_logger("bridge")


def _expand_aliases(args: list[str]) -> list[str]:
    expanded = []
    for arg in args:
        flag, equals, value = arg.partition("=")
        expanded.append(_ALIASES.get(flag, flag) + equals + value)
    return expanded


def main(argv: Sequence[str] | None = None) -> int:
    """Run the gateway until SIGINT/SIGTERM; exit 2 on a bad configuration."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["sessions"]:
        from bridge import admin  # only the admin command needs it

        return admin.main(args[1:])
    if args[:1] == ["api-key"]:
        return new_api_key(args[1:])
    args = _expand_aliases(args)
    try:
        settings = Settings(_cli_parse_args=args)
        servers = load_servers(settings)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        print(f"mcp-bridge: setting {field!r}: {err['msg']}", file=sys.stderr)
        return EXIT_CONFIG
    except ConfigError as exc:
        print(f"mcp-bridge: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    bridge_log.configure(settings.log_level, settings.log_format)
    try:
        loop_name, factory = loop_factory(settings.event_loop)
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(serve(settings, servers, loop_name))
    except ConfigError as exc:  # found while building the app: store URL, API keys
        print(f"mcp-bridge: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:  # e.g. the port is taken
        log.error("cannot_listen", host=settings.host, port=settings.port, error=str(exc))
        return 1
    return 0


def new_api_key(args: Sequence[str]) -> int:
    """``mcp-bridge api-key NAME``: print a new random key and its config entry.

    The first line is the token to give the client; the second, the
    ``NAME:sha256:HEX`` entry for ``BRIDGE_API_KEYS``, so the gateway's config
    never holds the key itself.
    """
    if len(args) != 1 or not args[0] or ":" in args[0] or "," in args[0]:
        print("usage: mcp-bridge api-key NAME (no ':' or ',' in NAME)", file=sys.stderr)
        return EXIT_CONFIG
    token = secrets.token_urlsafe(32)
    print(token)
    print(f"{args[0]}:sha256:{hashlib.sha256(token.encode()).hexdigest()}")
    return 0


async def serve(
    settings: Settings, servers: Sequence[ServerSpec], loop_name: str = "asyncio"
) -> None:
    """Serve until SIGINT or SIGTERM, then shut down in aiohttp's documented order.

    Logs ``listening`` with the bound port once the socket accepts (``--port 0``
    picks a free one), and ``stopped`` when every session has been closed.
    The process is its stdio children's subreaper: their orphans come to it,
    and it reaps them (:mod:`bridge.upstreams.descendants`).
    """
    memory.return_freed_memory()
    reaper = None
    if descendants.become_subreaper():
        reaper = tasks.spawn(descendants.Reaper().run(), name="orphan-reaper")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    app = await build_app(settings, servers)
    # accept() out of file descriptors: a count per interval, not a traceback each.
    loop.set_exception_handler(AcceptErrors(settings.accept_error_log_interval, app[HUB].metrics))
    runner = web.AppRunner(
        app, handler_cancellation=True, access_log=None, shutdown_timeout=settings.shutdown_timeout
    )
    await runner.setup()
    try:
        site = GuardedSite(runner, settings.host, settings.port, app[GATE])
        await site.start()
        ports = [addr[1] for addr in runner.addresses]
        # At warning level so that it shows whatever the log level: supervisors,
        # tests and benchmarks read the bound port from it.
        log.warning(
            "listening",
            host=settings.host,
            port=ports[0] if ports else settings.port,
            servers=[f"{s.name} ({type(s).__name__})" for s in servers],
            max_connections=app[GATE].cap,
            event_loop=loop_name,
        )
        await stop.wait()
        log.info("shutting_down")
    finally:
        await runner.cleanup()
        if reaper is not None:
            await tasks.cancel_and_wait(reaper, 1.0, "shutting down")
        log.info("stopped")
