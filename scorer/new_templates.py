"""Names the kinds of line a model has never seen, so a verdict can say "new template: ...".

A line whose template is not among those its model was trained on (no loghub template matches, and
no Drain3 cluster mined at training does either) is novel evidence in itself: the next failure is
the one nobody labelled (a loghub template whose text names no fault is not: scorer/failure_text.py). A live Drain3 miner, separate from the artifact's frozen one, groups those
lines so that a thousand lines of one new kind show as one template, not a thousand.
"""
from __future__ import annotations

import threading

from logmesh.ingest.hdfs import UNKNOWN_TEMPLATE
from logmesh.ingest.templates_drain import live_miner
from logmesh.scorer.failure_text import failure_event

MAX_CLUSTERS = 1000
#: What of a new line's shape the live miner reads: each cluster keeps its tokens, so a 64 KB line would cost
#: ~350 KB a cluster (1,000 distinct long lines: ~350 MB); the start of a line names its template.
NAME_CHARS = 1000


class NewTemplates:
    def __init__(self, known: set[str] | None, frozen_drain=None) -> None:
        """`known`: the template ids the model was trained on (None: an artifact from before they were
        recorded, which flags nothing as new). `frozen_drain`: the artifact's DrainTemplates."""
        self.known = known
        self.frozen = frozen_drain
        self._miner = live_miner(MAX_CLUSTERS)  # Drain3 mining lives in ingest/
        self._lock = threading.Lock()

    def is_new(self, template_id: str, shape: str) -> bool:
        if self.known is None:
            return False
        if template_id != UNKNOWN_TEMPLATE:
            # a loghub template training never had is new only if its text names a fault (scorer/failure_text.py):
            # "BLOCK* ask ... to delete" (E30) is normal HDFS bookkeeping the dev data happens not to hold
            return template_id not in self.known and failure_event(template_id)
        # a line no loghub template matches is new unless training mined a cluster it falls in
        return not (self.frozen is not None and self.frozen.templates and self.frozen.miner.match(shape) is not None)

    def name(self, shape: str) -> str:
        """"N<k>: <template>" for a new line's masked shape, mined as it comes."""
        with self._lock:
            result = self._miner.add_log_message(shape[:NAME_CHARS])
        return f"N{result['cluster_id']}: {result['template_mined']}"
