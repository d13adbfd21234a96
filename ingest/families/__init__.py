"""Log families: what differs between HDFS, BGL, ... (parsing, session keys, templates, labels).

The interface is `base.LogFamily`; each family is one small module. A third family (Thunderbird, Spirit)
is one file like bgl.py (a `parse` that splits off the line's label if it has one, a `looks_like`),
added to FAMILIES below.
"""
from __future__ import annotations

from pathlib import Path

from logmesh.ingest.families.base import LineRecord, LogFamily, Parsed
from logmesh.ingest.families.bgl import BglFamily
from logmesh.ingest.families.hdfs import HdfsFamily

FAMILIES = {"hdfs": HdfsFamily, "bgl": BglFamily}
#: how many first lines `detect` reads
SNIFF_LINES = 20


class UnknownFormat(ValueError):
    """No family recognises a file's first lines; the message names the file and what to pass."""


def get(name: str, **options) -> LogFamily:
    if name not in FAMILIES:
        raise UnknownFormat(f"unknown log format {name!r}; one of {', '.join(FAMILIES)}")
    return FAMILIES[name](**options)


def detect(path: str | Path) -> str:
    """The family of a log file (or a folder's first log), from its first lines: the one that parses most
    of them, if it parses at least half."""
    from logmesh.ingest.reader import expand_paths, iter_lines
    files = [p for p in expand_paths(path) if str(p) != "-"]
    if not files:
        raise UnknownFormat(f"{path}: no *.log or *.gz file to detect the log format from; pass --format")
    first = []
    for _, _, text in iter_lines(files[0]):
        first.append(text)
        if len(first) >= SNIFF_LINES:
            break
    scores = {name: cls().looks_like(first) for name, cls in FAMILIES.items()}
    best = max(scores, key=scores.get)
    if scores[best] < 0.5:
        raise UnknownFormat(f"{files[0]}: its first lines are in no known log format ({', '.join(FAMILIES)}); "
                            "pass --format if you know it")
    return best


__all__ = ["FAMILIES", "LineRecord", "LogFamily", "Parsed", "UnknownFormat", "detect", "get"]
