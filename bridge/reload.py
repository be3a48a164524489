"""Reload the servers without a restart: on SIGHUP, and (opt-in) when the config file changes.

A reload reads the servers again with :func:`bridge.settings.load_servers`
(the same file, flags and environment as at start) and hands them to the
running app, which adds, removes and replaces servers by name
(:mod:`bridge.servers`). A configuration that does not load is refused: the
log says why (``config_reload_refused``, at error level) and the servers in
force stay as they were. Reloads run one at a time, in the order asked.

The file watch (``BRIDGE_CONFIG_WATCH``) compares the file's ``stat()``
(modification time in ns, size, inode) every ``BRIDGE_CONFIG_WATCH_INTERVAL``
seconds. A poll of one ``stat`` rather than inotify: it follows symlinks, so it
sees a Kubernetes ConfigMap update (an atomic swap of a symlinked directory)
and an editor's save-by-rename alike, and it costs one system call per interval.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import structlog

from bridge import tasks
from bridge.errors import ConfigError
from bridge.serverset import Change
from bridge.settings import ServerSpec, Settings, load_servers

log = structlog.get_logger("bridge.reload")

Apply = Callable[[Sequence[ServerSpec]], Awaitable[Change]]
Signature = tuple[int, int, int] | None


def file_signature(path: Path) -> Signature:
    """``(mtime_ns, size, inode)`` of ``path`` (symlinks followed), None if it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class Reloader:
    """Reloads ``settings``' servers into a running gateway through ``apply``."""

    def __init__(self, settings: Settings, apply: Apply) -> None:
        self._settings = settings
        self._apply = apply
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Change | None]] = set()
        self._watch: asyncio.Task[None] | None = None
        self._signal = False

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Reload on SIGHUP; start the file watch if ``BRIDGE_CONFIG_WATCH`` asks for it."""
        loop.add_signal_handler(signal.SIGHUP, self.request, "SIGHUP")
        self._signal = True
        if not self._settings.config_watch:
            return
        path = self._settings.config
        if path is None:
            log.warning("config_watch_unused", hint="BRIDGE_CONFIG_WATCH needs --config")
            return
        interval = self._settings.config_watch_interval
        self._watch = tasks.spawn(self.watch(path, interval), name="config-watch")
        log.info("config_watch", path=str(path), interval_s=interval)

    def request(self, trigger: str) -> None:
        """Start a reload in the background (a signal handler's side of it)."""
        task = tasks.spawn(self.reload(trigger), name=f"config-reload:{trigger}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self, trigger: str) -> Change | None:
        """Read the servers again and apply them; None if the new configuration was refused."""
        async with self._lock:
            try:
                servers = await asyncio.to_thread(load_servers, self._settings)
            except (ConfigError, ValueError) as exc:  # ValueError: pydantic's, if one escapes
                log.error(
                    "config_reload_refused",
                    trigger=trigger,
                    error=str(exc),
                    hint="the servers in force are unchanged",
                )
                return None
            change = await self._apply(servers)
        log.info(
            "config_reloaded",
            trigger=trigger,
            added=list(change.added),
            removed=list(change.removed),
            changed=list(change.changed),
            unchanged=list(change.unchanged),
        )
        return change

    async def watch(self, path: Path, interval: float) -> None:
        """Reload whenever ``path``'s signature changes; checked every ``interval`` seconds."""
        last = file_signature(path)
        while True:
            await asyncio.sleep(interval)
            now = file_signature(path)
            if now != last and now is not None:  # a file briefly missing mid-swap is no change
                last = now
                await self.reload("file changed")

    async def aclose(self) -> None:
        """Stop watching and listening for SIGHUP; end reloads under way (shutdown)."""
        if self._signal:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        running = [*self._tasks, *([self._watch] if self._watch is not None else [])]
        for task in running:
            await tasks.cancel_and_wait(task, 1.0, "shutting down")
