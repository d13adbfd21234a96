"""`logmesh train` and `logmesh evaluate`: fit an artifact on labelled HDFS or BGL logs, judge one on a labelled log.
The scorer's training code (scikit-learn, the embedding model) is imported only when a command runs."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from logmesh.cli.common import POSITIVE, Unreachable, UserError


def _check_labels(path: Path, flag: str) -> None:
    """A labels file the trainer and the evaluator can read, checked whole by the one label reader before any
    model loads: a bad row is one line naming the file and the row."""
    from logmesh.ingest.labels import LabelFileError, read_block_labels
    if not path.is_file():
        raise UserError(f"{flag} {path}: no such file; give the anomaly_label.csv (BlockId,Label) that labels "
                        "the log's blocks (loghub HDFS_v1 ships one; `logmesh generate` writes one beside its log)")
    try:
        read_block_labels(path)
    except OSError as exc:
        raise UserError(f"cannot read {flag} {path}: {exc.strerror}") from None
    except LabelFileError as exc:
        raise UserError(f"{flag} {exc}") from None


def _family(path: Path, given: str) -> str:
    """--format, or the family detected from the first lines of the first *.log (ingest/families); HDFS when
    none is recognised, so HDFS's own checks say what is wrong, as before families existed."""
    if given != "auto":
        return given
    from logmesh.ingest.families import UnknownFormat, detect
    try:
        return detect(path)
    except (UnknownFormat, OSError):
        return "hdfs"


def _train_bgl(args: argparse.Namespace, data: Path, out: Path) -> int:
    from logmesh.embedder.encoder import SentenceEncoder
    from logmesh.scorer import bgl
    try:
        path = bgl.train_bgl(data, out, SentenceEncoder(threads=args.threads).encode, seed=args.seed,
                             window=args.window or bgl.WINDOW, train_share=args.train_share,
                             loco=args.validation != "none")
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None
    meta = json.loads((path / "meta.json").read_text())
    h, s = meta["held_out"], meta["split"]
    print(f"saved {path}  (BGL, {meta['data']['lines']:,} lines, {meta['train_seconds']} s)\n"
          f"  held out: {s['test_lines']:,} lines after {s['train_until_utc'][:19]} ({s['test_alerts']} alerts): "
          f"line F1 {h['line']['f1']:.4f} FPR {h['line']['fpr']:.3%}; windows of {h['window']['size']}: "
          f"F1 {h['window']['f1']:.4f} (decision tree {h['baselines']['decision_tree']['f1']:.4f}, "
          f"logistic regression {h['baselines']['logistic_regression']['f1']:.4f})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from logmesh.runtime import logs
    logs.setup(args.log_level)
    if args.from_store:
        return _train_from_store(args)
    if args.data is None:
        raise UserError("--data is required: a folder of labelled HDFS or BGL logs (or --from-store with "
                        "--qdrant-path / --qdrant-url for a site without labels)")
    data = Path(args.data)
    if not data.is_dir():
        what = "is a file, not a folder" if data.exists() else "no such folder"
        raise UserError(f"--data {data}: {what}; give a folder of labelled logs: loghub HDFS_v1 (raw *.log files "
                        "plus anomaly_label.csv) or BGL (*.log, labels in each line's first column)")
    if _family(data, args.format) == "bgl":
        if args.feedback or args.feedback_file:
            raise UserError("--feedback trains HDFS models so far; BGL artifacts do not take analyst labels yet")
        out = Path(args.out)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create --out {out}: {exc.strerror}; give a folder you can write to") from None
        return _train_bgl(args, data, out)
    if not (data / "anomaly_label.csv").exists():
        raise UserError(f"{data} has no anomaly_label.csv; point --data at a loghub HDFS_v1 folder "
                        "(raw *.log files plus anomaly_label.csv)")
    _check_labels(data / "anomaly_label.csv", "--data")
    from logmesh.scorer.dataset import log_files
    if not log_files(data):  # checked before the embedding model loads
        raise UserError(f"{data} has anomaly_label.csv but no raw *.log file to train on: put the HDFS logs "
                        "(e.g. HDFS.log) beside the labels (HDFS_2k.log alone does not count: it is unlabelled)")
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create --out {out}: {exc.strerror}; give a folder you can write to") from None
    if not os.access(out, os.W_OK):
        raise UserError(f"cannot write to --out {out}: give a folder you can write to")
    feedback = _read_feedback(args)  # before the embedding model loads: a bad source fails fast
    store = _open_store(args) if feedback is not None else None
    from logmesh.embedder.encoder import SentenceEncoder
    from logmesh.scorer.train import train
    encoder = SentenceEncoder(threads=args.threads)
    try:
        path = train(data, out, encoder.encode, seed=args.seed, limit=args.limit, sessions=args.sessions,
                     quiet_seconds=args.quiet_seconds, validation=args.validation, target_fpr=args.target_fpr,
                     feedback=feedback, feedback_weight=args.feedback_weight, tolerance=args.shadow_tolerance,
                     force_promote=args.force_promote, lookup=_lookup(store))
    except FileNotFoundError as exc:  # e.g. logs whose blocks the labels do not name
        raise UserError(f"{exc}; check that the logs and anomaly_label.csv belong together") from None
    finally:
        if store is not None:
            store.close()
    from logmesh.scorer.train import summary
    meta = json.loads((path / "meta.json").read_text())
    print(summary(path, meta))
    return 0 if meta.get("promotion", {}).get("promoted", True) else 3


def _train_from_store(args: argparse.Namespace) -> int:
    if args.data is not None or args.feedback or args.feedback_file:
        raise UserError("--from-store learns from the vector store alone: leave out --data and --feedback")
    if not (args.qdrant_url or args.qdrant_path):
        raise UserError("--from-store needs the store the streaming job writes: --qdrant-path DIR (the embedded "
                        "store, var/qdrant by default for `logmesh stream`) or --qdrant-url URL")
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create --out {out}: {exc.strerror}; give a folder you can write to") from None
    from logmesh.scorer import store_training
    store = _open_store(args)
    try:
        path = store_training.train_from_store(store, out, args.qdrant_url or args.qdrant_path, seed=args.seed)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    finally:
        store.close()
    print(store_training.summary(path, json.loads((path / "meta.json").read_text())))
    return 0


def _open_store(args: argparse.Namespace):
    """The vector store --qdrant-path / --qdrant-url name, or None."""
    if not (args.qdrant_url or args.qdrant_path):
        return None
    from logmesh.cli.similar import _open_similar_store
    return _open_similar_store(args)


def _lookup(store):
    if store is None:
        return None
    from logmesh.scorer.feedback_training import StoreLookup
    return StoreLookup(store)


def _read_feedback(args: argparse.Namespace):
    """The analyst labels `--feedback` / `--feedback-file` name, selected for training; None without either."""
    if not (args.feedback or args.feedback_file):
        return None
    from logmesh.scorer import feedback_source
    from logmesh.scorer.feedback_training import select
    try:
        read = (feedback_source.read_file(Path(args.feedback_file)) if args.feedback_file
                else feedback_source.read_topic(args.bootstrap, args.feedback_topic))
    except feedback_source.BrokerUnreachable as exc:
        raise Unreachable(str(exc)) from None
    except feedback_source.FeedbackSourceError as exc:
        raise UserError(str(exc)) from None
    for problem in read.unreadable:
        print(f"warning: {read.source}: {problem}; skipped", file=sys.stderr)
    fset = select(read.feedback, source=read.source)
    if not fset.labels:
        print(f"warning: {read.source}: none of its {fset.total} labels trains "
              f"({', '.join(f'{len(v)} {k}' for k, v in fset.ignored.items()) or 'it is empty'}); training on the data "
              "alone, with the shadow comparison", file=sys.stderr)
    return fset


def cmd_evaluate(args: argparse.Namespace) -> int:
    if not Path(args.logs).exists():
        raise UserError(f"--logs {args.logs}: no such file or folder; give a raw HDFS log file or a folder of them")
    args.format = _family(Path(args.logs), args.format)
    if args.format == "hdfs":
        if args.labels is None:
            raise UserError("--labels is required for HDFS logs: give the anomaly_label.csv (BlockId,Label) of the log's blocks")
        _check_labels(Path(args.labels), "--labels")
    from logmesh.scorer.evaluate import run_evaluate
    return run_evaluate(args)


def setup_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, help="folder with raw HDFS *.log files and anomaly_label.csv, or BGL *.log files (labels in their first "
                   "column; loghub's BGL_templates.csv beside them is used when present); required unless --from-store")
    p.add_argument("--from-store", action="store_true",
                   help="no labels: learn a model of normal behaviour from the ended blocks the vector store holds "
                        "(--qdrant-path / --qdrant-url; events of each block, no label, no verdict). It catches "
                        "exceptions and other rare kinds of line, new templates and missing steps of a common write; "
                        "it misses failures as common as normal traffic and failures made of ordinary events (e.g. "
                        "re-replication then a delete), and flags rare normal behaviour until it is common. Saved as "
                        "family hdfs-normal, which the scorer does not serve yet")
    p.add_argument("--out", default="models", help="model dir to add the artifact to (default %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed of the split and the models; same data and seed, same artifact (default %(default)s)")
    p.add_argument("--limit", type=POSITIVE, default=None, help="use at most this many lines")
    p.add_argument("--threads", type=POSITIVE, default=2, help="model threads for embedding, ONNX Runtime or torch (default %(default)s)")
    from logmesh.scorer.train_args import add_train_args
    add_train_args(p)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="least severe log lines written to stderr (default %(default)s)")
    p.set_defaults(func=cmd_train)


def setup_evaluate(p: argparse.ArgumentParser) -> None:
    from logmesh.scorer.evaluate import add_evaluate_args
    add_evaluate_args(p)
    p.set_defaults(func=cmd_evaluate)
