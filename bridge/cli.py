"""``mcp-bridge``: argv -> Settings -> logging -> servers -> run the app. No logic."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import structlog
from aiohttp import web
from pydantic import ValidationError

from bridge import log as bridge_log
from bridge.app import build_app
from bridge.errors import ConfigError
from bridge.settings import Settings, load_servers

EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the gateway until SIGINT/SIGTERM; exit 2 on a bad configuration."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        settings = Settings(_cli_parse_args=args)  # type: ignore[call-arg]
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
    log = structlog.get_logger("bridge")
    log.info(
        "starting",
        host=settings.host,
        port=settings.port,
        servers=[f"{s.name} ({type(s).__name__})" for s in servers],
    )
    web.run_app(
        build_app(settings, servers),
        host=settings.host,
        port=settings.port,
        shutdown_timeout=settings.shutdown_timeout,
        handler_cancellation=True,
        access_log=None,
        print=None,
    )
    log.info("stopped")
    return 0
