"""GET /metrics in process (the default registry): what is counted, with which labels, and that
no label ever carries a request value. The multiprocess mode under gunicorn is covered by
test_prometheus_integration.py."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.knowledge.model import TIER_RANK
from service.ops import metrics
from service.ops.logs import METHODS, UNMATCHED_ROUTE, route_template

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "legpain_cds_"


def scrape(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(r.get_data(as_text=True)):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples, metric: str, **labels: str) -> float:
    return samples.get((metric, tuple(sorted(labels.items()))), 0.0)


def test_metrics_endpoint_exposes_every_family(client):
    client.get("/healthz/live")
    names = {name for name, _ in scrape(client)}
    for expected in ("http_requests_total", "http_request_duration_seconds_bucket", "evaluations_total",
                     "red_flags_total", "differential_top3_total", "rule_firings_total",
                     "validation_errors_total", "unknown_codes_total", "ruleset_info", "build_info"):
        assert PREFIX + expected in names, expected
    # cds_hooks_feedback has no series until the first feedback; its family is still declared
    assert "# TYPE legpain_cds_cds_hooks_feedback_total counter" in client.get("/metrics").get_data(as_text=True)


def test_ruleset_and_build_info(client, knowledge):
    samples = scrape(client)
    assert value(samples, PREFIX + "ruleset_info", name=knowledge.name, version=knowledge.version,
                 sha256=knowledge.sha256) == 1
    build = [labels for (name, labels) in samples if name == PREFIX + "build_info"]
    # The source's version, not "unknown": the service runs from its source tree, uninstalled.
    from service import __version__

    assert len(build) == 1 and dict(build[0])["version"] == __version__ != "unknown"


def test_an_evaluation_is_counted_by_tier_flag_condition_and_rule(client, knowledge):
    # The case with the most red flags, so that every family moves.
    case = max(knowledge.cases, key=lambda c: (len(c.expect.get("red_flags_include", []) or []), c.id))
    before = scrape(client)
    r = client.post("/v1/evaluations", json=case.request)
    assert r.status_code == 200
    answer = r.get_json()
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, PREFIX + name, **labels) - value(before, PREFIX + name, **labels)

    assert delta("evaluations_total", tier=answer["urgency"]["tier"], api="native") == 1
    assert sum(delta("evaluations_total", tier=t, api="native") for t in TIER_RANK) == 1
    for flag in answer["red_flags"]:
        assert delta("red_flags_total", flag=flag["code"]) == 1
    for d in answer["differential"][:3]:
        assert delta("differential_top3_total", condition=d["condition"]) == 1
    for d in answer["differential"][3:]:
        assert delta("differential_top3_total", condition=d["condition"]) == 0
    assert answer["provenance"]
    for p in answer["provenance"]:
        assert delta("rule_firings_total", rule=p["rule"]) == 1
    assert delta("http_requests_total", route="/v1/evaluations", method="POST", status="200") == 1
    assert delta("http_request_duration_seconds_count", route="/v1/evaluations", method="POST") == 1


def test_readiness_checks_are_not_counted_as_evaluations(client):
    before = scrape(client)
    assert client.get("/healthz/ready").status_code == 200
    after = scrape(client)
    total = sum(v for (name, _), v in after.items() if name == PREFIX + "evaluations_total")
    assert total == sum(v for (name, _), v in before.items() if name == PREFIX + "evaluations_total")


def test_validation_errors_by_reason_and_unknown_codes(client):
    items = client.get("/v1/findings").get_json()["items"]
    number = next(i for i in items if i["type"] == "number")
    before = scrape(client)
    body = {"findings": [{"code": "zz_not_a_code"}, {"code": "zz_nor_this"},
                         {"code": number["code"], "value": 1e9}]}
    r = client.post("/v1/evaluations", json=body)
    assert r.status_code == 422
    reasons = sorted(e["reason"] for e in r.get_json()["errors"])
    assert reasons == ["out-of-range", "unknown-code", "unknown-code"]
    after = scrape(client)
    assert value(after, PREFIX + "validation_errors_total", reason="unknown-code") - \
        value(before, PREFIX + "validation_errors_total", reason="unknown-code") == 2
    assert value(after, PREFIX + "validation_errors_total", reason="out-of-range") - \
        value(before, PREFIX + "validation_errors_total", reason="out-of-range") == 1
    assert value(after, PREFIX + "unknown_codes_total", api="native") - \
        value(before, PREFIX + "unknown_codes_total", api="native") == 2
    assert value(after, PREFIX + "http_requests_total", route="/v1/evaluations", method="POST", status="422") - \
        value(before, PREFIX + "http_requests_total", route="/v1/evaluations", method="POST", status="422") == 1


def test_routes_are_templates_and_methods_a_closed_set(client, knowledge):
    rule_id = next(iter(knowledge.rules_by_id))
    client.get(f"/v1/rules/{rule_id}")
    client.get("/v1/rules/zz-no-such-rule-4417")
    client.get("/v1/findings")
    client.get("/zz-secret-path-4417/x")
    client.open("/v1/evaluations", method="ZZSECRET")
    samples = scrape(client)
    routes = {dict(labels).get("route") for (name, labels) in samples if name == PREFIX + "http_requests_total"}
    methods = {dict(labels).get("method") for (name, labels) in samples if name == PREFIX + "http_requests_total"}
    assert {"/v1/rules/<rule_id>", "/v1/<name>", UNMATCHED_ROUTE} <= routes
    assert methods <= METHODS | {"OTHER"}
    text = client.get("/metrics").get_data(as_text=True)
    assert "zz-no-such-rule-4417" not in text and "zz-secret-path-4417" not in text and "ZZSECRET" not in text


def test_route_template_normalisation():
    assert route_template("/v1/<any(findings, conditions, tests):name>") == "/v1/<name>"
    assert route_template("/v1/rules/<rule_id>") == "/v1/rules/<rule_id>"
    assert route_template("/x/<int:n>/y/<path:p>") == "/x/<n>/y/<p>"
    assert route_template(None) == UNMATCHED_ROUTE


# Runs in a fresh interpreter: the default registry of this process also holds series of the
# other rule sets the suite loads (fixtures), which are closed sets of their own.
_POST_DISTINCTIVE_VALUES = r"""
import json, sys
from service import create_app
from service.ops import metrics
out_path = sys.argv[1]
app = create_app({"TESTING": True})
client = app.test_client()
items = client.get("/v1/findings").get_json()["items"]
findings = []
for i, item in enumerate(items):
    if item["type"] == "number":
        lo, hi = item.get("range") or (0, 1)
        findings.append({"code": item["code"], "value": round(lo + (hi - lo) * 0.4173 + i / 1000, 4)})
    elif item["type"] == "boolean":
        findings.append({"code": item["code"], "present": i % 2 == 0})
assert client.post("/v1/evaluations", json={"encounter_id": "ZZ-SECRET-ENC-991", "findings": findings,
                   "patient": {"age": 47.25, "sex": "female"}}).status_code == 200
assert client.post("/v1/evaluations", json={"encounter_id": "ZZ-SECRET-ENC-992",
                   "findings": [{"code": "ZZSECRETCODE"}]}).status_code == 422
client.get("/v1/rules/ZZSECRETRULE")
client.get("/ZZSECRETPATH")
client.open("/v1/evaluations", method="ZZSECRETMETHOD")
metrics.record_cds_feedback("ZZ free text outcome", "ZZ free text card")
metrics.record_cds_feedback("accepted", "urgency-urgent")
routes = sorted({metrics.logs.route_template(r.rule) for r in app.url_map.iter_rules()})
open(out_path, "w").write(json.dumps({"routes": routes, "values": [f["value"] for f in findings if "value" in f],
                             "metrics": client.get("/metrics").get_data(as_text=True)}))
"""


def test_no_label_value_outside_its_closed_set(knowledge, tmp_path):
    """Every label value of every legpain_cds sample comes from a closed set: post distinctive
    values, then check each label against the set it may take values from."""
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    result = tmp_path / "out.json"
    r = subprocess.run([sys.executable, "-c", _POST_DISTINCTIVE_VALUES, str(result)], cwd=ROOT,
                       capture_output=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    out = json.loads(result.read_text(encoding="utf-8"))
    text = out["metrics"]
    secrets = ["ZZ-SECRET", "ZZSECRET", "ZZ free text", "47.25"] + [repr(v) for v in out["values"]]
    for secret in secrets:
        assert secret not in text, secret
    closed: dict[str, set[str]] = {
        "route": set(out["routes"]) | {UNMATCHED_ROUTE},
        "method": set(METHODS) | {"OTHER"},
        "tier": set(TIER_RANK) | {metrics.OTHER},
        "api": set(metrics.APIS) | {metrics.OTHER},
        "flag": set(knowledge.red_flags),
        "condition": set(knowledge.conditions),
        "rule": set(knowledge.rules_by_id),
        "reason": set(metrics.VALIDATION_REASONS) | {metrics.OTHER},
        "outcome": set(metrics.FEEDBACK_OUTCOMES) | {metrics.OTHER},
        "card_type": set(metrics.CARD_TYPES) | {metrics.OTHER},
        "name": {knowledge.name},
        "sha256": {knowledge.sha256},
    }
    checked = 0
    for family in text_string_to_metric_families(text):
        if not family.name.startswith(PREFIX):
            continue
        for s in family.samples:
            for key, val in s.labels.items():
                if key == "le":
                    continue
                if key == "status":
                    assert val.isdigit() and len(val) == 3, (s.name, val)
                elif key == "version":  # rule set version (ruleset_info) or package version (build_info)
                    assert val in {knowledge.version, metrics._package_version()}, (s.name, val)
                elif key in ("revision", "python_version"):
                    continue  # set by the operator / the runtime, never by a request
                else:
                    assert key in closed, f"{s.name}: label {key} has no closed set in this test"
                    assert val in closed[key], f"{s.name}{{{key}={val!r}}} is outside its closed set"
                checked += 1
    assert checked > 100


def test_record_cds_feedback(client):
    before = scrape(client)
    metrics.record_cds_feedback("accepted", "urgency-urgent")
    metrics.record_cds_feedback("accepted", "urgency-urgent")
    metrics.record_cds_feedback("overridden", "urgency-emergency")
    metrics.record_cds_feedback("ignored-by-accident", "Some card title a clinician typed")
    after = scrape(client)
    name = PREFIX + "cds_hooks_feedback_total"

    def delta(outcome: str, card_type: str) -> float:
        return value(after, name, outcome=outcome, card_type=card_type) - \
            value(before, name, outcome=outcome, card_type=card_type)

    assert delta("accepted", "urgency-urgent") == 2
    assert delta("overridden", "urgency-emergency") == 1
    assert delta("other", "other") == 1
    assert "clinician typed" not in client.get("/metrics").get_data(as_text=True)


def test_card_types_are_those_the_cds_hooks_service_issues():
    fhir_out = pytest.importorskip("service.fhir.out")
    issued = set(getattr(fhir_out, "CARD_TYPES", ()))
    assert issued, "service.fhir.out.CARD_TYPES is gone: update metrics.CARD_TYPES"
    assert issued <= metrics.CARD_TYPES, sorted(issued - metrics.CARD_TYPES)


def test_latency_buckets_resolve_1_to_50_ms():
    inside = [b for b in metrics.LATENCY_BUCKETS if 0.001 <= b <= 0.05]
    assert len(inside) >= 8, inside
    assert inside[0] == 0.001 and inside[-1] == 0.05


def test_every_validation_reason_in_the_source_is_known():
    """A new `FieldError(pointer, "reason", ...)` in service/ must be added to
    metrics.VALIDATION_REASONS, or it is counted as `other`."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "service").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "FieldError"
                    and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)):
                found[node.args[1].value] = path.name
    assert found, "no FieldError(...) calls found: has the validation moved?"
    unknown = {r: f for r, f in found.items() if r not in metrics.VALIDATION_REASONS}
    assert not unknown, f"add these reasons to service/ops/metrics.py VALIDATION_REASONS: {unknown}"


def test_promtool_check_metrics_passes(client):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (bash scripts/setup-system.sh installs it)")
    client.post("/v1/evaluations", json={"findings": []})
    metrics.record_cds_feedback("accepted", "urgency-soon")
    text = client.get("/metrics").get_data()
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert r.returncode == 0, (r.stdout + r.stderr).decode()


def test_a_metrics_failure_never_costs_the_answer(client, knowledge, monkeypatch):
    import logging

    class Broken:
        def labels(self, *args: str):
            raise OSError("metrics volume full")

    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    monkeypatch.setattr(metrics, "EVALUATIONS", Broken())
    monkeypatch.setattr(metrics, "HTTP_REQUESTS", Broken())
    metrics.log.addHandler(handler)
    try:
        r = client.post("/v1/evaluations", json=knowledge.cases[0].request)
    finally:
        metrics.log.removeHandler(handler)
    assert r.status_code == 200 and r.get_json()["urgency"]["tier"]
    assert "metrics not recorded: OSError in record_evaluation" in seen
    assert "metrics not recorded: OSError in observe_request" in seen
