"""`logmesh evaluate`: how the newest artifact does on a labelled raw HDFS log it may never have seen.

The log is streamed (one event list per labelled block, never the file). For each block:
- whether it has ended is decided as in training (scorer/completeness.py, `--sessions`): a cut log's
  blocks are open prefixes until they have been quiet longer than a normal session pauses in their
  state; a file of complete sessions is judged whole. The output says which rule applied to how many;
- the session model's verdict, with its kind (evidence event, missing step, failure pattern) and the
  baselines stored in the artifact (`--baselines`: a decision tree and a logistic regression on event
  counts, fitted on the same training data) scored beside it;
- the line members and the line ensemble, lifted to blocks (a block is flagged if any of its lines
  is), and how often the line the ensemble flags is one that carries the block's evidence.
Rates come with exact 95% intervals and F1 is also quoted at HDFS_v1's 2.93% anomaly prevalence.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from logmesh.scorer.completeness import MODES, QUIET_SECONDS
from logmesh.scorer.dataset import OPEN_TAIL
from logmesh.scorer.failure_text import failure_event

# numpy, sklearn and joblib load inside evaluate(), so that building the CLI parser stays cheap


def _encoder_embed():
    from logmesh.embedder.encoder import SentenceEncoder
    encoder = SentenceEncoder(threads=1)
    return encoder.encode


class _Reader:
    """Streams the log into block sessions and the distinct line shapes of each block."""

    def __init__(self, truth_by_block: dict[str, int], from_line: int, until_line: int) -> None:
        self.truth = truth_by_block
        self.from_line, self.until_line = from_line, until_line
        self.sessions: dict[str, list[str]] = {}
        self.last_line: dict[str, int] = {}
        self.last_time: dict[str, float | None] = {}
        self.block_shapes: dict[str, dict[int, str]] = {}  # block -> shape id -> its template
        self.shape_ids: dict[str, int] = {}
        self.shapes: list[str] = []
        self.skipped: set[str] = set()
        self.unlabelled_lines = 0
        self.position = 0
        self.end_time: float | None = None

    def add(self, record) -> None:
        self.position += 1
        if record.time is not None:
            self.end_time = record.time
        labelled = [b for b in record.block_ids if b in self.truth and b not in self.skipped]
        if (self.from_line and self.position <= self.from_line) or (self.until_line and self.position > self.until_line):
            self.skipped.update(b for b in labelled if b not in self.sessions)
            labelled = [b for b in labelled if b in self.sessions]
        if not labelled:
            self.unlabelled_lines += 1
            return
        sid = self.shape_ids.get(record.shape)
        if sid is None:
            sid = self.shape_ids[record.shape] = len(self.shapes)
            self.shapes.append(record.shape)
        event = sys.intern(record.template_id)
        for block in labelled:
            self.sessions.setdefault(block, []).append(event)
            self.last_line[block] = self.position
            self.last_time[block] = record.time
            self.block_shapes.setdefault(block, {})[sid] = record.template_id


def evaluate(model_dir, logs, labels, open_tail: int = OPEN_TAIL, embed=None, from_line: int = 0,
             until_line: int = 0, sessions: str = "auto", quiet_seconds: float = QUIET_SECONDS,
             baselines: bool = True, kinds=None, plot_dir=None) -> dict:
    """Metrics of the newest artifact in `model_dir` on the raw log(s) `logs` with block labels
    `labels` (anomaly_label.csv). `embed` (texts -> vectors) defaults to an in-process MiniLM.
    `from_line` > 0 judges only blocks first seen after that line (a chronological hold-out inside one
    log); `until_line` > 0 skips blocks first seen after it, so judged blocks can finish their life.
    `kinds` (a BlockId,Kind CSV, as `logmesh generate` writes) adds the recall on each failure kind.
    `plot_dir` writes the pictures of scorer/plots.py there (logmesh and the baselines, the same blocks)."""
    import numpy as np

    from logmesh.ingest.reader import ReadStats, expand_paths
    from logmesh.scorer import artifacts, completeness
    from logmesh.ingest.labels import read_block_labels
    from logmesh.scorer.dataset import iter_fast
    from logmesh.scorer.ensemble import THRESHOLD as LINE_THRESHOLD, majority
    from logmesh.scorer.new_templates import NewTemplates
    from logmesh.scorer.session_model import SessionModel
    from logmesh.scorer.train import file_digest
    from logmesh.scorer.validation import summarize

    model_dir = Path(model_dir)
    version = artifacts.newest(model_dir)
    if version is None:
        raise artifacts.ArtifactError(f"no model artifact in {model_dir}; make one with `logmesh train`")
    artifact = artifacts.load(model_dir, version)
    ensemble, model = artifact.models["line"], artifact.models["block"]
    if artifact.meta.get("family") == "hdfs-normal":
        raise artifacts.ArtifactError(f"artifact {version} was learnt from the vector store without labels "
                                      "(train --from-store): its held-out figures are in its meta.json (held_out); "
                                      "evaluate judges supervised artifacts: give --model-dir of one")
    if not isinstance(model, SessionModel):
        raise artifacts.ArtifactError(f"artifact {version} was made by an older logmesh (no session model); "
                                      f"retrain with `logmesh train --out {model_dir}`")
    truth_by_block = read_block_labels(Path(labels))
    stats = ReadStats()
    reader = _Reader(truth_by_block, from_line, until_line)
    paths = expand_paths(logs)
    for path in paths:
        for record in iter_fast(path, stats):
            reader.add(record)
    if not reader.sessions:
        raise ValueError(f"no line of {', '.join(map(str, paths))} names a block in {labels}; "
                         "check that the log and the labels file belong together")

    blocks = list(reader.sessions)
    events = [reader.sessions[b] for b in blocks]
    truth = np.asarray([truth_by_block[b] for b in blocks], bool)
    stall = getattr(model, "stall_times", None)
    decision = completeness.decide(events, [reader.last_time[b] for b in blocks], reader.end_time,
                                   model.profile.unfinished, sessions, quiet_seconds,
                                   [reader.last_line[b] for b in blocks], reader.position, open_tail,
                                   stall.timeout if stall is not None and stall.timeouts else None)
    closed = np.asarray(decision.closed, bool)
    judgements = []
    for lo in range(0, len(blocks), 50_000):
        judgements += model.judge(events[lo:lo + 50_000], closed[lo:lo + 50_000].tolist())
    block_pred = np.asarray([j.anomalous for j in judgements], bool)

    # line members on each distinct shape, lifted to blocks
    names = list(ensemble.names)
    if embed is None:
        embed = _encoder_embed()
    # the ensemble's verdict as the scorer gives it: a majority of members, or a template new to the model
    novel = NewTemplates(getattr(ensemble, "templates", None), artifact.models.get("drain"))
    shape_template = {sid: t for per_block in reader.block_shapes.values() for sid, t in per_block.items()}
    shape_votes = np.zeros((len(reader.shapes), len(names) + 1), bool)
    for lo in range(0, len(reader.shapes), 256):
        chunk = reader.shapes[lo:lo + 256]
        p = ensemble.probabilities(chunk, np.asarray(embed(chunk), np.float32))
        votes = p >= LINE_THRESHOLD
        shape_votes[lo:lo + len(chunk), :-1] = votes
        shape_votes[lo:lo + len(chunk), -1] = majority(p) | np.asarray(
            [novel.is_new(shape_template[lo + k], s) for k, s in enumerate(chunk)], bool)
    lifted = np.zeros((len(blocks), len(names) + 1), bool)
    points_at_evidence = Counter()
    for i, b in enumerate(blocks):
        ids = list(reader.block_shapes[b])
        lifted[i] = shape_votes[ids].any(axis=0)
        if block_pred[i] and truth[i]:
            # the session rule's evidence: never in a normal session and naming a fault (or unknown text)
            evidence = {e for e in events[i] if e not in model.profile.normal_events and failure_event(e)}
            flagged = {reader.block_shapes[b][s] for s in ids if shape_votes[s, -1]}
            if not evidence:
                points_at_evidence["no_evidence_line"] += 1  # a missing step or a pattern: no single line to point at
            elif flagged & evidence:
                points_at_evidence["flagged_evidence_line"] += 1
            else:
                points_at_evidence["missed_evidence_line"] += 1

    def section(pred, mask=None) -> dict:
        t, q = (truth, pred) if mask is None else (truth[mask], pred[mask])
        m = summarize(t, q)
        m.update(blocks=int(len(t)), confusion={"labels": ["normal", "anomaly"],
                                                "matrix": [[m["tn"], m["fp"]], [m["fn"], m["tp"]]]})
        return m

    result_baselines = {}
    stored = artifact.models.get("baselines") or {}
    pictured = {"logmesh": {"scores": np.asarray([j.score for j in judgements], float), "predicted": block_pred,
                            "threshold": float(model.threshold)}}
    if baselines and stored:
        for name, b in stored.items():
            p = np.asarray(b.probabilities(events), float)
            result_baselines[name] = section(p >= b.threshold)
            pictured[name] = {"scores": p, "predicted": p >= b.threshold, "threshold": float(b.threshold)}
    flagged_kinds = Counter(j.kind for j, p in zip(judgements, block_pred) if p)
    digests, overlap = {}, []
    trained_on = artifact.meta.get("data", {}).get("files", {})
    for path in paths:
        if str(path) != "-":
            digests[Path(path).name] = d = file_digest(Path(path))
            overlap += [name for name, digest in trained_on.items() if digest == d]
    result = {
        "model": {"version": version, "dir": str(model_dir), "threshold": model.threshold,
                  "trained_on": artifact.meta.get("data", {}).get("dir"),
                  "fingerprint": artifact.meta.get("data", {}).get("fingerprint")},
        "logs": {"paths": [str(p) for p in paths], "lines": stats.lines,
                 "lines_without_labelled_block": reader.unlabelled_lines, "sha256": digests},
        "overlaps_training_data": bool(overlap),
        "overlap_files": overlap,
        "from_line": from_line, "until_line": until_line, "skipped_blocks": len(reader.skipped),
        "sessions": decision.summary(),
        "block": section(block_pred),
        "block_ended": section(block_pred, closed),
        "block_open": section(block_pred, ~closed),
        "verdict_kinds": dict(flagged_kinds),
        "baselines": result_baselines,
        "lines_lifted": {name: section(lifted[:, i]) for i, name in enumerate(names)} | {
            "ensemble": section(lifted[:, -1])},
        "line_points_at_evidence": dict(points_at_evidence),
        "combined": {**section(block_pred), "rule": "the session model's verdict"},
    }
    if kinds:
        from logmesh.ingest.failure_kinds import load_block_kinds
        kind_of = load_block_kinds(Path(kinds))
        by_kind: dict = {}
        for b, flagged, bl in zip(blocks, block_pred, lifted[:, -1]):
            k = kind_of.get(b)
            if k is None:
                continue
            row = by_kind.setdefault(k, {"blocks": 0, "detected": 0, "line_flagged": 0})
            row["blocks"] += 1
            row["detected"] += int(flagged)
            row["line_flagged"] += int(bl)
        for row in by_kind.values():
            row["recall"] = row["detected"] / row["blocks"]
        result["by_kind"] = dict(sorted(by_kind.items()))
    if plot_dir is not None:
        from logmesh.scorer import plots
        name = ", ".join(Path(p).name for p in paths)
        result["plots"] = [str(p) for p in plots.write(Path(plot_dir), truth, pictured,
                                                        f"model {version} on {name} ({len(blocks):,} blocks)")]
    if overlap:
        result["warning"] = (f"the log overlaps the model's training data ({', '.join(overlap)}): these figures are "
                             f"in-sample; see the artifact's validation in meta.json")
        result["validation"] = artifact.meta.get("validation", {}).get("grouped_kfold", {}).get("logmesh", {}).get("worst")
    return result


def _number_arg(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def add_evaluate_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--model-dir", default="models", help="folder of model artifacts; the newest is used (default %(default)s)")
    p.add_argument("--logs", required=True, help="raw HDFS or BGL log file or folder (HDFS streamed)")
    p.add_argument("--labels", default=None, help="HDFS: anomaly_label.csv (BlockId,Label), required; BGL: not used "
                                                 "(each line carries its label, which only the evaluation reads)")
    from logmesh.scorer.train_args import add_family_args
    add_family_args(p, "evaluate")
    p.add_argument("--all-lines", action="store_true",
                   help="BGL: judge every line, also the lines of the training files before the model's cut time "
                        "(in-sample; the output warns); by default those are skipped")
    p.add_argument("--sessions", choices=MODES, default="auto",
                   help="which blocks have ended: 'cut' (the log was cut: blocks still active at its end are open "
                        "prefixes), 'complete' (the file holds whole sessions), 'auto' (decided from where "
                        "unfinished writes sit; default %(default)s). The output says which rule applied")
    p.add_argument("--quiet-seconds", type=_number_arg, default=QUIET_SECONDS,
                   help="the tail that --sessions auto compares with the rest, in log time (default %(default)s)")
    p.add_argument("--open-tail", type=int, default=OPEN_TAIL,
                   help="for logs without timestamps: the tail is the last this many lines (default %(default)s)")
    p.add_argument("--from-line", type=int, default=0,
                   help="chronological hold-out: judge only blocks first seen after this line (e.g. the line "
                        "where the model's training data ended); earlier blocks are skipped")
    p.add_argument("--until-line", type=int, default=0,
                   help="judge only blocks first seen up to this line, so that they can finish in the rest of the log")
    p.add_argument("--no-baselines", dest="baselines", action="store_false",
                   help="do not score the decision-tree and logistic-regression baselines stored in the artifact")
    p.add_argument("--baselines", dest="baselines", action="store_true", default=True,
                   help="score the artifact's baselines (decision tree, logistic regression on event counts, "
                        "fitted on the same training data) beside logmesh (the default)")
    p.add_argument("--kinds", default=None,
                   help="BlockId,Kind CSV (as `logmesh generate` writes beside its log): add the recall on each "
                        "failure kind")
    p.add_argument("--plot", metavar="DIR", default=None,
                   help="also write confusion_matrix.png, precision_recall.png and score_histogram.png of "
                        "logmesh and the baselines into DIR (BGL: lines_* and windows_*, one set per level; needs "
                        "the plots extra: matplotlib)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _row(name: str, m: dict) -> str:
    hi = m["fpr_ci95"][1] * 100
    return (f"{name:<28} {m['precision']:>9.4f} {m['recall']:>7.4f} {m['f1']:>7.4f} {m['fpr'] * 100:>8.3f}% "
            f"{hi:>8.3f}% {m['f1_at_prevalence']:>8.4f} {m['tp']:>6} {m['fp']:>6} {m['fn']:>6} {m['tn']:>7}")


def format_table(r: dict) -> str:
    out = [f"model {r['model']['version']} (threshold {r['model']['threshold']:.2f})   logs {', '.join(r['logs']['paths'])}   "
           f"{r['block']['blocks']} blocks, {r['block']['anomalies']} anomalous"]
    if r["overlaps_training_data"]:
        out.append("WARNING: " + r["warning"])
    s = r["sessions"]
    out.append(f"sessions: {s['rule']} rule ({s['why']}); {s['judged_ended']} blocks judged as ended, "
               f"{s['judged_open']} as open prefixes")
    out.append(f"{'model (block level)':<28} {'precision':>9} {'recall':>7} {'f1':>7} {'fpr':>9} {'fpr<=95%':>9} "
               f"{'f1@2.93%':>8} {'tp':>6} {'fp':>6} {'fn':>6} {'tn':>7}")
    out.append(_row("logmesh", r["block"]))
    out.append(_row("  ended blocks", r["block_ended"]))
    out.append(_row("  open blocks", r["block_open"]))
    for name, m in r["baselines"].items():
        out.append(_row(f"baseline: {name}", m))
    for name, m in r["lines_lifted"].items():
        out.append(_row(f"lines: {name}", m))
    if r["verdict_kinds"]:
        out.append("why blocks were flagged: " + ", ".join(f"{k} {v}" for k, v in sorted(r["verdict_kinds"].items())))
    if r["line_points_at_evidence"]:
        out.append("detected failing blocks, the flagged line: " +
                   ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(r["line_points_at_evidence"].items())))
    for kind, row in r.get("by_kind", {}).items():
        out.append(f"failure kind {kind:<22} {row['detected']:>6}/{row['blocks']:<6} detected (recall {row['recall']:.3f}); "
                   f"a line flagged in {row['line_flagged']}")
    c = r["block"]["confusion"]["matrix"]
    out.append(f"logmesh confusion (rows truth, cols predicted; normal, anomaly): {c}")
    if r.get("plots"):
        out.append("plots: " + ", ".join(r["plots"]))
    return "\n".join(out)


def run_evaluate(args: argparse.Namespace) -> int:
    from logmesh.scorer import artifacts
    if getattr(args, "format", "hdfs") == "auto":  # cmd_evaluate resolves it; a direct caller may not have
        from logmesh.ingest.families import UnknownFormat, detect
        try:
            args.format = detect(args.logs)
        except (UnknownFormat, OSError):
            args.format = "hdfs"
    if getattr(args, "format", "hdfs") == "bgl":
        from logmesh.scorer import bgl
        try:
            result = bgl.evaluate_bgl(Path(args.model_dir), Path(args.logs), window=args.window, all_lines=args.all_lines,
                                      plot_dir=Path(args.plot) if getattr(args, "plot", None) else None)
        except (artifacts.ArtifactError, FileNotFoundError, ValueError, RuntimeError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(result) if args.json else bgl.format_table(result))
        return 0
    try:
        result = evaluate(args.model_dir, args.logs, args.labels, open_tail=args.open_tail,
                          from_line=args.from_line, until_line=args.until_line, sessions=args.sessions,
                          quiet_seconds=args.quiet_seconds, baselines=args.baselines, kinds=args.kinds,
                          plot_dir=args.plot)
    except (artifacts.ArtifactError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result) if args.json else format_table(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_evaluate(add_evaluate_args(argparse.ArgumentParser(prog="logmesh evaluate")).parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
