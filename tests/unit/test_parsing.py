"""Parsing raw HDFS lines: agreement with loghub's ground-truth event ids on the real files."""
from __future__ import annotations

import csv

import pytest

from logmesh.ingest.hdfs import parse_line
from logmesh.ingest.masking import line_shape, mask
from logmesh.v1 import log_record_pb2


@pytest.mark.parametrize("name", ["HDFS_20000.log", "HDFS_5k.log"])
def test_template_and_block_agree_with_ground_truth(data_dir, name):
    with open(data_dir / f"{name}_labels.csv", newline="") as f:
        truth = list(csv.DictReader(f))
    with open(data_dir / name, encoding="utf-8") as f:
        lines = f.readlines()
    assert len(lines) == len(truth)
    wrong = [(n, row["EventId"], r.template_id) for n, (line, row) in enumerate(zip(lines, truth), 1)
             if (r := parse_line(line, name, n)).template_id != row["EventId"]
             or r.block_ids[0] != row["BlockIds"].split(";")[0]]
    assert wrong == []


def test_fields_of_one_line():
    r = parse_line("081109 203518 143 INFO dfs.DataNode$DataXceiver: Receiving block blk_-1608999687919862906 "
                   "src: /10.250.19.102:54106 dest: /10.250.19.102:50010\r\n", "HDFS.log", 1)
    assert (r.id, r.pid, r.level, r.component) == ("HDFS.log:1", 143, log_record_pb2.LEVEL_INFO, "dfs.DataNode$DataXceiver")
    assert r.event_time.ToJsonString() == "2008-11-09T20:35:18Z"
    assert r.template_id == "E5" and r.block_ids == ["blk_-1608999687919862906"]
    assert not r.message.endswith("\r")


def test_unparsed_line_keeps_its_text():
    r = parse_line("garbage blk_42 here", "x", 3)
    assert (r.message, r.template_id, list(r.block_ids), r.component) == ("garbage blk_42 here", "unknown", ["blk_42"], "")


def test_masking_maps_the_real_log_onto_few_shapes(data_dir):
    with open(data_dir / "HDFS_20000.log", encoding="utf-8") as f:
        shapes = {line_shape(r.component, r.message) for r in (parse_line(l) for l in f)}
    assert 10 <= len(shapes) <= 60  # ~30 templates; a broken mask gives thousands
    assert mask("blk_-160 /10.0.0.1:50010 size 6710 0xff") == "<BLK> <IP> size <NUM> <HEX>"
