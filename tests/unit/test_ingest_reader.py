"""logmesh.ingest.reader on the real loghub files (read in place) and on edge cases built in tmp_path."""
from __future__ import annotations

import csv
import gzip
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from logmesh.ingest.generator import GeneratorConfig, write_generated
from logmesh.ingest.hdfs import parse_line
from logmesh.ingest.reader import (ReadStats, apply_label, expand_paths, iter_lines, iter_records,
                                   load_block_labels)
from logmesh.v1 import log_record_pb2 as lr

DATA = Path(__file__).resolve().parents[3] / "shared/data/hdfs"
HDFS_2K, HDFS_5K, HDFS_20K = DATA / "HDFS_2k.log", DATA / "HDFS_5k.log", DATA / "HDFS_20000.log"
LABELS = DATA / "anomaly_label.csv"


def test_real_data_is_where_the_tests_expect_it() -> None:
    assert HDFS_5K.is_file() and LABELS.is_file(), f"real HDFS data missing under {DATA}"


def test_crlf_file_yields_clean_numbered_lines() -> None:
    stats = ReadStats()
    lines = list(iter_lines(HDFS_2K, stats))
    assert len(lines) == 2000 == stats.lines
    assert [n for _, n, _ in lines] == list(range(1, 2001))
    assert {s for s, _, _ in lines} == {"HDFS_2k.log"}
    assert not any(t.endswith(("\r", "\n")) for _, _, t in lines)
    assert HDFS_2K.read_bytes().count(b"\r\n") == 2000  # the file really is CRLF
    assert stats.bad_lines == stats.bad_bytes == stats.blank_lines == 0


def test_line_numbers_and_templates_agree_with_ground_truth() -> None:
    # HDFS_5k.log_labels.csv gives each line's block, loghub event id and block label by LineId.
    with open(DATA / "HDFS_5k.log_labels.csv", newline="") as f:
        truth = {int(r["LineId"]): r for r in csv.DictReader(f)}
    labels = load_block_labels(LABELS)
    records = list(iter_records(HDFS_5K, labels))
    assert len(records) == len(truth) == 4519
    want_label = {"Normal": lr.LABEL_NORMAL, "Anomaly": lr.LABEL_ANOMALY}
    for r in records:
        t = truth[r.line_number]
        assert r.id == f"HDFS_5k.log:{r.line_number}"
        assert r.block_ids[0] == t["BlockIds"]
        assert r.template_id == t["EventId"]
        assert r.label == want_label[t["Label"]]


def test_gzip_file_reads_like_the_plain_file(tmp_path: Path) -> None:
    gz = tmp_path / "HDFS_2k.log.gz"
    gz.write_bytes(gzip.compress(HDFS_2K.read_bytes()))
    plain = [t for _, _, t in iter_lines(HDFS_2K)]
    assert [t for _, _, t in iter_lines(gz)] == plain
    # gzip is detected by its magic bytes, not the name (rotated logs often lack ".gz")
    hidden = tmp_path / "rotated.1"
    hidden.write_bytes(gz.read_bytes())
    assert [t for _, _, t in iter_lines(hidden)] == plain


def test_directory_reads_log_and_gz_files_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "b.log").write_text("b1\nb2\n")
    with gzip.open(tmp_path / "a.log.gz", "wt") as f:
        f.write("a1\na2\na3")  # no final newline: the last line still counts
    (tmp_path / "c.log").write_text("c1\r\n")
    (tmp_path / "notes.txt").write_text("ignored\n")
    (tmp_path / "labels.csv").write_text("BlockId,Label\n")
    (tmp_path / "sub.log").mkdir()  # a folder named like a log is not a file
    got = list(iter_lines(tmp_path))
    assert got == [("a.log.gz", 1, "a1"), ("a.log.gz", 2, "a2"), ("a.log.gz", 3, "a3"),
                   ("b.log", 1, "b1"), ("b.log", 2, "b2"), ("c.log", 1, "c1")]
    assert [Path(p).name for p in expand_paths(tmp_path)] == ["a.log.gz", "b.log", "c.log"]


def test_list_of_paths_and_missing_path(tmp_path: Path) -> None:
    (tmp_path / "x.log").write_text("x\n")
    assert [s for s, _, _ in iter_lines([tmp_path / "x.log", HDFS_2K])][:2] == ["x.log", "HDFS_2k.log"]
    with pytest.raises(FileNotFoundError, match="no such log file"):
        list(iter_lines(tmp_path / "missing.log"))


def test_bad_bytes_are_replaced_and_counted(tmp_path: Path) -> None:
    good = HDFS_2K.read_bytes().splitlines(keepends=True)[0]
    bad = b"081109 203615 148 INFO dfs.DataNode$DataXceiver: Receiving block blk_1 \xff\xfe src\r\n"
    real_fffd = "caf\u00e9 \ufffd ok\n".encode()  # a genuine U+FFFD is not a bad byte
    p = tmp_path / "bad.log"
    p.write_bytes(good + bad + real_fffd + b"\n" + b"\xe2\x82\n")
    stats = ReadStats()
    lines = list(iter_lines(p, stats))
    assert len(lines) == 5
    assert lines[1][2].endswith("blk_1 \ufffd\ufffd src")
    assert lines[2][2] == "caf\u00e9 \ufffd ok"
    assert lines[4][2] == "\ufffd"  # a truncated multi-byte sequence becomes one replacement
    assert (stats.bad_lines, stats.bad_bytes, stats.blank_lines) == (2, 3, 1)
    records = list(iter_records(p))  # blank lines are skipped, bad ones still parse
    assert [r.line_number for r in records] == [1, 2, 3, 5]
    assert records[1].block_ids == ["blk_1"]


def test_stdin_is_read_line_by_line() -> None:
    code = ("import sys; from logmesh.ingest.reader import iter_lines\n"
            "for s, n, t in iter_lines('-'): print(s, n, len(t))")
    out = subprocess.run([sys.executable, "-c", code], input=HDFS_5K.read_bytes(), capture_output=True,
                         check=True).stdout.decode().splitlines()
    assert len(out) == 4519
    first = HDFS_5K.read_bytes().split(b"\r\n")[0]
    assert out[0] == f"stdin 1 {len(first)}"
    assert out[-1].startswith("stdin 4519 ")


def test_stdin_records_match_parse_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    raw = HDFS_2K.read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
    records = list(iter_records("-"))
    texts = raw.decode().split("\r\n")[:-1]
    assert records == [parse_line(t, "stdin", i) for i, t in enumerate(texts, 1)]


def test_reading_is_streamed_in_constant_memory(tmp_path: Path) -> None:
    big = tmp_path / "big.log"
    write_generated(GeneratorConfig(lines=100_000, seed=5), big)
    size = big.stat().st_size
    tracemalloc.start()
    try:
        n = sum(1 for _ in iter_lines(big))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 100_000
    assert peak < 4_000_000 < size  # a few MB of buffers at most for a ~14 MB file


def test_load_block_labels_reads_the_real_file() -> None:
    labels = load_block_labels(LABELS)
    assert len(labels) == 1782
    assert sum(v == lr.LABEL_ANOMALY for v in labels.values()) == 43
    assert set(labels.values()) == {lr.LABEL_NORMAL, lr.LABEL_ANOMALY}
    assert labels["blk_-1608999687919862906"] == lr.LABEL_NORMAL


def test_load_block_labels_rejects_bad_files(tmp_path: Path) -> None:
    p = tmp_path / "l.csv"
    p.write_text("Block,Verdict\nblk_1,Normal\n")
    with pytest.raises(ValueError, match="is not a labels file: its line 1 should be the header 'BlockId,Label'"):
        load_block_labels(p)
    p.write_text("BlockId,Label\nblk_1,Normal\nblk_2,Weird\n")
    with pytest.raises(ValueError, match=r"l\.csv, line 3: expected"):
        load_block_labels(p)
    p.write_text("BlockId,Label\r\nblk_1,anomaly\r\n\r\nblk_2,Normal\r\n")
    assert load_block_labels(p) == {"blk_1": lr.LABEL_ANOMALY, "blk_2": lr.LABEL_NORMAL}


def test_apply_label_uses_the_first_block_id() -> None:
    labels = {"blk_1": lr.LABEL_ANOMALY, "blk_2": lr.LABEL_NORMAL}
    r = parse_line("081109 203518 19 INFO dfs.FSNamesystem: BLOCK* ask 10.0.0.1:50010 to delete  blk_2 blk_1")
    assert apply_label(r, labels).label == lr.LABEL_NORMAL
    r = parse_line("081109 203518 19 INFO dfs.FSNamesystem: BLOCK* ask 10.0.0.1:50010 to delete  blk_9")
    assert apply_label(r, labels).label == lr.LABEL_UNSPECIFIED
    r = parse_line("garbage without a block")
    assert apply_label(r, labels).label == lr.LABEL_UNSPECIFIED
