"""Scoring throughput with incident summaries on vs off (issue 17's target: equal), in one run.

A real `logmesh serve scorer` process (its own embedder process, a model trained here on HDFS_5k, the broker at
127.0.0.1:9092, fresh anomalies/incidents/feedback topics per arm, a fresh state dir) serves ScoreStream (raw
HDFS_20000 lines) and ScoreBlockStream (its blocks) from --clients threads for --seconds per arm, while this
script writes the anomalous blocks' lines of HDFS_5k to the anomalies topic (--alert-rate lines/s), so the
incident book keeps opening incidents and moving their versions. Arms, interleaved and rotated per round:

- off:    no --llm-url (every summary is the fallback, built in the scorer);
- on:     --llm-url to SmolLM2-135M behind llama-cpp-python's server (tests/llm_server.py), which summarises
          incidents all through the arm (its queue never runs dry at this alert rate); no deferral
          (--summary-defer-max-s 0), the server at normal priority: the scorer as it was before the policy;
- busy:   no --llm-url, but this script keeps the same LLM server busy with the same prompts: the CPU the
          model takes from the scorer on a shared box, without any of the scorer's summary code in the path;
- nice:   as on, but with a second server of the same model started under `nice -n 19`;
- policy: as nice, with the deferral (--summary-defer-max-s, default 20: what serve scorer does by default
          for a loopback --llm-url): an LLM call starts only while scoring is quiet, or at the maximum.

on/busy isolates what our code costs (GIL, locks, queue); busy/off what the LLM's CPU costs on this machine;
nice/on what the lowest priority buys; policy/off the target. In production the model runs on its own GPU box
(deploy/k8s vLLM), where only on/busy applies. The load never pauses, so the policy's LLM calls all go at the
maximum deferral: the summary delay (an incident queued to its summary written) shows what that costs.

    .venv/bin/python bench/bench_summary_throughput.py [--rounds 3] [--seconds 30] [--llm-threads 1]
        [--arms off,on,busy,nice,policy] [--defer-max-s 20]

Prints one JSON object: per-arm lines/s and blocks/s (mean of the rounds, and each round), the scorer's
summaries written per arm and their delay, the ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the helper that starts the LLM server as the tests do

import llm_server  # noqa: E402
from confluent_kafka import Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from logmesh.client import EmbedderClient, ScorerClient  # noqa: E402
from logmesh.ingest.reader import iter_records, load_block_labels  # noqa: E402
from logmesh.scorer.analyst import summary_prompt  # noqa: E402
from logmesh.scorer.analyst.llm_client import ChatClient, LLMError  # noqa: E402
from logmesh.v1 import log_record_pb2 as lr, score_pb2, scorer_service_pb2 as spb  # noqa: E402

BOOTSTRAP = "127.0.0.1:9092"
BIN = Path(sys.executable).with_name("logmesh")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (/proc), to say who used the cores."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _alerts(data: Path) -> list[score_pb2.Anomaly]:
    """The lines of HDFS_5k's anomalous blocks as flagged lines, the shape the streaming job writes."""
    labels = load_block_labels(data / "anomaly_label.csv")
    out = []
    for r in iter_records(data / "HDFS_5k.log", labels):
        if r.block_ids and labels.get(r.block_ids[0]) == lr.LABEL_ANOMALY:
            out.append(score_pb2.Anomaly(line=score_pb2.ScoreResult(
                record_id=r.id, verdict=score_pb2.VERDICT_ANOMALY, score=0.9, template_id=r.template_id,
                message=r.message, component=r.component, block_ids=list(r.block_ids), event_time=r.event_time)))
    return out


def _blocks(data: Path) -> list[spb.BlockSession]:
    by_block: dict[str, list[str]] = defaultdict(list)
    for r in iter_records(data / "HDFS_20000.log"):
        if r.block_ids:
            by_block[r.block_ids[0]].append(r.template_id)
    return [spb.BlockSession(block_id=b, events=ev, closed=True) for b, ev in by_block.items()]


ARMS = ("off", "on", "busy", "nice", "policy")
NICE_ARMS = ("nice", "policy")  # those that use the server started under nice -n 19


class Arm:
    def __init__(self, name: str, args: argparse.Namespace, models: Path, embedder: str,
                 llms: dict[str, llm_server.LLMServer], alerts: list[score_pb2.Anomaly], lines: list[str],
                 blocks: list[spb.BlockSession]) -> None:
        self.name, self.args, self.models, self.embedder = name, args, models, embedder
        self.llm = llms["nice" if name in NICE_ARMS else "plain"]
        self.alerts, self.lines, self.blocks = alerts, lines, blocks

    def run(self) -> dict:
        tag = f"{self.name}-{uuid.uuid4().hex[:6]}"
        topics = {k: f"bench-sumtp.{tag}.{k}" for k in ("anomalies", "incidents", "feedback")}
        admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
        for f in admin.create_topics([NewTopic(topics["anomalies"], 1, 1)] + [
                NewTopic(topics[k], 1, 1, config={"cleanup.policy": "compact"}) for k in ("incidents", "feedback")
        ]).values():
            f.result(30)
        port = llm_server.free_port()
        state = Path(tempfile.mkdtemp(prefix=f"bench-sumtp-{self.name}-"))
        cmd = [str(BIN), "serve", "scorer", "--port", str(port), "--model-dir", str(self.models), "--embedder",
               self.embedder, "--reload-interval", "3600", "--state-dir", str(state),
               "--anomalies-topic", topics["anomalies"], "--incidents-topic", topics["incidents"],
               "--feedback-topic", topics["feedback"], "--incident-window", "30", "--log-level", "warning"]
        if self.name in ("on", "nice", "policy"):
            defer = self.args.defer_max_s if self.name == "policy" else 0
            cmd += ["--llm-url", self.llm.url, "--llm-model", self.llm.model, "--llm-timeout", "120",
                    "--summary-defer-max-s", f"{defer:g}"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(state / "scorer.log", "wb"))
        stop = threading.Event()
        threads: list[threading.Thread] = []
        try:
            client = ScorerClient(f"127.0.0.1:{port}", timeout=120)
            client.wait_until_serving(120)
            for _ in client.score_lines(self.lines[:4000]):  # warm the shape caches (untimed)
                pass
            for _ in client.score_blocks(self.blocks):
                pass
            threads.append(threading.Thread(target=self._produce, args=(topics["anomalies"], stop), daemon=True))
            if self.name == "busy":
                threads.append(threading.Thread(target=self._keep_llm_busy, args=(stop,), daemon=True))
            for t in threads:
                t.start()
            # the load runs through the settle too: the scorer is never quiet once incidents arrive (a policy
            # call can only go at its maximum deferral), and a call started in a quiet settle cannot flatter it
            counts = {"lines": 0, "blocks": 0}
            lock = threading.Lock()
            end = time.monotonic() + self.args.settle + self.args.seconds
            load = [threading.Thread(target=self._score, args=(port, kind, end, counts, lock))
                    for i in range(self.args.clients) for kind in (("lines",) if i else ("blocks",))]
            for t in load:
                t.start()
            time.sleep(self.args.settle)  # the first incidents are open and (on) the LLM is at work
            before = client.stats().summaries
            with lock:
                counts0 = dict(counts)
            cpu0 = (_cpu_s(proc.pid), _cpu_s(self.llm.process.pid))
            started = time.monotonic()
            time.sleep(max(0.0, end - started))
            with lock:
                counts = {k: v - counts0[k] for k, v in counts.items()}
            elapsed = time.monotonic() - started
            cpu1 = (_cpu_s(proc.pid), _cpu_s(self.llm.process.pid))
            stats = client.stats()
            for t in load:
                t.join()
            after = stats.summaries
            client.close()
            # delays: over every summary the arm's scorer wrote up to the window's end (the settle's too)
            return {"arm": self.name, "seconds": round(elapsed, 1),
                    "lines_per_s": round(counts["lines"] / elapsed, 1),
                    "blocks_per_s": round(counts["blocks"] / elapsed, 1),
                    "summaries_llm": after.llm - before.llm, "summaries_fallback": after.fallback - before.fallback,
                    "summary_tokens": after.completion_tokens - before.completion_tokens,
                    "summaries_waiting": after.waiting,
                    "summaries_llm_total": after.llm, "deferred_total": after.deferred,
                    "deferred_at_max_total": after.deferred_at_max,
                    "delay_p50_s": round(after.delay_p50_seconds, 1), "delay_p95_s": round(after.delay_p95_seconds, 1),
                    "oldest_waiting_s": round(after.oldest_waiting_seconds, 1),
                    "llm_call_p50_s": round(after.latency_p50_seconds, 1),
                    "scorer_cpu_s": round(cpu1[0] - cpu0[0], 1), "llm_cpu_s": round(cpu1[1] - cpu0[1], 1),
                    "history_entries": stats.history_entries}
        finally:
            stop.set()
            for t in threads:
                t.join(10)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            admin.delete_topics(list(topics.values()))

    def _score(self, port: int, kind: str, end: float, counts: dict, lock: threading.Lock) -> None:
        with ScorerClient(f"127.0.0.1:{port}", timeout=120) as client:
            while time.monotonic() < end:
                if kind == "lines":
                    for i in range(0, len(self.lines), 2048):
                        n = sum(1 for _ in client.score_lines(self.lines[i:i + 2048]))
                        with lock:
                            counts[kind] += n
                        if time.monotonic() >= end:
                            break
                else:
                    for _ in client.score_blocks(self.blocks):  # one stream over all blocks, counted as answered
                        with lock:
                            counts[kind] += 1

    def _produce(self, topic: str, stop: threading.Event) -> None:
        """The alerts at --alert-rate, block ids tagged per pass so every pass opens new incidents."""
        producer = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 5})
        gap, n, passes = 1.0 / self.args.alert_rate, 0, 0
        while not stop.is_set():
            for a in self.alerts:
                if stop.wait(gap):
                    break
                entry = score_pb2.Anomaly()
                entry.CopyFrom(a)
                entry.line.record_id = f"{a.line.record_id}-p{passes}"
                entry.line.block_ids[:] = [f"{b}-p{passes}" for b in a.line.block_ids]
                producer.produce(topic, key=entry.line.record_id.encode(), value=entry.SerializeToString())
                producer.poll(0)
                n += 1
            passes += 1
        producer.flush(10)

    def _keep_llm_busy(self, stop: threading.Event) -> None:
        """The LLM work of the 'on' arm without the scorer: the same prompts, one call at a time."""
        sys.path.insert(0, str(REPO / "tests"))
        from incident_samples import hdfs_incidents
        incidents = hdfs_incidents(Path(self.args.data))
        client = ChatClient(self.llm.url, self.llm.model, timeout=120)
        i = 0
        while not stop.is_set():
            incident = incidents[i % len(incidents)]
            try:
                client.chat_json(summary_prompt.messages(incident), summary_prompt.answer_schema(incident))
            except LLMError:
                pass
            i += 1
        client.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=30.0, help="measured seconds per arm")
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated, of " + ", ".join(ARMS))
    p.add_argument("--defer-max-s", type=float, default=20.0, help="the policy arm's --summary-defer-max-s")
    p.add_argument("--settle", type=float, default=5.0, help="seconds of alerts before each arm's measurement")
    p.add_argument("--clients", type=int, default=2, help="load threads: one ScoreBlockStream, the rest ScoreStream")
    p.add_argument("--alert-rate", type=float, default=4.0, help="alert lines per second into the anomalies topic")
    p.add_argument("--llm-threads", type=int, default=1)
    p.add_argument("--data", default=str(REPO.parent / "shared/data/hdfs"))
    args = p.parse_args()
    arms = [a for a in args.arms.split(",") if a]
    if unknown := set(arms) - set(ARMS):
        p.error(f"unknown arms {sorted(unknown)}")
    data = Path(args.data)
    work = Path(tempfile.mkdtemp(prefix="bench-sumtp-"))
    from logmesh.embedder.encoder import SentenceEncoder
    from logmesh.scorer.train import train
    encoder = SentenceEncoder(threads=2)
    train(data, work / "models", encoder.encode, validation="quick")
    del encoder
    eport = llm_server.free_port()
    embedder = subprocess.Popen([str(BIN), "serve", "embedder", "--port", str(eport), "--log-level", "warning"],
                                stdout=subprocess.DEVNULL, stderr=open(work / "embedder.log", "wb"))
    llms: dict[str, llm_server.LLMServer] = {}
    try:
        for kind, nice in (("plain", 0), ("nice", 19)):
            (work / kind).mkdir()
            llms[kind] = llm_server.start(work / kind, threads=args.llm_threads, nice=nice)
        EmbedderClient(f"127.0.0.1:{eport}").wait_until_serving(180)
        lines = (data / "HDFS_20000.log").read_text().splitlines()
        alerts, blocks = _alerts(data), _blocks(data)
        rows = []
        for r in range(args.rounds):
            k = r % len(arms)
            for name in arms[k:] + arms[:k]:
                row = Arm(name, args, work / "models", f"127.0.0.1:{eport}", llms, alerts, lines, blocks).run()
                row["round"] = r
                print(json.dumps(row), file=sys.stderr, flush=True)
                rows.append(row)
    finally:
        for server in llms.values():
            server.stop()
        embedder.terminate()
        embedder.wait(30)

    def mean(arm: str, key: str) -> float:
        return statistics.mean(x[key] for x in rows if x["arm"] == arm)

    out = {"machine": "polyglot (2 cores, 24 GiB, shared with other engineers' work)", "llm_threads": args.llm_threads,
           "rounds": args.rounds, "seconds_per_arm": args.seconds, "clients": args.clients,
           "alert_rate": args.alert_rate, "defer_max_s": args.defer_max_s, "arms": rows}
    for key in ("lines_per_s", "blocks_per_s", "summaries_llm", "delay_p50_s", "delay_p95_s", "oldest_waiting_s"):
        out[key] = {a: round(mean(a, key), 1) for a in arms}
    for key in ("lines_per_s", "blocks_per_s"):
        for a, b in (("on", "off"), ("on", "busy"), ("busy", "off"), ("nice", "off"), ("policy", "off"),
                     ("policy", "on")):
            if a in arms and b in arms:
                out[f"{key}_ratio_{a}_{b}"] = round(mean(a, key) / mean(b, key), 3)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
