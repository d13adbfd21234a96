"""What a `logmesh stream` job said: its JSON log lines, read from the file its stderr went to."""
from __future__ import annotations

import json
from pathlib import Path


def json_lines(path: Path) -> list[dict]:
    """The log's JSON lines, in order (other lines, such as Spark's own, are passed over)."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def scored_by_batch(path: Path) -> dict[int, int]:
    """batch id -> lines scored, from the job's "batch written" log lines (each logged after its batch's commit)."""
    return {e["batch_id"]: e["scored"] for e in json_lines(path) if e.get("msg") == "batch written"}
