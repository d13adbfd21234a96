"""What bench/bench_bgl.py reads and reports: the embedder's cache counter as prometheus_client writes it, the
uncached template scan it times, and the ratio row of its table."""
from __future__ import annotations

import sys
from pathlib import Path

from prometheus_client import generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: bench/ is not installed
from bench import bench_bgl  # noqa: E402
from logmesh.embedder.cache import EmbeddingCache  # noqa: E402
from logmesh.ingest.bgl_templates import BglTemplates  # noqa: E402
from logmesh.runtime.metrics import REGISTRY  # noqa: E402


def counts() -> tuple[float, float]:
    found = dict(bench_bgl.HIT.findall(generate_latest(REGISTRY).decode()))
    assert set(found) == {"hit", "miss"}, "the bench would read no cache figures from the embedder"
    return float(found["hit"]), float(found["miss"])


def test_the_cache_counter_the_bench_scrapes_moves_with_hits_and_misses():
    cache = EmbeddingCache(1 << 20)
    cache.get_many(["warm"])  # both label values exist from here on
    cache.put_many({"warm": b"v" * 16})
    hits0, misses0 = counts()
    cache.get_many(["warm", "warm", "cold-a", "cold-b", "warm"])
    hits, misses = counts()
    assert (hits - hits0, misses - misses0) == (3, 2)


def test_the_bench_reads_how_many_shapes_reached_the_model():
    from logmesh.embedder.engine import ENCODED
    hits0, misses0, encoded0 = bench_bgl.scraped_counts(generate_latest(REGISTRY).decode())
    ENCODED.inc(3)  # the counter the engine moves once per shape it encodes (tests/integration: with the model)
    hits, misses, encoded = bench_bgl.scraped_counts(generate_latest(REGISTRY).decode())
    assert (hits, misses, encoded - encoded0) == (hits0, misses0, 3)


def test_the_uncached_scan_names_what_the_cached_match_names():
    t = BglTemplates({"E1": "generating core.<*>", "E2": "<*> double-hummer alignment exceptions",
                      "E3": "<*> exceptions"})  # a broader one: the most literal template wins
    messages = ("generating core.12", "4 double-hummer alignment exceptions", "7 other exceptions", "unknown kind")
    assert [t.scan(m) for m in messages] == ["E1", "E2", "E3", None]
    assert [t.match(m) for m in messages] == ["E1", "E2", "E3", None]


def test_the_table_says_whether_bgl_kept_up_with_hdfs():
    def fam(rate: float) -> dict:
        return {"lines_per_s": rate, "lines": 1000, "seconds": 1000 / rate, "cache_hit_rate": 0.5, "cache_lookups": 10}
    slower = bench_bgl.render({"runs": [{"hdfs": fam(2000), "bgl": fam(1000), "ratio": 0.5}]})
    faster = bench_bgl.render({"runs": [{"hdfs": fam(1000), "bgl": fam(1500), "ratio": 1.5}]})
    assert "| 0.50 |" in "\n".join(slower) and "not met" in "\n".join(slower)
    assert "| 1.50 |" in "\n".join(faster) and "not met" not in "\n".join(faster)
    warm = bench_bgl.render({"runs": [{"hdfs": {**fam(1000), "warm": fam(4000)}, "bgl": {**fam(1500), "warm": fam(2000)},
                                       "ratio": 1.5}]})
    rows = [r for r in warm if r.startswith("| 1 |")]
    assert len(rows) == 2 and "| cold |" in rows[0] and "| 0.50 |" in rows[1] and "not met" in rows[1]
    assert bench_bgl.render(None) == [] and bench_bgl.render({"runs": []}) == []
