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

Beyond HDFS_v1 (`--failure-kinds`, ingest/failure_kinds.py lists their templates), episodes on one
DataNode with lines HDFS_v1 never had: a memory leak (GC pauses growing over minutes, slow acks and
flushes, heartbeat RPC timeouts, then OutOfMemoryError and a restart), an OOM burst (heap or native
threads, failed writes), a full disk (failed writes, refused blocks, maybe a failed volume) and a
network partition (connect timeouts, lost heartbeat, the node declared dead, re-replication). The
blocks routed through the sick node fail and are labelled with the episode's kind; normal blocks
avoid the node meanwhile. Per-block draws pay for episode blocks, so the anomaly rate holds.

Lines come out in time order with block life cycles interleaved, as a namenode and 203 datanodes
would interleave them. The same seed gives the same bytes; with the HDFS_v1 kinds only
(`--failure-kinds hdfs_v1`) the bytes are those of the generator before episodes existed.
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
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, NamedTuple

from logmesh.ingest.failure_kinds import EPISODE_KINDS, TEMPLATES, write_block_kinds
from logmesh.ingest.labels import HEADER as LABEL_HEADER

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
# The episode kinds' share of the default mix (no public figures exist; chosen so that a 10k-block
# file shows each of them about once or twice). Together ~18% of anomalous blocks.
EPISODE_WEIGHTS: dict[str, float] = {"memory_leak": 0.06, "oom": 0.05, "disk_full": 0.05, "network_partition": 0.06}
#: The default mix: the HDFS_v1 kinds and the episodes.
FAILURE_KINDS: dict[str, float] = {**ANOMALY_KINDS, **EPISODE_WEIGHTS}
#: Names `--failure-kinds` accepts besides single kinds.
KIND_GROUPS: dict[str, dict[str, float]] = {"hdfs_v1": ANOMALY_KINDS, "episodes": EPISODE_WEIGHTS, "all": FAILURE_KINDS}
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
    anomaly_kinds: dict[str, float] = field(default_factory=lambda: dict(FAILURE_KINDS))

    def __post_init__(self) -> None:
        if self.blocks is None and self.lines is None:
            self.blocks = 10_000
        if not 0.0 <= self.anomaly_rate <= 1.0:
            raise ValueError(f"anomaly_rate must be within [0, 1], got {self.anomaly_rate}")
        if self.blocks_per_second <= 0:
            raise ValueError("blocks_per_second must be positive")
        if not 4 <= self.datanodes <= 60_000:
            raise ValueError("datanodes must be between 4 and 60000")
        unknown = sorted(set(self.anomaly_kinds) - set(FAILURE_KINDS))
        if unknown:
            raise ValueError(f"unknown failure kind(s) {', '.join(unknown)}; known: {', '.join(FAILURE_KINDS)}")
        if any(not w >= 0 for w in self.anomaly_kinds.values()):
            raise ValueError("failure kind weights must be >= 0")


def parse_failure_kinds(spec: str) -> dict[str, float]:
    """`--failure-kinds`: comma-separated kinds or groups (hdfs_v1, episodes, all), each optionally
    `=weight` (default: its weight in the default mix), e.g. "hdfs_v1,memory_leak=0.2"."""
    kinds: dict[str, float] = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        name, _, weight = item.partition("=")
        name = name.strip()
        group = KIND_GROUPS.get(name) or ({name: FAILURE_KINDS[name]} if name in FAILURE_KINDS else None)
        if group is None:
            raise ValueError(f"unknown failure kind {name!r}; choose from {', '.join([*KIND_GROUPS, *FAILURE_KINDS])}")
        for kind, default in group.items():
            try:
                w = float(weight) if weight else default
            except ValueError:
                raise ValueError(f"bad weight in {item!r}: expected a number, e.g. {name}=0.1") from None
            if not (w >= 0 and math.isfinite(w)):
                raise ValueError(f"bad weight in {item!r}: must be a finite number >= 0")
            kinds[kind] = w
    if not any(w > 0 for w in kinds.values()):
        raise ValueError(f"--failure-kinds {spec!r} selects no kind with a positive weight")
    return kinds


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

_HEARTBEAT_EXPIRE_S = 630.0  # 2 x heartbeat.recheck.interval (5 min) + 10 x dfs.heartbeat.interval (3 s)
# HDFS_v1's components say 0.18-era (package org.apache.hadoop.dfs); 0.18.2 was current in Nov 2008, but
# which release the cluster ran is not known.
_HADOOP_VERSION = "0.18.2"
_MAIN_PID, _PAUSE_PID, _HEARTBEAT_MONITOR_PID = 19, 17, 15  # thread ids: DataNode main, JvmPauseMonitor, namenode's


@dataclass
class _Episode:
    """One DataNode's failure. Blocks allocated in [start, claim_until) may be routed to it (each
    with probability claim_p, about `planned` in all) and fail; normal blocks avoid the node until
    busy_until."""

    kind: str
    node: str
    start: float
    claim_until: float
    claim_p: float
    planned: int
    busy_until: float
    crash: float = math.inf     # memory leak: when the heap runs out
    dead_at: float = math.inf   # network partition: when the namenode declares the node dead
    claimed: int = 0


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
        # Episodes: a draw of an episode kind is a credit, paid out by blocks an episode claims.
        self._credit = {k: 0 for k in kinds if k in EPISODE_KINDS}
        self._episodes: list[_Episode] = []
        self._side: list[_Event] = []  # lines that name no block, queued with bid ""
        # The namenode's address, from its own stream so that the HDFS_v1 draws stay as they were.
        self._replica_rng = random.Random(f"replica-{config.seed}")  # lines a re-replication added later
        nn = random.Random(f"namenode-{config.seed}")
        self._namenode = next(ip for ip in (f"10.251.{nn.randrange(256)}.{nn.randrange(1, 255)}" for _ in iter(int, 1))
                              if ip not in self._nodes)

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
        episode = None
        if self._credit:  # never true with the HDFS_v1 kinds only, so their draws stay as they were
            if kind in self._credit:
                self._credit[kind] += 1
                kind = ""
            if not kind:
                episode = self._claim(t0)
                if episode is not None:
                    kind = episode.kind
        pipeline = self._pipeline(episode, t0) if self._episodes else rng.sample(self._nodes, 3)
        ev: list[_Event] = []
        handler = self._handler_pid
        ev.append((t0 + rng.random() * 0.8, handler(),
                   f"INFO dfs.FSNamesystem: BLOCK* NameSystem.allocateBlock: {path} {bid}", "E22"))
        if episode is not None:
            stored, t_written = self._episode_block(episode, t0, bid, path, size, pipeline, ev)
            self._block_tail(t0, bid, kind, size, stored, t_written, max(e[0] for e in ev), ev)
            return bid, kind, ev

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
        tail = ev
        if kind == "replication_timeout" or (not kind and rng.random() < 0.004):
            # A replica is re-made elsewhere (0.4% of real Normal blocks); the anomaly is the
            # pending replication timing out first (E29) and the namenode asking again.
            stored = self._replicate(t_written, bid, size, stored, ev, timeout=bool(kind))
            t_last = max(e[0] for e in ev)
            if not kind and self._replica_rng.random() < 16 / 18:
                # 16 of the 18 real normal re-replicated blocks hold nothing after it (no read, no
                # verification, no deletion of the file); the tail is still drawn, to keep the stream
                tail = []
        if kind == "redundant_add" and stored:
            t_last = t_written + rng.uniform(1.0, 600.0)
            ev.append((t_last, handler(),
                       f"WARN dfs.FSNamesystem: BLOCK* NameSystem.addStoredBlock: Redundant addStoredBlock request received for {bid} on {rng.choice(stored)}:50010 size {size}", "E27"))
        self._block_tail(t0, bid, kind, size, stored, t_written, t_last, tail)
        return bid, kind, ev

    def _block_tail(self, t0: float, bid: str, kind: str, size: int, stored: list[str], t_written: float,
                    t_last: float, ev: list[_Event]) -> None:
        """What happens to a written block: reads, verification, deletion with its job's output."""
        rng = self.rng
        job = self._job
        assert job is not None
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
                   timeout: bool, avoid: frozenset[str] = frozenset(), excess: bool = True) -> list[str]:
        """A replica made elsewhere. `excess`: the block had all its replicas (a rebalance, as in the real
        normal ones), so one old replica is removed afterwards; else it restores a lost one."""
        rng = self.rng
        if not stored:
            return stored
        src = rng.choice(stored)
        dst = rng.choice([n for n in rng.sample(self._nodes, 5) if n not in stored and n not in avoid]
                         or [n for n in self._nodes if n not in stored and n not in avoid][:1] or [self._nodes[0]])
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
        # What a normal re-replicated block holds in the session files' 18 normal ones, per round: E25 E18,
        # the new replica's "Receiving block" (E5; HDFS 0.18 logs its own address as src and dest), E16,
        # its "Received block ... of size" (E6), two addStoredBlock (E26) and one replica's file deleted
        # (E21, with no invalidSet line). Without the E5, E5 = E9 + E6 broke on every one of them. The
        # added lines draw from their own stream, so every other draw stays as it was.
        side = self._replica_rng
        tt = ta + 3.0 + rng.uniform(0.0, 8.0)
        pid = self._xceiver_pid(tt)
        ev.append((tt, pid, f"INFO dfs.DataNode$DataTransfer: {src}:50010:Transmitted block {bid} to /{dst}:50010", "E16"))
        t6 = tt + rng.random()
        port = rng.randrange(32768, 61000)
        ev.append((t6, pid + 1, f"INFO dfs.DataNode$DataXceiver: Received block {bid} src: /{dst}:{port} dest: /{dst}:50010 of size {size}", "E6"))
        ev.append((tt - side.random(), pid + 1, f"INFO dfs.DataNode$DataXceiver: Receiving block {bid} src: /{dst}:{port} dest: /{dst}:50010", "E5"))
        ev.append((tt + 1.0 + rng.random(), self._handler_pid(),
                   f"INFO dfs.FSNamesystem: BLOCK* NameSystem.addStoredBlock: blockMap updated: {dst}:50010 is added to {bid} size {size}", "E26"))
        if excess:  # the source's report of the block it sent; the now over-replicated block loses a file
            ev.append((tt + 1.0 + side.random(), 26 + side.randrange(10),
                       f"INFO dfs.FSNamesystem: BLOCK* NameSystem.addStoredBlock: blockMap updated: {src}:50010 is added to {bid} size {size}", "E26"))
            ev.append((tt + side.uniform(5.0, 600.0), 19, f"INFO dfs.FSDataset: Deleting block {bid} file /mnt/hadoop/dfs/data/current/subdir{side.randrange(64)}/{bid}", "E21"))
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

    # ---- episodes on one DataNode (templates: ingest/failure_kinds.py) --------------------------
    @staticmethod
    def _say(t: float, pid: int, tid: str, **fields: object) -> _Event:
        return (t, pid, TEMPLATES[tid].render(**fields), tid)

    def _node_line(self, t: float, pid: int, tid: str, **fields: object) -> None:
        """A line that names no block (GC pause, heartbeat, restart): queued without a block id."""
        self._side.append(self._say(t, pid, tid, **fields))

    def _claim(self, t0: float) -> _Episode | None:
        """The episode a normal-drawn block allocated at t0 is routed to, if any: a running one
        claims it by chance; else an episode starts when its kind's credit exceeds what the
        running ones of that kind are still expected to claim."""
        rng = self.rng
        self._episodes = [e for e in self._episodes if e.busy_until > t0]
        for e in self._episodes:
            if e.start <= t0 < e.claim_until and rng.random() < e.claim_p:
                return self._take(e)
        limit = min(self.config.datanodes - 4, max(1, self.config.datanodes // 4))
        for kind, credit in self._credit.items():
            if credit <= 0 or len(self._episodes) >= limit:
                continue
            # what the running ones will still claim, in expectation
            ahead = sum(e.claim_p * self.config.blocks_per_second * (e.claim_until - t0)
                        for e in self._episodes if e.kind == kind and t0 < e.claim_until)
            if credit > ahead:
                return self._take(self._start_episode(kind, t0))
        return None

    def _take(self, e: _Episode) -> _Episode:
        e.claimed += 1
        self._credit[e.kind] -= 1
        return e

    def _pipeline(self, episode: _Episode | None, t0: float) -> list[str]:
        """Three datanodes that are not sick; an episode's block gets the sick node at a random place."""
        rng = self.rng
        busy = {e.node for e in self._episodes if t0 < e.busy_until}
        while True:
            pipeline = rng.sample(self._nodes, 3)
            if not busy.intersection(pipeline):
                break
        if episode is not None:
            # A partition's later blocks cannot reach the node: someone upstream must try it.
            first = episode.kind != "network_partition" or episode.claimed == 1
            pipeline[rng.randrange(3) if first else rng.randrange(1, 3)] = episode.node
        return pipeline

    def _start_episode(self, kind: str, t0: float) -> _Episode:
        rng = self.rng
        busy = {e.node for e in self._episodes}
        node = rng.choice([n for n in self._nodes if n not in busy])
        bps = self.config.blocks_per_second
        if kind == "memory_leak":  # minutes of growing GC pauses, then the heap is gone
            length, n = rng.uniform(480.0, 1500.0), rng.randint(6, 16)
            e = _Episode(kind, node, t0, t0 + length - 5.0, min(1.0, n / (length * bps)), n, math.inf, crash=t0 + length)
            e.busy_until = self._memory_leak_lines(e)
        elif kind == "oom":  # a burst: every new thread or allocation fails for a minute or two
            length, n = rng.uniform(20.0, 120.0), rng.randint(3, 8)
            e = _Episode(kind, node, t0, t0 + length, min(1.0, n / (length * bps)), n, math.inf)
            e.busy_until = self._oom_lines(e)
        elif kind == "disk_full":
            length, n = rng.uniform(180.0, 720.0), rng.randint(3, 9)
            e = _Episode(kind, node, t0, t0 + length, min(1.0, n / (length * bps)), n, math.inf)
            e.busy_until = self._disk_full_lines(e)
        else:  # network_partition: begins while its first block is written (_episode_block)
            e = _Episode(kind, node, t0, math.inf, 0.0, rng.randint(3, 9), math.inf)
        self._episodes.append(e)
        return e

    def _memory_leak_lines(self, e: _Episode) -> float:
        rng, node, span = self.rng, e.node, e.crash - e.start
        t = e.start + rng.uniform(5.0, 60.0)
        while True:  # pauses grow from ~0.4 s to ~20 s and come ever more often
            s = (t - e.start) / span
            pause = int(350 * math.exp(4.2 * s) * math.exp(rng.gauss(0.0, 0.3)))
            t_seen = t + pause / 1000
            if t_seen >= e.crash:
                break
            self._node_line(t_seen, _PAUSE_PID, "ML1", ms=pause)
            if pause > 8000 and rng.random() < 0.8:  # the heartbeat RPC outlived its timeout
                self._node_line(t_seen + rng.uniform(0.1, 2.0), _MAIN_PID, "ML6")
            t = t_seen + max(2.0, 200.0 * (1.0 - 0.95 * s) * rng.expovariate(1.0))
        for _ in range(rng.randint(1, 4)):
            t = e.crash + rng.uniform(0.0, 3.0)
            self._node_line(t, self._xceiver_pid(t), "ML7", node=node)
        return self._restart(node, e.crash + rng.uniform(3.0, 30.0), rng.uniform(40.0, 180.0))

    def _oom_lines(self, e: _Episode) -> float:
        rng, node = self.rng, e.node
        for _ in range(rng.randint(3, 12)):  # xceiver threads failing, most of them early in the burst
            t = e.start + (e.claim_until - e.start) * rng.random() ** 2
            self._node_line(t, self._xceiver_pid(t), "OM1" if rng.random() < 0.7 else "ML7", node=node)
        if rng.random() < 0.6:  # the accept loop itself cannot start a thread: the DataNode stops
            t = e.claim_until + rng.uniform(0.5, 5.0)
            self._node_line(t, 21, "OM2", node=node)
            t += rng.uniform(1.0, 10.0)
            self._node_line(t, _MAIN_PID, "OM3", node=node)
            return self._restart(node, t + rng.uniform(0.1, 2.0), rng.uniform(60.0, 300.0))
        return e.claim_until + 30.0

    def _disk_full_lines(self, e: _Episode) -> float:
        rng, node = self.rng, e.node
        for _ in range(rng.randint(2, 8)):  # new writes refused (their clients retry elsewhere)
            t = rng.uniform(e.start, e.claim_until)
            self._node_line(t, self._xceiver_pid(t), "DF1", node=node)
        if rng.random() < 0.5:  # the volume then fails its disk check: the DataNode stops
            t = e.claim_until + rng.uniform(5.0, 60.0)
            self._node_line(t, _MAIN_PID, "DF3")
            t += rng.uniform(0.05, 1.0)
            pid = self._handler_pid()
            self._node_line(t, pid, "DF4", node=node)
            self._node_line(t + 0.001, pid, "NN3", node=node)
            # back after an operator replaced the disk
            return self._restart(node, t + rng.uniform(1.0, 5.0), rng.uniform(1800.0, 7200.0))
        return e.claim_until + 60.0  # deletes freed space

    def _partition_lines(self, e: _Episode) -> None:
        rng, node = self.rng, e.node
        heal = max(e.start + rng.uniform(720.0, 1800.0), e.dead_at + 120.0)
        t = e.start + rng.uniform(1.0, 3.0)
        while t < heal:  # every heartbeat: ipc.Client's 10 connect retries, then offerService gives up
            for tries in range(10):
                self._node_line(t + tries + rng.random() * 0.01, _MAIN_PID, "NP1", namenode=self._namenode, tries=tries)
            self._node_line(t + 10.0 + rng.random() * 0.01, _MAIN_PID, "NP2")
            t += 10.0 + rng.uniform(3.0, 4.0)
        self._node_line(e.dead_at, _HEARTBEAT_MONITOR_PID, "NP7", node=node)
        self._node_line(e.dead_at + 0.001, _HEARTBEAT_MONITOR_PID, "NN3", node=node)
        t = heal + rng.uniform(0.0, 3.0)  # back: the namenode asks it to register again
        pid = self._handler_pid()
        self._node_line(t, pid, "NN1", node=node, storage=self._storage_id(node))
        self._node_line(t + 0.001, pid, "NN2", node=node)
        t += rng.uniform(5.0, 60.0)
        self._node_line(t, _MAIN_PID, "RS10", blocks=rng.randint(300, 3000), ms=rng.randint(20, 900))
        e.busy_until = t + 5.0

    def _restart(self, node: str, t_down: float, downtime: float) -> float:
        """SHUTDOWN_MSG, then the startup sequence a restarted 0.18 DataNode logs; returns when it is up."""
        rng, host = self.rng, _host(node)
        self._node_line(t_down, _MAIN_PID, "RS1", host=host, node=node)
        t = t_down + downtime
        for i, (tid, fields) in enumerate((("RS2", {}), ("RS3", {"host": host, "node": node}), ("RS4", {}),
                                           ("RS5", {"version": _HADOOP_VERSION}))):
            self._node_line(t + i * 0.001, 1, tid, **fields)
        t += rng.uniform(1.0, 3.0)
        self._node_line(t, 1, "RS6")
        self._node_line(t + 0.01, 1, "RS7")
        t += rng.uniform(0.1, 1.0)
        self._node_line(t, 1, "RS8", node=node)
        pid = self._handler_pid()
        self._node_line(t + 0.01, pid, "NN1", node=node, storage=self._storage_id(node))
        self._node_line(t + 0.011, pid, "NN3", node=node)
        self._node_line(t + 0.012, pid, "NN2", node=node)
        t += rng.uniform(0.1, 1.0)
        self._node_line(t, _MAIN_PID, "RS9")
        t += rng.uniform(2.0, 60.0)
        self._node_line(t, _MAIN_PID, "RS10", blocks=rng.randint(300, 3000), ms=rng.randint(20, 900))
        self._node_line(t + 0.01, _MAIN_PID, "RS11")
        return t + 5.0

    def _storage_id(self, node: str) -> str:
        h = zlib.crc32(node.encode())  # fixed per node, as a storage id is
        return f"DS-{h % 2_000_000_000}-{node}-50010-{int(self._t0 * 1000) - 86_400_000 + h % 3_600_000}"

    def _episode_block(self, e: _Episode, t0: float, bid: str, path: str, size: int, pipeline: list[str],
                       ev: list[_Event]) -> tuple[list[str], float]:
        """A block routed through a sick node: its evidence lines, the survivors' normal lines;
        returns the nodes that keep it and when it is written."""
        rng = self.rng
        j = pipeline.index(e.node)
        write = 43.0 * math.exp(rng.gauss(0.0, 0.35)) * max(size / FULL_BLOCK, 0.02) + 0.5
        if e.kind == "network_partition" and e.claimed > 1:
            return self._unreachable_mirror(e, t0, bid, pipeline, j, ev)
        for node in pipeline:
            ev.append(self._receiving(t0, node, bid))
        if e.kind == "memory_leak":
            s = min(1.0, max(0.0, (t0 - e.start) / (e.crash - e.start)))
            write *= 1.0 + 2.5 * s
            t_end = min(t0 + write, e.crash)
            slow = ["ML2", "ML4", "ML5"] + (["ML3"] if j < 2 else [])
            for _ in range(1 + int(3 * s + rng.random())):
                tw = rng.uniform(t0 + 0.5, max(t0 + 0.6, t_end - 0.1))
                ms = int(300 + 250 * math.exp(3.3 * s) * math.exp(rng.gauss(0.0, 0.4)))
                tid, pid = rng.choice(slow), self._xceiver_pid(tw)
                if tid == "ML3":
                    ev.append(self._say(tw, pid, tid, ms=ms, mirror=pipeline[j + 1], bid=bid))
                elif tid == "ML4":
                    ev.append(self._say(tw, pid, tid, ms=ms, responder=2 - j, bid=bid, seqno=rng.randrange(1, 1100)))
                elif tid == "ML5":
                    ev.append(self._say(tw, pid, tid, ms=ms, nanos=ms * 1_000_000 + rng.randrange(1_000_000), bid=bid))
                else:
                    ev.append(self._say(tw, pid, tid, ms=ms, bid=bid))
            if t0 + write + 1.0 < e.crash:  # slow, but written
                return self._finish(t0 + write, pipeline, bid, size, ev), t0 + write + 1.0
            t_fail, written = e.crash, (e.crash - t0) / write  # in flight when the heap ran out
        elif e.kind == "oom":
            t_fail = t0 + rng.uniform(0.3, 4.0)
            written = (t_fail - t0) / write
            self._node_line(t_fail, self._xceiver_pid(t_fail), "OM1" if rng.random() < 0.7 else "ML7", node=e.node)
            if rng.random() < 0.5:
                ev.append(self._say(t_fail + 0.01, self._xceiver_pid(t_fail), "PR5", bid=bid))
        elif e.kind == "disk_full":
            written = rng.uniform(0.1, 0.9)
            t_fail = t0 + write * written
            pid = self._xceiver_pid(t_fail)
            ev.append(self._say(t_fail, pid, "DF2", bid=bid))
            if rng.random() < 0.8:
                ev.append(self._say(t_fail + 0.01, pid, "PR5", bid=bid))
        else:  # network_partition: the link goes while this block is written
            written = rng.uniform(0.2, 0.8)
            e.start = t_fail = t0 + write * written
            e.dead_at = t_fail + _HEARTBEAT_EXPIRE_S + rng.uniform(0.0, 300.0)  # heartbeatCheck runs every 5 min
            e.claim_until = e.dead_at  # the namenode keeps choosing it until then
            e.claim_p = min(1.0, (e.planned - 1) / ((e.dead_at - t_fail) * self.config.blocks_per_second))
            self._partition_lines(e)
            upstream = pipeline[j - 1] if j > 0 else rng.choice(self._nodes)  # j == 0: the writing task's host
            t = t_fail + 60.0 + rng.random()
            ev.append(self._say(t, self._xceiver_pid(t), "NP6", bid=bid, ms=60000, local=f"{e.node}:50010",
                                remote=f"{upstream}:{rng.randrange(32768, 61000)}"))
            ev.append(self._say(t + 0.01, self._xceiver_pid(t), "PR5", bid=bid))
            if j > 0:
                t = t_fail + 63.0 + 3.0 * (1 - j // 2) + rng.random()
                ev.append(self._say(t, self._xceiver_pid(t), "NP6", bid=bid, ms=63000 + 3000 * (1 - j // 2),
                                    local=f"{upstream}:{rng.randrange(32768, 61000)}", remote=f"{e.node}:50010"))
            t_fail = t
        survivors = [n for n in pipeline if n != e.node]
        length = max(1, int(size * min(1.0, max(0.01, written))))
        self._recover(t_fail + rng.uniform(60.0, 75.0) if e.kind != "network_partition" else t_fail + rng.uniform(1.0, 10.0),
                      bid, path, length, survivors, ev)
        t_done = max(x[0] for x in ev)
        stored = survivors
        if rng.random() < 0.8:  # the namenode restores the third replica
            avoid = frozenset(x.node for x in self._episodes)
            stored = self._replicate(max(t_done, e.dead_at) if e.dead_at < math.inf else t_done, bid, length,
                                     survivors, ev, timeout=False, avoid=avoid, excess=False)
        return stored, t_done

    def _unreachable_mirror(self, e: _Episode, t0: float, bid: str, pipeline: list[str], j: int,
                            ev: list[_Event]) -> tuple[list[str], float]:
        """A pipeline set up through a partitioned node: the one before it cannot connect, the
        client abandons the block (and writes a new one elsewhere)."""
        rng = self.rng
        for node in pipeline[:j]:
            ev.append(self._receiving(t0, node, bid))
        up, targets = pipeline[j - 1], 3 - j  # its downstream targets, the unreachable node first
        ms = 60000 + 3000 * targets
        t = t0 + 1.0 + ms / 1000 + rng.random()
        ev.append(self._say(t, self._xceiver_pid(t0), "NP3", node=up, bid=bid, mirror=e.node, ms=ms))
        if j == 2:  # the first datanode hears which link failed and tells the client
            pid = self._xceiver_pid(t0)
            self._node_line(t + 0.01, pid, "NP4", targets=2, mirror=e.node)
            self._node_line(t + 0.011, pid, "NP5", targets=2, mirror=e.node)
        return [], t + 0.1

    def _finish(self, t_end: float, pipeline: list[str], bid: str, size: int, ev: list[_Event]) -> list[str]:
        rng = self.rng
        for i, node in enumerate(pipeline):
            te = t_end + (2 - i) * rng.random() * 0.5
            pid = self._xceiver_pid(te)
            ev.append((te, pid, f"INFO dfs.DataNode$PacketResponder: PacketResponder {2 - i} for block {bid} terminating", "E11"))
            ev.append((te + 0.001, pid, f"INFO dfs.DataNode$PacketResponder: Received block {bid} of size {size} from /{node}", "E9"))
            ev.append((te + rng.random(), self._handler_pid(),
                       f"INFO dfs.FSNamesystem: BLOCK* NameSystem.addStoredBlock: blockMap updated: {node}:50010 is added to {bid} size {size}", "E26"))
        return list(pipeline)

    def _recover(self, t: float, bid: str, path: str, length: int, survivors: list[str], ev: list[_Event]) -> None:
        """Pipeline recovery without the failed node: the client asks the first survivor to
        recover the block, the survivors truncate to a common length, the namenode commits it."""
        rng = self.rng
        targets = ", ".join(f"{n}:50010" for n in survivors)
        stamp = 1000 + rng.randrange(1, 5000)
        ev.append(self._say(t, self._xceiver_pid(t), "PR1", bid=bid, targets=targets))
        for node in survivors:
            ev.append(self._say(t + rng.uniform(0.05, 0.5), self._xceiver_pid(t), "PR4", bid=bid, new_bid=bid,
                                old_length=length + rng.randrange(0, 65536), length=length, node=node))
        t += rng.uniform(0.6, 1.5)
        pid = self._handler_pid()
        ev.append(self._say(t, pid, "PR2", bid=bid, stamp=stamp, length=length, targets=targets))
        ev.append(self._say(t + 0.002, pid, "PR3", bid=bid, path=path, stamp=stamp, length=length, targets=targets))
        for node in survivors:
            ev.append((t + rng.uniform(0.01, 1.0), self._handler_pid(),
                       f"INFO dfs.FSNamesystem: BLOCK* NameSystem.addStoredBlock: blockMap updated: {node}:50010 is added to {bid} size {length}", "E26"))

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
                if self._side:  # an episode's lines that name no block
                    for t, pid, body, eid in self._side:
                        push(heap, (t, next(seq), pid, body, eid, ""))
                    self._side.clear()
                created += 1
                next_t += rng.expovariate(rate)
                continue
            if not heap:
                break
            t, _, pid, body, eid, bid = pop(heap)
            sec = int(t)
            if sec != last_sec:  # stamps change ~4 times per 80 lines; format only then
                last_sec, prefix = sec, time.strftime("%y%m%d %H%M%S", time.gmtime(sec))
            if bid and bid not in labels:
                labels[bid] = pending.pop(bid)
            emitted += 1
            yield GeneratedLine(f"{prefix} {pid} {body}", eid, bid)


def _host(node: str) -> str:
    """An EC2-style host name for a datanode address (HDFS_v1 ran on EC2; fixed per address)."""
    o = [int(x) for x in node.split(".")]
    return f"domU-12-31-39-{o[1] - 250:02X}-{o[2]:02X}-{o[3]:02X}"


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
    #: The `BlockId,Kind` side file, and anomalous blocks per kind.
    kinds: str | None = None
    by_kind: dict[str, int] = field(default_factory=dict)

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


def default_kinds_path(output: str | Path) -> Path:
    """`HDFS_gen.log` -> `HDFS_gen_kinds.csv`: each anomalous block's failure kind."""
    p = Path(output)
    name = p.name
    for suffix in (".gz", ".log"):
        name = name.removesuffix(suffix)
    return p.with_name(f"{name}_kinds.csv")


def write_generated(config: GeneratorConfig, output: str | Path, labels: str | Path | None = None,
                    kinds: str | Path | None = None) -> GenerateSummary:
    """Writes the log to `output` ("-" = stdout; "*.gz" = gzip), loghub's `BlockId,Label` CSV to
    `labels` and the `BlockId,Kind` CSV (one row per Anomaly block, same order) to `kinds` (both
    default beside the output; none for stdout unless asked)."""
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
            w.writerow(LABEL_HEADER)  # what ingest/labels.py reads
            w.writerows(gen.labels.items())
    # Kinds of the blocks that appeared (a line cap leaves later blocks out of both files).
    rows = [(b, gen.kinds[b]) for b, v in gen.labels.items() if v == "Anomaly"]
    kinds_path: Path | None = Path(kinds) if kinds else (None if to_stdout else default_kinds_path(output))
    if kinds_path is not None:
        write_block_kinds(kinds_path, rows)
    by_kind: dict[str, int] = {}
    for _, k in rows:
        by_kind[k] = by_kind.get(k, 0) + 1
    return GenerateSummary(str(output), str(labels_path) if labels_path else None, n, len(gen.labels),
                           len(rows), time.perf_counter() - started, str(kinds_path) if kinds_path else None, by_kind)


# ---- CLI glue (wired by cli/ingest.py) --------------------------------------------------------
def add_generate_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds `logmesh generate` options to `p` and sets func=run_generate."""
    p.description = p.description or ("Write realistic HDFS_v1 log lines (loghub raw format) with interleaved "
                                      "block life cycles and labelled anomalous blocks, plus a BlockId,Label CSV.")
    p.add_argument("-o", "--output", default="HDFS_generated.log",
                   help="log file to write; '.gz' compresses, '-' writes stdout (default %(default)s)")
    p.add_argument("--labels", default=None,
                   help="labels CSV (default: beside the output, <name>_anomaly_label.csv)")
    p.add_argument("--kinds", default=None,
                   help="BlockId,Kind CSV naming each anomalous block's failure kind (default: beside the output, "
                        "<name>_kinds.csv)")
    p.add_argument("--blocks", type=int, default=None, help="block life cycles to write in full (default 10000)")
    p.add_argument("--lines", type=int, default=None, help="stop after exactly this many lines")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default %(default)s)")
    p.add_argument("--anomaly-rate", type=float, default=0.03,
                   help="share of anomalous blocks, over all selected kinds (default %(default)s)")
    p.add_argument("--failure-kinds", default="all", metavar="KIND[=WEIGHT],...",
                   help="which failures to simulate, with relative weights: HDFS_v1's own "
                        f"({', '.join(ANOMALY_KINDS)}; group hdfs_v1), episodes with new templates "
                        f"({', '.join(EPISODE_WEIGHTS)}; group episodes), or all (default %(default)s: "
                        "HDFS_v1's plus the episodes, ~18%% of anomalous blocks). hdfs_v1 alone writes what "
                        "the generator wrote before episodes existed")
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
                           delete_after_s=args.delete_after, anomaly_kinds=parse_failure_kinds(args.failure_kinds))


def run_generate(args: argparse.Namespace) -> int:
    """`logmesh generate`: writes the log and labels, prints a one-line summary to stderr."""
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    s = write_generated(config, args.output, args.labels, args.kinds)
    print(f"wrote {s.lines:,} lines, {s.blocks:,} blocks ({s.anomalous_blocks:,} anomalous) to {s.output}"
          + (f", labels in {s.labels}" if s.labels else "") + (f", kinds in {s.kinds}" if s.kinds else "")
          + f" in {s.seconds:.1f} s ({s.lines_per_s:,.0f} lines/s)", file=sys.stderr)
    return 0
