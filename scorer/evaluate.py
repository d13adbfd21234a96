"""`logmesh evaluate`: block-level precision, recall, F1 and false-positive rate of a model artifact
on a labelled raw HDFS log, for the block model, each line member, the line ensemble and a combined
verdict.

The log is streamed (one event list per labelled block, never the file). Verdicts:
- block model: the block's event sequence judged as closed, except blocks "open at the cut" (their
  last line lies within `open_tail` lines of the end of the log: the file ends mid-session), which
  are judged as open prefixes, as a stream would judge them at that moment;
- line member / line ensemble, lifted to blocks: a block is anomalous if any of its lines is flagged;
- combined: the block model's verdict (the line models only point at lines; see docs/evaluation.md).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from logmesh.scorer.dataset import OPEN_TAIL

# numpy, sklearn and joblib load inside evaluate(), so that building the CLI parser stays cheap


def _encoder_embed():
    from logmesh.embedder.encoder import SentenceEncoder
    encoder = SentenceEncoder(threads=1)
    return encoder.encode


def evaluate(model_dir, logs, labels, open_tail: int = OPEN_TAIL, embed=None, from_line: int = 0,
             until_line: int = 0) -> dict:
    """Metrics of the newest artifact in `model_dir` on the raw log(s) `logs` with block labels
    `labels` (anomaly_label.csv). `embed` (texts -> vectors) defaults to an in-process MiniLM.
    `from_line` > 0: a chronological hold-out inside one log: only blocks whose first line comes after
    line `from_line` (counted over all the logs read) are judged; earlier blocks are skipped whole.
    `until_line` > 0: blocks first seen after it are skipped too, so the judged blocks have the rest of
    the log to finish their life cycle (deletes come minutes to hours after a write)."""
    import numpy as np

    from logmesh.scorer import artifacts
    from logmesh.scorer.block_model import THRESHOLD as BLOCK_THRESHOLD
    from logmesh.scorer.dataset import iter_fast, read_block_labels
    from logmesh.scorer.ensemble import THRESHOLD as LINE_THRESHOLD
    from logmesh.scorer.metrics import binary_metrics
    from logmesh.ingest.reader import ReadStats, expand_paths
    from logmesh.scorer.train import file_digest

    model_dir = Path(model_dir)
    version = artifacts.newest(model_dir)
    if version is None:
        raise artifacts.ArtifactError(f"no model artifact in {model_dir}; make one with `logmesh train`")
    artifact = artifacts.load(model_dir, version)
    ensemble, block_model = artifact.models["line"], artifact.models["block"]
    drain = artifact.models.get("drain")
    truth_by_block = read_block_labels(Path(labels))
    names = list(ensemble.names)

    shape_ids: dict[str, int] = {}
    shape_flags: list[int] = []  # per distinct shape: bit i = member i flags it, bit len(names) = ensemble
    pending: list[str] = []
    sessions: dict[str, list[str]] = {}
    last_line: dict[str, int] = {}
    flags: dict[str, int] = {}
    stats = ReadStats()
    unlabelled_lines = 0
    position = 0
    skipped: set[str] = set()

    def judge_pending() -> None:
        nonlocal embed
        if not pending:
            return
        if embed is None:
            embed = _encoder_embed()
        p = ensemble.probabilities(pending, np.asarray(embed(pending), np.float32))
        votes = p >= LINE_THRESHOLD
        for row in votes:
            bits = sum(1 << i for i, v in enumerate(row) if v)
            if row.sum() * 2 > len(row):
                bits |= 1 << len(names)
            shape_flags.append(bits)
        pending.clear()

    line_shapes: dict[str, list[int]] = {}  # block -> distinct shape ids (resolved after embedding)
    records = (r for path in expand_paths(logs) for r in iter_fast(path, stats))
    for record in records:
        position += 1
        labelled = [b for b in record.block_ids if b in truth_by_block and b not in skipped]
        if (from_line and position <= from_line) or (until_line and position > until_line):
            skipped.update(b for b in labelled if b not in sessions)
            labelled = [b for b in labelled if b in sessions]
        if not labelled:
            unlabelled_lines += 1
            continue
        event = drain.event(record) if drain is not None else record.template_id
        shape = record.shape
        sid = shape_ids.get(shape)
        if sid is None:
            sid = shape_ids[shape] = len(shape_ids)
            pending.append(shape)
            if len(pending) >= 64:
                judge_pending()
        for block in labelled:
            sessions.setdefault(block, []).append(sys.intern(event))
            last_line[block] = position
            ids = line_shapes.setdefault(block, [])
            if sid not in ids:
                ids.append(sid)
    judge_pending()
    for block, ids in line_shapes.items():
        bits = 0
        for sid in ids:
            bits |= shape_flags[sid]
        flags[block] = bits

    blocks = list(sessions)
    truth = np.asarray([truth_by_block[b] for b in blocks], bool)
    closed = np.asarray([last_line[b] <= position - open_tail for b in blocks], bool)
    p = np.zeros(len(blocks), np.float32)
    for lo in range(0, len(blocks), 50_000):
        chunk = blocks[lo:lo + 50_000]
        p[lo:lo + len(chunk)] = block_model.probabilities([sessions[b] for b in chunk], closed[lo:lo + len(chunk)].tolist())
    block_pred = p >= BLOCK_THRESHOLD
    bits = np.asarray([flags[b] for b in blocks], np.int64)

    def section(pred, mask=None) -> dict:
        t, q = (truth, pred) if mask is None else (truth[mask], pred[mask])
        m = binary_metrics(t, q)
        m.update(blocks=int(len(t)), anomalies=int(t.sum()),
                 confusion={"labels": ["normal", "anomaly"], "matrix": [[m["tn"], m["fp"]], [m["fn"], m["tp"]]]})
        return m

    lines_lifted = {name: section((bits >> i) & 1 == 1) for i, name in enumerate(names)}
    lines_lifted["ensemble"] = section((bits >> len(names)) & 1 == 1)
    digests = {}
    overlap = []
    trained_on = artifact.meta.get("data", {}).get("files", {})
    for path in expand_paths(logs):
        if str(path) != "-":
            digests[Path(path).name] = d = file_digest(Path(path))
            overlap += [name for name, digest in trained_on.items() if digest == d]
    result = {
        "model": {"version": version, "dir": str(model_dir),
                  "trained_on": artifact.meta.get("data", {}).get("dir"),
                  "fingerprint": artifact.meta.get("data", {}).get("fingerprint")},
        "logs": {"paths": [str(p) for p in expand_paths(logs)], "lines": stats.lines,
                 "lines_without_labelled_block": unlabelled_lines, "sha256": digests},
        "overlaps_training_data": bool(overlap),
        "overlap_files": overlap,
        "from_line": from_line, "until_line": until_line, "skipped_blocks": len(skipped),
        "truncation": {"open_tail_lines": open_tail, "open_at_cut_blocks": int((~closed).sum()),
                       "open_at_cut_anomalies": int(truth[~closed].sum()),
                       "rule": f"blocks whose last line is within {open_tail} lines of the end of the log are "
                               "judged as open prefixes (closed=False); all others as closed"},
        "block": section(block_pred),
        "block_closed_only": section(block_pred, closed),
        "block_open_at_cut": section(block_pred, ~closed),
        "lines_lifted": lines_lifted,
        "combined": {**section(block_pred), "rule": "the block model's verdict"},
    }
    if overlap:
        result["warning"] = (f"the log overlaps the model's training data ({', '.join(overlap)}): these figures are "
                             f"in-sample; see the artifact's chronological held-out metrics in meta.json")
        result["held_out_block_metrics"] = artifact.meta.get("metrics", {}).get("block")
    return result


def add_evaluate_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--model-dir", default="models", help="folder of model artifacts; the newest is used")
    p.add_argument("--logs", required=True, help="raw HDFS log file or folder (streamed)")
    p.add_argument("--labels", required=True, help="anomaly_label.csv (BlockId,Label)")
    p.add_argument("--open-tail", type=int, default=OPEN_TAIL,
                   help="blocks whose last line is within this many lines of the end are judged as open "
                        "prefixes (default %(default)s; 0 judges every block as closed)")
    p.add_argument("--from-line", type=int, default=0,
                   help="chronological hold-out: judge only blocks first seen after this line (e.g. the line "
                        "where the model's training data ended); earlier blocks are skipped")
    p.add_argument("--until-line", type=int, default=0,
                   help="judge only blocks first seen up to this line, so that they can finish in the rest of the log")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _row(name: str, m: dict) -> str:
    return (f"{name:<24} {m['precision']:>9.4f} {m['recall']:>7.4f} {m['f1']:>7.4f} {m['fpr'] * 100:>8.3f}% "
            f"{m['tp']:>6} {m['fp']:>6} {m['fn']:>6} {m['tn']:>7}")


def format_table(r: dict) -> str:
    out = [f"model {r['model']['version']}   logs {', '.join(r['logs']['paths'])}   "
           f"{r['block']['blocks']} blocks, {r['block']['anomalies']} anomalous"]
    if r["overlaps_training_data"]:
        out.append("WARNING: " + r["warning"])
    t = r["truncation"]
    out.append(f"truncation: {t['open_at_cut_blocks']} blocks open at the cut ({t['open_at_cut_anomalies']} anomalous), "
               f"judged as open prefixes")
    out.append(f"{'model (block level)':<24} {'precision':>9} {'recall':>7} {'f1':>7} {'fpr':>9} "
               f"{'tp':>6} {'fp':>6} {'fn':>6} {'tn':>7}")
    out.append(_row("block model", r["block"]))
    out.append(_row("  closed blocks only", r["block_closed_only"]))
    out.append(_row("  open at the cut", r["block_open_at_cut"]))
    for name, m in r["lines_lifted"].items():
        out.append(_row(f"lines: {name}", m))
    out.append(_row("combined", r["combined"]))
    c = r["block"]["confusion"]["matrix"]
    out.append(f"block model confusion (rows truth, cols predicted; normal, anomaly): {c}")
    return "\n".join(out)


def run_evaluate(args: argparse.Namespace) -> int:
    from logmesh.scorer import artifacts
    try:
        result = evaluate(args.model_dir, args.logs, args.labels, open_tail=args.open_tail,
                          from_line=args.from_line, until_line=args.until_line)
    except (artifacts.ArtifactError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result) if args.json else format_table(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_evaluate(add_evaluate_args(argparse.ArgumentParser(prog="logmesh evaluate")).parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
