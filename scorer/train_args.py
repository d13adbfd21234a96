"""`logmesh train`'s detection options (kept beside the trainer; the CLI builds them only when `train` runs)."""
from __future__ import annotations

import argparse

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
    return p
