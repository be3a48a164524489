"""Server-sent events, sans-IO: an incremental decoder for upstream streams.

Follows the WHATWG event-stream parsing rules: lines end in CRLF, LF or CR;
``:`` starts a comment; ``data`` lines join with ``\\n``; an empty line
dispatches; an event with no ``data`` is not dispatched; a missing ``event``
means ``message`` (spec-notes §1.17). Only ``id`` values without NUL are kept.

The front door encodes with aiohttp-sse; this module is only the reading side.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.errors import UpstreamProtocolError


@dataclass(frozen=True, slots=True)
class Event:
    event: str
    data: str
    id: str | None = None
    retry: int | None = None


class Decoder:
    """Feed bytes in any chunking, get whole events out.

    ``max_event_bytes`` bounds what one undispatched event may hold; past it
    :meth:`feed` raises :class:`UpstreamProtocolError` (an upstream that sends
    endless data without a blank line must not grow our memory).
    """

    def __init__(self, max_event_bytes: int) -> None:
        self._max = max_event_bytes
        self._buffer = b""
        self._pending = 0
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._retry: int | None = None
        self._last_was_cr = False

    def feed(self, chunk: bytes) -> list[Event]:
        if not chunk:
            return []  # keep _last_was_cr: the LF of a CRLF may still come
        if self._last_was_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the LF of a CRLF split across chunks
        self._last_was_cr = chunk.endswith(b"\r")
        self._buffer += chunk
        events: list[Event] = []
        lines = self._buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        self._buffer = lines.pop()
        for raw in lines:
            event = self._line(raw.decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)
        if self._pending + len(self._buffer) > self._max:
            raise UpstreamProtocolError(f"SSE event larger than {self._max} bytes")
        return events

    def _line(self, line: str) -> Event | None:
        if not line:
            return self._dispatch()
        self._pending += len(line)
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():  # WHATWG: ASCII digits
            self._retry = int(value)
        return None

    def _dispatch(self) -> Event | None:
        data, event, event_id, retry = self._data, self._event, self._id, self._retry
        self._data, self._event, self._retry, self._pending = [], "", None, 0
        if not data:
            return None
        return Event(event=event or "message", data="\n".join(data), id=event_id, retry=retry)
