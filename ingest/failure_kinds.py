"""Failure kinds HDFS_v1 never had, and the lines `logmesh generate` writes for them.

HDFS_v1's anomalies are the ones its 2008 cluster happened to have. A detector that only knows those
must still say something useful when a DataNode leaks memory, runs out of heap or threads, fills its
disk or drops off the network. The generator simulates these four as episodes on one DataNode
(ingest/generator.py); this module is the single list of the line templates they use, so that an
evaluation can tell which lines are new and report recall per kind (`new_templates`,
`match_new_template`, `load_block_kinds`).

The messages follow what Hadoop prints, in the HDFS_v1 layout (`%C{2}`-style components such as
`dfs.DataNode$DataXceiver`, block ids as `blk_<long>`):

- verbatim Hadoop 0.18 messages: DataXceiver/DataXceiveServer errors, heartbeatCheck, NetworkTopology,
  registerDatanode, ipc.Client retries, offerService warnings, the startup sequence;
- messages of later Hadoop releases written 0.18-style where 0.18 had none: JvmPauseMonitor (1.x/2.x),
  the "Slow ..." BlockReceiver/PacketResponder warnings (2.x), "Exception for <block>" and
  "unfinalized and removed" (2.x BlockReceiver), pipeline recovery (recoverBlock,
  commitBlockSynchronization, 0.19/0.20);
- log4j writes multi-line messages (stack traces, the STARTUP_MSG banner) with continuation lines
  that have no header; here each message is its first line (banner rows get one line each), so
  every generated line parses with a timestamp.

No template here matches an HDFS_v1 template (tests/unit/test_ingest_generator.py checks), and the new
kinds write no HDFS_v1 failure template (E4, E7, E10, E12, E14, ...): besides their new lines they
write only lines a normal block also has (allocate, receive, addStoredBlock, re-replication, reads,
deletes). Recall on these kinds therefore measures how a detector handles lines and sequences it
never saw.
"""
from __future__ import annotations

import csv
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

#: The episode kinds, in the order the generator lists them.
EPISODE_KINDS: tuple[str, ...] = ("memory_leak", "oom", "disk_full", "network_partition")

_DATA_DIR = "/mnt/hadoop/dfs/data/current"  # the data directory HDFS_v1's "Deleting block" lines name


@dataclass(frozen=True)
class NewTemplate:
    """One line shape: `render(**fields)` gives "LEVEL component: message"; `pattern` is the message
    with `<*>` for each field (Drain's notation); `regex` matches a rendered message."""

    id: str
    level: str
    component: str
    text: str
    origin: str
    fields: tuple[str, ...] = field(init=False)
    pattern: str = field(init=False)
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names: list[str] = []
        pattern, rx = [], []
        for literal, name, _spec, _conv in string.Formatter().parse(self.text):
            pattern.append(literal)
            rx.append(re.escape(literal))
            if name is not None:
                pattern.append("<*>")
                rx.append(f"(?P={name})" if name in names else f"(?P<{name}>.+?)")  # a repeat: the same value
                if name not in names:
                    names.append(name)
        object.__setattr__(self, "fields", tuple(names))
        object.__setattr__(self, "pattern", "".join(pattern))
        object.__setattr__(self, "regex", re.compile("^" + "".join(rx) + "$"))

    @property
    def names_block(self) -> bool:
        """Whether the line names a block (its `bid` field)."""
        return "bid" in self.fields

    def render(self, **values: object) -> str:
        return f"{self.level} {self.component}: {self.text.format(**values)}"


def _t(tid: str, level: str, component: str, text: str, origin: str) -> NewTemplate:
    return NewTemplate(tid, level, component, text, origin)


# Ids: ML memory leak, OM out of memory, DF disk full, NP network partition, PR pipeline recovery
# (after a DataNode fails mid-write), RS a DataNode restart, NN the namenode's bookkeeping of a node.
_ALL: tuple[NewTemplate, ...] = (
    _t("ML1", "WARN", "util.JvmPauseMonitor",
       "Detected pause in JVM or host machine (eg GC): pause of approximately {ms}ms", "JvmPauseMonitor, Hadoop 1.x+"),
    _t("ML2", "WARN", "dfs.DataNode$BlockReceiver",
       "Slow BlockReceiver write data to disk cost:{ms}ms (threshold=300ms), volume=" + _DATA_DIR + ", blockId={bid}",
       "BlockReceiver, Hadoop 2.x"),
    _t("ML3", "WARN", "dfs.DataNode$BlockReceiver",
       "Slow BlockReceiver write packet to mirror took {ms}ms (threshold=300ms), downstream DNs=[{mirror}:50010], blockId={bid}",
       "BlockReceiver, Hadoop 2.x"),
    _t("ML4", "WARN", "dfs.DataNode$PacketResponder",
       "Slow PacketResponder send ack to upstream took {ms}ms (threshold=300ms), PacketResponder {responder} for block {bid}, replyAck=seqno: {seqno}",
       "BlockReceiver.PacketResponder, Hadoop 2.x"),
    _t("ML5", "WARN", "dfs.DataNode$BlockReceiver",
       "Slow flushOrSync took {ms}ms (threshold=300ms), isSync:false, flushTotalNanos={nanos}ns, volume=" + _DATA_DIR + ", blockId={bid}",
       "BlockReceiver, Hadoop 2.x"),
    _t("ML6", "WARN", "dfs.DataNode",
       "java.net.SocketTimeoutException: timed out waiting for rpc response", "DataNode.offerService (heartbeat RPC), 0.18"),
    _t("ML7", "ERROR", "dfs.DataNode$DataXceiver",
       "{node}:50010:DataXceiver: java.lang.OutOfMemoryError: Java heap space", "DataXceiver.run, 0.18"),
    _t("OM1", "ERROR", "dfs.DataNode$DataXceiver",
       "{node}:50010:DataXceiver: java.lang.OutOfMemoryError: unable to create new native thread", "DataXceiver.run, 0.18"),
    _t("OM2", "ERROR", "dfs.DataNode$DataXceiveServer",
       "{node}:50010:DataXceiveServer: Exiting due to:java.lang.OutOfMemoryError: unable to create new native thread",
       "DataXceiveServer.run, 0.18"),
    _t("OM3", "INFO", "dfs.DataNode",
       "{node}:50010:Finishing DataNode in: FSDataset{{dirpath='" + _DATA_DIR + "'}}", "DataNode.run, 0.18"),
    _t("DF1", "ERROR", "dfs.DataNode$DataXceiver",
       "{node}:50010:DataXceiver: org.apache.hadoop.util.DiskChecker$DiskOutOfSpaceException: Insufficient space for an additional block",
       "FSDataset.getNextVolume via DataXceiver.run, 0.18"),
    _t("DF2", "INFO", "dfs.DataNode$BlockReceiver",
       "Exception for {bid} java.io.IOException: No space left on device", "BlockReceiver.receiveBlock, Hadoop 2.x"),
    _t("DF3", "WARN", "dfs.DataNode",
       "DataNode is shutting down. org.apache.hadoop.util.DiskChecker$DiskErrorException: Directory is not writable: " + _DATA_DIR,
       "DataNode.handleDiskError, 0.18"),
    _t("DF4", "WARN", "dfs.NameNode",
       "Disk error on {node}:50010: Directory is not writable: " + _DATA_DIR, "NameNode.errorReport, Hadoop 2.x"),
    _t("NP1", "INFO", "ipc.Client",
       "Retrying connect to server: /{namenode}:9000. Already tried {tries} time(s).", "ipc.Client, 0.18"),
    _t("NP2", "WARN", "dfs.DataNode",
       "java.net.NoRouteToHostException: No route to host", "DataNode.offerService, 0.18"),
    _t("NP3", "INFO", "dfs.DataNode$DataXceiver",
       "{node}:50010:Exception transfering block {bid} to mirror {mirror}:50010: java.net.SocketTimeoutException: {ms} millis timeout while waiting for channel to be ready for connect. ch : java.nio.channels.SocketChannel[connection-pending remote=/{mirror}:50010]",
       "DataXceiver.writeBlock, 0.18; SocketIOWithTimeout"),
    _t("NP4", "INFO", "dfs.DataNode$DataXceiver",
       "Datanode {targets} got response for connect ack  from downstream datanode with firstbadlink as {mirror}:50010",
       "DataXceiver.writeBlock, 0.18"),
    _t("NP5", "INFO", "dfs.DataNode$DataXceiver",
       "Datanode {targets} forwarding connect ack to upstream firstbadlink is {mirror}:50010", "DataXceiver.writeBlock, 0.18"),
    _t("NP6", "INFO", "dfs.DataNode$BlockReceiver",
       "Exception for {bid} java.net.SocketTimeoutException: {ms} millis timeout while waiting for channel to be ready for read. ch : java.nio.channels.SocketChannel[connected local=/{local} remote=/{remote}]",
       "BlockReceiver.receiveBlock, Hadoop 2.x; SocketIOWithTimeout"),
    _t("NP7", "INFO", "dfs.FSNamesystem",
       "BLOCK* NameSystem.heartbeatCheck: lost heartbeat from {node}:50010", "FSNamesystem.heartbeatCheck, 0.18"),
    _t("PR1", "INFO", "dfs.DataNode",
       "Client calls recoverBlock(block={bid}, targets=[{targets}])", "DataNode.recoverBlock, 0.19/0.20"),
    _t("PR2", "INFO", "dfs.FSNamesystem",
       "commitBlockSynchronization(lastblock={bid}, newgenerationstamp={stamp}, newlength={length}, newtargets=[{targets}], closeFile=false, deleteBlock=false)",
       "FSNamesystem.commitBlockSynchronization, 0.19/0.20"),
    _t("PR3", "INFO", "dfs.FSNamesystem",
       "commitBlockSynchronization(newblock={bid}, file={path}, newgenerationstamp={stamp}, newlength={length}, newtargets=[{targets}]) successful",
       "FSNamesystem.commitBlockSynchronization, 0.19/0.20"),
    _t("PR4", "INFO", "dfs.DataNode",
       "oldblock={bid}(length={old_length}), newblock={new_bid}(length={length}), datanode={node}:50010",
       "DataNode.updateBlock, 0.19/0.20"),
    _t("PR5", "INFO", "dfs.DataNode$BlockReceiver",
       "Block {bid} unfinalized and removed.", "BlockReceiver.receiveBlock, Hadoop 2.x"),
    _t("RS1", "INFO", "dfs.DataNode", "SHUTDOWN_MSG: Shutting down DataNode at {host}/{node}", "StringUtils.startupShutdownMessage"),
    _t("RS2", "INFO", "dfs.DataNode", "STARTUP_MSG: Starting DataNode", "StringUtils.startupShutdownMessage"),
    _t("RS3", "INFO", "dfs.DataNode", "STARTUP_MSG:   host = {host}/{node}", "StringUtils.startupShutdownMessage"),
    _t("RS4", "INFO", "dfs.DataNode", "STARTUP_MSG:   args = []", "StringUtils.startupShutdownMessage"),
    _t("RS5", "INFO", "dfs.DataNode", "STARTUP_MSG:   version = {version}", "StringUtils.startupShutdownMessage"),
    _t("RS6", "INFO", "dfs.DataNode", "Opened info server at 50010", "DataNode.startDataNode, 0.18"),
    _t("RS7", "INFO", "dfs.DataNode", "Balancing bandwith is 1048576 bytes/s", "DataNode.startDataNode, 0.18"),
    _t("RS8", "INFO", "dfs.DataNode", "dnRegistration = {node}:50010", "DataNode.startDataNode, 0.18"),
    _t("RS9", "INFO", "dfs.DataNode",
       "using BLOCKREPORT_INTERVAL of 3600000msec Initial delay: 0msec", "DataNode.offerService, 0.18"),
    _t("RS10", "INFO", "dfs.DataNode",
       "BlockReport of {blocks} blocks got processed in {ms} msecs", "DataNode.offerService, 0.18"),
    _t("RS11", "INFO", "dfs.DataNode", "Starting Periodic block scanner.", "DataNode.offerService, 0.18"),
    _t("NN1", "INFO", "dfs.FSNamesystem",
       "BLOCK* NameSystem.registerDatanode: node registration from {node}:50010 storage {storage}",
       "FSNamesystem.registerDatanode, 0.18"),
    _t("NN2", "INFO", "net.NetworkTopology", "Adding a new node: /default-rack/{node}:50010", "NetworkTopology.add, 0.18"),
    _t("NN3", "INFO", "net.NetworkTopology", "Removing a node: /default-rack/{node}:50010", "NetworkTopology.remove, 0.18"),
)
TEMPLATES: dict[str, NewTemplate] = {t.id: t for t in _ALL}

_RESTART = ("RS1", "RS2", "RS3", "RS4", "RS5", "RS6", "RS7", "RS8", "RS9", "RS10", "RS11", "NN1", "NN2", "NN3")
_RECOVERY = ("PR1", "PR2", "PR3", "PR4", "PR5")
# Which templates each kind can write (a template may serve several kinds: pipeline recovery and a
# restart look the same whatever caused them).
_KIND_IDS: dict[str, tuple[str, ...]] = {
    "memory_leak": ("ML1", "ML2", "ML3", "ML4", "ML5", "ML6", "ML7", "PR1", "PR2", "PR3", "PR4", *_RESTART),
    "oom": ("ML7", "OM1", "OM2", "OM3", *_RECOVERY, *_RESTART),
    "disk_full": ("DF1", "DF2", "DF3", "DF4", *_RECOVERY, *_RESTART),
    "network_partition": ("NP1", "NP2", "NP3", "NP4", "NP5", "NP6", "NP7", "PR1", "PR2", "PR3", "PR4", "PR5",
                          "RS10", "NN1", "NN2", "NN3"),
}


def new_templates(kind: str | None = None) -> dict[str, tuple[NewTemplate, ...]]:
    """{kind: its templates} for every episode kind, or only for `kind`. Templates that name a block
    (`names_block`) are the per-block evidence; the others (GC pauses, heartbeats, restarts) name
    none, as in real logs."""
    if kind is not None and kind not in _KIND_IDS:
        raise ValueError(f"unknown failure kind {kind!r}; known: {', '.join(EPISODE_KINDS)}")
    kinds = (kind,) if kind else EPISODE_KINDS
    return {k: tuple(TEMPLATES[i] for i in _KIND_IDS[k]) for k in kinds}


def match_new_template(message: str) -> NewTemplate | None:
    """The new template a message (the text after "component: ") was written from, or None."""
    for t in _ALL:
        if t.regex.match(message):
            return t
    return None


KINDS_HEADER = ("BlockId", "Kind")


def write_block_kinds(path: str | Path, rows: Iterable[tuple[str, str]]) -> None:
    """Writes the `BlockId,Kind` side file: one row per anomalous block, in order of appearance."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(KINDS_HEADER)
        w.writerows(rows)


def load_block_kinds(path: str | Path) -> dict[str, str]:
    """Reads a `BlockId,Kind` file (written by `logmesh generate`) into {block id: kind}."""
    kinds: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != list(KINDS_HEADER):
            raise ValueError(f"{path}: expected header 'BlockId,Kind', got {header!r}")
        for row in reader:
            if not row:
                continue
            if len(row) < 2 or not row[0].startswith("blk_") or not row[1].strip():
                raise ValueError(f"{path}:{reader.line_num}: expected 'blk_...,<kind>', got {','.join(row)!r}")
            kinds[row[0].strip()] = row[1].strip()
    return kinds
