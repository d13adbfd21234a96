"""Fetching one large file over HTTP(S) so that a cut connection costs nothing: the bytes go to a `.part` file and
each retry asks only for the rest (HTTP Range); a server that ignores Range sends the whole file again and the
`.part` file starts over. httpx does the HTTP, tenacity the retries, rich the progress bar on a terminal (a plain
line every few seconds otherwise)."""
from __future__ import annotations

import hashlib
import re
import sys
import time
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


class DownloadError(Exception):
    """The file could not be fetched; the message says why. What was received stays in the `.part` file."""


class HostUnreachable(DownloadError):
    """No connection to the host at all (refused, no route, no name): most likely no network."""


class _Transient(Exception):
    """A failure worth another try: a 5xx or 429 answer, or a body cut short."""


class Progress:
    """A rich bar (bytes, speed, time left) on a terminal; a plain `download:` line every `every_s` otherwise."""

    def __init__(self, name: str, total: int | None, enabled: bool = True, every_s: float = 5.0) -> None:
        self.name, self.total, self.done = name, total, 0
        self.tty = enabled and sys.stderr.isatty()
        self.plain = enabled and not self.tty
        self.every_s, self._last = every_s, time.monotonic()
        self._rich: Any = None
        if self.tty:
            try:
                from rich.progress import (BarColumn, DownloadColumn, Progress as Bar, TextColumn,
                                           TimeRemainingColumn, TransferSpeedColumn)
            except ImportError:  # rich comes with the ingest extra; without it, the plain lines
                self.tty, self.plain = False, True
                return
            self._rich = Bar(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                             TimeRemainingColumn(), transient=False)
            self._task = self._rich.add_task(name, total=total)
            self._rich.start()

    def start_at(self, done: int) -> None:
        """Where this attempt starts: the bytes already in the `.part` file (0 when it starts over)."""
        self.done = done
        if self._rich is not None:
            self._rich.update(self._task, completed=done)

    def advance(self, n: int) -> None:
        self.done += n
        if self._rich is not None:
            self._rich.update(self._task, completed=self.done)
        elif self.plain and time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            of = f" of {self.total:,}" if self.total else ""
            print(f"download: {self.name}: {self.done:,}{of} bytes", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()


def _content_range_start(value: str) -> int | None:
    match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", value or "")
    return int(match.group(1)) if match else None


def _once(client, url: str, part: Path, expected_size: int | None, progress: Progress) -> None:  # type: ignore[no-untyped-def]
    """One request for what `part` lacks; raises _Transient or an httpx.TransportError for a retry. Bytes are
    asked for unencoded (Accept-Encoding: identity), so Range offsets are offsets in the file."""
    have = part.stat().st_size if part.exists() else 0
    if expected_size is not None and have > expected_size:  # not the file we expect: start over
        part.unlink()
        have = 0
    if expected_size is not None and have == expected_size:
        return
    headers = {"Range": f"bytes={have}-"} if have else {}
    with client.stream("GET", url, headers=headers) as response:
        code = response.status_code
        if code == 416:  # nothing left to send from `have`: the part is complete, or longer than the file
            if expected_size is None:
                return
            part.unlink()
            raise _Transient(f"the server has no bytes from {have:,} on; starting over")
        if code in (429,) or code >= 500:
            raise _Transient(f"HTTP {code} from {url}")
        if code >= 400:
            raise DownloadError(f"HTTP {code} {response.reason_phrase} from {url}: check the URL (--mirror)")
        if code == 206 and _content_range_start(response.headers.get("content-range", "")) == have:
            mode = "ab"
        else:  # 200: the server ignored Range and sends everything
            mode, have = "wb", 0
        length = response.headers.get("content-length")
        total = have + int(length) if length and length.isdigit() else None
        progress.start_at(have)
        with open(part, mode) as f:
            for chunk in response.iter_raw():  # as it arrives: a cut connection keeps all that came
                f.write(chunk)
                progress.advance(len(chunk))
        got = part.stat().st_size
        if total is not None and got < total:
            raise _Transient(f"the connection ended at {got:,} of {total:,} bytes")


def download(url: str, part: Path, *, expected_size: int | None = None, attempts: int = 5, timeout_s: float = 60.0,
             wait_s: float = 1.0, progress: bool = True) -> Path:
    """Fetches `url` into `part`, resuming from what `part` already holds; tries `attempts` times, waiting
    `wait_s`, 2*`wait_s`, ... (at most 30 s) between tries. Returns `part` once the server sent all it has."""
    try:
        import httpx
    except ImportError:
        raise DownloadError("downloading needs httpx: pip install 'logmesh[ingest]'") from None
    from tenacity import Retrying, stop_after_attempt, wait_exponential

    # a network hiccup, a timeout or a body cut short is worth another try; a bad URL is not
    _RETRIED = (_Transient, httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)
    part.parent.mkdir(parents=True, exist_ok=True)
    bar = Progress(part.name.removesuffix(".part"), expected_size, enabled=progress)

    def tell(state) -> None:  # type: ignore[no-untyped-def]
        exc = state.outcome.exception()
        print(f"download: {type(exc).__name__}: {exc or 'no answer'}; trying again in "
              f"{state.next_action.sleep:.0f} s (try {state.attempt_number + 1} of {attempts})",
              file=sys.stderr, flush=True)

    def worth_another_try(state) -> bool:  # type: ignore[no-untyped-def]
        exc = state.outcome.exception()
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)) and not bar.done:
            return state.attempt_number < 2  # no connection at all, twice: no network (or a wrong --mirror)
        return isinstance(exc, _RETRIED)

    retrying = Retrying(stop=stop_after_attempt(attempts), wait=wait_exponential(multiplier=wait_s, max=30),
                        retry=worth_another_try, reraise=True, before_sleep=tell)
    try:
        with httpx.Client(follow_redirects=True, timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 15.0)),
                          headers={"User-Agent": "logmesh-datasets", "Accept-Encoding": "identity"}) as client:
            for attempt in retrying:
                with attempt:
                    _once(client, url, part, expected_size, bar)
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        host = httpx.URL(url).host
        raise HostUnreachable(f"cannot reach {host} ({exc or type(exc).__name__})") from None
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise DownloadError(f"{url}: {exc}: give an http(s) URL") from None
    except (httpx.TransportError, _Transient) as exc:
        held = part.stat().st_size if part.exists() else 0
        raise DownloadError(f"{url}: {exc or type(exc).__name__} after {attempts} tries; {held:,} bytes are kept in "
                            f"{part} and the next run resumes from there") from None
    finally:
        bar.close()
    return part


def digests(path: Path) -> tuple[str, str]:
    """(md5, sha256) of a file in one pass: Zenodo publishes md5; sha256 is what logmesh writes beside the file."""
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            md5.update(chunk)
            sha256.update(chunk)
    return md5.hexdigest(), sha256.hexdigest()
