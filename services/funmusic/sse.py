"""An incremental Server-Sent Events parser for DashScope streams (``docs/dashscope.md`` section 3).

Why not aiohttp's line reader: ``resp.content.readline()`` and ``async for line in resp.content`` raise
``LineTooLong`` on lines over 512 KiB (aiohttp 3.14), and one base64 ``data:`` line can be larger. This parser is fed
whatever ``iter_any()`` returns and keeps its own buffer, so a line may be any size and split anywhere, including
between the ``\\r`` and ``\\n`` of a CRLF.

Cost is linear in the bytes fed: each feed scans only the new bytes for line ends (``bytes.find`` is memchr, and a
chunk without a CR is searched for LFs alone). Lines are read in place from the chunk fed; only a line that a chunk
ends before its end is buffered. An event's data is kept as the bytes received (:attr:`SSEEvent.raw`, one copy)
and decoded to a str only if asked for (:attr:`SSEEvent.data`): the client reads an audio event's base64 straight
from those bytes.

Rules (the SSE spec, plus what DashScope sends):
- lines end in LF, CRLF or CR;
- ``field:value`` and ``field: value`` (one leading space is dropped);
- several ``data`` lines in one event are joined with ``\\n``;
- comments (lines starting with ``:``) are dropped, except DashScope's ``:HTTP_STATUS/NNN``, whose number is kept
  as the event's ``http_status`` (a ``status:NNN`` field, which the SDK reads, is taken the same way);
- a blank line ends an event; an event with neither ``data`` nor ``event`` is not emitted;
- :meth:`SSEParser.close` flushes a last event that has no closing blank line.

Memory is bounded: with ``max_event_bytes`` set, a line still waiting for its end, or an event's ``data`` lines
together, larger than that raise :class:`EventTooLarge` at once (a stream that never sends a newline would
otherwise be held in memory until the deadline).
"""

from __future__ import annotations

_CR = 0x0D
_LF = 0x0A
_STATUS_COMMENT = b":HTTP_STATUS/"


class EventTooLarge(ValueError):
    """A line, or one event's data, grew past the parser's ``max_event_bytes``: the stream is broken."""

    def __init__(self, what: str, limit: int) -> None:
        super().__init__(f"{what} is over the {limit}-byte event size cap")
        self.limit = limit


class SSEEvent:
    """One dispatched event. ``data`` is the ``data`` lines joined with ``\\n`` (``""`` if none); ``raw`` is the
    same as the bytes received (``data`` is them read as UTF-8, an invalid byte read as U+FFFD)."""

    __slots__ = ("_data", "_raw", "event", "http_status", "id")

    def __init__(
        self,
        id: str | None = None,
        event: str | None = None,
        data: str | None = None,
        http_status: int | None = None,
        *,
        raw: bytes | None = None,
    ) -> None:
        self.id = id
        self.event = event
        self.http_status = http_status
        self._data = data if data is not None or raw is not None else ""
        self._raw = raw

    @property
    def data(self) -> str:
        if self._data is None:
            assert self._raw is not None
            self._data = str(self._raw, "utf-8", "replace")
        return self._data

    @property
    def raw(self) -> bytes:
        if self._raw is None:
            assert self._data is not None
            self._raw = self._data.encode("utf-8", "surrogatepass")
        return self._raw

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SSEEvent):
            return NotImplemented
        return (self.id, self.event, self.http_status, self.data) == (
            other.id,
            other.event,
            other.http_status,
            other.data,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        data = self.data
        shown = data if len(data) <= 200 else f"{data[:200]}… ({len(data)} characters)"
        return f"SSEEvent(id={self.id!r}, event={self.event!r}, data={shown!r}, http_status={self.http_status!r})"


def _parse_status(raw: bytes) -> int | None:
    text = raw.strip()
    if len(text) == 3 and text.isdigit():
        return int(text)
    return None


class SSEParser:
    """Feed it bytes; it returns the events completed so far. Not thread-safe; one parser per stream.

    ``max_event_bytes`` (None = no limit) bounds the line being assembled and the data of the event in progress;
    past it, :meth:`feed` raises :class:`EventTooLarge`.
    """

    def __init__(self, max_event_bytes: int | None = None) -> None:
        self._max = max_event_bytes
        self._buf = bytearray()  # the start of a line that a chunk ended before its end (it holds no CR or LF)
        self._skip_lf = False  # the previous line ended in CR at the end of a chunk: a leading LF belongs to it
        self._last_id: str | None = None
        self._closed = False
        # the event in progress
        self._id: str | None = None
        self._event: str | None = None
        self._data: list[bytes] = []
        self._data_bytes = 0
        self._status: int | None = None
        self._has_content = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Add bytes; return every event completed by them (possibly none)."""
        if self._closed:
            raise RuntimeError("SSEParser.feed() after close()")
        events: list[SSEEvent] = []
        if not chunk:
            return events
        chunk = bytes(chunk)  # read in place below: it must not change (a no-op for bytes)
        pos = 0
        if self._skip_lf:
            self._skip_lf = False
            if chunk[0] == _LF:
                pos = 1
        end = len(chunk)
        has_cr = chunk.find(b"\r", pos) >= 0
        if self._buf:  # the line begun in an earlier chunk ends at this chunk's first line end, if it has one
            line_end = self._line_end(chunk, pos, has_cr)
            if line_end < 0:
                self._buffer(chunk, pos)
                return events
            with memoryview(chunk) as view:
                self._buf += view[pos:line_end]
            self._line(self._buf, 0, len(self._buf), events)
            self._buf.clear()
            pos = self._after(chunk, line_end)
        if not has_cr:  # the usual case: lines end in LF alone
            find, line = chunk.find, self._line
            while pos < end:
                line_end = find(b"\n", pos)
                if line_end < 0:
                    self._buffer(chunk, pos)
                    break
                line(chunk, pos, line_end, events)
                pos = line_end + 1
            return events
        while pos < end:
            line_end = self._line_end(chunk, pos, has_cr)
            if line_end < 0:
                self._buffer(chunk, pos)
                break
            self._line(chunk, pos, line_end, events)
            pos = self._after(chunk, line_end)
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream: treat a trailing partial line as a line and flush the event in progress."""
        if self._closed:
            return []
        self._closed = True
        events: list[SSEEvent] = []
        if self._buf:
            self._line(self._buf, 0, len(self._buf), events)
            self._buf.clear()
        self._dispatch(events)
        return events

    @staticmethod
    def _line_end(chunk: bytes, pos: int, has_cr: bool) -> int:
        """Where the line starting at ``pos`` ends (its CR or LF), or -1 if the chunk ends first."""
        lf = chunk.find(b"\n", pos)
        if has_cr:  # a CR can only end a line before the next LF
            cr = chunk.find(b"\r", pos, lf if lf >= 0 else len(chunk))
            if cr >= 0:
                return cr
        return lf

    def _after(self, chunk: bytes, line_end: int) -> int:
        """Where the next line starts, past the line end at ``line_end`` (a CRLF is one line end)."""
        if chunk[line_end] == _CR:
            if line_end + 1 == len(chunk):
                self._skip_lf = True  # the CR is the chunk's last byte; an LF may follow in the next chunk
            elif chunk[line_end + 1] == _LF:
                return line_end + 2
        return line_end + 1

    def _buffer(self, chunk: bytes, pos: int) -> None:
        with memoryview(chunk) as view:
            self._buf += view[pos:]
        if self._max is not None and len(self._buf) > self._max:
            raise EventTooLarge(f"a line of more than {len(self._buf)} bytes without an end", self._max)

    def _line(self, buf: bytes | bytearray, start: int, end: int, events: list[SSEEvent]) -> None:
        """One line, ``buf[start:end]``, read in place: a multi-MiB data line is copied once, into its bytes."""
        if start == end:
            self._dispatch(events)
            return
        if buf[start] == 0x3A:  # ":" comment
            if buf.startswith(_STATUS_COMMENT, start, end):
                self._status = _parse_status(bytes(buf[start + len(_STATUS_COMMENT) : end]))
            return
        colon = buf.find(b":", start, end)
        if colon < 0:
            name, value_at = buf[start:end], end
        else:
            name = buf[start:colon]  # bytes, or a bytearray: either compares equal to the names below
            value_at = colon + 1
            if value_at < end and buf[value_at] == 0x20:
                value_at += 1
        if name == b"data":
            self._data_bytes += end - value_at + 1
            if self._max is not None and self._data_bytes > self._max:
                raise EventTooLarge(f"an event with {self._data_bytes} bytes of data lines", self._max)
            if isinstance(buf, bytes):
                self._data.append(buf[value_at:end])
            else:
                with memoryview(buf) as view:
                    self._data.append(bytes(view[value_at:end]))
            self._has_content = True
        elif name == b"event":
            self._event = bytes(buf[value_at:end]).decode("utf-8", "replace")
            self._has_content = True
        elif name == b"id":
            value = bytes(buf[value_at:end])
            if b"\x00" not in value:
                self._last_id = value.decode("utf-8", "replace")
            self._id = self._last_id
        elif name == b"status":
            self._status = _parse_status(bytes(buf[value_at:end]))
        # "retry" and unknown fields are ignored, as the spec says

    def _dispatch(self, events: list[SSEEvent]) -> None:
        if self._has_content:
            data = self._data
            events.append(
                SSEEvent(
                    id=self._id if self._id is not None else self._last_id,
                    event=self._event,
                    http_status=self._status,
                    raw=data[0] if len(data) == 1 else b"\n".join(data),
                )
            )
            self._data = []
        elif self._data:
            self._data = []
        self._id = self._event = self._status = None
        self._data_bytes = 0
        self._has_content = False
