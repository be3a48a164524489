"""``mcp-bridge``: argv -> Settings -> logging -> servers -> serve. No protocol logic."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import secrets
import signal
import sys
from collections.abc import Sequence
from typing import Final

import structlog
from aiohttp import web

from bridge import log as bridge_log
from bridge import memory, options, tasks
from bridge import tracing as bridge_tracing
from bridge.app import HUB, build_app, reload_servers
from bridge.errors import ConfigError
from bridge.frontends.connections import AcceptErrors, GuardedSite
from bridge.frontends.observe import GATE
from bridge.loop import loop_factory
from bridge.reload import Reloader
from bridge.settings import ServerSpec, Settings, load_servers
from bridge.stores import redact
from bridge.upstreams import descendants

EXIT_CONFIG = 2
log = structlog.get_logger("bridge")

#: Most seconds a shutdown waits for accepted connections to send their request.
SETTLE_CAP: Final = 2.0


def _config_error(exc: ConfigError) -> int:
    for line in str(exc).splitlines():
        print(f"mcp-bridge: {line}", file=sys.stderr)
    return EXIT_CONFIG


def main(argv: Sequence[str] | None = None) -> int:
    """Run the gateway until SIGINT/SIGTERM; exit 2 on a bad configuration."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["sessions"]:
        from bridge import admin  # only the admin command needs it

        return admin.main(args[1:])
    if args[:1] == ["api-key"]:
        return new_api_key(args[1:])
    command = options.parse(args)
    if command.check:
        from bridge import check  # only --check needs it

        return check.run(command.flags)
    try:
        settings = options.settings_from(command.flags)
        bridge_log.configure(settings.log_level, settings.log_format)
        servers = load_servers(settings)
    except ConfigError as exc:
        return _config_error(exc)
    log.info("session_store", url=redact(settings.store_url))
    try:
        loop_name, factory = loop_factory(settings.event_loop)
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(serve(settings, servers, loop_name))
    except ConfigError as exc:  # found while building the app: store URL, API keys
        return _config_error(exc)
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

    SIGHUP (and, with ``BRIDGE_CONFIG_WATCH``, a change to the config file)
    reloads the servers (:mod:`bridge.reload`).

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
    tracing = None
    if bridge_tracing.wanted(settings, os.environ):
        try:
            from bridge import otel  # the otel extra: imported only when tracing is on
        except ImportError as exc:
            raise ConfigError(
                f"tracing needs the otel extra: pip install 'mcp-bridge-gateway[otel]' ({exc})"
            ) from exc
        tracing = otel.start(settings)
    app = await build_app(settings, servers, tracing=tracing)
    reloader = Reloader(settings, functools.partial(reload_servers, app))
    reloader.install(loop)
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
        # Info, like any normal event: tools that read the bound port from it
        # run at --log-level info or lower (or give --port themselves).
        log.info(
            "listening",
            host=settings.host,
            port=ports[0] if ports else settings.port,
            servers=[f"{s.name} ({type(s).__name__})" for s in servers],
            max_connections=app[GATE].cap,
            event_loop=loop_name,
        )
        await stop.wait()
        log.info("shutting_down")
        # No new connections (a load balancer moves on); what was accepted
        # gets its request in before aiohttp closes idle connections.
        await site.stop()
        await app[GATE].settle(min(settings.header_timeout, SETTLE_CAP))
    finally:
        await reloader.aclose()
        await runner.cleanup()
        if reaper is not None:
            await tasks.cancel_and_wait(reaper, 1.0, "shutting down")
        if tracing is not None:  # exports what is pending, in its own thread
            await asyncio.to_thread(tracing.shutdown)
        log.info("stopped")
