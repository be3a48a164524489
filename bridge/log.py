"""structlog setup: a console renderer on a TTY, JSON lines otherwise.

Events are snake_case with key/value fields. Untrusted ids are truncated with
:func:`short` before they are logged; tokens and header values never are.
Text that may hold a credential (a stdio child's stderr) goes through
:func:`redact` before it is logged or shown anywhere.

Every field is bounded (:func:`bound_fields`, the last step before
rendering): a string longer than :data:`FIELD_MAX` characters (a client's
3,000,000-character method, an upstream's error text) is cut and says how
much was cut; lists keep :data:`LIST_MAX` items. Tracebacks get
:data:`EXCEPTION_MAX`.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import re
import sys
import threading
from collections.abc import Callable
from typing import Any, Final, Literal, TextIO

import structlog
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web import RequestPayloadError

_SHORT: Final = 8
FIELD_MAX: Final = 2048  # characters of one logged string field (a stderr line is 2000)
LIST_MAX: Final = 50  # items of one logged list field
EXCEPTION_MAX: Final = 16384  # characters of a logged traceback


def short(value: str | None) -> str | None:
    """The first characters of a session id: enough to correlate, too few to use."""
    return None if value is None else value[:_SHORT]


REDACTED: Final = "[redacted]"
#: What looks like a credential, in the order they are replaced: a JWT, an
#: ``Authorization`` scheme's token, a ``key=``/``token:``/``password=``...
#: value, URL userinfo, then long hex runs and long base64 runs.
_JWT: Final = re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_SCHEME_TOKEN: Final = re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/-]+=*")
_KEY_VALUE: Final = re.compile(
    r"(?i)((?:key|token|passw(?:or)?d|pwd|secret|credential)s?)"
    r"([\"']?\s*[=:]\s*[\"']?)([^\s\"'&,;]+)"
)
_USERINFO: Final = re.compile(r"://[^\s/@]+@")
_HEX_RUN: Final = re.compile(r"\b[0-9A-Fa-f]{32,}\b")
_BASE64_RUN: Final = re.compile(r"[A-Za-z0-9+_-]{32,}={0,2}")


def _base64_secret(match: re.Match[str]) -> str:
    # A random token has digits, lower and upper case; a snake_case path
    # segment, a word or a run of one letter has not, and is kept.
    run = match.group(0)
    mixed = any(c.isdigit() for c in run) and any(c.islower() for c in run)
    return REDACTED if mixed and any(c.isupper() for c in run) else run


def redact(text: str) -> str:
    """``text`` with what looks like a credential replaced by ``[redacted]``.

    Covers bearer/basic tokens, ``key=``, ``token=``, ``password=``,
    ``secret=`` (and ``:``) values, JWTs, URL userinfo, and runs of 32 or more
    hex or mixed-case base64 characters. Errs on the side of hiding. Linear
    in ``len(text)``; callers bound the length first.
    """
    text = _JWT.sub(REDACTED, text)
    text = _SCHEME_TOKEN.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _KEY_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _USERINFO.sub(f"://{REDACTED}@", text)
    text = _HEX_RUN.sub(REDACTED, text)
    return _BASE64_RUN.sub(_base64_secret, text)


def clip(value: str, limit: int = FIELD_MAX) -> str:
    """``value`` cut to ``limit`` characters, saying how many were cut."""
    if len(value) <= limit:
        return value
    return f"{value[:limit]}...(+{len(value) - limit} chars)"


def _bounded(value: Any, limit: int) -> Any:
    if isinstance(value, str):
        return clip(value, limit)
    if isinstance(value, (list, tuple)):
        items = [_bounded(item, limit) for item in value[:LIST_MAX]]
        return items + ([f"...(+{len(value) - LIST_MAX} items)"] if len(value) > LIST_MAX else [])
    if isinstance(value, dict):
        return {clip(str(k), limit): _bounded(v, limit) for k, v in list(value.items())[:LIST_MAX]}
    return value


#: Types a field of which needs no bounding: most fields of most lines.
_SMALL: Final = (int, float, bool, type(None))


def bound_fields(
    logger: Any, method: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    """structlog processor: every field bounded (strings to FIELD_MAX, lists to LIST_MAX)."""
    for key, value in event_dict.items():
        kind = type(value)
        if kind in _SMALL or (kind is str and len(value) <= FIELD_MAX):
            continue  # the fast path: a request line's fields (issue #13)
        limit = EXCEPTION_MAX if key == "exception" else FIELD_MAX
        event_dict[key] = _bounded(value, limit)
    return event_dict


#: One encoder for every line: ``json.dumps`` given a ``default`` (as structlog's
#: renderer gives it) builds a new encoder per call.
_ENCODER: Final = json.JSONEncoder(default=repr)


def _json_line(event_dict: structlog.types.EventDict, **_: Any) -> str:
    """One JSON line, as ``json.dumps`` writes it; a field that is not JSON as its ``repr``."""
    return _ENCODER.encode(event_dict)


#: Seconds an info or debug line may wait to be written with others (issue #13).
FLUSH_INTERVAL: Final = 0.05
#: Characters of waiting lines that make them written at once.
FLUSH_CHARS: Final = 64 * 1024


class BatchedWriter:
    """A structlog logger writing lines to ``file``, info and debug ones in batches.

    One write (a system call) per log line costs a proxied request about as
    much as the rest of its logging; so info and debug lines wait, at most
    :data:`FLUSH_INTERVAL` seconds or :data:`FLUSH_CHARS` characters, to be
    written together. Every line is written, in order: a warning or an
    error is written at once, after the lines waiting before it, and so is
    any line logged outside the event loop's thread. What waits at exit is
    written then.
    """

    def __init__(self, file: TextIO) -> None:
        self._file = file
        self._lines: list[str] = []
        self._chars = 0
        self._timer: asyncio.TimerHandle | None = None
        self._lock = threading.Lock()
        atexit.register(self.flush)

    def info(self, message: str) -> None:
        with self._lock:
            self._lines.append(message)
            self._chars += len(message)
            if self._timer is not None and self._chars < FLUSH_CHARS:
                return
        loop = asyncio._get_running_loop()
        if loop is None or self._chars >= FLUSH_CHARS:
            self.flush()
        else:
            self._timer = loop.call_later(FLUSH_INTERVAL, self.flush)

    debug = info

    def msg(self, message: str) -> None:
        with self._lock:
            self._lines.append(message)
        self.flush()

    warning = error = critical = exception = fatal = failure = log = msg

    def flush(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if not self._lines:
                return
            text = "\n".join(self._lines) + "\n"
            self._lines.clear()
            self._chars = 0
            try:
                self._file.write(text)
                self._file.flush()
            except (OSError, ValueError):  # stderr closed or gone: nowhere to log
                pass


def configure(level: str, fmt: Literal["auto", "console", "json"]) -> None:
    """Route structlog and stdlib logging to stderr at ``level``."""
    renderer: structlog.types.Processor
    if fmt == "console" or (fmt == "auto" and sys.stderr.isatty()):
        renderer = structlog.dev.ConsoleRenderer()
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_json_line)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            bound_fields,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=_writer_factory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(message)s")
    logging.getLogger("aiohttp.server").addFilter(_malformed_http)


def _writer_factory(file: TextIO) -> Callable[..., BatchedWriter]:
    writer = BatchedWriter(file)

    def factory(*args: Any) -> BatchedWriter:
        return writer  # one for every logger: lines stay in order

    return factory


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
