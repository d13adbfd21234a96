"""What the scorer does with its incidents besides serving them: a summary of each version (summaries.py) and
a notification of each incident to the --notify-url webhooks (notify.py), both subscribed to the IncidentBook
and both off its thread (each listener only queues)."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("logmesh.scorer.incidents")
TOKEN_ENV = "LOGMESH_LLM_TOKEN"


@dataclass(frozen=True)
class IncidentOutputs:
    """serve scorer's --llm-url/--llm-model/--llm-timeout (token: $LOGMESH_LLM_TOKEN),
    --summary-defer-max-s/--summary-busy-rate (None: by where the LLM is, summary_deferral.for_llm) and
    --notify-url/--notify-wait."""
    llm_url: str | None = None
    llm_model: str | None = None
    llm_timeout: float = 30.0
    summary_defer_max_s: float | None = None
    summary_busy_rate: float = 1.0
    notify_urls: tuple[str, ...] = field(default_factory=tuple)
    notify_wait: float = 30.0


def wire(book: Any, outputs: IncidentOutputs, state_dir: Path | None) -> tuple[Any, list[Callable[[], None]]]:
    """Subscribes a Summarizer (always: without --llm-url every summary is the fallback) and, with targets, a
    Notifier to `book`; returns the summarizer (GetStats counts it) and what closes them, in order."""
    from logmesh.scorer.analyst.notify import Notifier, Target
    from logmesh.scorer.analyst.summaries import Summarizer
    from logmesh.scorer.analyst.summary_deferral import for_llm
    deferral = for_llm(outputs.llm_url, outputs.summary_defer_max_s, outputs.summary_busy_rate)
    summarizer = Summarizer(book.attach_summary, llm_url=outputs.llm_url, llm_model=outputs.llm_model,
                            llm_token=os.environ.get(TOKEN_ENV) or None, llm_timeout=outputs.llm_timeout,
                            deferral=deferral)
    book.subscribe(summarizer.submit)
    closers: list[Callable[[], None]] = [summarizer.close]
    log.info("incident summaries %s", f"by the LLM at {outputs.llm_url}" if outputs.llm_url
             else "built from the evidence (no --llm-url)")
    if deferral is not None:
        log.info("LLM summaries wait for scoring to be quiet (under %g scoring messages/s), at most %g s",
                 deferral.busy_rate, deferral.max_wait_s)
    if outputs.notify_urls:
        notifier = Notifier([Target.parse(u) for u in outputs.notify_urls], state_dir=state_dir,
                            wait_for_summary=outputs.notify_wait, on_handled=book.mark_notified)
        book.subscribe(notifier.on_incident)
        closers.append(notifier.close)
    return summarizer, closers
