"""An idle `logmesh stream` stays quiet at info level, and a stop (SIGINT, as `make demo` and Ctrl-C send it)
ends the job cleanly: real broker, real Spark, the real embedder and scorer.

Before: an idle job logged ~98 lines every 10 s at info (py4j's line for every micro-batch's callback into
Python, and a "batch written" line for each empty micro-batch), and stopping it mid-batch made pyspark
cancel the running Spark job: a java.lang.StackOverflowError in the stream thread and "Python worker
exited unexpectedly (crashed)"."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from logmesh.ingest.producer import run_ingest
from waiting import wait_for

from job_log import scored_by_batch
from kafka_helpers import BOOTSTRAP, CommittedCount, _topics

pytestmark = [pytest.mark.kafka, pytest.mark.spark]
LOGMESH = str(Path(sys.executable).with_name("logmesh"))
IDLE_S = 10  # 40 empty micro-batches at the default 250 ms trigger: ~98 lines at info before the fix


def test_an_idle_stream_is_quiet_at_info_and_stops_cleanly(admin, embedder_server, own_scorer, data_dir, tmp_path):
    config = _topics(admin, f"idle{uuid.uuid4().hex[:8]}")
    log = tmp_path / "stream.log"
    job = subprocess.Popen(
        [LOGMESH, "stream", "--bootstrap", BOOTSTRAP, "--topic", config.topic, "--scores-topic", config.scores_topic,
         "--anomalies-topic", config.anomalies_topic, "--dlq-topic", config.dlq_topic,
         "--embedder", embedder_server.address, "--scorer", own_scorer.address,
         "--qdrant-path", str(tmp_path / "qdrant"), "--checkpoint", str(tmp_path / "checkpoint"),
         "--log-level", "info"], stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    scored = CommittedCount(config.scores_topic)
    try:
        wait_for(lambda: "stream started" in log.read_text() or job.poll() is not None, 300, "the job to start")
        assert job.poll() is None, log.read_text()[-3000:]
        # some lines first: the stateful plan then runs an empty micro-batch every trigger (block timers)
        run_ingest(data_dir / "HDFS_20000.log", BOOTSTRAP, config.topic, limit=300, progress=False)
        wait_for(lambda: scored() >= 300, 300, "the lines to be scored")
        # the data batches' own "batch written" lines land (logged after the commit and the points' upsert)
        wait_for(lambda: sum(scored_by_batch(log).values()) >= 300, 60, "the 'batch written' lines")
        before = log.read_text(errors="replace").splitlines()
        time.sleep(IDLE_S)  # a window to count what an idle job logs, not a timed assertion
        idle = log.read_text(errors="replace").splitlines()[len(before):]
        assert len(idle) <= 2, f"an idle job logged {len(idle)} lines in {IDLE_S} s at info:\n" + "\n".join(idle[:20])

        job.send_signal(signal.SIGINT)
        assert job.wait(180) == 0, log.read_text()[-3000:]
    finally:
        scored.close()
        if job.poll() is None:
            job.kill()
            job.wait(60)
    text = log.read_text(errors="replace")
    assert "stopping stream (signal)" in text and "stream stopped" in text, text[-3000:]
    # the stop waited for the batch that ran then, not for a moment with no trigger (a batch runs every trigger)
    assert "stopping stream mid-batch" not in text, text[-3000:]
    for bad in ("StackOverflowError", "Python worker exited unexpectedly", "Traceback"):
        assert bad not in text, f"{bad!r} in the job's log after a stop:\n{text[-3000:]}"
