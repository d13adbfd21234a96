"""BGL's loghub event templates (E1..E377, `<*>` a parameter) as matchers over a line's message.

The templates are read from the user's data folder (loghub's BGL_templates.csv; the repo ships no data)
and travel inside the model artifact. Where two templates match, the most specific (most literal text)
wins, since loghub's list holds catch-alls such as `<*>:<*> <*>:<*> ...`. Matching is cached per masked
message: lines that differ only in numbers and addresses share a template.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

from logmesh.ingest.masking import mask

TEMPLATES_FILE = "BGL_templates.csv"


def _regex(template: str) -> re.Pattern[str]:
    parts = [re.escape(p) for p in template.strip().split("<*>")]
    return re.compile(r"\s*" + r".*?".join(parts) + r"\s*", re.S)


class BglTemplates:
    def __init__(self, templates: dict[str, str]) -> None:
        self.templates = dict(templates)
        literal = lambda t: len(t.replace("<*>", "").strip())
        order = sorted(self.templates.items(), key=lambda kv: -literal(kv[1]))
        self._compiled = [(event, _regex(text)) for event, text in order if literal(text) > 0]
        self._cache: dict[str, str | None] = {}

    @classmethod
    def read(cls, path: str | Path) -> "BglTemplates":
        """loghub's `EventId,EventTemplate` CSV; a file without those columns is refused naming it."""
        with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
            rows = list(csv.DictReader(f))
        if not rows or not {"EventId", "EventTemplate"} <= set(rows[0]):
            raise ValueError(f"{path} is not a template list: its header should be 'EventId,EventTemplate' "
                             "(loghub's BGL_templates.csv)")
        return cls({r["EventId"]: r["EventTemplate"] for r in rows if r["EventId"]})

    def match(self, message: str) -> str | None:
        key = mask(message)
        if key not in self._cache:
            self._cache[key] = self.scan(message)
        return self._cache[key]

    def scan(self, message: str) -> str | None:
        """The most specific template matching `message`, without the cache (what a cache miss costs)."""
        return next((e for e, rx in self._compiled if rx.fullmatch(message)), None)

    def __getstate__(self) -> dict:
        return {"templates": self.templates}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["templates"])
