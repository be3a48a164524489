"""SSE event ids, sans-IO: ``<session tag>.<stream>.<position>``.

spec 2025-11-25 transports §Resumability: an id MUST be unique across all
streams of a session and SHOULD encode its stream; spec-notes §6.1: it should
also name the session, so that a ``Last-Event-ID`` from another session is
refused, never replayed.

- The session tag is the first 12 hex digits of SHA-256 of the session id:
  it identifies without revealing the id.
- Stream names are chosen by the session: ``get`` for the standalone stream,
  ``p`` + 16 random hex digits for a POST-reply stream (unique across gateway
  restarts without any shared counter).
- Positions are the event store's own (see :mod:`bridge.events.store`).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Final

GET_STREAM: Final = "get"
_PART = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")


@dataclass(frozen=True, slots=True)
class EventId:
    tag: str
    stream: str
    position: str

    def __str__(self) -> str:
        return f"{self.tag}.{self.stream}.{self.position}"


def session_tag(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()[:12]


def new_post_stream() -> str:
    return "p" + secrets.token_hex(8)


def parse(value: str) -> EventId | None:
    """The parts of a ``Last-Event-ID`` header, or None if it is not one of ours."""
    parts = value.strip().split(".")
    if len(parts) != 3 or not all(_PART.match(p) for p in parts):
        return None
    return EventId(*parts)
