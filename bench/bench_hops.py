"""Throughput and latency of the gRPC hops, batched against naive, measured in one run.

    .venv/bin/python bench/bench_hops.py [--runs 3]      (starts its own embedder and scorer)

Prints a markdown table (min/median/max over --runs) and writes bench/results/hops.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared/data/hdfs"


def timed(fn, n: int) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    fn()
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--models", default=str(REPO / "models"))
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from logmesh.client import EmbedderClient, ScorerClient

    bin_ = Path(sys.executable).with_name("logmesh")
    procs = [subprocess.Popen([str(bin_), "serve", "embedder", "--port", "50061"], stderr=subprocess.DEVNULL),
             subprocess.Popen([str(bin_), "serve", "scorer", "--port", "50062", "--model-dir", args.models,
                               "--embedder", "127.0.0.1:50061"], stderr=subprocess.DEVNULL)]
    try:
        embedder, scorer = EmbedderClient("127.0.0.1:50061"), ScorerClient("127.0.0.1:50062")
        embedder.wait_until_serving(120)
        scorer.wait_until_serving(60)
        lines = (DATA / "HDFS_20000.log").read_text().splitlines()
        messages = [l.split(": ", 1)[-1] for l in lines]
        rng = np.random.default_rng(0)
        words = "block packet node replica stream socket disk timeout write read".split()
        results: dict[str, list[float]] = {}

        def measure(name: str, fn, n: int) -> None:  # type: ignore[no-untyped-def]
            results[name] = [timed(fn, n) for _ in range(args.runs)]

        for batch in (1, 32, 256):
            subset = messages[:2000] if batch == 1 else messages
            measure(f"embed_stream_warm_b{batch}", lambda: embedder.embed_many(subset, batch_size=batch), len(subset))
        cold = [" ".join(rng.choice(words, 12)) + f" zz{i}" for i in range(3 * 300)]
        chunks = iter([cold[i * 300:(i + 1) * 300] for i in range(3)])
        measure("embed_stream_cold_b32", lambda: embedder.embed_many(next(chunks), batch_size=32), 300)
        measure("score_stream_b256", lambda: list(scorer.score_lines(lines, batch_size=256)), len(lines))
        measure("naive_unary_score_per_line", lambda: [scorer.score_line(l) for l in lines[:2000]], 2000)
        latencies = []
        for line in lines[:2000]:
            started = time.perf_counter()
            scorer.score_line(line)
            latencies.append((time.perf_counter() - started) * 1000)
        unary = {"p50_ms": float(np.percentile(latencies, 50)), "p99_ms": float(np.percentile(latencies, 99))}
        latencies = []
        for m in messages[:2000]:
            started = time.perf_counter()
            embedder.embed(m)
            latencies.append((time.perf_counter() - started) * 1000)
        embed_unary = {"p50_ms": float(np.percentile(latencies, 50)), "p99_ms": float(np.percentile(latencies, 99))}
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)
    out = {"machine": f"{platform.node()} {platform.machine()}, {__import__('os').cpu_count()} cores",
           "date": time.strftime("%Y-%m-%d"), "runs": args.runs, "lines_per_s": results,
           "score_unary_latency": unary, "embed_unary_latency": embed_unary}
    (REPO / "bench/results").mkdir(parents=True, exist_ok=True)
    (REPO / "bench/results/hops.json").write_text(json.dumps(out, indent=2))
    print("| hop | lines/s min | median | max |\n|---|---:|---:|---:|")
    for name, values in results.items():
        print(f"| {name} | {min(values):,.0f} | {statistics.median(values):,.0f} | {max(values):,.0f} |")
    print(f"unary Score latency p50 {unary['p50_ms']:.2f} ms, p99 {unary['p99_ms']:.2f} ms; "
          f"unary Embed p50 {embed_unary['p50_ms']:.2f} ms, p99 {embed_unary['p99_ms']:.2f} ms")


if __name__ == "__main__":
    main()
