"""Faults survived (issue 8), each caused against the real parts: a `logmesh serve scorer` process
SIGKILLed mid-stream, the embedder down when the job starts, the Spark job (`logmesh stream`) SIGKILLed
mid-replay at three different points, and a private Kafka broker restarted mid-replay. After each,
every input line has exactly one committed ScoreResult, every block and every anomalous line exactly
one vector-store point, and no block alert is repeated. Each test records its docs/reliability.md rows."""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from logmesh.client import EmbedderClient, ScorerClient
from logmesh.ingest.hdfs import block_ids
from logmesh.ingest.producer import run_ingest
from logmesh.streaming.job import StreamConfig, run
from logmesh.streaming.vector_store import open_store
from logmesh.v1 import score_pb2
from waiting import wait_for

from job_log import json_lines, scored_by_batch
from kafka_helpers import BOOTSTRAP, CommittedCount, _consume_all, _topics

pytestmark = [pytest.mark.kafka, pytest.mark.spark]
REPO = Path(__file__).resolve().parents[2]
LOGMESH = str(Path(sys.executable).with_name("logmesh"))
KAFKA_SH = str(REPO / "deploy/kafka/kafka.sh")
OUTAGE_S = 5


# ---- helpers ------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slice(data_dir: Path, path: Path, start: int, count: int) -> list[str]:
    with open(data_dir / "HDFS_20000.log", encoding="utf-8") as src:
        lines = src.read().splitlines(keepends=True)[start:start + count]
    path.write_text("".join(lines))
    return lines


def _check_results(config: StreamConfig, lines: list[str], qdrant: Path, bootstrap: str = BOOTSTRAP) -> dict:
    """Every line exactly one committed ScoreResult; every block and anomalous line exactly one point;
    no block alert twice. Returns the counts for the reliability row."""
    scores = [score_pb2.ScoreResult.FromString(m.value()) for m in _consume_all(config.scores_topic, bootstrap)]
    ids = Counter(r.record_id for r in scores)
    assert len(ids) == len(lines), f"{len(lines) - len(ids)} lines have no ScoreResult"
    dupes = {k: n for k, n in ids.items() if n > 1}
    assert not dupes, f"{len(dupes)} lines scored more than once, e.g. {list(dupes.items())[:3]}"
    flagged = {r.record_id for r in scores if r.verdict == score_pb2.VERDICT_ANOMALY}
    blocks = {b for line in lines for b in block_ids(line)}
    store = open_store(path=str(qdrant))
    try:
        block_points, line_points = store.count({"kind": "block"}), store.count({"kind": "line"})
    finally:
        store.close()
    assert block_points == len(blocks), f"{block_points} block points for {len(blocks)} blocks"
    assert line_points == len(flagged), f"{line_points} line points for {len(flagged)} anomalous lines"
    anomalies = [score_pb2.Anomaly.FromString(m.value()) for m in _consume_all(config.anomalies_topic, bootstrap)]
    alerts = Counter(a.block.block_id for a in anomalies
                     if a.block.block_id and a.block.kind == score_pb2.BLOCK_VERDICT_KIND_ALERT)
    assert not alerts or max(alerts.values()) == 1, f"repeated alerts: {[b for b, n in alerts.items() if n > 1]}"
    line_alerts = Counter(a.line.record_id for a in anomalies if a.line.record_id)
    assert set(line_alerts) == flagged and (not line_alerts or max(line_alerts.values()) == 1)
    return {"lines": len(lines), "blocks": len(blocks), "anomalous_lines": len(flagged), "alerts": len(alerts)}


class _Records(logging.Handler):
    """Keeps the log records of one logger (the job's own logs: retries, waits, restarts)."""

    def __init__(self, name: str) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.logger = logging.getLogger(name)
        self._level = self.logger.level

    def __enter__(self) -> "_Records":
        self.logger.addHandler(self)
        self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self._level)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def matching(self, text: str) -> list[logging.LogRecord]:
        return [r for r in self.records if text in r.getMessage()]


def _start_scorer(port: int, models: Path, embedder: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([LOGMESH, "serve", "scorer", "--port", str(port), "--model-dir", str(models),
                             "--embedder", embedder, "--reload-interval", "60"],
                            stdout=subprocess.DEVNULL, stderr=open(log, "a"))


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# ---- the scorer SIGKILLed mid-stream ------------------------------------------------------------

def test_scorer_killed_mid_stream_is_retried_and_nothing_is_lost(admin, embedder_server, trained_models, data_dir,
                                                                   tmp_path, reliability):
    config = _topics(admin, f"f{uuid.uuid4().hex[:8]}")
    lines = _slice(data_dir, tmp_path / "head.log", 5200, 1500)  # holds the writeBlock failure (line 6,336)
    port = _free_port()
    scorer_log = tmp_path / "scorer.log"
    scorer = _start_scorer(port, trained_models, embedder_server.address, scorer_log)
    ScorerClient(f"127.0.0.1:{port}").wait_until_serving(120)
    config.embedder, config.scorer = embedder_server.address, f"127.0.0.1:{port}"
    config.qdrant_path, config.checkpoint = str(tmp_path / "qdrant"), str(tmp_path / "checkpoint")
    config.once, config.max_offsets_per_trigger = True, 300
    assert run_ingest(tmp_path / "head.log", BOOTSTRAP, config.topic, labels_csv=data_dir / "anomaly_label.csv",
                      progress=False).produced == len(lines)

    procs = [scorer]
    events: dict[str, float] = {}
    written: list[int] = []

    def on_report(report) -> None:  # type: ignore[no-untyped-def]
        if report.skipped:
            return
        written.append(report.batch_id)
        if len(written) == 2 and "killed" not in events:
            # SIGKILL between micro-batches 2 and 3 of 5: the next batch's ScoreStream meets a dead scorer.
            procs[0].send_signal(signal.SIGKILL)
            procs[0].wait(10)
            events["killed"] = time.monotonic()
            procs.append(_start_scorer(port, trained_models, embedder_server.address, scorer_log))
        elif "killed" in events and "recovered" not in events:
            events["recovered"] = time.monotonic()

    try:
        with _Records("logmesh.stream.retry") as retries:
            run(config, on_report=on_report)
    finally:
        for p in procs:
            _stop(p)
    assert procs[0].returncode == -signal.SIGKILL and "recovered" in events
    retried = [r for r in retries.records if r.getMessage() == "retrying"]
    assert retried, "the batch after the kill was not retried"
    # bounded exponential backoff within each retry loop: the tasks of a batch retry in parallel (one per
    # shuffle partition, each in its executor's worker), so their relogged records interleave
    loops: dict[tuple, list[list[float]]] = {}
    for r in retried:
        runs = loops.setdefault((getattr(r, "executor_pid", None), getattr(r, "call", None)), [])
        if int(getattr(r, "attempt", 1)) == 1 or not runs:
            runs.append([])
        runs[-1].append(float(getattr(r, "sleep_s")))
    each = [run for runs in loops.values() for run in runs]
    assert all(b >= a for run in each for a, b in zip(run, run[1:])), each
    assert max(max(run) for run in each) <= 15.0, each
    sleeps = [float(getattr(r, "sleep_s")) for r in retried]  # in the order logged, for the record below
    counts = _check_results(config, lines, tmp_path / "qdrant")
    outage = events["recovered"] - events["killed"]
    reliability("fault", "scorer SIGKILLed mid-stream, restarted on the same port",
                f"killed after micro-batch 2 of {len(lines) // 300}; the next batch's calls failed UNAVAILABLE and "
                f"were retried {len(retried)} times (backoff {', '.join(f'{s:g}' for s in sleeps)} s, logged) until "
                f"the restarted scorer served, {outage:.1f} s after the kill; {counts['lines']} lines -> "
                f"{counts['lines']} ScoreResults, {counts['blocks']} block + {counts['anomalous_lines']} line points, "
                f"each exactly once", lost="nothing")


def test_a_batch_past_its_retry_budget_fails_the_query_and_the_job_restarts_it(admin, embedder_server, trained_models,
                                                                               data_dir, tmp_path, reliability):
    """The scorer stays down longer than --retry-budget-s: the batch gives up, the query fails, and the job
    restarts it from its checkpoint with backoff (logged) until the scorer is back; the batch is replayed."""
    config = _topics(admin, f"f{uuid.uuid4().hex[:8]}")
    lines = _slice(data_dir, tmp_path / "head.log", 12000, 1200)
    port = _free_port()
    scorer_log = tmp_path / "scorer.log"
    procs = [_start_scorer(port, trained_models, embedder_server.address, scorer_log)]
    ScorerClient(f"127.0.0.1:{port}").wait_until_serving(120)
    config.embedder, config.scorer = embedder_server.address, f"127.0.0.1:{port}"
    config.qdrant_path, config.checkpoint = str(tmp_path / "qdrant"), str(tmp_path / "checkpoint")
    config.once, config.max_offsets_per_trigger, config.retry_budget_s = True, 300, 2.0
    assert run_ingest(tmp_path / "head.log", BOOTSTRAP, config.topic, progress=False).produced == len(lines)
    killed: dict[str, float] = {}

    def on_report(report) -> None:  # type: ignore[no-untyped-def]
        if not report.skipped and "at" not in killed:
            procs[0].send_signal(signal.SIGKILL)
            procs[0].wait(10)
            killed["at"] = time.monotonic()

    with _Records("logmesh.stream") as logs:
        def restart_scorer_after_query_restarts() -> None:
            try:  # bring the scorer back only once the job has restarted its query twice
                wait_for(lambda: len(logs.matching("restarting it from its checkpoint")) >= 2, 300, "query restarts")
            finally:
                procs.append(_start_scorer(port, trained_models, embedder_server.address, scorer_log))
        helper = threading.Thread(target=restart_scorer_after_query_restarts, daemon=True)
        helper.start()
        try:
            run(config, on_report=on_report)
        finally:
            helper.join(330)
            for p in procs:
                _stop(p)
    restarts = logs.matching("restarting it from its checkpoint")
    assert len(restarts) >= 2
    sleeps = [float(getattr(r, "sleep_s")) for r in restarts]
    assert sleeps == sorted(sleeps) and sleeps[1] > sleeps[0]  # backoff grows
    causes = [getattr(r, "error", "") for r in restarts]
    assert all("GaveUp" in c and "UNAVAILABLE" in c for c in causes), causes
    counts = _check_results(config, lines, tmp_path / "qdrant")
    reliability("fault", "scorer down longer than the batch's retry budget (--retry-budget-s 2)",
                f"the batch gave up after its retries ({causes[0].split(': ', 1)[-1].split(' (')[0]}), the Spark query failed and the job restarted it from its "
                f"checkpoint {len(restarts)} times (backoff {', '.join(f'{x:g}' for x in sleeps)} s, logged) until "
                f"the scorer was back; the failed batch was replayed: {counts['lines']} lines -> {counts['lines']} "
                f"ScoreResults, {counts['blocks']} block points, each exactly once", lost="nothing")


# ---- the embedder down when the stream starts ---------------------------------------------------

def test_embedder_down_at_start_is_waited_for(admin, encoder, trained_models, data_dir, tmp_path, reliability):
    from logmesh.embedder.service import serve as serve_embedder
    from logmesh.scorer.service import serve as serve_scorer

    config = _topics(admin, f"f{uuid.uuid4().hex[:8]}")
    lines = _slice(data_dir, tmp_path / "head.log", 3000, 1000)
    embedder_port = _free_port()
    embedder_address = f"127.0.0.1:{embedder_port}"
    # its embedder is down too, so it answers NOT_SERVING until the embedder is up (readiness follows it):
    # the job waits for the embedder, then for the scorer
    scorer = serve_scorer(0, trained_models, embedder_address, reload_interval=60)
    config.embedder, config.scorer = embedder_address, scorer.address
    config.qdrant_path, config.checkpoint = str(tmp_path / "qdrant"), str(tmp_path / "checkpoint")
    config.once, config.max_offsets_per_trigger = True, 500
    assert run_ingest(tmp_path / "head.log", BOOTSTRAP, config.topic, progress=False).produced == len(lines)

    errors: list[BaseException] = []
    scored = CommittedCount(config.scores_topic)
    embedder = None

    def job() -> None:
        try:
            run(config)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    with _Records("logmesh.stream") as logs:
        started = time.monotonic()
        thread = threading.Thread(target=job, daemon=True)
        thread.start()
        try:
            wait_for(lambda: [r for r in logs.matching("waiting for service")
                           if getattr(r, "service", "") == EmbedderClient.service], 60, "the job to wait for the embedder")
            down_until = time.monotonic() + 5.0  # the outage: the job must hold, not fail and not write
            while time.monotonic() < down_until:
                assert thread.is_alive() and not errors, f"the job gave up while the embedder was down: {errors}"
                assert scored() == 0
                time.sleep(0.5)
            embedder = serve_embedder(embedder_port, encoder_factory=lambda: encoder)
            up = time.monotonic()
            thread.join(600)
            assert not thread.is_alive(), "the job did not finish after the embedder came up"
        finally:
            scored.close()
            if embedder is not None:
                embedder.stop(0)
            scorer.stop(0)
    assert not errors, errors
    serving = [r for r in logs.matching("service serving") if getattr(r, "service", "") == EmbedderClient.service]
    assert serving and serving[0].created >= logs.matching("waiting for service")[0].created
    counts = _check_results(config, lines, tmp_path / "qdrant")
    reliability("fault", "embedder down when the stream starts",
                f"the job logged 'waiting for service' and held (health check polled) for {up - started:.1f} s with "
                f"nothing written; once the embedder served it ran: {counts['lines']} lines -> {counts['lines']} "
                f"ScoreResults, {counts['blocks']} block + {counts['anomalous_lines']} line points, none dropped",
                lost="nothing")


# ---- the Spark job SIGKILLed mid-replay ---------------------------------------------------------

def _stream_args(config: StreamConfig, embedder: str, scorer: str, tmp_path: Path, *extra: str) -> list[str]:
    return [LOGMESH, "stream", "--bootstrap", config.bootstrap, "--topic", config.topic,
            "--scores-topic", config.scores_topic, "--anomalies-topic", config.anomalies_topic,
            "--dlq-topic", config.dlq_topic, "--embedder", embedder, "--scorer", scorer,
            "--qdrant-path", str(tmp_path / "qdrant"), "--checkpoint", str(tmp_path / "checkpoint"),
            "--block-quiet-ms", "4000", "--log-level", "info", *extra]


def _spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    # its own process group: a SIGKILL of the group takes Spark's JVM with the driver, as a crash would
    return subprocess.Popen(args, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **(env or {})})


def _crashed(log: Path) -> tuple[str, int] | None:
    hits = [(e["point"], e["batch_id"]) for e in json_lines(log) if e.get("msg") == "fault injection: SIGKILL"]
    return hits[0] if hits else None


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(60)


def _skipped(log: Path) -> set[int]:
    """Batch ids with a partition the ledger said was committed (its writes skipped)."""
    return {e["batch_id"] for e in json_lines(log) if e.get("msg", "").startswith("partition already committed")}


def test_spark_job_killed_mid_replay_resumes_with_nothing_lost_or_repeated(admin, embedder_server, own_scorer, data_dir,
                                                                           tmp_path, reliability):
    config = _topics(admin, f"f{uuid.uuid4().hex[:8]}")
    lines = _slice(data_dir, tmp_path / "replay.log", 5000, 3200)  # 8 micro-batches: 0-7
    assert run_ingest(tmp_path / "replay.log", BOOTSTRAP, config.topic, labels_csv=data_dir / "anomaly_label.csv",
                      progress=False).produced == len(lines)
    args = _stream_args(config, embedder_server.address, own_scorer.address, tmp_path,
                        "--max-offsets-per-trigger", "400")
    scored = CommittedCount(config.scores_topic)
    rows: list[str] = []
    logs = [tmp_path / f"run{i}.log" for i in range(4)]
    procs: list[subprocess.Popen] = []
    try:
        # 1: killed in a task of batch 2, inside its transaction (outputs produced, before ledger and commit)
        procs.append(_spawn(args, logs[0], {"LOGMESH_SINK_CRASH_AT": "after-produce:2"}))
        assert procs[-1].wait(600) == -signal.SIGKILL, logs[0].read_text()[-3000:]
        written1 = scored_by_batch(logs[0])
        assert sorted(written1) == [0, 1] and _crashed(logs[0]) == ("after-produce", 2)
        after1 = scored()
        assert after1 == sum(written1.values()), "batch 2's aborted results are visible to read_committed"
        # 2: killed in a task of batch 4 right after its transaction (results + ledger record) committed,
        # before the batch's other tasks and Spark's commit
        procs.append(_spawn(args, logs[1], {"LOGMESH_SINK_CRASH_AT": "after-commit:4"}))
        assert procs[-1].wait(600) == -signal.SIGKILL, logs[1].read_text()[-3000:]
        written2 = scored_by_batch(logs[1])
        assert sorted(written2) == [2, 3] and _crashed(logs[1]) == ("after-commit", 4)  # 4 died before its log line
        after2 = scored()
        assert after2 > after1 + sum(written2.values())  # batch 2 redone once, and batch 4's commit is visible
        # 3: killed in the driver after batch 6's tasks committed and its points were stored, before Spark's
        # commit; the replay of batch 4 first skips the partition(s) that committed
        procs.append(_spawn(args, logs[2], {"LOGMESH_SINK_CRASH_AT": "after-store:6"}))
        assert procs[-1].wait(600) == -signal.SIGKILL, logs[2].read_text()[-3000:]
        assert _crashed(logs[2]) == ("after-store", 6) and sorted(scored_by_batch(logs[2])) == [4, 5]
        assert _skipped(logs[2]) == {4}, "batch 4's committed partition should be skipped by the Kafka ledger"
        after3 = scored()
        # 4: to the end (availableNow: drains the topic and stops); batch 6 is replayed without writes
        procs.append(_spawn([*args, "--once"], logs[3]))
        assert procs[-1].wait(600) == 0, logs[3].read_text()[-3000:]
        assert 6 in _skipped(logs[3])
        replayed6 = [e for e in json_lines(logs[3]) if e.get("msg") == "batch written" and e["batch_id"] == 6]
        assert replayed6 and replayed6[0]["skipped"], "every partition of batch 6 had committed: nothing rewritten"
    finally:
        scored.close()
        for p in procs:
            if p.poll() is None:
                _kill_group(p)
    counts = _check_results(config, lines, tmp_path / "qdrant")
    assert counts["alerts"] >= 1 and counts["anomalous_lines"] >= 1  # blk_-3102267849859399193 fails in this slice
    visible = len(_consume_all(config.scores_topic, isolation="read_uncommitted"))
    assert visible > len(lines), "the crashed transactions left nothing behind: the crash did not hit the window"

    def alerts(isolation: str) -> Counter:
        return Counter(a.block.block_id for a in (score_pb2.Anomaly.FromString(m.value()) for m in _consume_all(
            config.anomalies_topic, isolation=isolation)) if a.block.kind == score_pb2.BLOCK_VERDICT_KIND_ALERT)
    committed, raw = alerts("read_committed"), alerts("read_uncommitted")
    # an alert first produced by an aborted attempt is produced again by the replay (the alert status is in
    # the state of the batch that alerted): none lost, none doubled in what read_committed consumers see
    assert set(raw) == set(committed), f"alerts lost with an aborted attempt: {set(raw) - set(committed)}"
    realerted = sum(1 for b in raw if raw[b] > 1)
    rows.append(f"run 1 SIGKILLed in a task of batch 2 inside its transaction ({after1:,} lines committed); run 2 "
                f"replayed batch 2 in full and was SIGKILLed in a task of batch 4 right after its commit "
                f"({after2:,} committed); run 3 skipped batch 4's committed partition by the Kafka ledger and was "
                f"SIGKILLed in the driver after batch 6's points were stored ({after3:,} committed); run 4 replayed "
                f"batch 6 without writes and finished. {counts['lines']:,} lines -> {counts['lines']:,} ScoreResults "
                f"(read_committed; {visible - len(lines):,} messages of aborted attempts hidden), {counts['blocks']} "
                f"block + {counts['anomalous_lines']} line points, {counts['alerts']} block alerts, none repeated "
                f"({realerted} of them first emitted by an aborted attempt and re-emitted by the replay)")
    reliability("fault", "Spark job SIGKILLed mid-replay, 3 times at different points", rows[0], lost="nothing")


def test_a_task_killed_is_retried_fenced_and_a_committed_partition_is_not_written_twice(
        admin, embedder_server, own_scorer, data_dir, tmp_path, monkeypatch, reliability):
    """A task's Python worker SIGKILLed (Spark retries the task, master local[2,2]): once inside its
    transaction (the retry's init_transactions fences it and aborts what it produced; the retry writes),
    once right after its commit (the retry reads the ledger, finds the partition committed and writes
    nothing). The driver and its other tasks live on; every line is scored exactly once."""
    config = _topics(admin, f"f{uuid.uuid4().hex[:8]}")
    lines = _slice(data_dir, tmp_path / "head.log", 5200, 1600)
    config.embedder, config.scorer = embedder_server.address, own_scorer.address
    config.qdrant_path, config.checkpoint = str(tmp_path / "qdrant"), str(tmp_path / "checkpoint")
    config.once, config.max_offsets_per_trigger, config.master = True, 400, "local[2,2]"
    assert run_ingest(tmp_path / "head.log", BOOTSTRAP, config.topic, labels_csv=data_dir / "anomaly_label.csv",
                      progress=False).produced == len(lines)
    monkeypatch.setenv("LOGMESH_SINK_CRASH_AT", "task-after-produce:1,task-after-commit:2")
    reports = []
    run(config, on_report=reports.append)
    by_batch = {r.batch_id: r for r in reports}
    assert by_batch[1].partitions and not by_batch[1].skipped_partitions  # the retry of batch 1's task wrote
    assert by_batch[2].skipped_partitions, "the retried task of batch 2 wrote its committed partition again"
    assert os.getpid() not in {p for r in reports for p in r.work_pids + r.task_pids}
    counts = _check_results(config, lines, tmp_path / "qdrant")
    visible = len(_consume_all(config.scores_topic, isolation="read_uncommitted"))
    assert visible > len(lines), "the killed attempt of batch 1 produced nothing: the kill missed its window"
    reliability("fault", "a write task's Python worker SIGKILLed, retried by Spark (inside and after its transaction)",
                f"batch 1: killed after producing, the retry fenced it (its {visible - len(lines)} messages aborted) "
                f"and wrote; batch 2: killed after its commit, the retry found the partition in the ledger and wrote "
                f"nothing; {counts['lines']:,} lines -> {counts['lines']:,} ScoreResults, {counts['blocks']} block + "
                f"{counts['anomalous_lines']} line points, each exactly once", lost="nothing")


# ---- the Kafka broker restarted mid-replay ------------------------------------------------------

def _kafka(env: dict[str, str], *command: str, timeout: float = 180) -> str:
    done = subprocess.run([KAFKA_SH, *command], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"kafka.sh {' '.join(command)}: {done.stdout}{done.stderr}"
    return done.stdout


def _free_port_pair() -> int:
    for _ in range(50):
        port = _free_port()
        if port < 65000:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair")


def test_broker_restart_mid_replay_loses_nothing(embedder_server, own_scorer, data_dir, tmp_path, reliability):
    port = _free_port_pair()
    bootstrap = f"127.0.0.1:{port}"
    env = {"LOGMESH_KAFKA_PORT": str(port), "LOGMESH_KAFKA_DIR": str(tmp_path / "kafka"),
           "LOGMESH_KAFKA_WAIT_S": "180", "LOGMESH_KAFKA_HEAP": "384m",
           # kafka.sh makes the compacted ledger topic (checked below); the job's four topics are made in one
           # admin call here (kafka.sh runs a JVM per topic it creates: ~1.5 s each on 2 cores)
           "LOGMESH_KAFKA_TOPICS": "logmesh.sink-ledger:1:cleanup.policy=compact"}
    lines = _slice(data_dir, tmp_path / "replay.log", 6000, 3000)
    _kafka(env, "start")
    procs: list[subprocess.Popen] = []
    try:
        _kafka(env, "wait")
        topics = _kafka(env, "topics")  # the compacted ledger topic
        assert "logmesh.sink-ledger" in topics
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for future in admin.create_topics([NewTopic(name, num_partitions=n, replication_factor=1) for name, n in (
                ("logmesh.logs", 4), ("logmesh.scores", 4), ("logmesh.anomalies", 1), ("logmesh.dlq", 1))]).values():
            future.result(30)
        described = admin.describe_configs([ConfigResource("topic", "logmesh.sink-ledger")])
        [ledger_config] = [f.result(30) for f in described.values()]
        assert ledger_config["cleanup.policy"].value == "compact"
        config = StreamConfig(bootstrap=bootstrap)
        job_log, ingest_log = tmp_path / "stream.log", tmp_path / "ingest.log"
        procs.append(_spawn(_stream_args(config, embedder_server.address, own_scorer.address, tmp_path,
                                         "--max-offsets-per-trigger", "500"), job_log))
        wait_for(lambda: any(e.get("msg") == "stream started" for e in json_lines(job_log)) or procs[0].poll() is not None,
              600, "the job to start")
        assert procs[0].poll() is None, job_log.read_text()[-3000:]
        # paced so the outage lands mid-replay; the producer keeps lines queued across the outage
        procs.append(subprocess.Popen(
            [LOGMESH, "ingest", "--bootstrap", bootstrap, "--topic", config.topic, "--rate", "200", "--json",
             "--no-progress", "--labels", str(data_dir / "anomaly_label.csv"),
             "--kafka-option", "message.timeout.ms=600000", str(tmp_path / "replay.log")],
            stdout=subprocess.PIPE, stderr=open(ingest_log, "w"), text=True))
        # the job's "batch written" log lines (each after its batch's commit): a CommittedCount call reads on
        # while messages keep coming, so it can return only once the replay is over
        before = wait_for(lambda: (n := sum(scored_by_batch(job_log).values())) >= 400 and n, 600,
                          "the job to score the first lines")
        assert procs[1].poll() is None, "the replay ended before the outage: it would not land mid-replay"
        down = time.monotonic()
        broker_pid = int((tmp_path / "kafka" / "kafka.pid").read_text())
        os.kill(broker_pid, signal.SIGKILL)  # a crash, not a clean shutdown: the broker we started, by its pid
        wait_for(lambda: not Path(f"/proc/{broker_pid}").exists() or
              Path(f"/proc/{broker_pid}/stat").read_text().split()[2] == "Z", 60, "the broker to die")
        stopped = time.monotonic()
        time.sleep(OUTAGE_S)  # the outage itself (a condition cannot stand for "the broker stays down")
        _kafka(env, "start")
        _kafka(env, "wait")
        back = time.monotonic()
        out, _ = procs[1].communicate(timeout=600)
        assert procs[1].returncode == 0, ingest_log.read_text()[-3000:]
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["produced"] == len(lines) and summary["failed"] == 0
        scored = CommittedCount(config.scores_topic, bootstrap)
        try:
            wait_for(lambda: scored() >= len(lines), 600, "the job to score every line after the restart")
        finally:
            scored.close()
        recovered = time.monotonic()
        procs[0].send_signal(signal.SIGINT)
        procs[0].wait(120)
        config.scores_topic, config.anomalies_topic = "logmesh.scores", "logmesh.anomalies"
        counts = _check_results(config, lines, tmp_path / "qdrant", bootstrap)
    finally:
        for p in procs:
            if p.poll() is None:
                _kill_group(p) if p is procs[0] else p.kill()
        subprocess.run([KAFKA_SH, "stop"], env={**os.environ, **env}, capture_output=True, timeout=120)
    events = json_lines(job_log)
    restarts = [e for e in events if e.get("msg") == "stream query failed; restarting it from its checkpoint"]
    redone = [e for e in events if e.get("msg") == "batch transaction failed; redoing its writes"]
    slowest = max(e["seconds"] for e in events if e.get("msg") == "batch written")
    reliability("fault", "Kafka broker SIGKILLed mid-replay and restarted (private broker)",
                f"broker SIGKILLed at {before:,}/{len(lines):,} lines scored, down {back - down:.0f} s "
                f"(held down {OUTAGE_S} s, then start+ready {back - stopped - OUTAGE_S:.0f} s); ingest (paced, "
                f"message.timeout.ms raised via --kafka-option) delivered all {summary['produced']:,} lines; the "
                f"job's batch in flight waited in its transaction ({slowest:.0f} s, the slowest batch), its query "
                f"restarted {len(restarts)} times and {len(redone)} batch transactions were redone; it "
                f"had every line scored {recovered - back:.0f} s after the broker was back: {counts['lines']:,} "
                f"ScoreResults, {counts['blocks']} block + {counts['anomalous_lines']} line points, each once",
                lost="nothing")
