#!/usr/bin/env python3
"""Vector store benchmark: qdrant-edge-py vs qdrant-client local mode (on disk), through the
logmesh VectorStore interface (so the numbers include key hashing, validation and payload building).

Measured, per engine and size:
- upsert points/s (batches of 256 points, each a 384-d float32 vector + a small payload),
- top-10 search latency p50/p99, unfiltered and filtered ({"kind": "line"}),
- reopen time and size on disk.
qdrant-client local mode is a pure-Python engine (~1k upserts/s): it is measured at 10k and at
`--local-cap` (20k) points; its 100k row is EXTRAPOLATED (upsert rate held constant, search time
scaled linearly with n, as its search is brute force) and marked so.

Recall of the edge HNSW index (built by the blocking `optimize()`) at 100k points, against exact
top-10 computed with numpy, on two vector sets:
- "clustered": SYNTHETIC, 1,000 Gaussian clusters on the unit sphere (cosine to centre ~0.8);
- "hdfs-blocks": block vectors made from the REAL model: all-MiniLM-L6-v2 embeddings of the
  parameter-masked lines of ../shared/data/hdfs/HDFS_20000.log, combined per block as the
  count-weighted mean of its lines' embeddings. The 1,782 real blocks are resampled (Poisson
  counts, occasional extra event) to 100k blocks, so the set is semi-synthetic. `--no-model` skips it.
Recall counts a returned hit as right when its exact score reaches the exact 10th-best score
(ties are common in hdfs-blocks: many blocks share one event profile). Recall is that of the store
as callers see it: searches HNSW answers short are re-run exactly (counted as "exact re-runs").

Usage: .venv/bin/python bench/bench_vector_store.py [--quick] [--no-model]
Writes bench/results/vector_store.json and prints a markdown table. Runs in ~2 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter
from importlib import metadata
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # not needed when logmesh is installed (make venv); harmless otherwise

from logmesh.streaming.vector_store import Point, open_store  # noqa: E402

DIM = 384
BATCH = 256
DATA = Path(os.environ.get("LOGMESH_DATA", REPO.parent / "shared" / "data" / "hdfs"))


# ----------------------------------------------------------------------------------------------
# Vector sets
# ----------------------------------------------------------------------------------------------

def normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def clustered(n: int, seed: int, clusters: int = 1000, spread: float = 0.75) -> np.ndarray:
    """SYNTHETIC: unit vectors around `clusters` random centres; noise norm `spread` (cos ~0.8)."""
    rng = np.random.default_rng(seed)
    centres = normalise(np.random.default_rng(12345).standard_normal((clusters, DIM)))
    noise = rng.standard_normal((n, DIM)).astype(np.float32) * (spread / np.sqrt(DIM))
    return normalise(centres[rng.integers(0, clusters, n)] + noise)


def hdfs_block_vectors(n: int, seed: int) -> tuple[np.ndarray, dict]:
    """Block vectors from the real model over real masked HDFS lines (see module docstring)."""
    from logmesh.embedder.encoder import SentenceEncoder
    from logmesh.ingest.hdfs import parse_line
    from logmesh.ingest.masking import line_shape

    profiles: dict[str, Counter] = {}
    with open(DATA / "HDFS_20000.log", encoding="utf-8", errors="replace") as f:
        for i, raw in enumerate(f):
            rec = parse_line(raw.rstrip("\r\n"), "HDFS_20000.log", i + 1)
            shape = line_shape(rec.component, rec.message)
            for blk in rec.block_ids:
                profiles.setdefault(blk, Counter())[shape] += 1
    shapes = sorted({s for c in profiles.values() for s in c})
    t = time.perf_counter()
    encoder = SentenceEncoder(threads=2)
    emb = encoder.encode(shapes)  # one vector per masked line shape
    encode_s = time.perf_counter() - t
    index = {s: i for i, s in enumerate(shapes)}
    real = np.zeros((len(profiles), len(shapes)), dtype=np.float32)
    for r, counts in enumerate(profiles.values()):
        for s, c in counts.items():
            real[r, index[s]] = c
    rng = np.random.default_rng(seed)
    counts = rng.poisson(real[rng.integers(0, len(real), n)]).astype(np.float32)
    extra = rng.random(n) < 0.05  # an unusual event in 5% of blocks
    counts[extra, rng.integers(0, len(shapes), int(extra.sum()))] += 1
    empty = counts.sum(axis=1) == 0
    counts[empty, rng.integers(0, len(shapes), int(empty.sum()))] = 1
    vectors = normalise(counts @ emb)
    distinct = len(np.unique(np.round(vectors, 5), axis=0))
    return vectors, {"real_blocks": len(profiles), "masked_shapes": len(shapes),
                     "model_load_and_encode_s": round(encode_s, 1), "distinct_vectors": int(distinct)}


def make_points(vectors: np.ndarray, prefix: str, start: int = 0) -> list[Point]:
    # Every 4th point a block, the rest lines (the collection holds both); ~10% flagged anomalous.
    out = []
    for i, v in enumerate(vectors):
        j = start + i
        if j % 4 == 0:
            out.append(Point(f"blk_-{1608999687919862906 + j}", v, {"kind": "block", "anomalous": j % 10 == 0,
                                                                     "events": 12}))
        else:
            out.append(Point(f"{prefix}/{j % 3}/{j}", v, {"kind": "line", "anomalous": j % 10 == 0,
                                                          "block": f"blk_-{1608999687919862906 + j // 4}"}))
    return out


# ----------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------

def pct(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1000.0, q))


def upsert_all(store, points: list[Point]) -> float:
    t = time.perf_counter()
    for s in range(0, len(points), BATCH):
        store.upsert(points[s:s + BATCH])
    store.flush()
    return len(points) / (time.perf_counter() - t)


def latencies(store, queries: np.ndarray, filter=None, limit: int = 10) -> tuple[list[float], list[list]]:
    times, results = [], []
    for q in queries:
        t = time.perf_counter()
        hits = store.search(q, limit=limit, filter=filter)
        times.append(time.perf_counter() - t)
        results.append(hits)
    return times, results


def du(path: Path) -> int:
    """Bytes allocated on disk (the edge engine preallocates sparse files: apparent sizes overstate)."""
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())


def score_recall(vectors: np.ndarray, keys: list[str], queries: np.ndarray, results: list[list], k: int = 10) -> float:
    """Fraction of returned hits whose exact cosine reaches the exact k-th best score (tie-tolerant)."""
    key_row = {key: i for i, key in enumerate(keys)}
    sims = queries @ vectors.T
    kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1]
    good = total = 0
    for qi, hits in enumerate(results):
        total += k
        good += sum(1 for h in hits[:k] if sims[qi, key_row[h.key]] >= kth[qi] - 1e-4)
    return good / total


def bench_engine(engine: str, root: Path, vectors: np.ndarray, queries: np.ndarray, n_queries: int) -> dict:
    path = root / engine
    kw = {"embedded": "qdrant-local"} if engine == "qdrant-local" else {}
    points = make_points(vectors, "logmesh.logs")
    store = open_store(path=str(path), **kw)
    rate = upsert_all(store, points)
    assert store.count() == len(points), (engine, store.count())
    t_all, _ = latencies(store, queries[:n_queries])
    t_flt, _ = latencies(store, queries[:n_queries], filter={"kind": "line"})
    store.close()
    t = time.perf_counter()
    store = open_store(path=str(path), **kw)
    reopen = time.perf_counter() - t
    assert store.count() == len(points)
    store.close()
    return {"engine": engine, "n": len(points), "measured": True, "upsert_per_s": round(rate),
            "search_p50_ms": round(pct(t_all, 50), 3), "search_p99_ms": round(pct(t_all, 99), 3),
            "filtered_p50_ms": round(pct(t_flt, 50), 3), "filtered_p99_ms": round(pct(t_flt, 99), 3),
            "queries": n_queries, "reopen_s": round(reopen, 3), "disk_mb": round(du(path) / 2**20, 1)}


def bench_recall(name: str, root: Path, vectors: np.ndarray, queries: np.ndarray, n_queries: int,
                 efs: list[int | None]) -> dict:
    """Edge store at len(vectors): exact latency/recall, optimize() time, HNSW latency/recall per ef."""
    path = root / f"recall-{name}"
    points = make_points(vectors, "logmesh.logs")
    keys = [p.id for p in points]
    queries = queries[:n_queries]
    out: dict = {"set": name, "n": len(points), "queries": n_queries}
    with open_store(path=str(path)) as store:
        out["upsert_per_s"] = round(upsert_all(store, points))
        t, res = latencies(store, queries)
        out["exact"] = {"p50_ms": round(pct(t, 50), 3), "p99_ms": round(pct(t, 99), 3),
                        "recall@10": round(score_recall(vectors, keys, queries, res), 4)}
        t0 = time.perf_counter()
        store.optimize()
        out["optimize_s"] = round(time.perf_counter() - t0, 1)
        info = store.info()
        out["indexed_vectors"] = info.indexed_vectors_count
        out["segments"] = info.segments_count
        out["hnsw"] = []
        for ef in efs:
            store.tune(hnsw_ef=ef)
            f0 = store.exact_fallbacks
            t, res = latencies(store, queries)
            f1 = store.exact_fallbacks
            t_f, res_f = latencies(store, queries, filter={"kind": "line"})
            f2 = store.exact_fallbacks
            line_rows = [i for i, p in enumerate(points) if p.payload["kind"] == "line"]
            out["hnsw"].append({
                "hnsw_ef": ef if ef is not None else "default", "p50_ms": round(pct(t, 50), 3),
                "p99_ms": round(pct(t, 99), 3), "recall@10": round(score_recall(vectors, keys, queries, res), 4),
                "exact_fallbacks": f1 - f0, "filtered_p50_ms": round(pct(t_f, 50), 3),
                "filtered_p99_ms": round(pct(t_f, 99), 3), "filtered_exact_fallbacks": f2 - f1,
                "filtered_recall@10": round(score_recall(vectors[line_rows], [keys[i] for i in line_rows],
                                                         queries, res_f), 4)})
    out["disk_mb"] = round(du(path) / 2**20, 1)
    shutil.rmtree(path, ignore_errors=True)
    return out


# ----------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--local-cap", type=int, default=20_000,
                    help="largest size measured for qdrant-client local mode; larger sizes extrapolated")
    ap.add_argument("--queries", type=int, default=300, help="queries per edge measurement")
    ap.add_argument("--local-queries", type=int, default=40, help="queries per qdrant-client local measurement")
    ap.add_argument("--no-model", action="store_true", help="skip the hdfs-blocks set (needs the real model)")
    ap.add_argument("--quick", action="store_true", help="10k/20k sizes only, fewer queries (a smoke run)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "vector_store.json")
    ap.add_argument("--workdir", type=Path, default=None, help="where stores are written (default: a temp dir)")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.local_cap, args.queries, args.local_queries = [10_000, 20_000], 10_000, 100, 20

    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="bench-vs-", dir=args.workdir))
    big = max(args.sizes)
    data = clustered(big, seed=1)
    queries = clustered(max(args.queries, 1000), seed=2)  # held out: same distribution, not stored
    rows: list[dict] = []
    try:
        for n in sorted(args.sizes):
            print(f"edge {n} ...", file=sys.stderr, flush=True)
            rows.append(bench_engine("edge", root / f"n{n}", data[:n], queries, args.queries))
            shutil.rmtree(root / f"n{n}", ignore_errors=True)
        local_sizes = sorted({n for n in args.sizes if n <= args.local_cap} | {args.local_cap})
        local: dict[int, dict] = {}
        for n in local_sizes:
            print(f"qdrant-local {n} ...", file=sys.stderr, flush=True)
            local[n] = bench_engine("qdrant-local", root / f"l{n}", data[:n], queries, args.local_queries)
            shutil.rmtree(root / f"l{n}", ignore_errors=True)
        cap = local[max(local)]
        for n in sorted(args.sizes):
            if n in local:
                rows.append(local[n])
                continue
            f = n / cap["n"]
            rows.append({"engine": "qdrant-local", "n": n, "measured": False, "extrapolated_from": cap["n"],
                         "upsert_per_s": cap["upsert_per_s"],
                         **{k: round(cap[k] * f, 1) for k in ("search_p50_ms", "search_p99_ms",
                                                             "filtered_p50_ms", "filtered_p99_ms",
                                                             "reopen_s", "disk_mb")}})
        for n in local_sizes:
            if n not in args.sizes:
                rows.append(local[n])

        recall = []
        print(f"edge HNSW recall, clustered {big} ...", file=sys.stderr, flush=True)
        recall.append(bench_recall("clustered (synthetic)", root, data, queries, args.queries, [None, 128, 512]))
        hdfs_meta = None
        if not args.no_model:
            print(f"edge HNSW recall, hdfs-blocks {big} ...", file=sys.stderr, flush=True)
            try:
                hv, hdfs_meta = hdfs_block_vectors(big + 1000, seed=3)
                recall.append(bench_recall("hdfs-blocks (real model, resampled blocks)", root, hv[:big], hv[big:],
                                           args.queries, [None, 128, 512]))
            except (ImportError, OSError) as err:
                print(f"hdfs-blocks skipped: {err}", file=sys.stderr)
                hdfs_meta = {"skipped": str(err)}
    finally:
        shutil.rmtree(root, ignore_errors=True)

    elapsed = time.perf_counter() - started
    result = {
        "benchmark": "vector_store", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "versions": {p: metadata.version(p) for p in ("qdrant-edge-py", "qdrant-client", "numpy")},
        "setup": {"dim": DIM, "distance": "cosine", "batch": BATCH, "limit": 10,
                  "throughput_vectors": "synthetic clustered (1,000 clusters)",
                  "payload": "kind (block|line), anomalous (bool), key, and one more field"},
        "throughput": rows, "recall": recall, "hdfs_blocks": hdfs_meta, "elapsed_s": round(elapsed, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n### Vector store, {DIM}-d cosine, top-10 ({os.cpu_count()} CPUs; upserts in batches of {BATCH})\n")
    print("| engine | points | upsert pts/s | search p50 ms | p99 ms | filtered p50 ms | p99 ms | reopen s | disk MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in sorted(rows, key=lambda r: (r["engine"], r["n"])):
        tag = "" if r["measured"] else f" (extrapolated from {r['extrapolated_from']:,})"
        print(f"| {r['engine']}{tag} | {r['n']:,} | {r['upsert_per_s']:,} | {r['search_p50_ms']} | "
              f"{r['search_p99_ms']} | {r['filtered_p50_ms']} | {r['filtered_p99_ms']} | {r['reopen_s']} | {r['disk_mb']} |")
    print("\n### qdrant-edge HNSW after optimize() (recall@10 vs exact numpy top-10)\n")
    print("| set | points | optimize s | search | p50 ms | p99 ms | recall@10 | filtered p50 / p99 ms "
          "| filtered recall@10 | exact re-runs (unfiltered / filtered) |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in recall:
        e = r["exact"]
        print(f"| {r['set']} | {r['n']:,} | | exact (before optimize) | {e['p50_ms']} | {e['p99_ms']} | "
              f"{e['recall@10']} | | | |")
        for h in r["hnsw"]:
            print(f"| {r['set']} | {r['n']:,} | {r['optimize_s']} | HNSW ef={h['hnsw_ef']} | {h['p50_ms']} | "
                  f"{h['p99_ms']} | {h['recall@10']} | {h['filtered_p50_ms']} / {h['filtered_p99_ms']} | "
                  f"{h['filtered_recall@10']} | {h['exact_fallbacks']} / {h['filtered_exact_fallbacks']} "
                  f"of {r['queries']} |")
    if hdfs_meta:
        print(f"\nhdfs-blocks: {hdfs_meta}")
    print(f"\nwrote {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out} in {elapsed:.0f} s")


if __name__ == "__main__":
    main()
