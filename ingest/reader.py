"""Streaming raw HDFS logs from files, folders, gzip files or stdin, and attaching block labels.

The full HDFS_v1 log is 11 million lines (1.5 GB), so everything here reads line by line in
constant memory. Real logs carry CRLF endings (HDFS_2k.log, HDFS_5k.log) and the odd bad byte;
neither may stop a replay, so bad bytes become U+FFFD and are counted instead.
"""
from __future__ import annotations

import gzip
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from logmesh.ingest.hdfs import parse_line
from logmesh.ingest.labels import ANOMALY, NORMAL, read_block_labels
from logmesh.v1 import log_record_pb2 as lr

STDIN = "-"
#: Name given to lines read from stdin (LogRecord.source, and the id prefix "stdin:N").
STDIN_SOURCE = "stdin"
_GZIP_MAGIC = b"\x1f\x8b"
_LABELS = {NORMAL: lr.LABEL_NORMAL, ANOMALY: lr.LABEL_ANOMALY}

PathLike = str | Path


@dataclass
class ReadStats:
    """What a read saw; pass one in to have it filled while iterating."""

    files: int = 0
    lines: int = 0
    bytes: int = 0
    #: Lines that were not valid UTF-8.
    bad_lines: int = 0
    #: Replacement characters written for invalid bytes.
    bad_bytes: int = 0
    #: Empty lines, which iter_records skips (they carry nothing to parse).
    blank_lines: int = 0


def expand_paths(paths: PathLike | Iterable[PathLike]) -> list[str | Path]:
    """The files a read will visit, in order: a folder becomes its *.log and *.gz files in name order."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out: list[str | Path] = []
    for p in paths:
        if str(p) == STDIN:
            out.append(STDIN)
            continue
        path = Path(p)
        if path.is_dir():
            out.extend(sorted(f for f in path.iterdir()
                              if f.is_file() and (f.suffix == ".log" or f.suffix == ".gz")))
        elif path.exists():
            out.append(path)
        else:
            raise FileNotFoundError(f"no such log file or folder: {path}")
    return out


def _open_binary(path: Path) -> BinaryIO:
    # Sniff the magic bytes rather than trust the suffix: rotated logs are often gzip without ".gz".
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == _GZIP_MAGIC:
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb", buffering=1 << 20)


def _decode_lines(stream: Iterable[bytes], source: str, stats: ReadStats) -> Iterator[tuple[str, int, str]]:
    n = 0
    for raw in stream:
        n += 1
        stats.bytes += len(raw)
        raw = raw.rstrip(b"\r\n")
        try:
            text = raw.decode("utf-8")  # strict first: the C fast path, and most lines are clean
        except UnicodeDecodeError:
            # Count only what the replacement added, so a genuine U+FFFD in the input is not a "bad byte".
            text = raw.decode("utf-8", errors="replace")
            stats.bad_lines += 1
            stats.bad_bytes += text.count("\ufffd") - raw.count("\ufffd".encode())
        if not text:
            stats.blank_lines += 1
        stats.lines += 1
        yield source, n, text


def iter_lines(path_or_dash: PathLike | Iterable[PathLike], stats: ReadStats | None = None
               ) -> Iterator[tuple[str, int, str]]:
    """Yields (source_name, line_number, text) for every line of a file, a folder's *.log/*.gz files
    (name order), a gzip file, or stdin ("-"); also accepts a list of those. The text has no line
    ending; line numbers are 1-based per source; source_name is the file's name ("stdin" for "-")."""
    stats = stats if stats is not None else ReadStats()
    for item in expand_paths(path_or_dash):
        stats.files += 1
        if item == STDIN:
            yield from _decode_lines(sys.stdin.buffer, STDIN_SOURCE, stats)
            continue
        path = Path(item)
        with _open_binary(path) as f:
            yield from _decode_lines(f, path.name, stats)


def iter_records(path_or_dash: PathLike | Iterable[PathLike], labels: dict[str, int] | None = None,
                 stats: ReadStats | None = None) -> Iterator[lr.LogRecord]:
    """Yields one LogRecord per non-empty line (via parse_line), labelled from `labels` if given.
    Lines that do not parse still come through, with template "unknown"."""
    for source, number, text in iter_lines(path_or_dash, stats):
        if not text:
            continue
        record = parse_line(text, source, number)
        if labels is not None:
            apply_label(record, labels)
        yield record


def load_block_labels(csv_path: PathLike) -> dict[str, int]:
    """loghub's anomaly_label.csv as {block id: LogRecord Label value} (LABEL_NORMAL or LABEL_ANOMALY), read by
    the one label reader (ingest/labels.py: its rules and its errors, which name the file and line)."""
    return {block: _LABELS[value] for block, value in read_block_labels(csv_path).items()}


def apply_label(record: lr.LogRecord, labels: dict[str, int]) -> lr.LogRecord:
    """Sets record.label from its first block id (HDFS_v1 labels blocks); unknown blocks stay
    LABEL_UNSPECIFIED. Returns the record for chaining."""
    if record.block_ids:
        record.label = labels.get(record.block_ids[0], lr.LABEL_UNSPECIFIED)
    return record
