"""Structured logs: one JSON line per request and per evaluation, a validated X-Request-ID, and
never any patient data, in process and from real gunicorn's stdout / stderr."""

from __future__ import annotations

import io
import json
import logging
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ops_support
import pytest

from service.errors import RuleLoadError
from service.ops import logs

ROOT = Path(__file__).resolve().parent.parent
SECRET_ENCOUNTER = "ZZ-SECRET-ENC-991"


@pytest.fixture()
def captured() -> Iterator[io.StringIO]:
    """Everything the `service` loggers write, through the production formatter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger(logs.LOGGER)
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def distinctive_request(findings_catalogue: list[dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """A valid request whose every number is distinctive (4 decimals, inside its range), with the
    strings that must never reach a log."""
    findings: list[dict[str, Any]] = []
    secrets = [SECRET_ENCOUNTER]
    for i, item in enumerate(findings_catalogue):
        if item["type"] == "number":
            lo, hi = item.get("range") or (0, 1)
            v = round(lo + (hi - lo) * 0.3737 + (i % 7) / 1000 + 0.0001, 4)
            if item["code"] == "slr_angle":
                v = 73.3719
            findings.append({"code": item["code"], "value": v})
            secrets.append(repr(v))
        elif item["type"] == "boolean" and i % 3 == 0:
            findings.append({"code": item["code"]})
    body = {"encounter_id": SECRET_ENCOUNTER, "patient": {"age": 67.4311, "sex": "female"}, "findings": findings}
    secrets.append("67.4311")
    return body, secrets


# --- in process -----------------------------------------------------------------------------


def test_one_request_line_and_one_evaluation_line(client, captured, knowledge):
    case = knowledge.cases[0]
    r = client.post("/v1/evaluations", json=case.request, headers={"X-Request-ID": "req-4f2a.77:b"})
    assert r.status_code == 200
    assert r.headers["X-Request-ID"] == "req-4f2a.77:b"
    answer = r.get_json()
    out = lines(captured)
    request_lines = [x for x in out if x.get("event") == "request"]
    evaluation_lines = [x for x in out if x.get("event") == "evaluation"]
    assert len(request_lines) == 1 and len(evaluation_lines) == 1, out
    req, ev = request_lines[0], evaluation_lines[0]
    assert req["request_id"] == ev["request_id"] == "req-4f2a.77:b"
    assert req["route"] == "/v1/evaluations" and req["method"] == "POST" and req["status"] == 200
    assert req["ruleset_version"] == knowledge.version
    assert req["tier"] == answer["urgency"]["tier"]
    assert isinstance(req["duration_ms"], float) and req["duration_ms"] > 0
    assert req["level"] == "info" and req["logger"] == "service.request" and req["ts"].endswith("Z")
    assert ev["evaluation_id"] == answer["evaluation_id"]
    assert ev["tier"] == answer["urgency"]["tier"]
    assert ev["red_flags"] == [f["code"] for f in answer["red_flags"]]
    assert ev["top3"] == [d["condition"] for d in answer["differential"][:3]]
    assert ev["rules_fired"] == len(answer["provenance"])


def test_a_request_without_evaluation_has_no_tier(client, captured):
    r = client.get("/v1/findings")
    req = [x for x in lines(captured) if x.get("event") == "request"]
    assert len(req) == 1 and "tier" not in req[0]
    assert req[0]["route"] == "/v1/<name>"
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["X-Request-ID"])
    assert req[0]["request_id"] == r.headers["X-Request-ID"]


@pytest.mark.parametrize("bad", [
    "x" * 129,                      # too long
    "has space",
    "quote\"inject",
    "json}{\"level\":\"error\"",
    "-starts-with-dash",
    "new\\nline",
    "ünïcode",
    "ZZ-SECRET;rm -rf",
])
def test_unsafe_request_ids_are_replaced(client, captured, bad):
    r = client.get("/healthz/live", headers={"X-Request-ID": bad})
    rid = r.headers["X-Request-ID"]
    assert rid != bad and re.fullmatch(r"[0-9a-f]{32}", rid)
    assert bad not in captured.getvalue()
    assert [x["request_id"] for x in lines(captured) if x.get("event") == "request"] == [rid]


@pytest.mark.parametrize("good", ["a", "0f8a281f-69754bf0-93f1", "Root=1-5759e988-bd862e3fe1be46a994272793",
                                  "req/2024+abc=", "x" * 128])
def test_safe_request_ids_are_kept(client, good):
    assert client.get("/healthz/live", headers={"X-Request-ID": good}).headers["X-Request-ID"] == good


def test_no_patient_data_in_process(client, captured):
    catalogue = client.get("/v1/findings").get_json()["items"]
    body, secrets = distinctive_request(catalogue)
    assert client.post("/v1/evaluations", json=body).status_code == 200
    # the same values on the error paths: 422 (out of range, unknown code) and 400
    number = next(f for f in body["findings"] if "value" in f)
    bad = {"encounter_id": SECRET_ENCOUNTER, "findings": [{"code": "ZZSECRETCODE"},
                                                          {"code": number["code"], "value": 98765.4321}]}
    assert client.post("/v1/evaluations", json=bad).status_code == 422
    assert client.post("/v1/evaluations", data=f'{{"encounter_id": "{SECRET_ENCOUNTER}", 73.3719',
                       content_type="application/json").status_code == 400
    client.get("/v1/rules/ZZSECRETRULE")
    text = captured.getvalue()
    assert text.count('"event":"request"') == 5
    for secret in [*secrets, "ZZSECRET", "98765.4321"]:
        assert secret not in text, f"{secret!r} reached the logs"


def test_exceptions_are_logged_without_their_message():
    fmt = logs.JsonFormatter()
    try:
        raise ValueError(f"bad value {SECRET_ENCOUNTER} 73.3719")
    except ValueError:
        record = logging.getLogger("service.test").makeRecord(
            "service.test", logging.ERROR, __file__, 1, "failed", (), exc_info=__import__("sys").exc_info())
    out = json.loads(fmt.format(record))
    assert out["exc_type"] == "ValueError" and out["stack"]
    assert SECRET_ENCOUNTER not in json.dumps(out) and "73.3719" not in json.dumps(out)


def test_rule_load_errors_keep_their_message():
    from service.errors import LoadProblem

    fmt = logs.JsonFormatter()
    err = RuleLoadError([LoadProblem("domains/x.yaml", "x.rule", "undeclared finding 'y'")])
    record = logging.getLogger("gunicorn.error").makeRecord(
        "gunicorn.error", logging.ERROR, __file__, 1, "boot failed", (), exc_info=(RuleLoadError, err, None))
    assert "x.rule" in json.loads(fmt.format(record))["exc_message"]


# --- real gunicorn ---------------------------------------------------------------------------


@pytest.mark.slow
def test_no_patient_data_in_gunicorn_output(tmp_path):
    """Real gunicorn (2 workers, the container's settings): every line on stdout and stderr is
    JSON, and none carries a request value."""
    with ops_support.gunicorn(tmp_path, CDS_ACCESS_LOG="off", CDS_LOG_LEVEL="debug") as server:
        catalogue = server.http.get(server.url + "/v1/findings", timeout=10).json()["items"]
        body, secrets = distinctive_request(catalogue)
        for _ in range(3):  # reach both workers
            r = server.http.post(server.url + "/v1/evaluations", json=body, timeout=10,
                                 headers={"X-Request-ID": "it-logs-1"})
            assert r.status_code == 200, r.text[:500]
            assert r.headers["X-Request-ID"] == "it-logs-1"
        number = next(f for f in body["findings"] if "value" in f)
        r = server.http.post(server.url + "/v1/evaluations", timeout=10, json={
            "encounter_id": SECRET_ENCOUNTER, "findings": [{"code": "ZZSECRETCODE"},
                                                           {"code": number["code"], "value": 98765.4321}]})
        assert r.status_code == 422
        r = server.http.post(server.url + "/v1/evaluations?patient=ZZSECRETQUERY", timeout=10,
                             data=f'{{"encounter_id": "{SECRET_ENCOUNTER}", 73.3719'.encode(),
                             headers={"Content-Type": "application/json", "X-Request-ID": "bad id ZZSECRETRID"})
        assert r.status_code == 400
        server.http.get(server.url + "/v1/rules/ZZSECRETRULE", timeout=10)
        # malformed HTTP: gunicorn itself answers 400 and warns, quoting what it could not parse
        for raw in (b"GET /v1/findings HTTP/1.1\r\nZZSECRET(HDR): x\r\n\r\n",
                    b"GET /v1/findings?ZZSECRETLINE HTTP/9.9\r\n\r\n",
                    b"ZZSECRETMETHOD\x01 / HTTP/1.1\r\n\r\n"):
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
                s.sendall(raw)
                assert s.recv(100).startswith(b"HTTP/1.1 4")
        ops_support.stop(server.proc)
        output = server.output()
    for secret in [*secrets, "ZZSECRET", "98765.4321"]:
        assert secret not in output, f"{secret!r} reached gunicorn's output"
    records = []
    for line in output.splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError:
                pytest.fail(f"not a JSON line: {line[:300]}")
    requests_logged = [x for x in records if x.get("event") == "request"]
    assert len(requests_logged) >= 7  # findings, 3 evaluations, 422, 400, 404 (+ readiness polls)
    assert {x["request_id"] for x in requests_logged if x["route"] == "/v1/evaluations"} >= {"it-logs-1"}
    assert len([x for x in records if x.get("event") == "evaluation"]) == 3
    assert any(x["logger"] == "gunicorn.error" for x in records)


def test_the_request_line_has_the_route_template_and_a_closed_method(client, captured):
    """The route and method are worked out once per request for the request line and the
    request metrics (service/ops/logs.py request_labels): an unknown method and an unmatched
    path are still written as OTHER and <unmatched>, a matched route as its template."""
    client.open("/v1/zz-no-such-path", method="ZZSECRETMETHOD")
    client.get("/v1/rules/ZZ-NO-SUCH-RULE")
    req = [x for x in lines(captured) if x.get("event") == "request"]
    assert [(x["method"], x["route"]) for x in req] == [("OTHER", "<unmatched>"), ("GET", "/v1/rules/<rule_id>")]
    assert "ZZSECRET" not in captured.getvalue()


def test_requests_sharing_an_app_context_each_get_their_own_route_and_method(app, client, captured):
    """While an app context stays pushed, requests share its `g`: what is worked out once a
    request (route template and method) must not carry over to the next request."""
    with app.app_context():
        client.get("/healthz/live")
        client.get("/v1/rules/ZZ-NO-SUCH-RULE")
        client.open("/healthz/live", method="ZZSECRETMETHOD")
    req = [x for x in lines(captured) if x.get("event") == "request"]
    assert [(x["method"], x["route"]) for x in req] == [
        ("GET", "/healthz/live"), ("GET", "/v1/rules/<rule_id>"), ("OTHER", "<unmatched>")]
