"""The torch-free embedder: all-MiniLM-L6-v2 exported to ONNX here and run on ONNX Runtime, against
sentence-transformers on real HDFS lines; how the encoder picks its backend."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from logmesh.embedder.encoder import SentenceEncoder
from logmesh.embedder.onnx_model import MIN_COSINE, OnnxEncoder
from logmesh.ingest.masking import mask

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory) -> Path:
    """A fresh export (what `make onnx` runs), so the test covers the exporter and not a stale .cache."""
    from logmesh.embedder.onnx_export import export
    out = tmp_path_factory.mktemp("onnx") / "all-MiniLM-L6-v2"
    meta = export(out)
    assert meta["check"]["cosine_min"] >= MIN_COSINE
    return out


@pytest.fixture(scope="module")
def hdfs_lines(data_dir) -> list[str]:
    """240 raw lines spread over HDFS_20000.log, their masked shapes (what the service encodes), and one
    line longer than the model's 256 tokens."""
    lines = (data_dir / "HDFS_20000.log").read_text().splitlines()
    raw = lines[::len(lines) // 240][:240]
    shapes = sorted({mask(line) for line in lines[:5000]})
    return raw + shapes + [" ".join(raw[:12])]


@pytest.fixture(scope="module")
def reference(hdfs_lines) -> np.ndarray:
    return SentenceEncoder(threads=2, backend="sentence-transformers").encode(hdfs_lines)


def test_onnx_matches_sentence_transformers_on_real_hdfs_lines(onnx_dir, hdfs_lines, reference):
    vectors = OnnxEncoder(onnx_dir, threads=2).encode(hdfs_lines)
    assert vectors.shape == (len(hdfs_lines), 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosine = (vectors * reference).sum(axis=1)
    worst = int(cosine.argmin())
    assert cosine.min() >= MIN_COSINE, f"cosine {cosine.min():.5f} on {hdfs_lines[worst][:120]!r}"


def test_vectors_do_not_depend_on_batching_or_order(onnx_dir, hdfs_lines):
    encoder = OnnxEncoder(onnx_dir, threads=1, batch_size=7)
    some = hdfs_lines[:20] + hdfs_lines[-3:]  # mixed lengths, so batches pad differently
    together = encoder.encode(some)
    alone = np.vstack([encoder.encode([t]) for t in some])
    reversed_ = encoder.encode(some[::-1])[::-1]
    assert np.allclose(together, alone, atol=1e-5) and np.allclose(together, reversed_, atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)


def test_encoder_picks_onnx_when_exported_else_sentence_transformers(onnx_dir, tmp_path):
    onnx = SentenceEncoder(threads=1, onnx_dir=onnx_dir)
    assert onnx.backend == "onnxruntime" and onnx.dim == 384
    fallback = SentenceEncoder(threads=1, onnx_dir=tmp_path / "none")
    assert fallback.backend == "sentence-transformers"
    a, b = onnx.encode(["Verification succeeded for <*>"]), fallback.encode(["Verification succeeded for <*>"])
    assert float((a * b).sum()) >= MIN_COSINE


def test_missing_or_damaged_export_says_what_to_do(onnx_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="make onnx"):
        SentenceEncoder(backend="onnx", onnx_dir=tmp_path / "none")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in ("tokenizer.json", "meta.json"):
        shutil.copy2(onnx_dir / name, damaged / name)
    (damaged / "model.onnx").write_bytes((onnx_dir / "model.onnx").read_bytes()[:1_000_000])  # a cut copy
    with pytest.raises(RuntimeError, match="sha256.*make onnx"):
        SentenceEncoder(onnx_dir=damaged)
    with pytest.raises(ValueError, match="LOGMESH_EMBEDDER_BACKEND"):
        SentenceEncoder(backend="torch")
    assert json.loads((onnx_dir / "meta.json").read_text())["max_seq_length"] == 256


def test_serving_with_onnx_imports_no_torch(onnx_dir):
    """The run-time path loads neither torch nor sentence-transformers (the embedder image has neither)."""
    code = ("import sys; from logmesh.embedder.encoder import SentenceEncoder; e = SentenceEncoder(); "
            "v = e.encode(['PacketResponder <*> for block <*> terminating']); "
            "heavy = sorted(m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules); "
            "print(e.backend, v.shape, heavy)")
    env = {**os.environ, "LOGMESH_ONNX_DIR": str(onnx_dir)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "onnxruntime (1, 384) []"
