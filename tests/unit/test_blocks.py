"""A block's story in Spark's state (streaming/blocks.py): its running vector sum and anomalous ids, the
fields older state lacks, and the alert rule (ALERT once per block, FINAL when it closes anomalous)."""
from __future__ import annotations

import numpy as np

from logmesh.streaming import blocks
from logmesh.streaming.blocks import ALERTED, ANOMALOUS, LABEL, LINES, add_lines, decide, mean_vector, new_entry, pad


def test_the_vector_is_the_mean_of_every_line_added_across_calls():
    entry = new_entry()
    assert mean_vector(entry) is None  # no line scored yet: no point
    add_lines(entry, [np.full(4, 1.0, np.float32), np.full(4, 3.0, np.float32)], ["r11"], label=2)
    add_lines(entry, [np.full(4, 5.0, np.float32)], [])
    assert entry[LINES] == 3 and entry[ANOMALOUS] == ["r11"] and entry[LABEL] == 2
    assert np.allclose(mean_vector(entry), 3.0) and mean_vector(entry).dtype == np.float32


def test_entries_of_older_state_get_the_fields_they_lack():
    old = pad([["E5"], "2008-11-09T20:35:18Z", "2008-11-09T20:35:18Z", 1_000])
    assert old[:5] == [["E5"], "2008-11-09T20:35:18Z", "2008-11-09T20:35:18Z", 1_000, None]
    assert old[5:] == [None, 0, [], False, 0]
    other = pad([["E5"], "", "", 1, None])
    other[ANOMALOUS].append("x")
    assert pad([["E5"], "", "", 1, None])[ANOMALOUS] == []  # no list shared between entries


def test_a_block_alerts_once_and_is_final_when_it_closes_anomalous():
    entry, alerted = new_entry(), {}
    assert decide("b", entry, anomalous=False, closed=False, alerted=alerted, clock_ms=1) == (False, False)
    assert decide("b", entry, anomalous=True, closed=False, alerted=alerted, clock_ms=2) == (True, False)
    assert entry[ALERTED] and not alerted
    assert decide("b", entry, anomalous=True, closed=False, alerted=alerted, clock_ms=3) == (False, False)
    assert decide("b", entry, anomalous=True, closed=True, alerted=alerted, clock_ms=4) == (False, True)
    assert alerted == {"b": 4}  # remembered after it closed: a reopened story starts as alerted
    first = new_entry()
    assert decide("c", first, anomalous=True, closed=True, alerted=alerted, clock_ms=5) == (True, True)


def test_closed_alerted_blocks_are_forgotten_after_the_retention():
    alerted = {"old": 0, "new": blocks.ALERTED_RETENTION_MS}
    blocks.prune_alerted(alerted, blocks.ALERTED_RETENTION_MS + 1)
    assert alerted == {"new": blocks.ALERTED_RETENTION_MS}
