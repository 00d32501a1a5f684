"""How long fitting a 200 s song takes, per format and ladder rung (a benchmark, not a test).

For each rung: one ``transcode`` of a 200 s 48 kHz stereo WAV (decode + encode, what a ``fit`` costs when it
lands on that rung directly), and one ``fit`` whose limit is set just above that rung's size, so it shows the
ladder walk including any rungs it had to try first. Run: ``.venv/bin/python bench/transcode.py [seconds]``.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from services.audio import LADDERS, Tags, fit, transcode
from services.ffmpeg import render_test_audio


async def main(duration_s: float) -> None:
    with tempfile.TemporaryDirectory(prefix="songbot-bench-") as tmp:
        root = Path(tmp)
        src = root / "song.wav"
        wav = await render_test_audio(duration_s, sample_rate=48000, channels=2, fmt="wav")
        await asyncio.to_thread(src.write_bytes, wav)
        print(f"source: {duration_s:g} s WAV, {len(wav) / 1e6:.1f} MB")
        print(f"{'format':<6} {'kbps':>5} {'bytes':>10} {'transcode s':>12} {'fit s':>7} {'fit rung':>9}")
        tags = Tags(title="bench", lyrics="la la la\n" * 50)
        for fmt, ladder in LADDERS.items():
            for kbps in ladder:
                dst = root / f"t-{kbps}.{fmt}"
                start = time.perf_counter()
                await transcode(src, "wav", dst, fmt, bitrate_kbps=kbps, tags=tags)
                t_transcode = time.perf_counter() - start
                size = (await asyncio.to_thread(dst.stat)).st_size
                start = time.perf_counter()
                result = await fit(src, "wav", fmt, int(size * 1.01), tags=tags, out_dir=root / "fit")
                t_fit = time.perf_counter() - start
                rung = str(result.bitrate_kbps)
                print(f"{fmt:<6} {kbps:>5} {size:>10} {t_transcode:>12.2f} {t_fit:>7.2f} {rung:>9}")


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1]) if len(sys.argv) > 1 else 200.0))
