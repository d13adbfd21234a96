"""What a scorer keeps across restarts: its anomaly history, where it stands in the anomalies topic, and its
counters, in a state folder.

Behind two small interfaces (HistoryStore, CounterStore). The file versions:

- `anomalies.log`: append-only, one record per history entry (4-byte little-endian length, then a serialized
  logmesh.v1.Anomaly with its history id and its topic coordinates in `source`). A record cut short by a crash
  is dropped (and the file cut back) on the next start. Written without fsync: it survives a crash or kill of
  the process, not a power cut. The history rewrites it with what it still holds once it grows past a bound
  (a compacted snapshot), so the file stays bounded too.
- `positions.json`: "topic/partition" -> the next offset of the anomalies topic to read, replaced atomically
  after each append. The log's own sources say the same for the entries it holds; this file covers messages
  read but not entered (a repeated final verdict) and partitions whose entries were all evicted.
- `counters.json`: the GetStats counters, replaced atomically.
- `lock`: flock'ed while a scorer uses the folder, so two scorers cannot interleave one log.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import struct
from pathlib import Path
from typing import Iterable, Iterator, Protocol, Sequence

log = logging.getLogger("logmesh.scorer.state")
_LENGTH = struct.Struct("<I")


class StateError(Exception):
    """The state folder cannot be used; the message says what to do."""


class HistoryStore(Protocol):
    def load(self) -> Iterator[bytes]:
        """Stored entries (serialized Anomaly), oldest first."""
    def append(self, entries: Sequence[bytes]) -> None: ...
    def rewrite(self, entries: Iterable[bytes]) -> None:
        """Replaces everything stored with `entries` (oldest first)."""
    @property
    def size(self) -> int:
        """Bytes the store takes now."""
    def close(self) -> None: ...


class CounterStore(Protocol):
    def load(self) -> dict[str, int]: ...
    def save(self, counters: dict[str, int]) -> None: ...


class StateDir:
    """An exclusively locked state folder with the file stores of the history and the counters."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock = open(self.path / "lock", "a+")
        except OSError as exc:
            raise StateError(f"cannot use state dir {self.path} ({exc.strerror}); give a writable --state-dir, "
                             "or --state-dir '' to keep the history in memory only") from exc
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise StateError(f"state dir {self.path} is in use by another scorer; give each scorer its own "
                             "--state-dir") from None
        self.history = FileHistoryStore(self.path / "anomalies.log")
        self.counters = JsonCounterStore(self.path / "counters.json")
        self.positions = JsonCounterStore(self.path / "positions.json")

    def close(self) -> None:
        self.history.close()
        self._lock.close()  # releases the flock


class FileHistoryStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "ab")

    def load(self) -> Iterator[bytes]:
        good = 0
        with open(self.path, "rb") as f:
            while True:
                head = f.read(_LENGTH.size)
                if len(head) < _LENGTH.size:
                    break
                (n,) = _LENGTH.unpack(head)
                data = f.read(n)
                if len(data) < n:
                    break
                good = f.tell()
                yield data
            end = f.seek(0, os.SEEK_END)
        if good < end:  # a write cut short by a crash: drop the partial record
            log.warning("dropped a partial history record", extra={"path": str(self.path), "bytes": end - good})
            os.truncate(self.path, good)

    def append(self, entries: Sequence[bytes]) -> None:
        self._file.write(b"".join(_LENGTH.pack(len(e)) + e for e in entries))
        self._file.flush()

    def rewrite(self, entries: Iterable[bytes]) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for e in entries:
                f.write(_LENGTH.pack(len(e)))
                f.write(e)
            f.flush()
            os.fsync(f.fileno())
        self._file.close()
        os.replace(tmp, self.path)
        self._file = open(self.path, "ab")

    @property
    def size(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        self._file.close()


class JsonCounterStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, int]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("counters unreadable; starting from zero", extra={"path": str(self.path), "error": str(exc)})
            return {}
        return {k: int(v) for k, v in data.items() if isinstance(v, int)}

    def save(self, counters: dict[str, int]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(counters))
        os.replace(tmp, self.path)
