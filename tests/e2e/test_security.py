"""TLS, mutual TLS and bearer tokens on the real servers, with certificates from deploy/tls/make-certs.sh.

A client without a token is refused, one with a wrong certificate is refused, one with both right is
served; health stays open to probes; plaintext is refused off loopback."""
from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import pytest

from logmesh.client import EmbedderClient, ScorerClient
from logmesh.runtime.security import ServerSecurity, load_tokens
from logmesh.security import ChannelSecurity

REPO = Path(__file__).resolve().parents[2]
LOGMESH = str(Path(__import__("sys").executable).with_name("logmesh"))
TOKEN = "s3cret-token-for-tests"
LINE = ("081109 214043 2561 INFO dfs.DataNode$DataXceiver: writeBlock blk_-3102267849859399193 "
        "received exception java.io.IOException: Could not read from stream")


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, Path]:
    """Two independent local CAs: `ours` (the servers' and the good client's) and `other` (a stranger's)."""
    out = {}
    for name in ("ours", "other"):
        folder = tmp_path_factory.mktemp(f"tls-{name}")
        subprocess.run([str(REPO / "deploy/tls/make-certs.sh"), str(folder)], check=True, capture_output=True)
        out[name] = folder
    return out


@pytest.fixture(scope="module")
def secure_embedder(certs, encoder):
    """The real embedder with mutual TLS and a token."""
    from logmesh.embedder.service import serve
    ours = certs["ours"]
    security = ServerSecurity(tls_cert=str(ours / "server.pem"), tls_key=str(ours / "server.key"),
                              tls_client_ca=str(ours / "ca.pem"), tokens=frozenset({TOKEN}))
    server = serve(0, encoder_factory=lambda: encoder, security=security)
    EmbedderClient(server.address, security=_good(certs)).wait_until_serving(60)
    yield server
    server.stop(0)


@pytest.fixture(scope="module")
def secure_scorer(certs, secure_embedder, trained_models):
    """The real scorer with TLS and a token, reaching the mutual-TLS embedder with the LOGMESH_TLS_* and
    LOGMESH_TOKEN environment, as a deployed scorer would."""
    from logmesh.scorer.service import serve
    ours = certs["ours"]
    env = {"LOGMESH_TLS_CA": ours / "ca.pem", "LOGMESH_TLS_CERT": ours / "client.pem",
           "LOGMESH_TLS_KEY": ours / "client.key", "LOGMESH_TOKEN": TOKEN}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, str(value))
        server = serve(0, trained_models, secure_embedder.address, reload_interval=60, security=ServerSecurity(
            tls_cert=str(ours / "server.pem"), tls_key=str(ours / "server.key"), tokens=frozenset({TOKEN})))
    ScorerClient(server.address, security=ChannelSecurity(tls=True, ca=str(ours / "ca.pem"))).wait_until_serving(30)
    yield server
    server.stop(0)


def _good(certs, token: str | None = TOKEN) -> ChannelSecurity:
    ours = certs["ours"]
    return ChannelSecurity(tls=True, ca=str(ours / "ca.pem"), cert=str(ours / "client.pem"),
                           key=str(ours / "client.key"), token=token)


def _refused(call) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def test_mutual_tls_and_token_right_is_served(certs, secure_embedder, reliability):
    with EmbedderClient(secure_embedder.address, security=_good(certs)) as client:
        vector = client.embed("Receiving block blk_1 src: /10.0.0.1:5000 dest: /10.0.0.2:50010")
        assert vector.shape == (384,) and abs(float((vector ** 2).sum()) - 1.0) < 1e-3
        assert client.embed_many(["a line", "another line"]).shape == (2, 384)  # streams carry the token too
    reliability("security", "mutual TLS, right client certificate and token", "served (Embed and EmbedStream)")


def test_a_client_without_a_token_is_unauthenticated(certs, secure_embedder, reliability):
    with EmbedderClient(secure_embedder.address, security=_good(certs, token=None)) as client:
        error = _refused(lambda: client.embed("x"))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "missing bearer token" in error.details()
        stream_error = _refused(lambda: client.embed_many(["x"]))
        assert stream_error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert client.health() == "SERVING"  # probes need no token
    reliability("security", "no token (unary and stream)", f"UNAUTHENTICATED: {error.details()}")
    reliability("security", "health check without a token", "SERVING: probes stay open")


def test_a_wrong_token_is_unauthenticated(certs, secure_embedder, reliability):
    with EmbedderClient(secure_embedder.address, security=_good(certs, token="guess")) as client:
        error = _refused(lambda: client.embed("x"))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "not accepted" in error.details()
    reliability("security", "wrong token", f"UNAUTHENTICATED: {error.details()}")


@pytest.mark.parametrize("case", ["no client certificate", "client certificate of another CA",
                                  "server not trusted by the client", "plaintext client"])
def test_a_wrong_certificate_is_refused(certs, secure_embedder, reliability, case):
    ours, other = certs["ours"], certs["other"]
    security = {
        "no client certificate": ChannelSecurity(tls=True, ca=str(ours / "ca.pem"), token=TOKEN),
        "client certificate of another CA": ChannelSecurity(tls=True, ca=str(ours / "ca.pem"),
                                                            cert=str(other / "client.pem"),
                                                            key=str(other / "client.key"), token=TOKEN),
        "server not trusted by the client": ChannelSecurity(tls=True, ca=str(other / "ca.pem"),
                                                            cert=str(ours / "client.pem"),
                                                            key=str(ours / "client.key"), token=TOKEN),
        "plaintext client": ChannelSecurity(token=TOKEN),
    }[case]
    with EmbedderClient(secure_embedder.address, timeout=5, security=security) as client:
        error = _refused(lambda: client.embed("x"))
        health_error = _refused(lambda: client.health())  # the handshake fails before any RPC, health too
    assert error.code() == grpc.StatusCode.UNAVAILABLE and health_error.code() == grpc.StatusCode.UNAVAILABLE
    with EmbedderClient(secure_embedder.address, security=_good(certs)) as client:
        assert client.health() == "SERVING"  # refused handshakes leave the server healthy
    reliability("security", case, f"refused at the TLS handshake ({error.code().name}); server stayed SERVING")


def test_scorer_over_tls_calls_the_mutual_tls_embedder(certs, secure_scorer, reliability):
    ours = certs["ours"]
    tls_only = ChannelSecurity(tls=True, ca=str(ours / "ca.pem"), token=TOKEN)
    with ScorerClient(secure_scorer.address, security=tls_only) as scorer:
        result = scorer.score_line(LINE)  # the scorer embeds it through the mutual-TLS embedder
        assert result.record_id and len(result.votes) >= 5
        stream = list(scorer.score_lines([LINE] * 3))
        assert all(item.HasField("result") for item in stream)
    with ScorerClient(secure_scorer.address, security=ChannelSecurity(tls=True, ca=str(ours / "ca.pem"))) as bare:
        assert _refused(lambda: bare.score_line(LINE)).code() == grpc.StatusCode.UNAUTHENTICATED
        assert _refused(lambda: list(bare.score_lines([LINE]))).code() == grpc.StatusCode.UNAUTHENTICATED
        assert _refused(lambda: bare.stats()).code() == grpc.StatusCode.UNAUTHENTICATED
    reliability("security", "scorer over TLS + token, embedder behind it over mutual TLS + token",
                "scored; the same calls without a token: UNAUTHENTICATED")


def test_cli_with_and_without_credentials(certs, secure_scorer, reliability):
    ca = str(certs["ours"] / "ca.pem")
    base = [LOGMESH, "score", "--scorer", secure_scorer.address, "--tls-ca", ca, LINE]
    served = subprocess.run([*base, "--token", TOKEN], capture_output=True, text=True, timeout=60)
    assert served.returncode == 0 and "score=" in served.stdout, served.stderr
    refused = subprocess.run(base, capture_output=True, text=True, timeout=60, env=_env_without_logmesh())
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr and "--token" in refused.stderr
    from_env = subprocess.run(base, capture_output=True, text=True, timeout=60,
                              env={**_env_without_logmesh(), "LOGMESH_TOKEN": TOKEN})
    assert from_env.returncode == 0, from_env.stderr
    reliability("security", "`logmesh score` without a token", refused.stderr.strip().splitlines()[0])


def test_plaintext_off_loopback_is_refused_with_what_to_do(reliability):
    done = subprocess.run([LOGMESH, "serve", "scorer", "--host", "0.0.0.0", "--port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--tls-cert" in done.stderr and "--allow-plaintext" in done.stderr
    with pytest.raises(ValueError, match="loopback"):
        ServerSecurity().check_bind("0.0.0.0")
    ServerSecurity().check_bind("localhost")  # loopback plaintext is the default
    ServerSecurity(allow_plaintext=True).check_bind("0.0.0.0")
    reliability("security", "plaintext server on 0.0.0.0 without --allow-plaintext",
                "refused to start: " + done.stderr.strip().splitlines()[-1][:160])


def test_bad_security_settings_say_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="both --tls-cert and --tls-key"):
        ServerSecurity(tls_cert="cert.pem")
    with pytest.raises(ValueError, match="needs --tls-cert"):
        ServerSecurity(tls_client_ca="ca.pem")
    with pytest.raises(ValueError, match="cannot read TLS certificate"):
        ServerSecurity(tls_cert=str(tmp_path / "missing.pem"), tls_key=str(tmp_path / "k")).credentials()
    tokens = tmp_path / "tokens"
    tokens.write_text("# ops\nalpha\n\n beta \n")
    assert load_tokens(str(tokens), env="gamma, ") == {"alpha", "beta", "gamma"}
    tokens.write_text("# nothing\n")
    with pytest.raises(ValueError, match="holds no token"):
        load_tokens(str(tokens), env="")


def test_grpcurl_reaches_the_mutual_tls_server(certs, secure_embedder, grpcurl):
    ours = certs["ours"]
    tls = ["-cacert", str(ours / "ca.pem"), "-cert", str(ours / "client.pem"), "-key", str(ours / "client.key")]
    # reflection needs the token; the health RPC itself goes without one (-reflect-header, not -H)
    health = subprocess.run([grpcurl, *tls, "-reflect-header", f"authorization: Bearer {TOKEN}",
                             "-d", '{"service": "logmesh.v1.EmbedderService"}',
                             secure_embedder.address, "grpc.health.v1.Health/Check"],
                            capture_output=True, text=True, timeout=60)
    assert health.returncode == 0 and "SERVING" in health.stdout, health.stderr
    no_token = subprocess.run([grpcurl, *tls, secure_embedder.address, "list"], capture_output=True, text=True,
                              timeout=60)
    assert no_token.returncode != 0 and "Unauthenticated" in no_token.stderr
    listed = subprocess.run([grpcurl, *tls, "-H", f"authorization: Bearer {TOKEN}", secure_embedder.address, "list"],
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and "logmesh.v1.EmbedderService" in listed.stdout, listed.stderr


def _env_without_logmesh() -> dict[str, str]:
    import os
    return {k: v for k, v in os.environ.items() if not k.startswith("LOGMESH_TOKEN") and not k.startswith("LOGMESH_TLS")}
