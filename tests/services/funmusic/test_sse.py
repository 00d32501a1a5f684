"""The incremental SSE parser: every chunk boundary, every line ending, DashScope's quirks, huge lines."""

from __future__ import annotations

import base64
import json
import random

import pytest

from services.funmusic.sse import SSEEvent, SSEParser


def parse(stream: bytes, cuts: list[int] | None = None) -> list[SSEEvent]:
    """Feed ``stream`` split at ``cuts`` (sorted offsets), then close."""
    parser = SSEParser()
    events: list[SSEEvent] = []
    previous = 0
    for cut in [*(cuts or []), len(stream)]:
        events += parser.feed(stream[previous:cut])
        previous = cut
    return events + parser.close()


def dashscope_stream(eol: str = "\n", sep: str = ":") -> bytes:
    """A realistic stream: two audio events (base64 of real-ish bytes), an error-free final event."""
    audio = [bytes(range(256)) * 3, b"\x00\xff" * 100 + b"x"]
    blocks = []
    for i, chunk in enumerate(audio, start=1):
        payload = {
            "output": {"audio": {"data": base64.b64encode(chunk).decode(), "id": "a1"}, "finish_reason": "null"},
            "request_id": "r1",
        }
        blocks.append(
            f"id{sep}{i}{eol}event{sep}result{eol}:HTTP_STATUS/200{eol}data{sep}{json.dumps(payload)}{eol}{eol}"
        )
    final = {"output": {"audio": {"data": "", "url": "http://x/y.mp3"}, "finish_reason": "stop"}, "request_id": "r1"}
    blocks.append(f"id{sep}3{eol}event{sep}result{eol}:HTTP_STATUS/200{eol}data{sep}{json.dumps(final)}{eol}{eol}")
    return "".join(blocks).encode()


def test_dashscope_blocks_parse_into_events() -> None:
    events = parse(dashscope_stream())
    assert [e.id for e in events] == ["1", "2", "3"]
    assert {e.event for e in events} == {"result"}
    assert {e.http_status for e in events} == {200}
    assert base64.b64decode(json.loads(events[0].data)["output"]["audio"]["data"]) == bytes(range(256)) * 3
    assert json.loads(events[2].data)["output"]["finish_reason"] == "stop"


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("sep", [":", ": "])
def test_every_single_split_gives_the_same_events(eol: str, sep: str) -> None:
    stream = dashscope_stream(eol, sep)
    expected = parse(dashscope_stream())
    assert parse(stream) == expected
    for offset in range(len(stream) + 1):
        assert parse(stream, [offset]) == expected, f"split at byte {offset}"


@pytest.mark.parametrize("eol", ["\n", "\r\n"])
def test_random_many_splits_give_the_same_events(eol: str) -> None:
    stream = dashscope_stream(eol)
    expected = parse(stream)
    for seed in range(300):
        rng = random.Random(seed)
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(1, 60)))
        assert parse(stream, cuts) == expected, f"seed {seed}"


def test_byte_by_byte() -> None:
    stream = dashscope_stream("\r\n")
    assert parse(stream, list(range(1, len(stream)))) == parse(stream)


def test_crlf_split_between_cr_and_lf_does_not_make_a_blank_line() -> None:
    parser = SSEParser()
    assert parser.feed(b"data:a\r") == []
    assert parser.feed(b"\ndata:b\r") == []  # the LF belongs to the CR before it: no dispatch yet
    # the blank line's CR ends it at once; its LF, in the next chunk, must not make a second blank line
    assert parser.feed(b"\n\r") == [SSEEvent(data="a\nb")]
    assert parser.feed(b"\ndata:c\r\n") == []
    assert parser.close() == [SSEEvent(data="c")]


def test_lone_cr_ends_lines() -> None:
    assert parse(b"data:a\rdata:b\r\rdata:c\r\r") == [SSEEvent(data="a\nb"), SSEEvent(data="c")]


def test_multiple_data_lines_are_joined_with_newline() -> None:
    assert parse(b"data:one\ndata: two\ndata:\ndata:three\n\n") == [SSEEvent(data="one\ntwo\n\nthree")]


def test_only_one_space_after_the_colon_is_dropped() -> None:
    assert parse(b"data:  two spaces\n\n")[0].data == " two spaces"
    assert parse(b"data\n\n")[0].data == ""  # a field with no colon has an empty value


def test_comments_are_ignored_but_http_status_is_kept() -> None:
    events = parse(b": keep-alive\n:HTTP_STATUS/429\nevent:error\n: another\ndata:{}\n\n")
    assert events == [SSEEvent(id=None, event="error", data="{}", http_status=429)]


def test_status_field_is_read_like_the_sdk_does() -> None:
    assert parse(b"status: 503\ndata:x\n\n")[0].http_status == 503


def test_comment_only_block_dispatches_nothing() -> None:
    assert parse(b":HTTP_STATUS/200\n\n:ping\n\n") == []


def test_unknown_fields_and_retry_are_ignored() -> None:
    assert parse(b"retry:1000\nfoo:bar\ndata:x\n\n") == [SSEEvent(data="x")]


def test_id_carries_over_to_the_next_event() -> None:
    events = parse(b"id:7\ndata:a\n\ndata:b\n\n")
    assert [e.id for e in events] == ["7", "7"]


def test_last_event_without_blank_line_is_flushed_on_close() -> None:
    parser = SSEParser()
    assert parser.feed(b'id:1\nevent:result\ndata:{"a":1}') == []
    assert parser.close() == [SSEEvent(id="1", event="result", data='{"a":1}')]
    assert parser.close() == []


def test_last_event_ending_in_one_newline_is_flushed_on_close() -> None:
    assert parse(b"data:x\n") == [SSEEvent(data="x")]


def test_feed_after_close_is_an_error() -> None:
    parser = SSEParser()
    parser.close()
    with pytest.raises(RuntimeError):
        parser.feed(b"data:x\n\n")


def test_two_megabyte_data_line_in_small_chunks() -> None:
    payload = base64.b64encode(random.Random(1).randbytes(1_500_000))  # 2 MB of base64
    stream = b"id:1\nevent:result\ndata:" + payload + b"\n\nid:2\ndata:end\n\n"
    parser = SSEParser()
    events: list[SSEEvent] = []
    for offset in range(0, len(stream), 4093):
        events += parser.feed(stream[offset : offset + 4093])
    events += parser.close()
    assert len(events) == 2
    assert events[0].data.encode() == payload
    assert events[1].data == "end"


def test_many_megabyte_line_is_linear_not_quadratic() -> None:
    """A 16 MiB line fed in 1 KiB chunks: rescanning the buffer on each feed would be 16k scans of MiBs.

    Counted, not timed: the bytes searched for a line end must stay near the bytes fed.
    """
    scanned: list[int] = []

    class CountingBuffer(bytearray):
        def find(self, sub: object, start: int = 0, end: int | None = None) -> int:  # type: ignore[override]
            stop = len(self) if end is None or end < 0 else end
            scanned.append(max(0, stop - start))
            return super().find(sub, start, stop)  # type: ignore[arg-type]

    parser = SSEParser()
    parser._buf = CountingBuffer()
    line = b"data:" + b"A" * (16 * 1024 * 1024) + b"\n\n"
    events: list[SSEEvent] = []
    for offset in range(0, len(line), 1024):
        events += parser.feed(line[offset : offset + 1024])
    assert len(events) == 1 and len(events[0].data) == 16 * 1024 * 1024
    assert sum(scanned) < 3 * len(line)


def test_non_utf8_bytes_do_not_crash() -> None:
    assert parse(b"data:\xff\xfe\n\n")[0].data == "\ufffd\ufffd"


def test_data_is_kept_as_the_bytes_received_and_read_as_utf8_when_asked() -> None:
    """``raw`` is the data lines' bytes joined with LF, whatever the split; ``data`` reads them as UTF-8."""
    stream = b'id:1\r\ndata:\xff\xfe caf\xc3\xa9\r\ndata:{"a":1}\r\n\r\ndata:\xc3\r\n\r\n'
    for offset in range(len(stream) + 1):
        events = parse(stream, [offset])
        assert [e.raw for e in events] == [b'\xff\xfe caf\xc3\xa9\n{"a":1}', b"\xc3"], f"split at byte {offset}"
    assert [e.data for e in events] == ['\ufffd\ufffd café\n{"a":1}', "\ufffd"]
    assert SSEEvent(data="café").raw == "café".encode()
