"""Where ffmpeg is, and running it without blocking the event loop.

The one on PATH wins; otherwise the binary the ``imageio-ffmpeg`` wheel ships, so a fresh machine needs no system
package. That wheel has no ffprobe, so songbot never asks for one: durations come from decoding (see ``audio.py``).
"""

from __future__ import annotations

import asyncio
import functools
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from services.errors import SongbotError
from services.wav import fix_sizes


class FfmpegError(SongbotError):
    """ffmpeg failed; the message holds the tail of its stderr (never user text)."""

    user_message = "The song could not be processed."


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
    _, err_bytes = await proc.communicate()
    err = err_bytes.decode("utf-8", "replace")
    stream = _STREAM_RE.search(err)
    times = _TIME_RE.findall(err)
    if proc.returncode != 0 or stream is None or not times:
        tail = " | ".join(err.strip().splitlines()[-2:])
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
