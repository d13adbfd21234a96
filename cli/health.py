"""`logmesh health`: grpc.health.v1 of the scorer and of the embedder it uses; exit 0 when both are SERVING."""
from __future__ import annotations

import argparse

from logmesh.cli.common import EMBEDDER_ADDRESS, POSITIVE_SECONDS, SCORER_ADDRESS, channel_security, client_security_args


def _embedder_of(stats) -> tuple[str | None, str]:  # type: ignore[no-untyped-def]
    """The embedder a scorer says it calls (GetStats.embedder_address) and why it cannot reach it, if so;
    (None, "") from a scorer too old to say."""
    fields = stats.DESCRIPTOR.fields_by_name
    address = stats.embedder_address if "embedder_address" in fields else ""
    status = stats.embedder_status if "embedder_status" in fields else ""
    return address or None, status


def _state(client, timeout: float) -> str:  # type: ignore[no-untyped-def]
    import grpc
    try:
        return client.health(timeout=timeout)
    except grpc.RpcError as exc:
        return f"DOWN ({exc.code().name})"


def cmd_health(args: argparse.Namespace) -> int:
    """The scorer first: unless --embedder is given, the embedder checked is the one the scorer says it uses."""
    import grpc

    from logmesh.client import DEFAULT_EMBEDDER, EmbedderClient, ScorerClient
    security = channel_security(args)
    with ScorerClient(args.scorer, timeout=args.timeout, security=security) as scorer:
        scorer_state = _state(scorer, args.timeout)
        embedder, why, problem, refused = args.embedder, "--embedder", "", None
        if embedder is None and not scorer_state.startswith("DOWN"):
            try:
                embedder, problem = _embedder_of(scorer.stats())
                why = "the scorer's embedder"
            except grpc.RpcError as exc:  # e.g. UNAUTHENTICATED without a token: health is open, GetStats is not
                embedder, refused = None, exc.code()
        if embedder is None:
            embedder, why = DEFAULT_EMBEDDER, ("the default: the scorer did not say which embedder it uses; "
                                               "give --embedder")
            if refused == grpc.StatusCode.UNAUTHENTICATED:
                why = ("the default: the scorer refused GetStats without a token it accepts, so it did not say which "
                       "embedder it uses; give --token (or LOGMESH_TOKEN), or --embedder")
    print(f"{'scorer':9} {args.scorer:22} {scorer_state}" + (f"  ({problem})" if problem else ""))
    with EmbedderClient(embedder, security=security) as client:
        embedder_state = _state(client, args.timeout)
    print(f"{'embedder':9} {embedder:22} {embedder_state}  ({why})")
    return int(scorer_state != "SERVING" or embedder_state != "SERVING")


def setup(p: argparse.ArgumentParser) -> None:
    from logmesh.client import DEFAULT_EMBEDDER, DEFAULT_SCORER
    p.add_argument("--scorer", type=SCORER_ADDRESS, default=DEFAULT_SCORER,
                   help="scorer address HOST:PORT (default %(default)s)")
    p.add_argument("--embedder", type=EMBEDDER_ADDRESS, default=None,
                   help="embedder address HOST:PORT (default: the one the scorer says it uses, else "
                        f"{DEFAULT_EMBEDDER})")
    # a probe's bound: a server that accepts the connection but never answers (hung, or not gRPC) is DOWN
    # (DEADLINE_EXCEEDED) after this, each of the three calls
    p.add_argument("--timeout", type=POSITIVE_SECONDS, default=5.0, metavar="SECONDS",
                   help="seconds each check may take: the scorer's health, its GetStats (which embedder it "
                        "uses) and the embedder's health (default %(default)s)")
    client_security_args(p)
    p.set_defaults(func=cmd_health)
