"""The test harness itself: :class:`tests.conftest.Proc`."""

from __future__ import annotations

import asyncio
import sys
from typing import Final

import pytest

from tests.conftest import ProcFactory

#: Processes started; the race below showed in about 2 of 5 before its fix.
TRIES: Final = 10
#: Seconds for wait_for to notice one exited process (it starts and exits at once).
NOTICED_WITHIN: Final = 10.0


async def test_wait_for_fails_at_once_with_the_output_of_a_process_that_exited(
    procs: ProcFactory,
) -> None:
    """A server that dies before its ready line (a gateway failing at startup) fails
    ``wait_for`` at once, quoting its output, even when its output ends before its exit
    is seen; not after the whole bound, with a bare TimeoutError."""
    for _ in range(TRIES):
        proc = await procs(sys.executable, "-c", "import sys; sys.exit('boom')")
        with pytest.raises(AssertionError, match="exited: boom"):
            async with asyncio.timeout(NOTICED_WITHIN):
                await proc.wait_for("never printed", within=NOTICED_WITHIN * 2)
