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


def iter_bgl_records(paths, labels: bool = False, stats=None, templates_file=None):  # type: ignore[no-untyped-def]
    """LogRecords of BGL lines (files, folders, "-"), one per non-empty line, as `BglFamily.record` makes them;
    loghub's template list from `templates_file`, else BGL_templates.csv beside the first file when there is
    one. `labels`: keep each line's label column (replay and evaluation only)."""
    from logmesh.ingest.bgl_templates import TEMPLATES_FILE, BglTemplates
    from logmesh.ingest.families.bgl import BglFamily
    from logmesh.ingest.reader import expand_paths, iter_lines
    files = expand_paths(paths)
    if templates_file is None:
        first = next((Path(f) for f in files if str(f) != "-"), None)
        beside = first.parent / TEMPLATES_FILE if first is not None else None
        templates_file = beside if beside is not None and beside.exists() else None
    family = BglFamily(BglTemplates.read(templates_file) if templates_file else None)
    for source, number, text in iter_lines(files, stats):
        if text:
            yield family.record(text, source, number, labels)


def resolve(name: str, paths) -> str:  # type: ignore[no-untyped-def]
    """`--format` as given, or for "auto" the family of the first file; HDFS for stdin (it cannot be sniffed
    without consuming it) and for a file in no known format (as before families: its lines are produced and
    counted as unparsed)."""
    if name != "auto":
        get(name)  # unknown names fail here, naming the known ones
        return name
    from logmesh.ingest.reader import expand_paths
    files = [p for p in expand_paths(paths) if str(p) != "-"]
    try:
        return detect(files[0]) if files else "hdfs"
    except UnknownFormat:
        return "hdfs"


def family_of(record) -> str:  # type: ignore[no-untyped-def]
    """The family a LogRecord was parsed as ("" is HDFS: records from before families)."""
    return record.family or "hdfs"


def record_shape(record) -> str:  # type: ignore[no-untyped-def]
    """The masked text the embedder and the line models see for a LogRecord of any family: the one shape the
    job embeds and the scorer keys its caches by."""
    if record.family == "bgl":
        from logmesh.ingest.families.bgl import record_shape as bgl_shape
        return bgl_shape(record)
    from logmesh.ingest.masking import line_shape
    return line_shape(record.component, record.message)


__all__ = ["FAMILIES", "LineRecord", "LogFamily", "Parsed", "UnknownFormat", "detect", "family_of", "get", "iter_bgl_records", "record_shape", "resolve"]
