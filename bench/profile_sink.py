"""The Spark job (`logmesh stream`) with a stopwatch around each step of the foreachBatch sink.

    .venv/bin/python bench/profile_sink.py --out var/bench/profile/batches.jsonl <logmesh stream args...>

Runs logmesh.streaming.job.run unchanged, after wrapping (in this process only, nothing is edited):
- BatchSink.__call__            -> "call" (whole foreachBatch body; call - process = toPandas + frame building)
- BatchSink.process             -> "process"
- sink.decode / sink.line_shape -> "decode" / "mask"
- BatchSink._embed / _score     -> "embed_rpc" / "score_rpc"
- ScorerClient.score_blocks     -> "block_rpc" (the generator is drained inside the stopwatch)
- BatchSink._blocks             -> "blocks_total" (retrieve + merge + block RPC)
- store.retrieve / store.upsert -> "store_retrieve" / "store_upsert"
- ResultProducer.scores/anomalies/dead_letters -> "kafka_produce"; .flush -> "kafka_flush"
- Ledger.mark                   -> "ledger"
- DataFrame.toPandas           -> "topandas" (where Spark runs the plan: Kafka read, decode, shuffle,
                                   block-state UDF, Arrow to the driver)
and a StreamingQueryListener records Spark's own durationMs per micro-batch (triggerExecution,
addBatch, latestOffset, queryPlanning, walCommit, commitOffsets) and the state operator's metrics.
One JSON line per batch, two kinds: {"kind": "sink", ...} and {"kind": "spark", ...}.

`--code-rev REV` runs streaming/block_sessions.py and streaming/spark.py as they were at git REV (the
rest of the job as in the working tree), for A/B runs against the working tree in one window
(bench/e2e_ab.py). The old module is pickled by value, so the pyspark workers run the old code too.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--code-rev", default=None, help="git rev of block_sessions.py/spark.py to run")
    known, rest = parser.parse_known_args()
    if known.code_rev:
        load_code_rev(known.code_rev)
    out = open(Path(known.out), "a", buffering=1)
    lock = threading.Lock()

    def emit(record: dict) -> None:
        with lock:
            out.write(json.dumps(record) + "\n")

    from logmesh.client import ScorerClient
    from logmesh.streaming import job, sink as sink_mod, spark as spark_mod
    from logmesh.streaming.outputs import ResultProducer
    from logmesh.streaming.vector_store import open_store

    acc: dict[str, float] = {}

    def timer(name: str, fn, drain: bool = False):  # type: ignore[no-untyped-def]
        @functools.wraps(fn)
        def wrapped(*a, **k):  # type: ignore[no-untyped-def]
            t = time.perf_counter()
            try:
                result = fn(*a, **k)
                if drain:
                    result = iter(list(result))
                return result
            finally:
                acc[name] = acc.get(name, 0.0) + time.perf_counter() - t
        return wrapped

    B = sink_mod.BatchSink
    for name, attr in (("process", "process"), ("embed_rpc", "_embed"), ("score_rpc", "_score"),
                       ("blocks_total", "_blocks")):
        setattr(B, attr, timer(name, getattr(B, attr)))
    sink_mod.decode = timer("decode", sink_mod.decode)
    sink_mod.line_shape = timer("mask", sink_mod.line_shape)
    ScorerClient.score_blocks = timer("block_rpc", ScorerClient.score_blocks, drain=True)
    for attr in ("scores", "anomalies", "dead_letters"):
        setattr(ResultProducer, attr, timer("kafka_produce", getattr(ResultProducer, attr)))
    ResultProducer.flush = timer("kafka_flush", ResultProducer.flush)
    sink_mod.Ledger.mark = timer("ledger", sink_mod.Ledger.mark)

    original_open = open_store

    def patched_open_store(*a, **k):  # type: ignore[no-untyped-def]
        store = original_open(*a, **k)
        cls = type(store)
        if not getattr(cls, "_bench_wrapped", False):
            cls.retrieve = timer("store_retrieve", cls.retrieve)
            cls.upsert = timer("store_upsert", cls.upsert)
            cls._bench_wrapped = True
        return store
    job.open_store = patched_open_store

    original_call = B.__call__

    def call(self, df, batch_id):  # type: ignore[no-untyped-def]
        acc.clear()
        df.toPandas = timer("topandas", df.toPandas)
        started, wall = time.perf_counter(), time.time()
        try:
            return original_call(self, df, batch_id)
        finally:
            rec = {"kind": "sink", "batch_id": batch_id, "start": wall,
                   "call": time.perf_counter() - started, **acc}
            rec["topandas_and_frame"] = rec["call"] - acc.get("process", 0.0) - acc.get("ledger", 0.0)
            emit(rec)
    B.__call__ = call

    original_session = spark_mod.session

    def session(*a, **k):  # type: ignore[no-untyped-def]
        spark = original_session(*a, **k)
        from pyspark.sql.streaming import StreamingQueryListener

        class Listener(StreamingQueryListener):
            def onQueryStarted(self, event):  # type: ignore[no-untyped-def]
                pass

            def onQueryProgress(self, event):  # type: ignore[no-untyped-def]
                p = event.progress
                state = [{k: getattr(o, k) for k in ("numRowsTotal", "numRowsUpdated", "numRowsRemoved",
                                                     "allUpdatesTimeMs", "allRemovalsTimeMs", "commitTimeMs",
                                                     "memoryUsedBytes", "customMetrics")}
                         for o in p.stateOperators]
                emit({"kind": "spark", "batch_id": p.batchId, "rows": p.numInputRows,
                      "timestamp": p.timestamp, "duration_ms": dict(p.durationMs), "state": state})

            def onQueryIdle(self, event):  # type: ignore[no-untyped-def]
                pass

            def onQueryTerminated(self, event):  # type: ignore[no-untyped-def]
                pass

        spark.streams.addListener(Listener())
        return spark
    spark_mod.session = session

    p = argparse.ArgumentParser()
    job.add_args(p)
    p.add_argument("--log-level", default="info")
    args = p.parse_args(rest)
    import logging
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO), stream=sys.stderr)
    job.run(job.config_from_args(args))


def load_code_rev(rev: str) -> None:
    """Replaces logmesh.streaming.block_sessions and .spark by their text at git `rev` (or in folder `rev`)."""
    import subprocess
    import types

    from pyspark import cloudpickle
    for name in ("block_sessions", "spark"):
        if Path(rev).is_dir():  # a folder holding the two files (a variant that was never committed)
            source = (Path(rev) / f"{name}.py").read_text()
        else:
            source = subprocess.run(["git", "show", f"{rev}:streaming/{name}.py"], cwd=REPO, check=True,
                                    capture_output=True, text=True).stdout
        full = f"logmesh.streaming.{name}"
        module = types.ModuleType(full)
        module.__file__ = str(REPO / f"streaming/{name}.py")  # spark.py finds the repo from it
        sys.modules[full] = module
        exec(compile(source, f"{rev}:streaming/{name}.py", "exec"), module.__dict__)
        import logmesh.streaming as pkg
        setattr(pkg, name, module)
        cloudpickle.register_pickle_by_value(module)  # workers get this code, not the working tree's


if __name__ == "__main__":
    main()
