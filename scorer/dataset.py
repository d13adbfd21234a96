"""Labelled training material from a loghub HDFS_v1 folder (../shared/data/hdfs or a user's download).

Lines come from every ``*.log`` that has its blocks in ``anomaly_label.csv``; a line's label is its
block's (HDFS_v1 labels blocks, not lines). Lines are kept in file order, which is time order.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import re
import sys
from collections import Counter
from pathlib import Path

from collections.abc import Iterator

from logmesh.ingest.hdfs import UNKNOWN_TEMPLATE
from logmesh.ingest.templates import match_template
from logmesh.ingest.masking import line_shape


@dataclasses.dataclass
class LabelledLines:
    shapes: list[str]  # masked "component: message" per line
    templates: list[str]
    blocks: list[str]  # first block id per line ("" when none)
    labels: list[int]  # 1 = the line's block is anomalous
    sources: list[str]

    def __len__(self) -> int:
        return len(self.shapes)


def read_block_labels(path: Path) -> dict[str, int]:
    """anomaly_label.csv (`BlockId,Label`) as block id -> 1 (Anomaly) / 0 (Normal)."""
    with open(path, newline="") as f:
        return {row["BlockId"]: int(row["Label"].strip().lower() == "anomaly") for row in csv.DictReader(f)}


def log_files(data_dir: Path) -> list[Path]:
    """The raw logs of a data folder, largest sample first; HDFS_2k.log has no labels and is left out."""
    return sorted((p for p in data_dir.glob("*.log") if p.name != "HDFS_2k.log"),
                  key=lambda p: p.stat().st_size, reverse=True)


def load_lines(data_dir: Path, limit: int | None = None) -> LabelledLines:
    labels = read_block_labels(data_dir / "anomaly_label.csv")
    out = LabelledLines([], [], [], [], [])
    for path in log_files(data_dir):
        from logmesh.ingest.reader import iter_records
        for record in iter_records(path):  # streamed; the lists are what the caller asked for
            block = record.block_ids[0] if record.block_ids else ""
            if block not in labels:
                continue  # unlabelled lines teach nothing and would bias the base rate
            out.shapes.append(line_shape(record.component, record.message))
            out.templates.append(record.template_id)
            out.blocks.append(block)
            out.labels.append(labels[block])
            out.sources.append(path.name)
            if limit and len(out) >= limit:
                return out
    if not out.shapes:
        raise FileNotFoundError(f"no labelled HDFS lines in {data_dir}: it needs *.log files and anomaly_label.csv")
    return out


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


@dataclasses.dataclass
class LabelledBlocks:
    sessions: list[list[str]]  # event ids in log order
    labels: list[int]
    origin: list[str]  # which file each block came from
    closed: list[bool] = dataclasses.field(default_factory=list)  # False: cut short by the end of its log


#: Blocks whose last line lies within this many lines of the end of a raw log are "open at the cut":
#: the file ends mid-session (HDFS_20000.log is the first 20,000 lines of HDFS.log), so they are
#: judged, and trained, as open prefixes. docs/evaluation.md explains the choice.
OPEN_TAIL = 2000


def count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            n += chunk.count(b"\n")
    return n


@dataclasses.dataclass
class LineCounts:
    """Lines aggregated by (masked shape, label): HDFS has a few dozen shapes, so 11M lines fit in a
    small table. `train`/`test` map (shape, label) -> number of lines in each chronological part."""
    train: Counter
    test: Counter
    lines: int = 0
    anomalous_lines: int = 0
    blocks: int = 0


_LINE = re.compile(r"^(\d{6}) (\d{6}) (\d+) ([A-Z]+) ([^\s:]+): ?(.*)$", re.S)  # as logmesh.ingest.hdfs
_BLOCK_ID = re.compile(r"blk_-?\d+")


@dataclasses.dataclass
class FastRecord:
    """What training needs of a line, without a LogRecord: parse_line's fields that matter here."""
    line_number: int
    component: str
    message: str
    template_id: str
    block_ids: list[str]
    shape: str


def iter_fast(path, stats=None) -> "Iterator[FastRecord]":
    """Streams a raw log as FastRecords, ~2x parse_line's speed: no timestamp or protobuf, and the
    template id is matched once per masked shape (a shape masks only numbers, addresses and block
    ids, so all lines of one shape share a template). Same template ids and shapes as parse_line."""
    from logmesh.ingest.reader import iter_lines
    templates: dict[str, str] = {}
    for _, number, text in iter_lines(path, stats):
        if not text:
            continue
        m = _LINE.match(text)
        component, message = (m.group(5), m.group(6)) if m else ("", text)
        shape = line_shape(component, message)
        template = templates.get(shape)
        if template is None:
            template = (match_template(message) or UNKNOWN_TEMPLATE) if m else UNKNOWN_TEMPLATE
            templates[shape] = template
            shape = sys.intern(shape)
        yield FastRecord(number, component, message, template,
                         list(dict.fromkeys(_BLOCK_ID.findall(message))), shape)


def scan(data_dir: Path, drain=None, test_share: float = 0.2, limit: int | None = None,
         open_tail: int = OPEN_TAIL, progress=None) -> tuple[LineCounts, LabelledBlocks, LabelledBlocks]:
    """One streaming pass over a data folder: line counts for the line ensemble and block sessions
    (train, test) for the block model, both split chronologically per source (the first 1-test_share
    of each file's lines / blocks trains). Memory: one event list per labelled block, never a file.
    `drain` (DrainTemplates) names the lines no loghub template matches."""
    labels = read_block_labels(data_dir / "anomaly_label.csv")
    counts = LineCounts(Counter(), Counter())
    sources: list[tuple[str, list[list[str]], list[int], list[bool]]] = []
    shapes: dict[str, str] = {}
    seen_blocks: set[str] = set()
    for path in log_files(data_dir):
        total = count_lines(path)
        cut = int(total * (1 - test_share))
        blocks: dict[str, list[str]] = {}
        last: dict[str, int] = {}
        for record in iter_fast(path):
            number = record.line_number
            if limit and counts.lines >= limit:
                break
            if not record.block_ids:
                continue
            event = drain.event(record) if drain is not None else record.template_id
            first = record.block_ids[0]
            if first in labels:
                shape = shapes.setdefault(record.shape, record.shape)
                y = labels[first]
                (counts.train if number <= cut else counts.test)[(shape, y)] += 1
                counts.lines += 1
                counts.anomalous_lines += y
            for block in record.block_ids:
                if block in labels:
                    blocks.setdefault(block, []).append(sys.intern(event))
                    last[block] = number
            if progress and number % 1_000_000 == 0:
                progress(path.name, number, total)
        end = max(last.values(), default=0) if limit else total
        seen_blocks.update(blocks)
        sources.append((path.name, list(blocks.values()), [labels[b] for b in blocks],
                        [last[b] <= end - open_tail for b in blocks]))
        if limit and counts.lines >= limit:
            break
    counts.blocks = len(seen_blocks)
    if not counts.lines:
        raise FileNotFoundError(f"no labelled HDFS lines in {data_dir}: it needs *.log files and anomaly_label.csv")
    for name, label in (("sessions_normal.txt", 0), ("sessions_anomalous.txt", 1)):
        if (data_dir / name).exists() and not limit:
            sessions = read_sessions(data_dir / name)
            sources.append((name, sessions, [label] * len(sessions), [True] * len(sessions)))
    return (counts, *_split(sources, test_share))


def _split(sources, test_share: float) -> tuple[LabelledBlocks, LabelledBlocks]:
    train, test = LabelledBlocks([], [], [], []), LabelledBlocks([], [], [], [])
    for name, sessions, ys, closed in sources:
        cut = int(len(sessions) * (1 - test_share))
        for part, lo, hi in ((train, 0, cut), (test, cut, len(sessions))):
            part.sessions.extend(sessions[lo:hi])
            part.labels.extend(ys[lo:hi])
            part.origin.extend([name] * (hi - lo))
            part.closed.extend(closed[lo:hi])
    return train, test


def load_blocks(data_dir: Path, drain=None, open_tail: int = OPEN_TAIL) -> tuple[LabelledBlocks, LabelledBlocks]:
    """(train, test) block sessions, split chronologically: the first 80% of each source trains.

    Sources: blocks grouped from the raw logs (in order of first appearance; streamed) and the
    DeepLog session files. Each source is split on its own so that test blocks come after train
    blocks in every one. Blocks cut short by the end of a raw log have closed=False.
    """
    _, train, test = scan(data_dir, drain, open_tail=open_tail)
    return train, test
