"""Parameter masking: the shape of a line without its block ids, addresses and numbers.

HDFS_v1 has ~30 line shapes; masking maps millions of lines onto them, so the embedder and the
line models work per shape and cache the answer (DESIGN.md, "Data semantics").
"""
from __future__ import annotations

import re

# Order matters: block ids and addresses contain digits that the number rule would otherwise eat.
_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"blk_-?\d+"), "<BLK>"),
    (re.compile(r"/?\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?"), "<IP>"),
    (re.compile(r"\b0x[0-9a-fA-F]+\b"), "<HEX>"),
    (re.compile(r"\d+"), "<NUM>"),
)


def mask(text: str) -> str:
    """Returns `text` with block ids, IPs (with port), hex and decimal numbers replaced by placeholders."""
    for pattern, placeholder in _RULES:
        text = pattern.sub(placeholder, text)
    return text


def line_shape(component: str, message: str) -> str:
    """The masked text the embedder and the line models see for one line: component and message."""
    return mask(f"{component}: {message}" if component else message)
