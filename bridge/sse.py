"""Server-sent events, sans-IO: an incremental decoder for upstream streams.

Follows the WHATWG event-stream parsing rules (HTML §9.2.6, spec-notes §1.17):

- the bytes are UTF-8, invalid sequences become U+FFFD, and one leading BOM
  is ignored;
- lines end in CRLF, LF or CR (a CRLF split across two chunks is one end);
- a line starting with ``:`` is a comment; otherwise the field name is what
  precedes the first ``:`` (the whole line if there is none) and one space
  after the colon is dropped from the value;
- ``data`` values join with ``\\n``; ``event`` names the type, ``message`` when
  absent or empty; ``id`` sets the last event id (to ``""`` when empty) unless
  it holds NUL; ``retry`` of ASCII digits only sets the reconnection time;
  other fields are ignored;
- an empty line dispatches: an event whose ``data`` was never set is not
  dispatched, and ``event``, ``data`` and ``retry`` start afresh, while the
  last event id carries over to later events;
- an event left incomplete when the stream ends is never dispatched.

The result does not depend on how the bytes are split into chunks, the size
bound included. The front door encodes with aiohttp-sse; this module is only
the reading side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from bridge.errors import UpstreamProtocolError

BOM: Final = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class Event:
    """One dispatched event.

    ``id`` is the last event id in force when it was dispatched (None if the
    stream never set one); ``retry`` is the milliseconds of a ``retry`` field
    inside this event's own block, if any.
    """

    event: str
    data: str
    id: str | None = None
    retry: int | None = None


class Decoder:
    """Feed bytes in any chunking, get whole events out.

    ``max_event_bytes`` bounds the field lines (line ends not counted) one
    undispatched event may hold. Crossing it is an upstream fault (an upstream
    that sends endless data without a blank line must not grow our memory):
    the events completed before the crossing are still returned, and then
    :meth:`feed` raises :class:`UpstreamProtocolError`, on that call if it
    has no event to return, else on the next; it keeps raising after that.
    """

    def __init__(self, max_event_bytes: int) -> None:
        self._max = max_event_bytes
        # The incomplete last line, without its line end; a bytearray so that a
        # line arriving in many chunks costs O(its length), not O(length^2).
        self._buffer = bytearray()
        self._at_start = True  # a leading BOM may still be (partly) to come
        self._last_was_cr = False
        self._pending = 0  # bytes of the lines of the undispatched event
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None  # WHATWG's "last event ID buffer"
        self._last_id: str | None = None
        self._retry: int | None = None
        self._reconnection_ms: int | None = None
        self._error: UpstreamProtocolError | None = None

    @property
    def last_event_id(self) -> str | None:
        """The id to resume from (``Last-Event-ID``): set at each empty line, even
        for a block without ``data``; None until the stream sets one."""
        return self._last_id

    @property
    def reconnection_ms(self) -> int | None:
        """The latest ``retry`` value, in ms, even from a block without ``data``."""
        return self._reconnection_ms

    def feed(self, chunk: bytes) -> list[Event]:
        """The events completed by ``chunk``, in order.

        Raises:
            UpstreamProtocolError: an event over ``max_event_bytes`` (see the class).
        """
        if self._error is not None:
            raise self._error
        if not chunk:
            return []  # keep _last_was_cr: the LF of a CRLF may still come
        if self._last_was_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the LF of a CRLF split across chunks
        self._last_was_cr = chunk.endswith(b"\r")
        self._buffer += chunk
        if self._at_start:
            if len(self._buffer) < len(BOM) and BOM.startswith(self._buffer):
                return []  # wait: these bytes may begin a BOM
            self._at_start = False
            self._buffer = self._buffer.removeprefix(BOM)
        if b"\n" not in chunk and b"\r" not in chunk:  # the line goes on: scan the chunk only
            if self._pending + len(self._buffer) > self._max:
                return self._overflow([])
            return []
        events: list[Event] = []
        lines = self._buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        self._buffer = lines.pop()
        for raw in lines:
            if raw:
                self._pending += len(raw)
                if self._pending > self._max:
                    return self._overflow(events)
                self._line(raw.decode("utf-8", errors="replace"))
            elif (event := self._dispatch()) is not None:
                events.append(event)
        if self._pending + len(self._buffer) > self._max:
            return self._overflow(events)
        return events

    def _overflow(self, events: list[Event]) -> list[Event]:
        self._buffer = bytearray()
        self._error = UpstreamProtocolError(f"SSE event larger than {self._max} bytes")
        if not events:
            raise self._error
        return events

    def _line(self, line: str) -> None:
        if line.startswith(":"):
            return
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():  # WHATWG: ASCII digits
            self._retry = self._reconnection_ms = int(value)

    def _dispatch(self) -> Event | None:
        data, event, retry = self._data, self._event, self._retry
        self._data, self._event, self._retry, self._pending = [], "", None, 0
        self._last_id = self._id
        if not data:
            return None
        return Event(event=event or "message", data="\n".join(data), id=self._id, retry=retry)
