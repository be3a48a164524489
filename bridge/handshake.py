"""What a resumed upstream must be told again, sans-IO (spec-notes §2.4, §6.2).

A session's upstream connection can be replaced at any time (idle release,
upstream restart, gateway restart). The new connection learns the session's
state from the stored record: the client's ``initialize`` (with the version
negotiated downstream), ``notifications/initialized``, the log level the
client set and the resources it subscribed to.
"""

from __future__ import annotations

from typing import Any, Final

from bridge import jsonrpc
from bridge.jsonrpc import Message
from bridge.sessions.store import SessionRecord

#: Requests that can be sent twice without harm: retried after an interruption
#: instead of answered with an error (issue #3, spec-notes §6.3).
SAFE_TO_REPEAT: Final = frozenset(
    {
        "ping",
        "tools/list",
        "resources/list",
        "resources/read",
        "resources/templates/list",
        "prompts/list",
        "prompts/get",
        "completion/complete",
    }
)


def as_stored(request: Message) -> Message:
    """What a POST stream's record keeps of a request: whole only if safe to repeat.

    An interrupted request is sent again only if safe to repeat; any other gets
    an error naming its id and method (issue #3), so its params (a 4 MiB
    ``tools/call`` argument, issue #15) need not be stored.
    """
    if request.get("method") in SAFE_TO_REPEAT:
        return request
    return {key: request[key] for key in ("jsonrpc", "id", "method") if key in request}


def remember(record: SessionRecord, request: Message) -> bool:
    """Update ``record`` from a client request; True if it changed (store it)."""
    method, params = request.get("method"), jsonrpc.params(request)
    uri = params.get("uri")
    level = params.get("level")
    if method == "logging/setLevel" and isinstance(level, str):
        changed = record.log_level != level
        record.log_level = level
        return changed
    if method == "resources/subscribe" and isinstance(uri, str) and uri not in record.subscriptions:
        record.subscriptions.append(uri)
        return True
    if method == "resources/unsubscribe" and uri in record.subscriptions:
        record.subscriptions.remove(uri)
        return True
    return False


def replay_calls(record: SessionRecord) -> list[tuple[str, dict[str, Any]]]:
    """The requests that rebuild the upstream's view, after ``initialize`` + ``initialized``."""
    calls: list[tuple[str, dict[str, Any]]] = []
    if record.log_level is not None:
        calls.append(("logging/setLevel", {"level": record.log_level}))
    calls += [("resources/subscribe", {"uri": uri}) for uri in record.subscriptions]
    return calls


def initialize_params(record: SessionRecord) -> dict[str, Any]:
    """The client's initialize params, at the version the client negotiated."""
    return {**record.client_params, "protocolVersion": record.protocol_version}
