"""bench/bgl_inner.py, the BGL inner validation: it reads only the training part (the lines at or before the cut
`logmesh train --format bgl` makes), and its rolling slices do not overlap, so their counts add up."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: bench/ is not installed
from bench import bgl_inner  # noqa: E402
from logmesh.scorer import bgl  # noqa: E402

T0 = 1117838583


def write_log(path: Path, lines: int) -> None:
    rows = []
    for i in range(lines):
        t = T0 + 3600 * i
        label = "KERNDTLB" if i % 7 == 0 else "-"
        message = "data TLB error interrupt" if label != "-" else f"generating core.{i}"
        level = "FATAL" if label != "-" else "INFO"
        rows.append(f"{label} {t} 2005.06.03 R02-M1-N0-C:J12-U11 2005-06-03-15.43.03.623873 R02-M1-N0-C:J12-U11 "
                    f"RAS KERNEL {level} {message}")
    path.write_text("\n".join(rows) + "\n")


def test_the_training_part_holds_no_line_after_the_cut_and_the_slices_tile_it(tmp_path):
    write_log(tmp_path / "BGL_a.log", 100)
    samples = bgl.read_samples([tmp_path / "BGL_a.log"], None)
    train, cut = bgl_inner.training_part(samples)
    assert cut == bgl.split_time(samples)  # the cut train_bgl makes
    times = np.concatenate([s.times for s in train])
    assert len(times) == int((samples[0].times <= cut).sum()) == 80 and times.max() <= cut
    cuts = bgl_inner.slices(train, cut, (0.5, 0.75), 10)
    assert [len(s.judged.shapes) for s in cuts] == [20, 20]  # 40 .. 60, 60 .. 80: no line judged twice
    assert len(cuts[0].fit.shapes) == 40 and cuts[-1].end == cut


def test_pooled_counts_are_the_sum_of_the_slices():
    a = {"line": {"tp": 3, "fp": 1, "fn": 0, "tn": 96}, "window": {"tp": 1, "fp": 0, "fn": 0, "tn": 0}}
    b = {"line": {"tp": 1, "fp": 0, "fn": 1, "tn": 98}, "window": {"tp": 1, "fp": 0, "fn": 1, "tn": 0}}
    p = bgl_inner.pooled([a, b])["line"]
    assert (p["tp"], p["fp"], p["fn"], p["tn"]) == (4, 1, 1, 194)
    assert p["f1"] == 2 * 4 / (2 * 4 + 2) and p["fpr"] == 1 / 195
