"""`python -m bench bgl`: BGL through the whole pipeline beside HDFS, in the same run (issue 16, Speed).

Each run starts a fresh stack per family, HDFS then BGL, so both see the same load: the broker's fresh topics, an
embedder with an empty cache and its Prometheus metrics on, a scorer on that family's model, and the Spark job
(`logmesh stream`, its defaults but the demo's block closing). After one warm-up line (Spark's start is not in the
figure) the family's real log is replayed at full speed with `run_ingest`:
  HDFS  ../shared/data/hdfs/HDFS_20000.log (20,000 lines), the model `make demo` trains into models/
  BGL   ../shared/data/bgl/BGL_16k.log (16,000 lines, label column kept in the records for reports only), a model
        trained by this section on the seven other samples (var/bench/bgl-models, retrained every run of the
        section, so it matches the code measured)
Figures per run: lines/s = scored lines over Kafka CreateTime of the last ScoreResult minus that of the replay's
first LogRecord (the demo's "from the replay's start"); the embedder's cache hit rate over the replay (its
logmesh_embedder_cache_lookups_total counter, before and after: the job embeds each distinct shape of a
partition's batch once, so lookups are per distinct shape per call, not per line); the BGL/HDFS ratio per run.
Then, in this process, what template naming costs per line as the scorer does it (scorer/bgl_serving.py): loghub's
377 templates and the artifact's frozen Drain3 on every line with no memo (cold), Drain3's match alone on the
lines no loghub template matches, and the scorer's per-shape memo as served.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
HDFS_DATA = Path(os.environ.get("LOGMESH_DATA", SHARED / "hdfs"))
BGL_DATA = Path(os.environ.get("LOGMESH_BGL_DATA", SHARED / "bgl"))
BGL_REPLAY = "BGL_16k.log"
BIN = Path(sys.executable).with_name("logmesh")
BOOTSTRAP = "127.0.0.1:9092"
WORK = REPO / "var/bench"
PORTS = {"embedder": 50081, "scorer": 50082, "metrics": 50083}
QUIET_MS, STALL_MS = 5000, 10_000  # the demo's block closing (demo/run.py): a replay runs hours in seconds
HIT = re.compile(r'^logmesh_embedder_cache_lookups_total\{result="(hit|miss)"\} ([0-9.e+]+)$', re.M)
#: shapes that reached the model: a lookup that missed while another call encoded the shape waits, and counts a miss
ENCODED = re.compile(r'^logmesh_embedder_shapes_encoded_total ([0-9.e+]+)$', re.M)


def say(msg: str) -> None:
    print(f"bench: bgl: {msg}", flush=True)


# ---------------------------------------------------------------------------------------- inputs
def bgl_model(work: Path) -> Path:
    """Trains the BGL model on the data folder's samples other than the replayed one (symlinked, read in
    place), as `make demo FORMAT=bgl` does; returns the model folder."""
    from logmesh.ingest.bgl_templates import TEMPLATES_FILE
    from logmesh.scorer.bgl import bgl_files
    replay = BGL_DATA / BGL_REPLAY
    others = [f for f in bgl_files(BGL_DATA) if f.name != BGL_REPLAY]
    if not replay.exists() or not others:
        raise RuntimeError(f"BGL samples not found in {BGL_DATA} (need {BGL_REPLAY} and others); set "
                           "LOGMESH_BGL_DATA or run `logmesh datasets fetch bgl`")
    train, models = work / "bgl-train", work / "bgl-models"
    for d in (train, models):
        shutil.rmtree(d, ignore_errors=True)
    train.mkdir(parents=True)
    for f in others + ([BGL_DATA / TEMPLATES_FILE] if (BGL_DATA / TEMPLATES_FILE).exists() else []):
        (train / f.name).symlink_to(f.resolve())
    t = time.monotonic()
    subprocess.run([str(BIN), "train", "--data", str(train), "--out", str(models), "--format", "bgl",
                    "--log-level", "warning"], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    say(f"trained the BGL model on {len(others)} samples in {time.monotonic() - t:.0f} s")
    return models


# ---------------------------------------------------------------------------------------- one stack
def cache_counts() -> tuple[float, float, float]:
    """The embedder's cache hits, misses and shapes encoded so far."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{PORTS['metrics']}/metrics", timeout=10).read().decode()
    return scraped_counts(text)


def scraped_counts(text: str) -> tuple[float, float, float]:
    found, encoded = dict(HIT.findall(text)), ENCODED.findall(text)
    return float(found.get("hit", 0)), float(found.get("miss", 0)), float(encoded[0]) if encoded else 0.0


def warm_up_record(family: str, log: Path):  # type: ignore[no-untyped-def]
    """The log's first line under a session key of its own, so the replay's sessions get no extra line."""
    with open(log, encoding="utf-8", errors="replace") as f:
        first = next(f)
    if family == "bgl":
        from logmesh.ingest.families.bgl import BglFamily
        record = BglFamily().record(first, "warm-up", 0)
    else:
        from logmesh.ingest.hdfs import parse_line
        record = parse_line(first, "warm-up", 0)
    del record.block_ids[:]
    record.block_ids.append("warm-up")
    return record


class Scores:
    """Counts the job's ScoreResults and keeps the last one's CreateTime (ms)."""

    def __init__(self, topic: str) -> None:
        import uuid
        from confluent_kafka import Consumer
        self.count, self.last_ms = 0, 0
        self._c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"bench-bgl-{uuid.uuid4()}",
                            "auto.offset.reset": "earliest", "enable.auto.commit": False})
        self._c.subscribe([topic])

    def wait_for(self, n: int, limit_s: float, alive) -> bool:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + limit_s
        while self.count < n and time.monotonic() < deadline and alive():
            for msg in self._c.consume(5000, timeout=0.5):
                if not msg.error():
                    self.count += 1
                    self.last_ms = max(self.last_ms, msg.timestamp()[1])
        return self.count >= n

    def close(self) -> None:
        self._c.close()


def record_phase(procs: list[tuple[str, subprocess.Popen]], folder: Path) -> list[subprocess.Popen]:
    """py-spy attached to the running job (driver and pyspark workers) and scorer, for one replay only: the
    warm phase's profile without the stack's start or the cold replay's first encodes in it."""
    spy = str(Path(sys.executable).with_name("py-spy"))
    return [subprocess.Popen([spy, "record", "--pid", str(p.pid), "--subprocesses", "--nonblocking", "-r", "50",
                              "-f", "raw", "-o", str(folder / f"warm-{name}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for name, p in procs if name in ("stream", "scorer")]


def one_stack(family: str, log: Path, models: Path, tag: str, pyspy: Path | None = None,
              warm_pyspy: Path | None = None, sink_profile: Path | None = None) -> dict[str, Any]:
    """A fresh stack for `family`, one warm-up line, then `log` at full speed; the run's figures. With `pyspy`
    (a file), the job runs under `py-spy record --subprocesses` (driver and pyspark workers, 25 Hz, raw). With
    `warm_pyspy` (a folder), py-spy records the job and the scorer during the warm replay only. With
    `sink_profile` (a file), the job runs under bench/profile_sink.py, which writes its figures per micro-batch."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic
    from logmesh.client import EmbedderClient, ScorerClient
    from logmesh.ingest.producer import run_ingest
    work = WORK / f"bgl-stack-{tag}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    prefix = f"bench.bgl.{os.getpid()}.{tag}."
    names = {k: prefix + k for k in ("logs", "scores", "anomalies", "dlq")}
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    for f in admin.create_topics([NewTopic(n, num_partitions=4 if k in ("logs", "scores") else 1, replication_factor=1)
                                  for k, n in names.items()]).values():
        f.result(30)
    emb, sco = f"127.0.0.1:{PORTS['embedder']}", f"127.0.0.1:{PORTS['scorer']}"

    def start(name: str, args: list[str], wrap: list[str] = ()) -> subprocess.Popen:  # type: ignore[assignment]
        command = [str(BIN), *args]
        if name == "stream" and sink_profile:  # the same job, with its per-batch figures
            command = [sys.executable, str(REPO / "bench/profile_sink.py"), "--out", str(sink_profile), *args[1:]]
        return subprocess.Popen([*wrap, *command], cwd=REPO, stdout=open(work / f"{name}.log", "w"),
                                stderr=subprocess.STDOUT, start_new_session=True)
    procs: list[tuple[str, subprocess.Popen]] = []
    scores = None
    try:
        procs.append(("embedder", start("embedder", ["serve", "embedder", "--port", str(PORTS["embedder"]),
                                                     "--metrics-port", str(PORTS["metrics"])])))
        procs.append(("scorer", start("scorer", ["serve", "scorer", "--port", str(PORTS["scorer"]), "--embedder", emb,
                                                 "--model-dir", str(models), "--anomalies-topic", names["anomalies"]])))
        EmbedderClient(emb).wait_until_serving(180)
        ScorerClient(sco).wait_until_serving(120)
        procs.append(("stream", start("stream", [
            "stream", "--embedder", emb, "--scorer", sco, "--topic", names["logs"], "--scores-topic", names["scores"],
            "--anomalies-topic", names["anomalies"], "--dlq-topic", names["dlq"], "--qdrant-path", str(work / "qdrant"),
            "--checkpoint", str(work / "checkpoint"), "--log-level", "warning", "--block-stall-ms", str(STALL_MS),
            "--block-quiet-ms", str(QUIET_MS)],
            [str(Path(sys.executable).with_name("py-spy")), "record", "--subprocesses", "-r", "25", "-f", "raw", "-o",
             str(pyspy), "--"] if pyspy else [])))
        alive = lambda: all(p.poll() is None for _, p in procs)  # noqa: E731
        scores = Scores(names["scores"])
        producer = Producer({"bootstrap.servers": BOOTSTRAP})
        producer.produce(names["logs"], value=warm_up_record(family, log).SerializeToString(), key=b"warm-up")
        producer.flush(30)
        t = time.monotonic()
        if not scores.wait_for(1, 300, alive):
            raise RuntimeError(f"{family}: the job scored no warm-up line in 300 s; see {work}/stream.log")
        up_s = time.monotonic() - t
        out: dict[str, Any] = {"family": family, "log": log.name, "job_up_s": round(up_s, 1)}
        # the replay into a stack that has just started (the embedder's cache empty), then the same log again
        # into the same warm stack: every shape known, the steady state of a job that runs for days
        for phase in ("cold", "warm"):
            hits0, misses0, encoded0 = cache_counts()
            spies = record_phase(procs, warm_pyspy) if warm_pyspy and phase == "warm" else []
            before, mark_ms = scores.count, int(time.time() * 1000)
            summary = run_ingest(log, BOOTSTRAP, names["logs"], progress=False, family=family,
                                 line_labels=family == "bgl")
            if not scores.wait_for(before + summary.produced, 600, alive):
                dead = [n for n, p in procs if p.poll() is not None]
                raise RuntimeError(f"{family}: {scores.count - before:,} of {summary.produced:,} lines scored"
                                   + (f"; {', '.join(dead)} stopped, see {work}" if dead else " in 600 s"))
            for spy in spies:  # py-spy writes its file on SIGINT
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
            hits, misses, encoded = cache_counts()
            first_ms = first_create_time(names["logs"], mark_ms)
            hits, misses = hits - hits0, misses - misses0
            scored, secs = scores.count - before, (scores.last_ms - first_ms) / 1000
            figures = {"lines": scored, "produced": summary.produced, "seconds": secs, "replay_from_s": first_ms / 1000,
                       "lines_per_s": scored / max(secs, 1e-9), "cache_lookups": int(hits + misses),
                       "cache_hits": int(hits), "cache_hit_rate": hits / max(hits + misses, 1),
                       "shapes_encoded": int(encoded - encoded0)}
            out.update(figures if phase == "cold" else {"warm": figures})
        return out
    finally:
        if scores is not None:
            scores.close()
        for name, p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGINT if name == "stream" else signal.SIGTERM)
        for _, p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        for f in admin.delete_topics(list(names.values())).values():
            try:
                f.result(30)
            except Exception:  # noqa: BLE001 - a topic left behind is harmless; the figures stand
                pass


def first_create_time(topic: str, after_ms: int = 0) -> int:
    """CreateTime (ms) of the earliest replayed record (not the warm-up line) produced at or after `after_ms`."""
    import uuid
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"bench-bgl-first-{uuid.uuid4()}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    first, seen, deadline = None, 0, time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            msgs = c.consume(10_000, timeout=1.0)
            if not msgs and seen:
                break
            for m in msgs:
                if not m.error() and m.key() != b"warm-up" and m.timestamp()[1] >= after_ms:
                    seen += 1
                    first = m.timestamp()[1] if first is None else min(first, m.timestamp()[1])
    finally:
        c.close()
    if first is None:
        raise RuntimeError(f"no replayed record found in {topic}")
    return first


def distinct_shapes(family: str, log: Path) -> int:
    """Distinct shapes of a log as the job keys its embed calls (ingest/families: record_shape)."""
    from logmesh.ingest.families import record_shape
    if family == "bgl":
        from logmesh.ingest.families.bgl import BglFamily
        make = BglFamily().record
    else:
        from logmesh.ingest.hdfs import parse_line as make  # type: ignore[assignment]
    with open(log, encoding="utf-8", errors="replace") as f:
        return len({record_shape(make(line, "s", i)) for i, line in enumerate(f) if line.strip()})


# ---------------------------------------------------------------------------------------- naming cost
def naming_cost(models: Path) -> dict[str, Any]:
    """Template naming per line, in this process, on the replayed BGL lines (see the module doc)."""
    from logmesh.ingest.bgl_templates import BglTemplates
    from logmesh.ingest.families.base import UNKNOWN_TEMPLATE
    from logmesh.ingest.families.bgl import BglFamily, record_shape
    from logmesh.scorer import artifacts
    from logmesh.scorer.bgl_serving import BglLineScorer
    art = artifacts.load(models, artifacts.newest(models))
    lines = (BGL_DATA / BGL_REPLAY).read_text(errors="replace").splitlines()
    family = BglFamily()
    records = [family.record(l, "bench", i) for i, l in enumerate(lines)]
    drain, known = art.models.get("drain"), art.models.get("templates")
    fresh = BglTemplates(known.templates)  # an empty match cache
    t = time.perf_counter()
    named = [fresh.match(r.message) if r.component else None for r in records]
    templates_s = time.perf_counter() - t
    t = time.perf_counter()
    for r in records[:2000]:
        fresh.scan(r.message)
    uncached_templates_us = (time.perf_counter() - t) / 2000 * 1e6
    to_drain = [(r, n) for r, n in zip(records, named) if not n]
    t = time.perf_counter()
    for r, _ in to_drain:
        drain.event_id(UNKNOWN_TEMPLATE, f"{r.component} {r.level_name}" if r.component else "", r.message)
    drain_s = time.perf_counter() - t
    from logmesh.runtime.grpc_server import Limits
    scorer = BglLineScorer(art, embed=None, limits=Limits())  # event() embeds nothing
    t = time.perf_counter()
    for r in records:
        scorer.event(r)
    served_s = time.perf_counter() - t
    return {"lines": len(records), "shapes": len({record_shape(r) for r in records}),
            "lines_to_drain": len(to_drain), "drain_us_per_drain_line": drain_s / max(len(to_drain), 1) * 1e6,
            "drain_us_per_line": drain_s / len(records) * 1e6,
            "templates_us_per_line_message_cache": templates_s / len(records) * 1e6,
            "templates_us_per_line_no_cache": uncached_templates_us,
            "served_us_per_line": served_s / len(records) * 1e6}


# ---------------------------------------------------------------------------------------- section
def section_bgl(runs: int, quick: bool) -> dict[str, Any]:
    from bench.pipeline import ensure_broker, ensure_model, KAFKA
    started = ensure_broker()
    try:
        ensure_model("models")
        models = {"hdfs": REPO / "models", "bgl": bgl_model(WORK)}
        logs = {"hdfs": HDFS_DATA / "HDFS_20000.log", "bgl": BGL_DATA / BGL_REPLAY}
        res: dict[str, Any] = {"runs": [], "shapes": {f: distinct_shapes(f, p) for f, p in logs.items()}}
        for r in range(1 if quick else runs):
            pair = {}
            for family in ("hdfs", "bgl"):
                say(f"run {r + 1}: {family}: a fresh stack, then {logs[family].name} at full speed ...")
                pair[family] = one_stack(family, logs[family], models[family], f"{family}{r}")
                say(f"run {r + 1}: {family}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                                         for k, v in pair[family].items()))
            pair["ratio"] = pair["bgl"]["lines_per_s"] / pair["hdfs"]["lines_per_s"]
            pair["warm_ratio"] = pair["bgl"]["warm"]["lines_per_s"] / pair["hdfs"]["warm"]["lines_per_s"]
            res["runs"].append(pair)
        res["naming"] = naming_cost(models["bgl"])
        res["ratio_median"] = statistics.median(p["ratio"] for p in res["runs"])
        return res
    finally:
        if started:
            subprocess.run([str(KAFKA), "stop"], check=False)


def render(b: dict[str, Any] | None) -> list[str]:
    """The section's part of docs/benchmarks.md."""
    if not b or not b.get("runs"):
        return []
    runs = b["runs"]
    out = ["## BGL through the whole pipeline, beside HDFS (`python -m bench bgl`, issue 16)", "",
           "Per run a fresh stack per family (broker topics, embedder with an empty cache, scorer on the family's "
           "model, Spark job), one warm-up line, then the family's real log at full speed: HDFS `HDFS_20000.log`, "
           f"BGL `{BGL_REPLAY}` (its model trained on the seven other samples). Lines/s from the replay's first "
           "LogRecord to the last ScoreResult (Kafka CreateTime). Cache hit rate: the embedder's "
           "`logmesh_embedder_cache_lookups_total` over the replay (the job looks up each distinct shape of a "
           "batch once, so this is per shape per call, not per line; two tasks that ask for a shape at once "
           "both miss)" + (f". Distinct shapes: HDFS {b['shapes']['hdfs']:,}, BGL {b['shapes']['bgl']:,}"
                           if b.get("shapes") else "") + ".", "",
           "*cold*: the first replay into the just-started stack; *warm*: the same log again into the same stack "
           "(every shape cached: a job that has run a while).", "",
           "| run | replay | HDFS lines/s | BGL lines/s | BGL / HDFS | HDFS cache hits (lookups) | "
           "BGL cache hits (lookups) | target |", "|---:|---|---:|---:|---:|---:|---:|---|"]
    for i, p in enumerate(runs, 1):
        for phase in ("cold", "warm"):
            h, g = (p["hdfs"], p["bgl"]) if phase == "cold" else (p["hdfs"].get("warm"), p["bgl"].get("warm"))
            if not h or not g:
                continue
            ratio = g["lines_per_s"] / h["lines_per_s"]
            out.append(f"| {i} | {phase} | {h['lines_per_s']:,.0f} ({h['lines']:,} in {h['seconds']:.1f} s) | "
                       f"{g['lines_per_s']:,.0f} ({g['lines']:,} in {g['seconds']:.1f} s) | {ratio:.2f} | "
                       f"{h['cache_hit_rate']:.1%} ({h['cache_lookups']:,}) | {g['cache_hit_rate']:.1%} "
                       f"({g['cache_lookups']:,}) | BGL ≥ HDFS: {'met' if ratio >= 1 else 'not met'} |")
    n = b.get("naming")
    if n:
        out += ["", f"Template naming as the scorer does it, on the {n['lines']:,} BGL lines ({n['shapes']:,} "
                f"shapes), in the bench process: loghub's templates {n['templates_us_per_line_no_cache']:.0f} µs "
                f"per line without any cache, {n['templates_us_per_line_message_cache']:.1f} µs with the per-message "
                f"cache; Drain3's frozen match on the {n['lines_to_drain']:,} lines no loghub template names "
                f"{n['drain_us_per_drain_line']:.0f} µs each ({n['drain_us_per_line']:.2f} µs per replayed line); "
                f"the scorer's per-shape memo as served {n['served_us_per_line']:.1f} µs per line. At the median "
                f"BGL rate ({statistics.median(p['bgl']['lines_per_s'] for p in runs):,.0f} lines/s) a line's "
                f"budget is {1e6 / statistics.median(p['bgl']['lines_per_s'] for p in runs):.0f} µs."]
    out.append("")
    return out


def profile_bgl() -> dict[str, Any]:
    """One BGL stack with py-spy on the job: where its time goes (not part of `make bench`)."""
    from bench.pipeline import ensure_broker, pyspy_summary
    ensure_broker()
    out = WORK / "bgl-pyspy.txt"
    out.unlink(missing_ok=True)
    run = one_stack("bgl", BGL_DATA / BGL_REPLAY, bgl_model(WORK), "bglprof", pyspy=out)
    for _ in range(30):  # py-spy writes its file after the job exits
        if out.exists():
            break
        time.sleep(1)
    return {"run": run, "pyspy": pyspy_summary(out, top=25) if out.exists() else None}


def profile_warm(family: str = "bgl") -> dict[str, Any]:
    """One stack of `family` (bgl, or hdfs to compare), py-spy on the job and the scorer during the warm replay
    only (not part of `make bench`)."""
    from bench.pipeline import ensure_broker, ensure_model, pyspy_summary
    ensure_broker()
    folder = WORK / f"{family}-warm-pyspy"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    if family == "bgl":
        log, models = BGL_DATA / BGL_REPLAY, bgl_model(WORK)
    else:
        ensure_model("models")
        log, models = HDFS_DATA / "HDFS_20000.log", REPO / "models"
    run = one_stack(family, log, models, f"{family}warm", warm_pyspy=folder, sink_profile=folder / "batches.jsonl")
    return {"run": run, "warm_batches": warm_batches(folder / "batches.jsonl", run["warm"]["replay_from_s"]),
            **{f.stem: pyspy_summary(f, top=30) for f in sorted(folder.glob("warm-*.txt"))}}


def warm_batches(path: Path, since_s: float) -> dict[str, Any]:
    """The driver's foreachBatch figures (bench/profile_sink.py) of the batches that began after `since_s`."""
    import json
    sinks = [r for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == "sink" and r["start"] >= since_s]
    return {"batches": len(sinks), "call_s": sum(r["call"] for r in sinks),
            "store_upsert_s": sum(r.get("store_upsert", 0.0) for r in sinks),
            "store_points": sum(r.get("store_points", 0) for r in sinks)}


if __name__ == "__main__":
    import json
    sys.path.insert(0, str(REPO))
    if sys.argv[1:2] == ["--profile"]:
        print(json.dumps(profile_bgl(), indent=1, default=str))
    elif sys.argv[1:2] == ["--profile-warm"]:
        print(json.dumps(profile_warm(*sys.argv[2:3]), indent=1, default=str))
    else:
        print(json.dumps(section_bgl(int(sys.argv[1]) if len(sys.argv) > 1 else 1, False), indent=1, default=str))
