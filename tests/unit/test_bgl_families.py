"""Log families (ingest/families): BGL parsing of every real dev sample, the label kept out of the record a
detector reads, detection from first lines, loghub templates; HDFS through the same interface."""
from __future__ import annotations

import dataclasses
import os
from collections import Counter
from pathlib import Path

import pytest

from logmesh.ingest.bgl_templates import BglTemplates
from logmesh.ingest.families import FAMILIES, LogFamily, detect, get
from logmesh.ingest.families.base import LineRecord
from logmesh.ingest.hdfs import parse_line

REPO = Path(__file__).resolve().parents[2]
BGL = Path(os.environ.get("LOGMESH_BGL_DATA", REPO.parent / "shared" / "data" / "bgl"))
LINE = ("KERNDTLB 1118535595 2005.06.11 R30-M0-N9-C:J16-U01 2005-06-11-17.19.55.493479 R30-M0-N9-C:J16-U01 "
        "RAS KERNEL FATAL data TLB error interrupt")
HDFS_LINE = ("081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block "
             "blk_38865049064139660 terminating")


@pytest.fixture(scope="module")
def bgl_dir() -> Path:
    if not (BGL / "BGL_2k.log").exists():
        pytest.fail(f"real BGL data not found at {BGL}; set LOGMESH_BGL_DATA to a folder with loghub's BGL samples")
    return BGL


@pytest.fixture(scope="module")
def templates(bgl_dir) -> BglTemplates:
    return BglTemplates.read(bgl_dir / "BGL_templates.csv")


def test_every_family_implements_the_protocol():
    for name in FAMILIES:
        assert isinstance(get(name), LogFamily) and get(name).name == name


def test_a_bgl_line_parses_and_its_label_is_split_off():
    p = get("bgl").parse(LINE + "\r\n", 7)
    r = p.record
    assert p.label == "KERNDTLB"
    assert (r.line_number, r.time, r.level, r.component) == (7, 1118535595.0, "FATAL", "KERNEL")
    assert r.message == "data TLB error interrupt" and r.session_keys == ("R30-M0-N9-C:J16-U01",) and r.parsed
    assert get("bgl").parse("- " + LINE.partition(" ")[2]).label is None


def test_the_record_carries_no_trace_of_the_label():
    """Same line under two labels: the records a detector sees are equal, and no field holds the tag."""
    rest = LINE.partition(" ")[2]
    a, b = get("bgl").parse(LINE), get("bgl").parse("- " + rest)
    assert a.record == b.record and a.label != b.label
    assert not any("KERNDTLB" in str(v) for v in dataclasses.asdict(a.record).values())
    assert "label" not in {f.name for f in dataclasses.fields(LineRecord)}


def test_a_line_not_in_bgl_format_is_kept_and_marked():
    p = get("bgl").parse("APPSEV garbage without fields")
    assert p.label == "APPSEV" and not p.record.parsed and p.record.message == "garbage without fields"
    assert p.record.template_id == "unknown"


def test_every_dev_sample_parses_with_no_line_dropped(bgl_dir, templates):
    family = get("bgl", templates=templates)
    lines = alerts = unparsed = 0
    for path in sorted(bgl_dir.glob("BGL_*.log")):
        with open(path, encoding="utf-8", errors="replace") as f:
            for text in f:
                p = family.parse(text)
                lines += 1
                alerts += p.label is not None
                unparsed += not p.record.parsed
    assert lines == 72_000 and alerts == 5_410  # the README's counts
    assert unparsed == 0


def test_loghub_templates_match_and_the_most_specific_wins(templates):
    assert templates.match("instruction cache parity error corrected") == "E189"
    assert len(templates.templates) == 377
    # a catch-all (E1: only placeholders and colons) must not swallow a line that a specific template names
    assert templates.match("ciod: pollControlDescriptors: Detected the debugger died.") == "E77"


def test_the_family_is_detected_from_the_first_lines(bgl_dir, tmp_path):
    assert detect(bgl_dir / "BGL_2k.log") == "bgl"  # CRLF endings
    assert detect(bgl_dir / "BGL_4k.log") == "bgl"
    (tmp_path / "h.log").write_text(HDFS_LINE + "\n")
    assert detect(tmp_path / "h.log") == "hdfs"
    (tmp_path / "x.log").write_text("hello\nworld\n")
    from logmesh.ingest.families import UnknownFormat
    with pytest.raises(UnknownFormat, match="pass --format"):
        detect(tmp_path / "x.log")


def test_hdfs_through_the_interface_agrees_with_parse_line():
    r = get("hdfs").parse(HDFS_LINE).record
    old = parse_line(HDFS_LINE)
    assert r.template_id == old.template_id == "E11"
    assert r.session_keys == tuple(old.block_ids) and r.component == old.component and r.message == old.message
    assert get("hdfs").parse(HDFS_LINE).label is None  # HDFS labels live in anomaly_label.csv


def test_windows_and_any_line_rule():
    import numpy as np
    from logmesh.scorer.bgl import windows
    w = windows(np.arange(7), 3)
    assert [x.tolist() for x in w] == [[0, 1, 2], [3, 4, 5], [6]]
    assert Counter(len(x) for x in windows(np.arange(250), 100)) == {100: 2, 50: 1}


def test_the_logrecord_of_a_bgl_line_is_keyed_by_node_and_carries_the_label_only_when_asked(templates):
    from logmesh.ingest.families import record_shape
    from logmesh.ingest.families.bgl import BglFamily
    from logmesh.v1 import log_record_pb2 as lr
    family = BglFamily(templates)
    bare = family.record(LINE, "BGL.log", 7)
    assert (bare.id, bare.family, list(bare.block_ids), bare.level_name, bare.component) == (
        "BGL.log:7", "bgl", ["R30-M0-N9-C:J16-U01"], "FATAL", "KERNEL")
    assert bare.event_time.seconds == 1118535595 and bare.level == lr.LEVEL_FATAL
    assert bare.label == lr.LABEL_UNSPECIFIED and not bare.alert_category and "KERNDTLB" not in str(bare)
    labelled = family.record(LINE, "BGL.log", 7, labels=True)
    assert (labelled.label, labelled.alert_category) == (lr.LABEL_ANOMALY, "KERNDTLB")
    assert family.record("- " + LINE.partition(" ")[2], labels=True).label == lr.LABEL_NORMAL
    # the shape the job embeds and the scorer keys by is the one training read
    assert record_shape(bare) == family.parse(LINE).record.shape


def test_a_bgl_line_without_its_label_column_parses_the_same():
    from logmesh.ingest.families.bgl import BglFamily
    family = BglFamily()
    live = family.parse(LINE.partition(" ")[2])  # a live BGL log has no label column
    assert live.label is None and live.record == family.parse(LINE).record
    assert family.looks_like([LINE.partition(" ")[2], LINE]) == 1.0


def test_auto_format_falls_back_to_hdfs_for_a_file_in_no_known_format(bgl_dir, tmp_path):
    from logmesh.ingest.families import resolve
    junk = tmp_path / "junk.log"
    junk.write_text("not a log line\nnor this\n")
    assert resolve("auto", [bgl_dir / "BGL_2k.log"]) == "bgl" and resolve("auto", [junk]) == "hdfs"
    assert resolve("auto", ["-"]) == "hdfs" and resolve("bgl", [junk]) == "bgl"
    with pytest.raises(ValueError, match="unknown log format"):
        resolve("spirit", [junk])
