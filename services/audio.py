"""Audio after generation: transcoding, fitting a song under an upload limit, tags, and a waveform picture.

Everything slow runs off the event loop: pydub (which runs ffmpeg and copies whole songs in memory) in a
worker thread via :func:`asyncio.to_thread`, plain ffmpeg jobs through :func:`services.ffmpeg.run_ffmpeg`.

Formats: ``mp3`` (libmp3lame, CBR), ``ogg`` (Opus in an Ogg container, libopus; the imageio-ffmpeg build has
it), ``wav`` (16-bit PCM). There is no ffprobe here, so pydub is always told the decoder (``codec=``), which
is what makes it skip its ffprobe call (``mediainfo_json``).

Tags, where the format has them:

- mp3: an ID3v2.4 tag written here (TIT2 title, TPE1 artist, USLT lyrics, COMM comment; UTF-8). ffmpeg's mp3
  muxer cannot write a real USLT frame: a ``lyrics`` metadata key becomes ``TXXX:USLT``, which players do not
  show as lyrics. So ffmpeg encodes without any ID3 tag and the tag is prepended in Python.
- ogg: Vorbis comments TITLE, ARTIST, LYRICS, and the comment (ffmpeg names it DESCRIPTION).
- wav: RIFF INFO INAM (title) and IART (artist) only; WAV has no lyrics field.

:func:`fit` keeps the original audio when it is already in the wanted format and fits; it still rewrites
the tags (mp3: the ID3 tag is swapped in Python; ogg/wav: ffmpeg ``-c copy``), because without that the common
case (an mp3 under the limit) would never carry its title and lyrics. The audio packets stay byte-identical.
If the new tags would push the file over the limit, the original bytes are copied untouched instead.

pydub runs inside a :class:`PydubJob` (one per :func:`fit` or :func:`transcode`): the temporary files it makes go in
the job's directory (the ``out_dir`` or the destination's directory, i.e. the job's work dir) and are gone when the
call returns, whatever the outcome; cancelling the call kills the ffmpeg pydub is running and waits for the worker
thread to stop before the CancelledError goes on, so nothing is left running or half-written behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import logging
import os
import re
import shutil
import struct
import subprocess
import tempfile
import threading
import unicodedata
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, TypeVar

from services.audio_headers import find_data_chunk, id3v2_size, is_wav, wav_format
from services.errors import CannotFit
from services.ffmpeg import PROBE_BYTES, FfmpegError, ffmpeg_exe, run_ffmpeg
from services.wav import fix_sizes

with warnings.catch_warnings():
    # pydub looks for ffmpeg on PATH at import and warns when it is not there; we set the converter ourselves.
    warnings.filterwarnings("ignore", message="Couldn't find ffmpeg or avconv", category=RuntimeWarning)
    from pydub import AudioSegment
    from pydub.exceptions import CouldntDecodeError, CouldntEncodeError

log = logging.getLogger(__name__)

AudioFormat = Literal["mp3", "ogg", "wav"]
FORMATS: tuple[AudioFormat, ...] = ("mp3", "ogg", "wav")

# Bitrate ladders, best first (kbps). Opus at 24 kbps still sounds like music; mp3 below 32 does not.
MP3_LADDER: tuple[int, ...] = (320, 256, 192, 160, 128, 96, 64, 48, 32)
OGG_LADDER: tuple[int, ...] = (160, 128, 96, 64, 48, 32, 24)
LADDERS: dict[str, tuple[int, ...]] = {"mp3": MP3_LADDER, "ogg": OGG_LADDER}
DEFAULT_KBPS: dict[str, int] = {"mp3": 192, "ogg": 128}

# Before encoding a rung, its size is predicted and a rung predicted over the limit is skipped, so usually only
# the rung that fits is encoded. mp3 is CBR: its size is known in advance (the samples' frames, the overhead
# below, and our ID3 tag; ``base_size`` in _fit_sync), so its factor is 1. Opus is VBR and came out
# between 0.85x and 1.4x of duration * bitrate / 8 on test music, so its factor is lower (skipping a rung that
# would have fitted costs quality). After a real encode the measured ratio, times the margin, replaces the
# factor. The lowest rung is always really encoded.
_FIRST_GUESS = {"mp3": 1.0, "ogg": 0.7}
_LEARNED_MARGIN = {"mp3": 1.0, "ogg": 0.85}
#: what an mp3 has beyond duration * bitrate / 8, in samples: LAME's delay and padding (2-3 frames) and the Xing
#: frame, which at 32 kbps takes more than one frame's bytes. Measured at 22.05-48 kHz and 32-320 kbps, this
#: predicts 0.3-2.4 frames more than the real size, never less
_MP3_OVERHEAD_SAMPLES = 4 * 1152

_DECODERS = {"mp3": "mp3float", "ogg": "opus"}
_ENCODERS = {"mp3": "libmp3lame", "ogg": "libopus", "wav": "pcm_s16le"}
# (WAVE format tag, bits per sample) -> ffmpeg decoder, for WAV files pydub cannot read by itself.
_WAV_DECODERS = {
    (1, 8): "pcm_u8",
    (1, 16): "pcm_s16le",
    (1, 24): "pcm_s24le",
    (1, 32): "pcm_s32le",
    (3, 32): "pcm_f32le",
    (3, 64): "pcm_f64le",
}
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class Tags:
    """What goes into the file's tags. Control characters (but newline and tab) are dropped when written."""

    title: str
    artist: str = "songbot"
    lyrics: str = ""
    comment: str = ""


@dataclass(frozen=True)
class FitResult:
    """The file to upload.

    ``format`` may differ from the one asked for: a WAV that does not fit is delivered as mp3.
    ``bitrate_kbps`` is the ladder rung used, or None when the audio was not re-encoded (``transcoded`` False)
    or is PCM.
    """

    path: Path
    format: str
    size: int
    bitrate_kbps: int | None
    transcoded: bool


# ------------------------------------------------------------------------------------------------ public API


async def transcode(
    src: Path,
    src_format: str,
    dst: Path,
    dst_format: str,
    *,
    bitrate_kbps: int | None = None,
    tags: Tags | None = None,
) -> Path:
    """Decode ``src`` and encode it to ``dst`` (pydub, in a worker thread). Returns ``dst``.

    ``bitrate_kbps`` defaults to 192 for mp3 and 128 for ogg; it must be None for wav. Raises ``FfmpegError``
    when the source does not decode or the encoder fails (no partial ``dst`` is left behind).
    """
    _check_format(src_format)
    _check_format(dst_format)
    if dst_format == "wav" and bitrate_kbps is not None:
        raise ValueError("wav has no bitrate")
    if bitrate_kbps is not None and bitrate_kbps <= 0:
        raise ValueError(f"bitrate_kbps must be positive, not {bitrate_kbps}")
    kbps = bitrate_kbps if bitrate_kbps is not None else DEFAULT_KBPS.get(dst_format)

    def work() -> None:
        _encode(_decode(src, src_format), dst, dst_format, kbps, tags)

    await PydubJob(dst.parent).run(work)
    return dst


async def fit(
    src: Path,
    src_format: str,
    want_format: str,
    max_bytes: int,
    *,
    tags: Tags,
    out_dir: Path,
) -> FitResult:
    """Make a file of ``want_format`` no larger than ``max_bytes`` in ``out_dir`` (named from the title).

    Order: the original audio with new tags (no re-encode) when it is already ``want_format`` and fits; else a
    transcode, walking the bitrate ladder down until the real size fits. mp3 never goes above the source's
    own bitrate when the source is mp3 (likewise ogg from ogg). A WAV that does not fit falls back to mp3 (the
    original mp3 if the source is one and fits). Raises :class:`CannotFit` when even the lowest rung is too
    large. The source is decoded at most once, and never modified. Give each job its own ``out_dir``: the
    file name comes from the title, so two jobs with one title would overwrite each other's file. pydub's
    temporary files go in ``out_dir`` too, and none is left there, nor a partial output, after success, failure
    or cancellation; cancelling stops the ffmpeg it runs.
    """
    _check_format(src_format)
    _check_format(want_format)
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, not {max_bytes}")
    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    src_size = await asyncio.to_thread(_file_size, src)
    if src_format == want_format and src_size <= max_bytes:
        dst = await asyncio.to_thread(_output_path, out_dir, tags.title, src_format, src)
        return await _keep_async(src, src_format, dst, max_bytes, tags)
    job = PydubJob(out_dir)
    return await job.run(functools.partial(_fit_sync, job, src, src_format, src_size, want_format, max_bytes, tags))


async def waveform_png(
    src: Path,
    dst: Path,
    *,
    width: int = 1200,
    height: int = 240,
    color: str = "0x5865F2",
) -> Path:
    """Draw the song's waveform (ffmpeg ``showwavespic``, channels mixed to one) as a PNG of width x height.

    The background is transparent. ``color`` is ``0xRRGGBB``, ``#RRGGBB`` (optionally with alpha) or a colour
    name ffmpeg knows. Raises ``FfmpegError`` if the audio does not decode.
    """
    for name, value in (("width", width), ("height", height)):
        if not 16 <= value <= 8192:
            raise ValueError(f"{name} must be 16-8192, not {value}")
    if not _COLOR_RE.fullmatch(color):
        raise ValueError(f"not a colour: {color!r}")
    png = await run_ffmpeg(
        "-loglevel",
        "error",
        # the stream's parameters are in the first bytes; probing the default 5 MB cost a third of the picture's
        # CPU on a 200 s WAV (bench/after_last_byte.py, where it competes with the fit's encoder), same picture
        "-probesize",
        str(PROBE_BYTES),
        "-i",
        f"file:{src}",
        "-filter_complex",
        f"[0:a:0]aformat=channel_layouts=mono,showwavespic=s={width}x{height}:colors={color}[v]",
        "-map",
        "[v]",
        "-frames:v",
        "1",
        "-c:v",
        "png",
        "-f",
        "image2pipe",
        "pipe:1",
    )
    if not png.startswith(_PNG_SIGNATURE):
        raise FfmpegError("ffmpeg did not produce a PNG")
    await asyncio.to_thread(dst.write_bytes, png)
    return dst


def slugify(text: str, *, max_len: int = 48, fallback: str = "song") -> str:
    """A file-name slug: lower-case ASCII letters, digits and single hyphens, at most ``max_len`` long.

    Accents are folded (``Café`` -> ``cafe``); everything else (path separators, dots, emoji, control
    characters, non-Latin scripts) becomes a separator. Text with nothing left gives ``fallback`` (itself
    slugified, and ``song`` if that is empty too), so the result is never empty and never names a directory.
    """
    if max_len < 1:
        raise ValueError("max_len must be at least 1")
    return _slug(text, max_len) or _slug(fallback, max_len) or "song"[:max_len]


# ------------------------------------------------------------------------------------------------ helpers

_COLOR_RE = re.compile(r"(?:(?:0x|#)[0-9A-Fa-f]{6}(?:[0-9A-Fa-f]{2})?|[A-Za-z]{3,32})")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_NOT_SLUG = re.compile(r"[^a-z0-9]+")


def _slug(text: str, max_len: int) -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return _NOT_SLUG.sub("-", folded.lower()).strip("-")[:max_len].rstrip("-")


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"audio format must be one of {', '.join(FORMATS)}, not {fmt!r}")


def _file_size(path: Path) -> int:
    return path.stat().st_size


def _output_path(out_dir: Path, title: str, fmt: str, src: Path) -> Path:
    """``out_dir/<slug>.<fmt>``, never the source file itself."""
    dst = out_dir / f"{slugify(title)}.{fmt}"
    if dst.resolve() == src.resolve():
        dst = out_dir / f"{slugify(title)}-fit.{fmt}"
    return dst


@functools.cache
def _pydub() -> Any:
    """pydub's AudioSegment with our ffmpeg (PATH usually has none), its temporary files and processes hooked
    (see :class:`PydubJob`). Called in worker threads only."""
    import pydub.audio_segment as segment_module

    segment_module.NamedTemporaryFile = _hooked_temporary_file
    segment_module.subprocess = _PydubSubprocess()
    AudioSegment.converter = ffmpeg_exe()
    return AudioSegment


def _clean(text: str) -> str:
    """Tag text without NUL or other control characters (they break ID3 strings and argv); newlines stay."""
    text = text.replace("\r\n", "\n")
    return "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) != "Cc")


def _tail(exc: Exception) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return " | ".join(lines[-2:])


# ---- pydub's jobs


class JobCancelled(Exception):
    """Raised in a :class:`PydubJob`'s worker thread once the job is cancelled (the caller sees CancelledError)."""


_current = threading.local()
_T = TypeVar("_T")


class PydubJob:
    """One call's pydub work, run in a worker thread: where its temporary files go, and the ffmpeg it runs.

    pydub makes temporary files with ``tempfile.NamedTemporaryFile`` (in the system's temporary directory, and it
    leaves them there when ffmpeg fails) and runs ffmpeg with ``subprocess.Popen``, out of the caller's reach.
    :func:`_pydub` points those two names in pydub's module at hooks that, in a thread running a job, create the
    files in the job's ``work_dir`` and remember the processes, and elsewhere do what pydub would have done.
    """

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self._lock = threading.Lock()  # spawning and cancelling exclude each other: no ffmpeg starts after a cancel
        self._procs: list[subprocess.Popen[bytes]] = []
        self._files: list[Path] = []
        self._handles: list[Any] = []  # pydub's temporary files, which it does not close when ffmpeg fails
        self._cancelled = False

    async def run(self, fn: Callable[[], _T]) -> _T:
        """``fn()`` in a worker thread, as this job. Cancelling the caller kills the job's ffmpeg, waits for the
        thread to stop (a second cancel does not cut that short) and removes the job's files, then re-raises."""
        thread = asyncio.ensure_future(asyncio.to_thread(self._in_thread, fn))
        try:
            return await asyncio.shield(thread)
        except asyncio.CancelledError:
            self.cancel()
            while not thread.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([thread])
            if not thread.cancelled():
                thread.exception()  # what the thread raised once killed is moot: the caller was cancelled
            raise

    def cancel(self) -> None:
        """Stop the job: kill the ffmpeg it runs; the thread then fails out. Any thread may call it."""
        with self._lock:
            self._cancelled = True
            procs = list(self._procs)
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()

    def check(self) -> None:
        """In the worker thread, between steps: raise :class:`JobCancelled` if the job was cancelled."""
        if self._cancelled:
            raise JobCancelled

    def scratch(self, suffix: str) -> Path:
        """A new file name in ``work_dir`` for a result being made; removed with the job's temporary files."""
        path = self.work_dir / f".fit-{os.urandom(8).hex()}{suffix}"
        self._files.append(path)
        return path

    def popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._cancelled:
                raise JobCancelled
            proc: subprocess.Popen[bytes] = subprocess.Popen(*args, **kwargs)
            self._procs.append(proc)
        return proc

    def temporary_file(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["dir"] = self.work_dir
        kwargs.setdefault("prefix", ".pydub-")
        fh = tempfile.NamedTemporaryFile(*args, **kwargs)
        self._files.append(Path(fh.name))
        self._handles.append(fh)
        return fh

    def _in_thread(self, fn: Callable[[], _T]) -> _T:
        _current.job = self
        try:
            self.check()
            return fn()
        finally:
            _current.job = None
            self._reap()

    def _reap(self) -> None:
        """The job's end, in its thread: no ffmpeg of it still running, none of its temporary files left."""
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        for fh in self._handles:
            fh.close()
        for path in self._files:
            path.unlink(missing_ok=True)


def _hooked_temporary_file(*args: Any, **kwargs: Any) -> Any:
    """pydub's ``NamedTemporaryFile``: in the thread's :class:`PydubJob`'s directory, if there is one."""
    job: PydubJob | None = getattr(_current, "job", None)
    if job is None:
        return tempfile.NamedTemporaryFile(*args, **kwargs)
    return job.temporary_file(*args, **kwargs)


class _PydubSubprocess:
    """pydub's ``subprocess`` module: ``Popen`` goes through the thread's :class:`PydubJob`, if there is one."""

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    @staticmethod
    def Popen(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        job: PydubJob | None = getattr(_current, "job", None)
        if job is None:
            return subprocess.Popen(*args, **kwargs)
        return job.popen(*args, **kwargs)


# ---- decoding and encoding (worker thread)


def _decode(src: Path, fmt: str) -> Any:
    """Decode the whole file into an AudioSegment. Always names the decoder so pydub never calls ffprobe.

    A 16- or 32-bit integer PCM WAV (what the service streams) is read straight into the segment: its samples
    are the decoded audio already, and this holds one copy of them where pydub's WAV parser holds three or four.
    """
    segment_cls = _pydub()
    try:
        if fmt == "wav":
            segment = _read_pcm_wav(src, segment_cls)
            if segment is not None:
                return segment
            buf = bytearray(src.read_bytes())
            decoder, pydub_reads_it = _wav_decoder(buf)
            if _wav_sizes_are_placeholders(buf):
                fix_sizes(buf, len(buf))
            container = "wav" if pydub_reads_it else None
            return segment_cls.from_file(io.BytesIO(buf), format=container, codec=decoder)
        return segment_cls.from_file(str(src), format=fmt, codec=_DECODERS[fmt])
    except CouldntDecodeError as exc:
        raise FfmpegError(f"{fmt} did not decode: {_tail(exc)}") from None
    except ValueError as exc:
        raise FfmpegError(f"{fmt} did not decode: {exc}") from None


#: a WAV's chunks before its samples fit in this many bytes (a few dozen, or a few KiB with metadata)
_WAV_HEAD_BYTES = 64 * 1024


def _read_pcm_wav(src: Path, segment_cls: Any) -> Any:
    """A 16- or 32-bit integer PCM WAV's samples as an AudioSegment, read once; None for any other WAV.

    The samples are the data chunk's, or up to the end of the file when its size is a placeholder (a streamed WAV
    whose sizes were not repaired); a partial last frame is dropped.
    """
    with src.open("rb") as fh:
        head = fh.read(_WAV_HEAD_BYTES)
        data_at = find_data_chunk(head)
        fmt = _wav_fmt(head)
        if data_at is None or fmt is None:
            return None
        tag, channels, rate, bits = fmt
        if tag != 1 or bits not in (16, 32) or channels < 1 or rate < 1:
            return None
        (size,) = struct.unpack_from("<I", head, data_at + 4)
        available = os.fstat(fh.fileno()).st_size - (data_at + 8)
        if size in (0, 0xFFFFFFFF) or size > available:
            size = available
        frame = channels * bits // 8
        fh.seek(data_at + 8)
        samples = fh.read(size - size % frame)
    return segment_cls(data=samples, sample_width=bits // 8, frame_rate=rate, channels=channels)


def _wav_sizes_are_placeholders(buf: bytes | bytearray) -> bool:
    """A streamed WAV's data size (0 or 0xFFFFFFFF, or past the end); pydub would read no frames or too few.

    A plausible size is left alone: chunks may follow the data (a LIST at the end), and they are not audio.
    """
    data_at = find_data_chunk(buf)
    if data_at is None:
        return False
    (size,) = struct.unpack_from("<I", buf, data_at + 4)
    return size in (0, 0xFFFFFFFF) or data_at + 8 + size > len(buf)


def _wav_fmt(buf: bytes | bytearray) -> tuple[int, int, int, int] | None:
    """A WAV's (format tag, channels, sample rate, bits per sample), the extensible tag resolved; None if its
    header has no fmt chunk. Raises ValueError if it is not a RIFF/WAVE file."""
    if not is_wav(buf):
        raise ValueError("not a RIFF/WAVE file")
    fmt = wav_format(buf, resolve_extensible=True)
    return None if fmt is None else (fmt.tag, fmt.channels, fmt.rate, fmt.bits)


def _wav_decoder(buf: bytes | bytearray) -> tuple[str, bool]:
    """The ffmpeg decoder for this WAV's samples, and whether pydub's own parser handles it (integer PCM)."""
    fmt = _wav_fmt(buf)
    if fmt is None:
        raise ValueError("WAV has no fmt chunk")
    tag, _, _, bits = fmt
    decoder = _WAV_DECODERS.get((tag, bits))
    if decoder is None:
        raise ValueError(f"unsupported WAV samples (format {tag:#x}, {bits} bits)")
    return decoder, tag == 1


def _encode(segment: Any, dst: Path, fmt: str, kbps: int | None, tags: Tags | None) -> int:
    """Encode ``segment`` to ``dst`` with tags; returns the file's size. A failed encode leaves no file."""
    try:
        if fmt == "mp3":
            buf = io.BytesIO()
            # no ID3 from ffmpeg: the tag with a real USLT frame is written below
            _export(segment, buf, fmt, kbps, None, ["-id3v2_version", "0"])
            tag = _id3v2_tag(tags) if tags is not None else b""
            with dst.open("wb") as fh:
                fh.write(tag)
                fh.write(buf.getbuffer())
        else:
            with dst.open("wb") as fh:
                _export(segment, fh, fmt, kbps, _ffmpeg_metadata(fmt, tags), None)
    except BaseException:
        dst.unlink(missing_ok=True)
        raise
    return dst.stat().st_size


def _export(
    segment: Any,
    out: BinaryIO,
    fmt: str,
    kbps: int | None,
    metadata: dict[str, str] | None,
    parameters: list[str] | None,
) -> None:
    try:
        segment.export(
            out,
            format=fmt,
            codec=_ENCODERS[fmt],
            bitrate=f"{kbps}k" if kbps is not None and fmt != "wav" else None,
            tags=metadata or None,
            parameters=parameters,
        )
    except CouldntEncodeError as exc:
        raise FfmpegError(f"encoding {fmt} failed: {_tail(exc)}") from None


def _ffmpeg_metadata(fmt: str, tags: Tags | None) -> dict[str, str]:
    """``-metadata`` pairs for the ogg and wav muxers (mp3 tags are written by :func:`_id3v2_tag`)."""
    if tags is None:
        return {}
    if fmt == "ogg":
        pairs = {"TITLE": tags.title, "ARTIST": tags.artist, "LYRICS": tags.lyrics, "COMMENT": tags.comment}
    elif fmt == "wav":
        pairs = {"title": tags.title, "artist": tags.artist}
    else:
        return {}
    return {key: _clean(value) for key, value in pairs.items() if _clean(value)}


def _metadata_args(metadata: dict[str, str]) -> list[str]:
    args: list[str] = []
    for key, value in metadata.items():
        args += ["-metadata", f"{key}={value}"]
    return args


# ---- ID3v2.4 (mp3)


def _syncsafe(n: int) -> bytes:
    if not 0 <= n < 1 << 28:
        raise ValueError("ID3 tag too large")
    return bytes(((n >> 21) & 0x7F, (n >> 14) & 0x7F, (n >> 7) & 0x7F, n & 0x7F))


def _id3_frame(frame_id: bytes, body: bytes) -> bytes:
    return frame_id + _syncsafe(len(body)) + b"\x00\x00" + body


def _id3v2_tag(tags: Tags) -> bytes:
    """An ID3v2.4 tag, UTF-8 throughout: TIT2, TPE1, USLT and COMM (language ``und``, empty description)."""
    frames: list[bytes] = []
    for frame_id, text in ((b"TIT2", tags.title), (b"TPE1", tags.artist)):
        if _clean(text):
            frames.append(_id3_frame(frame_id, b"\x03" + _clean(text).encode("utf-8")))
    for frame_id, text in ((b"USLT", tags.lyrics), (b"COMM", tags.comment)):
        if _clean(text):
            frames.append(_id3_frame(frame_id, b"\x03und\x00" + _clean(text).encode("utf-8")))
    if not frames:
        return b""
    body = b"".join(frames)
    return b"ID3\x04\x00\x00" + _syncsafe(len(body)) + body


def _mp3_audio_span(path: Path) -> tuple[int, int]:
    """Byte range of the MPEG frames: after any ID3v2 tags at the start, before an ID3v1 tag at the end."""
    size = path.stat().st_size
    start = 0
    with path.open("rb") as fh:
        while True:
            fh.seek(start)
            head = fh.read(10)
            tag_size = id3v2_size(head)
            if tag_size is None:
                break
            start += tag_size
        end = size
        if size - start >= 128:
            fh.seek(size - 128)
            if fh.read(3) == b"TAG":
                end = size - 128
    return min(start, end), end


def _retag_mp3(src: Path, dst: Path, tags: Tags) -> int:
    """Copy the MPEG frames of ``src`` to ``dst`` behind a new ID3v2 tag (old tags dropped). Returns size."""
    start, end = _mp3_audio_span(src)
    try:
        with src.open("rb") as fin, dst.open("wb") as fout:
            fout.write(_id3v2_tag(tags))
            fin.seek(start)
            left = end - start
            while left > 0:
                chunk = fin.read(min(_COPY_CHUNK, left))
                if not chunk:
                    break
                fout.write(chunk)
                left -= len(chunk)
    except BaseException:
        dst.unlink(missing_ok=True)
        raise
    return dst.stat().st_size


def _copy_file(src: Path, dst: Path) -> int:
    shutil.copyfile(src, dst)
    return dst.stat().st_size


# ---- fit


async def _keep_async(src: Path, fmt: str, dst: Path, max_bytes: int, tags: Tags) -> FitResult:
    """The original audio, re-tagged without re-encoding (or copied untouched if the new tags don't fit)."""
    size: int | None = None
    try:
        if fmt == "mp3":
            size = await asyncio.to_thread(_retag_mp3, src, dst, tags)
        else:
            await run_ffmpeg(
                "-loglevel",
                "error",
                "-y",
                "-i",
                f"file:{src}",
                "-map",
                "0:a:0",
                "-c",
                "copy",
                "-map_metadata",
                "-1",
                *_metadata_args(_ffmpeg_metadata(fmt, tags)),
                "-f",
                fmt,
                f"file:{dst}",
            )
            size = await asyncio.to_thread(_file_size, dst)
    except FfmpegError as exc:
        log.warning("re-tagging %s failed, keeping it untagged: %s", src.name, exc)
    if size is None or size > max_bytes:
        size = await asyncio.to_thread(_copy_file, src, dst)
    log.info("fit: kept original %s (%d bytes <= %d)", fmt, size, max_bytes)
    return FitResult(path=dst, format=fmt, size=size, bitrate_kbps=None, transcoded=False)


def _fit_sync(
    job: PydubJob, src: Path, src_format: str, src_size: int, want: str, max_bytes: int, tags: Tags
) -> FitResult:
    """The part of :func:`fit` that needs the decoded audio; runs in the job's worker thread.

    Each result is made under a scratch name and renamed into place once it fits, so a failure or a cancel never
    leaves a partial file where the result goes.
    """
    out_dir = job.work_dir
    segment = _decode(src, src_format)
    job.check()
    duration_s = float(segment.frame_count() / segment.frame_rate)
    if want == "wav":
        dst = _output_path(out_dir, tags.title, "wav", src)
        if _wav_size_guess(segment) <= max_bytes:
            scratch = job.scratch(".wav")
            size = _encode(segment, scratch, "wav", None, tags)
            if size <= max_bytes:
                scratch.replace(dst)
                log.info("fit: wav %d bytes <= %d", size, max_bytes)
                return FitResult(path=dst, format="wav", size=size, bitrate_kbps=None, transcoded=True)
            scratch.unlink()
        if src_format == "mp3" and src_size <= max_bytes:
            mp3 = _output_path(out_dir, tags.title, "mp3", src)
            size = _retag_mp3(src, mp3, tags)
            if size > max_bytes:
                size = _copy_file(src, mp3)
            log.info("fit: wav too large, kept the original mp3 (%d bytes)", size)
            return FitResult(path=mp3, format="mp3", size=size, bitrate_kbps=None, transcoded=False)
        want = "mp3"
    cap = _source_kbps(src, src_format, duration_s) if src_format == want else None
    dst = _output_path(out_dir, tags.title, want, src)
    scratch = job.scratch(f".{want}")

    def encode(kbps: int) -> int:
        job.check()
        return _encode(segment, scratch, want, kbps, tags)

    if want == "mp3":
        samples, rate, tag_bytes = float(segment.frame_count()), float(segment.frame_rate), len(_id3v2_tag(tags))

        def base_size(kbps: int) -> float:
            return (samples + _MP3_OVERHEAD_SAMPLES) / rate * kbps * 125 + tag_bytes
    else:

        def base_size(kbps: int) -> float:
            return duration_s * kbps * 125

    result = _walk_ladder(encode, base_size, scratch, want, duration_s, max_bytes, cap)
    scratch.replace(dst)
    return FitResult(path=dst, format=want, size=result.size, bitrate_kbps=result.bitrate_kbps, transcoded=True)


def _wav_size_guess(segment: Any) -> int:
    """16-bit PCM bytes plus the header; a slight under-guess, since the INFO chunk is not counted."""
    return int(segment.frame_count()) * int(segment.channels) * 2 + 44


def _source_kbps(src: Path, fmt: str, duration_s: float) -> float | None:
    """The source's average bitrate (its audio bytes over its decoded duration), for lossy formats."""
    if fmt == "wav" or duration_s <= 0:
        return None
    start, end = _mp3_audio_span(src) if fmt == "mp3" else (0, src.stat().st_size)
    return (end - start) * 8 / duration_s / 1000


def ladder_for(fmt: str, source_kbps: float | None = None) -> tuple[int, ...]:
    """The rungs to try for ``fmt``, best first, none above the source's bitrate (2% slack for the container).

    If the source is below even the lowest rung, only the lowest rung is left.
    """
    ladder = LADDERS[fmt]
    if source_kbps is None:
        return ladder
    return tuple(kbps for kbps in ladder if kbps <= source_kbps * 1.02) or ladder[-1:]


def _walk_ladder(
    encode: Callable[[int], int],
    base_size: Callable[[int], float],
    dst: Path,
    fmt: str,
    duration_s: float,
    max_bytes: int,
    source_kbps: float | None,
) -> FitResult:
    """Encode rung by rung, best first, until the real size fits; skip rungs predicted not to fit.

    A rung's predicted size is ``base_size(kbps)`` times a factor (``_FIRST_GUESS``, then what the last real
    encode measured), so usually the first rung encoded is the one that fits, and a rung is only stepped down
    from when its real size is over the limit.
    """
    rungs: Sequence[int] = ladder_for(fmt, source_kbps)
    ratio = _FIRST_GUESS[fmt]
    tried: list[str] = []
    for i, kbps in enumerate(rungs):
        base = base_size(kbps)
        if i < len(rungs) - 1 and base * ratio > max_bytes:
            continue
        size = encode(kbps)
        tried.append(f"{kbps}k={size}")
        if size <= max_bytes:
            log.info("fit: %s at %d kbps, %d bytes <= %d (tried %s)", fmt, kbps, size, max_bytes, tried)
            return FitResult(path=dst, format=fmt, size=size, bitrate_kbps=kbps, transcoded=True)
        if base > 0:
            ratio = size / base * _LEARNED_MARGIN[fmt]
    dst.unlink(missing_ok=True)
    attempts = ", ".join(tried)
    raise CannotFit(f"{duration_s:.1f}s of audio won't fit in {max_bytes} bytes as {fmt} (tried {attempts})")


__all__ = [
    "FORMATS",
    "LADDERS",
    "MP3_LADDER",
    "OGG_LADDER",
    "FitResult",
    "PydubJob",
    "Tags",
    "fit",
    "ladder_for",
    "slugify",
    "transcode",
    "waveform_png",
]
