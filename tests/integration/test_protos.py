"""`make breaking` bites: run the real Makefile target, with the real buf, in a scratch git repo holding a copy
of protos/ and buf.yaml committed on `main`, then change the protos in its working tree."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUF = REPO / ".cache/buf/node_modules/.bin/buf"
SCORE = Path("protos/logmesh/v1/score.proto")


@pytest.fixture(scope="module")
def buf() -> Path:
    if not BUF.exists():
        pytest.fail("buf is not installed: run `make tools`")
    return BUF


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=test@logmesh", "-c", "user.name=test", *args], cwd=cwd, check=True,
                   capture_output=True, timeout=60)


def _copy(dest: Path) -> Path:
    dest.mkdir()
    shutil.copytree(REPO / "protos", dest / "protos")
    shutil.copy(REPO / "buf.yaml", dest / "buf.yaml")
    return dest


@pytest.fixture()
def checkout(tmp_path: Path) -> Path:
    """A git repo whose `main` holds today's protos, checked out."""
    repo = _copy(tmp_path / "repo")
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "protos as on main")
    return repo


def make_breaking(cwd: Path, buf: Path) -> subprocess.CompletedProcess:
    """The repo's own `make breaking` target, run in `cwd` (BUF points at the installed buf)."""
    return subprocess.run(["make", "--no-print-directory", "-f", str(REPO / "Makefile"), "breaking", f"BUF={buf}"],
                          cwd=cwd, capture_output=True, text=True, timeout=120)


def _edit(repo: Path, old: str, new: str) -> None:
    path = repo / SCORE
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} not found once in {SCORE}; update this test to today's proto"
    path.write_text(text.replace(old, new))


def test_unchanged_protos_pass(checkout, buf):
    done = make_breaking(checkout, buf)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "--against '.git#branch=main'" in done.stdout


def test_removing_a_field_fails_and_names_it(checkout, buf):
    _edit(checkout, "  // Template id of the line (copied from the record, or assigned by the scorer).\n"
                    "  string template_id = 10;\n", "")
    done = make_breaking(checkout, buf)
    assert done.returncode != 0
    assert re.search(r'score\.proto:\d+:\d+:Previously present field "10" with name "template_id" on message '
                     r'"ScoreResult" was deleted', done.stdout), done.stdout + done.stderr
    assert "break compatibility with .git#branch=main" in done.stderr


def test_changing_a_field_type_fails_and_names_it(checkout, buf):
    _edit(checkout, "  string record_id = 1;\n  // The ensemble's verdict", "  int64 record_id = 1;\n  // The ensemble's verdict")
    done = make_breaking(checkout, buf)
    assert done.returncode != 0
    assert ('Field "1" with name "record_id" on message "ScoreResult" changed type from "string" to "int64"'
            in done.stdout), done.stdout + done.stderr


def test_adding_a_field_passes(checkout, buf):
    _edit(checkout, "  bool new_template = 16;\n",
          "  bool new_template = 16;\n  // A new field: additions are compatible.\n  string note = 99;\n")
    done = make_breaking(checkout, buf)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "buf breaking protos" in done.stdout  # buf ran; it was not skipped


def test_no_git_history_is_a_clear_failure(tmp_path, buf):
    bare = _copy(tmp_path / "no-git")
    done = make_breaking(bare, buf)
    assert done.returncode == 2
    assert "no git history here" in done.stderr and "BUF_AGAINST" in done.stderr
    assert "could not clone" not in done.stderr  # buf never ran into the missing .git


def test_a_missing_baseline_branch_is_a_clear_failure(checkout, buf):
    _git(checkout, "branch", "-m", "main", "feature")  # a clone of another branch, with no local main
    done = make_breaking(checkout, buf)
    assert done.returncode == 2
    assert "refs/heads/main is not in this clone" in done.stderr and "git fetch origin main:main" in done.stderr
