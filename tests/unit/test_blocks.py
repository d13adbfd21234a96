"""A block point's mean vector and what it has counted, merged idempotently across micro-batches."""
from __future__ import annotations

import numpy as np

from logmesh.streaming.blocks import BlockLine, merge


def _line(offset: int, value: float, partition: int = 2, anomalous: bool = False) -> BlockLine:
    return BlockLine(f"logmesh.logs/{partition}/{offset}", offset, np.full(4, value, np.float32), f"r{offset}", anomalous)


def test_a_replayed_batch_changes_nothing_and_the_vector_stays_the_mean():
    payload, vector = merge(None, None, [_line(10, 1.0), _line(11, 3.0, anomalous=True)])
    assert payload["lines"] == 2 and payload["counted"] == {"logmesh.logs/2": 11}
    assert payload["anomalous_record_ids"] == ["r11"] and np.allclose(vector, 2.0)
    again = merge(payload, vector, [_line(10, 1.0), _line(11, 3.0, anomalous=True)])  # the same batch, replayed
    assert again[0] == payload and np.allclose(again[1], vector)
    later, vector = merge(payload, vector, [_line(11, 3.0), _line(40, 5.0)])  # a later batch overlapping it
    assert later["lines"] == 3 and later["counted"] == {"logmesh.logs/2": 40} and np.allclose(vector, 3.0)


def test_points_in_the_earlier_form_are_read_and_rewritten_compactly():
    """Points written before `counted` listed every counted line in `offsets`."""
    old = {"offsets": ["logmesh.logs/2/10", "logmesh.logs/2/11"], "lines": 2, "anomalous_record_ids": []}
    payload, vector = merge(old, np.full(4, 2.0, np.float32), [_line(11, 9.0), _line(12, 5.0)])
    assert "offsets" not in payload and payload["counted"] == {"logmesh.logs/2": 12}
    assert payload["lines"] == 3 and np.allclose(vector, 3.0)  # line 11 was counted already
