"""An incremental Server-Sent Events parser for DashScope streams (``docs/dashscope.md`` section 3).

Why not aiohttp's line reader: ``resp.content.readline()`` and ``async for line in resp.content`` raise
``LineTooLong`` on lines over 512 KiB (aiohttp 3.14), and one base64 ``data:`` line can be larger. This parser is fed
whatever ``iter_any()`` returns and keeps its own buffer, so a line may be any size and split anywhere, including
between the ``\\r`` and ``\\n`` of a CRLF.

Cost is linear in the bytes fed: each feed only scans the new bytes for line ends (``bytes.find`` is memchr), and a
line is copied out of the buffer once.

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

from dataclasses import dataclass, field

_CR = 0x0D
_LF = 0x0A
_STATUS_COMMENT = b":HTTP_STATUS/"


class EventTooLarge(ValueError):
    """A line, or one event's data, grew past the parser's ``max_event_bytes``: the stream is broken."""

    def __init__(self, what: str, limit: int) -> None:
        super().__init__(f"{what} is over the {limit}-byte event size cap")
        self.limit = limit


@dataclass
class SSEEvent:
    """One dispatched event. ``data`` is the ``data`` lines joined with ``\\n`` (``""`` if none)."""

    id: str | None = None
    event: str | None = None
    data: str = ""
    http_status: int | None = None


@dataclass
class _Pending:
    id: str | None = None
    event: str | None = None
    data: list[str] = field(default_factory=list)
    data_bytes: int = 0
    http_status: int | None = None
    has_content: bool = False


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
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf already searched for a line end (none found there)
        self._skip_lf = False  # the previous line ended in CR at the end of a chunk: a leading LF belongs to it
        self._pending = _Pending()
        self._last_id: str | None = None
        self._closed = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Add bytes; return every event completed by them (possibly none)."""
        if self._closed:
            raise RuntimeError("SSEParser.feed() after close()")
        if not chunk:
            return []
        start = 0
        if self._skip_lf:
            self._skip_lf = False
            if chunk[0] == _LF:
                start = 1
        self._buf += chunk[start:] if start else chunk
        events: list[SSEEvent] = []
        self._consume_lines(events)
        if self._max is not None and len(self._buf) > self._max:
            raise EventTooLarge(f"a line of more than {len(self._buf)} bytes without an end", self._max)
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

    def _consume_lines(self, events: list[SSEEvent]) -> None:
        buf = self._buf
        pos = 0
        end = len(buf)
        lf = -2  # next LF at or after pos; -2 = not searched yet, -1 = none in the buffer
        while True:
            search_from = max(pos, self._scanned)
            if lf == -2 or (lf >= 0 and lf < search_from):
                lf = buf.find(b"\n", search_from)
            # A CR can only end a line before the next LF; search just that stretch so CR-free streams stay O(n).
            cr = buf.find(b"\r", search_from, lf if lf >= 0 else end)
            if cr < 0 and lf < 0:
                self._scanned = end
                break
            if cr >= 0:
                line_end, next_pos = cr, cr + 1
                if next_pos < end:
                    if buf[next_pos] == _LF:
                        next_pos += 1
                else:
                    self._skip_lf = True  # the CR is the chunk's last byte; an LF may follow in the next chunk
            else:
                line_end, next_pos = lf, lf + 1
            self._line(buf, pos, line_end, events)
            pos = next_pos
            self._scanned = pos
        if pos:
            del buf[:pos]
            self._scanned -= pos

    def _line(self, buf: bytes | bytearray, start: int, end: int, events: list[SSEEvent]) -> None:
        """One line, ``buf[start:end]``, read in place: a multi-MiB data line is copied once, into its str."""
        if start == end:
            self._dispatch(events)
            return
        pending = self._pending
        if buf[start] == 0x3A:  # ":" comment
            if buf.startswith(_STATUS_COMMENT, start, end):
                pending.http_status = _parse_status(bytes(buf[start + len(_STATUS_COMMENT) : end]))
            return
        colon = buf.find(b":", start, end)
        if colon < 0:
            name, value_at = bytes(buf[start:end]), end
        else:
            name = bytes(buf[start:colon])
            value_at = colon + 1
            if value_at < end and buf[value_at] == 0x20:
                value_at += 1
        if name == b"data":
            pending.data_bytes += end - value_at + 1
            if self._max is not None and pending.data_bytes > self._max:
                raise EventTooLarge(f"an event with {pending.data_bytes} bytes of data lines", self._max)
            with memoryview(buf) as view:
                pending.data.append(str(view[value_at:end], "utf-8", "replace"))
            pending.has_content = True
        elif name == b"event":
            pending.event = bytes(buf[value_at:end]).decode("utf-8", "replace")
            pending.has_content = True
        elif name == b"id":
            value = bytes(buf[value_at:end])
            if b"\x00" not in value:
                self._last_id = value.decode("utf-8", "replace")
            pending.id = self._last_id
        elif name == b"status":
            pending.http_status = _parse_status(bytes(buf[value_at:end]))
        # "retry" and unknown fields are ignored, as the spec says

    def _dispatch(self, events: list[SSEEvent]) -> None:
        pending = self._pending
        if pending.has_content:
            events.append(
                SSEEvent(
                    id=pending.id if pending.id is not None else self._last_id,
                    event=pending.event,
                    data="\n".join(pending.data),
                    http_status=pending.http_status,
                )
            )
        self._pending = _Pending()
