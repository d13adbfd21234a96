"""all-MiniLM-L6-v2 on ONNX Runtime: the embedder's run-time backend, no torch.

The folder comes from `make onnx` (embedder/onnx_export.py): model.onnx, tokenizer.json, meta.json. Tokenising
(`tokenizers`), mean pooling over the attention mask and L2 normalisation follow sentence-transformers'
Transformer -> Pooling(mean) -> Normalize for this model, so the vectors match it (cosine >= MIN_COSINE,
tests/integration/test_onnx_embedder.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import numpy as np

MIN_COSINE = 0.999  # against sentence-transformers; the export refuses to publish a model below it
ENV_DIR = "LOGMESH_ONNX_DIR"
_REPO = Path(__file__).resolve().parents[1]


def default_dir() -> Path:
    """$LOGMESH_ONNX_DIR, else .cache/onnx/all-MiniLM-L6-v2 in the checkout (where `make onnx` writes)."""
    return Path(os.environ.get(ENV_DIR) or _REPO / ".cache" / "onnx" / "all-MiniLM-L6-v2")


def exported(model_dir: Path) -> bool:
    """Whether `model_dir` holds a published export (the exporter writes the folder only once it checked it)."""
    return all((model_dir / name).is_file() for name in ("model.onnx", "tokenizer.json", "meta.json"))


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class OnnxEncoder:
    """encode(texts) -> float32 (n, 384), L2-normalised; one encode at a time (the session owns `threads` cores)."""

    backend = "onnxruntime"

    def __init__(self, model_dir: Path, threads: int = 1, batch_size: int = 32) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        model_dir = Path(model_dir)
        if not exported(model_dir):
            raise FileNotFoundError(f"no exported ONNX model in {model_dir}; run `make onnx` "
                                    f"(or python -m logmesh.embedder.onnx_export --out {model_dir})")
        meta = json.loads((model_dir / "meta.json").read_text())
        expected = meta.get("sha256", {}).get("model.onnx")
        if expected and sha256_of(model_dir / "model.onnx") != expected:
            raise RuntimeError(f"{model_dir / 'model.onnx'} does not match the sha256 in meta.json (a partial "
                               "copy?); run `make onnx` again")
        self.model_dir = model_dir
        self.dim = int(meta["dim"])
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        # tokenizer.json pads every input to 128 and truncates at 128; sentence-transformers pads to the
        # longest in the batch and truncates at max_seq_length (256): do as it does.
        self._tokenizer.enable_truncation(max_length=int(meta["max_seq_length"]))
        self._tokenizer.enable_padding(pad_id=int(meta["pad_id"]), pad_token=meta["pad_token"])
        options = ort.SessionOptions()
        # One thread per worker by default: on a shared 2-core box more threads collapse (FIELD-NOTES).
        options.intra_op_num_threads, options.inter_op_num_threads = max(1, threads), 1
        # onnxruntime lists AzureExecutionProvider first; this is a CPU model.
        self._session = ort.InferenceSession(str(model_dir / "model.onnx"), options,
                                             providers=["CPUExecutionProvider"])
        self._batch_size = batch_size
        self._lock = threading.Lock()

    def encode(self, texts: list[str]) -> np.ndarray:
        """L2-normalised float32 vectors, one row per text, in order."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        with self._lock:
            # Batches of similar length pad less (sentence-transformers sorts too); order is restored on write.
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
            for start in range(0, len(order), self._batch_size):
                rows = order[start:start + self._batch_size]
                out[rows] = self._encode_batch([texts[i] for i in rows])
        return out

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        types = np.array([e.type_ids for e in encodings], dtype=np.int64)
        (hidden,) = self._session.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask,
                                                              "token_type_ids": types})
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)
