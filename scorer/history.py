"""The anomaly history: a newest-first log of the anomalous lines and blocks the streaming job committed to the
anomalies topic (scorer/history_service.py reads them), each entered once, with its history id.

Bounded by bytes: entries are held serialized (what they cost is what they are), the oldest go first once
the total passes `max_bytes`, and one entry is at most `entry_max_bytes` (a longer one is stored trimmed and
says so in `Anomaly.trimmed`). A page is cut by bytes too, so it always fits a gRPC message. A block's FINAL
verdict is entered once per distinct final story (re-judging the same closed block adds nothing).

Durable with a store (scorer/state.py): every entry is appended there with its id and its topic coordinates
(`Anomaly.source`), and the next offset to read of each partition is saved beside it, so a restarted scorer
holds the same entries under the same ids and reads on where it stopped: nothing twice, nothing lost.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence

from google.protobuf.timestamp_pb2 import Timestamp

from logmesh.runtime.bytecache import MiB
from logmesh.scorer.state import CounterStore, HistoryStore
from logmesh.v1 import score_pb2

log = logging.getLogger("logmesh.scorer.history")
#: ~150,000 typical entries (a flagged line with five similar cases is ~800 bytes); 64 KB lines count as such.
DEFAULT_HISTORY_BYTES = 128 * MiB
#: One entry at most: a 64 KB line stays whole; a 100,000-event block keeps its first ~30,000 events.
ENTRY_MAX_BYTES = 128 * 1024
#: A ListAnomalies page at most: under grpc's default 4 MiB receive limit, so any client can read it.
PAGE_MAX_BYTES = 4 * MiB - 4096
#: Blocks whose final story is remembered, so each is recorded once (~100 bytes each).
MAX_FINAL_BLOCKS = 200_000
MAX_REWINDS = 1000  # recreated partitions remembered
_META_BYTES = 200  # what an entry's metadata costs beside its bytes (the object, its tuple of block ids)
ALERT, FINAL, INTERIM = (score_pb2.BLOCK_VERDICT_KIND_ALERT, score_pb2.BLOCK_VERDICT_KIND_FINAL,
                         score_pb2.BLOCK_VERDICT_KIND_INTERIM)


@dataclass(frozen=True, slots=True)
class Rewind:
    """A partition read again from `offset` after the entry `after_id`: the entries after it are the new topic's."""
    after_id: int
    where: str  # "topic/partition"
    offset: int


@dataclass(frozen=True, slots=True)
class _Entry:
    """One stored entry: its serialized Anomaly and what filters read, so a page parses only what it returns."""
    id: int
    score: float
    is_line: bool
    component: str
    block_ids: tuple[str, ...]
    data: bytes
    record_id: str = ""  # a line's; "" for a block

    @property
    def cost(self) -> int:
        return (len(self.data) + _META_BYTES + len(self.component) + len(self.record_id)
                + sum(len(b) + 50 for b in self.block_ids))

    def anomaly(self) -> score_pb2.Anomaly:
        return score_pb2.Anomaly.FromString(self.data)


def source(topic: str, partition: int, offset: int) -> str:
    """An entry's coordinates in the anomalies topic, as Anomaly.source spells them."""
    return f"{topic}/{partition}/{offset}"


def next_offset(coordinates: str) -> tuple[str, int] | None:
    """("topic/partition", offset + 1) of an Anomaly.source, or None when it has none."""
    where, _, offset = coordinates.rpartition("/")
    return (where, int(offset) + 1) if where and offset.isdigit() else None


class AnomalyHistory:
    def __init__(self, max_bytes: int = DEFAULT_HISTORY_BYTES, max_entries: int = 100_000,
                 entry_max_bytes: int = ENTRY_MAX_BYTES, store: HistoryStore | None = None,
                 positions: CounterStore | None = None) -> None:
        if entry_max_bytes > PAGE_MAX_BYTES:
            raise ValueError(f"entry_max_bytes must be at most {PAGE_MAX_BYTES}: every entry must fit a page")
        self.max_bytes, self.max_entries, self.entry_max_bytes = max_bytes, max_entries, entry_max_bytes
        self._entries: deque[_Entry] = deque()
        self._bytes = 0
        self._next_id = 1
        self._lock = threading.Condition()
        # block id digest -> digest of its recorded final story; oldest first
        self._finals: OrderedDict[int, int] = OrderedDict()
        # "topic/partition" -> the next offset to read there
        self._positions: dict[str, int] = {}
        # partitions read again from the start (a recreated topic), in id order: what follows each is the new topic
        self._rewinds: deque[Rewind] = deque(maxlen=MAX_REWINDS)
        self._store, self._position_store = store, positions
        # what an entry is marked with when served (Anomaly.suppressed_by_feedback_id; the analyst's feedback,
        # scorer/analyst/feedback.py): asked at serve time, so a suppression applies at once and ends at its expiry
        self.mark: Callable[[score_pb2.Anomaly], str] | None = None
        self.on_recorded: Callable[[list[score_pb2.Anomaly]], None] | None = None  # new entries, after storing
        self._listeners: list[Callable[[list[score_pb2.Anomaly]], None]] = []  # on_add's, after on_recorded
        if store is not None:
            self._reload(store.load())
        if positions is not None:
            for where, offset in positions.load().items():  # covers what entries cannot say: skipped messages,
                self._positions[where] = max(offset, self._positions.get(where, 0))  # partitions all evicted

    # -- recording ------------------------------------------------------------------------------
    def on_add(self, listener: Callable[[list[score_pb2.Anomaly]], None]) -> None:
        """`listener(entries)` after new entries are entered (with their ids), from the adding thread; it must
        not block (the incident book only wakes its own thread)."""
        self._listeners.append(listener)

    def add(self, entries: Sequence[score_pb2.Anomaly], read_to: Mapping[str, int] | None = None) -> list[score_pb2.Anomaly]:
        """Enters anomalies read from the topic (each with its `source`), in order, and returns those entered
        with their ids: a FINAL block verdict whose story was entered before is skipped. `read_to` is the
        reader's position after them ("topic/partition" -> next offset), saved with the entries."""
        now = _now()
        with self._lock:  # one order for ids, the log and the positions
            fresh = []
            for given in entries:
                where = next_offset(given.source)
                if where is not None and where[1] <= self._positions.get(where[0], 0):
                    continue  # read before (a reader that went back): entered once
                if where is not None:
                    self._positions[where[0]] = where[1]
                if given.HasField("block") and given.block.kind == FINAL and not self._new_final(given.block):
                    continue
                entry = score_pb2.Anomaly()
                entry.CopyFrom(given)
                entry.id = self._next_id
                if not entry.HasField("recorded_time"):
                    entry.recorded_time.CopyFrom(now)
                self._next_id += 1
                fresh.append(entry)
            for where, offset in (read_to or {}).items():
                self._positions[where] = max(offset, self._positions.get(where, 0))
            self._append(fresh)
            if self._position_store is not None and (fresh or read_to):
                self._position_store.save(dict(self._positions))
        if fresh and self.on_recorded is not None:
            self.on_recorded(fresh)
        for listener in self._listeners if fresh else ():
            listener(fresh)
        return fresh

    def _new_final(self, block: score_pb2.BlockVerdict) -> bool:
        key, story = _digest(block.block_id, int), _story(block)
        if self._finals.get(key) == story:
            return False
        self._remember_final(key, story)
        return True

    def _remember_final(self, key: int, story: int) -> None:
        self._finals.pop(key, None)
        self._finals[key] = story
        while len(self._finals) > MAX_FINAL_BLOCKS:
            self._finals.popitem(last=False)

    def rewind(self, where: str, offset: int) -> None:
        """Reads `where` ("topic/partition") again from `offset`: the topic was recreated under its name. The
        entries entered after this one (`rewinds`) come from the new topic, whose offsets restart."""
        with self._lock:
            self._positions[where] = offset
            self._rewinds.append(Rewind(self._next_id - 1, where, offset))
            if self._position_store is not None:
                self._position_store.save(dict(self._positions))

    def rewinds(self) -> list["Rewind"]:
        """The partitions this history read again from the start, oldest first (at a restart, reload finds
        them again where a partition's offsets go back)."""
        with self._lock:
            return list(self._rewinds)

    def positions(self) -> dict[str, int]:
        """"topic/partition" -> the next offset to read there (what was read and entered, or skipped)."""
        with self._lock:
            return dict(self._positions)

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
        if stored:
            self._lock.notify_all()

    def _hold(self, stored: Sequence[_Entry]) -> None:
        for e in stored:
            self._entries.append(e)
            self._bytes += e.cost
        while self._entries and (self._bytes > self.max_bytes or len(self._entries) > self.max_entries):
            self._bytes -= self._entries.popleft().cost

    def _reload(self, records: Iterator[bytes]) -> None:
        """Holds a store's entries again (the newest that fit), with the next id, the final stories and the
        positions their sources say."""
        loaded = bad = 0
        read: dict[str, int] = {}  # "topic/partition" -> the next offset after its latest entry, in id order
        for data in records:
            try:
                entry = score_pb2.Anomaly.FromString(data)
            except Exception:  # noqa: BLE001 - a damaged record loses one entry, not the history
                bad += 1
                continue
            loaded += 1
            self._next_id = max(self._next_id, entry.id + 1)
            self._hold([_entry(entry, data)])
            where = next_offset(entry.source)
            if where is not None:
                if where[0] in read and where[1] <= read[where[0]]:  # offsets went back: the topic was recreated
                    self._rewinds.append(Rewind(entry.id - 1, where[0], where[1] - 1))
                read[where[0]] = where[1]
            if entry.HasField("block") and entry.block.kind == FINAL and not entry.trimmed:
                self._remember_final(_digest(entry.block.block_id, int), _story(entry.block))  # a trimmed story
        self._positions.update(read)
        log.info("history reloaded", extra={"entries": len(self._entries), "read": loaded,  # is not the whole one
                                            "unreadable": bad, "next_id": self._next_id, "bytes": self._bytes})

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
                return self._served(out), out[-1].id
            out.append(entry)
            total += cost
        return self._served(out), None

    def _served(self, entries: Sequence[_Entry]) -> list[score_pb2.Anomaly]:
        """The entries as served: parsed, marked (self.mark)."""
        out = [e.anomaly() for e in entries]
        if self.mark is not None:
            for a in out:
                a.suppressed_by_feedback_id = self.mark(a)
        return out

    def find(self, record_id: str = "", block_id: str = "") -> list[score_pb2.Anomaly]:
        """The held entries of a line (its record id) or naming a block (its verdicts and its flagged lines),
        newest first, unmarked."""
        with self._lock:
            snapshot = list(self._entries)
        return [e.anomaly() for e in reversed(snapshot)
                if (record_id and e.record_id == record_id) or (block_id and block_id in e.block_ids)]

    def grouped_prefix(self, cursor: Mapping[str, int], after_rewind: Mapping[str, int | None] | None = None) -> int:
        """The highest id L such that every held entry up to L comes from before `cursor` ("topic/partition" ->
        the next offset not yet taken there; an incident book's cursor): where a reader of these entries that
        stopped at `cursor` resumes in this history, whose ids interleave the partitions its own way. For the
        partitions in `after_rewind` (recreated topics) the entries after this history's rewind of them are
        compared with its value instead (None: the rewind's own offset, the new topic's start)."""
        after_rewind = after_rewind or {}
        with self._lock:
            snapshot, last, rewinds = list(self._entries), self._next_id - 1, deque(self._rewinds)
        at = dict(cursor)
        for entry in snapshot:
            while rewinds and rewinds[0].after_id < entry.id:
                r = rewinds.popleft()
                if r.where in after_rewind:
                    value = after_rewind[r.where]
                    at[r.where] = r.offset if value is None else value
            where = next_offset(entry.anomaly().source)
            if where is None or where[1] > at.get(where[0], 0):
                return entry.id - 1
        return last

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
        return self._served(chosen), max(last, after_id)

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
        return _Entry(entry.id, r.score, True, r.component, tuple(r.block_ids), data or entry.SerializeToString(),
                      r.record_id)
    b = entry.block
    return _Entry(entry.id, b.score, False, "", (b.block_id,), data or entry.SerializeToString())


def _digest(text: str, kind: type = bytes):  # type: ignore[no-untyped-def]
    d = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(d, "little") if kind is int else d


def _now() -> Timestamp:
    now = Timestamp()
    now.GetCurrentTime()
    return now
