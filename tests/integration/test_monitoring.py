"""deploy/prometheus and deploy/grafana, checked with Prometheus' own promtool: the scrape config and the
alerting rules are valid, the rules' unit tests (rules_test.yml: synthetic series, expected alerts) pass,
every PromQL expression of the dashboard parses, and every metric the rules and the dashboard read is one
logmesh declares (runtime/metrics.py) or Prometheus' own `up`."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

from logmesh.embedder import cache as _embedder_metrics  # noqa: F401  (registers the embedder's metrics)
from logmesh.runtime.metrics import REGISTRY
from logmesh.scorer import prometheus_metrics as _scorer_metrics  # noqa: F401  (registers the scorer's)
from logmesh.streaming import metrics as _stream_metrics  # noqa: F401  (registers the job's)

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "deploy/prometheus"
DASHBOARD = REPO / "deploy/grafana/logmesh-overview.json"
PROMQL_WORDS = {"sum", "by", "rate", "histogram_quantile", "without", "on", "ignoring", "and", "or", "unless",
                "avg", "max", "min", "count", "increase", "irate", "le", "bool", "offset"}


def _promtool(promtool: str, *args: str, cwd: Path = REPO) -> str:
    done = subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def _declared() -> set[str]:
    names = {"up"}
    for metric in REGISTRY.collect():
        names.add(metric.name)
        names.update(sample.name for sample in metric.samples)
        if metric.type == "counter":
            names.add(metric.name + "_total")
        if metric.type == "histogram":
            names.update(metric.name + s for s in ("_bucket", "_count", "_sum"))
    return names


def _metric_names(expr: str) -> set[str]:
    """Identifiers in a PromQL expression that are metric names (not functions, keywords, labels or strings)."""
    bare = re.sub(r'"[^"]*"', '""', expr)
    bare = re.sub(r"\{[^}]*\}", "{}", bare)  # label matchers
    bare = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", bare)  # grouping labels
    bare = re.sub(r"\[[^\]]*\]", "", bare)  # ranges
    words = {m.group() for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare)
             if not bare[m.end():].lstrip().startswith("(")} - PROMQL_WORDS  # a name before "(" is a function
    return {w for w in words if not re.fullmatch(r"\d+[smhd]?", w) and "$" not in w}


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def test_scrape_config_and_rules_are_valid(promtool):
    out = _promtool(promtool, "check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert "SUCCESS" in out and "1 rule files found" in out
    assert "SUCCESS" in _promtool(promtool, "check", "rules", str(PROMETHEUS / "rules.yml"))


def test_alert_rules_fire_on_the_series_they_describe(promtool):
    """rules_test.yml feeds synthetic series (an embedder down, 10% UNAVAILABLE, traffic stopping, caller
    mistakes that must not alert) and names the alerts that must and must not fire."""
    assert "SUCCESS" in _promtool(promtool, "test", "rules", "rules_test.yml", cwd=PROMETHEUS)


def test_dashboard_is_a_grafana_dashboard_whose_queries_parse(promtool, tmp_path):
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) >= 5
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert panel["type"] in {"timeseries", "stat", "table", "bargauge", "heatmap"} and panel["title"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"]), panel["title"]
    # promtool parses PromQL in rule files: each query becomes a recording rule, Grafana's variables
    # replaced by what they expand to
    rules = [{"record": f"logmesh:dashboard_query_{i}", "expr": expr.replace("$__rate_interval", "5m").replace("$job", ".*")}
             for i, expr in enumerate(_dashboard_exprs())]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in _promtool(promtool, "check", "rules", str(path))


def test_rules_and_dashboard_read_only_metrics_logmesh_exposes():
    declared = _declared()
    rules = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]] + _dashboard_exprs()
    read = set().union(*(_metric_names(e) for e in exprs))
    assert {"up", "grpc_server_handled_total", "grpc_server_handling_seconds_bucket"} <= read
    assert read <= declared, f"not exposed by logmesh: {sorted(read - declared)}"


def test_k8s_servers_expose_metrics_where_their_scrape_annotations_say():
    """Each annotated pod passes --metrics-port at the annotated port, declares that container port, and
    its job name (app.kubernetes.io/name) is one the alert rules select."""
    rules = (PROMETHEUS / "rules.yml").read_text()
    for name in ("embedder", "scorer"):
        [deployment] = [d for d in yaml.safe_load_all((REPO / f"deploy/k8s/{name}.yaml").read_text())
                        if d and d["kind"] == "Deployment"]
        pod = deployment["spec"]["template"]
        port = pod["metadata"]["annotations"]["prometheus.io/port"]
        assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        [container] = pod["spec"]["containers"]
        args = container["args"]
        assert args[args.index("--metrics-port") + 1] == port
        assert {"name": "metrics", "containerPort": int(port), "protocol": "TCP"} in container["ports"]
        assert f'job=~"{pod["metadata"]["labels"]["app.kubernetes.io/name"]}"' in rules


def test_the_streaming_drivers_pod_is_scraped_where_the_job_serves_metrics():
    """The SparkApplication passes --metrics-port (bound on all interfaces) at the port its driver pod is
    annotated with and declares, and the rules select its job name."""
    [app] = [d for d in yaml.safe_load_all((REPO / "deploy/k8s/spark/stream.yaml").read_text())
             if d and d["kind"] == "SparkApplication"]
    driver, args = app["spec"]["driver"], app["spec"]["arguments"]
    port = driver["annotations"]["prometheus.io/port"]
    assert driver["annotations"]["prometheus.io/scrape"] == "true"
    assert args[args.index("--metrics-port") + 1] == port and args[args.index("--metrics-host") + 1] == "0.0.0.0"
    assert {"name": "metrics", "containerPort": int(port), "protocol": "TCP"} in driver["ports"]
    assert f'job=~"{driver["labels"]["app.kubernetes.io/name"]}"' in (PROMETHEUS / "rules.yml").read_text()

