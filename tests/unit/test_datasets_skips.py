"""tests/conftest.py on a clean machine (no LOGMESH_DATA, no ../shared/data): a test that needs the real samples
is skipped with the reason and named in one summary line; any other failure stays a failure. Run with pytester in
a temporary tree holding a copy of the conftest, where ../shared/data does not exist."""
from __future__ import annotations

import shutil
from pathlib import Path

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"

TESTS = '''
from pathlib import Path
import pytest

SHARED = Path(__file__).resolve().parents[3] / "shared/data"

def test_reads_a_hdfs_sample():
    assert open(SHARED / "hdfs" / "HDFS_5k.log").readline()

def test_checks_a_bgl_sample():
    if not (SHARED / "bgl" / "BGL_2k.log").exists():
        pytest.fail(f"real BGL data not found at {SHARED / 'bgl'}")

def test_uses_the_data_dir_fixture(data_dir):
    assert (data_dir / "anomaly_label.csv").exists()

def test_needs_no_data(tmp_path):
    (tmp_path / "x").write_text("x")
    assert (tmp_path / "x").read_text() == "x"

def test_fails_for_another_reason(tmp_path):
    open(tmp_path / "missing.txt")
'''


def _tree(pytester) -> None:
    tests = pytester.path / "tests"
    (tests / "unit").mkdir(parents=True)
    shutil.copy(CONFTEST, tests / "conftest.py")
    (tests / "unit" / "test_sample.py").write_text(TESTS)
    pytester.makeini("[pytest]\nmarkers =\n    unit\n    integration\n    e2e\n")
    assert not (pytester.path.parent / "shared").exists()


def test_real_data_tests_are_skipped_and_listed_other_failures_stay(pytester, monkeypatch):
    monkeypatch.delenv("LOGMESH_DATA", raising=False)
    monkeypatch.delenv("LOGMESH_BGL_DATA", raising=False)
    _tree(pytester)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-ra", "tests")
    result.assert_outcomes(passed=1, skipped=3, failed=1)
    out = result.stdout.str()
    summary = [line for line in out.splitlines() if line.startswith("real data not on this machine (")]
    assert len(summary) == 1 and "3 tests skipped: tests/unit/test_sample.py (3)" in summary[0], out
    assert "test_fails_for_another_reason" in out and "FAILED" in out


def test_a_wrong_logmesh_data_fails_instead_of_skipping(pytester, monkeypatch, tmp_path):
    monkeypatch.setenv("LOGMESH_DATA", str(tmp_path / "nowhere"))
    monkeypatch.delenv("LOGMESH_BGL_DATA", raising=False)
    _tree(pytester)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "tests", "-k", "data_dir_fixture")
    result.assert_outcomes(errors=1)
    assert "set LOGMESH_DATA to a loghub HDFS_v1 folder" in result.stdout.str()
