"""services/audio.py against real audio made by ffmpeg, checked by decoding it again."""

from __future__ import annotations

import asyncio
import signal
import struct
import subprocess
import tempfile
import threading
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from cogs._words import failure_text
from services import audio
from services.audio import FitResult, Tags, fit, ladder_for, slugify, transcode, waveform_png
from services.errors import CannotFit
from services.ffmpeg import AudioInfo, FfmpegError, ffmpeg_exe, probe_audio, render_test_audio, run_ffmpeg
from services.funmusic.request import GenerationRequest, GenerationResult
from services.jobs import JobSpec, prepare_song

TAGS = Tags(
    title="Señor Café ☕ 夜曲",
    artist="songbot",
    lyrics="[verse]\n月光洒在窗台上\nÇa va, café ☕ — «ok»\n",
    comment="made by songbot",
)


@dataclass(frozen=True)
class Sources:
    mp3: Path  # 4 s, 44.1 kHz stereo, 128 kbps
    wav: Path  # 3 s, 48 kHz mono, 16-bit
    wav_stereo: Path  # 4 s, 48 kHz stereo, 16-bit
    ogg: Path  # 3 s Opus, made from ``wav``


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Sources:
    """Rendered once for the module (before any test's event loop, so blocking here is fine)."""
    root = tmp_path_factory.mktemp("sources")

    async def make() -> Sources:
        src = Sources(mp3=root / "src.mp3", wav=root / "src.wav", wav_stereo=root / "stereo.wav", ogg=root / "src.ogg")
        src.mp3.write_bytes(await render_test_audio(4, sample_rate=44100, channels=2))
        src.wav.write_bytes(await render_test_audio(3, sample_rate=48000, channels=1, fmt="wav"))
        src.wav_stereo.write_bytes(await render_test_audio(4, sample_rate=48000, channels=2, fmt="wav"))
        await run_ffmpeg("-loglevel", "error", "-i", str(src.wav), "-c:a", "libopus", "-b:a", "64k", str(src.ogg))
        return src

    return asyncio.run(make())


async def _size(path: Path) -> int:
    return (await asyncio.to_thread(path.stat)).st_size


async def _read(path: Path) -> bytes:
    return await asyncio.to_thread(path.read_bytes)


async def _listdir(path: Path) -> list[str]:
    return sorted(p.name for p in await asyncio.to_thread(lambda: list(path.iterdir())))


async def _packets_md5(path: Path) -> str:
    """MD5 of the audio packets as stored (stream copy, no decode): equal only for untouched audio."""
    return (
        await run_ffmpeg("-loglevel", "error", "-i", str(path), "-map", "0:a", "-c", "copy", "-f", "md5", "-")
    ).decode()


def _parse_ffmetadata(text: str) -> dict[str, str]:
    r"""ffmpeg's ffmetadata: ``key=value`` lines; ``=``, ``;``, ``#``, ``\`` and newline are escaped by ``\``."""
    entries: list[str] = []
    current: list[str] = []
    escaped = False
    for ch in text:
        if escaped:
            current.append("\0" if ch == "=" else ch)  # an escaped '=' is part of the key or value
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "\n":
            entries.append("".join(current))
            current = []
        else:
            current.append(ch)
    entries.append("".join(current))
    tags: dict[str, str] = {}
    for entry in entries:
        if "=" in entry and not entry.startswith(";"):
            key, value = entry.split("=", 1)
            tags[key.replace("\0", "=")] = value.replace("\0", "=")
    return tags


async def read_tags(path: Path, fmt: str) -> dict[str, str]:
    """The tags ffmpeg reads back (Ogg keeps them on the stream, the others on the file)."""
    stream = ["-map_metadata", "0:s:a:0"] if fmt == "ogg" else []
    out = await run_ffmpeg("-loglevel", "error", "-i", str(path), *stream, "-f", "ffmetadata", "-")
    return _parse_ffmetadata(out.decode("utf-8"))


def _id3_frames(data: bytes) -> dict[bytes, bytes]:
    """Frame id -> body of an ID3v2.4 tag at the start of ``data``."""
    assert data[:3] == b"ID3" and data[3] == 4
    end = 10 + ((data[6] << 21) | (data[7] << 14) | (data[8] << 7) | data[9])
    frames: dict[bytes, bytes] = {}
    pos = 10
    while pos + 10 <= end and data[pos : pos + 4] != b"\0\0\0\0":
        size = (data[pos + 4] << 21) | (data[pos + 5] << 14) | (data[pos + 6] << 7) | data[pos + 7]
        frames[data[pos : pos + 4]] = data[pos + 10 : pos + 10 + size]
        pos += 10 + size
    return frames


def _assert_same_sound(info: AudioInfo, ref: AudioInfo, *, sample_rate: int | None = None) -> None:
    assert abs(info.duration_s - ref.duration_s) <= 0.15, (info, ref)
    assert info.channels == ref.channels
    assert info.sample_rate == (sample_rate or ref.sample_rate)


# ---------------------------------------------------------------------------------------------- transcode


@pytest.mark.parametrize(
    ("src_name", "src_fmt", "dst_fmt", "codec"),
    [
        ("mp3", "mp3", "ogg", "opus"),
        ("mp3", "mp3", "wav", "pcm_s16le"),
        ("mp3", "mp3", "mp3", "mp3"),
        ("wav", "wav", "mp3", "mp3"),
        ("wav_stereo", "wav", "ogg", "opus"),
        ("ogg", "ogg", "mp3", "mp3"),
    ],
)
async def test_transcode_keeps_duration_channels_and_rate(
    sources: Sources, tmp_path: Path, src_name: str, src_fmt: str, dst_fmt: str, codec: str
) -> None:
    src: Path = getattr(sources, src_name)
    dst = tmp_path / f"out.{dst_fmt}"
    assert await transcode(src, src_fmt, dst, dst_fmt, tags=TAGS) == dst
    info, ref = await probe_audio(dst), await probe_audio(src)
    assert info.codec == codec
    # Opus always decodes at 48 kHz
    _assert_same_sound(info, ref, sample_rate=48000 if dst_fmt == "ogg" else None)


async def test_transcode_uses_the_bitrate_asked_for(sources: Sources, tmp_path: Path) -> None:
    low, high = tmp_path / "low.mp3", tmp_path / "high.mp3"
    await transcode(sources.wav_stereo, "wav", low, "mp3", bitrate_kbps=64)
    await transcode(sources.wav_stereo, "wav", high, "mp3", bitrate_kbps=256)
    # CBR: 4 s at 64 kbps is 32 000 bytes of frames, at 256 kbps 128 000 (plus a frame or two)
    assert 32_000 <= await _size(low) <= 32_000 * 1.1
    assert 128_000 <= await _size(high) <= 128_000 * 1.05


async def test_transcode_refuses_bad_arguments(sources: Sources, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="format"):
        await transcode(sources.mp3, "flac", tmp_path / "x.mp3", "mp3")
    with pytest.raises(ValueError, match="bitrate"):
        await transcode(sources.mp3, "mp3", tmp_path / "x.wav", "wav", bitrate_kbps=128)


async def test_transcode_of_garbage_is_an_ffmpeg_error_and_leaves_no_file(tmp_path: Path) -> None:
    src, dst = tmp_path / "junk.mp3", tmp_path / "out.ogg"
    await asyncio.to_thread(src.write_bytes, b"not audio at all " * 100)
    with pytest.raises(FfmpegError):
        await transcode(src, "mp3", dst, "ogg")
    assert not await asyncio.to_thread(dst.exists)


async def test_streamed_wav_with_placeholder_sizes_decodes_whole(sources: Sources, tmp_path: Path) -> None:
    data = bytearray(await _read(sources.wav))
    data_at = data.find(b"data")
    struct.pack_into("<I", data, 4, 0xFFFFFFFF)
    struct.pack_into("<I", data, data_at + 4, 0)
    src, dst = tmp_path / "streamed.wav", tmp_path / "out.mp3"
    await asyncio.to_thread(src.write_bytes, bytes(data))
    await transcode(src, "wav", dst, "mp3")
    _assert_same_sound(await probe_audio(dst), await probe_audio(sources.wav))


async def test_never_calls_ffprobe(sources: Sources, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ffprobe exists here: pydub must be given the decoder for every source format."""

    def no_ffprobe(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pydub asked ffprobe for media info")

    # services.audio has imported pydub already (quietly); the string form looks the modules up now
    monkeypatch.setattr("pydub.audio_segment.mediainfo_json", no_ffprobe)
    monkeypatch.setattr("pydub.utils.mediainfo_json", no_ffprobe)
    empty = tmp_path / "empty-path"
    await asyncio.to_thread(empty.mkdir)
    monkeypatch.setenv("PATH", str(empty))
    for src, fmt in ((sources.mp3, "mp3"), (sources.ogg, "ogg"), (sources.wav, "wav")):
        dst = tmp_path / f"from-{fmt}.mp3"
        await transcode(src, fmt, dst, "mp3")
        await probe_audio(dst)
    result = await fit(sources.mp3, "mp3", "ogg", 10**7, tags=TAGS, out_dir=tmp_path / "fit")
    assert result.transcoded


# ---------------------------------------------------------------------------------------------- fit


async def test_fit_keeps_the_original_audio_when_it_fits(sources: Sources, tmp_path: Path) -> None:
    src_size = await _size(sources.mp3)
    result = await fit(sources.mp3, "mp3", "mp3", src_size + 10_000, tags=TAGS, out_dir=tmp_path)
    assert result == FitResult(
        path=tmp_path / "senor-cafe.mp3",
        format="mp3",
        size=await _size(result.path),
        bitrate_kbps=None,
        transcoded=False,
    )
    assert result.size <= src_size + 10_000
    # same MPEG frames byte for byte, only the tag in front changed
    assert await _packets_md5(result.path) == await _packets_md5(sources.mp3)
    src_bytes, out_bytes = await _read(sources.mp3), await _read(result.path)
    tag_len = 10 + ((out_bytes[6] << 21) | (out_bytes[7] << 14) | (out_bytes[8] << 7) | out_bytes[9])
    assert src_bytes.endswith(out_bytes[tag_len:])
    assert (await read_tags(result.path, "mp3"))["lyrics-und"] == TAGS.lyrics


async def test_fit_copies_the_original_untouched_when_new_tags_would_not_fit(sources: Sources, tmp_path: Path) -> None:
    src_size = await _size(sources.mp3)
    big = Tags(title="t", lyrics="la " * 5000)
    result = await fit(sources.mp3, "mp3", "mp3", src_size, tags=big, out_dir=tmp_path)
    assert not result.transcoded
    assert await _read(result.path) == await _read(sources.mp3)


@pytest.mark.parametrize("fmt", ["ogg", "wav"])
async def test_fit_keeps_ogg_and_wav_originals_with_new_tags(sources: Sources, tmp_path: Path, fmt: str) -> None:
    src = sources.ogg if fmt == "ogg" else sources.wav
    result = await fit(src, fmt, fmt, 10**7, tags=TAGS, out_dir=tmp_path)
    assert (result.format, result.transcoded, result.bitrate_kbps) == (fmt, False, None)
    assert await _packets_md5(result.path) == await _packets_md5(src)
    tags = await read_tags(result.path, fmt)
    assert tags.get("TITLE" if fmt == "ogg" else "title") == TAGS.title


@pytest.mark.parametrize(("want", "top"), [("mp3", 320), ("ogg", 160)])
async def test_fit_walks_down_the_ladder(sources: Sources, tmp_path: Path, want: str, top: int) -> None:
    max_bytes = 4 * 70 * 125  # room for about 70 kbps over 4 s
    result = await fit(sources.wav_stereo, "wav", want, max_bytes, tags=TAGS, out_dir=tmp_path)
    assert result.format == want and result.transcoded
    assert result.bitrate_kbps is not None and result.bitrate_kbps < top
    assert result.size == await _size(result.path) <= max_bytes
    info = await probe_audio(result.path)
    _assert_same_sound(info, await probe_audio(sources.wav_stereo))
    assert await _listdir(tmp_path) == [result.path.name]


async def test_fit_prefers_the_highest_rung_that_fits(sources: Sources, tmp_path: Path) -> None:
    """With room for a bit more than 192 kbps the answer is 192, not something lower picked by a bad guess."""
    result = await fit(sources.wav_stereo, "wav", "mp3", int(4.2 * 200 * 125), tags=TAGS, out_dir=tmp_path)
    assert result.bitrate_kbps == 192


async def test_fit_never_goes_above_the_source_mp3_bitrate(sources: Sources, tmp_path: Path) -> None:
    src_size = await _size(sources.mp3)
    result = await fit(sources.mp3, "mp3", "mp3", src_size - 1, tags=Tags(title="x"), out_dir=tmp_path)
    assert result.transcoded and result.bitrate_kbps is not None
    assert result.bitrate_kbps <= 128
    assert result.size <= src_size - 1
    assert ladder_for("mp3", 128.6) == (128, 96, 64, 48, 32)
    assert ladder_for("mp3", 20.0) == (32,)
    assert ladder_for("ogg") == audio.OGG_LADDER


async def test_wav_too_large_falls_back_to_mp3(sources: Sources, tmp_path: Path) -> None:
    wav_size = await _size(sources.wav_stereo)
    result = await fit(sources.wav_stereo, "wav", "wav", wav_size // 3, tags=TAGS, out_dir=tmp_path)
    assert result.format == "mp3" and result.path.suffix == ".mp3" and result.transcoded
    assert result.size <= wav_size // 3
    assert (await probe_audio(result.path)).codec == "mp3"


async def test_wav_from_mp3_that_fits_as_wav(sources: Sources, tmp_path: Path) -> None:
    result = await fit(sources.mp3, "mp3", "wav", 10**7, tags=TAGS, out_dir=tmp_path)
    assert (result.format, result.transcoded, result.bitrate_kbps) == ("wav", True, None)
    _assert_same_sound(await probe_audio(result.path), await probe_audio(sources.mp3))


async def test_wav_from_mp3_too_large_keeps_the_original_mp3(sources: Sources, tmp_path: Path) -> None:
    src_size = await _size(sources.mp3)
    result = await fit(sources.mp3, "mp3", "wav", src_size + 5_000, tags=TAGS, out_dir=tmp_path)
    assert (result.format, result.transcoded) == ("mp3", False)
    assert await _packets_md5(result.path) == await _packets_md5(sources.mp3)


@pytest.mark.parametrize("want", ["mp3", "ogg", "wav"])
async def test_impossible_limit_cannot_fit_and_leaves_nothing(sources: Sources, tmp_path: Path, want: str) -> None:
    with pytest.raises(CannotFit) as caught:
        await fit(sources.wav_stereo, "wav", want, 2000, tags=TAGS, out_dir=tmp_path)
    assert "2000 bytes" in str(caught.value)
    assert failure_text(caught.value).startswith("The song is too large to upload here. (error id")
    assert await _listdir(tmp_path) == []


async def test_fit_trusts_real_sizes_over_guesses(tmp_path: Path) -> None:
    """Silence in Opus is about 1 KB at any bitrate; a guess of duration * bitrate would call 5 KB impossible."""
    src = tmp_path / "silence.wav"
    await asyncio.to_thread(ffmpeg_exe)  # run_ffmpeg looks ffmpeg up on the loop the first time
    await run_ffmpeg("-loglevel", "error", "-f", "lavfi", "-i", "anullsrc=r=48000:cl=stereo", "-t", "4", str(src))
    result = await fit(src, "wav", "ogg", 5000, tags=Tags(title="quiet"), out_dir=tmp_path / "out")
    assert result.format == "ogg" and result.size <= 5000
    assert abs((await probe_audio(result.path)).duration_s - 4.0) <= 0.15


async def test_fit_refuses_bad_arguments(sources: Sources, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        await fit(sources.mp3, "mp3", "mp3", 0, tags=TAGS, out_dir=tmp_path)
    with pytest.raises(ValueError, match="format"):
        await fit(sources.mp3, "mp3", "aac", 10**6, tags=TAGS, out_dir=tmp_path)


async def test_fit_output_never_overwrites_the_source(sources: Sources, tmp_path: Path) -> None:
    src = tmp_path / "song.mp3"
    original = await _read(sources.mp3)
    await asyncio.to_thread(src.write_bytes, original)
    result = await fit(src, "mp3", "mp3", 10**7, tags=Tags(title="Song"), out_dir=tmp_path)
    assert result.path != src
    assert await _read(src) == original


# ---------------------------------------------------------------------------------------------- ladder internals


@dataclass
class Spawned:
    """Every process started while a test runs (subprocess.Popen, which pydub and asyncio both use)."""

    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    encoder: threading.Event = field(default_factory=threading.Event)
    waveform: threading.Event = field(default_factory=threading.Event)

    def reading(self, path: Path) -> list[subprocess.Popen[bytes]]:
        """The processes given ``path`` as an input: decodes of that file."""
        return [p for p in self.procs if _input(p) in (str(path), f"file:{path}")]

    def encoders(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.procs if any(codec in _argv(p) for codec in ("libmp3lame", "libopus"))]


def _input(proc: subprocess.Popen[bytes]) -> str | None:
    argv = _argv(proc)
    return argv[argv.index("-i") + 1] if "-i" in argv[:-1] else None


def _argv(proc: subprocess.Popen[bytes]) -> list[str]:
    args = proc.args
    return [str(a) for a in args] if isinstance(args, list | tuple) else [str(args)]


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Spawned:
    """Records every process; the system's temporary directory is an empty one of the test's own."""
    record = Spawned()
    real = subprocess.Popen

    class Recorded(real):  # type: ignore[valid-type,misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            record.procs.append(self)
            if any(codec in _argv(self) for codec in ("libmp3lame", "libopus")):
                record.encoder.set()
            if any("showwavespic" in arg for arg in _argv(self)):
                record.waveform.set()

    monkeypatch.setattr(subprocess, "Popen", Recorded)
    system_tmp = tmp_path_factory.mktemp("system-tmp")
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    return record


@pytest.fixture
def every_rung(monkeypatch: pytest.MonkeyPatch) -> None:
    """Predict every rung to fit, so the ladder really encodes rung after rung until one does."""
    monkeypatch.setattr(audio, "_FIRST_GUESS", {"mp3": 0.0, "ogg": 0.0})
    monkeypatch.setattr(audio, "_LEARNED_MARGIN", {"mp3": 0.0, "ogg": 0.0})


@pytest.mark.usefixtures("every_rung")
@pytest.mark.parametrize("src_fmt", ["wav", "mp3", "ogg"])
async def test_the_ladder_decodes_the_source_once_whatever_the_number_of_rungs(
    sources: Sources, tmp_path: Path, spawned: Spawned, monkeypatch: pytest.MonkeyPatch, src_fmt: str
) -> None:
    src = {"wav": sources.wav_stereo, "mp3": sources.mp3, "ogg": sources.ogg}[src_fmt]
    decoded: list[Path] = []
    original = audio._decode

    def counting(path: Path, fmt: str) -> object:
        decoded.append(path)
        return original(path, fmt)

    monkeypatch.setattr(audio, "_decode", counting)
    out = tmp_path / "job"
    max_bytes = 3 * 56 * 125  # about 56 kbps over 3 s: the top rungs are all too big
    result = await fit(src, src_fmt, "mp3", max_bytes, tags=TAGS, out_dir=out)
    assert result.transcoded and result.size <= max_bytes
    assert len(spawned.encoders()) >= 3  # it walked down several rungs...
    assert decoded == [src]  # ...from one decode: pydub's (an ffmpeg for mp3 and ogg, its own reader for WAV)
    assert len(spawned.reading(src)) == (0 if src_fmt == "wav" else 1)
    # and the result is still the whole song, with its lyrics
    _assert_same_sound(await probe_audio(result.path), await probe_audio(src), sample_rate=None)
    assert _id3_frames(await _read(result.path))[b"USLT"] == b"\x03und\x00" + TAGS.lyrics.encode()
    assert (await read_tags(result.path, "mp3"))["lyrics-und"] == TAGS.lyrics


async def test_the_rung_that_fits_is_predicted_so_only_it_is_encoded(
    sources: Sources, tmp_path: Path, spawned: Spawned
) -> None:
    """320 kbps over 4 s is 160 000 bytes of bitrate, but an mp3 also holds the encoder's delay and padding, its
    Xing frame and the tag: it does not fit in 160 000 bytes, and that is known without encoding it."""
    result = await fit(sources.wav_stereo, "wav", "wav", 4 * 320 * 125, tags=TAGS, out_dir=tmp_path)
    assert (result.format, result.bitrate_kbps) == ("mp3", 256)
    assert len(spawned.encoders()) == 1


async def _children() -> set[int]:
    """This process's child processes, zombies included."""
    children = await asyncio.to_thread(lambda: psutil.Process().children(recursive=True))
    return {child.pid for child in children}


def _pydub_files(spawned: Spawned) -> list[Path]:
    """The files pydub's encoders read and wrote: its temporary WAV (after ``-i``) and output (the last argument)."""
    files: list[Path] = []
    for proc in spawned.encoders():
        argv = _argv(proc)
        files += [Path(str(_input(proc))), Path(argv[-1])]
    return files


async def _assert_no_temporary_files_outside(work_dir: Path, spawned: Spawned, left: list[str]) -> None:
    files = _pydub_files(spawned)
    assert files and all(f.parent == work_dir for f in files), files
    assert await _listdir(work_dir) == left
    assert await _listdir(Path(tempfile.gettempdir())) == []


async def test_pydub_temporary_files_live_in_the_work_dir_and_go_after_success(
    sources: Sources, tmp_path: Path, spawned: Spawned
) -> None:
    result = await fit(sources.wav_stereo, "wav", "ogg", 10**6, tags=TAGS, out_dir=tmp_path)
    await _assert_no_temporary_files_outside(tmp_path, spawned, [result.path.name])


async def test_pydub_temporary_files_go_after_a_failed_encode(
    sources: Sources, tmp_path: Path, spawned: Spawned, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The encoder dies (killed from outside, as the OOM killer would): pydub leaves its files; fit does not."""
    recorded = subprocess.Popen

    class Dying(recorded):  # type: ignore[valid-type,misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if "libmp3lame" in _argv(self):
                self.kill()

    monkeypatch.setattr(subprocess, "Popen", Dying)
    with pytest.raises(FfmpegError):
        await fit(sources.wav_stereo, "wav", "mp3", 10**5, tags=TAGS, out_dir=tmp_path)
    await _assert_no_temporary_files_outside(tmp_path, spawned, [])


async def test_cancelling_fit_kills_its_ffmpeg_and_leaves_no_file(tmp_path: Path, spawned: Spawned) -> None:
    src = tmp_path / "long.wav"
    await asyncio.to_thread(src.write_bytes, await render_test_audio(60, fmt="wav"))  # seconds of encoding
    out = tmp_path / "job"
    task = asyncio.create_task(fit(src, "wav", "wav", 10**6, tags=TAGS, out_dir=out))
    assert await asyncio.to_thread(spawned.encoder.wait, 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [encoder] = spawned.encoders()
    assert encoder.returncode == -signal.SIGKILL  # killed, not finished, and already reaped
    assert encoder.pid not in await _children()
    await _assert_no_temporary_files_outside(out, spawned, [])


async def test_cancelling_prepare_song_stops_both_its_ffmpegs(tmp_path: Path, spawned: Spawned) -> None:
    """What a shutdown does to a job in "processing": the fit's encoder and the waveform's ffmpeg both go."""
    src = tmp_path / "job" / "song.wav"
    await asyncio.to_thread(src.parent.mkdir)
    await asyncio.to_thread(src.write_bytes, await render_test_audio(60, fmt="wav"))
    spec = JobSpec(
        job_id=1,
        guild_id=1,
        user_id=1,
        request=GenerationRequest(prompt="a song", format="wav"),
        want_format="mp3",
        max_bytes=10**6,
        tags=TAGS,
        guild_limit=1,
    )
    result = GenerationResult(
        audio_path=src,
        format="wav",
        lyrics=TAGS.lyrics,
        duration_s=60.0,
        sample_rate=48000,
        channels=2,
        request_id=None,
        url=None,
        url_expires_at=None,
    )
    task = asyncio.create_task(prepare_song(spec, result, src.parent))
    assert await asyncio.to_thread(spawned.encoder.wait, 60)
    assert await asyncio.to_thread(spawned.waveform.wait, 60)  # it may start after the encoder
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(spawned.reading(src)) == 1 and spawned.encoders()  # the waveform's and the fit's encoder ran
    left = await _children()  # neither is running, nor left unreaped
    assert not left, (left, [(proc.pid, proc.returncode, _argv(proc)[-1]) for proc in spawned.procs])
    assert await _listdir(src.parent) == ["song.wav"]


async def test_fit_holds_less_than_twice_the_decoded_audio(tmp_path: Path) -> None:
    """Python's allocations at their peak while a WAV is fitted as mp3 (its ffmpeg is another process)."""
    src = tmp_path / "song.wav"
    pcm = await render_test_audio(20, fmt="wav")
    await asyncio.to_thread(src.write_bytes, pcm)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        result = await fit(src, "wav", "wav", len(pcm) // 3, tags=TAGS, out_dir=tmp_path / "job")
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert result.format == "mp3"
    assert peak <= 2 * len(pcm), f"{peak / len(pcm):.2f}x"


# ---------------------------------------------------------------------------------------------- tags


async def test_mp3_tags_are_real_id3v2_frames(sources: Sources, tmp_path: Path) -> None:
    dst = tmp_path / "t.mp3"
    await transcode(sources.wav, "wav", dst, "mp3", tags=TAGS)
    frames = _id3_frames(await _read(dst))
    assert frames[b"TIT2"] == b"\x03" + TAGS.title.encode()
    assert frames[b"TPE1"] == b"\x03songbot"
    assert frames[b"USLT"] == b"\x03und\x00" + TAGS.lyrics.encode()
    assert frames[b"COMM"] == b"\x03und\x00" + TAGS.comment.encode()
    assert b"TXXX" not in frames
    tags = await read_tags(dst, "mp3")
    assert (tags["title"], tags["artist"], tags["lyrics-und"], tags["comment"]) == (
        TAGS.title,
        TAGS.artist,
        TAGS.lyrics,
        TAGS.comment,
    )


async def test_ogg_tags_are_vorbis_comments(sources: Sources, tmp_path: Path) -> None:
    dst = tmp_path / "t.ogg"
    await transcode(sources.mp3, "mp3", dst, "ogg", tags=TAGS)
    tags = await read_tags(dst, "ogg")
    assert (tags["TITLE"], tags["ARTIST"], tags["LYRICS"]) == (TAGS.title, TAGS.artist, TAGS.lyrics)


async def test_wav_tags_are_riff_info_without_lyrics(sources: Sources, tmp_path: Path) -> None:
    dst = tmp_path / "t.wav"
    await transcode(sources.mp3, "mp3", dst, "wav", tags=TAGS)
    data = await _read(dst)
    assert b"INFO" in data[:4096] and b"INAM" in data[:4096] and b"IART" in data[:4096]
    tags = await read_tags(dst, "wav")
    assert (tags["title"], tags["artist"]) == (TAGS.title, TAGS.artist)
    assert not any("lyric" in key.lower() for key in tags)


async def test_control_characters_are_dropped_from_tags(sources: Sources, tmp_path: Path) -> None:
    dst = tmp_path / "t.mp3"
    await transcode(sources.wav, "wav", dst, "mp3", tags=Tags(title="a\x00b\x1bc", lyrics="one\r\ntwo\x07"))
    tags = await read_tags(dst, "mp3")
    assert tags["title"] == "abc"
    assert tags["lyrics-und"] == "one\ntwo"


# ---------------------------------------------------------------------------------------------- waveform


async def test_waveform_png_has_the_requested_size(sources: Sources, tmp_path: Path) -> None:
    dst = await waveform_png(sources.mp3, tmp_path / "wave.png", width=640, height=120, color="#ff8800")
    data = await _read(dst)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (640, 120)


async def test_waveform_defaults_and_bad_input(sources: Sources, tmp_path: Path) -> None:
    dst = await waveform_png(sources.wav, tmp_path / "w.png")
    assert struct.unpack(">II", (await _read(dst))[16:24]) == (1200, 240)
    with pytest.raises(ValueError, match="colour"):
        await waveform_png(sources.wav, tmp_path / "x.png", color="red:s=1x1")
    with pytest.raises(ValueError, match="width"):
        await waveform_png(sources.wav, tmp_path / "x.png", width=0)
    junk = tmp_path / "junk.mp3"
    await asyncio.to_thread(junk.write_bytes, b"\0" * 1000)
    with pytest.raises(FfmpegError):
        await waveform_png(junk, tmp_path / "x.png")


# ---------------------------------------------------------------------------------------------- slugify


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("../../etc/passwd", "etc-passwd"),
        ("..\\..\\windows\\system32", "windows-system32"),
        ("Señor Café", "senor-cafe"),
        ("🎸🔥 rock anthem 🔥", "rock-anthem"),
        ("🎸🔥", "song"),
        ("", "song"),
        ("...", "song"),
        ("夜曲", "song"),
        ("tab\tnew\nline\x00nul", "tab-new-line-nul"),
        ("A  --  B", "a-b"),
    ],
)
def test_slugify(text: str, expected: str) -> None:
    assert slugify(text) == expected


def test_slugify_limits_length_and_cleans_the_fallback() -> None:
    long = slugify("word " * 100)
    assert len(long) <= 48 and not long.endswith("-") and set(long) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
    assert len(slugify("x" * 500)) == 48
    assert slugify("a" * 10, max_len=4) == "aaaa"
    assert slugify("", fallback="../My Song!") == "my-song"
    assert slugify("", fallback="/") == "song"
    with pytest.raises(ValueError):
        slugify("x", max_len=0)
