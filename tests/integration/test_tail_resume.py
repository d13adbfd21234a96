"""`logmesh tail` across a restart of a real scorer process: it reconnects and resumes after the last anomaly
it showed, so anomalies the job committed while it was away are shown once, none lost and none repeated."""
from __future__ import annotations

import re
import signal
import subprocess
import threading
import time

from logmesh.client import ScorerClient
from waiting import wait_for

from anomaly_topic import AnomalyWriter, fresh_topic, line
from test_history_durable import LOGMESH, ScorerProcess, _all


class Tail:
    """`logmesh tail` as a process; its stdout and stderr lines collected by threads."""

    def __init__(self, address: str) -> None:
        self.proc = subprocess.Popen([LOGMESH, "tail", "--scorer", address], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, into in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=lambda s=stream, i=into: i.extend(iter(s.readline, "")), daemon=True).start()

    def ids(self) -> list[int]:
        """History ids of the entries shown, in the order shown."""
        return [int(m.group(1)) for line in self.out if (m := re.match(r"\S+  #(\d+)  ", line))]

    def said(self, text: str) -> bool:
        return any(text in line for line in self.err)


def test_tail_resumes_after_a_scorer_restart_without_losing_or_repeating(admin, trained_models, embedder_server,
                                                                         tmp_path):
    topic = fresh_topic(admin)
    writer = AnomalyWriter(topic)

    def _score(address: str, tags: str) -> None:  # what the job commits, one transaction per line
        for tag in tags:
            writer.write([line(tag)])

    scorer = ScorerProcess(trained_models, embedder_server.address, tmp_path / "state", tmp_path / "scorer.log",
                           topic).start()
    tail = Tail(scorer.address)
    try:
        wait_for(lambda: tail.said("subscribed"), what="tail to subscribe")
        _score(scorer.address, "abc")
        wait_for(lambda: len(tail.ids()) == 3, what="tail to show the first three anomalies")

        assert scorer.stop(signal.SIGTERM) == 0
        wait_for(lambda: tail.said("lost the scorer"), what="tail to notice the scorer went away")
        assert tail.proc.poll() is None  # it waits for the scorer instead of exiting
        # anomalies the history reads while the tail is not watching: held still (SIGSTOP) so it cannot
        # reconnect before they are read; it must fetch them on its return
        tail.proc.send_signal(signal.SIGSTOP)
        scorer.start()
        _score(scorer.address, "de")
        with ScorerClient(scorer.address) as client:
            wait_for(lambda: len(_all(client)) == 5, what="the restarted scorer to read the two new anomalies")
        tail.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: tail.said("reconnected"), timeout=30, what="tail to reconnect")
        _score(scorer.address, "fg")  # and what is recorded after it is back
        wait_for(lambda: len(tail.ids()) >= 7, timeout=30, what="tail to show all seven anomalies")
        time.sleep(1.0)  # a repeat would show up meanwhile

        with ScorerClient(scorer.address) as client:
            recorded = sorted((e for e in _all(client) if e.HasField("line")), key=lambda e: e.id)
        assert [e.line.record_id for e in recorded] == [f"rec-{t}" for t in "abcdefg"]
        assert tail.ids() == [e.id for e in recorded]  # each shown once, in order
    finally:
        tail.proc.send_signal(signal.SIGCONT)
        tail.proc.terminate()
        tail.proc.wait(10)
        if scorer.proc and scorer.proc.poll() is None:
            scorer.proc.terminate()
            scorer.proc.wait(30)
