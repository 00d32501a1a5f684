"""services/audio_headers.py: the one reader of RIFF chunks, MPEG frame headers and ID3v2 tags, on audio ffmpeg made."""

from __future__ import annotations

from services.audio_headers import (
    WAVE_FORMAT_EXTENSIBLE,
    find_data_chunk,
    id3v2_size,
    mp3_bitrate,
    riff_chunks,
    wav_byte_rate,
    wav_format,
)
from services.ffmpeg import render_test_audio, run_ffmpeg

_TONE = "sine=frequency=440:sample_rate=48000:duration=0.2"


async def _encode(*codec: str) -> bytes:
    """0.2 s of a 440 Hz tone, stereo 48 kHz, encoded as ``codec`` says, with a title in its tags."""
    return await run_ffmpeg(
        "-loglevel", "error", "-f", "lavfi", "-i", _TONE, "-ac", "2", "-metadata", "title=t", *codec, "pipe:1"
    )  # fmt: skip


async def test_bitrate_and_byte_rate_from_real_headers() -> None:
    mp3 = await render_test_audio(1.0, fmt="mp3")
    assert mp3_bitrate(mp3[:4096]) == 128_000
    id3 = b"ID3\x04\x00\x00\x00\x00\x00\x0a" + b"\0" * 10  # a 10-byte tag first
    assert mp3_bitrate(id3 + mp3[:4096]) == 128_000
    assert mp3_bitrate(b"\0" * 100) is None
    wav = await render_test_audio(1.0, sample_rate=44100, channels=1, fmt="wav")
    data_at = find_data_chunk(wav[:4096])
    assert data_at is not None
    assert wav_byte_rate(wav[:4096]) == (88200, data_at + 8)
    assert wav_byte_rate(b"not a wav") is None


async def test_riff_chunks_walks_past_metadata_to_the_samples() -> None:
    wav = await _encode("-c:a", "pcm_s16le", "-f", "wav")
    chunks = list(riff_chunks(wav[:4096]))
    ids = [chunk_id for chunk_id, _, _ in chunks]
    assert ids[0] == b"fmt " and b"LIST" in ids and ids[-1] == b"data"  # the title's INFO list sits between
    data_at = find_data_chunk(wav[:4096])
    assert data_at == chunks[-1][1] and wav[data_at : data_at + 4] == b"data"
    fmt = wav_format(wav[:4096])
    assert fmt is not None and (fmt.tag, fmt.channels, fmt.rate, fmt.bits) == (1, 2, 48000, 16)
    assert wav_byte_rate(wav[:4096]) == (48000 * 2 * 2, data_at + 8)
    assert list(riff_chunks(b"RIFF\0\0\0\0WAVX" + wav[12:4096])) == []
    assert find_data_chunk(wav[:20]) is None  # only the fmt chunk's header is there


async def test_wav_format_resolves_the_extensible_tag() -> None:
    wav = await _encode("-c:a", "pcm_s24le", "-f", "wav")  # 24-bit: ffmpeg writes WAVE_FORMAT_EXTENSIBLE
    raw = wav_format(wav[:4096])
    resolved = wav_format(wav[:4096], resolve_extensible=True)
    assert raw is not None and resolved is not None
    assert raw.tag == WAVE_FORMAT_EXTENSIBLE
    assert (resolved.tag, resolved.channels, resolved.rate, resolved.bits) == (1, 2, 48000, 24)


async def test_id3v2_size_skips_a_real_tag_and_refuses_a_size_that_is_not_syncsafe() -> None:
    mp3 = await _encode("-c:a", "libmp3lame", "-b:a", "128k", "-id3v2_version", "4", "-f", "mp3")
    size = id3v2_size(mp3)
    assert size is not None and size > 10
    assert mp3[size] == 0xFF and mp3_bitrate(mp3[:4096]) == 128_000
    assert id3v2_size(mp3[size:]) is None
    assert id3v2_size(b"ID3\x04\x00\x00\x00\x00\x00\x80" + b"\0" * 10) is None
    assert id3v2_size(b"ID3\x04\x00\x10\x00\x00\x00\x05") == 10 + 5 + 10  # with a footer
