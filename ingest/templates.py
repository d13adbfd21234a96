"""HDFS_v1 event templates: each parsed line gets loghub's event id E1..E29 (E30 from loghub's later list).

Session files (DeepLog's event numbers k = loghub Ek) and raw logs then speak the same language.
The patterns are written from loghub's published template strings; order matters where two
templates share words (E6 before E9, E27/E28 before E26).
"""
from __future__ import annotations

import re

_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("E1", r"Adding an already existing block"),
    ("E2", r"Verification succeeded for"),
    ("E4", r"Got exception while serving .* to "),
    ("E3", r"Served block .* to "),
    ("E6", r"Received block .*src: .*dest: .*of size"),
    ("E5", r"Receiving block .*src: .*dest: "),
    ("E7", r"writeBlock .* received exception"),
    ("E8", r"PacketResponder .*for block .*Interrupted"),
    ("E11", r"PacketResponder .* for block .* terminating"),
    ("E10", r"PacketResponder .*Exception"),
    ("E9", r"Received block .* of size .* from "),
    ("E12", r":Exception writing block .* to mirror"),
    ("E13", r"Receiving empty packet for block"),
    ("E14", r"Exception in receiveBlock for block"),
    ("E15", r"Changing block file offset of block .* from .* to .* meta file offset to"),
    ("E16", r":Transmitted block .* to "),
    ("E17", r":Failed to transfer .* to .* got "),
    ("E18", r"Starting thread to transfer block .* to "),
    ("E19", r"Reopen Block"),
    ("E20", r"Unexpected error trying to delete block .*BlockInfo not found in volumeMap"),
    ("E21", r"Deleting block .* file "),
    ("E22", r"BLOCK\* NameSystem.*allocateBlock:"),
    ("E23", r"BLOCK\* NameSystem.*delete: .* is added to invalidSet of"),
    ("E24", r"BLOCK\* Removing block .* from neededReplications as it does not belong to any file"),
    ("E25", r"BLOCK\* ask .* to replicate .* to "),
    ("E28", r"BLOCK\* NameSystem.*addStoredBlock: addStoredBlock request received for .* on .* size .*But it does not belong to any file"),
    ("E27", r"BLOCK\* NameSystem.*addStoredBlock: Redundant addStoredBlock request received for .* on .* size"),
    ("E26", r"BLOCK\* NameSystem.*addStoredBlock: blockMap updated: .* is added to .* size"),
    ("E29", r"PendingReplicationMonitor timed out block"),
    ("E30", r"BLOCK\* ask .* to delete "),
)
_COMPILED = tuple((event_id, re.compile(pattern)) for event_id, pattern in _TEMPLATES)

#: Every known event id, in loghub's numeric order.
EVENT_IDS: tuple[str, ...] = tuple(sorted((e for e, _ in _TEMPLATES), key=lambda e: int(e[1:])))
#: Each event's template as words (the pattern without its wildcards), for rules that read a template's text.
TEMPLATE_TEXT: dict[str, str] = {e: " ".join(re.sub(r"\\|\.\*", " ", p).split()) for e, p in _TEMPLATES}


def match_template(message: str) -> str | None:
    """Returns loghub's event id for an HDFS message, or None if no HDFS_v1 template matches."""
    for event_id, pattern in _COMPILED:
        if pattern.search(message):
            return event_id
    return None
