"""A realistic HDFS_v1 log generator (`logmesh generate`): loghub raw format, labelled per block.

Why generate at all: the real HDFS.log (11M lines) is not shipped, and load tests, demos and
streaming tests need arbitrarily many lines with known ground truth. Every line is generated; the
shapes, rates and delays are modelled on the real files in ../shared/data/hdfs:

- ~4.15 new blocks/s (575,061 blocks over ~38.5 h), written by MapReduce jobs (rand, randtxt,
  sortrand, ...) into `/user/root/<job>/_temporary/_task_<tracker>_<job>_m_<task>_<try>/part-<task>.`;
  94% of stored sizes are full 64 MB blocks.
- A normal block: allocateBlock (E22) and 3 "Receiving block" (E5) within a second, in any order;
  ~43 s later (p10 28 s, p90 65 s) each replica's PacketResponder terminates (E11) and reports
  "Received block" (E9), and the namenode logs addStoredBlock (E26) per replica. 25% are read
  (Served block, E3; in the real log a read almost always comes with a failed attempt, E4, first),
  15% are verified by the block scanner (E2), and 82% are deleted with their job's output: invalidSet
  (E23) per replica in one second, then each datanode deletes its file (E21) minutes later.
  Real deletions come ~14 h after the write; here `delete_after_s` (default 20 min) so that a
  generated file of a few hours holds whole life cycles.
- Anomalous blocks (default 3%; the real log has 2.9%) follow real failure shapes, weighted roughly
  as in loghub's anomalous sessions: truncated pipelines and lost replicas (fewer E26 than E5),
  failed deletes (E20), replication timeouts (E29, E25, E18, E16, E6), write exceptions (E7, E10,
  E12, E14), unreadable blocks (E4 from every replica, never served), redundant (E27) and orphan
  (E28) addStoredBlock requests, empty packets (E13).

Lines come out in time order with block life cycles interleaved, as a namenode and 203 datanodes
would interleave them. The same seed gives the same bytes.
"""
from __future__ import annotations

import argparse
import bisect
import csv
import datetime as dt
import gzip
import heapq
import itertools
import math
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, NamedTuple

FULL_BLOCK = 64 * 1024 * 1024  # dfs.block.size in the HDFS_v1 cluster
DEFAULT_START = dt.datetime(2008, 11, 9, 20, 35, 18, tzinfo=dt.timezone.utc)  # HDFS.log's first line

# Anomaly kinds and weights, roughly their share of loghub's anomalous sessions (missing steps are
# ~46% there; replication and write failures are boosted so that short files still show them).
ANOMALY_KINDS: dict[str, float] = {
    "missing_steps": 0.35, "delete_error": 0.14, "replication_timeout": 0.12, "write_exception": 0.10,
    "serve_exception": 0.08, "orphan_add": 0.07, "redundant_add": 0.06, "empty_packet": 0.03,
    "lost_replica": 0.05,
}
# Counts seen in real Normal sessions (sessions_normal.txt): Served block per read block, failed
# serves per read block, verifications per verified block.
_E3_COUNTS, _E3_CUM = (1, 2, 3, 4, 6, 7, 8), tuple(itertools.accumulate((643, 49, 35, 218, 112, 16, 153)))
_E4_COUNTS, _E4_CUM = (1, 2, 3, 4), tuple(itertools.accumulate((49, 781, 117, 166)))
_E2_COUNTS, _E2_CUM = (1, 2, 3), tuple(itertools.accumulate((486, 121, 114)))
_JOB_NAMES = ("rand", "randtxt", "sortrand")
_WRITE_EXCEPTIONS = (
    "java.io.IOException: Connection reset by peer",
    "java.io.IOException: Could not read from stream",
    "java.io.EOFException",
    "java.io.IOException: Broken pipe",
)


class GeneratedLine(NamedTuple):
    """One generated line (no newline), the loghub event id it was written as, and its block."""

    text: str
    event_id: str
    block_id: str


@dataclass
class GeneratorConfig:
    """What to generate. `blocks` caps block life cycles (all written in full); `lines` stops after
    exactly that many lines, cutting the last sessions short as HDFS_20000.log does. Neither: 10,000 blocks."""

    blocks: int | None = None
    lines: int | None = None
    seed: int = 0
    anomaly_rate: float = 0.03
    start: dt.datetime = DEFAULT_START
    blocks_per_second: float = 4.15
    delete_after_s: float = 1200.0
    datanodes: int = 203
    anomaly_kinds: dict[str, float] = field(default_factory=lambda: dict(ANOMALY_KINDS))

    def __post_init__(self) -> None:
        if self.blocks is None and self.lines is None:
            self.blocks = 10_000
        if not 0.0 <= self.anomaly_rate <= 1.0:
            raise ValueError(f"anomaly_rate must be within [0, 1], got {self.anomaly_rate}")
        if self.blocks_per_second <= 0:
            raise ValueError("blocks_per_second must be positive")
        if not 4 <= self.datanodes <= 60_000:
            raise ValueError("datanodes must be between 4 and 60000")


@dataclass
class _Job:
    """A MapReduce job writing part files; its output is deleted together, as in the real log."""

    path_prefix: str
    task_kind: str
    blocks_left: int
    delete_at: float | None
    task: int = -1
    task_blocks_left: int = 0
    task_path: str = ""


# An event before it is stamped: (time, pid, "LEVEL component: message", event id).
_Event = tuple[float, int, str, str]


class HdfsLogGenerator:
    """Iterate `lines()` once. `labels` fills in as blocks first appear ("Normal"/"Anomaly", in log
    order); `kinds` gives each anomalous block's failure kind."""

    def __init__(self, config: GeneratorConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.labels: dict[str, str] = {}
        self.kinds: dict[str, str] = {}
        self._pending_labels: dict[str, str] = {}
        self._block_ids: set[str] = set()
        self._t0 = config.start.timestamp()
        self._nodes = self._make_nodes(config.datanodes)
        self._tracker = (config.start - dt.timedelta(minutes=5)).strftime("%Y%m%d%H%M")  # jobtracker started first
        self._job_seq = 0
        self._run = 0
        self._job: _Job | None = None
        kinds = [k for k, w in config.anomaly_kinds.items() if w > 0]
        if not kinds:
            raise ValueError("anomaly_kinds needs at least one kind with a positive weight")
        self._kinds = kinds
        self._kind_cum = list(itertools.accumulate(config.anomaly_kinds[k] for k in kinds))

    # ---- cluster layout -------------------------------------------------------------------
    def _make_nodes(self, n: int) -> list[str]:
        # The real cluster's datanodes sit in 10.250.0.0/16 and 10.251.0.0/16.
        nodes: set[str] = set()
        while len(nodes) < n:
            nodes.add(f"10.{self.rng.choice((250, 251))}.{self.rng.randrange(256)}.{self.rng.randrange(1, 255)}")
        return sorted(nodes)

    def _new_block_id(self) -> str:
        while True:
            bid = f"blk_{self.rng.getrandbits(64) - (1 << 63)}"  # Java's signed long, as HDFS prints it
            if bid not in self._block_ids:
                self._block_ids.add(bid)
                return bid

    def _xceiver_pid(self, t: float) -> int:
        # DataNode thread ids grow through the run (143 at the start, ~27,000 after 38 h).
        return 140 + int((t - self._t0) * 0.19) + self.rng.randrange(200)

    def _handler_pid(self) -> int:
        return self.rng.randrange(26, 36)  # the namenode's 10 IPC handler threads

    def _next_job(self, t: float) -> _Job:
        rng = self.rng
        self._job_seq += 1
        name = _JOB_NAMES[(self._job_seq - 1) % len(_JOB_NAMES)]
        if name == _JOB_NAMES[0]:
            self._run += 1
        run = "" if self._run == 1 else str(self._run)
        n_blocks = rng.randint(200, 2500)
        delete_at = None
        if rng.random() < 0.82:  # 82% of real normal blocks are deleted within the log
            duration = n_blocks / self.config.blocks_per_second
            delete_at = t + duration + self.config.delete_after_s * math.exp(rng.gauss(0.0, 0.5))
        prefix = f"/user/root/{name}{run}/_temporary/_task_{self._tracker}_{self._job_seq:04d}"
        return _Job(prefix, "r" if name.startswith("sort") else "m", n_blocks, delete_at)

    def _next_file(self, t: float) -> tuple[str, bool]:
        """The file the next block belongs to, and whether the block is its file's last."""
        job = self._job
        if job is None or job.blocks_left <= 0:
            job = self._job = self._next_job(t)
        if job.task_blocks_left <= 0:
            job.task += 1 + (self.rng.random() < 0.1)  # a few task numbers write nothing
            attempt = 1 if self.rng.random() < 0.03 else 0
            job.task_path = f"{job.path_prefix}_{job.task_kind}_{job.task:06d}_{attempt}/part-{job.task:05d}."
            job.task_blocks_left = self.rng.choices((1, 2, 3), cum_weights=(70, 95, 100))[0]
        job.blocks_left -= 1
        job.task_blocks_left -= 1
        return job.task_path, job.task_blocks_left == 0

    # ---- one block's life cycle -----------------------------------------------------------
    def _block(self, t0: float) -> tuple[str, str, list[_Event]]:
        rng = self.rng
        bid = self._new_block_id()
        path, last = self._next_file(t0)
        job = self._job
        assert job is not None
        size = FULL_BLOCK
        if last and rng.random() < 0.15:
            size = int(10 ** rng.uniform(3.0, math.log10(FULL_BLOCK)))
        kind = ""
        if rng.random() < self.config.anomaly_rate:
            x = rng.random() * self._kind_cum[-1]
            kind = self._kinds[min(len(self._kinds) - 1, bisect.bisect_right(self._kind_cum, x))]
        pipeline = rng.sample(self._nodes, 3)
        ev: list[_Event] = []
        handler = self._handler_pid
        ev.append((t0 + rng.random() * 0.8, handler(),
                   f"INFO dfs.FSNamesystem: BLOCK* NameSystem.allocateBlock: {path} {bid}", "E22"))

        if kind == "missing_steps":
            # The commonest real anomaly: the pipeline never completes ("5 22", "22 5 5", ...).
            for node in pipeline[: rng.choice((1, 2))]:
                ev.append(self._receiving(t0, node, bid))
            return bid, kind, ev

        for node in pipeline:
            ev.append(self._receiving(t0, node, bid))
        # Writing a full block takes ~43 s (lognormal; p10 28 s, p90 65 s in HDFS_5k.log); small ones ~1 s.
        write = 43.0 * math.exp(rng.gauss(0.0, 0.35)) * max(size / FULL_BLOCK, 0.02) + 0.5
        stored: list[str] = []
        if kind == "write_exception":
            stored = self._write_failure(t0, write, pipeline, bid, size, ev)
        else:
            for i, node in enumerate(pipeline):
                te = t0 + write + (2 - i) * rng.random() * 0.5  # the last datanode acks first
                pid = self._xceiver_pid(te)
                ev.append((te, pid, f"INFO dfs.DataNode$PacketResponder: PacketResponder {2 - i} for block {bid} terminating", "E11"))
                ev.append((te + 0.001, pid, f"INFO dfs.DataNode$PacketResponder: Received block {bid} of size {size} from /{node}", "E9"))
                if kind == "lost_replica" and i == 2:
                    continue  # the datanode wrote it but the namenode never heard: fewer E26 than E5
                ev.append((te + rng.random(), handler(),
                           f"INFO dfs.FSNamesystem: BLOCK* NameSystem.addStoredBlock: blockMap updated: {node}:50010 is added to {bid} size {size}", "E26"))
                stored.append(node)
        t_written = t0 + write + 1.0
        if kind == "empty_packet":
            for node in pipeline:
                ev.append((t0 + write * rng.random(), self._xceiver_pid(t0),
                           f"INFO dfs.DataNode$BlockReceiver: Receiving empty packet for block {bid}", "E13"))

        # Events that must precede the deletion come first; the deletion then waits for them.
        t_last = t_written
        if kind == "replication_timeout" or (not kind and rng.random() < 0.004):
            # A replica is re-made elsewhere (0.4% of real Normal blocks); the anomaly is the
            # pending replication timing out first (E29) and the namenode asking again.
            stored = self._replicate(t_written, bid, size, stored, ev, timeout=bool(kind))
            t_last = max(e[0] for e in ev)
        if kind == "redundant_add" and stored:
            t_last = t_written + rng.uniform(1.0, 600.0)
            ev.append((t_last, handler(),
                       f"WARN dfs.FSNamesystem: BLOCK* NameSystem.addStoredBlock: Redundant addStoredBlock request received for {bid} on {rng.choice(stored)}:50010 size {size}", "E27"))
        delete_at = job.delete_at
        if kind in ("delete_error", "orphan_add") and delete_at is None:
            delete_at = t_written + self.config.delete_after_s * math.exp(rng.gauss(0.0, 0.5))
        if delete_at is not None:
            delete_at = max(delete_at, t_last + rng.uniform(30.0, 300.0))
        horizon = delete_at if delete_at is not None else math.inf

        if kind == "serve_exception" and stored:
            tr = self._before(t_written, t_written + rng.expovariate(1 / 900.0), horizon - 60.0)
            for _ in range(rng.randint(3, 15)):  # every replica fails, and no read ever succeeds
                ev.append((tr + rng.uniform(0.0, 30.0), self._xceiver_pid(tr),
                           f"WARN dfs.DataNode$DataXceiver: {rng.choice(stored)}:50010:Got exception while serving {bid} to /{rng.choice(self._nodes)}:", "E4"))
        elif stored and rng.random() < 0.25:
            self._reads(t_written, bid, stored, ev, horizon)
        if stored and rng.random() < 0.149:
            for _ in range(rng.choices(_E2_COUNTS, cum_weights=_E2_CUM)[0]):
                tv = self._before(t_written, t_written + 600.0 * math.exp(rng.gauss(0.0, 1.0)), horizon - 1.0)
                ev.append((tv, 13, f"INFO dfs.DataBlockScanner: Verification succeeded for {bid}", "E2"))
        if delete_at is not None and stored:
            self._delete(delete_at, bid, size, stored, kind, ev)
        return bid, kind, ev

    def _receiving(self, t0: float, node: str, bid: str) -> _Event:
        # HDFS 0.18 logs the local address as both src and dest; the real log does exactly this.
        return (t0 + self.rng.random() * 0.9, self._xceiver_pid(t0),
                f"INFO dfs.DataNode$DataXceiver: Receiving block {bid} src: /{node}:{self.rng.randrange(32768, 61000)} dest: /{node}:50010",
                "E5")

    def _write_failure(self, t0: float, write: float, pipeline: list[str], bid: str, size: int,
                       ev: list[_Event]) -> list[str]:
        """A datanode in the pipeline fails mid-write: the ones before it keep the block."""
        rng = self.rng
        j = rng.randrange(3)
        tf = t0 + write * rng.uniform(0.2, 1.0)
        pid = self._xceiver_pid(tf)
        exc = rng.choice(_WRITE_EXCEPTIONS)
        if rng.random() < 0.6:
            ev.append((tf, pid, f"INFO dfs.DataNode$BlockReceiver: Exception in receiveBlock for block {bid} {exc}", "E14"))
        ev.append((tf + 0.01, pid, f"INFO dfs.DataNode$DataXceiver: writeBlock {bid} received exception {exc}", "E7"))
        if j > 0:
            up = pipeline[j - 1]
            if rng.random() < 0.6:
                ev.append((tf + rng.random(), self._xceiver_pid(tf),
                           f"INFO dfs.DataNode$BlockReceiver: {up}:50010:Exception writing block {bid} to mirror {pipeline[j]}:50010", "E12"))
            if rng.random() < 0.7:
                ev.append((tf + 1.0 + rng.random(), self._xceiver_pid(tf),
                           f"INFO dfs.DataNode$PacketResponder: PacketResponder {bid} {2 - (j - 1)} Exception {rng.choice(_WRITE_EXCEPTIONS)}", "E10"))
        stored = []
        for i in range(j):
            node, te = pipeline[i], tf + 1.0 + rng.random() * 2.0
            pid = self._xceiver_pid(te)
            ev.append((te, pid, f"INFO dfs.DataNode$PacketResponder: PacketResponder {j - 1 - i} for block {bid} terminating", "E11"))
            ev.append((te + 0.001, pid, f"INFO dfs.DataNode$PacketResponder: Received block {bid} of size {size} from /{node}", "E9"))
            ev.append((te + rng.random(), self._handler_pid(),
                       f"INFO dfs.FSNamesystem: BLOCK* NameSystem.addStoredBlock: blockMap updated: {node}:50010 is added to {bid} size {size}", "E26"))
            stored.append(node)
        return stored

    def _replicate(self, t: float, bid: str, size: int, stored: list[str], ev: list[_Event],
                   timeout: bool) -> list[str]:
        rng = self.rng
        if not stored:
            return stored
        src = rng.choice(stored)
        dst = rng.choice([n for n in rng.sample(self._nodes, 5) if n not in stored] or [self._nodes[0]])
        ta = t + rng.uniform(60.0, 900.0)
        ev.append((ta, 19, f"INFO dfs.FSNamesystem: BLOCK* ask {src}:50010 to replicate {bid} to datanode(s) {dst}:50010", "E25"))
        ev.append((ta + rng.uniform(1.0, 3.0), 19, f"INFO dfs.DataNode: {src}:50010 Starting thread to transfer block {bid} to {dst}:50010", "E18"))
        if timeout:
            # dfs.replication.pending.timeout is 5 minutes: the namenode gives up and asks again.
            ta += 300.0 + rng.uniform(0.0, 30.0)
            ev.append((ta, 16, f"WARN dfs.PendingReplicationBlocks$PendingReplicationMonitor: PendingReplicationMonitor timed out block {bid}", "E29"))
            ta += rng.uniform(1.0, 20.0)
            src = rng.choice(stored)
            ev.append((ta, 19, f"INFO dfs.FSNamesystem: BLOCK* ask {src}:50010 to replicate {bid} to datanode(s) {dst}:50010", "E25"))
            ev.append((ta + rng.uniform(1.0, 3.0), 19, f"INFO dfs.DataNode: {src}:50010 Starting thread to transfer block {bid} to {dst}:50010", "E18"))
            if rng.random() < 0.3:
                return stored  # the second attempt never completes either
        tt = ta + 3.0 + rng.uniform(0.0, 8.0)
        pid = self._xceiver_pid(tt)
        ev.append((tt, pid, f"INFO dfs.DataNode$DataTransfer: {src}:50010:Transmitted block {bid} to /{dst}:50010", "E16"))
        ev.append((tt + rng.random(), pid + 1, f"INFO dfs.DataNode$DataXceiver: Received block {bid} src: /{dst}:{rng.randrange(32768, 61000)} dest: /{dst}:50010 of size {size}", "E6"))
        ev.append((tt + 1.0 + rng.random(), self._handler_pid(),
                   f"INFO dfs.FSNamesystem: BLOCK* NameSystem.addStoredBlock: blockMap updated: {dst}:50010 is added to {bid} size {size}", "E26"))
        return [*stored, dst]

    def _reads(self, t: float, bid: str, stored: list[str], ev: list[_Event], horizon: float) -> None:
        """Tasks read the block; in the real log a read nearly always fails on one replica first (E4)."""
        rng = self.rng
        tr = self._before(t, t + rng.expovariate(1 / 900.0), horizon - 60.0)
        if rng.random() < 0.94:
            for _ in range(rng.choices(_E4_COUNTS, cum_weights=_E4_CUM)[0]):
                ev.append((tr + rng.uniform(0.0, 20.0), self._xceiver_pid(tr),
                           f"WARN dfs.DataNode$DataXceiver: {rng.choice(stored)}:50010:Got exception while serving {bid} to /{rng.choice(self._nodes)}:", "E4"))
        for _ in range(rng.choices(_E3_COUNTS, cum_weights=_E3_CUM)[0]):
            ev.append((tr + rng.uniform(0.0, 60.0), self._xceiver_pid(tr),
                       f"INFO dfs.DataNode$DataXceiver: {rng.choice(stored)}:50010 Served block {bid} to /{rng.choice(self._nodes)}", "E3"))

    def _before(self, lo: float, t: float, hi: float) -> float:
        """`t`, or a uniform time in [lo, hi) when `t` would fall after the block is deleted."""
        return t if t < hi else lo + self.rng.random() * max(hi - lo, 0.0)

    def _delete(self, td: float, bid: str, size: int, stored: list[str], kind: str, ev: list[_Event]) -> None:
        rng = self.rng
        pid = self._handler_pid()
        for node in stored:  # one namenode call invalidates every replica in the same second
            ev.append((td + rng.random() * 0.5, pid,
                       f"INFO dfs.FSNamesystem: BLOCK* NameSystem.delete: {bid} is added to invalidSet of {node}:50010", "E23"))
        failed = rng.randrange(len(stored)) if kind == "delete_error" else -1
        for i, node in enumerate(stored):
            tdel = td + rng.uniform(5.0, 600.0)  # each datanode deletes at its next heartbeat
            fpid = 19 if rng.random() < 0.9 else 18
            if i == failed:
                ev.append((tdel, fpid, f"WARN dfs.FSDataset: Unexpected error trying to delete block {bid}. BlockInfo not found in volumeMap.", "E20"))
            else:
                ev.append((tdel, fpid, f"INFO dfs.FSDataset: Deleting block {bid} file /mnt/hadoop/dfs/data/current/subdir{rng.randrange(64)}/{bid}", "E21"))
        if kind == "orphan_add":
            # A datanode reports its replica after the file is gone.
            ev.append((td + rng.uniform(1.0, 120.0), self._handler_pid(),
                       f"INFO dfs.FSNamesystem: BLOCK* NameSystem.addStoredBlock: addStoredBlock request received for {bid} on {rng.choice(stored)}:50010 size {size} But it does not belong to any file.", "E28"))

    # ---- the merged stream ----------------------------------------------------------------
    def lines(self) -> Iterator[GeneratedLine]:
        """All lines in time order. A block's events are queued when it is allocated; the heap then
        holds only blocks still alive (write, reads, pending deletion), so memory stays bounded."""
        cfg, rng = self.config, self.rng
        heap: list[tuple[float, int, int, str, str, str]] = []
        push, pop = heapq.heappush, heapq.heappop
        seq = itertools.count()
        max_blocks, max_lines = cfg.blocks, cfg.lines
        rate = cfg.blocks_per_second
        next_t, created, emitted = self._t0, 0, 0
        last_sec, prefix = -1, ""
        labels, pending = self.labels, self._pending_labels
        while max_lines is None or emitted < max_lines:
            if (max_blocks is None or created < max_blocks) and (not heap or next_t <= heap[0][0]):
                bid, kind, events = self._block(next_t)
                pending[bid] = "Anomaly" if kind else "Normal"
                if kind:
                    self.kinds[bid] = kind
                for t, pid, body, eid in events:
                    push(heap, (t, next(seq), pid, body, eid, bid))
                created += 1
                next_t += rng.expovariate(rate)
                continue
            if not heap:
                break
            t, _, pid, body, eid, bid = pop(heap)
            sec = int(t)
            if sec != last_sec:  # stamps change ~4 times per 80 lines; format only then
                last_sec, prefix = sec, time.strftime("%y%m%d %H%M%S", time.gmtime(sec))
            if bid not in labels:
                labels[bid] = pending.pop(bid)
            emitted += 1
            yield GeneratedLine(f"{prefix} {pid} {body}", eid, bid)


def generate(config: GeneratorConfig) -> Iterator[GeneratedLine]:
    """Generated lines for `config` (see HdfsLogGenerator for the labels)."""
    return HdfsLogGenerator(config).lines()


@dataclass
class GenerateSummary:
    """What `write_generated` wrote."""

    output: str
    labels: str | None
    lines: int
    blocks: int
    anomalous_blocks: int
    seconds: float

    @property
    def lines_per_s(self) -> float:
        return self.lines / self.seconds if self.seconds > 0 else 0.0


def default_labels_path(output: str | Path) -> Path:
    """`HDFS_gen.log` -> `HDFS_gen_anomaly_label.csv` (not `.log`, so a folder replay skips it)."""
    p = Path(output)
    name = p.name
    for suffix in (".gz", ".log"):
        name = name.removesuffix(suffix)
    return p.with_name(f"{name}_anomaly_label.csv")


def write_generated(config: GeneratorConfig, output: str | Path, labels: str | Path | None = None
                    ) -> GenerateSummary:
    """Writes the log to `output` ("-" = stdout; "*.gz" = gzip) and loghub's `BlockId,Label` CSV
    to `labels` (default beside the output; none for stdout unless asked)."""
    started = time.perf_counter()
    gen = HdfsLogGenerator(config)
    out: IO[str]
    to_stdout = str(output) == "-"
    if to_stdout:
        out = sys.stdout
    elif str(output).endswith(".gz"):
        out = gzip.open(output, "wt", encoding="utf-8", compresslevel=6)  # type: ignore[assignment]
    else:
        out = open(output, "w", encoding="utf-8", newline="\n", buffering=1 << 20)
    n = 0
    try:
        chunk: list[str] = []
        for text, _eid, _bid in gen.lines():
            chunk.append(text)
            if len(chunk) >= 8192:
                out.write("\n".join(chunk) + "\n")
                n += len(chunk)
                chunk.clear()
        if chunk:
            out.write("\n".join(chunk) + "\n")
            n += len(chunk)
    finally:
        if to_stdout:
            out.flush()
        else:
            out.close()
    labels_path: Path | None = Path(labels) if labels else (None if to_stdout else default_labels_path(output))
    if labels_path is not None:
        with open(labels_path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(("BlockId", "Label"))
            w.writerows(gen.labels.items())
    anomalous = sum(1 for v in gen.labels.values() if v == "Anomaly")
    return GenerateSummary(str(output), str(labels_path) if labels_path else None, n, len(gen.labels),
                           anomalous, time.perf_counter() - started)


# ---- CLI glue (wired by clients/python/logmesh/cli.py) ------------------------------------------
def add_generate_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds `logmesh generate` options to `p` and sets func=run_generate."""
    p.description = p.description or ("Write realistic HDFS_v1 log lines (loghub raw format) with interleaved "
                                      "block life cycles and labelled anomalous blocks, plus a BlockId,Label CSV.")
    p.add_argument("-o", "--output", default="HDFS_generated.log",
                   help="log file to write; '.gz' compresses, '-' writes stdout (default %(default)s)")
    p.add_argument("--labels", default=None,
                   help="labels CSV (default: beside the output, <name>_anomaly_label.csv)")
    p.add_argument("--blocks", type=int, default=None, help="block life cycles to write in full (default 10000)")
    p.add_argument("--lines", type=int, default=None, help="stop after exactly this many lines")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default %(default)s)")
    p.add_argument("--anomaly-rate", type=float, default=0.03, help="share of anomalous blocks (default %(default)s)")
    p.add_argument("--start", default=DEFAULT_START.strftime("%Y-%m-%d %H:%M:%S"),
                   help="time of the first line, UTC (default %(default)s, as in HDFS.log)")
    p.add_argument("--blocks-per-second", type=float, default=4.15,
                   help="new blocks per second of log time (default %(default)s, as in HDFS.log)")
    p.add_argument("--delete-after", type=float, default=1200.0,
                   help="median seconds from a job's end to its output's deletion (default %(default)s)")
    p.set_defaults(func=run_generate)
    return p


def config_from_args(args: argparse.Namespace) -> GeneratorConfig:
    start = dt.datetime.fromisoformat(args.start)
    if start.tzinfo is None:
        start = start.replace(tzinfo=dt.timezone.utc)
    return GeneratorConfig(blocks=args.blocks, lines=args.lines, seed=args.seed, anomaly_rate=args.anomaly_rate,
                           start=start, blocks_per_second=args.blocks_per_second,
                           delete_after_s=args.delete_after)


def run_generate(args: argparse.Namespace) -> int:
    """`logmesh generate`: writes the log and labels, prints a one-line summary to stderr."""
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    s = write_generated(config, args.output, args.labels)
    print(f"wrote {s.lines:,} lines, {s.blocks:,} blocks ({s.anomalous_blocks:,} anomalous) to {s.output}"
          + (f", labels in {s.labels}" if s.labels else "")
          + f" in {s.seconds:.1f} s ({s.lines_per_s:,.0f} lines/s)", file=sys.stderr)
    return 0
