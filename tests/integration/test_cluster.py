"""The job on a real Spark standalone cluster (issue 18, item 6): a master and two workers of one core each,
started from pyspark's own jars by deploy/spark/cluster.sh, two `logmesh serve scorer` replicas behind one
address (`127.0.0.1:P1,127.0.0.1:P2`, round_robin in the client) and the embedder. The job reads a fresh
topic of real HDFS lines; one worker (and its executor) is SIGKILLed after the third micro-batch. Then:
every line has exactly one committed ScoreResult, Spark's own REST API shows tasks on both executors (and
the survivor's growing after the kill), both scorer replicas served calls, no block alert is repeated."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import pytest

from logmesh.client import ScorerClient
from logmesh.ingest.hdfs import block_ids
from logmesh.ingest.producer import run_ingest
from logmesh.streaming.job import run
from logmesh.streaming.vector_store import open_store
from logmesh.v1 import score_pb2

from kafka_helpers import BOOTSTRAP, _consume_all, _free_port, _topics
from test_client_pool import _start_scorer

pytestmark = [pytest.mark.kafka, pytest.mark.spark]
REPO = Path(__file__).resolve().parents[2]
CLUSTER_SH = str(REPO / "deploy/spark/cluster.sh")
LINES = 3000  # the first lines of HDFS_20000.log, read in place
BATCH = 300
KILL_AFTER = 3  # micro-batches written before a worker is killed


class Cluster:
    """A private standalone cluster (own dir and ports) run by deploy/spark/cluster.sh."""

    def __init__(self, root: Path) -> None:
        self.port, self.ui_port = _free_port(), _free_port()
        self.url = f"spark://127.0.0.1:{self.port}"
        self.env = {**os.environ, "LOGMESH_SPARK_DIR": str(root), "LOGMESH_SPARK_MASTER_PORT": str(self.port),
                    "LOGMESH_SPARK_MASTER_UI_PORT": str(self.ui_port), "LOGMESH_SPARK_WORKER_UI_PORT": "0",
                    "LOGMESH_SPARK_WORKERS": "2", "LOGMESH_PYTHON": sys.executable}
        self.pids = root / "pids"

    def sh(self, command: str) -> str:
        done = subprocess.run([CLUSTER_SH, command], env=self.env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, f"cluster.sh {command}: {done.stdout}{done.stderr}"
        return done.stdout

    def worker_pid(self, n: int) -> int:
        return int((self.pids / f"spark-logmesh-{self.port}-org.apache.spark.deploy.worker.Worker-{n}.pid").read_text())

    def master_json(self) -> dict:
        return json.load(urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/", timeout=5))


def _executors_of(pid: int) -> list[int]:
    """The executor JVMs a worker launched: its children running CoarseGrainedExecutorBackend (read from
    /proc: ps cuts a JVM's long command line)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid and b"CoarseGrainedExecutorBackend" in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except (OSError, ValueError, IndexError):  # not a process, or gone meanwhile
            continue
    return found


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("spark-cluster"))
    try:
        c.sh("start")
        yield c
    finally:
        subprocess.run([CLUSTER_SH, "stop"], env=c.env, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def scorer_pool(embedder_server, trained_models, tmp_path_factory):
    """Two scorer processes (test_client_pool's); yields their ports."""
    logs = tmp_path_factory.mktemp("scorers")
    ports = [_free_port(), _free_port()]
    procs = [_start_scorer(p, trained_models, embedder_server.address, logs / f"scorer-{p}.log") for p in ports]
    try:
        for p in ports:
            ScorerClient(f"127.0.0.1:{p}").wait_until_serving(120)
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _executors(sc) -> list[dict]:  # type: ignore[no-untyped-def]
    """Every executor of the running application, dead ones too (the driver's /api/v1)."""
    url = f"{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}/allexecutors"
    return [e for e in json.load(urllib.request.urlopen(url, timeout=5)) if e["id"] != "driver"]


def test_job_on_a_standalone_cluster_survives_a_worker_kill_exactly_once(admin, cluster, scorer_pool, embedder_server,
                                                                        data_dir, tmp_path):
    from pyspark import SparkContext

    config = _topics(admin, f"c{uuid.uuid4().hex[:8]}")
    produced = run_ingest(data_dir / "HDFS_20000.log", BOOTSTRAP, config.topic, labels_csv=data_dir / "anomaly_label.csv",
                          limit=LINES, progress=False).produced
    assert produced == LINES
    config.master = cluster.url
    config.embedder = embedder_server.address
    config.scorer = ",".join(f"127.0.0.1:{p}" for p in scorer_pool)  # one address, two replicas
    config.qdrant_path, config.checkpoint = str(tmp_path / "qdrant"), str(tmp_path / "checkpoint")
    config.once, config.max_offsets_per_trigger = True, BATCH
    lines = produced

    seen: dict = {"written": [], "snapshots": []}

    def on_report(report) -> None:  # type: ignore[no-untyped-def]
        sc = SparkContext._active_spark_context
        seen["snapshots"].append(_executors(sc))
        if report.skipped:
            return
        seen["written"].append(report.batch_id)
        if len(seen["written"]) == KILL_AFTER and "killed" not in seen:
            # (no assert in here: an error raised in the sink's callback fails the micro-batch, not the test)
            worker = cluster.worker_pid(1)
            executors = _executors_of(worker)
            for pid in (worker, *executors):
                os.kill(pid, signal.SIGKILL)
            seen["killed"] = {"worker": worker, "executors": executors,
                              "before": {e["id"]: e["totalTasks"] for e in seen["snapshots"][-1]}}

    run(config, on_report=on_report)

    assert "killed" in seen, f"the job wrote only {len(seen['written'])} batches"
    assert seen["killed"]["executors"], "worker 1 ran no executor when it was killed"
    # exactly once: every line one committed ScoreResult, none twice
    scores = [score_pb2.ScoreResult.FromString(m.value()) for m in _consume_all(config.scores_topic)]
    ids = Counter(r.record_id for r in scores)
    assert len(scores) == lines, f"{len(scores)} committed ScoreResults for {lines} lines"
    assert len(ids) == lines and max(ids.values()) == 1, f"duplicates: {[k for k, n in ids.items() if n > 1][:3]}"
    anomalies = [score_pb2.Anomaly.FromString(m.value()) for m in _consume_all(config.anomalies_topic)]
    alerts = Counter(a.block.block_id for a in anomalies if a.block.kind == score_pb2.BLOCK_VERDICT_KIND_ALERT)
    assert not alerts or max(alerts.values()) == 1, f"repeated alerts: {[b for b, n in alerts.items() if n > 1]}"
    flagged = {r.record_id for r in scores if r.verdict == score_pb2.VERDICT_ANOMALY}
    store = open_store(path=config.qdrant_path)
    try:
        blocks = {b for line in data_dir.joinpath("HDFS_20000.log").read_text().splitlines()[:lines]
                  for b in block_ids(line)}
        assert store.count({"kind": "block"}) == len(blocks)
        assert store.count({"kind": "line"}) == len(flagged)
    finally:
        store.close()

    # Spark's own metrics: two executors ran tasks before the kill; the survivor went on after it
    before = seen["killed"]["before"]
    assert len(before) == 2 and all(n > 0 for n in before.values()), f"tasks per executor before the kill: {before}"
    final = {e["id"]: e for e in seen["snapshots"][-1]}
    alive = [e for e in final.values() if e["isActive"]]
    assert len(alive) == 1 and alive[0]["id"] in before, f"executors at the end: {final}"
    assert alive[0]["totalTasks"] > before[alive[0]["id"]], "the surviving executor ran nothing after the kill"
    assert any(not e["isActive"] for e in final.values())

    # both replicas behind the one address scored lines, and blocks (the client keeps the two kinds of stream on
    # separate channels: on one, they fell into step and one replica got every line, the other every block)
    served = []
    for p in scorer_pool:
        with ScorerClient(f"127.0.0.1:{p}") as one:
            stats = one.stats()
            served.append({"lines": stats.lines_scored, "blocks": stats.blocks_scored})
    assert all(s["lines"] > 0 and s["blocks"] > 0 for s in served), f"scored per replica: {served}"
    assert sum(s["lines"] for s in served) >= lines, f"scored per replica: {served}"
    print(f"\ncluster: tasks per executor before the kill {before}, at the end "
          f"{ {k: (e['totalTasks'], e['isActive']) for k, e in final.items()} }; scored per replica {served}; "
          f"{len(seen['written'])} batches written; killed {seen['killed']}")
