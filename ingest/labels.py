"""The one reader of loghub's block labels, anomaly_label.csv (`BlockId,Label`, Label Normal or Anomaly).

Training, evaluation, the demo, ingest (LogRecord.label) and the CLI's checks all read labels here, so a file
means the same everywhere. Tolerated: a UTF-8 byte-order mark, CRLF endings, blank lines, quoted fields, extra
columns, and Normal/Anomaly in any case. Refused, with the file and line: a missing header, a row without a
block id or with another label, and a block labelled twice with different labels. A silent default would
corrupt an evaluation.
"""
from __future__ import annotations

import csv
from pathlib import Path

NORMAL, ANOMALY = 0, 1
HEADER = ("BlockId", "Label")
_VALUES = {"normal": NORMAL, "anomaly": ANOMALY}


class LabelFileError(ValueError):
    """A labels file that is not `BlockId,Label` rows; the message names the file and the line."""


def read_block_labels(path: str | Path) -> dict[str, int]:
    """{block id: ANOMALY (1) or NORMAL (0)}, in the file's order. Raises LabelFileError on a bad file,
    OSError (FileNotFoundError, ...) when it cannot be read."""
    labels: dict[str, int] = {}
    first_seen: dict[str, int] = {}
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:  # utf-8-sig drops a BOM
        reader = csv.reader(f)
        block_col, label_col = _columns(path, next(reader, None))
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            line = reader.line_num
            block = row[block_col].strip() if block_col < len(row) else ""
            value = _VALUES.get(row[label_col].strip().lower()) if label_col < len(row) else None
            if not block or value is None:
                raise LabelFileError(f"{path}, line {line}: expected '<block id>,Normal' or '<block id>,Anomaly', "
                                     f"got {','.join(row)[:80]!r}")
            if labels.get(block, value) != value:
                raise LabelFileError(f"{path}, line {line}: {block} is labelled both Normal and Anomaly (line "
                                     f"{first_seen[block]} and line {line}); a block has one label")
            first_seen.setdefault(block, line)
            labels[block] = value
    return labels


def _columns(path: str | Path, header: list[str] | None) -> tuple[int, int]:
    """The positions of BlockId and Label in the header row (names matched without case or spaces)."""
    names = [cell.strip().lower() for cell in header or []]
    if HEADER[0].lower() not in names or HEADER[1].lower() not in names:
        found = f"found {','.join(header)[:60]!r}" if header else "the file is empty"
        raise LabelFileError(f"{path} is not a labels file: its line 1 should be the header 'BlockId,Label' "
                             f"(loghub's anomaly_label.csv), {found}")
    return names.index(HEADER[0].lower()), names.index(HEADER[1].lower())
