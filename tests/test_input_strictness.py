"""Input patterns are full-matched, and FHIR ids from a request are checked before any URL is
built from them (issue 14, point 10).

`re.match` with `^...$` accepts a trailing newline (`$` matches before it), which carries a line
break into a URL or a log. A `context.patientId` of `..` was fetched as `{fhirServer}/Patient/..`
with the client's access token.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from service import create_app
from service.ehr.cds_hooks import SERVICE_ID
from service.errors import RuleLoadError
from service.fhir.ids import is_fhir_id
from service.fhir.mapping import FhirInputError, parse_fhir_datetime
from service.knowledge.loader import load_knowledge
from tests.conftest import mini_rules_with

SERVICE = f"/cds-services/{SERVICE_ID}"
EHR = "https://ehr.example.org/fhir/r4"
TOKEN = "opaque-fhir-access-token-0a1b"


class RecordingFhir:
    """A FHIR server transport that records every URL it is asked for and has no data."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    def __call__(self, url: str, headers: dict[str, str], timeout: float, max_bytes: int) -> tuple[int, bytes]:
        self.urls.append(url)
        if "/Patient/" in url:
            return 200, orjson.dumps({"resourceType": "Patient", "id": url.rsplit("/", 1)[1]})
        return 200, b'{"resourceType": "Bundle", "type": "searchset", "entry": []}'


@pytest.fixture(scope="module")
def fetch_app():
    return create_app({"TESTING": True, "HOOKS_FHIR_SERVERS": EHR})


@pytest.fixture()
def fhir(fetch_app) -> RecordingFhir:
    fake = RecordingFhir()
    fetch_app.extensions["cds_hooks"].fetcher.transport = fake
    return fake


def hook_call(patient_id: Any, **context: Any) -> dict[str, Any]:
    """A patient-view call with nothing prefetched and a token: the service would fetch."""
    return {"hook": "patient-view", "hookInstance": str(uuid.uuid4()), "fhirServer": EHR,
            "fhirAuthorization": {"access_token": TOKEN, "token_type": "Bearer", "expires_in": 300,
                                  "scope": "user/*.read", "subject": "legpain-cds"},
            "context": {"userId": "Practitioner/p", "patientId": patient_id, **context}}


def test_a_valid_patient_id_is_fetched(fetch_app, fhir):
    resp = fetch_app.test_client().post(SERVICE, json=hook_call("pat-01.a"))
    assert resp.status_code == 200, resp.get_json()
    assert any(u == f"{EHR}/Patient/pat-01.a" for u in fhir.urls)


@pytest.mark.parametrize("patient_id", ["..", ".", "a/../b", "pat-1\n", "pat 1", "x" * 65, "", "%2e%2e",
                                        "Patient/1", "é"])
def test_a_patient_id_that_is_not_a_fhir_id_is_400_before_any_fetch(fetch_app, fhir, patient_id):
    resp = fetch_app.test_client().post(SERVICE, json=hook_call(patient_id))
    assert resp.status_code == 400, resp.get_json()
    issues = resp.get_json()["issue"]
    assert any(i.get("expression") == ["context.patientId"] for i in issues), issues
    assert fhir.urls == []  # nothing was read with the client's token


@pytest.mark.parametrize(("key", "value"), [
    ("userId", "Practitioner/p\n"),
    ("encounterId", "enc-1\n"),
    ("encounterId", ".."),
])
def test_other_context_ids_are_full_matched(fetch_app, fhir, key, value):
    resp = fetch_app.test_client().post(SERVICE, json=hook_call("p1", **{key: value}))
    assert resp.status_code == 400
    assert any(i.get("expression") == [f"context.{key}"] for i in resp.get_json()["issue"])
    assert fhir.urls == []


def test_a_hook_instance_with_a_trailing_newline_is_400(fetch_app, fhir):
    body = hook_call("p1")
    body["hookInstance"] += "\n"
    resp = fetch_app.test_client().post(SERVICE, json=body)
    assert resp.status_code == 400
    assert any(i.get("expression") == ["hookInstance"] for i in resp.get_json()["issue"])


def test_a_next_link_with_dot_segments_is_not_followed(fetch_app, fhir):
    body = hook_call("p1")
    body["prefetch"] = {"patient": None, "conditions": None, "observations": {
        "resourceType": "Bundle", "type": "searchset", "entry": [],
        "link": [{"relation": "next", "url": f"{EHR}/../admin/Observation?page=2"}]}}
    resp = fetch_app.test_client().post(SERVICE, json=body)
    assert resp.status_code == 200  # the first page is read; the next link is not followed
    assert not any("admin" in url or "/../" in url for url in fhir.urls)


@pytest.mark.parametrize(("value", "ok"), [
    ("a", True), ("A-b.9", True), ("x" * 64, True), ("x" * 65, False), (".", False), ("..", False),
    ("...", True), ("a\n", False), ("a/b", False), ("", False), (None, False), (7, False),
])
def test_the_fhir_id_rule(value, ok):
    assert is_fhir_id(value) is ok


@pytest.mark.parametrize("value", ["2024-01-02\n", "2024-01-02T03:04:05Z\n", "2024\n"])
def test_a_fhir_date_with_a_trailing_newline_is_refused(value):
    with pytest.raises(FhirInputError):
        parse_fhir_datetime(value, "x", latest=False)


def test_a_rule_id_with_a_trailing_newline_is_a_load_error(tmp_path: Path):
    rules = mini_rules_with(tmp_path / "rules", """
  - id: "mini.newline\\n"
    version: 1
    title: An id with a line break
    rationale: Ids are full-matched.
    sources: [src-000]
    evidence: low
    when: {all: [{finding: a}]}
    then: {tier: soon}
""")
    with pytest.raises(RuleLoadError) as info:
        load_knowledge(rules)
    assert "domains/mini.yaml" in info.value.detail and "id" in info.value.detail
