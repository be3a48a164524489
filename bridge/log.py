"""structlog setup: a console renderer on a TTY, JSON lines otherwise.

Events are snake_case with key/value fields. Untrusted ids are truncated with
:func:`short` before they are logged; tokens and header values never are.
"""

from __future__ import annotations

import logging
import sys
from typing import Final, Literal

import structlog

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
