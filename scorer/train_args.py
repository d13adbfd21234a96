"""`logmesh train`'s detection options (kept beside the trainer; the CLI builds them only when `train` runs)."""
from __future__ import annotations

import argparse
import os

from logmesh.scorer.completeness import MODES, QUIET_SECONDS


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give a share such as 0.0005") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text} is outside (0, 1); give a share such as 0.0005 (0.05%)")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be > 0 seconds")
    return value


def _window(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of lines") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1 line")
    return value


FORMATS = ("auto", "hdfs", "bgl")


def add_family_args(p: argparse.ArgumentParser, verb: str) -> argparse.ArgumentParser:
    """--format and --window, shared by train and evaluate."""
    p.add_argument("--format", choices=FORMATS, default="auto",
                   help=f"log family to {verb}: 'hdfs' (loghub HDFS_v1: raw logs + anomaly_label.csv), 'bgl' (loghub "
                        "BGL: the label is each line's first column, '-' for normal), or 'auto' (detected from the "
                        "first lines of the first *.log; default %(default)s)")
    p.add_argument("--window", type=_window, default=None,
                   help="BGL: lines per window for window verdicts (a window is anomalous when any of its lines is an "
                        "alert; default 100, or the model's for evaluate)")
    return p


def add_train_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_family_args(p, "train on")
    p.add_argument("--train-share", type=_share, default=0.8,
                   help="BGL: share of lines (by time, over all samples) that train; the later rest is judged as the "
                        "held-out part and stored in the artifact (default %(default)s)")
    p.add_argument("--sessions", choices=MODES, default="auto",
                   help="which blocks of each raw log have ended: 'cut' (the log was cut: blocks active near its end "
                        "are open prefixes), 'complete' (every block's whole session is in the file), or 'auto' "
                        "(decided from where unfinished writes sit; default %(default)s)")
    p.add_argument("--quiet-seconds", type=_seconds, default=QUIET_SECONDS,
                   help="in a cut log, a block has ended once the log went on this long (log time) after its last "
                        "line (default %(default)s)")
    p.add_argument("--validation", choices=["full", "quick", "none"], default="full",
                   help="validation run before the final fit: 'full' = grouped 5-fold x 2 shuffles, held-out "
                        "behaviour families and a chronological split, each beside the baselines (about a minute "
                        "on the shared data); 'quick' = 3 folds x 1; 'none' skips it. BGL: the held-out part after the "
                        "time cut is always judged; 'none' skips leave-one-category-out (default %(default)s)")
    p.add_argument("--target-fpr", type=_share, default=0.0005,
                   help="the session model's threshold is the lowest whose out-of-fold false-positive rate on "
                        "complete sessions is at most this share (default %(default)s = 0.05%%)")
    add_feedback_args(p)
    return p


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give an F1 difference such as 0.01") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text} is outside [0, 1); give an F1 difference such as 0.01")
    return value


def add_feedback_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Analyst feedback for `logmesh train` (HDFS): where it is read, how much it weighs, when a candidate is promoted."""
    from logmesh.scorer.feedback_source import TOPIC
    from logmesh.scorer.feedback_training import DEFAULT_WEIGHT
    from logmesh.scorer.shadow import DEFAULT_TOLERANCE
    g = p.add_argument_group("analyst feedback (HDFS)", "fold analyst labels in (FALSE_ALARM/NORMAL: normal, TRUE_ALARM: "
                             "anomalous; block, sequence or template scope; actions LEARN and SUPPRESS_AND_LEARN), "
                             "then shadow-evaluate the candidate against the artifact --out serves before promoting it")
    g.add_argument("--feedback", action="store_true",
                   help="read the labels from the compacted feedback topic at --bootstrap (or from --feedback-file)")
    g.add_argument("--feedback-file", metavar="FILE", default=None,
                   help="read the labels from FILE instead: one logmesh.v1.Feedback per line in protobuf's JSON "
                        "mapping (implies --feedback)")
    g.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap servers (default %(default)s)")
    g.add_argument("--feedback-topic", default=TOPIC, help="the feedback topic (default %(default)s)")
    g.add_argument("--feedback-weight", type=_window, default=DEFAULT_WEIGHT,
                   help="each labelled session trains as this many complete sessions of its sequence (default "
                        "%(default)s; at 1 a single normal session among thousands does not move the model)")
    g.add_argument("--shadow-tolerance", type=_tolerance, default=DEFAULT_TOLERANCE,
                   help="refuse promotion when the candidate's F1 at 2.93%% prevalence on held-out complete sessions "
                        "(paired grouped k-fold, the data's labels) is below the serving recipe's by more than this "
                        "(default %(default)s)")
    g.add_argument("--force-promote", action="store_true",
                   help="promote the candidate even when the shadow evaluation refuses it (the comparison is kept)")
    v = p.add_argument_group("vector store", "the store the streaming job writes (block points: mean vector, events, "
                             "verdict): --feedback looks up blocks the training data lacks in it; --from-store trains on it")
    v.add_argument("--qdrant-path", metavar="DIR", default=None,
                   help="the embedded store's folder (qdrant-edge; `logmesh stream` writes var/qdrant by default)")
    v.add_argument("--qdrant-url", default=None, help="a Qdrant server instead of --qdrant-path")
    v.add_argument("--qdrant-api-key", default=os.environ.get("QDRANT_API_KEY"),
                   help="API key for --qdrant-url (default: QDRANT_API_KEY)")
    return p
