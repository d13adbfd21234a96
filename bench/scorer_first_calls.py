"""What a just-started scorer's and embedder's first calls cost against their steady state (issue 18 cold start).

    .venv/bin/python bench/scorer_first_calls.py --rounds 3
    .venv/bin/python bench/scorer_first_calls.py --rounds 3 --pythonpath /tmp/lm-base/pkg   # a --prepare'd tree

Each round starts a fresh `logmesh serve embedder` and a fresh `logmesh serve scorer` (the servers of the tree on
PYTHONPATH), waits until each answers SERVING (timed from its spawn), then times, on one client channel per
server opened before the first call:

- the embedder: EmbedStream of 32 shapes it has not seen, three times (other shapes each time): the first is the
  one the first micro-batch's worker pays;
- the scorer, the calls the streaming job makes (streaming/work.py): ScoreStream of 256 real HDFS records whose
  first line per shape carries its vector (the scorer embeds nothing), three times with shapes new to its memo;
  then the same 256 again (memo hits); ScoreBlockStream of 64 blocks' event lists, twice with other blocks;
  and a unary Score of a raw line (the scorer asks the embedder: its own channel's first call).

A call's first-minus-steady difference is the first-call cost a fresh scorer puts on the first batch. One JSON
line per round, and the medians over the rounds.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _records(lines: list[str]):  # type: ignore[no-untyped-def]
    """Real HDFS lines as the job's decode makes them, each with its masked shape (the memo's key)."""
    from logmesh.ingest.families import record_shape
    from logmesh.ingest.hdfs import parse_line
    out = []
    for i, text in enumerate(lines):
        record = parse_line(text, "first-calls", i)
        out.append((record, record_shape(record)))
    return out


def _groups(records, size: int, count: int) -> list[list]:  # type: ignore[no-untyped-def]
    """`count` groups of `size` real records, each made a shape no other record has by two words of an HDFS
    vocabulary appended to its message (HDFS_20000.log has only 19 masked shapes): each group is new to a memo
    and a cache that saw the ones before."""
    from bench.pipeline import VOCAB
    from logmesh.ingest.families import record_shape
    groups = []
    for k in range(count):
        group = []
        for i in range(size):
            n = k * size + i
            record, _ = records[(n * 7919) % len(records)]
            fresh = type(record)()
            fresh.CopyFrom(record)
            fresh.id = f"first-calls-{n}"
            fresh.message = f"{record.message} {VOCAB[n % len(VOCAB)]} {VOCAB[(n // len(VOCAB)) % len(VOCAB)]}"
            group.append((fresh, record_shape(fresh)))
        groups.append(group)
    return groups


def _timed(call) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    call()
    return round((time.perf_counter() - started) * 1e3, 1)


def one_round(args, lines: list[str], blocks: list[list[str]], env: dict) -> dict:  # type: ignore[no-untyped-def]
    import grpc
    from bench.e2e_ab import free_port
    from bench.pipeline import BIN, VOCAB
    from logmesh import vectors
    from logmesh.client import EmbedderClient, ScorerClient
    from logmesh.embedder.encoder import MODEL_NAME
    from logmesh.v1 import embedder_service_pb2 as epb, scorer_service_pb2 as spb
    from logmesh.v1 import embedder_service_pb2_grpc as egrpc, scorer_service_pb2_grpc as sgrpc

    embed_port, score_port = free_port(), free_port()
    embed_addr, score_addr = f"127.0.0.1:{embed_port}", f"127.0.0.1:{score_port}"
    result: dict = {}
    procs = []
    try:
        spawned = time.monotonic()
        procs.append(subprocess.Popen([str(BIN), "serve", "embedder", "--port", str(embed_port)], cwd=REPO, env=env,
                                      stderr=open(Path(args.work) / "embedder.log", "a")))
        embedder = EmbedderClient(embed_addr)
        embedder.wait_until_serving(240)
        result["embedder_serving_s"] = round(time.monotonic() - spawned, 2)
        records = _records(lines[:2000])
        
        groups = _groups(records, 32, 4 + 3)  # 3 for the embedder's calls, 4 for the scorer's
        estub = egrpc.EmbedderServiceStub(grpc.insecure_channel(embed_addr))
        estub.EmbedStream(iter([epb.EmbedStreamRequest(batch_id=0)]), timeout=30)  # the channel is up

        def embed_group(group) -> None:  # type: ignore[no-untyped-def]
            request = epb.EmbedStreamRequest(batch_id=1, items=[epb.EmbedItem(record_id=str(i), text=s)
                                                                 for i, (_, s) in enumerate(group)])
            list(estub.EmbedStream(iter([request]), timeout=60))
        result["embed_stream_32_new_ms"] = [_timed(lambda g=g: embed_group(g)) for g in groups[:3]]

        spawned = time.monotonic()
        procs.append(subprocess.Popen([str(BIN), "serve", "scorer", "--port", str(score_port), "--model-dir",
                                       args.models, "--embedder", embed_addr], cwd=REPO, env=env,
                                      stderr=open(Path(args.work) / "scorer.log", "a")))
        scorer = ScorerClient(score_addr)
        scorer.wait_until_serving(180)
        result["scorer_serving_s"] = round(time.monotonic() - spawned, 2)
        sstub = sgrpc.ScorerServiceStub(grpc.insecure_channel(score_addr))
        list(sstub.ScoreStream(iter([spb.ScoreStreamRequest(batch_id=0)]), timeout=30))  # the channel is up

        # the job's calls: 256 records per ScoreStream, the first line of each shape with its vector
        score_groups = []
        for k in range(4):
            group = groups[3 + k]
            vecs = embedder.embed_many([s for _, s in group])
            items = [spb.ScoreItem(record=r, embedding=vectors.to_message(r.id, MODEL_NAME, v))
                     for (r, _), v in zip(group, vecs)]
            # filled to 256 with more lines of the group's shapes, without vectors (the job's other lines)
            for n in range(256 - len(items)):
                again = type(group[0][0])()
                again.CopyFrom(group[n % len(group)][0])
                again.id = f"{again.id}-again-{n}"
                items.append(spb.ScoreItem(record=again))
            score_groups.append(items)

        def score(items) -> None:  # type: ignore[no-untyped-def]
            replies = list(sstub.ScoreStream(iter([spb.ScoreStreamRequest(batch_id=1, items=items)]), timeout=60))
            bad = [r.error.message for reply in replies for r in reply.results if r.HasField("error")]
            if bad or any(reply.HasField("error") for reply in replies):
                raise SystemExit(f"the scorer refused the items: {bad[:2]}")
        result["score_stream_256_new_shapes_ms"] = [_timed(lambda g=g: score(g)) for g in score_groups[:3]]
        result["score_stream_256_memo_hits_ms"] = _timed(lambda: score(score_groups[0]))

        def score_blocks(events: list[list[str]]) -> None:
            request = spb.ScoreBlockStreamRequest(batch_id=1, blocks=[
                spb.BlockSession(block_id=f"b{i}", events=e, closed=True) for i, e in enumerate(events)])
            list(sstub.ScoreBlockStream(iter([request]), timeout=60))
        result["score_block_stream_64_ms"] = [_timed(lambda k=k: score_blocks(blocks[64 * k: 64 * (k + 1)]))
                                              for k in range(3)]
        result["score_raw_line_new_shape_ms"] = [
            _timed(lambda k=k: scorer.score_line(f"{lines[k]} {VOCAB[k]} raw")) for k in range(3)]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--models", default="models", help="the scorer's model dir (default %(default)s)")
    p.add_argument("--pythonpath", default="", help="PYTHONPATH for the servers: a --prepare'd tree's pkg folder")
    p.add_argument("--work", default=f"/tmp/lm-first-calls-{os.getpid()}")
    args = p.parse_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    from bench.pipeline import DATA, ensure_model
    from logmesh.ingest.hdfs import parse_line
    ensure_model(args.models)
    lines = (DATA / "HDFS_20000.log").read_text().splitlines()
    sessions: dict[str, list[str]] = {}
    for i, text in enumerate(lines):
        record = parse_line(text, "first-calls", i)
        for block in record.block_ids:
            sessions.setdefault(block, []).append(record.template_id or "unknown")
    blocks = list(sessions.values())[:192]
    env = dict(os.environ)
    if args.pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(x for x in (args.pythonpath, env.get("PYTHONPATH")) if x)
    rounds = []
    for k in range(args.rounds):
        r = one_round(args, lines, blocks, env)
        r["load"] = open("/proc/loadavg").read().split()[:3]
        print(json.dumps(r), flush=True)
        rounds.append(r)
    med = {}
    for key in rounds[0]:
        if key == "load":
            continue
        values = [r[key] for r in rounds]
        med[key] = (np.median(values, axis=0).round(1).tolist())
    print("medians:", json.dumps(med), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
