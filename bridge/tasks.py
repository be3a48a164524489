"""The only place a task is created: named, referenced until done, failures logged.

A bare ``asyncio.create_task`` result can be garbage-collected while it runs
and its exception is lost; ruff's TID251 bans it outside this module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import structlog

T = TypeVar("T")
log = structlog.get_logger("bridge.tasks")
_running: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, T], *, name: str, awaited: bool = False) -> asyncio.Task[T]:
    """Start ``coro`` as a task named ``name`` that is kept alive until it ends.

    An exception other than cancellation is logged with the task's name, at
    error level; with ``awaited=True`` the caller awaits the task and reports
    its failures itself, so it is logged at debug level only.
    """
    task = asyncio.create_task(coro, name=name)  # noqa: TID251
    _running.add(task)
    task.add_done_callback(_done_awaited if awaited else _done)
    return task


def _done(task: asyncio.Task[Any]) -> None:
    _running.discard(task)
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("task_failed", task=task.get_name(), exc_info=exc)


def _done_awaited(task: asyncio.Task[Any]) -> None:
    _running.discard(task)
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.debug("task_failed", task=task.get_name(), error=repr(exc))


async def cancel_and_wait(task: asyncio.Task[Any], seconds: float, msg: str) -> None:
    """Cancel ``task`` and wait up to ``seconds`` for it to finish.

    Re-raises CancelledError only when the caller itself is being cancelled.
    """
    if task.done():
        return
    task.cancel(msg)
    try:
        async with asyncio.timeout(seconds):
            await asyncio.wait([task])
    except TimeoutError:
        log.warning("task_cancel_timeout", task=task.get_name(), timeout_s=seconds)
