"""Labelled training material from a loghub HDFS_v1 folder (../shared/data/hdfs or a user's download).

Lines come from every ``*.log`` that has its blocks in ``anomaly_label.csv``; a line's label is its
block's (HDFS_v1 labels blocks, not lines). Lines are kept in file order, which is time order.
`read_corpus` streams a folder once into block sessions (with their first/last line and log time,
so that scorer/completeness.py can decide which have ended) and a small table of line shapes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import sys
from pathlib import Path

from collections.abc import Iterator

from logmesh.ingest.hdfs import UNKNOWN_TEMPLATE, block_ids, match_line
from logmesh.ingest.labels import read_block_labels  # noqa: F401  (the one reader; also imported from here)
from logmesh.ingest.templates import match_template
from logmesh.ingest.masking import line_shape


def log_files(data_dir: Path) -> list[Path]:
    """The raw logs of a data folder, largest sample first; HDFS_2k.log has no labels and is left out."""
    return sorted((p for p in data_dir.glob("*.log") if p.name != "HDFS_2k.log"),
                  key=lambda p: p.stat().st_size, reverse=True)


def fingerprint(data_dir: Path) -> str:
    """sha256 over the names and bytes of the files training read: which data made a model."""
    digest = hashlib.sha256()
    for path in [*log_files(data_dir), data_dir / "anomaly_label.csv"]:
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def read_sessions(path: Path) -> list[list[str]]:
    """DeepLog-style session file: one block per line, space-separated event numbers k = loghub Ek."""
    with open(path) as f:
        return [[f"E{k}" for k in line.split()] for line in f if line.strip()]



#: Without timestamps, blocks whose last line lies within this many lines of the end of a raw log
#: are in its tail (scorer/completeness.py); with timestamps the tail is measured in log time.
OPEN_TAIL = 2000


def count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            n += chunk.count(b"\n")
    return n


@dataclasses.dataclass
class FastRecord:
    """What training needs of a line, without a LogRecord: parse_line's fields that matter here."""
    line_number: int
    component: str
    message: str
    template_id: str
    block_ids: list[str]
    shape: str
    time: float | None = None  # seconds since the epoch (UTC), None when the line has no timestamp


_DAYS: dict[str, float] = {}


def _seconds(date: str, clock: str) -> float:
    """HDFS's `yymmdd HHMMSS` as epoch seconds; one datetime per distinct day, plain arithmetic after."""
    day = _DAYS.get(date)
    if day is None:
        import datetime as dt
        day = _DAYS[date] = dt.datetime.strptime(date, "%y%m%d").replace(tzinfo=dt.timezone.utc).timestamp()
    return day + int(clock[:2]) * 3600 + int(clock[2:4]) * 60 + int(clock[4:6])


def iter_fast(path, stats=None) -> "Iterator[FastRecord]":
    """Streams a raw log as FastRecords, ~2x parse_line's speed: no protobuf, and the template id is
    matched once per masked shape (a shape masks only numbers, addresses and block ids, so all lines
    of one shape share a template). Same template ids and shapes as parse_line."""
    from logmesh.ingest.reader import iter_lines
    templates: dict[str, str] = {}
    for _, number, text in iter_lines(path, stats):
        if not text:
            continue
        m = match_line(text)
        component, message = (m.group(5), m.group(6)) if m else ("", text)
        shape = line_shape(component, message)
        template = templates.get(shape)
        if template is None:
            template = (match_template(message) or UNKNOWN_TEMPLATE) if m else UNKNOWN_TEMPLATE
            templates[shape] = template
            shape = sys.intern(shape)
        when = _seconds(m.group(1), m.group(2)) if m else None
        yield FastRecord(number, component, message, template,
                         block_ids(message), shape, when)


@dataclasses.dataclass
class RawLog:
    """The labelled blocks of one raw log, in order of first appearance (time order)."""
    name: str
    sessions: list[list[str]]
    labels: list[int]
    first_line: list[int]
    last_line: list[int]
    last_time: list[float | None]
    end_line: int
    end_time: float | None
    closed: list[bool] = dataclasses.field(default_factory=list)  # set by scorer/completeness.py
    decision: dict = dataclasses.field(default_factory=dict)
    block_ids: list[str] = dataclasses.field(default_factory=list)  # aligned with sessions (feedback names blocks)


@dataclasses.dataclass
class SessionFile:
    """A DeepLog-style file of complete sessions (event numbers), all of one label."""
    name: str
    sessions: list[list[str]]
    labels: list[int]


@dataclasses.dataclass
class Corpus:
    logs: list[RawLog]
    session_files: list[SessionFile]
    #: (masked shape, template id) -> [lines in normal blocks, lines in anomalous blocks]
    shapes: dict[tuple[str, str], list[int]]
    lines: int = 0
    anomalous_lines: int = 0

    @property
    def blocks(self) -> int:
        return sum(len(g.sessions) for g in self.logs)


def read_corpus(data_dir: Path, limit: int | None = None, progress=None, stall_times=None) -> Corpus:
    """One streaming pass over a data folder. Memory: one event list per labelled block and one row
    per distinct line shape, never a file. A block's events are loghub ids; lines no template matches
    are "unknown" here exactly as parse_line makes them when served (no train/serve skew).
    `stall_times` (scorer/stall_times.StallTimes) learns the pauses of normal blocks on the way."""
    labels = read_block_labels(data_dir / "anomaly_label.csv")
    corpus = Corpus([], [], {})
    for path in log_files(data_dir):
        total = count_lines(path) if progress else 0
        blocks: dict[str, list[str]] = {}
        first: dict[str, int] = {}
        last: dict[str, int] = {}
        last_time: dict[str, float | None] = {}
        end_line, end_time = 0, None
        for record in iter_fast(path):
            if limit and corpus.lines >= limit:
                break
            end_line = record.line_number
            if record.time is not None:
                end_time = record.time
            if progress and record.line_number % 1_000_000 == 0:
                progress(path.name, record.line_number, total)
            labelled = [b for b in record.block_ids if b in labels]
            if not labelled:
                continue
            row = corpus.shapes.setdefault((record.shape, record.template_id), [0, 0])
            y = labels[labelled[0]]
            row[y] += 1
            corpus.lines += 1
            corpus.anomalous_lines += y
            event = sys.intern(record.template_id)
            for block in labelled:
                if block not in blocks:
                    blocks[block] = []
                    first[block] = record.line_number
                elif stall_times is not None and labels[block] == 0 and record.time is not None \
                        and last_time[block] is not None:
                    stall_times.observe(blocks[block], record.time - last_time[block])
                blocks[block].append(event)
                last[block] = record.line_number
                last_time[block] = record.time
        if blocks:
            names = list(blocks)
            corpus.logs.append(RawLog(path.name, [blocks[b] for b in names], [labels[b] for b in names],
                                      [first[b] for b in names], [last[b] for b in names],
                                      [last_time[b] for b in names], end_line, end_time, block_ids=names))
        if limit and corpus.lines >= limit:
            break
    if not corpus.lines:
        found = [p.name for p in log_files(data_dir)]
        raise FileNotFoundError(
            f"no labelled HDFS lines in {data_dir}: it needs raw *.log files whose blocks are in anomaly_label.csv"
            + (f" (found {', '.join(found)}, none naming a labelled block)" if found else " (found no *.log file)"))
    for name, label in (("sessions_normal.txt", 0), ("sessions_anomalous.txt", 1)):
        if (data_dir / name).exists() and not limit:
            sessions = read_sessions(data_dir / name)
            corpus.session_files.append(SessionFile(name, sessions, [label] * len(sessions)))
    return corpus
