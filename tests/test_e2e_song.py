"""/song end to end: the real bot, the offline Discord and the simulator over real sockets."""

from __future__ import annotations

import asyncio
from pathlib import Path

from services.ffmpeg import probe_audio
from tests.e2e import running_bot

EPHEMERAL = 64


async def _write(path: Path, data: bytes) -> Path:
    await asyncio.to_thread(path.write_bytes, data)
    return path


async def test_song_happy_path(tmp_path: Path) -> None:
    async with running_bot(tmp_path) as h:
        iid = await h.song({"prompt": "an upbeat summer folk song about a road trip"})
        callback = await h.fake.wait_for_callback(iid)
        assert callback.type == 5
        final = await h.wait_final(iid)
        names = [a.filename for a in final.attachments]
        assert any(n.endswith(".mp3") for n in names), names
        audio = next(a for a in final.attachments if a.filename.endswith(".mp3"))
        info = await probe_audio(await _write(tmp_path / "got.mp3", audio.data))
        assert abs(info.duration_s - 3.0) < 0.2
        lyrics = final.attachment("lyrics.txt").data.decode()
        assert lyrics.strip()
        assert lyrics.strip()[:50] in final.embeds[0]["description"]
