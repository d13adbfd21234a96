"""Labelled training material from a loghub HDFS_v1 folder (../shared/data/hdfs or a user's download).

Lines come from every ``*.log`` that has its blocks in ``anomaly_label.csv``; a line's label is its
block's (HDFS_v1 labels blocks, not lines). Lines are kept in file order, which is time order.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
from pathlib import Path

from logmesh.ingest.hdfs import parse_line
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
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                record = parse_line(line, path.name, number)
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


def load_blocks(data_dir: Path) -> tuple[LabelledBlocks, LabelledBlocks]:
    """(train, test) block sessions, split chronologically: the first 80% of each source trains.

    Sources: blocks grouped from the raw logs (in order of first appearance) and the DeepLog session
    files. Each source is split on its own so that test blocks come after train blocks in every one.
    """
    from logmesh.ingest.hdfs import parse_line

    labels = read_block_labels(data_dir / "anomaly_label.csv")
    sources: list[tuple[str, list[list[str]], list[int]]] = []
    for path in log_files(data_dir):
        blocks: dict[str, list[str]] = {}
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                record = parse_line(line)
                for block in record.block_ids:
                    if block in labels:
                        blocks.setdefault(block, []).append(record.template_id)
        sources.append((path.name, list(blocks.values()), [labels[b] for b in blocks]))
    for name, label in (("sessions_normal.txt", 0), ("sessions_anomalous.txt", 1)):
        if (data_dir / name).exists():
            sessions = read_sessions(data_dir / name)
            sources.append((name, sessions, [label] * len(sessions)))
    train, test = LabelledBlocks([], [], []), LabelledBlocks([], [], [])
    for name, sessions, ys in sources:
        cut = int(len(sessions) * 0.8)
        for part, lo, hi in ((train, 0, cut), (test, cut, len(sessions))):
            part.sessions.extend(sessions[lo:hi])
            part.labels.extend(ys[lo:hi])
            part.origin.extend([name] * (hi - lo))
    return train, test
