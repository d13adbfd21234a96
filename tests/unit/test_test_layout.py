"""The suite's own layout: pytest imports test modules by basename (rootdir mode, no packages), so two test files
with one name in different folders stop the whole run at collection."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_two_test_files_share_a_name() -> None:
    names = Counter(path.name for path in TESTS.rglob("test_*.py"))
    assert not [name for name, count in names.items() if count > 1], "rename one of each: pytest collects by basename"
