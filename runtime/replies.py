"""Stream replies that never pass the message limit.

A legal batch can have a larger answer than itself (a result echoes its line and adds votes), and one reply
over the limit would end the whole stream with RESOURCE_EXHAUSTED. So a batch's answer is cut into several
replies with the same batch_id, each at most `soft` bytes (4 MiB: what every client accepts by default); a
single result too large for any message (`hard`: the server's limit) becomes a per-item error instead.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

SOFT_REPLY_BYTES = 4 * 1024 * 1024
_ENVELOPE = 64  # batch_id and the fields' tags


def _varint_len(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


def split_replies(results: Sequence[Any], make: Callable[[Sequence[Any]], Any], hard: int,
                  too_large: Callable[[Any, int], Any], soft: int = SOFT_REPLY_BYTES) -> Iterator[Any]:
    """Replies `make(chunk)` over consecutive chunks of `results` (one reply, maybe empty, when all fit);
    `too_large(result, size)` stands in for a result that alone is over `hard` bytes."""
    soft = min(soft, hard) - _ENVELOPE
    chunk: list[Any] = []
    total = 0
    sent = False
    for result in results:
        size = result.ByteSize()
        if size + _ENVELOPE + 8 > hard:
            result = too_large(result, size)
            size = result.ByteSize()
        cost = size + 1 + _varint_len(size)
        if chunk and total + cost > soft:
            yield make(chunk)
            sent = True
            chunk, total = [], 0
        chunk.append(result)
        total += cost
    if chunk or not sent:
        yield make(chunk)
