"""structlog setup: a console renderer on a TTY, JSON lines otherwise.

Events are snake_case with key/value fields. Untrusted ids are truncated with
:func:`short` before they are logged; tokens and header values never are.
"""

from __future__ import annotations

import logging
import sys
from typing import Final, Literal

import structlog
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web import RequestPayloadError

_SHORT: Final = 8


def short(value: str | None) -> str | None:
    """The first characters of a session id: enough to correlate, too few to use."""
    return None if value is None else value[:_SHORT]


def configure(level: str, fmt: Literal["auto", "console", "json"]) -> None:
    """Route structlog and stdlib logging to stderr at ``level``."""
    renderer: structlog.types.Processor
    if fmt == "console" or (fmt == "auto" and sys.stderr.isatty()):
        renderer = structlog.dev.ConsoleRenderer()
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(message)s")
    logging.getLogger("aiohttp.server").addFilter(_malformed_http)


def _malformed_http(record: logging.LogRecord) -> bool:
    """One line, not an ERROR with a traceback, for a client's fault aiohttp handles itself.

    aiohttp answers a request broken at the HTTP level with 400 before any
    handler runs, and logs the parser's exception; so too a body it fails to
    decode while draining it after the answer (a corrupt gzip body on a
    request refused unread), and a client that hung up before its
    ``100 Continue``. A client sending garbage must not flood the log with
    tracebacks (issue #5 "Bad input"). Only the first line of the parser's
    message is kept: the rest quotes the request's bytes, header values included.
    """
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, RequestPayloadError) and isinstance(exc.__cause__, HttpProcessingError):
        exc = exc.__cause__
    access = structlog.get_logger("bridge.access")
    if isinstance(exc, HttpProcessingError) and 400 <= exc.code < 500:
        reason = (exc.message or "").strip().splitlines()[:1]
        access.info("malformed_http_request", status=exc.code, error=(reason or [""])[0][:100])
        return False
    if isinstance(exc, ConnectionResetError):
        access.info("client_gone", error=exc.__class__.__name__)
        return False
    return True
