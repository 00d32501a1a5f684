"""Strict base64 for the audio: pybase64 where its wheel is installed, the standard library where it is not, and the
two decode the same and refuse the same (``services/funmusic/b64.py``).

The fallback is forced in-process (``b64.decode``, which the client calls) and, for the import itself, in a real
interpreter without pybase64.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from services.audio_headers import find_data_chunk
from services.errors import BrokenStream
from services.funmusic import b64
from services.funmusic.request import GenerationRequest
from services.funmusic.sink import AudioSink, Reporter, WriteBehind
from services.offline.simulator import Scenario, cached_audio
from tests.support.processes import ROOT
from tests.support.sim_fixtures import make_client, running_simulator

VALID = ["", "YQ==", "YWI=", "YWJj", "YWJjZA==", "YR==", "+/+/", base64.b64encode(bytes(range(256)) * 5).decode()]
INVALID = [
    "YQ=",  # padding short of a quantum
    "YQ",
    "Y",
    "YWI=Y2Q=",  # joined padded chunks: data after padding
    "=YWI",
    "YW=I",
    "YWJj====",  # padding after a whole quantum: binascii's strict mode alone lets this through
    "YQ===",
    "YWJj=",
    "YWJjZ",
    "YWJj\n",  # whitespace is not skipped
    " YWJj",
    "YW*j",
    "-_-_",  # the URL-safe alphabet is not the standard one
    "YWJ\x00",
    "YWJé",
]


def outcome(decode: b64.Decoder, data: str | bytes | memoryview) -> bytes | None:
    """What ``decode`` makes of ``data``: the bytes, or None if it refused them (with a ValueError, as documented)."""
    try:
        return decode(data)
    except ValueError:
        return None


def forms(text: str) -> Iterator[str | bytes | memoryview]:
    """The shapes a payload reaches the decoder in: a str (parsed JSON), bytes, a view into a larger event."""
    yield text
    raw = text.encode("utf-8")
    yield raw
    yield memoryview(b'{"data":"' + raw + b'"}')[9 : 9 + len(raw)]


def test_binascii_alone_lets_excess_padding_through_and_the_fallback_does_not() -> None:
    assert binascii.a2b_base64("YWJj====", strict_mode=True) == b"abc"  # what the fallback must add a rule for
    with pytest.raises(binascii.Error, match="Excess data after padding"):
        b64.decode_fallback("YWJj====")


@pytest.mark.parametrize("text", VALID + INVALID)
def test_the_fallback_decodes_what_it_must_and_refuses_the_rest(text: str) -> None:
    expected = base64.b64decode(text, validate=True) if text in VALID else None
    for data in forms(text):
        assert outcome(b64.decode_fallback, data) == expected, repr(data)


@pytest.mark.skipif(b64.decode_fast is None, reason="pybase64's C extension is not installed here")
def test_pybase64_and_the_fallback_agree_on_every_input() -> None:
    fast = b64.decode_fast
    assert fast is not None and b64.decode is fast
    cases = VALID + INVALID
    rng = random.Random(14)
    for alphabet in ("ABab09+/=", "QUJD=*- \n\x00é_"):
        cases += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 13))) for _ in range(20_000)]
    for text in cases:
        for data in forms(text):
            assert outcome(fast, data) == outcome(b64.decode_fallback, data), repr(data)


def test_without_pybase64_the_standard_library_decodes() -> None:
    """A real interpreter in which ``import pybase64`` fails, as where its wheel is missing."""
    code = (
        "import sys; sys.modules['pybase64'] = None\n"
        "from services.funmusic import b64\n"
        "assert b64.decode_fast is None and b64.decode is b64.decode_fallback\n"
        "assert b64.decode('YWJjZA==') == b'abcd'\n"
        "for bad in ('YWJj====', 'YWI=Y2Q=', 'YW*j'):\n"
        "    try:\n"
        "        b64.decode(bad)\n"
        "    except ValueError:\n"
        "        continue\n"
        "    raise SystemExit(f'accepted {bad!r}')\n"
        "print('fallback ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "fallback ok"


@pytest.fixture(params=["pybase64", "fallback"])
def decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test below runs with the decoder the client would pick, then with the fallback forced."""
    if request.param == "fallback":
        monkeypatch.setattr(b64, "decode", b64.decode_fallback)
    elif b64.decode_fast is None:
        pytest.skip("pybase64's C extension is not installed here")
    return str(request.param)


@pytest.mark.parametrize(
    ("payloads", "expected"),
    [
        (["YWJj", "ZGVm"], b"abcdef"),
        (["YW", "JjZ", "A=="], b"abcd"),  # cut mid-quantum: the remainder is carried
        (["YWJj===="], None),  # excess padding
        (["YWI=", "Y2Q="], b"abcd"),  # each event decoded on its own: its padding ends only that event
        (["YWI=Y2Q="], None),
        (["YWJj", "Z*Vm"], None),
    ],
)
async def test_the_writer_decodes_and_refuses_the_same_with_either_decoder(
    decoder: str, tmp_path: Path, payloads: list[str], expected: bytes | None
) -> None:
    sink = AudioSink(tmp_path / "song.part", "mp3")
    await sink.start()
    writer = WriteBehind(sink, Reporter(None, "test"))
    try:
        if expected is None:
            with pytest.raises(BrokenStream, match="invalid base64"):
                await writer.submit([p.encode() for p in payloads], "req-1")
                await writer.drain()
        else:
            await writer.submit([p.encode() for p in payloads], "req-1")
            await writer.drain()
            await asyncio.to_thread(sink.close)
            assert await asyncio.to_thread(sink.path.read_bytes) == expected
    finally:
        await writer.abandon()
        await sink.dispose()


@pytest.mark.parametrize("fmt", ["mp3", "wav"])
async def test_a_song_streamed_cut_mid_quantum_is_the_song_sent_with_either_decoder(
    decoder: str, http_session: aiohttp.ClientSession, tmp_path: Path, fmt: str
) -> None:
    scenario = Scenario(duration_s=3.0, chunk_bytes=5000, base64_mid_quantum=True)
    async with running_simulator(scenario) as sim:
        result = await make_client(http_session, sim).generate(
            GenerationRequest(prompt="a song decoded both ways", format=fmt), out_dir=tmp_path
        )
        assert len(sim.requests) == 1
    sent = await cached_audio(3.0, 48000, 2, fmt)
    got = await asyncio.to_thread(result.audio_path.read_bytes)
    if fmt == "wav":  # the streamed placeholder sizes were repaired: compare the samples, every one of them
        got_at, sent_at = find_data_chunk(got[:4096]), find_data_chunk(sent[:4096])
        assert got_at is not None and sent_at is not None
        got, sent = got[got_at + 8 :], sent[sent_at + 8 :]
    assert got == sent
    assert abs(result.duration_s - 3.0) < 0.1


async def test_invalid_base64_mid_stream_fails_with_either_decoder(
    decoder: str, http_session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    scenario = Scenario(duration_s=2.0, chunk_bytes=5000, base64_mid_quantum=True, invalid_base64_at_chunk=2)
    async with running_simulator(scenario) as sim:
        with pytest.raises(BrokenStream, match="invalid base64"):
            await make_client(http_session, sim, max_retries=0).generate(
                GenerationRequest(prompt="a song with a bad character"), out_dir=tmp_path
            )
    assert await asyncio.to_thread(lambda: list(tmp_path.iterdir())) == []
