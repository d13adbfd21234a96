#!/usr/bin/env python3
"""The embedder's two backends side by side in one run: ONNX Runtime (what it serves once `make onnx` ran) and
sentence-transformers (the fallback), both through SentenceEncoder as the service calls it.

Measured on raw HDFS lines (../shared/data/hdfs/HDFS_20000.log, the cold path: the service embeds masked
shapes and caches them), batch 32, interleaved runs so both see the same load:
- lines/s min / median / max over --runs,
- cosine of each ONNX vector against sentence-transformers' (mean, min),
- a fresh process per backend: seconds from start to the first vector (imports + load) and its peak RSS.

Usage: .venv/bin/python bench/bench_embedder_backends.py [--runs 5] [--lines 160] [--threads 1]
Writes bench/results/embedder_backends.json and prints a markdown table. Needs the ONNX export (make onnx).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LOGMESH_DATA", REPO.parent / "shared" / "data" / "hdfs"))
BACKENDS = {"onnxruntime": "onnx", "sentence-transformers": "sentence-transformers"}
# Peak RSS from VmHWM: ru_maxrss survives exec on Linux, so a child would report this process's peak.
COLD = ("import re, sys, time; t = time.perf_counter(); "
        "from logmesh.embedder.encoder import SentenceEncoder; "
        "SentenceEncoder(threads=1, backend=sys.argv[1]).encode(['PacketResponder <*> for block <*> terminating']); "
        "hwm = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read())[1]; "
        "print(time.perf_counter() - t, int(hwm) / 1024)")


def cold_start(backend: str) -> dict[str, float]:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", COLD, backend], capture_output=True, text=True, check=True)
    first_vector_s, rss_mb = map(float, out.stdout.split())
    return {"process_s": round(time.perf_counter() - started, 2), "first_vector_s": round(first_vector_s, 2),
            "peak_rss_mb": round(rss_mb)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--lines", type=int, default=160)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    from logmesh.embedder.encoder import SentenceEncoder

    lines = (DATA / "HDFS_20000.log").read_text().splitlines()
    sample = [lines[(5000 + 37 * i) % len(lines)] for i in range(args.lines)]
    encoders = {name: SentenceEncoder(threads=args.threads, backend=b) for name, b in BACKENDS.items()}
    for name, enc in encoders.items():
        assert enc.backend == name, (name, enc.backend)
        enc.encode(sample[:32])  # warm-up
    speeds: dict[str, list[float]] = {name: [] for name in encoders}
    for _ in range(args.runs):
        for name, enc in encoders.items():
            t = time.perf_counter()
            enc.encode(sample)
            speeds[name].append(len(sample) / (time.perf_counter() - t))
    reference = encoders["sentence-transformers"].encode(sample)
    cosine = (encoders["onnxruntime"].encode(sample) * reference).sum(axis=1)
    result = {"machine": f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at start of cold runs",
              "lines": len(sample), "batch": 32, "threads": args.threads, "runs": args.runs,
              "cosine_vs_sentence_transformers": {"mean": float(cosine.mean()), "min": float(cosine.min())},
              "backends": {}}
    for name in encoders:
        s = speeds[name]
        result["backends"][name] = {"lines_per_s": {"min": min(s), "median": statistics.median(s), "max": max(s)},
                                    "cold": cold_start(BACKENDS[name])}
    onnx, st = (result["backends"][n]["lines_per_s"]["median"] for n in ("onnxruntime", "sentence-transformers"))
    result["speedup_median"] = onnx / st
    out = REPO / "bench" / "results" / "embedder_backends.json"
    out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"{len(sample)} raw lines, batch 32, {args.threads} thread(s), {args.runs} interleaved runs")
    print("| backend | lines/s min | median | max | start to first vector (s) | peak RSS (MB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in result["backends"].items():
        v = r["lines_per_s"]
        print(f"| {name} | {v['min']:.0f} | {v['median']:.0f} | {v['max']:.0f} | {r['cold']['first_vector_s']} | "
              f"{r['cold']['peak_rss_mb']} |")
    print(f"speed-up (median) {result['speedup_median']:.2f}x; cosine mean {cosine.mean():.5f}, min {cosine.min():.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
