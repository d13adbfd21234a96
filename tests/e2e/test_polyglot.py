"""The Go, Java and Node.js clients (clients/<lang>/), each generated from protos/ by its own build, score the
same real HDFS lines over ScoreStream against a real scorer + embedder and must agree with the Python client.

SLOW STEPS: `test_client_builds` runs clients/<lang>/build.sh. Warm (already built) each takes well under a
second; cold it downloads Go modules, Maven artifacts (protoc, protoc-gen-grpc-java, grpc-java) and npm
packages, then compiles (about 25 s each here; see clients/README.md). A build failure is a test failure that
shows the build output, never a skip.
"""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLIENTS = REPO / "clients"
LANGS = ["go", "java", "node"]
VERDICTS = {1: "NORMAL", 2: "ANOMALY"}
BUILD_TIMEOUT = 900

pytestmark = pytest.mark.model


def _command(lang: str) -> list[str]:
    if lang == "go":
        return [str(CLIENTS / "go/bin/logmesh-score")]
    if lang == "java":
        return [shutil.which("java") or "java", "-jar", str(CLIENTS / "java/target/logmesh-client.jar")]
    return [shutil.which("node") or "node", str(CLIENTS / "node/dist/src/score.js")]


_builds: dict[str, tuple[int, str, float]] = {}


def _build(lang: str) -> tuple[int, str, float]:
    """Runs clients/<lang>/build.sh once per session: (exit status, output, seconds)."""
    if lang not in _builds:
        start = time.monotonic()
        try:
            proc = subprocess.run(["bash", str(CLIENTS / lang / "build.sh")], capture_output=True, text=True,
                                  timeout=BUILD_TIMEOUT)
            _builds[lang] = (proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start)
        except subprocess.TimeoutExpired as exc:
            out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            _builds[lang] = (124, f"{out}\nbuild.sh timed out after {BUILD_TIMEOUT}s", time.monotonic() - start)
    return _builds[lang]


def _require_built(lang: str) -> None:
    code, output, seconds = _build(lang)
    if code != 0:
        pytest.fail(f"clients/{lang}/build.sh failed (exit {code}, {seconds:.0f}s):\n{output[-8000:]}",
                    pytrace=False)


@pytest.fixture(scope="module")
def lines(data_dir) -> list[str]:
    """The first 50 real lines, with an empty line in the middle to exercise a per-item error."""
    with open(data_dir / "HDFS_5k.log", encoding="utf-8") as f:
        head = [next(f).rstrip("\n") for _ in range(50)]
    return head[:25] + [""] + head[25:]


@pytest.fixture(scope="module")
def expected(scorer_server, lines) -> list[tuple[str, float | None, str, str]]:
    """The Python client's answers: (verdict, score or None, error message, record id) per line."""
    from logmesh.client import ScorerClient
    rows = []
    with ScorerClient(scorer_server.address) as client:
        for item in client.score_lines(lines, batch_size=256):
            if item.HasField("result"):
                rows.append((VERDICTS.get(item.result.verdict, "UNSPECIFIED"), item.result.score, "",
                             item.record_id))
            else:
                rows.append(("ERROR", None, item.error.message, item.record_id))
    assert len(rows) == len(lines)
    assert [r[0] for r in rows].count("ERROR") == 1, rows
    return rows


def _parse(line: str, want: tuple[str, float | None, str, str]) -> tuple[str, float | None, str, str]:
    verdict, _, rest = line.partition(" ")
    if verdict == "ERROR":  # "ERROR <message> <record_id>", the message may hold spaces, the id may be empty
        message, record_id = (rest[: -len(want[3]) - 1], want[3]) if want[3] and rest.endswith(" " + want[3]) \
            else (rest.rstrip(" "), "")
        return verdict, None, message, record_id
    score, _, record_id = rest.partition(" ")
    return verdict, float(score), "", record_id


@pytest.mark.parametrize("lang", LANGS)
def test_client_builds(lang):
    """SLOW when cold: builds clients/<lang> with its build.sh (generation from protos/ included)."""
    _require_built(lang)
    assert Path(_command(lang)[-1]).exists()


@pytest.mark.parametrize("lang", LANGS)
def test_client_matches_python_client(lang, scorer_server, lines, expected):
    _require_built(lang)
    proc = subprocess.run(_command(lang) + ["--scorer", scorer_server.address], input="\n".join(lines) + "\n",
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{lang} client exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    out = proc.stdout.splitlines()
    assert len(out) == len(lines), f"{lang}: {len(out)} output lines for {len(lines)} input lines:\n{proc.stdout}"
    for i, (got_line, want) in enumerate(zip(out, expected)):
        got = _parse(got_line, want)
        where = f"{lang} line {i}: got {got_line!r}, want {want}"
        assert got[0] == want[0], where
        assert got[3] == want[3], where
        if want[1] is None:
            assert got[2] == want[2], where
        else:
            assert got[1] == pytest.approx(want[1], abs=1e-4), where
