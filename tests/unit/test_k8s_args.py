"""The Kubernetes manifests' commands match the CLI they run (issue 18): every logmesh container's args in
deploy/k8s/ and deploy/k8s/spark/, expanded as the kubelet expands $(VAR) from logmesh-config, parse with the
real `logmesh` parser, and say what a cluster needs: servers listen beyond loopback, clients name the pools
and the history host by their Services, every path an arg names is on a volume the pod mounts (the root
filesystem is read-only), and Kafka credentials come from the Secret's <principal>.properties through
--kafka-config, for a principal make-secrets.sh writes, the broker formats and acls.sh grants. Reads files
and runs make-secrets.sh into a temporary folder; starts nothing."""
from __future__ import annotations

import argparse
import contextlib
import io
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from logmesh.cli import build_parser
from logmesh.cli.kafka_config import read_kafka_config

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
DOCS = [d for p in sorted([*K8S.glob("*.yaml"), *K8S.glob("spark/*.yaml")]) if "kustomization" not in p.name
        for d in yaml.safe_load_all(p.read_text()) if d]
CONFIG = next(d["data"] for d in DOCS if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "logmesh-config")
WORKLOADS = ("Deployment", "StatefulSet", "Job")


def _expand(arg: str, env: dict[str, str]) -> str:
    def one(m: re.Match) -> str:
        assert m.group(1) in env, f"$({m.group(1)}) is neither in logmesh-config nor in the container's env"
        return env[m.group(1)]
    return re.sub(r"\$\((\w+)\)", one, arg)  # as the kubelet does


def _containers() -> dict[str, tuple[dict, dict, list[str]]]:
    """name -> (container, pod spec, argv) for every container that runs a logmesh image."""
    out = {}
    for d in DOCS:
        if d["kind"] in WORKLOADS:
            pod = d["spec"]["template"]["spec"]
            for c in pod["containers"]:
                if c["image"].startswith("logmesh/"):
                    env = {**CONFIG, **{e["name"]: e.get("value", "<from a secret>") for e in c.get("env", [])}}
                    out[d["metadata"]["name"]] = (c, pod, [_expand(a, env) for a in c["args"]])
        elif d["kind"] == "SparkApplication":  # deploy/spark/stream_main.py runs `logmesh stream ARGS`
            spec = d["spec"]
            driver = {"volumeMounts": spec["driver"]["volumeMounts"]}
            out[d["metadata"]["name"] + "/spark"] = (driver, {"volumes": spec["volumes"]},
                                                     ["stream", *[_expand(a, CONFIG) for a in spec["arguments"]]])
    return out


CONTAINERS = _containers()


def _parse(argv: list[str]) -> argparse.Namespace:
    command = argv[0]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            return build_parser(command).parse_args(argv)
        except SystemExit:
            pytest.fail(f"`logmesh {' '.join(argv)}` is refused by the real parser: {err.getvalue()}")


def _mount_of(path: str, container: dict, pod: dict) -> tuple[dict, dict]:
    """The volumeMount (the deepest) under which `path` lies, and its volume."""
    mounts = [m for m in container["volumeMounts"] if path == m["mountPath"] or path.startswith(m["mountPath"] + "/")]
    assert mounts, f"{path} is on no volume the pod mounts (its root filesystem is read-only)"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]] or [
        {"name": mount["name"], "claimTemplate": True}]  # a StatefulSet's volumeClaimTemplates
    return mount, volume


def _service(name: str) -> dict:
    (svc,) = [d for d in DOCS if d["kind"] == "Service" and d["metadata"]["name"] == name]
    return svc


def _target(address: str) -> tuple[str, int, bool]:
    """(service name, port, headless pool?) of a HOST:PORT or dns:///HOST:PORT address."""
    pool = address.startswith("dns:///")
    host, port = address.removeprefix("dns:///").rsplit(":", 1)
    return host, int(port), pool


def _reaches(address: str, workload: str, want_pool: bool) -> None:
    host, port, pool = _target(address)
    assert pool == want_pool, address
    svc = _service(host)
    assert svc["spec"]["selector"] == {"app.kubernetes.io/name": workload}, (address, svc["spec"]["selector"])
    assert [p["port"] for p in svc["spec"]["ports"]] == [port], address
    if pool:  # round_robin needs one A record per pod: a ClusterIP would pin the channel to one pod
        assert svc["spec"].get("clusterIP") == "None", f"{host} must be headless for {address}"


def test_every_logmesh_container_is_checked():
    assert {"logmesh-embedder", "logmesh-scorer", "logmesh-history", "logmesh-console", "logmesh-stream",
            "logmesh-stream/spark"} <= CONTAINERS.keys()


@pytest.mark.parametrize("name", sorted(CONTAINERS))
def test_the_real_parser_takes_the_manifest_args(name):
    container, pod, argv = CONTAINERS[name]
    args = _parse(argv)
    if argv[0] == "serve":  # servers listen beyond loopback; plaintext only behind the cluster's mesh
        assert args.host == "0.0.0.0" and args.allow_plaintext, argv
        ports = {p["containerPort"] for p in container["ports"]}
        assert args.port in ports, (args.port, ports)
        if getattr(args, "metrics_port", None):
            assert args.metrics_port in ports
    for attr in ("model_dir", "state_dir", "kafka_config", "checkpoint"):
        value = getattr(args, attr, None)
        if value and value.startswith("/"):
            mount, volume = _mount_of(value, container, pod)
            if attr in ("state_dir", "checkpoint"):
                assert not mount.get("readOnly") and "secret" not in volume and "configMap" not in volume, attr


def test_the_scoring_pool_is_pure_and_calls_the_embedder_pool():
    args = _parse(CONTAINERS["logmesh-scorer"][2])
    assert (args.anomalies_topic, args.feedback_topic, args.incidents_topic, args.state_dir) == ("", "", "", "")
    _reaches(args.embedder, "logmesh-embedder", want_pool=True)
    _reaches(CONFIG["SCORER_POOL"], "logmesh-scorer", want_pool=True)


def test_the_history_host_reads_kafka_with_its_own_credentials_and_keeps_its_state():
    container, pod, argv = CONTAINERS["logmesh-history"]
    args = _parse(argv)
    assert args.kafka_bootstrap == CONFIG["KAFKA_BOOTSTRAP"] and urlsplit("//" + args.kafka_bootstrap).hostname == "kafka"
    _service("kafka")
    assert args.anomalies_topic == "logmesh.anomalies" and args.feedback_topic and args.incidents_topic
    assert args.qdrant_url == CONFIG["QDRANT_URL"] and args.llm_url == CONFIG["LLM_URL"]
    _reaches(args.embedder, "logmesh-embedder", want_pool=True)
    (sts,) = [d for d in DOCS if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "logmesh-history"]
    assert sts["spec"]["replicas"] == 2  # one book: test_the_history_replicas_share_one_incident_book
    assert not any(d["kind"] == "HorizontalPodAutoscaler" and d["spec"]["scaleTargetRef"]["name"] == "logmesh-history"
                   for d in DOCS)
    mount, _ = _mount_of(args.state_dir, container, pod)
    assert mount["name"] in {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    assert sts["spec"]["serviceName"] == "logmesh-history"
    _reaches(CONFIG["HISTORY_ADDR"], "logmesh-history", want_pool=False)


def test_the_history_replicas_share_one_incident_book():
    """Two replicas, one book (the lease picks the writer), each its own state dir, a lease timeout the broker
    takes (its group.min.session.timeout.ms: 6 s by default), and a disruption budget that keeps one up."""
    container, pod, argv = CONTAINERS["logmesh-history"]
    args = _parse(argv)
    (sts,) = [d for d in DOCS if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "logmesh-history"]
    assert sts["spec"]["replicas"] == 2 and args.incidents_book
    assert 6 <= args.incident_lease_timeout <= 30  # the broker's minimum; a dead owner's alerts wait this long
    assert args.state_dir and args.incidents_topic and args.feedback_topic  # the book and its labels
    mount, _ = _mount_of(args.state_dir, container, pod)
    assert mount["name"] in {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}  # one per pod
    (pdb,) = [d for d in DOCS if d["kind"] == "PodDisruptionBudget" and d["metadata"]["name"] == "logmesh-history"]
    assert pdb["spec"]["selector"] == sts["spec"]["selector"] and pdb["spec"]["maxUnavailable"] == 1


def test_the_console_reads_the_history_host():
    args = _parse(CONTAINERS["logmesh-console"][2])
    assert args.scorer == CONFIG["HISTORY_ADDR"]


@pytest.mark.parametrize("name", ["logmesh-stream", "logmesh-stream/spark"])
def test_the_job_calls_the_pools(name):
    args = _parse(CONTAINERS[name][2])
    _reaches(args.scorer, "logmesh-scorer", want_pool=True)
    _reaches(args.embedder, "logmesh-embedder", want_pool=True)
    assert args.bootstrap == CONFIG["KAFKA_BOOTSTRAP"]
    assert args.metrics_port == 9153 and args.metrics_host == "0.0.0.0"


def _users(script: str) -> list[str]:
    (line,) = re.findall(r"^USERS=\((.*)\)$", (K8S / "kafka" / script).read_text(), re.M)
    return line.split()


@pytest.mark.parametrize("name,principal", [("logmesh-history", "scorer"), ("logmesh-stream", "stream"),
                                            ("logmesh-stream/spark", "stream")])
def test_kafka_credentials_come_from_the_secret_through_kafka_config(name, principal, tmp_path):
    container, pod, argv = CONTAINERS[name]
    args = _parse(argv)
    assert args.kafka_config, f"{name}: no --kafka-config"
    assert not any("sasl" in o for o in argv), f"{name}: a credential on the command line"
    assert not any("password" in e["name"].lower() for e in container.get("env", []))
    mount, volume = _mount_of(args.kafka_config, container, pod)
    assert mount.get("readOnly") and volume["secret"]["secretName"] == "logmesh-kafka-users"
    item = Path(args.kafka_config).relative_to(mount["mountPath"]).as_posix()
    assert {"key": f"{principal}.properties", "path": item} in volume["secret"]["items"]
    # the principal exists wherever a principal is made, formatted and granted
    assert principal in _users("make-secrets.sh") and principal in _users("broker.sh")
    assert f"User:{principal}" in (K8S / "kafka" / "acls.sh").read_text()
    (kafka,) = [d for d in DOCS if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "logmesh-kafka"]
    users = next(v for v in kafka["spec"]["template"]["spec"]["volumes"] if v["name"] == "users")
    assert principal in {i["key"] for i in users["secret"]["items"]}
    # the file make-secrets.sh writes for that key is what the CLI reads: the principal's SASL login
    if not shutil.which("openssl"):
        pytest.fail("openssl not installed (make-secrets.sh draws the passwords with it)")
    subprocess.run(["bash", str(K8S / "kafka" / "make-secrets.sh"), str(tmp_path / "secrets")], check=True,
                   capture_output=True, timeout=60)
    args.kafka_config, args.kafka_options = str(tmp_path / "secrets" / f"{principal}.properties"), {}
    read_kafka_config(args, spark=argv[0] == "stream")
    assert args.kafka_options["sasl.username"] == principal
    assert args.kafka_options["security.protocol"] == "SASL_PLAINTEXT"
    if argv[0] == "stream":
        assert f'username="{principal}"' in args.spark_kafka_options["sasl.jaas.config"]
