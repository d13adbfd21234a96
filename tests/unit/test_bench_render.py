"""What bench/pipeline.py's render writes into docs/benchmarks.md about the end-to-end runs: the block quiet the
demo sets and the job's own default, as the code has them (the paragraph said 30 s while the job's default was
300 s), and the doc holds the paragraph as rendered from the stored results."""
from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # the repo root: bench/ and demo/ are not installed
from bench.pipeline import render  # noqa: E402
from demo.run import QUIET_MS  # noqa: E402
from logmesh.streaming.options import StreamConfig  # noqa: E402

PARAGRAPH = "One demo per input rate:"


def _e2e_paragraph(markdown: str) -> str:
    (line,) = [x for x in markdown.splitlines() if x.startswith(PARAGRAPH)]
    return line


def _rendered() -> str:
    return render(json.loads((REPO / "bench/results/all.json").read_text()))


def test_the_e2e_paragraph_states_the_quiet_the_code_uses():
    text = _e2e_paragraph(_rendered())
    job_s, demo_s = StreamConfig().block_quiet_ms / 1000, QUIET_MS / 1000
    assert job_s != demo_s  # else the sentence below could not tell them apart
    assert f"blocks closing after {demo_s:g} s without a line (the demo's setting" in text, text
    assert f"the job's default is {job_s:g} s)" in text, text


def test_the_doc_holds_the_e2e_paragraph_as_rendered_from_the_stored_results():
    doc = (REPO / "docs/benchmarks.md").read_text().split("<!-- bench:end -->", 1)[0]
    assert _e2e_paragraph(doc) == _e2e_paragraph(_rendered())
