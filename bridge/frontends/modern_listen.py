"""2026-07-28 ``subscriptions/listen``, and what the modern front door's handlers share.

basic/patterns/subscriptions: a ``subscriptions/listen`` POST is answered with
an SSE stream that stays open. First ``notifications/subscriptions/acknowledged``
with the filter the server can honour (the ``list_changed`` kinds its
capabilities declare; resource URIs if it supports ``resources.subscribe``),
then only what was asked for, each message tagged with
``_meta["io.modelcontextprotocol/subscriptionId"]`` (the request's id). Resource
URIs are subscribed on the group's home upstream session, reference-counted with
everyone else's (:meth:`bridge.pool.group.Group.subscribe`), and unsubscribed
when the stream closes. A graceful end (shutdown) is a ``complete`` result.

:func:`until_gone` notices a client that closed its connection: aiohttp does
not cancel a handler when its client leaves, and in this revision closing the
stream cancels the request (transports/streamable-http §Cancellation).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any, Final, TypeVar

from aiohttp import web
from aiohttp_sse import EventSourceResponse

from bridge import jsonrpc, tasks
from bridge.errors import UpstreamError
from bridge.modern import wire
from bridge.modern.wire import ModernRequest
from bridge.pool.channel import Channel, Refused
from bridge.pool.group import Group

T = TypeVar("T")

#: Seconds between checks that a client waiting on a plain-JSON answer is still there.
DISCONNECT_POLL: Final = 0.25
ACK: Final = "notifications/subscriptions/acknowledged"
#: ``subscriptions/listen`` filter fields -> the capability area and notification each admits.
LIST_FILTERS: Final = {
    "toolsListChanged": ("tools", "notifications/tools/list_changed"),
    "promptsListChanged": ("prompts", "notifications/prompts/list_changed"),
    "resourcesListChanged": ("resources", "notifications/resources/list_changed"),
}


def event_stream(keepalive_interval: float, send_timeout: float) -> EventSourceResponse:
    """An SSE response for this revision: no event ids; ``X-Accel-Buffering: no``
    (transports/streamable-http §Receiving Messages, SHOULD)."""
    response = EventSourceResponse(
        allow_all_methods=True, ping_interval=keepalive_interval, send_timeout=send_timeout
    )
    response.headers["Cache-Control"] = "no-cache, no-transform"
    response.headers["X-Accel-Buffering"] = "no"
    return response


async def listen(
    request: web.Request,
    modern: ModernRequest,
    group: Group,
    keepalive_interval: float,
    send_timeout: float,
) -> web.StreamResponse:
    """basic/patterns/subscriptions: acknowledge, then relay what was asked, tagged."""
    pool = group.pool
    wanted = modern.params.get("notifications")
    if not isinstance(wanted, dict):
        wanted = {}
    channel = group.attach(modern=True)
    try:
        init = await group.initialize_result(jsonrpc.LATEST_VERSION)
        capabilities = init.get("capabilities") or {}
        granted: dict[str, Any] = {}
        admitted: set[str] = set()
        for field, (area, method) in LIST_FILTERS.items():
            offered = capabilities.get(area)
            if (
                wanted.get(field) is True
                and isinstance(offered, dict)
                and offered.get("listChanged")
            ):
                granted[field] = True
                admitted.add(method)
        uris = wanted.get("resourceSubscriptions")
        resources = capabilities.get("resources")
        watchable = isinstance(resources, dict) and resources.get("subscribe")
        if isinstance(uris, list) and watchable:
            subscribed = []
            for uri in uris[:MAX_LISTEN_URIS]:
                with contextlib.suppress(Refused, UpstreamError):
                    await group.subscribe(channel, uri, "resources/subscribe")
                    subscribed.append(uri)
            granted["resourceSubscriptions"] = subscribed
        tag = {wire.META_SUBSCRIPTION_ID: modern.id}
        response = event_stream(keepalive_interval, send_timeout)
        await response.prepare(request)
        async with response:
            ack = jsonrpc.notification(ACK, {"_meta": tag, "notifications": granted})
            await response.send(jsonrpc.encode(ack), event="message")
            await until_gone(request, _relay(response, channel, admitted, tag))
            closing = {"jsonrpc": "2.0", "id": modern.id,
                       "result": {"resultType": "complete", "_meta": tag}}  # fmt: skip
            with contextlib.suppress(ConnectionResetError):
                await response.send(jsonrpc.encode(closing), event="message")
        return response
    except (ConnectionResetError, ClientGone):
        return web.Response(status=499)  # the client left; nobody reads this
    finally:
        await channel.aclose()
        pool.release(group)


async def _relay(
    response: EventSourceResponse,
    channel: Channel,
    admitted: set[str],
    tag: dict[str, Any],
) -> None:
    async for message in channel.messages():
        method = message.get("method")
        if method not in admitted and method != "notifications/resources/updated":
            continue  # filter: nothing the client did not ask for (MUST NOT)
        params = dict(jsonrpc.params(message))
        params["_meta"] = {**(params.get("_meta") or {}), **tag}
        await response.send(jsonrpc.encode({**message, "params": params}), event="message")


#: Resource URIs one ``subscriptions/listen`` may watch.
MAX_LISTEN_URIS: Final = 100


class ClientGone(Exception):
    """The client closed its connection while its request was being served."""


async def until_gone(request: web.Request, work: Awaitable[T]) -> T:
    """``work``, unless the client's connection closes first (then ClientGone).

    aiohttp does not cancel a handler when its client leaves; this rule of the
    revision (closing the stream cancels the request) needs it noticed.
    """
    task = tasks.spawn(_awaitable(work), name="modern-request", awaited=True)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL)
            if done:
                return task.result()
            transport = request.transport
            if transport is None or transport.is_closing():
                raise ClientGone("client closed the connection")
    finally:
        if not task.done():
            await tasks.cancel_and_wait(task, 1.0, "client gone")


async def _awaitable(work: Awaitable[T]) -> T:
    return await work
