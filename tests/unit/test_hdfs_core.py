"""Parsing, masking, templates and Drain mining of HDFS lines live in ingest/; training's fast reader
(scorer/dataset.iter_fast) and the scorer's new-template miner use them instead of copies of their rules."""
from __future__ import annotations

from pathlib import Path

from logmesh.ingest.hdfs import parse_line
from logmesh.ingest.masking import line_shape
from logmesh.ingest.reader import iter_lines
from logmesh.scorer.dataset import iter_fast

HDFS_5K = Path(__file__).resolve().parents[3] / "shared/data/hdfs/HDFS_5k.log"


def test_the_fast_reader_agrees_with_parse_line_on_real_lines() -> None:
    fast = list(iter_fast(HDFS_5K))
    slow = [parse_line(text, source, n) for source, n, text in iter_lines(HDFS_5K) if text]
    assert len(fast) == len(slow) == 4519
    for f, s in zip(fast, slow):
        assert (f.line_number, f.component, f.message, f.template_id, f.block_ids) == \
            (s.line_number, s.component, s.message, s.template_id, list(s.block_ids))
        assert f.shape == line_shape(s.component, s.message)
        assert f.time == s.event_time.seconds


def test_a_line_not_in_hdfs_format_reads_the_same_both_ways() -> None:
    text = "garbage with blk_42 and blk_-7 and blk_42 again"
    (fast,) = [r for r in iter_fast_text(text)]
    slow = parse_line(text)
    assert (fast.component, fast.message, fast.template_id, fast.block_ids) == \
        ("", text, "unknown", ["blk_42", "blk_-7"]) == (slow.component, slow.message, slow.template_id,
                                                        list(slow.block_ids))


def iter_fast_text(text: str):  # type: ignore[no-untyped-def]
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "one.log"
        path.write_text(text + "\n")
        yield from iter_fast(path)


def test_the_scorer_names_new_templates_with_ingest_s_drain_settings() -> None:
    from logmesh.ingest.templates_drain import live_miner
    from logmesh.scorer.new_templates import MAX_CLUSTERS, NewTemplates
    novel = NewTemplates(known={"E1"})
    assert novel._miner.config.drain_max_clusters == MAX_CLUSTERS
    assert vars(novel._miner.config) == vars(live_miner(MAX_CLUSTERS).config)
    first = novel.name("Disk <*> failed on node <*>")
    assert first.startswith("N1: ") and novel.name("Disk <*> failed on node <*>") == first
