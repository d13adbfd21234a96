"""The anomaly history: a newest-first log of flagged lines and blocks, each entered with its similar past
cases (the nearest earlier anomalies, scorer/similar.py).

Bounded by bytes: entries are held serialized (what they cost is what they are), the oldest go first once
the total passes `max_bytes`, and one entry is at most `entry_max_bytes` (a longer one is stored trimmed and
says so in `Anomaly.trimmed`). A page is cut by bytes too, so it always fits a gRPC message. With a store
(scorer/state.py) every entry is also appended there, and a restarted scorer reloads what it held.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from typing import Collection, Iterator, Mapping, Sequence

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from logmesh.runtime.bytecache import MiB
from logmesh.ingest.masking import line_shape
from logmesh.scorer.block_model import EVENTS
from logmesh.scorer.similar import Case, Item, Neighbours, SimilarIndex
from logmesh.scorer.state import HistoryStore
from logmesh.v1 import score_pb2

log = logging.getLogger("logmesh.scorer.history")
SIMILAR_K = 5
LINE_DIM = 384
#: ~150,000 typical entries (a flagged line with five similar cases is ~800 bytes); 64 KB lines count as such.
DEFAULT_HISTORY_BYTES = 128 * MiB
#: One entry at most: a 64 KB line stays whole; a 100,000-event block keeps its first ~30,000 events.
ENTRY_MAX_BYTES = 128 * 1024
#: A ListAnomalies page at most: under grpc's default 4 MiB receive limit, so any client can read it.
PAGE_MAX_BYTES = 4 * MiB - 4096
#: A similar case's text at most (the start of a longer line): five of them must not dwarf the entry.
CASE_TEXT_BYTES = 1024
#: Blocks whose alert (and final verdict) is remembered, so each is recorded once (~100 bytes each).
MAX_ALERTED_BLOCKS = 200_000
_META_BYTES = 200  # what an entry's metadata costs beside its bytes (the object, its tuple of block ids)
#: The share of two blocks' similarity that comes from their evidence events (events the served block model
#: never saw in a normal block: an exception, a timeout, a failed delete: what says *how* a block failed); the
#: rest comes from the routine events every block shares. So blocks that failed the same way come first, and
#: among them the ones whose write/replicate/delete history looked alike.
EVIDENCE_SHARE = 0.8
_EVENT_INDEX = {e: i for i, e in enumerate(EVENTS)}
ALERT, FINAL, INTERIM = (score_pb2.BLOCK_VERDICT_KIND_ALERT, score_pb2.BLOCK_VERDICT_KIND_FINAL,
                         score_pb2.BLOCK_VERDICT_KIND_INTERIM)


@dataclass(frozen=True, slots=True)
class _Entry:
    """One stored entry: its serialized Anomaly and what filters read, so a page parses only what it returns."""
    id: int
    score: float
    is_line: bool
    component: str
    block_ids: tuple[str, ...]
    data: bytes

    @property
    def cost(self) -> int:
        return len(self.data) + _META_BYTES + len(self.component) + sum(len(b) + 50 for b in self.block_ids)

    def anomaly(self) -> score_pb2.Anomaly:
        return score_pb2.Anomaly.FromString(self.data)


class AnomalyHistory:
    def __init__(self, max_bytes: int = DEFAULT_HISTORY_BYTES, max_entries: int = 100_000,
                 similar_k: int = SIMILAR_K, line_shapes: int = 4096, block_profiles: int = 16_384,
                 entry_max_bytes: int = ENTRY_MAX_BYTES, store: HistoryStore | None = None) -> None:
        if entry_max_bytes > PAGE_MAX_BYTES:
            raise ValueError(f"entry_max_bytes must be at most {PAGE_MAX_BYTES}: every entry must fit a page")
        self.max_bytes, self.max_entries, self.entry_max_bytes = max_bytes, max_entries, entry_max_bytes
        self._entries: deque[_Entry] = deque()
        self._bytes = 0
        self._next_id = 1
        self._lock = threading.Condition()
        # block id digest -> digest of its recorded final story (0: alerted, no final yet); oldest first
        self._blocks: OrderedDict[int, int] = OrderedDict()
        self._store = store
        # distinct past cases kept (least recently seen dropped first): HDFS has ~30 templates, so a few
        # thousand masked line shapes is ample (6 MB); block profiles are 31 numbers each. Keys are digests and
        # case texts are cut to CASE_TEXT_BYTES, so long lines cost the index no more than short ones.
        self.similar_lines = SimilarIndex(LINE_DIM, line_shapes, similar_k)             # key: masked line shape
        self.similar_blocks = SimilarIndex(len(EVENTS), block_profiles, similar_k)     # key: the bag of events
        if store is not None:
            self._reload(store.load())

    # -- recording ------------------------------------------------------------------------------
    def add_lines(self, results: Sequence[score_pb2.ScoreResult], vectors: Mapping[str, np.ndarray] | None = None,
                  labels: Mapping[str, int] | None = None, shapes: Sequence[str] | None = None) -> None:
        """Records flagged lines. `vectors` maps a masked line shape to its embedding (a shape seen before
        needs none); `labels` maps record ids to known labels; `shapes` are the results' masked shapes if the
        caller has them. Each entry gets its nearest earlier anomalous lines, one per distinct shape."""
        vectors, labels = vectors or {}, labels or {}
        if shapes is None:
            shapes = [line_shape(r.component, r.message) for r in results]
        items = [Item(_digest(shape), vectors.get(shape),
                      Case(r.record_id, _preview(r.message), labels.get(r.record_id, 0), r.verdict))
                 for r, shape in zip(results, shapes)]
        now = _now()
        with self._lock:  # one order for the index and the log
            found = self.similar_lines.add(items)
            entries = []
            for result, similar in zip(results, found):
                entry = score_pb2.Anomaly(id=self._next_id, recorded_time=now, line=result)
                _fill(entry.line.similar, similar)
                entries.append(entry)
                self._next_id += 1
            self._append(entries)

    def add_blocks(self, verdicts: Sequence[score_pb2.BlockVerdict], evidence: Collection[str] = ()) -> None:
        """Records block verdicts as given, each with its nearest earlier anomalous blocks (one per distinct
        bag of events, never the block itself): cosine over their event profiles (`block_profile`)."""
        items = [_block_item(v, evidence) for v in verdicts]
        now = _now()
        with self._lock:
            found = self.similar_blocks.add(items)
            entries = []
            for verdict, similar in zip(verdicts, found):
                entry = score_pb2.Anomaly(id=self._next_id, recorded_time=now, block=verdict)
                _fill(entry.block.similar, similar)
                entries.append(entry)
                self._next_id += 1
            self._append(entries)

    def record_blocks(self, verdicts: Sequence[score_pb2.BlockVerdict], closed: Sequence[bool],
                      evidence: Collection[str] = ()) -> None:
        """Enters block verdicts by the alert rule and sets each verdict's kind to what the history made of
        it. A block is recorded as an ALERT the first time it is judged anomalous, and as FINAL when it closes
        anomalous (once per distinct final story: re-judging the same closed block adds nothing). The kind
        is then ALERT if this call recorded the block's alert while it is open, FINAL when it is closed,
        INTERIM otherwise: the rule documented on ScorerService.ScoreBlock."""
        fresh: list[score_pb2.BlockVerdict] = []
        with self._lock:  # decide and record under one lock: two callers cannot both alert one block
            for v, done in zip(verdicts, closed):
                v.kind = FINAL if done else INTERIM
                if v.verdict != score_pb2.VERDICT_ANOMALY:
                    continue
                key = _digest(v.block_id, int)
                story = _story(v) if done else 0
                if key not in self._blocks:
                    self._remember_block(key, 0)
                    alert = score_pb2.BlockVerdict()
                    alert.CopyFrom(v)
                    alert.kind = ALERT
                    fresh.append(alert)
                    if not done:
                        v.kind = ALERT
                if done and self._blocks[key] != story:
                    self._remember_block(key, story)
                    fresh.append(v)
            if fresh:
                self.add_blocks(fresh, evidence)  # the Condition's lock is reentrant

    def _remember_block(self, key: int, story: int) -> None:
        self._blocks.pop(key, None)
        self._blocks[key] = story
        while len(self._blocks) > MAX_ALERTED_BLOCKS:
            self._blocks.popitem(last=False)

    def _append(self, entries: list[score_pb2.Anomaly]) -> None:
        """Stores new entries (trimmed where needed), evicts the oldest past the bounds, wakes watchers."""
        stored = []
        for entry in entries:
            if entry.ByteSize() > self.entry_max_bytes:
                trim(entry, self.entry_max_bytes)
            stored.append(_entry(entry))
        if self._store is not None and stored:
            self._store.append([e.data for e in stored])
        self._hold(stored)
        if self._store is not None and self._store.size > 2 * self.max_bytes + 16 * MiB:
            self._store.rewrite(e.data for e in self._entries)  # compact: what is held, nothing evicted
        self._lock.notify_all()

    def _hold(self, stored: Sequence[_Entry]) -> None:
        for e in stored:
            self._entries.append(e)
            self._bytes += e.cost
        while self._entries and (self._bytes > self.max_bytes or len(self._entries) > self.max_entries):
            self._bytes -= self._entries.popleft().cost

    def _reload(self, records: Iterator[bytes]) -> None:
        """Holds a store's entries again (the newest that fit), with the block alert state and the next id;
        block entries feed the similar-blocks index. (Lines' embeddings are not stored: similar past lines
        start afresh.)"""
        loaded = bad = 0
        for data in records:
            try:
                entry = score_pb2.Anomaly.FromString(data)
            except Exception:  # noqa: BLE001 - a damaged record loses one entry, not the history
                bad += 1
                continue
            loaded += 1
            self._next_id = max(self._next_id, entry.id + 1)
            self._hold([_entry(entry, data)])
            if entry.HasField("block"):
                b = entry.block
                key = _digest(b.block_id, int)
                story = self._blocks.get(key, 0)
                if b.kind == FINAL:
                    story = 0 if entry.trimmed else _story(b)  # a trimmed story is not the whole one
                self._remember_block(key, story)
        blocks = [e for e in self._entries if not e.is_line][-self.similar_blocks.capacity:]
        for start in range(0, len(blocks), 512):  # in chunks: one add compares its new keys pairwise
            self.similar_blocks.add([_block_item(e.anomaly().block) for e in blocks[start:start + 512]])
        log.info("history reloaded", extra={"entries": len(self._entries), "read": loaded, "unreadable": bad,
                                            "next_id": self._next_id, "bytes": self._bytes})

    # -- reading --------------------------------------------------------------------------------
    def page(self, size: int, before_id: int | None, min_score: float = 0.0, block_id: str = "",
             max_bytes: int = PAGE_MAX_BYTES) -> tuple[list[score_pb2.Anomaly], int | None]:
        """Up to `size` entries with id < before_id, newest first, at most `max_bytes` of them serialized,
        and the id to continue below (or None when nothing older matches)."""
        with self._lock:
            snapshot = list(self._entries)
        out: list[_Entry] = []
        total = 0
        for entry in reversed(snapshot):
            if before_id is not None and entry.id >= before_id:
                continue
            if entry.score < min_score or (block_id and block_id not in entry.block_ids):
                continue
            cost = len(entry.data) + 8  # the repeated field's tag and length
            if len(out) == size or (out and total + cost > max_bytes):
                return [e.anomaly() for e in out], out[-1].id
            out.append(entry)
            total += cost
        return [e.anomaly() for e in out], None

    @property
    def last_id(self) -> int:
        with self._lock:
            return self._next_id - 1

    @property
    def first_id(self) -> int:
        """The oldest id still held (last_id + 1 when empty)."""
        with self._lock:
            return self._entries[0].id if self._entries else self._next_id

    def wait_after(self, after_id: int, timeout: float, limit: int = 256) -> tuple[list[score_pb2.Anomaly], int]:
        """Up to `limit` entries with id > after_id that are still held, oldest first, and the id to wait after
        next; waits up to `timeout` seconds for one to be recorded."""
        with self._lock:
            self._lock.wait_for(lambda: self._next_id - 1 > after_id, timeout)
            newer: list[_Entry] = []
            for entry in reversed(self._entries):  # the newest are at the end: walk back to after_id
                if entry.id <= after_id:
                    break
                newer.append(entry)
            last = self._next_id - 1
        chosen = newer[-limit:][::-1]
        if len(newer) > limit:
            last = chosen[-1].id
        return [e.anomaly() for e in chosen], max(last, after_id)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        return len(self._entries)


def trim(entry: score_pb2.Anomaly, limit: int) -> None:
    """Cuts an entry down to `limit` serialized bytes: long lists first (a line's block ids, a block's flagged
    record ids, then its events: the first ones are kept), then long texts (ids keep their first 256 bytes),
    then the similar cases; records what was cut in `entry.trimmed`."""
    notes: list[str] = []
    target = limit - 512  # room for the note itself
    subject = entry.line if entry.HasField("line") else entry.block
    steps = (["block_ids", "record_id", "message", "similar"] if entry.HasField("line")
             else ["anomalous_record_ids", "events", "block_id", "similar"])
    for name in steps:
        excess = entry.ByteSize() - target
        if excess <= 0:
            break
        holder = getattr(subject, name)
        if name == "similar":
            notes.append(f"similar: dropped {len(holder)}")
            del holder[:]
        elif isinstance(holder, str):
            data = holder.encode("utf-8")
            floor = 256 if name.endswith("_id") else 0  # an id keeps enough to be recognised
            keep = max(floor, len(data) - excess - 8)
            if keep < len(data):
                setattr(subject, name, data[:keep].decode("utf-8", "ignore"))
                notes.append(f"{name}: kept {keep} of {len(data)} bytes")
        else:  # a repeated string field: drop from the end until the excess is covered (exact wire sizes)
            sizes = [1 + _varint_len(n) + n for n in (len(x.encode("utf-8")) for x in holder)]
            keep, cut = len(sizes), 0
            while keep > 0 and cut < excess:
                keep -= 1
                cut += sizes[keep]
            if keep < len(sizes):
                notes.append(f"{name}: kept {keep} of {len(sizes)}")
                del holder[keep:]
    entry.trimmed = "; ".join(notes)


def _varint_len(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


def block_profile(counts: Mapping[str, int], evidence: Collection[str] = ()) -> np.ndarray:
    """A block's event profile, a unit vector over E1..E30 + "unknown" (other ids share that slot): log(1 + count)
    per event, the evidence events and the routine ones each scaled to unit length, then weighted so that the
    cosine of two profiles is EVIDENCE_SHARE x cos(evidence parts) + (1 - EVIDENCE_SHARE) x cos(routine parts)."""
    x = np.zeros(len(EVENTS), np.float32)
    is_evidence = np.zeros(len(EVENTS), bool)
    other = _EVENT_INDEX["unknown"]
    for event, n in counts.items():
        i = _EVENT_INDEX.get(event, other)
        x[i] += np.log1p(n)
        is_evidence[i] |= event in evidence
    for part, share in ((is_evidence, EVIDENCE_SHARE), (~is_evidence, 1.0 - EVIDENCE_SHARE)):
        norm = float(np.linalg.norm(x[part]))
        if norm > 0:
            x[part] *= np.sqrt(share) / norm
    return x


def block_summary(events: Sequence[str], limit: int = 12) -> str:
    """E.g. "14 events: E5x3 E22 E11x3 E9x3 E26x3 E7" (event ids in order of first appearance, with counts)."""
    counts = Counter(events)
    parts = [f"{e}x{n}" if n > 1 else e for e, n in counts.items()]
    more = f" +{len(parts) - limit} more" if len(parts) > limit else ""
    return f"{len(events)} event{'s' if len(events) != 1 else ''}: {' '.join(parts[:limit])}{more}"


def _block_item(v: score_pb2.BlockVerdict, evidence: Collection[str] = ()) -> Item:
    counts = Counter(v.events)
    # the bag of events as a digest: a 100,000-event block's key costs what a short one's does
    key = _digest(repr(sorted(counts.items())))
    return Item(key, block_profile(counts, evidence), Case(v.block_id[:256], block_summary(v.events), v.label, v.verdict))


def _story(v: score_pb2.BlockVerdict) -> int:
    """A digest of what a final verdict says: its events and the model that judged them (never 0)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(v.model_version.encode())
    for e in v.events:
        h.update(e.encode() + b"\0")
    return int.from_bytes(h.digest(), "little") | 1


def _entry(entry: score_pb2.Anomaly, data: bytes | None = None) -> _Entry:
    if entry.HasField("line"):
        r = entry.line
        return _Entry(entry.id, r.score, True, r.component, tuple(r.block_ids), data or entry.SerializeToString())
    b = entry.block
    return _Entry(entry.id, b.score, False, "", (b.block_id,), data or entry.SerializeToString())


def _digest(text: str, kind: type = bytes):  # type: ignore[no-untyped-def]
    d = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(d, "little") if kind is int else d


def _preview(text: str) -> str:
    if len(text) <= CASE_TEXT_BYTES // 4:  # at most 4 bytes a character: surely short enough
        return text
    data = text.encode("utf-8")
    return text if len(data) <= CASE_TEXT_BYTES else data[:CASE_TEXT_BYTES - 3].decode("utf-8", "ignore") + "…"


def _now() -> Timestamp:
    now = Timestamp()
    now.GetCurrentTime()
    return now


def _fill(out, similar: Neighbours) -> None:  # type: ignore[no-untyped-def]
    for sim, case in similar:
        out.add(id=case.id, similarity=sim, label=case.label, text=case.text, verdict=case.verdict)
