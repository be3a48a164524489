"""When may a crashed stdio server start another child: the restart policy (issue #5).

- A child that exits by itself within ``healthy_after`` of its start, or that
  cannot be started, is a *crash*. After the n-th crash in a row no child of
  that server starts for an equal-jitter delay in ``[d/2, d]``, ``d =
  min(backoff_max, backoff_base * 2**(n-1))``. A request that needs a child
  meanwhile waits if the delay ends within ``wait`` seconds, and otherwise
  fails fast with 503, ``Retry-After`` and -32030: it never hangs.
- A child that has run ``healthy_after`` seconds resets the count.
- Three crashes in a row with no child of the latest round running is a
  crash loop: ``/readyz`` shows it (with the last stderr lines, truncated,
  to the admin token only) and the log says ``upstream_crash_loop`` with the
  whole tail. Lines arrive here already redacted (:func:`bridge.log.redact`).

No I/O: :class:`bridge.upstreams.stdio.StdioUpstream` reports starts and
exits and asks how long to wait; the clock is injected, so tests need no sleep.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Final

import structlog
from redis.backoff import EqualJitterBackoff

from bridge.upstreams.base import Health, RestartPolicy

log = structlog.get_logger("bridge.upstream.stdio")

READYZ_LINE_MAX: Final = 200  # characters of one stderr line that /readyz shows
CRASH_LOOP_AFTER: Final = 3  # crashes in a row that make a crash loop
#: Exponent cap: 2**64 * base exceeds any sane cap, and a larger exponent
#: would overflow the float conversion in the backoff computation.
_MAX_DOUBLINGS: Final = 64


def _wall_clock() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def describe_exit(code: int | None) -> str:
    """How a child ended, for people: ``exited with status 3``, ``was killed by SIGKILL``."""
    if code is None:
        return "closed its output"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with status {code}"


class Supervisor:
    """Restart policy and crash record of one stdio server (no I/O; the clock is injected).

    Rules:

    1. A *crash* is a child that exits by itself within ``healthy_after`` of
       its start, or a start that fails. A child the gateway closes is never one.
    2. Children are started in *rounds*; a counted crash ends the round. Only
       a crash of the current round counts toward ``consecutive``: sessions
       whose children all die together (one bad release, one OOM) make one
       crash, not one per session. Later crashes of older rounds are recorded
       but add nothing.
    3. After the n-th consecutive crash no child starts for
       ``EqualJitterBackoff(backoff_max, backoff_base).compute(n - 1)``
       seconds: redis-py's (already a dependency), uniform in ``[d/2, d]``,
       so each delay is at least the one before until the cap, and replicas
       restarting the same broken command do not do it in step.
    4. A child of the current round that runs ``healthy_after`` resets ``consecutive``.
    5. Crash loop: ``consecutive >= CRASH_LOOP_AFTER`` and no child of the
       current round is running.
    """

    def __init__(
        self, name: str, policy: RestartPolicy, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = name
        self.policy = policy
        self._clock = clock
        self._backoff = EqualJitterBackoff(cap=policy.backoff_max, base=policy.backoff_base)
        self.crashes = 0
        self.consecutive = 0
        self._round = 0
        self._running: Counter[int] = Counter()  # round -> children alive
        self._until = 0.0  # clock time before which no child starts
        self._last_crash = ""
        self._last_crash_at = ""
        self._stderr: tuple[str, ...] = ()

    def retry_in(self) -> float:
        """Seconds until a child may start; 0 if it may now."""
        return max(0.0, self._until - self._clock())

    def crash_loop(self) -> bool:
        return self.consecutive >= CRASH_LOOP_AFTER and not self._running[self._round]

    def refusal(self) -> str:
        """Why a start is held back, for the client: no stderr, no paths."""
        return (
            f"server {self.name!r} is restarting after {self.consecutive} crash(es) in a row "
            f"(last: child {self._last_crash}); retry in {self.retry_in():.1f} s"
        )

    def started(self) -> int:
        """Record a child's start; its round, to pass back to :meth:`healthy` and :meth:`exited`."""
        self._running[self._round] += 1
        return self._round

    def healthy(self, round_: int) -> None:
        """A child of ``round_`` has run ``healthy_after`` seconds."""
        if round_ != self._round or not self.consecutive:
            return
        log.info("upstream_recovered", server=self.name, after_crashes=self.consecutive)
        self.consecutive = 0
        self._until = 0.0

    def exited(
        self, round_: int, *, status: str, ran_for: float, by_itself: bool, stderr: Sequence[str]
    ) -> None:
        """Record a child's end (each child exactly once)."""
        self._running[round_] -= 1
        if self._running[round_] <= 0:
            del self._running[round_]
        if by_itself and ran_for < self.policy.healthy_after:
            self._crashed(round_, f"{status} after {ran_for:.1f} s", stderr)

    def failed_to_start(self, error: str) -> None:
        self._crashed(self._round, f"could not start: {error}", ())

    def _crashed(self, round_: int, status: str, stderr: Sequence[str]) -> None:
        self.crashes += 1
        self._last_crash, self._last_crash_at = status, _wall_clock()
        self._stderr = tuple(stderr)
        if round_ == self._round:
            self.consecutive += 1
            self._round += 1
            doublings = min(self.consecutive - 1, _MAX_DOUBLINGS)
            self._until = self._clock() + self._backoff.compute(doublings)
        log.warning(
            "upstream_crashed",
            server=self.name,
            status=status,
            consecutive=self.consecutive,
            backoff_s=round(self.retry_in(), 3),
        )
        if self.crash_loop():
            log.warning(
                "upstream_crash_loop",
                server=self.name,
                consecutive=self.consecutive,
                last_crash=status,
                backoff_s=round(self.retry_in(), 3),
                stderr_tail=list(self._stderr),
            )

    def health(self) -> Health:
        """For ``/readyz``: nothing until a crash; then counters, the last crash, its stderr.

        ``"status": "crash_loop"`` while in one; stderr lines are cut to
        ``READYZ_LINE_MAX`` characters (the log has them whole).
        """
        if not self.crashes:
            return {}
        report: Health = {
            "crashes": self.crashes,
            "consecutive_crashes": self.consecutive,
            "last_crash": self._last_crash,
            "last_crash_at": self._last_crash_at,
            "stderr_tail": [line[:READYZ_LINE_MAX] for line in self._stderr],
        }
        if (wait := self.retry_in()) > 0:
            report["retry_in_s"] = round(wait, 3)
        if self.crash_loop():
            report["status"] = "crash_loop"
        return report
