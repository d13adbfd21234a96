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
