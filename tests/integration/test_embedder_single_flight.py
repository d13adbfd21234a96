"""Concurrent calls that miss the same new shapes together send each shape to the real model once."""
from __future__ import annotations

import threading

import numpy as np

from logmesh.embedder.cache import EmbeddingCache
from logmesh.embedder.engine import CachedEmbedder

CALLS = 8


def test_shapes_missed_by_concurrent_calls_are_encoded_once(encoder):
    engine = CachedEmbedder(encoder, EmbeddingCache())
    # 40 distinct shapes (masking keeps words, so each line's words differ); every call asks for all of them
    lines = [f"ciod: node {chr(97 + i // 26)}{chr(97 + i % 26)} unit failed to answer" for i in range(40)]
    start = threading.Barrier(CALLS)
    results: list[list[bytes]] = [[] for _ in range(CALLS)]

    def call(k: int) -> None:
        start.wait()
        results[k] = engine.embed(lines)

    threads = [threading.Thread(target=call, args=(k,)) for k in range(CALLS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(len(r) == len(lines) for r in results)
    assert all(r == results[0] for r in results)  # every call got the same vectors
    assert engine.encoded == len(lines)  # once per shape, not once per call
    reference = np.frombuffer(results[0][3], dtype="<f4")
    assert np.allclose(reference, encoder.encode([lines[3]])[0], atol=1e-5)


def test_a_failed_encode_fails_its_waiters_and_leaves_nothing_in_flight(encoder):
    class Failing:
        dim = encoder.dim
        entered = threading.Event()
        release = threading.Event()

        def encode(self, texts):  # type: ignore[no-untyped-def]  # a fault we cannot cause in the real model
            self.entered.set()
            self.release.wait(30)
            raise RuntimeError("model failed")

    class Watched(EmbeddingCache):  # tells when a call has looked at what is in flight (under its lock)
        looks = threading.Semaphore(0)

        def peek_many(self, keys):  # type: ignore[no-untyped-def]
            self.looks.release()
            return super().peek_many(keys)

    failing, cache = Failing(), Watched()
    engine = CachedEmbedder(failing, cache)
    errors: list[str] = []

    def call() -> None:
        try:
            engine.embed(["the same new line"])
        except RuntimeError as exc:
            errors.append(str(exc))

    owner = threading.Thread(target=call)
    owner.start()
    assert failing.entered.wait(30) and cache.looks.acquire(timeout=30)
    waiter = threading.Thread(target=call)
    waiter.start()
    assert cache.looks.acquire(timeout=30)  # the waiter found the shape in flight and waits on the owner's encode
    assert engine.encoded == 0
    failing.release.set()
    owner.join(30)
    waiter.join(30)
    assert errors == ["model failed", "model failed"]
    assert engine._in_flight == {}
    engine.encoder = encoder  # the model is back: the shape is encoded now, not stuck behind the failure
    assert len(engine.embed(["the same new line"])[0]) == encoder.dim * 4
