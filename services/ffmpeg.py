"""Where ffmpeg is, and running it without blocking the event loop.

The one on PATH wins; otherwise the binary the ``imageio-ffmpeg`` wheel ships, so a fresh machine needs no system
package. That wheel has no ffprobe, so songbot never asks for one: durations come from decoding (see ``audio.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from services.errors import SongbotError
from services.wav import fix_sizes

#: the pipe into a :class:`DecodeCheck` (Linux's default of 64 KiB would wake ffmpeg every 64 KiB)
PIPE_BYTES = 1024 * 1024
#: how much of a pipe a :class:`DecodeCheck` probes: the format and the stream's parameters are in the first
#: bytes, and probing ffmpeg's default 5 MB cost a fifth of its work on a WAV song (measured, bench/stream.py)
PROBE_BYTES = 64 * 1024
#: a WAV read to the end of the pipe (see :meth:`DecodeCheck.start`), in packets of 256 KiB, not 16 KiB
WAV_INPUT = ("-f", "wav", "-ignore_length", "1", "-max_size", str(256 * 1024))


class FfmpegError(SongbotError):
    """ffmpeg failed; the message holds the tail of its stderr (never user text)."""

    summary = "The song could not be processed."


@functools.cache
def ffmpeg_exe() -> str:
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


async def ffmpeg_path() -> str:
    """:func:`ffmpeg_exe` without blocking the loop: the first lookup searches PATH and the wheel (file stats)."""
    return await asyncio.to_thread(ffmpeg_exe)


async def run_ffmpeg(*args: str, stdin: bytes | None = None, timeout: float = 300.0) -> bytes:
    """Run ffmpeg as a subprocess (never on the loop) and return its stdout. Raises :class:`FfmpegError`."""
    proc = await asyncio.create_subprocess_exec(
        await ffmpeg_path(),
        "-hide_banner",
        "-nostdin" if stdin is None else "-y",
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise FfmpegError(f"ffmpeg timed out after {timeout:g}s") from None
    except asyncio.CancelledError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        tail = err.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise FfmpegError(f"ffmpeg exited {proc.returncode}: {' | '.join(tail)}")
    return out


async def render_test_audio(
    duration_s: float, *, sample_rate: int = 48000, channels: int = 2, fmt: str = "mp3"
) -> bytes:
    """Real, decodable music-like audio of the given length (a chord with a beat), made by ffmpeg.

    Used by the simulator and by tests. ``fmt`` is ``mp3`` or ``wav`` (16-bit PCM).
    """
    if fmt not in ("mp3", "wav"):
        raise ValueError(f"fmt must be mp3 or wav, not {fmt!r}")
    expr = "0.25*sin(2*PI*220*t)*(0.6+0.4*sin(2*PI*2*t))+0.15*sin(2*PI*277.18*t)+0.12*sin(2*PI*329.63*t)"
    layout = "stereo" if channels == 2 else "mono"
    codec = ["-c:a", "libmp3lame", "-b:a", "128k", "-f", "mp3"] if fmt == "mp3" else ["-c:a", "pcm_s16le", "-f", "wav"]
    audio = await run_ffmpeg(
        "-loglevel",
        "error",
        "-f",
        "lavfi",
        "-i",
        f"aevalsrc={expr}|{expr}:s={sample_rate}:d={duration_s:.3f}:c={layout}"
        if channels == 2
        else f"aevalsrc={expr}:s={sample_rate}:d={duration_s:.3f}",
        "-ac",
        str(channels),
        "-ar",
        str(sample_rate),
        *codec,
        "pipe:1",
    )
    if fmt == "wav":
        # ffmpeg cannot seek back on a pipe, so the header holds placeholder sizes: write the real ones
        fixed = bytearray(audio)
        fix_sizes(fixed, len(fixed))
        return bytes(fixed)
    return audio


@dataclass(frozen=True)
class AudioInfo:
    """What decoding the file says: the truth about a song, whatever its headers claim."""

    duration_s: float
    sample_rate: int
    channels: int
    codec: str


_STREAM_RE = re.compile(r"Stream #\d+:\d+.*?: Audio: (\w+).*?, (\d+) Hz, (mono|stereo|(\d+) channels)")
_TIME_RE = re.compile(r"time=(\d+):(\d+):(\d+(?:\.\d+)?)")
#: with ``-loglevel level+info`` a line starts with its contexts (``[in#0/wav @ 0x55d0]``), then its level
_ERROR_LINE_RE = re.compile(r"^(?:\[[^\[\]\n]* @ 0x[0-9a-fA-F]+\] )*\[(?:error|fatal|panic)\] .*$", re.MULTILINE)


def parse_decode_log(log: str, returncode: int) -> AudioInfo:
    """The :class:`AudioInfo` in the log of ffmpeg decoding audio to the null muxer; :class:`FfmpegError` if it failed.

    The stream line gives the codec, rate and channels, the last ``time=`` the duration actually decoded. A non-zero
    exit fails; so does any error-level line when the log carries levels (``-loglevel level+info``, used where
    ``-xerror`` cannot be, see :class:`DecodeCheck`).
    """
    stream = _STREAM_RE.search(log)
    times = _TIME_RE.findall(log)
    error_line = _ERROR_LINE_RE.search(log)
    if returncode != 0 or stream is None or not times or error_line is not None:
        tail = error_line.group(0).strip() if error_line else " | ".join(log.strip().splitlines()[-2:])
        raise FfmpegError(f"not decodable audio: {tail}")
    hours, minutes, seconds = times[-1]
    layout = stream.group(3)
    channels = 1 if layout == "mono" else 2 if layout == "stereo" else int(stream.group(4))
    return AudioInfo(
        duration_s=int(hours) * 3600 + int(minutes) * 60 + float(seconds),
        sample_rate=int(stream.group(2)),
        channels=channels,
        codec=stream.group(1),
    )


async def probe_audio(path: Path | str) -> AudioInfo:
    """Decode the whole file (ffmpeg to the null muxer) and report its real duration, rate and channels.

    There is no ffprobe in the imageio-ffmpeg wheel, and a header's duration can lie (streamed WAV placeholders),
    so decoding is the honest measure. Raises :class:`FfmpegError` if the file does not decode.
    """
    proc = await asyncio.create_subprocess_exec(
        await ffmpeg_path(),
        "-hide_banner",
        "-nostdin",
        "-v",
        "info",
        "-xerror",
        "-i",
        str(path),
        "-f",
        "null",
        "-",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode is not None
    return parse_decode_log(err.decode("utf-8", "replace"), proc.returncode)


def write_all(fd: int, chunks: Sequence[bytes]) -> None:
    """*Blocking.* Write every chunk to ``fd``, in order, with as few syscalls (``writev``) as the kernel allows."""
    views = [memoryview(c) for c in chunks]
    index = 0
    while index < len(views):
        written = os.writev(fd, views[index : index + 1024])
        while written and index < len(views):
            size = len(views[index])
            if written >= size:
                written -= size
                index += 1
            else:
                views[index] = views[index][written:]
                written = 0


class DecodeCheck:
    """:func:`probe_audio` for audio that is still arriving: ffmpeg decodes it from a pipe as it is written.

    A song's decode check then overlaps its download instead of following it; once the last bytes are in, only
    the tail is left to decode. :meth:`feed` is *blocking* (a pipe write; a busy ffmpeg slows the writer down,
    which is the backpressure), so call it from a worker thread, in order. The log is read on the loop meanwhile.

    Unlike :func:`probe_audio` this runs without ``-xerror``: a stream's length is unknown until it ends, so the
    last read of a WAV read to the end comes up short, which ffmpeg flags as a corrupt packet and ``-xerror``
    would make fatal. Every decoding error is still logged at error level, and any error-level line fails the
    check (:func:`parse_decode_log`); that last read is only a warning.
    """

    def __init__(self, proc: asyncio.subprocess.Process, fd: int) -> None:
        self._proc = proc
        self._fd: int | None = fd
        self._log = asyncio.ensure_future(proc.communicate())
        self._stopped_reading = False
        self._lock = threading.Lock()  # held by feed() while it writes: the pipe is never closed under a write

    @classmethod
    async def start(cls, head: bytes) -> DecodeCheck:
        """Start ffmpeg on an empty pipe, for audio that begins with ``head`` (its first few KiB will do).

        A WAV (``RIFF``...``WAVE``) is read as WAV whatever its header's sizes say (``-ignore_length``): a streamed
        header's are placeholders, or wrong, and the samples run to the end of the stream, which is what
        :func:`services.wav.repair_wav_file` writes into the file afterwards. Its packets are made bigger than
        the 16 KiB default, which halves ffmpeg's work for PCM. Anything else is probed, as in a file.
        """
        source = WAV_INPUT if head[:4] == b"RIFF" and head[8:12] == b"WAVE" else ()
        exe = await ffmpeg_path()
        read_fd, write_fd = os.pipe()
        try:
            with contextlib.suppress(ImportError, AttributeError, OSError):  # Linux only: fewer wake-ups
                import fcntl

                fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
            proc = await asyncio.create_subprocess_exec(
                exe,
                "-hide_banner",
                "-nostats",
                "-loglevel",
                "level+info",
                "-probesize",
                str(PROBE_BYTES),
                *source,
                "-i",
                "pipe:0",
                "-f",
                "null",
                "-",
                stdin=read_fd,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
        except BaseException:
            os.close(write_fd)
            raise
        finally:
            os.close(read_fd)
        return cls(proc, write_fd)

    def feed(self, chunks: Sequence[bytes]) -> None:
        """*Blocking.* Send the next bytes to ffmpeg. If it has stopped reading, :meth:`finish` will say why."""
        with self._lock:
            if self._fd is None or self._stopped_reading:
                return
            try:
                write_all(self._fd, chunks)
            except BrokenPipeError:
                self._stopped_reading = True

    async def finish(self, timeout: float = 300.0) -> AudioInfo:
        """End of the audio (no :meth:`feed` may be running): wait for ffmpeg to decode the rest.

        Raises :class:`FfmpegError` if it did not decode.
        """
        self._close_input()
        try:
            out = await asyncio.wait_for(asyncio.shield(self._log), timeout)
        except TimeoutError:
            await self.abort()
            raise FfmpegError(f"ffmpeg timed out after {timeout:g}s") from None
        except asyncio.CancelledError:
            await asyncio.shield(self.abort())
            raise
        assert self._proc.returncode is not None
        info = parse_decode_log(out[1].decode("utf-8", "replace"), self._proc.returncode)
        if self._stopped_reading:  # it exited cleanly without reading everything: it did not decode everything
            raise FfmpegError("not decodable audio: ffmpeg stopped reading before the end")
        return info

    def kill(self) -> None:
        """Stop ffmpeg now: a :meth:`feed` blocked on it returns. :meth:`abort` still has to follow."""
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()

    async def abort(self) -> None:
        """Stop ffmpeg and forget the audio (a failed or restarted download). Safe to call more than once."""
        self.kill()
        await asyncio.to_thread(self._close_input)  # after a feed that is still running, which ffmpeg's end ends
        with contextlib.suppress(Exception):
            await self._log

    def _close_input(self) -> None:
        """Blocking while a :meth:`feed` runs."""
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is not None:
                os.close(fd)
