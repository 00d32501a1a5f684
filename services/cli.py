"""``python bot.py generate``: one song from the command line, against DashScope or the built-in simulator.

    python bot.py generate --prompt TEXT | --lyrics-file FILE [--gender male|female] [--format mp3|wav]
                           [--instrumental] [--watermark] --out PATH

Writes the audio to PATH and the lyrics to PATH with its suffix replaced by ``.txt``; shows progress on stderr.
Any failure ends with exactly one line, ``error: ...``, and a non-zero exit; nothing is left at PATH, because the
song is assembled in a private temporary folder beside it and moved into place (``os.replace``) only when whole.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import aiohttp

from services.errors import ConfigError, InvalidInput, ServiceError, SongbotError
from services.funmusic.client import FunMusicClient
from services.funmusic.request import FORMATS, GENDERS, GenerationRequest, GenerationResult, Progress
from services.offline.simulator import FunMusicSimulator, start_simulator_for
from services.settings import Settings, load_settings

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
LYRICS_FILE_MAX = 1024 * 1024
NOMINAL_SONG_S = 240.0  # the bar's full width; the real length is unknown until the song ends


class UsageError(Exception):
    """A bad command line; its text is the one line the user reads."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see python bot.py generate --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python bot.py generate",
        description="Make one song with DashScope Fun-Music (or the built-in simulator when no API key is set).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="a style/theme prompt; the service writes the lyrics")
    source.add_argument("--lyrics-file", type=Path, help="a UTF-8 text file with your lyrics ([verse], [chorus]...)")
    parser.add_argument("--gender", choices=GENDERS, default="female", help="the singing voice (default female)")
    parser.add_argument("--format", choices=FORMATS, help="audio format (default: from --out's suffix, else mp3)")
    parser.add_argument("--instrumental", action="store_true", help="no vocals")
    parser.add_argument("--watermark", action="store_true", help="append DashScope's audible AIGC watermark")
    parser.add_argument("--out", type=Path, required=True, help="where to write the audio (lyrics go to .txt)")
    return parser


@dataclass(frozen=True)
class Job:
    request: GenerationRequest
    out: Path
    lyrics_out: Path


def _job(args: argparse.Namespace, settings: Settings) -> Job:
    """Turn the parsed arguments into a validated request and its two output paths. Raises UsageError."""
    out: Path = args.out.expanduser()
    suffix = out.suffix.lower().lstrip(".")
    fmt = args.format or (suffix if suffix in FORMATS else "mp3")
    if suffix in FORMATS and suffix != fmt:
        raise UsageError(f"--out ends in .{suffix} but --format is {fmt}; make them agree.")
    lyrics_out = out.with_suffix(".txt")
    if lyrics_out == out:
        raise UsageError("--out must not end in .txt: the lyrics are written to PATH with its suffix set to .txt.")
    lyrics = _read_lyrics(args.lyrics_file) if args.lyrics_file is not None else None
    request = GenerationRequest(
        prompt=args.prompt,
        lyrics=lyrics,
        is_instrumental=args.instrumental,
        gender=args.gender,
        format=fmt,
        watermark=args.watermark,
        model=settings.fun_music_model,
    )
    request.validated()  # InvalidInput now, before any network or simulator
    return Job(request=request, out=out, lyrics_out=lyrics_out)


def _read_lyrics(path: Path) -> str:
    """Called before the event loop starts, so a plain read is fine here."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(LYRICS_FILE_MAX + 1)
    except OSError as exc:
        raise UsageError(f"cannot read --lyrics-file {path}: {exc.strerror or exc}") from None
    if len(raw) > LYRICS_FILE_MAX:
        raise UsageError(f"--lyrics-file {path} is over 1 MiB; lyrics are at most a few thousand characters.")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UsageError(f"--lyrics-file {path} is not UTF-8 text.") from None


class ProgressBar:
    """Progress on stderr: a redrawn bar on a terminal, one line per stage otherwise (logs, CI)."""

    def __init__(self, stream: TextIO, *, width: int = 28, min_interval_s: float = 0.1) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._width = width
        self._min_interval_s = min_interval_s
        self._last_draw = 0.0
        self._last_stage: tuple[str, int] | None = None
        self._drawn = False

    def render(self, p: Progress) -> str:
        filled = min(self._width, round(self._width * p.seconds_received / NOMINAL_SONG_S))
        bar = "#" * filled + "." * (self._width - filled)
        attempt = f" (attempt {p.attempt})" if p.attempt > 1 else ""
        return (
            f"{p.stage:<11} [{bar}] {p.bytes_received / 1_000_000:7.2f} MB "
            f"{p.seconds_received:6.1f} s of audio{attempt}"
        )

    async def __call__(self, p: Progress) -> None:
        stage = (p.stage, p.attempt)
        if self._tty:
            now = time.monotonic()
            if stage == self._last_stage and now - self._last_draw < self._min_interval_s:
                return
            self._last_draw = now
            self._stream.write("\r" + self.render(p) + "\x1b[K")
            self._drawn = True
        elif stage != self._last_stage:
            self._stream.write(self.render(p) + "\n")
        self._last_stage = stage
        self._stream.flush()

    def finish(self) -> None:
        if self._tty and self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False


def _one_line(exc: BaseException) -> str:
    """The single line a user reads for an error; never a traceback, never a secret (errors hold none)."""
    if isinstance(exc, InvalidInput | ConfigError | UsageError):
        text = str(exc)
    elif isinstance(exc, ServiceError):
        text = f"{exc.summary} ({exc})"
    elif isinstance(exc, SongbotError):
        text = f"{exc.summary} ({exc})" if str(exc) != exc.summary else exc.summary
    else:
        text = f"unexpected {type(exc).__name__}: {exc}"
    return "error: " + " ".join(text.split())


def _install(result: GenerationResult, job: Job, work: Path) -> None:
    """*Blocking.* Move the finished files into place: lyrics first, then the audio, each atomically."""
    lyrics_tmp = work / "lyrics.txt"
    lyrics_tmp.write_text(result.lyrics + ("\n" if result.lyrics and not result.lyrics.endswith("\n") else ""), "utf-8")
    os.replace(lyrics_tmp, job.lyrics_out)
    os.replace(result.audio_path, job.out)


async def _generate(job: Job, settings: Settings, stderr: TextIO) -> GenerationResult:
    parent = job.out.parent if str(job.out.parent) else Path(".")
    if not await asyncio.to_thread(parent.is_dir):
        raise UsageError(f"the folder for --out does not exist: {parent}")
    simulator: FunMusicSimulator | None = None
    bar = ProgressBar(stderr)
    async with aiohttp.ClientSession() as session:
        try:
            if settings.simulated:
                simulator, base_url, key = await start_simulator_for(settings)
                client = FunMusicClient.from_settings(session, settings, base_url=base_url, api_key=key)
            else:
                client = FunMusicClient.from_settings(session, settings)
            work = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=".songbot-", dir=parent))
            try:
                result = await client.generate(job.request, out_dir=work, on_progress=bar)
                bar.finish()
                await asyncio.to_thread(_install, result, job, work)
            finally:
                bar.finish()
                await asyncio.to_thread(shutil.rmtree, work, True)
        finally:
            if simulator is not None:
                await simulator.close()
    return result


def _setup_logging(settings: Settings) -> None:
    """Only when nothing configured logging yet (bot.py's ``main`` has not; a test runner may have)."""
    if logging.getLogger().handlers:
        return
    from services.logs import setup_logging

    level = settings.log_level if settings.log_level == "DEBUG" else "WARNING"
    setup_logging(level, settings.secrets(), log_format=settings.log_format)


def run_generate(argv: list[str], *, stderr: TextIO | None = None) -> int:
    """The ``generate`` command. Returns the exit code; prints one ``error:`` line on failure.

    ``bot.py`` has loaded ``.env`` (python-dotenv) before calling this; settings come from the environment.
    """
    err = stderr or sys.stderr
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        err.write(_one_line(exc) + "\n")
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    try:
        settings = load_settings(require_discord=False)
        job = _job(args, settings)
    except (UsageError, InvalidInput, ConfigError) as exc:
        err.write(_one_line(exc) + "\n")
        return EXIT_USAGE if isinstance(exc, UsageError) else EXIT_FAILED
    _setup_logging(settings)
    try:
        result = asyncio.run(_generate(job, settings, err))
    except KeyboardInterrupt:
        err.write("\nerror: interrupted; nothing was written.\n")
        return EXIT_INTERRUPTED
    except Exception as exc:
        log.debug("generate failed", exc_info=True)
        err.write(_one_line(exc) + "\n")
        return EXIT_USAGE if isinstance(exc, UsageError) else EXIT_FAILED
    simulated = " (SIMULATED: a test tone, not real music)" if settings.simulated else ""
    err.write(
        f"wrote {job.out} ({result.duration_s:.1f} s, {result.sample_rate} Hz, {result.channels} ch, "
        f"{result.audio_bytes:,} bytes) and lyrics to {job.lyrics_out}{simulated}\n"
    )
    return EXIT_OK
