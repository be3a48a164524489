"""bridge.sse.Decoder: WHATWG event-stream parsing, in any chunking (spec-notes §1.17).

The decoder must give the same events however the bytes are split (TCP makes
no promise about chunk boundaries), accept CRLF, LF and CR line ends, skip
comments, join ``data`` lines with ``\\n``, default ``event`` to ``message``,
keep the last event id across events, and never buffer more than
``max_event_bytes`` of one undispatched event.
"""

from __future__ import annotations

import time

import pytest

from bridge.errors import UpstreamProtocolError
from bridge.sse import Decoder, Event

BIG = 1 << 20


def decode(*chunks: bytes, limit: int = BIG) -> list[Event]:
    decoder = Decoder(max_event_bytes=limit)
    events: list[Event] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    return events


# A stream touching every rule at once: three line-end styles, a comment, an
# event type, multi-line data, an id, a retry, and multi-byte UTF-8.
STREAM = (
    b": keepalive\r\n"
    b"event: endpoint\r\n"
    b"data: /messages?session_id=1\r\n"
    b"\r\n"
    b"id: 7\n"
    b'data: {"a":\n'
    b"data: 1}\n"
    b"\n"
    b"retry: 1500\r"
    b"data: caf\xc3\xa9 \xe2\x9c\x93\r"
    b"\r"
    b"data:no-space\r\n"
    b"\r\n"
)
STREAM_EVENTS = [
    Event(event="endpoint", data="/messages?session_id=1"),
    Event(event="message", data='{"a":\n1}', id="7"),
    Event(event="message", data="café ✓", id="7", retry=1500),
    Event(event="message", data="no-space", id="7"),
]


def test_whole_stream_in_one_chunk() -> None:
    assert decode(STREAM) == STREAM_EVENTS


@pytest.mark.parametrize("split", range(1, len(STREAM)))
def test_every_two_chunk_split_gives_the_same_events(split: int) -> None:
    assert decode(STREAM[:split], STREAM[split:]) == STREAM_EVENTS


def test_byte_by_byte_gives_the_same_events() -> None:
    assert decode(*(STREAM[i : i + 1] for i in range(len(STREAM)))) == STREAM_EVENTS


def test_empty_chunks_change_nothing() -> None:
    chunks: list[bytes] = []
    for i in range(len(STREAM)):
        chunks += [STREAM[i : i + 1], b""]
    assert decode(b"", *chunks) == STREAM_EVENTS


def test_events_come_out_as_soon_as_their_blank_line_arrives() -> None:
    decoder = Decoder(max_event_bytes=BIG)
    assert decoder.feed(b"data: one\n") == []
    assert decoder.feed(b"\n") == [Event("message", "one")]
    assert decoder.feed(b"data: two\n\ndata: three\n\nda") == [
        Event("message", "two"),
        Event("message", "three"),
    ]
    assert decoder.feed(b"ta: four\n\n") == [Event("message", "four")]


# -- line endings ------------------------------------------------------------


@pytest.mark.parametrize("eol", [b"\r\n", b"\n", b"\r"])
def test_line_endings(eol: bytes) -> None:
    stream = b"event: e" + eol + b"data: a" + eol + b"data: b" + eol + eol
    assert decode(stream) == [Event("e", "a\nb")]


def test_crlf_split_across_chunks_is_one_line_end() -> None:
    assert decode(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n") == [Event("message", "a\nb")]


def test_cr_then_lf_in_the_next_chunk_is_not_a_blank_line() -> None:
    decoder = Decoder(max_event_bytes=BIG)
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n") == []  # the LF completes the CRLF, it is no blank line
    assert decoder.feed(b"\r\n") == [Event("message", "a")]


def test_two_crs_are_two_line_ends() -> None:
    assert decode(b"data: a\r", b"\r") == [Event("message", "a")]


def test_lf_alone_after_a_completed_crlf_is_a_blank_line() -> None:
    assert decode(b"data: a\r\n", b"\n") == [Event("message", "a")]


# -- fields --------------------------------------------------------------------


def test_comments_are_ignored() -> None:
    assert decode(b": ping\n\n: ping\ndata: x\n: more\n\n") == [Event("message", "x")]


def test_event_defaults_to_message_and_resets_after_dispatch() -> None:
    assert decode(b"event: endpoint\ndata: /m\n\ndata: next\n\n") == [
        Event("endpoint", "/m"),
        Event("message", "next"),
    ]


def test_empty_event_field_means_message() -> None:
    assert decode(b"event:\ndata: x\n\n") == [Event("message", "x")]


def test_only_one_leading_space_is_stripped() -> None:
    assert decode(b"data:  two spaces \n\n") == [Event("message", " two spaces ")]


def test_a_field_with_no_colon_has_an_empty_value() -> None:
    assert decode(b"data\ndata\n\n") == [Event("message", "\n")]


def test_empty_data_is_dispatched() -> None:
    # The 2025-11-25 priming event: an id and empty data (spec-notes §1.9).
    assert decode(b"id: e-1\ndata:\n\n") == [Event("message", "", id="e-1")]


def test_unknown_fields_are_ignored() -> None:
    assert decode(b"foo: bar\ndata: x\nDATA: y\n\n") == [Event("message", "x")]


def test_id_persists_across_events_until_changed() -> None:
    assert decode(b"id: 1\ndata: a\n\ndata: b\n\nid: 2\ndata: c\n\nid\ndata: d\n\n") == [
        Event("message", "a", id="1"),
        Event("message", "b", id="1"),
        Event("message", "c", id="2"),
        Event("message", "d", id=""),  # an empty id field resets the last event id
    ]


def test_id_set_by_an_event_without_data_still_persists() -> None:
    assert decode(b"id: 5\n\ndata: a\n\n") == [Event("message", "a", id="5")]


def test_id_containing_nul_is_ignored() -> None:
    assert decode(b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n") == [
        Event("message", "a", id="1"),
        Event("message", "b", id="1"),
    ]


def test_retry_is_parsed_and_belongs_to_its_event() -> None:
    assert decode(b"retry: 3000\ndata: a\n\ndata: b\n\n") == [
        Event("message", "a", retry=3000),
        Event("message", "b"),
    ]


@pytest.mark.parametrize("value", ["", "abc", "-1", "1.5", " 10", "1e3", "²", "٣"])
def test_retry_that_is_not_ascii_digits_is_ignored(value: str) -> None:
    stream = b"retry: " + value.encode() + b"\ndata: a\n\n"
    assert decode(stream) == [Event("message", "a")]


def test_event_without_data_is_not_dispatched() -> None:
    assert decode(b"event: endpoint\n\nretry: 10\n\n\n\n: only a comment\n\n") == []


def test_event_type_of_an_undispatched_event_does_not_leak() -> None:
    assert decode(b"event: endpoint\n\ndata: x\n\n") == [Event("message", "x")]


def test_invalid_utf8_is_replaced_not_raised() -> None:
    assert decode(b"data: \xff\n\n") == [Event("message", "\ufffd")]


def test_incomplete_event_at_the_end_is_not_dispatched() -> None:
    assert decode(b"data: a\n\ndata: b\n") == [Event("message", "a")]


# -- the size bound ------------------------------------------------------------


def test_endless_line_raises() -> None:
    decoder = Decoder(max_event_bytes=64)
    assert decoder.feed(b"data: ") == []
    for _ in range(5):  # 56 bytes held: still within the bound
        assert decoder.feed(b"x" * 10) == []
    with pytest.raises(UpstreamProtocolError, match="64"):
        decoder.feed(b"x" * 10)


def test_an_endless_line_in_small_chunks_costs_linear_time() -> None:
    """A line trickled in 4 KiB chunks up to the default 16 MiB bound (issue #5).

    Rescanning the whole partial line at every chunk made this take about a
    minute of CPU, with the event loop blocked meanwhile; now it is a few ms.
    """
    limit, chunk = 16 * BIG, b"x" * 4096
    decoder = Decoder(max_event_bytes=limit)
    started = time.process_time()
    for _ in range(limit // len(chunk)):
        assert decoder.feed(chunk) == []
    with pytest.raises(UpstreamProtocolError):
        decoder.feed(chunk)
    assert time.process_time() - started < 2.0


def test_endless_line_in_one_chunk_raises() -> None:
    with pytest.raises(UpstreamProtocolError):
        decode(b"data: " + b"x" * 100, limit=64)


def test_many_data_lines_without_a_blank_line_raise() -> None:
    decoder = Decoder(max_event_bytes=64)
    for _ in range(4):  # 4 x 16 = 64 bytes held: at the bound
        assert decoder.feed(b"data: 0123456789\n") == []
    with pytest.raises(UpstreamProtocolError):
        decoder.feed(b"data: 0123456789\n")


def test_many_comment_lines_without_a_blank_line_raise() -> None:
    decoder = Decoder(max_event_bytes=64)
    for _ in range(4):
        assert decoder.feed(b": ping ping ping\n") == []
    with pytest.raises(UpstreamProtocolError):
        decoder.feed(b": ping ping ping\n")


def test_the_bound_is_per_event() -> None:
    decoder = Decoder(max_event_bytes=64)
    event = b"data: " + b"x" * 40 + b"\n\n"
    for _ in range(100):
        assert decoder.feed(event) == [Event("message", "x" * 40)]


def test_an_event_at_the_bound_passes() -> None:
    line = b"data: " + b"x" * 58  # 64 bytes of undispatched event
    decoder = Decoder(max_event_bytes=64)
    assert decoder.feed(line) == []
    assert decoder.feed(b"\n\n") == [Event("message", "x" * 58)]
