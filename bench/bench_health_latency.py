"""How fast grpc.health.v1 Check answers while a server holds 64 client streams that send nothing, alone
and while a grpc-go client keeps 64 Embed calls in flight on one connection (clients/go/bin/logmesh-load).
Real embedder with the real model; prints a JSON summary and a markdown row for docs/benchmarks.md.

    .venv/bin/python bench/bench_health_latency.py [--checks 300]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from logmesh.client import EmbedderClient
from logmesh.embedder.service import serve
from logmesh.v1 import embedder_service_pb2 as epb, embedder_service_pb2_grpc as egrpc

REPO = Path(__file__).resolve().parents[1]
LINE = "081109 204655 556 INFO dfs.DataNode$PacketResponder: Received block blk_1 of size 67108864 from /10.251.42.84"


def checks(address: str, n: int) -> list[float]:
    with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        out = []
        for _ in range(n):
            started = time.perf_counter()
            stub.Check(health_pb2.HealthCheckRequest(service="logmesh.v1.EmbedderService"), timeout=5)
            out.append((time.perf_counter() - started) * 1000)
            time.sleep(0.01)
        return out


def summary(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    return {"n": len(ordered), "p50_ms": round(statistics.median(ordered), 2),
            "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1], 2), "max_ms": round(ordered[-1], 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checks", type=int, default=300)
    args = parser.parse_args()
    server = serve(0)
    EmbedderClient(server.address).wait_until_serving(180)
    release = threading.Event()

    def silent():
        release.wait(600)
        return
        yield

    channel = grpc.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)])
    idle = [egrpc.EmbedderServiceStub(channel).EmbedStream(silent(), timeout=600) for _ in range(64)]
    time.sleep(1)
    results = {"64 idle streams": summary(checks(server.address, args.checks))}
    load = subprocess.Popen([str(REPO / "clients/go/bin/logmesh-load"), "-addr", server.address, "-rpc", "embed",
                             "-calls", "1000000", "-inflight", "64", "-line", LINE], stdout=subprocess.PIPE)
    time.sleep(2)
    results["64 idle streams + 64 Embed calls in flight (grpc-go)"] = summary(checks(server.address, args.checks))
    load.terminate()
    load.wait()
    release.set()
    for call in idle:
        call.cancel()
    channel.close()
    server.stop(0)
    print(json.dumps(results, indent=2))
    for case, s in results.items():
        print(f"| {case} | {s['n']} | {s['p50_ms']} | {s['p99_ms']} | {s['max_ms']} |")


if __name__ == "__main__":
    main()
