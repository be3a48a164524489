"""decode_frames: an upstream's frame -> JSON-RPC objects; garbage is skipped, never raised."""

from __future__ import annotations

import pytest

from bridge.upstreams.base import decode_frames


@pytest.mark.parametrize(
    "frame",
    [b"[" * 5000, b"{" * 5000, b"not json", b"\xff\xfe", b"[1, 2]", b'"text"', b""],
    ids=["deep-array", "deep-object", "text", "bad-utf8", "no-object", "string", "empty"],
)
def test_garbage_frames_yield_nothing(frame: bytes) -> None:
    assert list(decode_frames(frame, "srv")) == []


def test_objects_and_batches() -> None:
    one = b'{"jsonrpc": "2.0", "method": "m"}'
    assert list(decode_frames(one, "srv")) == [{"jsonrpc": "2.0", "method": "m"}]
    batch = b'[{"jsonrpc": "2.0", "method": "a"}, 7, {"jsonrpc": "2.0", "method": "b"}]'
    assert [m["method"] for m in decode_frames(batch, "srv")] == ["a", "b"]
