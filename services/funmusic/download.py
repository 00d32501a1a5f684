"""The non-streaming download: the finished song fetched from its url, only from hosts that may serve it.

The url must be http(s) on DashScope's OSS (``*.aliyuncs.com``), the API's own host, or a host the operator
allowed; redirects are followed by hand (each hop checked the same way, at most ``MAX_REDIRECTS``), and the body
is capped at ``max_bytes``. Retrying a failed download is the client's job (``client.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

import aiohttp
from yarl import URL

from services.errors import DownloadError
from services.funmusic.request import ProgressStage
from services.funmusic.sink import HEAD_BYTES, AudioSink, Reporter

log = logging.getLogger(__name__)

OSS_HOST_SUFFIX = ".aliyuncs.com"
DOWNLOAD_CHUNK = 256 * 1024
MAX_REDIRECTS = 3
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


class Downloader:
    """Fetches a song's audio into an :class:`AudioSink`, over the client's session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        timeout: aiohttp.ClientTimeout,
        read_bufsize: int,
        allowed_hosts: Iterable[str],
        max_bytes: int,
    ) -> None:
        self._session = session
        self._timeout = timeout
        self._read_bufsize = read_bufsize
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts)
        self.max_bytes = max_bytes

    def check_url(self, url: str) -> URL:
        """The url, if it may be fetched: http(s) on DashScope's OSS, the API's own host, or an allowed extra."""
        try:
            parsed = URL(url)
        except (ValueError, TypeError):
            raise DownloadError("the audio url is not a valid URL") from None
        host = (parsed.host or "").lower().rstrip(".")
        if parsed.scheme not in ("http", "https") or not host:
            raise DownloadError(f"refusing to download from a non-http(s) url ({parsed.scheme or 'no scheme'})")
        if not (host.endswith(OSS_HOST_SUFFIX) or host in self.allowed_hosts):
            raise DownloadError(f"refusing to download audio from {host}: not a DashScope host")
        return parsed

    async def fetch(self, url: str, sink: AudioSink, report: Reporter, tag: str) -> None:
        current = self.check_url(url)
        for _hop in range(MAX_REDIRECTS + 1):
            await report(ProgressStage.DOWNLOADING)
            try:
                async with self._session.get(
                    current, allow_redirects=False, timeout=self._timeout, read_bufsize=self._read_bufsize
                ) as resp:
                    if resp.status in REDIRECT_STATUSES:
                        location = resp.headers.get("Location")
                        if not location:
                            raise DownloadError(f"redirect {resp.status} without a Location", status=resp.status)
                        current = self.check_url(str(current.join(URL(location))))
                        continue
                    await self._save(resp, sink, report, tag)
                    return
            except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
                raise DownloadError(f"downloading the audio timed out: {exc}", retryable=True) from None
            except aiohttp.ClientError as exc:
                raise DownloadError(
                    f"downloading the audio failed: {type(exc).__name__}: {exc}", retryable=True
                ) from None
        raise DownloadError(f"more than {MAX_REDIRECTS} redirects while downloading the audio")

    async def _save(self, resp: aiohttp.ClientResponse, sink: AudioSink, report: Reporter, tag: str) -> None:
        if resp.status != 200:
            retryable = resp.status >= 500 or resp.status in (408, 429)
            raise DownloadError(f"the audio url answered HTTP {resp.status}", status=resp.status, retryable=retryable)
        cap = self.max_bytes
        if resp.content_length is not None and resp.content_length > cap:
            raise DownloadError(f"the audio is {resp.content_length} bytes, over the {cap}-byte limit")
        await sink.start()
        async for chunk in resp.content.iter_chunked(DOWNLOAD_CHUNK):
            if sink.bytes_written + len(chunk) > cap:
                raise DownloadError(f"the audio is over the {cap}-byte limit")
            if not sink.bytes_written:
                await sink.begin_check(chunk[:HEAD_BYTES])
            await asyncio.to_thread(sink.write_raw, chunk)
            await report(ProgressStage.DOWNLOADING, sink.bytes_written, sink.seconds())
        if resp.content_length is not None and sink.bytes_written != resp.content_length:
            raise DownloadError("the audio download ended early", retryable=True)
        log.info("fun-music %s downloaded %d bytes from %s", tag, sink.bytes_written, resp.url.host)
