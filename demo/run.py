"""`make demo`: the main job on the embedded defaults, end to end on one machine.

Makes data (generated, or LOGS=/LABELS=), trains a model if the model dir has none, starts the Kafka
broker, the embedder, the scorer and the Spark job, replays the log into Kafka, prints a live summary
and a final report. Ctrl-C stops everything cleanly; `make down` stops leftovers.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic

from logmesh.client import EmbedderClient, ScorerClient
from logmesh.scorer import artifacts
from logmesh.v1 import log_record_pb2, score_pb2

BIN = Path(sys.executable).with_name("logmesh")
REPO = Path(__file__).resolve().parents[1]
KAFKA = REPO / "deploy/kafka/kafka.sh"
BOOTSTRAP = "127.0.0.1:9092"
TOPICS = {"logs": 4, "scores": 4, "anomalies": 1, "dlq": 1}
QUIET_MS = 5000  # a replay runs in seconds what took hours: close blocks once the stream went on 5 s without them
# When the replay ends the stream stops: blocks still being written stay open (a cut write pipeline is not a
# block with missing steps); after 10 s of a stopped stream the job judges them as cut prefixes.
STALL_MS = 10_000
WARM_UP_BLOCK = "warm-up"  # the block of the line that waits for Spark to be up
# --block-clock event: the gap is log time, which a replay does not shrink, so not QUIET_MS; 30 s, shorter than
# the job's default (5 min, for a live feed's writes), which would leave open every block whose last line
# lies in the replay's last 5 min of log time (no stall timer on this clock)
EVENT_QUIET_MS = 30_000


def say(message: str) -> None:
    print(f"demo: {message}", flush=True)


class Stack:
    """The processes the demo started; stopped in reverse order, whatever happens."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.started_broker = False

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.run_dir / f"{name}.log", "w")
        proc = subprocess.Popen([str(BIN), *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        (self.run_dir / f"{name}.pid").write_text(str(proc.pid))
        self.procs.append((name, proc))
        return proc

    def stop_one(self, name: str) -> None:
        for known, proc in self.procs:
            if known == name and proc.poll() is None:
                proc.send_signal(signal.SIGINT if name == "stream" else signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
            if known == name:
                (self.run_dir / f"{name}.pid").unlink(missing_ok=True)

    def stop(self) -> None:
        for name, _ in reversed(self.procs):
            self.stop_one(name)
        if self.started_broker:
            subprocess.run([str(KAFKA), "stop"], check=False)


def prepare_bgl(args: argparse.Namespace, work: Path) -> tuple[Path, Path]:
    """BGL: (log to replay, a folder to train on). The replay is LOGS (default: BGL_2k.log of the BGL data
    folder); the model trains on the folder's other BGL samples (symlinks in the demo's work folder: the data is
    read in place, never copied), so it never saw the replayed lines. Labels are the replay's own first column:
    kept in the records for the report only, never read by the detector."""
    from logmesh.ingest.bgl_templates import TEMPLATES_FILE
    from logmesh.scorer.bgl import bgl_files
    logs = Path(args.logs) if args.logs else None
    source = Path(args.data)
    if not bgl_files(source) and logs is not None:
        source = logs.parent  # --data is HDFS's (make's default DATA): train beside the replayed sample
    if logs is None:
        logs = source / "BGL_2k.log"
    if not logs.exists():
        raise SystemExit(f"demo: no BGL log to replay at {logs}; give LOGS=<a loghub BGL file> (e.g. "
                         "../shared/data/bgl/BGL_2k.log)")
    others = [f for f in bgl_files(source) if f.resolve() != logs.resolve()]
    if not others:
        raise SystemExit(f"demo: no BGL sample to train on in {source} besides {logs.name}; give --data DIR with "
                         "loghub BGL *.log files")
    train_dir = work / "train-bgl"
    shutil.rmtree(train_dir, ignore_errors=True)
    train_dir.mkdir(parents=True)
    for f in others + ([source / TEMPLATES_FILE] if (source / TEMPLATES_FILE).exists() else []):
        (train_dir / f.name).symlink_to(f.resolve())
    return logs, train_dir


def prepare_data(args: argparse.Namespace, work: Path) -> tuple[Path, Path | None, Path]:
    """(log to replay, its labels, a labelled folder to train on)."""
    from logmesh.ingest.generator import GeneratorConfig, write_generated
    if args.format == "bgl":
        logs, train_dir = prepare_bgl(args, work)
        return logs, None, train_dir
    if args.logs:
        logs, labels = Path(args.logs), Path(args.labels) if args.labels else None
    else:
        logs, labels = generated_replay(work, args.lines, seed=7)
    train_dir = Path(args.data)
    if not (train_dir / "anomaly_label.csv").exists():
        train_dir = work / "train"
        if not (train_dir / "anomaly_label.csv").exists():
            train_dir.mkdir(parents=True, exist_ok=True)
            write_generated(GeneratorConfig(lines=50_000, seed=1), train_dir / "HDFS_train.log",
                            train_dir / "anomaly_label.csv")
            say(f"no labelled data at {args.data}; training on generated data in {train_dir}")
    return logs, labels, train_dir


def generated_replay(work: Path, lines: int, seed: int) -> tuple[Path, Path]:
    """A generated log of `lines` lines and its labels (made once per size and seed, then reused)."""
    from logmesh.ingest.generator import GeneratorConfig, write_generated
    suffix = "" if seed == 7 else f"-seed{seed}"  # seed 7: the file name earlier demos wrote
    logs, labels = work / f"replay/HDFS_generated{suffix}.log", work / f"replay/anomaly_label{suffix}.csv"
    stamp = logs.with_suffix(".lines")  # the size it was made with: another --lines makes it again
    if not logs.exists() or not stamp.exists() or stamp.read_text() != str(lines):
        logs.parent.mkdir(parents=True, exist_ok=True)
        summary = write_generated(GeneratorConfig(lines=lines, seed=seed), logs, labels)
        stamp.write_text(str(lines))
        say(f"generated {summary.lines:,} HDFS lines in {summary.blocks:,} blocks -> {logs}")
    return logs, labels


def reset_topics(prefix: str) -> dict[str, str]:
    """Fresh topics for this run, so the job reads exactly this replay."""
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    names = {k: f"{prefix}.{k}" for k in TOPICS}
    existing = set(admin.list_topics(timeout=10).topics)
    stale = [n for n in names.values() if n in existing]
    if stale:
        for f in admin.delete_topics(stale).values():
            f.result(30)
        time.sleep(1)
    for f in admin.create_topics([NewTopic(names[k], num_partitions=p, replication_factor=1)
                                  for k, p in TOPICS.items()]).values():
        f.result(30)
    return names


class Tally:
    """Reads the result topics as the job writes them."""

    def __init__(self, names: dict[str, str]) -> None:
        self.scored = 0
        self.line_anomalies = 0
        self.finals = 0
        self.alerts: dict[str, score_pb2.BlockVerdict] = {}
        self.lines: dict[str, list[str]] = {}
        self.labels: dict[str, tuple[bool, str, str, int]] = {}  # id -> (alert, category, session, time): BGL
        self.flagged: set[str] = set()  # record ids of the anomalous lines
        self._consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"demo-{uuid.uuid4()}",
                                   "auto.offset.reset": "earliest", "enable.auto.commit": False})
        self._consumer.subscribe([names["logs"], names["scores"], names["anomalies"]])
        self._logs, self._scores, self._anomalies = names["logs"], names["scores"], names["anomalies"]
        # producer->verdict latency: Kafka CreateTime of a LogRecord and of its ScoreResult (one clock)
        self.produced_at: dict[str, int] = {}
        self.scored_at: dict[str, int] = {}
        # time to detect: each block's lines as (produce time, event id), and when its alert was written
        self.block_lines: dict[str, list[tuple[int, str]]] = {}
        self.alerted_at: dict[str, int] = {}
        self.warm_up_blocks: set[str] = set()  # blocks of the warm-up replay: kept out of every figure
        self.cold_start: dict[str, float] = {}  # the warm-up's latency, when it replayed more than a line
        # the live view: blocks with a scored line (an alert shows once its block's lines have), and the
        # lines in the order they were produced, to find the oldest one not scored yet (the lag)
        self.scored_blocks: set[str] = set()
        self._unscored: collections.deque[tuple[int, str]] = collections.deque()

    def start_measuring(self, warm_up_blocks: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        """Forgets the warm-up: what it scored, and (for good) the verdicts of its blocks, which may still
        close and alert while the measured replay runs."""
        self.warm_up_blocks |= warm_up_blocks
        self.scored = self.line_anomalies = self.finals = 0
        for table in (self.alerts, self.lines, self.labels, self.flagged, self.produced_at, self.scored_at,
                      self.block_lines, self.alerted_at,
                      self.scored_blocks, self._unscored):
            table.clear()

    def shown_alerts(self) -> int:
        """Block alerts whose block has a scored line here: the anomalies topic can be read before the
        scores written in the same transaction, and a view should not alert on lines it has not shown."""
        return sum(1 for b in self.alerts if b in self.scored_blocks)

    def lag(self) -> tuple[int, float]:
        """(lines produced but not scored yet, seconds the oldest of them has waited)."""
        while self._unscored and self._unscored[0][1] in self.scored_at:
            self._unscored.popleft()
        waited = (time.time() * 1000 - self._unscored[0][0]) / 1000 if self._unscored else 0.0
        return len(self.produced_at) - len(self.scored_at.keys() & self.produced_at.keys()), max(waited, 0.0)

    def latencies_s(self) -> list[float]:
        """Producer->verdict seconds of every scored line: Kafka CreateTime of its ScoreResult less its LogRecord's."""
        return [(self.scored_at[r] - t) / 1000 for r, t in self.produced_at.items() if r in self.scored_at]

    def poll(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for msg in self._consumer.consume(2000, timeout=0.2):
                if msg.error():
                    continue
                if msg.topic() == self._logs:
                    try:
                        record = log_record_pb2.LogRecord.FromString(msg.value())
                    except Exception:
                        continue  # not a LogRecord: the job sends it to the DLQ
                    self.produced_at[record.id] = msg.timestamp()[1]
                    if record.label:  # ground truth the replay carried (BGL --line-labels): the report's only
                        self.labels[record.id] = (record.label == log_record_pb2.LABEL_ANOMALY, record.alert_category,
                                                  record.block_ids[0] if record.block_ids else "",
                                                  record.event_time.seconds)
                    self._unscored.append((msg.timestamp()[1], record.id))
                    if record.block_ids:
                        self.block_lines.setdefault(record.block_ids[0], []).append(
                            (msg.timestamp()[1], record.template_id))
                    continue
                if msg.topic() == self._scores:
                    self.scored += 1
                    result = score_pb2.ScoreResult.FromString(msg.value())
                    self.scored_at[result.record_id] = msg.timestamp()[1]
                    self.scored_blocks.update(result.block_ids)
                    continue
                anomaly = score_pb2.Anomaly.FromString(msg.value())
                if self.warm_up_blocks and self.warm_up_blocks & (
                        {anomaly.block.block_id} if anomaly.HasField("block") else set(anomaly.line.block_ids)):
                    continue
                if anomaly.HasField("block") and anomaly.block.kind == score_pb2.BLOCK_VERDICT_KIND_ALERT:
                    self.alerts.setdefault(anomaly.block.block_id, anomaly.block)
                    self.alerted_at.setdefault(anomaly.block.block_id, msg.timestamp()[1])
                elif anomaly.HasField("block") and anomaly.block.kind == score_pb2.BLOCK_VERDICT_KIND_FINAL:
                    self.finals += 1
                elif anomaly.HasField("line"):
                    self.line_anomalies += 1
                    self.flagged.add(anomaly.line.record_id)
                    for block in anomaly.line.block_ids:
                        self.lines.setdefault(block, []).append(anomaly.line.message)

    def close(self) -> None:
        self._consumer.close()


def secure(folder: Path) -> list[str]:
    """Makes a local CA, certificates and a token; sets the client environment every part inherits (the
    job, the scorer's calls to the embedder, this demo's clients) and returns the servers' flags."""
    import secrets
    subprocess.run([str(REPO / "deploy/tls/make-certs.sh"), str(folder)], check=True, stdout=subprocess.DEVNULL)
    tokens = folder / "tokens"
    if not tokens.exists():
        tokens.write_text(secrets.token_urlsafe(24) + "\n")
        tokens.chmod(0o600)
    os.environ.update(LOGMESH_TLS_CA=str(folder / "ca.pem"), LOGMESH_TLS_CERT=str(folder / "client.pem"),
                      LOGMESH_TLS_KEY=str(folder / "client.key"), LOGMESH_TOKEN=tokens.read_text().strip())
    say(f"secure: mutual TLS with the local CA in {folder}, bearer token in {tokens}")
    return ["--tls-cert", str(folder / "server.pem"), "--tls-key", str(folder / "server.key"),
            "--tls-client-ca", str(folder / "ca.pem"), "--token-file", str(tokens)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/hdfs", help="labelled folder to train on if no model exists")
    parser.add_argument("--models", default="models", help="model dir (trained here when empty)")
    parser.add_argument("--logs", default=os.environ.get("LOGS") or None, help="log to replay (default: generated)")
    parser.add_argument("--labels", default=os.environ.get("LABELS") or None, help="anomaly_label.csv for --logs")
    parser.add_argument("--format", choices=["auto", "hdfs", "bgl"], default=os.environ.get("FORMAT") or "auto",
                        help="log family of --logs (also FORMAT=); auto: detected from its first lines. bgl: "
                             "trains on the data folder's other BGL samples into MODELS/bgl (default %(default)s)")
    parser.add_argument("--lines", type=int, default=100_000, help="lines to generate when no --logs (default %(default)s)")
    parser.add_argument("--rate", type=float, default=None, help="replay rate in lines/s (default: as fast as possible)")
    parser.add_argument("--work", default="var/demo", help="demo state: data, checkpoint, vector store, logs")
    parser.add_argument("--secure", action="store_true", default=os.environ.get("SECURE") == "1",
                        help="mutual TLS and a bearer token between every part, with a local CA made by "
                             "deploy/tls/make-certs.sh (also: SECURE=1 make demo)")
    parser.add_argument("--warm-up-lines", type=int, default=1,
                        help="lines the job scores before the measured replay: 1 waits for Spark to be up; more "
                             "replays that many generated lines at --rate first, so the figures are of a warm "
                             "job, with the cold start reported apart (default %(default)s)")
    parser.add_argument("--no-close-wait", action="store_true",
                        help="report once every line is scored, without waiting for blocks to close (benchmarks)")
    parser.add_argument("--runs", type=int, default=1,
                        help="measured replays in a row against the same running job, each of a freshly "
                             "generated log of --lines lines (benchmarks; not with --logs) (default %(default)s)")
    parser.add_argument("--block-clock", choices=["processing", "event"], default="processing",
                        help="the job's --block-clock: processing closes a block once lines produced 5 s after its last "
                             "line were read, and judges the blocks still open 10 s after the replay stopped as cut "
                             "prefixes; "
                             "event closes them 30 s of log time after their last line, so blocks still active "
                             "when the replay ends stay open (default %(default)s)")
    parser.add_argument("--embedder-port", type=int, default=50051, help="the embedder's port (default %(default)s)")
    parser.add_argument("--scorer-port", type=int, default=50052, help="the scorer's port (default %(default)s)")
    parser.add_argument("--topic-prefix", default="logmesh.demo",
                        help="the run's topics are PREFIX.logs, .scores, .anomalies, .dlq, made afresh (default %(default)s)")
    args = parser.parse_args(argv)
    if args.block_clock == "event" and args.warm_up_lines > 1:
        parser.error("--block-clock event follows the replay's own timeline; a generated warm-up would move the "
                     "watermark past it: drop --warm-up-lines")
    if args.runs > 1 and args.logs:
        parser.error("--runs > 1 replays generated logs; it cannot be combined with --logs")
    if args.format == "auto":
        from logmesh.ingest.families import resolve
        args.format = resolve("auto", [args.logs]) if args.logs else "hdfs"
    if args.format == "bgl" and (args.runs > 1 or args.warm_up_lines > 1):
        parser.error("--runs and --warm-up-lines replay generated HDFS logs; with a BGL log, leave them out")

    work = Path(args.work)
    run_dir = work / "run"
    for stale in ("checkpoint", "qdrant", "run"):
        shutil.rmtree(work / stale, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    logs, labels, train_dir = prepare_data(args, work)
    models = Path(args.models) / ("bgl" if args.format == "bgl" else "")  # a scorer serves one family
    if artifacts.newest(models) is None:
        say(f"no model in {models}/: training on {train_dir} ...")
        subprocess.run([str(BIN), "train", "--data", str(train_dir), "--out", str(models), "--log-level", "warning",
                        "--format", args.format], check=True)

    stack = Stack(run_dir)
    tally: Tally | None = None
    interrupted = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: interrupted.set())
    try:
        if subprocess.run([str(KAFKA), "status"], capture_output=True).returncode != 0:
            say("starting the Kafka broker (KRaft, 127.0.0.1:9092) ...")
            subprocess.run([str(KAFKA), "start"], check=True, stdout=subprocess.DEVNULL)
            stack.started_broker = True
        subprocess.run([str(KAFKA), "wait"], check=True, stdout=subprocess.DEVNULL)
        names = reset_topics(args.topic_prefix)
        secured = secure(work / "tls") if args.secure else []
        embedder, scorer = f"127.0.0.1:{args.embedder_port}", f"127.0.0.1:{args.scorer_port}"
        say(f"starting embedder :{args.embedder_port}, scorer :{args.scorer_port} and the Spark job; logs in {run_dir}")
        stack.start("embedder", ["serve", "embedder", "--port", str(args.embedder_port), *secured])
        stack.start("scorer", ["serve", "scorer", "--port", str(args.scorer_port), "--embedder", embedder,
                               "--model-dir", str(models), "--anomalies-topic", names["anomalies"], *secured])
        EmbedderClient(embedder).wait_until_serving(180)
        ScorerClient(scorer).wait_until_serving(60)
        stack.start("stream", ["stream", "--embedder", embedder, "--scorer", scorer,
                               "--topic", names["logs"], "--scores-topic", names["scores"],
                               "--anomalies-topic", names["anomalies"], "--dlq-topic", names["dlq"],
                               "--qdrant-path", str(work / "qdrant"),
                               "--checkpoint", str(work / "checkpoint"), "--log-level", "info",
                               "--block-clock", args.block_clock,
                               *(["--block-stall-ms", str(STALL_MS)] if args.block_clock == "processing" else []),
                               "--block-quiet-ms", str(QUIET_MS if args.block_clock == "processing" else EVENT_QUIET_MS)])
        tally = Tally(dict(names))
        warm_up(names["logs"], logs, tally, interrupted, args.warm_up_lines, args.rate, work / "replay",
                run_dir / "stream.log", args.format)
        for run in range(1, args.runs + 1):
            if interrupted.is_set():  # Ctrl-C during the warm-up
                return 0
            if run > 1:  # a fresh generated log each time: new blocks, so each run has alerts of its own
                logs, labels = generated_replay(work, args.lines, seed=6 + run)
                tally.start_measuring(set(tally.block_lines) | set(tally.alerts))
            if args.runs > 1:
                say(f"run {run}/{args.runs}")
            failed = measured_replay(args, run, logs, labels, names["logs"], tally, stack, interrupted)
            if failed or interrupted.is_set():
                return failed
        stack.stop_one("stream")  # the job holds the embedded store; its block points say how each block ended
        report_block_endings(work / "qdrant", warm_up=args.warm_up_lines > 1)
        return 0
    finally:
        if tally is not None:  # before the broker goes: else librdkafka logs every failed reconnect
            tally.close()
        say("stopping the job, the scorer, the embedder" + (" and the broker" if stack.started_broker else ""))
        stack.stop()


def measured_replay(args: argparse.Namespace, run: int, logs: Path, labels: Path | None, topic: str,
                    tally: Tally, stack: Stack, interrupted: threading.Event) -> int:
    """Replays `logs` into the job beside it, as a producer would in production, prints progress and
    the report; returns 1 when a part of the stack died or nothing moved for 3 minutes."""
    from logmesh.ingest.producer import run_ingest
    produced: dict[str, object] = {}
    bgl = args.format == "bgl"  # BGL's labels are the lines' own: kept in the records for the report only
    replay = threading.Thread(target=lambda: produced.update(summary=run_ingest(
        logs, BOOTSTRAP, topic, rate=args.rate, labels_csv=labels, progress=False, family=args.format,
        line_labels=bgl)), daemon=True)
    started = time.monotonic()
    replay.start()
    say(f"replaying {logs} into {topic} ...")
    total = None
    scoring_seconds = None  # replay start to the last ScoreResult
    last_change, last_scored = time.monotonic(), 0
    while not interrupted.is_set():
        tally.poll(1.0)
        if "summary" in produced:
            total = produced["summary"].produced  # type: ignore[attr-defined]
        elapsed = time.monotonic() - started
        progress_line(tally, elapsed, tally.scored - last_scored, total)
        if tally.scored != last_scored:
            last_change, last_scored = time.monotonic(), tally.scored
        if total is not None and tally.scored >= total:
            scoring_seconds = time.monotonic() - started
            if not args.no_close_wait:
                wait_for_blocks_to_close(tally, interrupted, args.block_clock)
            break
        if any(p.poll() is not None for _, p in stack.procs):
            dead = [n for n, p in stack.procs if p.poll() is not None]
            say(f"{', '.join(dead)} stopped unexpectedly; see {stack.run_dir}/{dead[0]}.log")
            return 1
        if time.monotonic() - last_change > 180:
            say(f"no progress for 3 minutes; see the logs in {stack.run_dir}")
            return 1
    figures = report(tally, labels, scoring_seconds or time.monotonic() - started, interrupted.is_set(), args.rate)
    if bgl:
        meta = artifacts.load(Path(args.models) / "bgl", artifacts.newest(Path(args.models) / "bgl")).meta
        figures.update(report_bgl_lines(tally, meta["split"]["train_until"]))
    print("demo: result " + json.dumps({"run": run, "rate": args.rate, "log": str(logs), **figures,
                                         **({"cold_start": tally.cold_start} if run == 1 and tally.cold_start else {})}),
          flush=True)
    return 0


def progress_line(tally: Tally, elapsed: float, new: int, total: int | None) -> None:
    """One line a second: what was produced and scored, what the job is doing, and how far behind it is.
    Results land a micro-batch at a time (each batch is one Kafka transaction), so `scored` moves in steps
    of a batch; the lag says how much is waiting meanwhile."""
    behind, waited = tally.lag()
    produced = len(tally.produced_at)
    if not produced:
        doing = "waiting for the replay's first lines"
    elif not tally.scored:
        doing = f"the job is reading and scoring its first micro-batch (oldest line waiting {waited:.1f} s)"
    elif behind:
        doing = f"{behind:,} lines waiting, the oldest for {waited:.1f} s"
    else:
        doing = "caught up"
    say(f"{elapsed:5.0f}s  produced {produced:>7,}{'/' + format(total, ',') if total else ''}  scored "
        f"{tally.scored:>7,} (+{new:,})  line anomalies {tally.line_anomalies:,}  block alerts "
        f"{tally.shown_alerts():,}  | {doing}")


def wait_for_blocks_to_close(tally: Tally, interrupted: threading.Event, clock: str = "processing",
                             limit_s: float = 90.0) -> None:
    """Every line is scored and the replay is over, so the stream has stopped: blocks that the stream went
    on without for QUIET_MS have closed (or close now), the others stay open, and after STALL_MS of a
    stopped stream the job judges them as cut prefixes. Waits for that, and until no new alert or final
    verdict has come for three quiet periods (at most `limit_s`)."""
    at_least = (STALL_MS + 2 * QUIET_MS) / 1000 if clock == "processing" else 0
    say("all lines scored and the replay is over: blocks still being written stay open (the stream stopped, "
        "they did not go quiet)" + (f"; waiting {at_least:.0f} s for the job to judge them as cut prefixes ..."
                                    if at_least else " ..."))
    started = last_change = time.monotonic()
    seen = (len(tally.alerts), tally.finals)
    while not interrupted.is_set() and (time.monotonic() - last_change < 3 * QUIET_MS / 1000
                                        or time.monotonic() - started < at_least):
        tally.poll(1.0)
        if (len(tally.alerts), tally.finals) != seen:
            seen, last_change = (len(tally.alerts), tally.finals), time.monotonic()
        if time.monotonic() - started > limit_s:
            say("blocks still closing; reporting what has arrived")
            return


def report_block_endings(store_path: Path, warm_up: bool) -> dict[str, int]:
    """How each block of the run ended, from the job's block points (read once the job has stopped):
    closed as complete because the stream went on without it ("quiet"), judged as a cut prefix because
    the stream stopped ("stream-stopped"), or still open. Prints them and a `demo: blocks {json}` line."""
    from logmesh.streaming.block_sessions import QUIET, STREAM_STOPPED
    from logmesh.streaming.vector_store import open_store
    try:
        store = open_store(path=str(store_path))
    except Exception as exc:  # noqa: BLE001 - the figures are a report; the run itself is done
        say(f"could not read the block points in {store_path} ({exc}); no block endings to report")
        return {}
    try:
        counts = {"blocks": store.count({"kind": "block"}), QUIET: store.count({"kind": "block", "ended": QUIET}),
                  STREAM_STOPPED: store.count({"kind": "block", "ended": STREAM_STOPPED})}
        warm = store.retrieve([WARM_UP_BLOCK]).get(WARM_UP_BLOCK)  # the warm-up line's block: not the replay's
    finally:
        store.close()
    if warm is not None:
        counts["blocks"] -= 1
        if warm.payload.get("ended") in (QUIET, STREAM_STOPPED):
            counts[warm.payload["ended"]] -= 1
    counts["open"] = counts["blocks"] - counts[QUIET] - counts[STREAM_STOPPED]
    say(f"how the {counts['blocks']:,} blocks{' (warm-up blocks included)' if warm_up else ''} ended: "
        f"{counts[QUIET]:,} closed as complete (the stream went on {QUIET_MS / 1000:.0f} s without them), "
        f"{counts[STREAM_STOPPED]:,} judged as cut prefixes (the stream stopped with them open), "
        f"{counts['open']:,} still open")
    print("demo: blocks " + json.dumps(counts), flush=True)
    return counts


def time_to_detect(tally: Tally, truth: dict[str, int]) -> dict[str, float]:
    """Seconds from a failing block's first anomalous line to its alert. A line is anomalous when its
    event never occurs in this replay's Normal blocks (an exception, a timeout); failing blocks without
    such a line (missing steps) can only be judged when they close, so they are counted apart."""
    normal_events = {e for b, lines in tally.block_lines.items() if truth.get(b) == 0 for _, e in lines}
    delays, closing_only = [], 0
    for block, alerted in tally.alerted_at.items():
        if truth.get(block) != 1:
            continue
        first = next((t for t, e in sorted(tally.block_lines.get(block, [])) if e not in normal_events), None)
        if first is None:
            closing_only += 1
        else:
            delays.append((alerted - first) / 1000)
    if delays:
        import numpy as np
        p50, p99 = np.percentile(delays, [50, 99])
        say(f"time to detect over {len(delays)} failing blocks with an anomalous line: p50 {p50:.2f} s, "
            f"p99 {p99:.2f} s ({closing_only} more were alerted when they closed)")
        return {"ttd_blocks": len(delays), "ttd_p50_s": round(float(p50), 3), "ttd_p99_s": round(float(p99), 3)}
    return {}


def warm_up(topic: str, log: Path, tally: Tally, interrupted: threading.Event, lines: int = 1,
            rate: float | None = None, folder: Path | None = None, job_log: Path | None = None,
            family: str = "hdfs") -> None:
    """Sends the log's first line and waits for its verdict, so the replay starts once Spark is up and
    the latency figures measure the pipeline, not the JVM's start. With `lines` > 1, then replays that
    many generated lines (other blocks than the replay's, seed 99) at `rate` and waits for their
    verdicts too: a job that has just started is slow for its first micro-batches (JIT, Python workers,
    the first batches' backlog), and a benchmark of a job that runs for days should measure it warm.
    What the warm-up took is printed (the cold-start figures); the tally then forgets it."""
    from confluent_kafka import Producer
    from logmesh.ingest.hdfs import parse_line
    with open(log, encoding="utf-8", errors="replace") as f:
        if family == "bgl":
            from logmesh.ingest.families.bgl import BglFamily
            record = BglFamily().record(next(f), "warm-up", 0)
        else:
            record = parse_line(next(f), "warm-up", 0)
    # a block of its own, kept out of every figure: the replay's first block must not get an extra line
    del record.block_ids[:]
    record.block_ids.append(WARM_UP_BLOCK)
    producer = Producer({"bootstrap.servers": BOOTSTRAP})
    producer.produce(topic, value=record.SerializeToString(), key=WARM_UP_BLOCK.encode())
    producer.flush(30)
    say("waiting for the Spark job to score a first line ...")
    started = time.monotonic()
    _wait_for_scores(tally, 1, interrupted, started, 300, "the Spark job scored nothing in 5 minutes", job_log)
    say(f"the job is up ({time.monotonic() - started:.0f} s)")
    if lines > 1:
        from logmesh.ingest.generator import GeneratorConfig, write_generated
        from logmesh.ingest.producer import run_ingest
        warm_log = (folder or log.parent) / f"warm-up-{lines}.log"
        if not warm_log.exists():
            warm_log.parent.mkdir(parents=True, exist_ok=True)
            write_generated(GeneratorConfig(lines=lines, seed=99), warm_log, warm_log.with_suffix(".labels.csv"))
        say(f"warming up: {lines:,} generated lines at {f'{rate:,.0f} lines/s' if rate else 'full speed'} ...")
        started, before = time.monotonic(), set(tally.block_lines)
        summary = run_ingest(warm_log, BOOTSTRAP, topic, rate=rate, labels_csv=None, progress=False)
        _wait_for_scores(tally, 1 + summary.produced, interrupted, started, 300, "the warm-up was not scored in 5 minutes")
        if interrupted.is_set():  # Ctrl-C: no figures to print; main stops the stack
            return
        waits = tally.latencies_s()
        import numpy as np
        p50, p99 = np.percentile(waits, [50, 99])
        say(f"warm-up done in {time.monotonic() - started:.0f} s: cold-start producer->verdict p50 {p50:.2f} s, "
            f"p99 {p99:.2f} s over {len(waits):,} lines")
        tally.cold_start = {"lines": len(waits), "p50_s": round(float(p50), 3), "p99_s": round(float(p99), 3)}
        tally.start_measuring(set(tally.block_lines) - before | {WARM_UP_BLOCK})
    else:
        tally.start_measuring({WARM_UP_BLOCK})


JOB_PHASES = {  # the job's own log lines (JSON, info) -> what the live view says it is doing
    "waiting for service": "waiting for the {service} at {address}",
    "service serving": "the {service} at {address} is serving",
    "stream started": "the query has started: planning and reading its first micro-batch",
    "batch written": "micro-batch {batch_id} written",
}


def job_phase(job_log: Path) -> str:
    """What the starting job did last, from its log: Spark's start first, then the services, the query."""
    try:
        lines = job_log.read_text(errors="replace").splitlines()
    except OSError:
        return "starting"
    for line in reversed(lines):
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("msg") in JOB_PHASES:
            return JOB_PHASES[entry["msg"]].format_map(collections.defaultdict(str, entry))
    return "starting Spark (its JVM and session)"


def _wait_for_scores(tally: Tally, count: int, interrupted: threading.Event, started: float, limit_s: float,
                     failure: str, job_log: Path | None = None) -> None:
    shown = ""
    while tally.scored < count and not interrupted.is_set():
        tally.poll(1.0)
        if job_log is not None and (phase := job_phase(job_log)) != shown:
            say(f"  {time.monotonic() - started:4.0f}s  job: {phase}")
            shown = phase
        if time.monotonic() - started > limit_s:
            raise RuntimeError(f"{failure}; see the job's log (var/demo/run/stream.log for the demo)")


def report(tally: Tally, labels: Path | None, seconds: float, interrupted: bool,
           rate: float | None = None) -> dict[str, float]:
    """Prints the run's summary; returns its figures (for `logmesh bench`)."""
    figures: dict[str, float] = {"scored": tally.scored, "seconds": round(seconds, 2),
                                 "lines_per_s": round(tally.scored / max(seconds, 1e-9), 1),
                                 "blocks_alerted": len(tally.alerts), "finals": tally.finals}
    say(("interrupted: " if interrupted else "done: ") +
        f"{tally.scored:,} lines scored in {seconds:.1f} s ({figures['lines_per_s']:,.0f} lines/s from the replay's "
        f"start), {tally.line_anomalies:,} anomalous lines, {len(tally.alerts):,} blocks alerted, "
        f"{tally.finals:,} final anomalous verdicts")
    top = sorted(tally.alerts.values(), key=lambda v: -v.score)[:5]
    for v in top:
        say(f"  ALERT {v.block_id}  score {v.score:.2f}  events {' '.join(v.events[:12])}"
            f"{' ...' if len(v.events) > 12 else ''}")
        for line in tally.lines.get(v.block_id, [])[:2]:
            say(f"        read: {line[:110]}")
    waits = tally.latencies_s()
    if waits:
        import numpy as np
        p50, p99 = np.percentile(waits, [50, 99])
        figures.update(p50_s=round(float(p50), 3), p99_s=round(float(p99), 3), max_s=max(waits))
        say(f"producer->verdict latency over {len(waits):,} lines: p50 {p50:.2f} s, p99 {p99:.2f} s")
        produced = [t for r, t in tally.produced_at.items() if r in tally.scored_at]
        results = [tally.scored_at[r] for r in tally.produced_at if r in tally.scored_at]
        produced_s, first_s = (max(produced) - min(produced)) / 1000, (min(results) - min(produced)) / 1000
        after_s = (max(results) - min(results)) / 1000
        figures.update(produced_s=round(produced_s, 2), first_result_s=round(first_s, 2))
        if rate is None:
            # a full-speed replay is a backlog: a line's wait is mostly the lines queued before it
            say(f"  at full speed the replay was produced in {produced_s:.1f} s; the first results came {first_s:.1f} s "
                f"after its first line and the last {after_s:.1f} s after those, so lines queued: this latency is "
                "mostly the wait behind earlier lines. A live feed's latency: --rate 2000 (`make bench` measures "
                "it on a warm job)")
    if labels and labels.exists():
        from logmesh.ingest.labels import read_block_labels
        truth = read_block_labels(labels)
        figures.update(time_to_detect(tally, truth))
        anomalous = {b for b, y in truth.items() if y}
        hits = len(anomalous & set(tally.alerts))
        figures.update(recall=round(hits / max(len(anomalous), 1), 3), false_alerts=len(set(tally.alerts) - anomalous))
        say(f"against {labels.name}: {hits}/{len(anomalous)} anomalous blocks alerted "
            f"(recall {figures['recall']:.3f}), {figures['false_alerts']} false alerts "
            "(alerts raised on open blocks count too)")
    return figures


def report_bgl_lines(tally: Tally, cut: float) -> dict[str, float]:
    """BGL: the lines' verdicts and the node alerts against the replay's label column (which the detector never
    read). The model trained on other samples' lines up to its cut time; the replayed sample spans the same
    months, so the headline figures are those of its lines after the cut (held out in time as well), with all
    lines beside them."""
    seen = {r: v for r, v in tally.labels.items() if r in tally.scored_at}
    if not seen:
        return {}
    out: dict[str, float] = {}
    for name, part in (("held_out", {r: v for r, v in seen.items() if v[3] > cut}), ("all", seen)):
        alerts = sum(1 for v in part.values() if v[0])
        tp = sum(1 for r, v in part.items() if v[0] and r in tally.flagged)
        fp = sum(1 for r, v in part.items() if not v[0] and r in tally.flagged)
        normal = len(part) - alerts
        precision, recall = tp / max(tp + fp, 1), tp / max(alerts, 1)
        f1 = 2 * precision * recall / max(precision + recall, 1e-12)
        what = "lines after the model's training cut" if name == "held_out" else "all lines"
        say(f"against the label column (never read by the detector), {what} ({len(part):,}): {tp}/{alerts} alert "
            f"lines flagged (recall {recall:.3f}), {fp} of {normal:,} normal lines flagged (FPR "
            f"{fp / max(normal, 1):.3%}), line F1 {f1:.3f}")
        out.update({f"{name}_lines": len(part), f"{name}_line_tp": tp, f"{name}_line_fp": fp,
                    f"{name}_line_fn": alerts - tp, f"{name}_line_f1": round(f1, 4),
                    f"{name}_line_fpr": round(fp / max(normal, 1), 5)})
    nodes = {v[2] for v in seen.values() if v[0]}
    alerted = set(tally.alerts)
    missed = collections.Counter(v[1] for r, v in seen.items() if v[0] and r not in tally.flagged)
    say(f"  nodes: {len(nodes & alerted)}/{len(nodes)} with an alert line alerted, {len(alerted - nodes)} alerted "
        "without one")
    if missed:
        say("  missed alert lines by category: " + ", ".join(f"{c} {n}" for c, n in missed.most_common(8)))
    out.update(nodes_with_alerts=len(nodes), nodes_alerted_right=len(nodes & alerted),
               nodes_alerted_wrong=len(alerted - nodes))
    return out


if __name__ == "__main__":
    sys.exit(main())
