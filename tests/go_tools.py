"""Go programs the tests run as third-party clients, built once per session with the Go toolchain (modules
from the Go module proxy; builds cached by Go, binaries under clients/go/bin and .cache/go/bin). A build
failure fails the test with its output; nothing is skipped."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_built: dict[str, Path] = {}


def _run(what: str, command: list[str], cwd: Path, binary: Path) -> Path:
    if what not in _built:
        env = {**os.environ, "GOFLAGS": "-mod=mod"}
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900, env=env)
        if done.returncode != 0 or not binary.exists():
            pytest.fail(f"building {what} failed (exit {done.returncode}):\n{(done.stdout + done.stderr)[-6000:]}",
                        pytrace=False)
        _built[what] = binary
    return _built[what]


def load_client() -> Path:
    """clients/go/bin/logmesh-load (grpc-go): load and reflection checks; clients/go/build.sh builds it."""
    return _run("logmesh-load", ["bash", "build.sh"], REPO / "clients/go", REPO / "clients/go/bin/logmesh-load")


def old_parser() -> Path:
    """.cache/go/bin/oldparse: jhump/protoreflect v1.6.1's protoparse, from before proto3 `optional`."""
    binary = REPO / ".cache/go/bin/oldparse"
    return _run("oldparse", ["go", "build", "-o", str(binary), "."], REPO / "tests/go/oldparse", binary)
