"""Memory is bounded by bytes, not entries: real `logmesh serve` processes fed long lines (to score, and as
anomalies through the anomalies topic to the history) stay under a stated bound (their RSS, read from /proc), a
ListAnomalies page fits any client after huge entries, and a reply over the message limit does not end a
stream."""
from __future__ import annotations

import random
import string
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from logmesh.client import EmbedderClient, ScorerClient
from logmesh.v1 import (embedder_service_pb2 as epb, embedder_service_pb2_grpc as egrpc, score_pb2,
                        scorer_service_pb2 as spb, scorer_service_pb2_grpc as sgrpc)

from anomaly_topic import ALERT, BOOTSTRAP, FINAL, AnomalyWriter, block, fed_scorer, fresh_topic
from kafka_helpers import _free_port

LOGMESH = str(Path(sys.executable).with_name("logmesh"))
MiB = 1024 * 1024
ANOMALY = score_pb2.VERDICT_ANOMALY
HEAD = "081109 214043 2561 INFO dfs.DataNode$DataXceiver: "
EXCEPTION = "writeBlock blk_-3102267849859399193 received exception java.io.IOException: Could not read from stream"
LINE_BYTES = 60_000
#: The stated bounds: what each server's RSS may grow by over its warmed-up size while the load below runs.
#: The scorer holds a 128 MiB history and 96 MiB of shape caches by default; the embedder a 64 MiB cache; the
#: rest is room for what long lines cost in flight (gRPC buffers, the model's attention over 256 tokens, the
#: allocator keeping freed pages).
SCORER_GROWTH_MIB = 400
EMBEDDER_GROWTH_MIB = 200
HISTORY_MB = 32  # the processes' --history-mb: small, so that the topic below overfills it


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _distinct_line(rng: random.Random) -> str:
    """A 60 KB DataXceiver line of random 2,000-letter words, as a base64 blob would be (masking keeps letters, so
    each has its own shape), that ends in an emoji: Python then holds the whole line at 4 bytes a character
    (240 KB), as it would any such line. The tokenizer reads a word that long as one unknown token, so the model
    works on ~50 tokens, not 256: this test is of memory, and the model's time per line is not what it measures."""
    words = " ".join("".join(rng.choices(string.ascii_lowercase, k=2000)) for _ in range(LINE_BYTES // 2001))
    return HEAD + words + " \U0001F525"


def _anomalous_line(n: int) -> str:
    """A 60 KB line that is a write exception over and over (the n makes a few distinct lines)."""
    body = f"{EXCEPTION} attempt{string.ascii_lowercase[n]} "
    return HEAD + (body * (LINE_BYTES // len(body)))


@pytest.fixture(scope="module")
def processes(trained_models, tmp_path_factory, admin):
    """`logmesh serve embedder` and `logmesh serve scorer` as real processes with their default budgets."""
    work = tmp_path_factory.mktemp("memory")
    ports = {"embedder": _free_port(), "scorer": _free_port()}
    embedder = f"127.0.0.1:{ports['embedder']}"
    topic = fresh_topic(admin, "t-memory")
    procs = {
        "embedder": subprocess.Popen([LOGMESH, "serve", "embedder", "--port", str(ports["embedder"])], cwd=work,
                                     stderr=open(work / "embedder.log", "w")),
        "scorer": subprocess.Popen([LOGMESH, "serve", "scorer", "--port", str(ports["scorer"]), "--model-dir",
                                    str(trained_models), "--embedder", embedder, "--bootstrap", BOOTSTRAP,
                                    "--anomalies-topic", topic, "--history-mb", str(HISTORY_MB)], cwd=work,
                                   stderr=open(work / "scorer.log", "w")),
    }
    try:
        EmbedderClient(embedder).wait_until_serving(120)
        ScorerClient(f"127.0.0.1:{ports['scorer']}").wait_until_serving(60)
        yield {"scorer": f"127.0.0.1:{ports['scorer']}", "embedder": embedder, "procs": procs, "topic": topic}
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            p.wait(30)


def test_servers_stay_under_a_memory_bound_with_long_lines(processes):
    """1,000 distinct 60 KB lines and 10,000 repeated 60 KB anomalies to score (the issue saw the scorer grow by
    2.35 GB and the embedder by 772 MB), then 1,500 60 KB anomalies (90 MB) for the history through the topic,
    over its --history-mb. Each batch is followed by an RSS reading, so a server past its bound fails the
    test at once instead of filling the machine."""
    pids = {name: p.pid for name, p in processes["procs"].items()}
    bounds = {"scorer": SCORER_GROWTH_MIB, "embedder": EMBEDDER_GROWTH_MIB}
    peak: dict[str, float] = {}
    with ScorerClient(processes["scorer"], timeout=120) as scorer:
        rng = random.Random(7)
        warm = [_distinct_line(rng) for _ in range(10)] + [_anomalous_line(0)] * 50
        assert all(r.HasField("result") for r in scorer.score_lines(warm, batch_size=10))
        base = {name: _rss_mib(pid) for name, pid in pids.items()}

        def check(stage: str) -> None:
            for name, pid in pids.items():
                rss = _rss_mib(pid)
                peak[name] = max(peak.get(name, 0.0), rss)
                assert rss - base[name] < bounds[name], (
                    f"{name} grew {rss - base[name]:.0f} MiB (from {base[name]:.0f}) during {stage}; "
                    f"the bound is {bounds[name]} MiB")

        for start in range(0, 1000, 10):  # small batches: the model's work space stays small and steady
            batch = [_distinct_line(rng) for _ in range(10)]
            results = list(scorer.score_lines(batch, batch_size=10))
            assert len(results) == 10 and all(r.HasField("result") for r in results)
            check("1,000 distinct 60 KB lines")
        anomalous = [_anomalous_line(n) for n in range(4)]
        flagged = 0
        for start in range(0, 10_000, 100):
            results = list(scorer.score_lines([anomalous[(start + i) % 4] for i in range(100)], batch_size=50))
            flagged += sum(r.result.verdict == ANOMALY for r in results)
            check("10,000 repeated 60 KB anomalies")
        assert flagged == 10_000
        stats = scorer.stats()
        assert stats.line_anomalies >= 10_000 and stats.history_entries == 0  # scoring records nothing
        writer = AnomalyWriter(processes["topic"])
        for start in range(0, 1500, 50):
            writer.write([score_pb2.Anomaly(line=score_pb2.ScoreResult(
                record_id=f"big-{start + i}", verdict=ANOMALY, message=_anomalous_line(i % 4)[len(HEAD):],
                component="dfs.DataNode$DataXceiver")) for i in range(50)])
            check("1,500 60 KB anomalies read by the history")

        def read_all():  # type: ignore[no-untyped-def]
            s = scorer.stats()
            return s if s.history_status == "live" else None
        import waiting
        stats = waiting.wait_for(read_all, 120, "the history to read the topic")
        entries = scorer.list_anomalies(100_000)[0]
        assert 0 < stats.history_entries == len(entries) < HISTORY_MB * MiB // LINE_BYTES  # the oldest went first
        assert entries[0].line.record_id == "big-1499"  # the newest is held
        check("the history read")
    print(f"\nRSS MiB at start / peak: " + ", ".join(f"{n} {base[n]:.0f} / {peak[n]:.0f}" for n in pids))


# --- pages and replies (an in-process scorer of this module's own) -----------------------------------------

def test_a_page_fits_any_client_after_huge_entries(admin, trained_models, embedder_server):
    """Huge entries read from the topic are stored trimmed (and say so); a page fits grpc's default 4 MiB
    receive limit, and following its token reaches every entry; the same final 100,000-event story written
    five times is entered once."""
    block_id = "blk_memory_bounds_huge"
    events = (["E5", "E22", "E7"] * 33_334)[:100_000]
    topic = fresh_topic(admin, "t-pages")
    server = fed_scorer(trained_models, embedder_server.address, topic)
    writer = AnomalyWriter(topic)
    for start in range(0, 150, 50):
        writer.write([score_pb2.Anomaly(line=score_pb2.ScoreResult(
            record_id=f"huge-{start + i}", verdict=ANOMALY, message=_anomalous_line(i % 4)[len(HEAD):],
            component="dfs.DataNode$DataXceiver")) for i in range(50)])
    writer.write([block(block_id, ALERT, events[:3])])
    for _ in range(5):
        writer.write([block(block_id, FINAL, events)])
    try:
        with ScorerClient(server.address, timeout=120) as scorer:
            import waiting
            waiting.wait_for(lambda: scorer.stats().history_entries == 152, 60, "the history to read the topic")
        # a client with grpc's default limits (4 MiB received), as grpcurl and most tools have
        channel = grpc.insecure_channel(server.address)
        stub = sgrpc.ScorerServiceStub(channel)
        seen, token, pages = [], "", 0
        while True:
            page = stub.ListAnomalies(spb.ListAnomaliesRequest(page_size=1000, page_token=token), timeout=60)
            assert page.ByteSize() <= 4 * MiB
            pages += 1
            seen.extend(page.anomalies)
            token = page.next_page_token
            if not token:
                break
        channel.close()
    finally:
        server.stop(1)
    assert pages >= 2  # 150 entries of 60 KB lines do not fit one page
    assert [e.id for e in seen] == list(range(152, 0, -1))
    assert len([e for e in seen if e.HasField("line")]) == 150
    blocks = [e for e in seen if e.HasField("block") and e.block.block_id == block_id]
    assert sorted(e.block.kind for e in blocks) == [ALERT, FINAL]
    [final] = [e for e in blocks if e.block.kind == FINAL]
    assert final.ByteSize() <= 128 * 1024 and "events: kept" in final.trimmed and "of 100000" in final.trimmed
    assert 0 < len(final.block.events) < 100_000
    assert all(not e.trimmed for e in seen if e.HasField("line"))  # a 60 KB line fits an entry whole


def test_a_stream_survives_an_oversized_reply(own_scorer, embedder_server):
    """Legal batches just under the 32 MiB request limit whose answers are larger than the limit: each is
    answered in several replies, and the stream goes on to answer the next batch."""
    line = "081109 204655 556 INFO dfs.DataNode$PacketResponder: Received block blk_1 of size 67108864 " + "y" * 30_800
    items = [spb.ScoreItem(raw_line=line) for _ in range(1024)]
    assert spb.ScoreStreamRequest(batch_id=1, items=items).ByteSize() < 32 * MiB
    requests = iter([spb.ScoreStreamRequest(batch_id=1, items=items),
                     spb.ScoreStreamRequest(batch_id=2, items=items[:3])])
    with ScorerClient(own_scorer.address, timeout=120) as scorer:
        replies = list(scorer.stub.ScoreStream(requests, timeout=120))
    assert [r.batch_id for r in replies][-1] == 2 and len(replies) > 2
    assert all(r.ByteSize() <= 4 * MiB for r in replies)
    assert sum(len(r.results) for r in replies if r.batch_id == 1) == 1024
    assert all(res.HasField("result") for r in replies for res in r.results)
    assert sum(len(r.results) for r in replies if r.batch_id == 2) == 3

    # the embedder: a record id of 30 KB comes back with each vector
    rid = "r" * 30_000
    batch = epb.EmbedStreamRequest(batch_id=1, items=[epb.EmbedItem(record_id=f"{rid}{i}", text="Receiving block")
                                                      for i in range(1024)])
    with EmbedderClient(embedder_server.address) as embedder:
        stub = egrpc.EmbedderServiceStub(embedder.channel)
        replies = list(stub.EmbedStream(iter([batch, epb.EmbedStreamRequest(batch_id=2, items=batch.items[:2])]),
                                        timeout=120))
    assert [r.batch_id for r in replies][-1] == 2 and all(not r.HasField("error") for r in replies)
    ids = [res.record_id for r in replies if r.batch_id == 1 for res in r.results]
    assert ids == [f"{rid}{i}" for i in range(1024)]
    assert all(res.HasField("embedding") for r in replies for res in r.results)

    # blocks: 1,024 blocks of 6,300 events, each answered with its events
    blocks = [spb.BlockSession(block_id=f"blk_oversized_{i}", events=["E5", "E22", "E11"] * 2_100)
              for i in range(1024)]
    assert spb.ScoreBlockStreamRequest(batch_id=1, blocks=blocks).ByteSize() < 32 * MiB
    with ScorerClient(own_scorer.address, timeout=120) as scorer:
        replies = list(scorer.stub.ScoreBlockStream(iter([spb.ScoreBlockStreamRequest(batch_id=1, blocks=blocks),
                                                          spb.ScoreBlockStreamRequest(batch_id=2, blocks=blocks[:1])]),
                                                    timeout=180))
    assert sum(len(r.results) for r in replies if r.batch_id == 1) == 1024
    assert sum(len(r.results) for r in replies if r.batch_id == 2) == 1
    assert all(res.HasField("verdict") for r in replies for res in r.results)
