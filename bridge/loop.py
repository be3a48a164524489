"""Which event loop runs the gateway: uvloop where it is installed, else asyncio's (issue #13).

uvloop (libuv) schedules callbacks, tasks and socket I/O for a fraction of
the default loop's CPU, which is most of what a proxy does per message.
``BRIDGE_EVENT_LOOP`` chooses: ``auto`` (uvloop if it imports, falling back
to asyncio's own loop without a word), ``uvloop`` (a configuration error
if it is missing) or ``asyncio``. uvloop is not built for Windows.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable
from typing import Literal

from bridge.errors import ConfigError

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def loop_factory(choice: Literal["auto", "uvloop", "asyncio"]) -> tuple[str, LoopFactory]:
    """The loop's name (``uvloop`` or ``asyncio``) and a factory for new loops of it.

    Raises:
        ConfigError: ``choice`` is ``uvloop`` and uvloop cannot be imported.
    """
    if choice != "asyncio":
        try:
            uvloop = importlib.import_module("uvloop")
        except ImportError as exc:
            if choice == "uvloop":
                raise ConfigError(f"--event-loop uvloop: uvloop is not installed ({exc})") from None
        else:
            factory: LoopFactory = uvloop.new_event_loop
            return "uvloop", factory
    return "asyncio", asyncio.new_event_loop
