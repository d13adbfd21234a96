"""Similar past cases: the index on its own (scorer/similar.py), the history's cost on the scoring path, and
ListAnomalies / WatchAnomalies through the real scorer on real HDFS lines and blocks."""
from __future__ import annotations

import csv
import re
import string
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from logmesh.ingest.hdfs import parse_line
from logmesh.scorer.history import AnomalyHistory, block_profile
from logmesh.scorer.similar import Case, Item, SimilarIndex
from logmesh.v1 import log_record_pb2, score_pb2, scorer_service_pb2 as spb

ANOMALY = score_pb2.VERDICT_ANOMALY


def unit(*xs: float) -> np.ndarray:
    v = np.asarray(xs, np.float32)
    return v / np.linalg.norm(v)


def item(key: str, vector: np.ndarray | None, case_id: str) -> Item:
    return Item(key, vector, Case(case_id, f"text of {key}"))


# --- the index ---------------------------------------------------------------------------------------------

def test_nearest_first_with_cosine_similarities():
    index = SimilarIndex(dim=3, k=5)
    index.add([item("x", unit(1, 0, 0), "a"), item("xy", unit(1, 1, 0), "b"), item("z", unit(0, 0, 1), "c"),
               item("xz", unit(1, 0, 0.2), "d")])
    [found] = index.add([item("q", unit(1, 0.1, 0), "q")])
    assert [case.id for _, case in found] == ["a", "d", "b", "c"]
    sims = [s for s, _ in found]
    assert sims == sorted(sims, reverse=True)
    assert sims[0] == pytest.approx(float(unit(1, 0.1, 0) @ unit(1, 0, 0)), abs=1e-6)
    assert sims[-1] == pytest.approx(0.0, abs=1e-6)


def test_only_earlier_cases_and_never_itself():
    index = SimilarIndex(dim=2, k=5)
    first, second, third = index.add([item("s", unit(1, 0), "r1"), item("s", unit(1, 0), "r2"),
                                      item("t", unit(1, 1), "r3")])
    assert first == []                                   # nothing came before it
    assert [c.id for _, c in second] == ["r1"]           # the earlier line of its shape, not itself
    assert [c.id for _, c in third] == ["r2"]            # the newest case of that shape
    [again] = index.add([item("s", unit(1, 0), "r2")])   # the same record again: its other case, not itself
    assert [c.id for _, c in again][0] == "r1"


def test_distinct_cases_not_one_shape_five_times():
    index = SimilarIndex(dim=3, k=3)
    index.add([item("same", unit(1, 0, 0), f"r{i}") for i in range(50)])  # fifty lines of one shape
    index.add([item("near", unit(1, 0.5, 0), "n"), item("far", unit(0, 1, 1), "f")])
    [found] = index.add([item("same", None, "new")])  # a known key needs no vector
    assert [c.id for _, c in found] == ["r49", "n", "f"]
    assert found[0][0] == pytest.approx(1.0)
    assert len({c.text for _, c in found}) == 3


def test_an_unknown_key_without_a_vector_is_skipped():
    index = SimilarIndex(dim=2)
    assert index.add([item("ghost", None, "g")]) == [[]]
    assert len(index) == 0


def test_bounded_least_recently_seen_key_goes_first():
    index = SimilarIndex(dim=8, capacity=4, k=10)
    rng = np.random.default_rng(0)
    vectors = {f"k{i}": rng.normal(size=8) for i in range(10)}
    for i in range(4):
        index.add([item(f"k{i}", vectors[f"k{i}"], f"r{i}")])
    index.add([item("k0", None, "r0b")])  # k0 seen again: k1 is now the least recent
    for i in range(4, 6):
        index.add([item(f"k{i}", vectors[f"k{i}"], f"r{i}")])
    assert len(index) == 4 and index.evicted == 2
    assert index.vector("k1") is None and index.vector("k2") is None and index.vector("k0") is not None
    [found] = index.add([item("probe", rng.normal(size=8), "p")])
    assert {c.id for _, c in found} == {"r0b", "r3", "r4", "r5"}


def test_concurrent_adds_keep_every_case():
    index = SimilarIndex(dim=16, capacity=10_000, k=3)
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(400, 16)).astype(np.float32)
    errors: list[BaseException] = []

    def worker(w: int) -> None:
        try:
            for b in range(25):
                index.add([item(f"w{w}-{b}-{i}", vectors[(w * 100 + b * 4 + i) % 400], f"{w}-{b}-{i}")
                           for i in range(4)])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(index) == 400
    [found] = index.add([item("probe", vectors[7], "probe")])
    assert found[0][0] == pytest.approx(1.0, abs=1e-5)


# --- the history's cost on the scoring path ----------------------------------------------------------------

def _word(n: int) -> str:  # masking keeps letters: distinct words give distinct line shapes
    letters = string.ascii_lowercase
    out = ""
    while True:
        n, r = divmod(n, 26)
        out = letters[r] + out
        if n == 0:
            return out


def _results(kinds: list[int], prefix: str) -> list[score_pb2.ScoreResult]:
    return [score_pb2.ScoreResult(record_id=f"{prefix}{i}", verdict=ANOMALY, component="dfs.DataNode$DataXceiver",
                                  message=f"writeBlock blk_{i} received exception failure {_word(k)}")
            for i, k in enumerate(kinds)]


def history_add_cost(past: int = 100_000, past_kinds: int = 2_000, batch_kinds: int = 32,
                     repeats: int = 20) -> tuple[AnomalyHistory, float, float]:
    """Median and fastest seconds for one add_lines of 256 flagged lines (line shapes computed too), with `past` anomalies
    of `past_kinds` distinct shapes recorded before; a quarter of each batch's shapes are new."""
    rng = np.random.default_rng(2)
    history = AnomalyHistory()
    dim = 384
    table = rng.normal(size=(past_kinds + repeats * batch_kinds, dim)).astype(np.float32)
    from logmesh.ingest.masking import line_shape
    shape_of = lambda r: line_shape(r.component, r.message)  # noqa: E731
    kinds = rng.integers(0, past_kinds, past)
    for start in range(0, past, 4096):  # fill: 100k past cases
        chunk = _results(list(kinds[start:start + 4096]), f"past{start}-")
        history.add_lines(chunk, {shape_of(r): table[k] for r, k in zip(chunk, kinds[start:start + 4096])})
    timings = []
    for rep in range(repeats):
        known = rng.integers(0, past_kinds, batch_kinds - batch_kinds // 4)
        fresh = past_kinds + rep * batch_kinds + np.arange(batch_kinds // 4)
        batch_kinds_ = np.concatenate([known, fresh])
        picks = rng.choice(batch_kinds_, 256)
        batch = _results(list(picks), f"b{rep}-")
        vectors = {shape_of(r): table[k] for r, k in zip(batch, picks)}
        started = time.perf_counter()
        history.add_lines(batch, vectors)
        timings.append(time.perf_counter() - started)
    return history, float(np.median(timings)), min(timings)


def test_a_full_history_indexes_distinct_shapes_only():
    """A history of 100k past anomalies keeps one index row per distinct shape. The add's cost is printed,
    not asserted (speed lives in benchmarks: docs/benchmarks.md)."""
    history, seconds, fastest = history_add_cost()
    print(f"\nhistory add of 256 flagged lines, 100k past cases (2,000 distinct shapes): median {seconds * 1e3:.2f} ms, "
          f"fastest {fastest * 1e3:.2f} ms")
    assert len(history) == 100_000  # the history is full; the index holds distinct shapes only
    assert len(history.similar_lines) == 2_000 + 20 * 8
    newest = history.page(1, None)[0][0].line
    assert len(newest.similar) == 5 and newest.similar[0].similarity == pytest.approx(1.0, abs=1e-5)


# --- through the real scorer ---------------------------------------------------------------------------------

def _labels(data_dir) -> dict[str, int]:
    with open(data_dir / "anomaly_label.csv") as f:
        return {r["BlockId"]: log_record_pb2.LABEL_ANOMALY if r["Label"] == "Anomaly" else log_record_pb2.LABEL_NORMAL
                for r in csv.DictReader(f)}


def _records(path, source: str, labels: dict[str, int]) -> list[log_record_pb2.LogRecord]:
    out = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if line.strip():
            record = parse_line(line, source, n)
            if record.block_ids:
                record.label = labels.get(record.block_ids[0], 0)
            out.append(record)
    return out


def _ours(scorer, prefix: str) -> list[score_pb2.Anomaly]:
    """This test's line entries in the history, oldest first."""
    page = scorer.anomalies(page_size=1000)
    return [e for e in reversed(page.anomalies) if e.HasField("line") and e.line.record_id.startswith(prefix)]


def test_list_anomalies_gives_each_flagged_line_its_similar_past_lines(scorer, data_dir):
    prefix = f"similar-{uuid.uuid4().hex[:8]}/"
    labels = _labels(data_dir)
    watched: list[score_pb2.Anomaly] = []
    watch = scorer.stub.WatchAnomalies(spb.WatchAnomaliesRequest(), timeout=300)  # a live tail, from now on

    def tail() -> None:
        try:
            for reply in watch:
                watched.append(reply.anomaly)
        except Exception:  # noqa: BLE001 - cancelled at the end
            pass

    threading.Thread(target=tail, daemon=True).start()
    time.sleep(1.0)  # the watcher is registered before anything is scored
    records = _records(data_dir / "HDFS_20000.log", prefix + "HDFS_20000.log", labels)
    records += _records(data_dir / "HDFS_5k.log", prefix + "HDFS_5k.log", labels)
    exception = parse_line("081109 214043 2561 INFO dfs.DataNode$DataXceiver: writeBlock blk_-3102267849859399193 "
                           "received exception java.io.IOException: Could not read from stream", prefix + "probe", 1)
    scored = list(scorer.score_stream([spb.ScoreItem(record=r) for r in records + [exception]]))
    assert not [s for s in scored if s.HasField("error")]

    entries = _ours(scorer, prefix)
    by_id = {e.line.record_id: e.line for e in entries}
    position = {e.line.record_id: n for n, e in enumerate(entries)}
    texts = [e.line.message for e in entries]
    # the real anomalous lines of these two files (loghub E7, E10, E14, E20, E28) were flagged, in order
    assert sum("writeBlock" in t for t in texts) == 4 and sum("Unexpected error trying to delete" in t for t in texts) == 5
    for e in entries:
        sims = [s.similarity for s in e.line.similar]
        assert sims == sorted(sims, reverse=True) and len(sims) <= 5
        assert e.line.record_id not in {s.id for s in e.line.similar}          # never itself
        assert all(position[s.id] < position[e.line.record_id] for s in e.line.similar if s.id in position)  # earlier
        assert len({s.text for s in e.line.similar}) == len(e.line.similar)  # distinct cases
        assert all(s.verdict == ANOMALY for s in e.line.similar)

    # HDFS_5k repeats HDFS_20000's PacketResponder EOFException: its nearest past case is that very line
    [first_eof] = [e.line for e in entries if "EOFException" in e.line.message and "HDFS_20000" in e.line.record_id]
    [later_eof] = [e.line for e in entries if "EOFException" in e.line.message and "HDFS_5k" in e.line.record_id]
    top = later_eof.similar[0]
    assert top.id == first_eof.record_id and top.similarity == pytest.approx(1.0, abs=1e-4)
    assert top.text == first_eof.message and top.label == log_record_pb2.LABEL_ANOMALY

    # five failed deletes: each later one's nearest past case is the previous failed delete, listed once
    deletes = [e.line for e in entries if "Unexpected error trying to delete" in e.line.message]
    for before, after in zip(deletes, deletes[1:]):
        assert after.similar[0].id == before.record_id
        assert sum("Unexpected error trying to delete" in s.text for s in after.similar) == 1

    # a writeBlock exception never seen before: its nearest past cases are the earlier writeBlock exceptions
    probe = by_id[exception.id]
    assert "Could not read from stream" in probe.message
    top2 = [s.text for s in probe.similar[:2]]
    assert all("writeBlock" in t and "received exception" in t for t in top2), [s.text for s in probe.similar]
    assert probe.similar[0].similarity > 0.8

    # WatchAnomalies carries the same similar cases
    deadline = time.time() + 10
    while time.time() < deadline and exception.id not in {w.line.record_id for w in watched if w.HasField("line")}:
        time.sleep(0.1)
    watch.cancel()
    [live] = [w.line for w in watched if w.HasField("line") and w.line.record_id == exception.id]
    assert [s.id for s in live.similar] == [s.id for s in probe.similar]


def test_list_anomalies_gives_each_flagged_block_its_similar_past_blocks(scorer, data_dir):
    """HDFS_5k's complete sessions hold three kinds of failing blocks (loghub's E20 failed delete, E28 addStoredBlock
    for a deleted file, E7/E14 write exceptions); a block's nearest earlier blocks failed the same way."""
    labels = _labels(data_dir)
    events: dict[str, list[str]] = defaultdict(list)
    for line in (data_dir / "HDFS_5k.log").read_text(errors="replace").splitlines():
        if line.strip():
            record = parse_line(line)
            for block in record.block_ids:
                events[block].append(record.template_id)
    sessions = [spb.BlockSession(block_id=b, events=e, closed=True, label=labels.get(b, 0)) for b, e in events.items()]
    results = list(scorer.score_blocks(sessions))
    failing = [r.verdict for r in results if r.verdict.verdict == ANOMALY]
    kinds = {v.block_id: ("E20" if "E20" in v.events else "E28" if "E28" in v.events else "E7") for v in failing}
    assert sorted(kinds.values()) == ["E20"] * 5 + ["E28"] * 4 + ["E7"]

    finals = {}
    for block_id in kinds:
        [newest, *_] = [e.block for e in scorer.anomalies(page_size=50, block_id=block_id).anomalies
                        if e.HasField("block")]
        assert newest.kind == score_pb2.BLOCK_VERDICT_KIND_FINAL
        finals[block_id] = newest
    order = list(kinds)
    for n, block_id in enumerate(order):
        similar = finals[block_id].similar
        assert block_id not in {s.id for s in similar}
        sims = [s.similarity for s in similar]
        assert sims == sorted(sims, reverse=True)
        earlier_same_kind = [b for b in order[:n] if kinds[b] == kinds[block_id]]
        if earlier_same_kind:  # the nearest past block failed the same way (its summary names the event)
            assert re.search(rf"\b{kinds[block_id]}(x\d+)?\b", similar[0].text), similar[0].text
            assert similar[0].label == log_record_pb2.LABEL_ANOMALY
    # blocks with the very same events are one case: the later E28 blocks list one E28 block, the newest earlier
    e28 = [b for b in order if kinds[b] == "E28"]
    assert sum(s.id in e28 for s in finals[e28[-1]].similar) == 1
    assert finals[e28[-1]].similar[0].id == e28[-2] and finals[e28[-1]].similar[0].similarity == pytest.approx(1.0)


def test_block_profile_weighs_how_a_block_failed():
    evidence = {"E20", "E28"}
    routine = {"E5": 3, "E22": 1, "E11": 3, "E9": 3, "E26": 3, "E2": 3, "E4": 15, "E3": 1, "E23": 3, "E21": 3}
    deleted = block_profile({**routine, "E20": 1}, evidence)
    orphan = block_profile({**routine, "E28": 1}, evidence)
    other_delete = block_profile({"E5": 3, "E22": 1, "E11": 3, "E9": 3, "E3": 203, "E26": 3, "E23": 3, "E21": 3,
                                  "E20": 1}, evidence)
    assert np.linalg.norm(deleted) == pytest.approx(1.0)
    assert float(deleted @ other_delete) > 0.8 > 0.2 + 1e-6 >= float(deleted @ orphan)


# --- the CLI ------------------------------------------------------------------------------------------------

LOGMESH = str(Path(sys.executable).with_name("logmesh"))
WRITE_EXCEPTIONS = [  # HDFS_20000's writeBlock exception, then one of a shape no other test scores
    "081109 203633 147 INFO dfs.DataNode$DataXceiver: writeBlock blk_-3102267849859399193 received exception "
    "java.net.SocketTimeoutException",
    "081109 214043 2561 INFO dfs.DataNode$DataXceiver: writeBlock blk_-3102267849859399193 received exception "
    "java.io.IOException: Broken pipe",
]


def test_logmesh_anomalies_and_tail_show_similar_cases(scorer, scorer_server):
    tail = subprocess.Popen([LOGMESH, "tail", "--scorer", scorer_server.address], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert "watching anomalies" in tail.stderr.readline()
        time.sleep(1.0)  # connected before the lines are scored
        for line in WRITE_EXCEPTIONS:
            assert scorer.score_line(line).verdict == ANOMALY
        listed = subprocess.run([LOGMESH, "anomalies", "--scorer", scorer_server.address, "--limit", "1"],
                                capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
        # the newest entry, then up to three of its nearest earlier cases, the nearest another writeBlock exception
        assert "Broken pipe" in listed[0] and 2 <= len(listed) <= 4  # at most three similar cases shown
        assert all(s.startswith("      similar ") for s in listed[1:]), listed
        assert "writeBlock" in listed[1] and "received exception" in listed[1] and "Broken pipe" not in listed[1]
        similarities = [float(s.split()[1]) for s in listed[1:]]
        assert 0.8 < similarities[0] < 1.0 and similarities == sorted(similarities, reverse=True)
        shown: list[str] = []  # what `logmesh tail` printed meanwhile (read by a thread: readline blocks)
        threading.Thread(target=lambda: shown.extend(iter(tail.stdout.readline, "")), daemon=True).start()
        deadline = time.time() + 20
        while time.time() < deadline and listed[1].strip() not in [s.strip() for s in shown]:
            time.sleep(0.1)
        assert "Broken pipe" in "".join(shown) and listed[1].strip() in [s.strip() for s in shown], shown
    finally:
        tail.terminate()
        tail.wait(10)
