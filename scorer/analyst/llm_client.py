"""One OpenAI-compatible chat-completions call (vLLM, llama.cpp's server, Ollama, TGI all speak it) over httpx,
with a total deadline per call. httpx rather than the openai SDK: it is already in the scorer's environment
(qdrant-client's), and one POST needs none of the SDK's machinery.

Every failure is an LLMError whose `kind` is a bounded label (metrics) and whose message says what happened.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import httpx


class LLMError(RuntimeError):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


@dataclass(frozen=True)
class ChatAnswer:
    content: str
    model: str
    completion_tokens: int
    seconds: float


class ChatClient:
    """Chat completions at `base_url` (e.g. http://127.0.0.1:8000/v1). `model` None: the first model the
    server lists at /models (asked once). `timeout`: seconds for the whole call, connect to last byte."""

    def __init__(self, base_url: str, model: str | None = None, token: str | None = None,
                 timeout: float = 30.0, max_tokens: int = 512) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout = timeout
        self.max_tokens = max_tokens
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        url = f"{self.base_url}{path}"
        try:
            with self._http.stream(method, url, json=body) as response:
                chunks = []
                for chunk in response.iter_bytes():  # a server trickling bytes still meets the deadline
                    chunks.append(chunk)
                    if time.monotonic() > deadline:
                        raise httpx.ReadTimeout("total deadline passed")
                data = b"".join(chunks)
        except httpx.TimeoutException:
            raise LLMError("timeout", f"LLM at {self.base_url} timed out after {self.timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise LLMError("unreachable", f"LLM at {self.base_url} unreachable: {exc}") from None
        if response.status_code >= 400:
            raise LLMError("http_error", f"LLM answered HTTP {response.status_code} at {path}: "
                                         f"{data[:200].decode('utf-8', 'replace')}")
        try:
            parsed = json.loads(data)
        except ValueError:
            raise LLMError("bad_response", f"LLM response at {path} is not JSON: {data[:80]!r}") from None
        if not isinstance(parsed, dict):
            raise LLMError("bad_response", f"LLM response at {path} is not a JSON object")
        return parsed

    def model_name(self) -> str:
        if self.model is None:
            listed = self._request("GET", "/models").get("data") or []
            if not listed or not isinstance(listed[0], dict) or not listed[0].get("id"):
                raise LLMError("bad_response", f"LLM at {self.base_url} lists no model at /models; pass --llm-model")
            self.model = str(listed[0]["id"])
        return self.model

    def chat_json(self, messages: list[dict[str, str]], schema: dict[str, Any] | None = None) -> ChatAnswer:
        """The model's answer to `messages`, asked for as a JSON object (response_format json_object, with
        `schema` as its "schema": servers that know the key constrain the answer to it)."""
        started = time.monotonic()
        model = self.model_name()
        body = {"model": model, "messages": messages, "temperature": 0, "max_tokens": self.max_tokens,
                "response_format": {"type": "json_object", **({"schema": schema} if schema else {})}}
        reply = self._request("POST", "/chat/completions", body)
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise LLMError("bad_response", "LLM response has no choices[0].message.content") from None
        if not isinstance(content, str):
            raise LLMError("bad_response", "LLM answer content is not text")
        usage = reply.get("usage") if isinstance(reply.get("usage"), dict) else {}
        return ChatAnswer(content=content, model=str(reply.get("model") or model),
                          completion_tokens=int(usage.get("completion_tokens") or 0),
                          seconds=time.monotonic() - started)
