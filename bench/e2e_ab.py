"""A/B end-to-end runs of the streaming job, interleaved in one window on a shared box.

    .venv/bin/python bench/e2e_ab.py --prepare 5f55515 /tmp/lm-base     # an older tree, importable as logmesh
    .venv/bin/python bench/e2e_ab.py --variant base=/tmp/lm-base --variant new=WORKTREE --runs 3 --rate 2000 --lines 60000

Each run is what `python -m demo` does (warm-up line, replay, wait for blocks to close after
5 s quiet), but on its own topics (a unique prefix), its own checkpoint and vector store under --work,
against one embedder and one scorer on private ports shared by all runs (so A and B meet the same
warm caches), with the job run by bench/profile_sink.py (Spark's durations and state metrics per batch).
A variant is `NAME=WORKTREE` (this working tree) or `NAME=DIR`, a tree made by `--prepare REV DIR`: the
whole of commit REV (its job, its sink, its profile_sink.py) under DIR/src, importable as `logmesh` from
DIR/pkg (PYTHONPATH, which Spark passes on to its Python workers), with this tree's generated protobuf
code (contracts only grow) and Spark jars. Both variants meet this tree's servers (with --fresh-servers, each
run starts its own pair from its variant's tree: a cold stack). Runs go A, B, A, B, ...;
each records the load average before and after, and the CPU seconds of the job's process tree (JVM,
pyspark workers, driver) and of the servers from replay start to the last score, which other sessions'
load moves much less than wall time. Writes one JSON per run and a summary to --out, with each
variant's medians and their ratio to the first variant's.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
QUIET_MS = 5000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load() -> str:
    """The 1/5/15-minute load averages, as "['1.23', '0.98', '0.77']"."""
    return str(open("/proc/loadavg").read().split()[:3])


def tree_cpu(root: int, parts: dict | None = None) -> float:
    """CPU seconds (user + system, live processes plus reaped children) of a process tree: the job's
    Python, Spark's JVM and the pyspark daemon and workers. Less sensitive to other sessions' load than
    wall time, since it counts only what this tree ran."""
    from bench.pipeline import _children
    kids, todo, total = _children(), [root], 0
    tick = os.sysconf("SC_CLK_TCK")
    while todo:
        pid = todo.pop()
        todo.extend(kids.get(pid, []))
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            used = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
            total += used
            if parts is not None:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
                kind = ("spark jvm" if "java" in cmd.split(" ")[0] else "pyspark workers" if "pyspark.daemon" in cmd
                        else "driver python (sink)" if "profile_sink" in cmd else "other")
                parts[kind] = parts.get(kind, 0.0) + used / tick
        except (OSError, IndexError, ValueError):
            pass
    return total / tick


def summarise_batches(path: Path, since: float) -> dict:
    recs = [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []
    sinks = {r["batch_id"]: r for r in recs if r["kind"] == "sink" and r["start"] >= since}
    sparks = {r["batch_id"]: r for r in recs if r["kind"] == "spark"}
    rows = []
    for b, s in sorted(sinks.items()):
        sp = sparks.get(b, {})
        d = sp.get("duration_ms", {})
        state = (sp.get("state") or [{}])[0]
        rows.append({"batch": b, "rows": sp.get("rows"), "trigger": d.get("triggerExecution", 0) / 1e3,
                     "addBatch": d.get("addBatch", 0) / 1e3, "call": s["call"], "topandas": s.get("topandas", 0.0),
                     "process": s.get("process", 0.0),
                     "outside": d.get("triggerExecution", 0) / 1e3 - s["call"],
                     "latestOffset": d.get("latestOffset", 0) / 1e3, "planning": d.get("queryPlanning", 0) / 1e3,
                     "wal": d.get("walCommit", 0) / 1e3, "commit": d.get("commitOffsets", 0) / 1e3,
                     "state_rows": state.get("numRowsTotal"), "state_mem": state.get("memoryUsedBytes"),
                     "state_update_ms": state.get("allUpdatesTimeMs"), "state_commit_ms": state.get("commitTimeMs"),
                     # the slowest write task's producer (init_transactions when new) and whole write, by kind
                     "producer_s": s.get("producer_s"), "write_s": s.get("write_s"),
                     "producers": {k.removeprefix("producers_"): n for k, n in s.items() if k.startswith("producers_")}})
    stages = _stage_profile([r for r in recs if r["kind"] == "stages" and r["batch_id"] in sinks], sparks)
    # empty (no-data) batches have no sink call; count them from Spark's records
    empty = [r for r in recs if r["kind"] == "spark" and r["batch_id"] not in sinks and r["timestamp"] >= ""]
    agg = {}
    for k in ("trigger", "addBatch", "call", "topandas", "process", "outside", "latestOffset", "planning", "wal",
              "commit"):
        vals = [r[k] for r in rows]
        if vals:
            agg[k] = {"mean": float(np.mean(vals)), "p50": float(np.median(vals)), "max": float(np.max(vals)),
                      "sum": float(np.sum(vals))}
    producers = {k.removeprefix("producers_"): sum(r.get(k, 0) for r in sinks.values())
                 for k in {k for r in sinks.values() for k in r if k.startswith("producers_")}}
    return {"batches": len(rows), "rows_mean": float(np.mean([r["rows"] or 0 for r in rows])) if rows else 0,
            "producers": producers,
            "agg": agg, "per_batch": rows, "spark_records_without_sink": len(empty), **stages}


def _batches_between(path: Path, start: float, end: float) -> list[dict]:
    """The sink calls (batch id, rows, start, seconds) that overlapped the wall-clock window [start, end]."""
    recs = [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []
    rows = {r["batch_id"]: r.get("rows") for r in recs if r["kind"] == "spark"}
    return [{"batch": r["batch_id"], "rows": rows.get(r["batch_id"]), "start_s": round(r["start"] - start, 2),
             "call_s": round(r["call"], 2)} for r in recs
            if r["kind"] == "sink" and r["start"] <= end and r["start"] + r["call"] >= start]


def attribute_latency(produced_at: dict[str, int], scored_at: dict[str, int], batches_jsonl: Path) -> dict:
    """Which micro-batch set the p99: each replayed line's verdict (its ScoreResult's Kafka CreateTime, written by
    the batch's write task) is put in the batch whose foreachBatch call was running at that time (the sink's wall
    clock, the same box as Kafka's CreateTime); per batch its lines, their latency p50 / max, how many are in the
    run's top 1%, and the two parts of a line's wait: produced -> its batch's trigger (waiting for the next batch)
    and trigger -> verdict (the batch itself). Lines whose verdict falls in no call window go to the batch whose
    call ended last before it (a write finishing just after the call's clock stopped)."""
    recs = [json.loads(l) for l in batches_jsonl.read_text().splitlines()] if batches_jsonl.exists() else []
    sparks = {r["batch_id"]: r for r in recs if r["kind"] == "spark"}
    calls = sorted(((r["start"] * 1e3, (r["start"] + r["call"]) * 1e3, r["batch_id"]) for r in recs
                    if r["kind"] == "sink"), key=lambda c: c[0])
    if not calls:
        return {}
    ends = np.array([c[1] for c in calls])
    lines = [(r, scored_at[r] - t, t, scored_at[r]) for r, t in produced_at.items() if r in scored_at]
    if not lines:
        return {}
    top_cut = float(np.percentile([w for _, w, _, _ in lines], 99))
    per: dict[int, list[tuple[float, int, int]]] = {}
    for _, wait, made, scored in lines:
        inside = [c[2] for c in calls if c[0] - 5 <= scored <= c[1] + 5]
        if inside:
            batch = inside[-1]
        else:
            before = int(np.searchsorted(ends, scored)) - 1
            batch = calls[max(before, 0)][2]
        per.setdefault(batch, []).append((wait, made, scored))
    first = min(per)
    rows = []
    for rank, (batch, items) in enumerate(sorted(per.items())):
        waits = np.array([w for w, _, _ in items])
        sp = sparks.get(batch, {})
        trigger_ms = _ms((sp.get("timestamp") or "").replace("Z", "GMT"))
        call = next(c for c in calls if c[2] == batch)
        row = {"batch": batch, "rank": rank, "lines": len(items), "p50_s": round(float(np.median(waits)) / 1e3, 3),
               "max_s": round(float(waits.max()) / 1e3, 3), "in_top_1pct": int((waits >= top_cut).sum()),
               "spark_rows": sp.get("rows"), "trigger_s": round(sp.get("duration_ms", {}).get("triggerExecution", 0) / 1e3, 3),
               "call_s": round((call[1] - call[0]) / 1e3, 3)}
        if trigger_ms is not None:
            before = np.array([trigger_ms - m for _, m, _ in items])
            row["wait_for_batch_max_s"] = round(float(before.max()) / 1e3, 3)
            row["in_batch_max_s"] = round(float(max(s - trigger_ms for _, _, s in items)) / 1e3, 3)
        rows.append(row)
    top = sorted(((r["in_top_1pct"], r["batch"]) for r in rows if r["in_top_1pct"]), reverse=True)
    return {"top_1pct_cut_s": round(top_cut / 1e3, 3), "first_batch": first, "per_batch": rows,
            "top_1pct_batches": [{"batch": b, "rank": next(r["rank"] for r in rows if r["batch"] == b), "lines": n}
                                 for n, b in top]}


def _ms(stamp: str | None) -> float | None:
    """The Spark UI's "2026-12-01T21:09:09.123GMT" as epoch ms."""
    from datetime import datetime, timezone
    if not stamp:
        return None
    return datetime.strptime(stamp.replace("GMT", ""), "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=timezone.utc).timestamp() * 1e3


def _stage_profile(records: list[dict], sparks: dict) -> dict:
    """Per batch with rows (profile_sink.py --spark-stages): its Spark jobs and stages, each stage's time from
    the batch's trigger (Spark's progress timestamp) to its submission, to its first task, to its completion,
    and its tasks' run / CPU / deserialize ms; medians over the batches by stage position."""
    per_batch, by_position = [], {}
    for r in records:
        if "jobs" not in r:
            continue
        t0 = _ms(sparks.get(r["batch_id"], {}).get("timestamp", "").replace("Z", "GMT"))
        stages = sorted((st for j in r["jobs"] for st in j["stages"]), key=lambda st: _ms(st["submissionTime"]) or 0)
        row = {"batch": r["batch_id"], "jobs": len(r["jobs"]), "stages": len(stages), "detail": []}
        for i, st in enumerate(stages):
            sub, first, done = (_ms(st.get(k)) for k in ("submissionTime", "firstTaskLaunchedTime", "completionTime"))
            d = {"name": (st.get("name") or "")[:60], "tasks": st.get("numTasks"),
                 "at_ms": None if t0 is None or sub is None else sub - t0,
                 "to_first_task_ms": None if sub is None or first is None else first - sub,
                 "wall_ms": None if sub is None or done is None else done - sub,
                 "run_ms": st.get("executorRunTime"), "cpu_ms": (st.get("executorCpuTime") or 0) / 1e6,
                 "deserialize_ms": st.get("executorDeserializeTime"), "shuffle_write_ms": (st.get("shuffleWriteTime") or 0) / 1e6,
                 "shuffle_read_bytes": st.get("shuffleReadBytes"), "shuffle_write_bytes": st.get("shuffleWriteBytes")}
            row["detail"].append(d)
            by_position.setdefault(i, []).append(d)
        per_batch.append(row)
    medians = {}
    for i, ds in sorted(by_position.items()):
        medians[f"stage{i}"] = {"name": ds[0]["name"], "n": len(ds), **{
            k: float(np.median([d[k] for d in ds if d[k] is not None])) for k in
            ("at_ms", "to_first_task_ms", "wall_ms", "run_ms", "cpu_ms", "deserialize_ms", "shuffle_write_ms")
            if any(d[k] is not None for d in ds)}}
    if not per_batch:
        return {}
    return {"stages_per_batch": per_batch, "stage_medians": medians,
            "jobs_per_batch": float(np.median([b["jobs"] for b in per_batch])),
            "stages_per_batch_median": float(np.median([b["stages"] for b in per_batch]))}


def pyspy_windows(spec: str) -> list[tuple[float, float]]:
    """"START:SECONDS,..." -> [(start, seconds)]: py-spy windows, START seconds after the replay starts
    (negative: before it, so that py-spy has attached to the tree when the first lines arrive)."""
    return [(float(a), float(b)) for a, b in (w.split(":") for w in spec.split(",") if w)]


def start_pyspy_window(pid: int, start: float, seconds: float, replay_at: float, out: Path, record: dict) -> threading.Thread:
    """At replay_at + start (monotonic), py-spy records the job's whole process tree for `seconds` (raw stacks,
    50 Hz): one window per phase (the first batch, a later one), since a whole-run profile mixes them."""
    def go() -> None:
        time.sleep(max(0.0, replay_at + start - time.monotonic()))
        record.update(wall_start=time.time(), from_replay_s=round(time.monotonic() - replay_at, 2))
        subprocess.run([str(Path(PY).with_name("py-spy")), "record", "--pid", str(pid), "--subprocesses", "-r", "50",
                        "-f", "raw", "-d", str(math.ceil(seconds)), "-o", str(out)],  # whole seconds only
                       stdout=subprocess.DEVNULL, stderr=open(out.with_suffix(".err"), "w"), check=False)
        record["wall_end"] = time.time()
    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread


def variant_env(rev: str) -> dict:
    """The environment a variant's processes run in: a prepared tree's package first on PYTHONPATH."""
    env = dict(os.environ)
    if rev != "WORKTREE":
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(rev) / "pkg"), env.get("PYTHONPATH")) if p)
    return env


def one_run(variant: str, rev: str, args, servers, log: Path, labels: Path, run_no: int, pyspy: bool) -> dict:
    from demo.run import Tally, reset_topics, time_to_detect, wait_for_blocks_to_close, warm_up
    from logmesh.ingest.producer import run_ingest
    from logmesh.scorer.dataset import read_block_labels
    tag = f"{run_no:02d}-{variant}"
    work = Path(args.work) / tag
    work.mkdir(parents=True, exist_ok=True)
    prefix = f"lmab.{uuid.uuid4().hex[:8]}"
    names = reset_topics(prefix)
    out = work / "batches.jsonl"
    backlog: dict = {}
    if args.backlog:  # the whole replay waits in the topic before the job starts: what the job alone carries
        from logmesh.ingest.producer import run_ingest
        mark0 = time.time()
        backlog["summary"] = run_ingest(log, "127.0.0.1:9092", names["logs"], labels_csv=labels, progress=False)
        backlog["mark"] = mark0
    load_before = load()
    env = dict(os.environ)
    tree = REPO
    if rev != "WORKTREE":  # a prepared tree: its own job and profile_sink.py
        tree = Path(rev) / "src"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(rev) / "pkg"), env.get("PYTHONPATH")) if p)
    cmd = [PY, str(tree / "bench/profile_sink.py"), "--out", str(out),
           "--topic", names["logs"], "--scores-topic", names["scores"], "--anomalies-topic", names["anomalies"],
           "--dlq-topic", names["dlq"], "--embedder", servers.embed_addr, "--scorer", servers.score_addr,
           "--qdrant-path", str(work / "qdrant"), "--checkpoint", str(work / "checkpoint"),
           "--block-quiet-ms", str(QUIET_MS), "--log-level", "warning", *args.job_arg,
           *(arg for name, arg in (a.split("=", 1) for a in args.variant_arg) if name == variant)]
    if args.spark_stages and "--spark-stages" in (tree / "bench/profile_sink.py").read_text():
        cmd[2:2] = ["--spark-stages"]
    if pyspy:
        cmd = [str(Path(PY).with_name("py-spy")), "record", "--subprocesses", "-r", "25", "-f", "raw",
               "-o", str(work / "pyspy.txt"), "--", *cmd]
    job = subprocess.Popen(cmd, cwd=REPO, stdout=open(work / "stream.log", "w"), stderr=subprocess.STDOUT,
                           start_new_session=True, env=env)
    interrupted = threading.Event()
    tally = Tally(dict(names))
    result: dict = {"variant": variant, "rev": rev, "run": run_no, "rate": args.rate, "lines": args.lines,
                    "load_before": load_before}
    try:
        produced: dict = dict(backlog)
        if not backlog:
            warm_up(names["logs"], log, tally, interrupted, args.warm_up_lines, args.rate, work)
        result["cold_start"] = tally.cold_start
        replay = threading.Thread(target=lambda: produced.update(summary=run_ingest(
            log, "127.0.0.1:9092", names["logs"], rate=args.rate, labels_csv=labels, progress=False)), daemon=True)
        cpu_parts0: dict = {}
        cpu_job, cpu_servers = tree_cpu(job.pid, cpu_parts0), sum(tree_cpu(p.pid) for p in servers.procs)
        mark, started = backlog.get("mark", time.time()), time.monotonic()
        windows = pyspy_windows(args.pyspy_windows) if run_no in args.pyspy_window_runs else []
        lead = max([0.0, *(-w[0] for w in windows)])
        window_records: list[dict] = [{"start_s": a, "seconds": b} for a, b in windows]
        spies = [start_pyspy_window(job.pid, a, b, time.monotonic() + lead, work / f"pyspy-window{i}.txt", rec)
                 for i, ((a, b), rec) in enumerate(zip(windows, window_records))]
        time.sleep(lead)
        mark, started = backlog.get("mark", time.time()), time.monotonic()
        if not backlog:
            replay.start()
        total, last_change, last = None, time.monotonic(), 0
        while True:
            tally.poll(2.0)
            if "summary" in produced:
                total = produced["summary"].produced
            if tally.scored != last:
                last_change, last = time.monotonic(), tally.scored
            if total is not None and tally.scored >= total:
                result["seconds_to_last_seen"] = time.monotonic() - started
                # CPU the job and the servers used from replay start until every line was scored
                cpu_parts1: dict = {}
                result["cpu_job_s"] = tree_cpu(job.pid, cpu_parts1) - cpu_job
                result["cpu_job_parts_s"] = {k: round(v - cpu_parts0.get(k, 0.0), 2) for k, v in cpu_parts1.items()}
                result["cpu_servers_s"] = sum(tree_cpu(p.pid) for p in servers.procs) - cpu_servers
                wait_for_blocks_to_close(tally, interrupted)
                break
            if job.poll() is not None or time.monotonic() - last_change > 120:
                result["error"] = f"job exited or stalled; see {work / 'stream.log'}"
                break
        result["load_after"] = load()
        # the replay's lines only (not the warm-up line, produced before `mark`)
        replayed = {r: t for r, t in tally.produced_at.items() if t >= mark * 1000 - 50}
        waits = [tally.scored_at[r] - t for r, t in replayed.items() if r in tally.scored_at]
        p50, p99 = np.percentile(waits, [50, 99]) / 1000
        replay_first = min(replayed.values())
        result.update(scored=tally.scored, total=total, p50_s=float(p50), p99_s=float(p99),
                      max_s=float(max(waits)) / 1000,
                      # replay's first LogRecord to the last ScoreResult, on Kafka's clock
                      lines_per_s=len(waits) / max((max(tally.scored_at.values()) - replay_first) / 1000, 1e-9),
                      alerts=len(tally.alerts), finals=tally.finals, line_anomalies=tally.line_anomalies)
        if backlog:
            # the job's own rate on a backlog: lines scored between the 10th percentile of score times (past
            # the job's start and first batch) and the last, on Kafka's clock
            times = np.sort([tally.scored_at[r] for r in replayed if r in tally.scored_at])
            first = times[len(times) // 10]
            result["backlog_lines_per_s"] = float((len(times) - len(times) // 10) / max((times[-1] - first) / 1000, 1e-9))
        result.update(time_to_detect(tally, read_block_labels(labels)))  # the demo's own definition
        result["profile"] = summarise_batches(out, mark)
        result["p99_batches"] = attribute_latency(replayed, tally.scored_at, out)
        for spy in spies:
            spy.join(timeout=60)
        for i, rec in enumerate(window_records):  # each window's samples, and the batches it overlapped
            raw = work / f"pyspy-window{i}.txt"
            if raw.exists():
                from bench.pipeline import pyspy_summary
                rec["pyspy"] = pyspy_summary(raw, top=30)
            rec["batches"] = _batches_between(out, rec.get("wall_start", 0), rec.get("wall_end", 0))
        if window_records:
            result["pyspy_windows"] = window_records
    finally:
        tally.close()
        from bench.pipeline import delete_topics, stop_job
        stop_job(job)
        delete_topics(prefix)
    if pyspy and (work / "pyspy.txt").exists():
        from bench.pipeline import pyspy_summary
        result["pyspy"] = pyspy_summary(work / "pyspy.txt", top=25)
    (work / "result.json").write_text(json.dumps(result, indent=1))
    return result


def prepare(rev: str, folder: Path) -> None:
    """DIR/src: commit `rev`'s files; DIR/pkg/logmesh: the package as pyproject's package-dir maps it, made of
    links into src (generated code and Spark's jars from this tree, which `make` builds)."""
    import shutil
    import tomllib
    src, pkg = folder / "src", folder / "pkg"
    if folder.exists():
        shutil.rmtree(folder)
    src.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev], cwd=REPO, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    dirs = tomllib.loads((src / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    root = pkg / "logmesh"
    root.mkdir(parents=True)
    for entry in (src / dirs["logmesh"]).iterdir():
        (root / entry.name).symlink_to(entry)
    for name, where in dirs.items():
        if name != "logmesh":
            (root / name.split(".", 1)[1]).symlink_to(src / where)
    generated = root / "v1"
    if generated.is_symlink() or generated.exists():
        generated.unlink() if generated.is_symlink() else shutil.rmtree(generated)
    generated.symlink_to(REPO / dirs["logmesh"] / "v1")
    (src / ".cache").symlink_to(REPO / ".cache")
    print(f"{rev} in {src}, importable with PYTHONPATH={pkg}")


def medians(results: list[dict], variants: list[list[str]]) -> dict:
    """Each variant's median figures, and their ratio to the first variant's (runs interleaved, so the
    ratio of medians is what the box's drift moves least)."""
    keys = ("lines_per_s", "backlog_lines_per_s", "p50_s", "p99_s", "ttd_p99_s", "cpu_job_s")
    table: dict = {}
    for name, _ in variants:
        rs = [r for r in results if r["variant"] == name and "p99_s" in r]
        if rs:
            table[name] = {k: float(np.median([r[k] for r in rs if k in r])) for k in keys if any(k in r for r in rs)}
    first = table.get(variants[0][0], {})
    for name, row in table.items():
        row["ratio_to_" + variants[0][0]] = {k: round(v / first[k], 3) for k, v in row.items()
                                             if isinstance(v, float) and first.get(k)}
    return table


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--prepare":
        prepare(sys.argv[2], Path(sys.argv[3]))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", action="append", required=True,
                   help="NAME=WORKTREE or NAME=DIR (a tree made by --prepare REV DIR)")
    p.add_argument("--models", default="models", help="the scorer's model dir (default %(default)s)")
    p.add_argument("--runs", type=int, default=3, help="runs per variant, interleaved")
    p.add_argument("--rate", type=float, default=None, help="lines/s (default: full speed)")
    p.add_argument("--lines", type=int, default=60_000)
    p.add_argument("--work", default=f"/tmp/lmab-{os.getpid()}")
    p.add_argument("--out", default=None, help="summary JSON (default: WORK/summary.json)")
    p.add_argument("--pyspy", default="", help="comma-separated run numbers to record with py-spy")
    p.add_argument("--pyspy-windows", default="", metavar="START:SECONDS,...",
                   help="py-spy windows on the job's process tree, START seconds after the replay starts, e.g. "
                        "-1:6,20:6 (the first batches, then a later stretch), in the runs of --pyspy-window-runs")
    p.add_argument("--pyspy-window-runs", default="0", help="comma-separated run numbers for --pyspy-windows")
    p.add_argument("--backlog", action="store_true",
                   help="produce the whole replay before the job starts, and report the job's own rate on that "
                        "backlog (backlog_lines_per_s), which a full-speed replay cannot show when the producer "
                        "is slower than the job")
    p.add_argument("--warm-up-lines", type=int, default=1,
                   help="generated lines scored at --rate before the measured replay (default 1: just the job's start)")
    p.add_argument("--spark-stages", action="store_true",
                   help="record each batch's Spark jobs and stages (profile_sink.py --spark-stages: the driver's UI "
                        "is on) in variants whose profile_sink.py has it")
    p.add_argument("--fresh-servers", action="store_true",
                   help="each run starts its own embedder and scorer from its variant's tree (a cold stack: the "
                        "servers' start-up and first calls meet the run's first batch); default: one pair, this "
                        "tree's, shared by all runs")
    p.add_argument("--job-arg", action="append", default=[], help="extra `logmesh stream` argument (repeatable)")
    p.add_argument("--variant-arg", action="append", default=[], metavar="NAME=ARG",
                   help="extra `logmesh stream` argument for variant NAME only (repeatable), e.g. new=--trigger-ms=250")
    args = p.parse_args()
    sys.path.insert(0, str(REPO))
    from bench.pipeline import Servers
    from logmesh.ingest.generator import GeneratorConfig, write_generated
    data = Path("/tmp/lmab-data") / f"replay{args.lines}"
    log, labels = data / "HDFS_generated.log", data / "anomaly_label.csv"
    if not log.exists():
        data.mkdir(parents=True, exist_ok=True)
        write_generated(GeneratorConfig(lines=args.lines, seed=7), log, labels)  # the demo's replay
    variants = [v.split("=", 1) for v in args.variant]
    pyspy_runs = {int(x) for x in args.pyspy.split(",") if x}
    args.pyspy_window_runs = {int(x) for x in args.pyspy_window_runs.split(",") if x}
    results = []
    shared = contextlib.nullcontext() if args.fresh_servers else Servers(free_port(), free_port(), args.models)
    with shared as servers:
        order = [(i * len(variants) + j, name, rev) for i in range(args.runs) for j, (name, rev) in enumerate(variants)]
        for run_no, name, rev in order:
            if args.fresh_servers:
                logs = Path(args.work) / f"{run_no:02d}-{name}"
                logs.mkdir(parents=True, exist_ok=True)
                with Servers(free_port(), free_port(), args.models, env=variant_env(rev), log_dir=logs) as own:
                    r = one_run(name, rev, args, own, log, labels, run_no, run_no in pyspy_runs)
            else:
                r = one_run(name, rev, args, servers, log, labels, run_no, run_no in pyspy_runs)
            agg = r.get("profile", {}).get("agg", {})
            print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()
                              if k not in ("profile", "pyspy", "pyspy_windows", "p99_batches")}), flush=True)
            print("   per batch mean:", {k: round(v["mean"], 3) for k, v in agg.items()},
                  "batches", r.get("profile", {}).get("batches"), "rows_mean",
                  round(r.get("profile", {}).get("rows_mean", 0)),
                  "write-task producers", r.get("profile", {}).get("producers"), flush=True)
            if r.get("p99_batches"):
                att = r["p99_batches"]
                print(f"   top 1% (>= {att['top_1pct_cut_s']:.2f} s) by batch (rank from the first replay batch):",
                      att["top_1pct_batches"], flush=True)
                for row in att["per_batch"][:4]:
                    print("     ", row, flush=True)
            if r.get("profile", {}).get("stage_medians"):
                print("   jobs/stages per batch:", r["profile"]["jobs_per_batch"], r["profile"]["stages_per_batch_median"],
                      "stage medians:", json.dumps(r["profile"]["stage_medians"]), flush=True)
            results.append(r)
    out = Path(args.out or Path(args.work) / "summary.json")
    table = medians(results, variants)
    out.write_text(json.dumps({"runs": results, "medians": table}, indent=1))
    for name, _ in variants:
        rs = [r for r in results if r["variant"] == name and "p99_s" in r]
        if rs:
            print(name, "p50", [round(r["p50_s"], 2) for r in rs], "p99", [round(r["p99_s"], 2) for r in rs],
                  "ttd_p99", [round(r.get("ttd_p99_s", -1), 2) for r in rs],
                  "lines/s", [round(r["lines_per_s"]) for r in rs],
                  "job cpu s", [round(r.get("cpu_job_s", -1), 1) for r in rs], flush=True)
    print("medians:", json.dumps(table), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
