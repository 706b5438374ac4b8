"""One set of contract tests for the fetch path, against the hand-made stub and against a real
FHIR R4 server (sekmet-fhir): the same prefetch searches give the same resources, and the
service reading a record only through fetching reads what its table says."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service import create_app
from service.ehr.cds_hooks import ALL_KEYS, prefetch_templates
from tests.fhir_servers import SEKMET_BIN, TOKEN, SekmetServer, StubFhir
from tests.records import RECORDS, matches

STUB_BASE = "https://ehr.example.org/fhir"
ALL_RESOURCES = [res for r in RECORDS for res in [r.patient(), *(x for xs in r.keys.values() for x in xs)]]


@pytest.fixture(scope="module")
def sekmet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SekmetServer]:
    if not SEKMET_BIN.exists():
        pytest.fail(f"{SEKMET_BIN} is missing: run `bash scripts/setup.sh test` (it makes .venv-sekmet)")
    server = SekmetServer(Path(tmp_path_factory.mktemp("sekmet")))
    server.start()
    try:
        answer = server.load(ALL_RESOURCES)
        assert len(answer["entry"]) == len(ALL_RESOURCES)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module", params=["stub", "sekmet"])
def server(request: pytest.FixtureRequest) -> tuple[str, Any]:
    """(base URL, transport) of each server."""
    if request.param == "stub":
        return STUB_BASE, StubFhir(STUB_BASE, ALL_RESOURCES)
    real: SekmetServer = request.getfixturevalue("sekmet")
    return real.base, real.transport


@pytest.fixture(scope="module")
def fetch_app(server: tuple[str, Any]) -> Any:
    base, transport = server
    app = create_app({"TESTING": True, "HOOKS_FHIR_SERVERS": base})
    app.extensions["cds_hooks"].fetcher.transport = transport
    return app


@pytest.fixture(scope="module")
def knowledge():
    return create_app({"TESTING": True}).extensions["evaluator"].knowledge


def _search(base: str, transport: Any, relative: str) -> dict[str, Any]:
    import json

    status, body = transport(f"{base}/{relative}", {"Authorization": f"Bearer {TOKEN}",
                                                     "Accept": "application/fhir+json"}, 10.0, 8_000_000)
    assert status == 200, (relative, status, body[:300])
    return dict(json.loads(body))


def test_every_template_search_gives_the_same_resources_on_the_stub_and_the_real_server(knowledge, sekmet):
    stub = StubFhir(STUB_BASE, ALL_RESOURCES)
    templates = prefetch_templates(knowledge)
    compared = 0
    for record in RECORDS:
        for key, template in templates.items():
            relative = template.replace("{{context.patientId}}", record.pid)
            a = _search(STUB_BASE, stub, relative)
            b = _search(sekmet.base, sekmet.transport, relative)
            if key == "patient":
                assert a["id"] == b["id"] == record.pid
                continue
            ids_a = [e["resource"]["id"] for e in a.get("entry", [])]
            ids_b = [e["resource"]["id"] for e in b.get("entry", [])]
            assert sorted(ids_a) == sorted(ids_b), (record.name, key, ids_a, ids_b)
            compared += len(ids_a)
    assert compared >= 70  # the records hold about a hundred resources; stopped medicines are not asked for


def test_an_unsupported_search_parameter_is_an_error_on_both(server):
    base, transport = server
    status, _ = transport(f"{base}/Observation?patient=pat-01&no-such-parameter=1",
                          {"Authorization": f"Bearer {TOKEN}"}, 10.0, 1_000_000)
    assert status == 400


def test_a_wrong_token_is_refused_by_both(server):
    base, transport = server
    status, _ = transport(f"{base}/Patient/pat-01", {"Authorization": "Bearer wrong"}, 10.0, 1_000_000)
    assert status in (401, 403)


@pytest.mark.parametrize("record", RECORDS[:12] + RECORDS[-4:], ids=lambda r: r.name)
def test_the_service_reads_each_record_by_fetching_alone(server, fetch_app, record):
    """No prefetch at all: every key is read from the server with the token."""
    base, _ = server
    resp = fetch_app.test_client().post("/cds-services/leg-pain-triage", json={
        "hook": "patient-view", "hookInstance": str(uuid.uuid4()), "fhirServer": base,
        "fhirAuthorization": {"access_token": TOKEN, "token_type": "Bearer", "scope": "patient/*.read",
                              "subject": "legpain-cds"},  # no expires_in: EHRs omit it
        "context": {"userId": "Practitioner/prac-1", "patientId": record.pid}})
    assert resp.status_code == 200, resp.get_data(as_text=True)[:500]
    cards = resp.get_json()["cards"]
    used: dict[str, dict[str, Any]] = {}
    for card in cards:
        for u in card["extension"]["example.legpain-cds.provenance"]["findingsUsed"]:
            used[u["finding"]] = u
    if not cards:  # no rule fired and no complaint: nothing to show, so nothing to compare
        return
    for finding, want in record.read.items():
        if isinstance(want, bool):
            assert finding in used and used[finding]["present"] is want, (finding, used.get(finding))
    for finding in record.not_read:
        assert finding not in used, finding
    assert set(ALL_KEYS)  # every key was asked for: see the next test


def test_fetching_asks_for_every_key_once(knowledge):
    stub = StubFhir(STUB_BASE, ALL_RESOURCES)
    app = create_app({"TESTING": True, "HOOKS_FHIR_SERVERS": STUB_BASE})
    app.extensions["cds_hooks"].fetcher.transport = stub
    record = RECORDS[0]
    resp = app.test_client().post("/cds-services/leg-pain-triage", json={
        "hook": "patient-view", "hookInstance": str(uuid.uuid4()), "fhirServer": STUB_BASE,
        "fhirAuthorization": {"access_token": TOKEN, "token_type": "Bearer", "scope": "patient/*.read",
                              "subject": "legpain-cds"},
        "context": {"userId": "Practitioner/prac-1", "patientId": record.pid}})
    assert resp.status_code == 200
    templates = prefetch_templates(knowledge)
    assert stub.urls == [f"{STUB_BASE}/" + templates[k].replace("{{context.patientId}}", record.pid)
                         for k in ALL_KEYS]
    assert matches(True, {"present": True})
