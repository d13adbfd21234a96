"""The `logmesh` command line: a package of commands, one module each (serve, train/evaluate, score,
anomalies/tail/stats, incidents/incident, feedback, ingest/generate, stream, similar, health, datasets, and the
console under `serve`) over a small common module. Every subcommand
has --help; servers log JSON lines to stderr.

A user mistake (a missing file, a wrong folder, a store in use, a port taken) ends with one `error:` line
that says what to do and exit code 2; a server that cannot be reached, exit code 1. LOGMESH_DEBUG=1 shows
the traceback behind an error. Only the module of the command that runs is imported, and each imports its
heavy dependencies inside the command, so `logmesh score` imports neither Spark, pandas, Kafka nor torch
(tests/unit/test_cli_imports.py).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from logmesh.cli.common import Unreachable, UserError, run
from logmesh.cli.kafka_config import read_kafka_config as _read_kafka_config  # noqa: F401  (tests, old callers)

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model ships in a package; never reach for a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

__all__ = ["COMMANDS", "Unreachable", "UserError", "build_parser", "main"]


# name: (help in `logmesh --help`, description in `logmesh NAME --help`, the module:function that adds the options;
# the module is imported only when its command is the one that runs)
COMMANDS: dict[str, tuple[str, str | None, str]] = {
    "serve": ("run the embedder or the scorer gRPC server, or the analyst console",
              "Run a gRPC server with health checking and reflection: `logmesh serve embedder` or `logmesh serve "
              "scorer` (each has its own --help). It reports NOT_SERVING until its model is loaded; SIGTERM "
              "stops it gracefully. `logmesh serve console` serves the analyst's web page over the scorer.",
              "serve:setup"),
    "train": ("train a model artifact from labelled HDFS or BGL logs",
              "Fit the line ensemble on a loghub HDFS_v1 folder (*.log + anomaly_label.csv) or a BGL folder (*.log, "
              "labels in each line's first column; the family is detected from the first lines, or --format) and "
              "save a versioned artifact with its metrics under --out.", "train:setup_train"),
    "score": ("score raw log lines and print verdict, score and votes",
              "Score raw HDFS or BGL lines (--format; detected from the lines by default) given as arguments, or "
              "one per line on stdin. A line that parses as neither (template unknown) is scored on its text "
              "alone, with a warning.", "score:setup"),
    "evaluate": ("precision/recall/F1/FPR of the newest artifact on a labelled log",
                 "Judge every labelled block of a raw HDFS log with the newest artifact in --model-dir and print "
                 "precision, recall, F1 and false-positive rate for the block model, each line member and the "
                 "ensemble (docs/evaluation.md). On BGL logs: line- and window-level (--window) figures beside "
                 "the baselines, and the recall on each alert category left out of training. Runs locally; no "
                 "server needed.", "train:setup_evaluate"),
    "anomalies": ("list recorded anomalies, newest first",
                  "Page through the scorer's anomaly history (ListAnomalies), newest first: flagged lines with "
                  "their votes, block alerts and final verdicts, each with its most similar past cases.",
                  "anomalies:setup_anomalies"),
    "tail": ("show anomalies live as the scorer records them",
             "Subscribe to WatchAnomalies and print each new anomalous line or block alert.", "anomalies:setup_tail"),
    "stats": ("print the scorer's counters, latencies and model as JSON",
              "Print the scorer's GetStats as JSON with the proto's field names (as grpcurl does): lines and "
              "blocks scored, anomalies, rejected items, latency p50/p99, the loaded model and why none is.",
              "anomalies:setup_stats"),
    "incidents": ("list the scorer's incidents (alerts grouped into stories), or --watch them",
                  "Page through the incidents the scorer grouped from its anomaly history (ListIncidents), most "
                  "recently changed first: alerts of one block, or of blocks failing on the same nodes, template "
                  "and minutes, as one story with its kind, time window, sessions, nodes and summary title. "
                  "--watch follows every change (WatchIncidents), resumable with --after UPDATE_ID. "
                  "`logmesh incident ID` shows one in full.", "incidents:setup_incidents"),
    "incident": ("show one incident: evidence lines, counts against normal, similar past incidents, summary",
                 "Show one incident (GetIncident): its sessions, nodes and reasons, its summary, the evidence lines "
                 "by record id with how many of the incident's lines share their template and the share of normal "
                 "training sessions that hold it, and the most similar past incidents (vector search in the store) "
                 "with what analysts said about them.", "incidents:setup_incident"),
    "ingest": ("produce raw HDFS or BGL logs to Kafka as LogRecords", None, "ingest:setup_ingest"),
    "generate": ("write realistic HDFS logs with labelled anomalous blocks", None, "ingest:setup_generate"),
    "stream": ("run the Spark Structured Streaming job (Kafka -> scorer -> Kafka, Qdrant)",
               "Read LogRecords from Kafka with Spark's Kafka source; in executor tasks decode, embed and score "
               "each micro-batch over gRPC streams, keep each block's (BGL: node's) events in Spark's state store, "
               "write results to Kafka in one transaction per partition, and blocks and anomalous lines to the "
               "vector store. Checkpointed: a restart resumes.", "stream:setup"),
    "similar": ("show the stored lines or blocks most similar to a line or a block",
                "Nearest neighbours in the vector store: for a raw log line, the most similar "
                "stored (anomalous) lines; with --block, the most similar stored blocks.", "similar:setup"),
    "feedback": ("label an alert (true/false alarm, normal): suppress it now, teach the next training; list labels",
                 "Give the scorer's FeedbackService a label on a flagged line (--record-id), a block (--block) or an "
                 "incident (--incident): a true alarm, a false alarm or normal operation; how far it reaches "
                 "(--scope); what it does (--action: suppress matching alerts and incidents now, which stay listed "
                 "and marked suppressed; learn at the next `logmesh train --feedback`; or both). Labels are kept in "
                 "the scorer's feedback topic with who gave them and when; `logmesh feedback list` shows them, "
                 "newest first.", "feedback:setup"),
    "health": ("check both servers' gRPC health (exit 0 when both are SERVING)",
               "Check grpc.health.v1 of the scorer and of the embedder it uses (it names it in GetStats; "
               "--embedder checks another). Exit 0 when both are SERVING, 1 otherwise.", "health:setup"),
    "datasets": ("list or fetch the full loghub datasets (HDFS_v1, BGL) from Zenodo",
                 "`logmesh datasets list` shows the datasets known and what of each is already in the data root; "
                 "`logmesh datasets fetch hdfs|bgl` downloads one from Zenodo (resumable, md5-checked, sha256 "
                 "written beside it) and unpacks it (docs/datasets.md).", "datasets:setup"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole CLI (command None), or one whose only complete subcommand is `command` (what main uses)."""
    parser = argparse.ArgumentParser(
        prog="logmesh", description="Real-time anomaly detection for HDFS and BGL logs over gRPC.",
        epilog="Start with: logmesh train --data DIR --out models; logmesh serve embedder & logmesh serve scorer "
               "--model-dir models & logmesh score LINE (README.md, Run the services)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="what to do (`logmesh COMMAND --help` explains each)")
    for name, (help_text, description, setup) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=description or help_text[0].upper() + help_text[1:] + ".")
        if command is None or command == name:
            module, function = setup.split(":")
            getattr(importlib.import_module(f"logmesh.cli.{module}"), function)(p)
    return parser


def _command_of(argv: list[str]) -> str:
    """The subcommand named on the command line (the first word that is not an option), or ""."""
    return next((a for a in argv if not a.startswith("-")), "")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return run(build_parser(_command_of(argv)).parse_args(argv))
