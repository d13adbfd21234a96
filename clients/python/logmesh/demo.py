"""`make demo`: the main job on the embedded defaults, end to end on one machine.

Trains a model if the model dir has none, starts the embedder and the scorer as real processes,
streams a real HDFS log through ScoreStream, prints what an operator would read, and stops them.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from logmesh.client import EmbedderClient, ScorerClient
from logmesh.scorer import artifacts

BIN = Path(sys.executable).with_name("logmesh")


def _start(args: list[str], log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([str(BIN), *args], stderr=open(log, "w"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="../shared/data/hdfs", help="loghub HDFS folder (*.log + anomaly_label.csv)")
    parser.add_argument("--models", default="models", help="model dir (trained here when empty)")
    parser.add_argument("--log", default=None, help="log file to score (default: the largest *.log in --data)")
    parser.add_argument("--embedder-port", type=int, default=50051)
    parser.add_argument("--scorer-port", type=int, default=50052)
    args = parser.parse_args(argv)
    data, models = Path(args.data), Path(args.models)
    if not (data / "anomaly_label.csv").exists():
        print(f"demo: no HDFS data at {data}. Point DATA= at a loghub HDFS_v1 folder "
              "(HDFS.log + anomaly_label.csv).", file=sys.stderr)
        return 2
    if artifacts.newest(models) is None:
        print(f"demo: no model in {models}/, training one on {data} ...", flush=True)
        subprocess.run([str(BIN), "train", "--data", str(data), "--out", str(models), "--log-level", "warning"],
                       check=True)
    log_file = Path(args.log) if args.log else max(data.glob("*.log"), key=lambda p: p.stat().st_size)
    embedder_address = f"127.0.0.1:{args.embedder_port}"
    scorer_address = f"127.0.0.1:{args.scorer_port}"
    logs = Path(".cache/run")
    procs = [
        _start(["serve", "embedder", "--port", str(args.embedder_port)], logs / "embedder.log"),
        _start(["serve", "scorer", "--port", str(args.scorer_port), "--model-dir", str(models),
                "--embedder", embedder_address], logs / "scorer.log"),
    ]
    try:
        print(f"demo: starting embedder ({embedder_address}) and scorer ({scorer_address}); logs in {logs}/",
              flush=True)
        EmbedderClient(embedder_address).wait_until_serving(120)
        scorer = ScorerClient(scorer_address)
        scorer.wait_until_serving(60)
        lines = log_file.read_text(encoding="utf-8", errors="replace").splitlines()
        print(f"demo: scoring {len(lines):,} lines of {log_file} over ScoreStream ...", flush=True)
        started = time.perf_counter()
        results = list(scorer.score_lines(lines, batch_size=256))
        seconds = time.perf_counter() - started
        verdicts = Counter(r.result.verdict for r in results if r.HasField("result"))
        flagged = [r.result for r in results if r.HasField("result") and r.result.verdict == 2]
        blocks = Counter(b for r in flagged for b in r.block_ids)
        print(f"demo: {len(results):,} lines in {seconds:.2f} s ({len(results) / seconds:,.0f} lines/s); "
              f"{len(flagged)} lines flagged in {len(blocks)} blocks; errors: "
              f"{sum(1 for r in results if r.HasField('error'))}")
        for r in flagged[:10]:
            print(f"  ANOMALY score={r.score:.2f} votes={r.anomaly_votes}/5 {' '.join(r.block_ids)}  {r.message[:100]}")
        stats = scorer.stats()
        print(f"demo: scorer model {stats.model_version}, p50 {stats.latency_p50_ms:.1f} ms / "
              f"p99 {stats.latency_p99_ms:.1f} ms per batch of 256")
        print("demo: run the servers yourself with `logmesh serve embedder` and "
              f"`logmesh serve scorer --model-dir {models}`, then `logmesh score \"<line>\"`")
        return 0
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)


if __name__ == "__main__":
    sys.exit(main())
