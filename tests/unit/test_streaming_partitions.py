"""--shuffle-partitions: the state partitions (and as many state buckets) of a new checkpoint, fixed at its first
start like the block clock; an existing checkpoint keeps its own, and asking it for another is a clear error."""
from __future__ import annotations

import argparse

import pytest

from logmesh.streaming.block_sessions import _murmur3_int
from logmesh.streaming.job import bucket_keys
from logmesh.streaming.options import SHUFFLE_PARTITIONS, add_args, config_from_args, shuffle_partitions


def test_a_new_checkpoint_records_what_it_was_started_with(tmp_path):
    assert shuffle_partitions(tmp_path / "a", 6) == 6
    assert shuffle_partitions(tmp_path / "a") == 6  # later starts without the option keep it
    assert shuffle_partitions(tmp_path / "b") == SHUFFLE_PARTITIONS == 2
    assert (tmp_path / "b" / "shuffle-partitions").read_text().strip() == "2"
    assert shuffle_partitions(tmp_path / "c", 3, record=False) == 3 and not (tmp_path / "c").exists()


def test_an_existing_checkpoint_refuses_another_count(tmp_path):
    shuffle_partitions(tmp_path / "a", 6)
    with pytest.raises(ValueError, match="keeps its state in 6 shuffle partitions.*new --checkpoint"):
        shuffle_partitions(tmp_path / "a", 4)
    (tmp_path / "older" / "spark").mkdir(parents=True)  # started before the count was recorded: Spark froze 2
    assert shuffle_partitions(tmp_path / "older") == 2
    with pytest.raises(ValueError, match="keeps its state in 2"):
        shuffle_partitions(tmp_path / "older", 8)


def test_one_state_bucket_per_partition_each_in_its_own(tmp_path):
    keys = bucket_keys(tmp_path / "six", "single-pass", partitions=6)
    assert len(keys) == 6
    assert sorted(_murmur3_int(k) % 6 for k in keys) == list(range(6))  # every task gets a bucket
    assert len(bucket_keys(tmp_path / "one", "single-pass", partitions=1)) == 2  # never fewer than 2 buckets


def _parse(*argv: str):  # type: ignore[no-untyped-def]
    p = argparse.ArgumentParser()
    add_args(p)
    return config_from_args(p.parse_args(list(argv)))


def test_the_option_is_checked_before_spark_starts(tmp_path, capsys):
    assert _parse("--checkpoint", str(tmp_path / "n"), "--shuffle-partitions", "4").shuffle_partitions == 4
    assert not (tmp_path / "n").exists()  # parsing records nothing
    with pytest.raises(SystemExit) as exit_:
        _parse("--checkpoint", str(tmp_path / "n"), "--shuffle-partitions", "0")
    assert exit_.value.code == 2 and "--shuffle-partitions must be at least 1" in capsys.readouterr().err
    shuffle_partitions(tmp_path / "kept", 3)
    with pytest.raises(SystemExit):
        _parse("--checkpoint", str(tmp_path / "kept"), "--shuffle-partitions", "5")
    assert "cannot switch to --shuffle-partitions 5" in capsys.readouterr().err
