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

from logmesh.ingest.failure_kinds import (EPISODE_KINDS, TEMPLATES, load_block_kinds, match_new_template,
                                          new_templates)
from logmesh.ingest.generator import (ANOMALY_KINDS, FAILURE_KINDS, GeneratorConfig, HdfsLogGenerator,
                                      add_generate_args, default_kinds_path, default_labels_path, generate,
                                      parse_failure_kinds, write_generated)
from logmesh.ingest.hdfs import parse_line
from logmesh.ingest.reader import iter_records, load_block_labels
from logmesh.ingest.templates import match_template
from logmesh.v1 import log_record_pb2 as lr

DATA = Path(__file__).resolve().parents[3] / "shared/data/hdfs"


@pytest.fixture(scope="module")
def sample() -> tuple[HdfsLogGenerator, list]:
    gen = HdfsLogGenerator(GeneratorConfig(blocks=20_000, seed=11))
    return gen, list(gen.lines())


def _sessions(lines: list) -> dict[str, list[str]]:
    sessions: dict[str, list[str]] = collections.defaultdict(list)
    for line in lines:
        if line.block_id:
            sessions[line.block_id].append(line.event_id)
    return sessions


# HDFS_v1 templates that generated normal blocks never have; the new kinds must not write them.
_HDFS_FAILURE_EVENTS = {"E1", "E7", "E8", "E10", "E12", "E13", "E14", "E15", "E17", "E19", "E20", "E24",
                        "E27", "E28", "E29"}


@pytest.fixture(scope="module")
def episodes() -> tuple[HdfsLogGenerator, list]:
    """Only the new kinds, often enough that every template shows up."""
    gen = HdfsLogGenerator(GeneratorConfig(blocks=12_000, seed=3, anomaly_rate=0.05,
                                           anomaly_kinds=parse_failure_kinds("episodes")))
    return gen, list(gen.lines())


def test_every_line_parses_to_the_intended_template(sample) -> None:
    _, lines = sample
    mismatches = collections.Counter()
    for line in lines:
        r = parse_line(line.text)
        if line.event_id in TEMPLATES:  # a line HDFS_v1 never had: parses, but to no HDFS_v1 template
            new = match_new_template(r.message)
            ok = (r.template_id == "unknown" and new is not None and new.id == line.event_id
                  and r.component == new.component and r.HasField("event_time")
                  and list(r.block_ids) == ([line.block_id] if line.block_id else []))
        else:
            ok = r.template_id == line.event_id and r.block_ids and r.block_ids[0] == line.block_id and r.component
        if not ok:
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
    def digest(seed: int, name: str) -> tuple[str, str, str]:
        out = tmp_path / f"{name}.log"
        s = write_generated(GeneratorConfig(blocks=6000, seed=seed), out)
        assert s.by_kind.keys() & set(EPISODE_KINDS)  # the episodes take part
        return tuple(hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in (out, s.labels, s.kinds))

    assert digest(1, "a") == digest(1, "b")
    assert digest(1, "a") != digest(2, "c")


def test_hdfs_v1_kinds_alone_write_what_the_generator_wrote_before_episodes(tmp_path: Path) -> None:
    # sha256 of the log and labels the generator wrote for this config at b5005e3, before episodes
    # existed: selecting only HDFS_v1's kinds must not change a byte (old seeds, old files). The log's
    # changed once since, on purpose: re-replications write the lines real HDFS writes (the new replica's
    # "Receiving block", ...) and most are left alone afterwards, as the real ones are; their lines draw from
    # their own stream, so the labels and every other block's lines stayed.
    out = tmp_path / "v1.log"
    s = write_generated(GeneratorConfig(blocks=2000, seed=1, anomaly_kinds=parse_failure_kinds("hdfs_v1")), out)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == \
        "33d8a23424d6631dafab7005e2cc61df93989a933c94f50b0998c054c83b6986"
    assert hashlib.sha256(Path(s.labels).read_bytes()).hexdigest() == \
        "a2fea0e89f3a228e8bd863afc19e5f030455ecf0eefe67cb3aad62fe74a4c618"
    assert not s.by_kind.keys() & set(EPISODE_KINDS)


def test_label_file_matches_the_log(tmp_path: Path) -> None:
    out = tmp_path / "gen.log"
    s = write_generated(GeneratorConfig(blocks=3000, seed=4), out)
    assert s.labels == str(tmp_path / "gen_anomaly_label.csv")
    rows = list(csv.reader(open(s.labels, newline="")))
    assert rows[0] == ["BlockId", "Label"]
    assert {r[1] for r in rows[1:]} == {"Normal", "Anomaly"}
    labels = load_block_labels(s.labels)  # the loghub reader accepts it
    assert len(labels) == len(rows) - 1 == s.blocks == 3000
    blocks_in_log = list(dict.fromkeys(r.block_ids[0] for r in iter_records(out) if r.block_ids))
    assert [r[0] for r in rows[1:]] == blocks_in_log  # one row per block, in order of appearance
    assert s.anomalous_blocks == sum(v == lr.LABEL_ANOMALY for v in labels.values())
    assert s.lines == sum(1 for _ in open(out))


@pytest.mark.parametrize("cap", [{"blocks": 6000}, {"lines": 40_000}])
def test_kinds_file_agrees_with_the_labels(tmp_path: Path, cap: dict) -> None:
    out = tmp_path / "gen.log"
    s = write_generated(GeneratorConfig(seed=8, **cap), out)
    assert s.kinds == str(default_kinds_path(out)) == str(tmp_path / "gen_kinds.csv")
    rows = list(csv.reader(open(s.kinds, newline="")))
    assert rows[0] == ["BlockId", "Kind"]
    kinds = load_block_kinds(s.kinds)
    labels = list(csv.reader(open(s.labels, newline="")))[1:]
    # exactly the Anomaly blocks, in the labels' order, each with a known kind
    assert [r[0] for r in rows[1:]] == [b for b, label in labels if label == "Anomaly"]
    assert len(kinds) == len(rows) - 1 == s.anomalous_blocks > 0
    assert set(kinds.values()) <= set(FAILURE_KINDS)
    assert s.by_kind == dict(collections.Counter(kinds.values()))


def test_load_block_kinds_rejects_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "k.csv"
    bad.write_text("BlockId,Label\nblk_1,Anomaly\n")
    with pytest.raises(ValueError, match="BlockId,Kind"):
        load_block_kinds(bad)
    bad.write_text("BlockId,Kind\nblk_1,\n")
    with pytest.raises(ValueError, match=":2:"):
        load_block_kinds(bad)


def test_anomaly_rate_and_kinds(sample) -> None:
    gen, _ = sample
    n = len(gen.labels)
    anomalies = sum(v == "Anomaly" for v in gen.labels.values())
    assert n == 20_000
    assert 0.025 <= anomalies / n <= 0.035  # 3% by default; binomial sd is 0.12 points here
    assert set(gen.kinds) == {b for b, v in gen.labels.items() if v == "Anomaly"}
    assert set(gen.kinds.values()) == set(FAILURE_KINDS)  # the default mix: HDFS_v1's kinds and the episodes
    assert set(FAILURE_KINDS) == set(ANOMALY_KINDS) | set(EPISODE_KINDS)
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
        assert c["E22"] == 1 and c["E5"] == 3 + c["E6"] and c["E11"] == c["E9"] == 3
        assert c["E26"] >= c["E5"]  # every replica the namenode heard about
        assert c["E23"] in (0, 3, 4) and c["E21"] == c["E23"] + c["E16"]  # + the excess replica of a re-replication
        if "E23" in s:  # nothing happens to a block after its deletion starts
            assert set(s[s.index("E23"):]) <= {"E23", "E21"}
        assert not set(c) & {"E7", "E10", "E12", "E13", "E14", "E20", "E27", "E28", "E29"}
    # shares of optional events close to the real Normal sessions (sessions_normal.txt)
    real = [line.split() for line in open(DATA / "sessions_normal.txt")]
    for event, key in (("E3", "3"), ("E2", "2"), ("E4", "4")):
        ours = sum(event in s for s in normal) / len(normal)
        theirs = sum(key in s for s in real) / len(real)
        assert abs(ours - theirs) < 0.05, (event, ours, theirs)
    # a normal re-replicated block holds what the real ones hold (sessions_normal.txt: all 18 have the new
    # replica's "Receiving block", so E5 = E9 + E6, one E16, E18 and E25 per E6, and E26 two per round)
    def rerep_shape(c):
        return (c["E5"] == c["E9"] + c["E6"], c["E16"] == c["E18"] == c["E25"] == c["E6"],
                c["E26"] - c["E9"] == 2 * c["E6"])
    real_rerep = [collections.Counter("E" + k for k in s) for s in real if "16" in s]
    ours_rerep = [collections.Counter(s) for s in normal if "E16" in s]
    assert len(real_rerep) >= 10 and len(ours_rerep) >= 10
    def shares(rows):
        shapes = [rerep_shape(c) for c in rows]
        return [sum(t[i] for t in shapes) / len(shapes) for i in range(3)]
    assert min(shares(real_rerep)) >= 0.8, shares(real_rerep)  # what the generator is checked against
    assert shares(ours_rerep) == [1.0, 1.0, 1.0], shares(ours_rerep)
    quiet = lambda rows: sum(not (c["E23"] or c["E3"] or c["E4"] or c["E2"]) for c in rows) / len(rows)
    assert quiet(real_rerep) >= 0.8 and quiet(ours_rerep) >= 0.7  # nothing read, verified or deleted after it
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
        # the new kinds: evidence in lines HDFS_v1 never had (see test_each_episode_kind_...)
        "memory_leak": lambda c: c["E5"] - c["E6"] == 3 and (c["ML2"] + c["ML3"] + c["ML4"] + c["ML5"]) >= 1,
        "oom": lambda c: c["E5"] - c["E6"] == 3 and c["E11"] == 0 and c["PR1"] == c["PR2"] == c["PR3"] == 1,
        "disk_full": lambda c: c["E5"] - c["E6"] == 3 and c["DF2"] == 1 and c["PR1"] == 1,
        "network_partition": lambda c: (c["NP3"] == 1 and c["E5"] < 3 and c["E26"] == 0)
        or (c["NP6"] >= 1 and c["PR1"] == 1),
    }
    for block, kind in gen.kinds.items():
        assert signature[kind](collections.Counter(sessions[block])), (kind, sessions[block])


def test_each_episode_kind_writes_its_own_new_templates(episodes) -> None:
    gen, lines = episodes
    sessions = _sessions(lines)
    by_kind = collections.defaultdict(list)
    for block, kind in gen.kinds.items():
        by_kind[kind].append(block)
    assert set(by_kind) == set(EPISODE_KINDS)
    evidence = {k: {t.id for t in ts if t.names_block} for k, ts in new_templates().items()}
    for kind, blocks in by_kind.items():
        allowed = {t.id for t in new_templates(kind)[kind]}
        for block in blocks:
            events = set(sessions[block])
            new = events & set(TEMPLATES)
            assert new & evidence[kind], (kind, sessions[block])  # every failing block names its failure
            assert new <= allowed, (kind, new - allowed)
            assert not events & _HDFS_FAILURE_EVENTS, (kind, sessions[block])  # nothing a model already knows
    assert set(TEMPLATES) == {line.event_id for line in lines} & set(TEMPLATES)  # every template is used
    seen_by_kind = {k: set().union(*(sessions[b] for b in bs)) & set(TEMPLATES) for k, bs in by_kind.items()}
    for kind in EPISODE_KINDS:  # and each kind's block templates show up on its own blocks
        assert evidence[kind] <= seen_by_kind[kind], (kind, evidence[kind] - seen_by_kind[kind])


def test_lines_that_name_no_block_carry_no_block_id(episodes) -> None:
    _, lines = episodes
    blockless = [line for line in lines if not line.block_id]
    assert blockless and all("blk_" not in line.text and line.event_id in TEMPLATES for line in blockless)
    assert {line.event_id for line in blockless} >= {"ML1", "ML6", "ML7", "OM1", "DF1", "NP1", "NP7", "RS1", "RS2"}
    assert all(not TEMPLATES[line.event_id].names_block for line in blockless)
    assert all(line.block_id in line.text for line in lines if line.block_id)


def test_a_memory_leak_pauses_ever_longer_then_runs_out_of_heap_and_restarts() -> None:
    gen = HdfsLogGenerator(GeneratorConfig(blocks=4000, seed=2, anomaly_rate=0.003,
                                           anomaly_kinds=parse_failure_kinds("memory_leak")))
    events = [(line.event_id, line.text) for line in gen.lines() if line.event_id in ("ML1", "ML7", "RS1", "RS2")]
    episodes, pauses = [], []
    for eid, text in events:
        if eid == "ML1":
            pauses.append(int(text.rsplit("approximately ", 1)[1].removesuffix("ms")))
        elif eid == "ML7" and pauses:
            episodes.append(pauses)
            pauses = []
    assert len(episodes) >= 2
    for p in episodes:
        assert len(p) >= 3 and p[-1] > 4 * p[0] and max(p) > 8000, p  # from ~0.4 s to many seconds
    order = [eid for eid, _ in events if eid != "ML1"]
    assert order.index("ML7") < order.index("RS1") < order.index("RS2")  # OOM, shutdown, startup
    assert set(gen.kinds.values()) == {"memory_leak"}


def test_episode_kinds_alone_keep_the_rate(episodes) -> None:
    gen, _ = episodes
    share = sum(v == "Anomaly" for v in gen.labels.values()) / len(gen.labels)
    assert 0.04 <= share <= 0.06  # asked 5%; episodes pay back the draws they take


def test_new_templates_are_not_hdfs_v1_templates() -> None:
    for kind, templates in new_templates().items():
        assert any(t.names_block for t in templates), kind
        for t in templates:
            message = t.render(**{f: "blk_-42" if f == "bid" else "10.250.1.2" for f in t.fields}).split(": ", 1)[1]
            assert match_template(message) is None, (t.id, message)
            assert match_new_template(message) == t
            assert "<*>" in t.pattern or not t.fields
    assert set(new_templates("oom")) == {"oom"}
    with pytest.raises(ValueError, match="unknown failure kind"):
        new_templates("gremlins")


def test_failure_kinds_spec() -> None:
    assert parse_failure_kinds("all") == FAILURE_KINDS
    assert parse_failure_kinds("hdfs_v1") == ANOMALY_KINDS
    assert parse_failure_kinds("memory_leak,oom=0.5") == {"memory_leak": FAILURE_KINDS["memory_leak"], "oom": 0.5}
    assert set(parse_failure_kinds("hdfs_v1, disk_full")) == set(ANOMALY_KINDS) | {"disk_full"}
    for bad, why in (("gremlins", "unknown failure kind"), ("oom=x", "bad weight"), ("oom=-1", "bad weight"),
                     ("oom=0", "no kind with a positive weight"), ("", "no kind")):
        with pytest.raises(ValueError, match=why):
            parse_failure_kinds(bad)
    with pytest.raises(ValueError, match="unknown failure kind"):
        GeneratorConfig(anomaly_kinds={"gremlins": 1.0})


def test_line_cap_cuts_sessions_and_labels_only_what_appeared() -> None:
    gen = HdfsLogGenerator(GeneratorConfig(lines=5000, seed=2))
    lines = list(gen.lines())
    assert len(lines) == 5000
    assert set(gen.labels) == {line.block_id for line in lines} - {""}


def test_gzip_output_and_stdout_need_explicit_labels(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "g.log.gz"
    s = write_generated(GeneratorConfig(blocks=100, seed=1), out)
    assert Path(s.labels) == default_labels_path(out) == tmp_path / "g_anomaly_label.csv"
    with gzip.open(out, "rt") as f:
        assert sum(1 for _ in f) == s.lines
    s = write_generated(GeneratorConfig(blocks=10, seed=1), "-")
    assert s.labels is None and s.kinds is None
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
    assert load_block_kinds(tmp_path / "cli_kinds.csv")
    args = parser.parse_args(["-o", str(out), "--blocks", "300", "--anomaly-rate", "0.3", "--failure-kinds", "oom",
                              "--kinds", str(tmp_path / "k.csv")])
    assert args.func(args) == 0
    assert set(load_block_kinds(tmp_path / "k.csv").values()) == {"oom"}
    bad = parser.parse_args(["--blocks", "5", "--anomaly-rate", "2", "-o", str(tmp_path / "x.log")])
    assert bad.func(bad) == 2
    bad = parser.parse_args(["--blocks", "5", "--failure-kinds", "oom,gremlins", "-o", str(tmp_path / "x.log")])
    assert bad.func(bad) == 2
    assert not (tmp_path / "x.log").exists()  # a user mistake writes nothing


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
