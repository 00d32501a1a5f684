"""Where a song's audio goes while it arrives: the file, the decode check, and the meter behind progress.

:class:`AudioSink` is the output file being assembled (and the ffmpeg that decodes it as it is written);
:class:`WriteBehind` writes a stream's audio to it from one worker thread while the event loop reads;
:class:`Meter` counts the bytes and estimates their seconds; :class:`Reporter` passes progress on;
:func:`final_path` gives the finished file its name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

from services.audio_headers import find_data_chunk, mp3_bitrate, wav_byte_rate
from services.errors import BrokenStream, SongbotError
from services.ffmpeg import AudioInfo, DecodeCheck, FfmpegError, write_all
from services.funmusic.request import Progress, ProgressCallback, ProgressStage
from services.funmusic.wire import decode_audio, decoded_size

log = logging.getLogger(__name__)

#: The first bytes of the audio: enough for its headers (the meter's rate, the decode check's probe).
HEAD_BYTES = 64 * 1024
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class Meter:
    """Counts audio bytes and estimates their seconds from the first bytes: WAV byte rate, else MP3 bitrate."""

    def __init__(self) -> None:
        self.count = 0
        self.head = bytearray()
        self._rate: tuple[int, int] | None = None

    def add(self, data: bytes) -> None:
        self.count += len(data)
        if len(self.head) < HEAD_BYTES:
            self.head += data[: HEAD_BYTES - len(self.head)]

    def seconds(self) -> float:
        if self._rate is None and self.head:
            if self.head[:4] == b"RIFF":
                self._rate = wav_byte_rate(self.head)
            else:
                bitrate = mp3_bitrate(self.head)
                self._rate = (bitrate // 8, 0) if bitrate else None
        if self._rate is None:
            return 0.0
        per_second, offset = self._rate
        return max(0, self.count - offset) / per_second


class AudioSink:
    """The output file being assembled, and the decode check that follows it.

    Methods marked *blocking* do file I/O: call them in a worker thread. The async ones run on the loop, and only
    while no blocking method is running.
    """

    def __init__(self, path: Path, fmt: str) -> None:
        self.path = path
        self.fmt = fmt
        self.meter = Meter()
        self.dropped_headers = 0
        self._fh: IO[bytes] | None = None
        self._check: DecodeCheck | None = None

    async def start(self) -> None:
        """Start (or start over) with an empty file."""
        await self.stop_check()
        await asyncio.to_thread(self.reset)

    async def begin_check(self, head: bytes) -> None:
        """Start the ffmpeg that decodes what is written from now on: audio that begins with ``head``."""
        assert self._check is None, "one check per start()"
        self._check = await DecodeCheck.start(head)

    async def measure(self) -> AudioInfo:
        """Everything is written: what decoding it says. Raises :class:`FfmpegError` if it does not decode."""
        check, self._check = self._check, None
        if check is None:
            raise FfmpegError("not decodable audio: there is none")
        return await check.finish()

    def kill_check(self) -> None:
        """Stop ffmpeg at once (a write blocked on it returns); :meth:`stop_check` still has to follow."""
        if self._check is not None:
            self._check.kill()

    async def stop_check(self) -> None:
        check, self._check = self._check, None
        if check is not None:
            await check.abort()

    async def dispose(self) -> None:
        """Stop the check, close and delete the file: no partial file is left behind."""
        await self.stop_check()
        await asyncio.to_thread(self.discard)

    @property
    def bytes_written(self) -> int:
        return self.meter.count

    @property
    def head(self) -> bytearray:
        return self.meter.head

    def reset(self) -> None:
        """*Blocking.* Start (or start over) with an empty file."""
        if self._fh is None:
            self._fh = self.path.open("wb", buffering=0)
        else:
            self._fh.seek(0)
            self._fh.truncate()
        self.meter = Meter()
        self.dropped_headers = 0

    def write_stream_payloads(self, payloads: Sequence[str | bytes], request_id: str | None) -> None:
        """*Blocking.* Append events' audio: base64 (a str) is decoded here, each event on its own; bytes are
        already decoded. Repeated WAV headers are dropped."""
        self.write_chunks(
            [p if isinstance(p, bytes) else decode_audio(p, request_id, self.bytes_written > 0) for p in payloads]
        )

    def write_chunks(self, chunks: Sequence[bytes]) -> None:
        """*Blocking.* Append decoded event chunks, dropping a WAV header that repeats at a chunk's start.

        One ``writev`` per batch: after each syscall this thread has to win the GIL back from the busy event
        loop, so fewer, larger writes keep the two threads from queueing behind each other.
        """
        kept: list[bytes] = []
        for data in chunks:
            if self.fmt == "wav" and (self.meter.count or kept) and data[:4] == b"RIFF" and data[8:12] == b"WAVE":
                data_at = find_data_chunk(data)
                if data_at is not None:
                    data = data[data_at + 8 :]
                    self.dropped_headers += 1
            if data:
                kept.append(data)
        if kept:
            assert self._fh is not None, "reset() first"
            self._write(kept)
            for data in kept:
                self.meter.add(data)

    def write_raw(self, data: bytes) -> None:
        """*Blocking.* Append bytes exactly as they are (a downloaded file)."""
        if data:
            assert self._fh is not None, "reset() first"
            self._write([data])
            self.meter.add(data)

    def _write(self, chunks: Sequence[bytes]) -> None:
        """*Blocking.* To ffmpeg first, so that it decodes while the file is written."""
        assert self._fh is not None
        if self._check is not None:
            self._check.feed(chunks)
        write_all(self._fh.fileno(), chunks)

    def close(self) -> None:
        """*Blocking.*"""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def discard(self) -> None:
        """*Blocking.* Close and delete: no partial file is left behind."""
        self.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def seconds(self) -> float:
        """Seconds of audio written so far (an estimate; see :class:`Meter`)."""
        return self.meter.seconds()


class WriteBehind:
    """Writes the audio (to the file and the decode check) in one worker thread, in order, while the loop reads.

    Events' base64 is decoded on the loop, each event on its own, as long as an event is small
    (``INLINE_DECODE_MAX``, well under a millisecond): that is cheaper than in the worker, which has to win the
    GIL back from the busy loop for every batch (up to a switch interval each time); the worker's writes release
    the GIL. A larger event is decoded by the worker, so that a multi-MiB one cannot stall the bot's other work.

    The loop hands over about ``BATCH_BYTES`` of base64 at a time and does not wait for it; it waits only when
    more than ``MAX_PENDING_BYTES`` are queued, and for the rest at the end. Memory stays bounded by those two
    figures. A bad event (invalid base64) fails at once, or fails its batch, before the song can be declared done.
    """

    MAX_PENDING_BYTES = 4 * 1024 * 1024  # with 8 MiB the decoded audio queued alone could pass 0.15x of a 200 s WAV
    BATCH_BYTES = 1024 * 1024  # hand the worker about this much at a time: each hand-over costs a thread wake-up
    INLINE_DECODE_MAX = 256 * 1024

    def __init__(self, sink: AudioSink, report: Reporter) -> None:
        self._sink = sink
        self._report = report
        self._carry = b""  # base64 characters after an event's last whole 4-character quantum
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="songbot-audio")
        self._pending: deque[tuple[asyncio.Future[None], int]] = deque()
        self._pending_bytes = 0
        self._batch: list[str | bytes] = []
        self._batch_bytes = 0
        self._request_id: str | None = None
        self._checking = False
        self.meter = Meter()

    async def submit(self, payloads: Sequence[str | bytes | memoryview], request_id: str | None) -> None:
        """Queue one read's base64 payloads: decoded (each on its own) and written in order by the worker.

        An event cut mid-quantum (a length that is not a multiple of 4) keeps its last 1-3 characters for the
        next event (``docs/dashscope.md`` §6.2), so each part decoded is whole quanta; invalid characters still
        fail, strictly. A payload is the base64's bytes (normally a view of the event as received); a str is
        taken as its UTF-8, where anything not ASCII is as invalid as it was in the str.
        """
        for whole in payloads:
            payload = self._whole_quanta(whole.encode("utf-8", "surrogatepass") if isinstance(whole, str) else whole)
            if not payload:
                continue
            self._batch_bytes += len(payload)
            # the first bytes tell the rate that progress needs, so they are decoded here whatever their size
            if len(payload) <= self.INLINE_DECODE_MAX or len(self.meter.head) < HEAD_BYTES:
                data = decode_audio(payload, request_id, self.meter.count > 0)
                self.meter.add(data)
                self._batch.append(data)
            else:  # as a str for the worker (which takes bytes as decoded audio); latin-1 keeps every byte
                text = str(payload, "latin-1")
                self.meter.count += decoded_size(text)
                self._batch.append(text)
        self._request_id = request_id
        if self._batch_bytes >= self.BATCH_BYTES:
            await self._hand_over()
        await self._report(ProgressStage.GENERATING, self.meter.count, self.meter.seconds())

    def _whole_quanta(self, payload: bytes | memoryview) -> bytes | memoryview:
        """``payload`` behind the carried characters, less a new tail that does not fill a quantum (carried)."""
        if self._carry:
            payload, self._carry = self._carry + payload, b""
        cut = len(payload) % 4
        if cut:
            payload, self._carry = payload[:-cut], bytes(payload[-cut:])
        return payload

    def _flush_carry(self) -> None:
        """The stream has ended: base64 left over is a last quantum sent without its ``=`` padding (2 or 3
        characters, padded here) or a broken one (1 character, which no base64 ends with)."""
        carry, self._carry = self._carry, b""
        if not carry:
            return
        if len(carry) == 1:
            raise BrokenStream(
                "the stream's base64 ended one character into a 4-character quantum",
                request_id=self._request_id,
                audio_delivered=self.meter.count > 0,
            )
        data = decode_audio(carry + b"=" * (4 - len(carry)), self._request_id, self.meter.count > 0)
        self.meter.add(data)
        self._batch.append(data)
        self._batch_bytes += len(carry)

    async def _hand_over(self) -> None:
        if not self._batch:
            return
        if not self._checking:  # the first bytes are in: they tell ffmpeg what it is about to decode
            await self._sink.begin_check(bytes(self.meter.head))
            self._checking = True
        batch, size = self._batch, self._batch_bytes
        self._batch, self._batch_bytes = [], 0
        loop = asyncio.get_running_loop()
        write = self._sink.write_stream_payloads
        self._pending.append((loop.run_in_executor(self._executor, write, batch, self._request_id), size))
        self._pending_bytes += size
        while self._pending_bytes > self.MAX_PENDING_BYTES:
            await self._wait_oldest()

    async def _wait_oldest(self) -> None:
        future, size = self._pending.popleft()
        self._pending_bytes -= size
        await future

    async def drain(self) -> None:
        """Write what is left, wait for every queued write (raising the first failure), let the worker go."""
        self._flush_carry()
        await self._hand_over()
        while self._pending:
            await self._wait_oldest()
        self._executor.shutdown(wait=False)

    async def abandon(self) -> None:
        """The stream failed: wait until the worker is idle, since the file is about to be reset or deleted."""
        self._sink.kill_check()  # the song is lost: do not wait for ffmpeg to read what is queued for it
        self._pending.clear()
        self._pending_bytes = 0
        self._batch, self._batch_bytes = [], 0
        self._carry = b""
        with contextlib.suppress(Exception):
            await asyncio.shield(asyncio.to_thread(self._executor.shutdown, True))


def final_path(tmp: Path, out_dir: Path, request_id: str | None, fmt: str) -> Path:
    """*Blocking.* Give the finished temp file its name: the request id when it is a safe file name."""
    stem = request_id if request_id and _SAFE_NAME.match(request_id) else uuid.uuid4().hex
    target = out_dir / f"{stem}.{fmt}"
    if target.exists():
        target = out_dir / f"{stem}-{uuid.uuid4().hex[:8]}.{fmt}"
    tmp.rename(target)
    return target


class Reporter:
    """Sends progress to the caller's callback; a failing callback is logged, never fatal to the song."""

    def __init__(self, callback: ProgressCallback | None, tag: str) -> None:
        self._callback = callback
        self._tag = tag
        self.attempt = 1

    async def __call__(self, stage: ProgressStage, bytes_received: int = 0, seconds_received: float = 0.0) -> None:
        if self._callback is None:
            return
        try:
            await self._callback(
                Progress(
                    stage=stage,
                    bytes_received=bytes_received,
                    seconds_received=seconds_received,
                    attempt=self.attempt,
                )
            )
        except SongbotError:
            raise
        except Exception:
            log.exception("fun-music %s: progress callback failed (ignored)", self._tag)
