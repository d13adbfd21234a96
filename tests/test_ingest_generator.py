"""logmesh.ingest.generator: reproducible, parseable, labelled, and shaped like the real HDFS_v1 log."""
from __future__ import annotations

import argparse
import collections
import csv
import gzip
import hashlib
import time
from pathlib import Path

import pytest

from logmesh.ingest.generator import (ANOMALY_KINDS, GeneratorConfig, HdfsLogGenerator, add_generate_args,
                                      default_labels_path, generate, write_generated)
from logmesh.ingest.hdfs import parse_line
from logmesh.ingest.reader import iter_records, load_block_labels
from logmesh.v1 import log_record_pb2 as lr

DATA = Path(__file__).resolve().parents[2] / "shared/data/hdfs"


@pytest.fixture(scope="module")
def sample() -> tuple[HdfsLogGenerator, list]:
    gen = HdfsLogGenerator(GeneratorConfig(blocks=20_000, seed=11))
    return gen, list(gen.lines())


def _sessions(lines: list) -> dict[str, list[str]]:
    sessions: dict[str, list[str]] = collections.defaultdict(list)
    for line in lines:
        sessions[line.block_id].append(line.event_id)
    return sessions


def test_every_line_parses_to_the_intended_template(sample) -> None:
    _, lines = sample
    mismatches = collections.Counter()
    for line in lines:
        r = parse_line(line.text)
        if r.template_id != line.event_id or not r.block_ids or r.block_ids[0] != line.block_id or not r.component:
            mismatches[(line.event_id, r.template_id)] += 1
    assert not mismatches, f"intended -> parsed: {dict(mismatches)}"
    seen = {line.event_id for line in lines}
    # every template the brief names shows up at this size
    assert {"E2", "E3", "E4", "E5", "E7", "E9", "E10", "E11", "E12", "E14", "E21", "E22", "E23",
            "E25", "E26", "E27", "E28", "E29"} <= seen


def test_lines_are_in_time_order_in_loghub_format(sample) -> None:
    _, lines = sample
    stamps = [line.text[:13] for line in lines]
    assert stamps == sorted(stamps)
    first = parse_line(lines[0].text)
    assert first.event_time.ToJsonString() == "2008-11-09T20:35:18Z"  # HDFS.log's own start
    assert all(line.text.count("\n") == 0 for line in lines[:1000])


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    def digest(seed: int, name: str) -> tuple[str, str]:
        out = tmp_path / f"{name}.log"
        s = write_generated(GeneratorConfig(blocks=2000, seed=seed), out)
        return hashlib.sha256(out.read_bytes()).hexdigest(), hashlib.sha256(Path(s.labels).read_bytes()).hexdigest()

    assert digest(1, "a") == digest(1, "b")
    assert digest(1, "a") != digest(2, "c")


def test_label_file_matches_the_log(tmp_path: Path) -> None:
    out = tmp_path / "gen.log"
    s = write_generated(GeneratorConfig(blocks=3000, seed=4), out)
    assert s.labels == str(tmp_path / "gen_anomaly_label.csv")
    rows = list(csv.reader(open(s.labels, newline="")))
    assert rows[0] == ["BlockId", "Label"]
    assert {r[1] for r in rows[1:]} == {"Normal", "Anomaly"}
    labels = load_block_labels(s.labels)  # the loghub reader accepts it
    assert len(labels) == len(rows) - 1 == s.blocks == 3000
    blocks_in_log = list(dict.fromkeys(r.block_ids[0] for r in iter_records(out)))
    assert [r[0] for r in rows[1:]] == blocks_in_log  # one row per block, in order of appearance
    assert s.anomalous_blocks == sum(v == lr.LABEL_ANOMALY for v in labels.values())
    assert s.lines == sum(1 for _ in open(out))


def test_anomaly_rate_and_kinds(sample) -> None:
    gen, _ = sample
    n = len(gen.labels)
    anomalies = sum(v == "Anomaly" for v in gen.labels.values())
    assert n == 20_000
    assert 0.025 <= anomalies / n <= 0.035  # 3% by default; binomial sd is 0.12 points here
    assert set(gen.kinds) == {b for b, v in gen.labels.items() if v == "Anomaly"}
    assert set(gen.kinds.values()) == set(ANOMALY_KINDS)
    none = HdfsLogGenerator(GeneratorConfig(blocks=500, anomaly_rate=0.0))
    list(none.lines())
    assert set(none.labels.values()) == {"Normal"}
    high = HdfsLogGenerator(GeneratorConfig(blocks=2000, anomaly_rate=0.5, seed=3))
    list(high.lines())
    assert 0.45 <= sum(v == "Anomaly" for v in high.labels.values()) / 2000 <= 0.55


def test_sessions_have_the_real_shapes(sample) -> None:
    gen, lines = sample
    sessions = _sessions(lines)
    normal = [s for b, s in sessions.items() if gen.labels[b] == "Normal"]
    for s in normal:
        c = collections.Counter(s)
        assert c["E22"] == 1 and c["E5"] == 3 and c["E11"] == c["E9"] == 3
        assert c["E26"] >= c["E5"]  # every replica the namenode heard about
        assert c["E23"] in (0, 3, 4) and c["E21"] == c["E23"]
        if "E23" in s:  # nothing happens to a block after its deletion starts
            assert set(s[s.index("E23"):]) <= {"E23", "E21"}
        assert not set(c) & {"E7", "E10", "E12", "E13", "E14", "E20", "E27", "E28", "E29"}
    # shares of optional events close to the real Normal sessions (sessions_normal.txt)
    real = [line.split() for line in open(DATA / "sessions_normal.txt")]
    for event, key in (("E3", "3"), ("E2", "2"), ("E4", "4")):
        ours = sum(event in s for s in normal) / len(normal)
        theirs = sum(key in s for s in real) / len(real)
        assert abs(ours - theirs) < 0.05, (event, ours, theirs)
    # each anomaly kind carries its signature
    signature = {
        "missing_steps": lambda c: c["E5"] < 3 and c["E26"] == 0,
        "lost_replica": lambda c: c["E26"] < c["E5"],
        "write_exception": lambda c: c["E7"] >= 1 and c["E26"] < c["E5"],
        "serve_exception": lambda c: c["E4"] >= 3 and c["E3"] == 0,
        "replication_timeout": lambda c: c["E29"] >= 1 and c["E25"] >= 2,
        "redundant_add": lambda c: c["E27"] == 1,
        "orphan_add": lambda c: c["E28"] == 1 and c["E23"] >= 1,
        "delete_error": lambda c: c["E20"] == 1 and c["E23"] >= 1,
        "empty_packet": lambda c: c["E13"] == 3,
    }
    for block, kind in gen.kinds.items():
        assert signature[kind](collections.Counter(sessions[block])), (kind, sessions[block])


def test_line_cap_cuts_sessions_and_labels_only_what_appeared() -> None:
    gen = HdfsLogGenerator(GeneratorConfig(lines=5000, seed=2))
    lines = list(gen.lines())
    assert len(lines) == 5000
    assert set(gen.labels) == {line.block_id for line in lines}


def test_gzip_output_and_stdout_need_explicit_labels(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "g.log.gz"
    s = write_generated(GeneratorConfig(blocks=100, seed=1), out)
    assert Path(s.labels) == default_labels_path(out) == tmp_path / "g_anomaly_label.csv"
    with gzip.open(out, "rt") as f:
        assert sum(1 for _ in f) == s.lines
    s = write_generated(GeneratorConfig(blocks=10, seed=1), "-")
    assert s.labels is None
    assert len(capsys.readouterr().out.splitlines()) == s.lines


def test_cli_arguments(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_generate_args(parser)
    out = tmp_path / "cli.log"
    args = parser.parse_args(["-o", str(out), "--blocks", "50", "--seed", "9", "--anomaly-rate", "0.2",
                              "--start", "2008-11-10 08:00:00", "--labels", str(tmp_path / "anomaly_label.csv")])
    assert args.func(args) == 0
    first = parse_line(out.read_text().splitlines()[0])
    assert first.event_time.ToJsonString() == "2008-11-10T08:00:00Z"
    assert len(load_block_labels(tmp_path / "anomaly_label.csv")) == 50
    bad = parser.parse_args(["--blocks", "5", "--anomaly-rate", "2", "-o", str(tmp_path / "x.log")])
    assert bad.func(bad) == 2


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        GeneratorConfig(anomaly_rate=-0.1)
    with pytest.raises(ValueError):
        GeneratorConfig(blocks_per_second=0)
    assert GeneratorConfig().blocks == 10_000
    assert next(generate(GeneratorConfig(blocks=1))).event_id in ("E5", "E22")


def test_a_million_lines_well_under_a_minute(tmp_path: Path) -> None:
    started = time.perf_counter()
    s = write_generated(GeneratorConfig(lines=1_000_000, seed=8), tmp_path / "m.log")
    elapsed = time.perf_counter() - started
    assert s.lines == 1_000_000
    assert elapsed < 30, f"1M lines took {elapsed:.1f} s"
