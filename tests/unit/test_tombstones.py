"""Tombstones: sessions ended here whose record the store could not delete (issue #15).

The store is a fake at its seam (``delete`` only): what is tested is the
bookkeeping; a real store's outage is ``tests/integration/test_store_errors.py``.
"""

from __future__ import annotations

import pytest

from bridge.sessions import tombstones
from bridge.sessions.store import StoreUnavailable
from bridge.sessions.tombstones import Tombstones


class FlakyStore:
    """A store whose next ``failures`` deletes fail."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.deleted: list[str] = []

    async def delete(self, session_id: str) -> None:
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("down")
        self.deleted.append(session_id)


def test_a_tombstone_holds_until_the_record_s_ttl() -> None:
    graves = Tombstones(ttl=3600)
    assert not graves
    graves.bury("s1", "srv", "alice")
    tombstone = graves.get("s1")
    assert tombstone is not None
    assert (tombstone.server, tombstone.principal) == ("srv", "alice")
    graves.discard("s1")
    assert graves.get("s1") is None
    assert not graves

    expired = Tombstones(ttl=0)  # expires as it is made
    expired.bury("s2", "srv", None)
    assert expired.get("s2") is None
    assert not expired  # and is dropped when looked at


def test_the_oldest_tombstones_go_past_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tombstones, "MAX_TOMBSTONES", 3)
    graves = Tombstones(ttl=3600)
    for i in range(5):
        graves.bury(f"s{i}", "srv", None)
    assert [graves.get(f"s{i}") is not None for i in range(5)] == [False, False, True, True, True]


async def test_the_reaper_s_retry_deletes_once_the_store_answers() -> None:
    graves = Tombstones(ttl=3600)
    for i in range(3):
        graves.bury(f"s{i}", "srv", None)
    store = FlakyStore(failures=1)
    assert await graves.retry(store) == 0  # type: ignore[arg-type]
    assert graves.get("s0") is not None  # kept for the next pass
    assert await graves.retry(store) == 3  # type: ignore[arg-type]
    assert store.deleted == ["s0", "s1", "s2"]
    assert not graves
