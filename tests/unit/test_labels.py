"""The one label reader (ingest/labels.py): every caller (training, evaluation, the demo, ingest, the CLI) reads
anomaly_label.csv through it, so one file means the same everywhere; bad rows are refused naming file and line."""
from __future__ import annotations

from pathlib import Path

import pytest

from logmesh.ingest.labels import ANOMALY, NORMAL, LabelFileError, read_block_labels
from logmesh.ingest.reader import load_block_labels
from logmesh.v1 import log_record_pb2 as lr

LABELS = Path(__file__).resolve().parents[3] / "shared/data/hdfs/anomaly_label.csv"


def _file(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "anomaly_label.csv"
    path.write_bytes(data)
    return path


def test_the_real_file() -> None:
    labels = read_block_labels(LABELS)
    assert len(labels) == 1782 and sum(labels.values()) == 43
    assert labels["blk_-1608999687919862906"] == NORMAL
    assert set(labels.values()) == {NORMAL, ANOMALY}


@pytest.mark.parametrize("data, want", [
    (b"\xef\xbb\xbfBlockId,Label\nblk_1,Anomaly\n", {"blk_1": ANOMALY}),  # a byte-order mark (Excel's export)
    (b"BlockId,Label\r\nblk_1,Normal\r\n\r\nblk_2,Anomaly\r\n", {"blk_1": NORMAL, "blk_2": ANOMALY}),  # CRLF, blank
    (b"BlockId,Label\nblk_1,ANOMALY\nblk_2,normal\nblk_3, Normal \n", {"blk_1": ANOMALY, "blk_2": NORMAL,
                                                                         "blk_3": NORMAL}),  # case, spaces
    (b'"Label","BlockId",Note\n"Anomaly","blk_1",x\n', {"blk_1": ANOMALY}),  # quoted, columns in another order
    (b"BlockId,Label\nblk_1,Normal\nblk_1,Normal\n", {"blk_1": NORMAL}),  # the same label twice
])
def test_tolerated(tmp_path: Path, data: bytes, want: dict) -> None:
    assert read_block_labels(_file(tmp_path, data)) == want


@pytest.mark.parametrize("data, wanted", [
    (b"", "is not a labels file: its line 1 should be the header 'BlockId,Label' (loghub's anomaly_label.csv), "
          "the file is empty"),
    (b"Block,Verdict\nblk_1,Normal\n", "is not a labels file: its line 1 should be the header 'BlockId,Label'"),
    (b"BlockId,Label\nblk_1,Normal\nblk_2,Weird\n", ", line 3: expected '<block id>,Normal' or '<block id>,Anomaly', "
                                                    "got 'blk_2,Weird'"),
    (b"BlockId,Label\r\nblk_1\r\n", ", line 2: expected"),
    (b"BlockId,Label\n,Anomaly\n", ", line 2: expected"),
    (b"BlockId,Label\nblk_1,Normal\nblk_2,Normal\nblk_1,Anomaly\n",
     ", line 4: blk_1 is labelled both Normal and Anomaly (line 2 and line 4)"),
])
def test_refused_naming_the_file_and_line(tmp_path: Path, data: bytes, wanted: str) -> None:
    path = _file(tmp_path, data)
    with pytest.raises(LabelFileError) as caught:
        read_block_labels(path)
    assert str(caught.value).startswith(str(path)) and wanted in str(caught.value), str(caught.value)


def test_every_caller_reads_through_it() -> None:
    from logmesh.scorer import dataset
    assert dataset.read_block_labels is read_block_labels  # training, the tests and bench import it from there
    enum = load_block_labels(LABELS)  # ingest's LogRecord.label values, from the same reader
    assert enum == {b: lr.LABEL_ANOMALY if v == ANOMALY else lr.LABEL_NORMAL for b, v in read_block_labels(LABELS).items()}
