"""Value sets (rules/valuesets): their sources, the syntax of every code, contradictions, the
ICD-10-CM prefix rule, and the native API reading any code of a value set."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from service.knowledge import valuesets
from service.knowledge.valuesets import ICD10CM, LOINC, RXNORM, SNOMED, icd10cm_ok, loinc_ok, rxnorm_ok, snomed_ok

VOCABULARY = Path(__file__).resolve().parents[1] / "rules" / "vocabulary.yaml"


@pytest.fixture(scope="module")
def known() -> set[str]:
    return {f["code"] for f in yaml.safe_load(VOCABULARY.read_text())["findings"]}


def test_the_shipped_value_sets_lint_clean_and_name_their_source(known):
    vsets = valuesets.load()
    assert len(vsets.sets) >= 30
    assert valuesets.lint(vsets, known) == []
    for vs in vsets.sets.values():
        assert vs.version and (vs.source.get("oid") or vs.source.get("url")), vs.id
        if vs.source.get("kind") == "VSAC":
            assert vs.source["oid"] in vs.source["url"] and "@" in vs.source["copied_from"], vs.id


@pytest.mark.parametrize(("check", "good", "bad"), [
    (snomed_ok, ["44054006", "73211009", "128053003", "428041000124106", "449868002"],
     ["44054007", "73211008", "0044054006", "12", "44054006\n", "4405400X"]),
    (loinc_ok, ["8867-4", "9279-1", "8480-6", "8310-5", "59408-5", "2708-6", "72166-2", "2276-4", "2157-6"],
     ["8867-5", "72166-3", "8867", "88674", "8867-4 "]),
    (icd10cm_ok, ["E11.9", "E11.65", "I82.401", "N18.30", "S52.90XA", "I10", "Z34.90"],
     ["E119", "e11.9", "U07.1X", "11.9", "E11.", "E11.9\n"]),
    (rxnorm_ok, ["259255", "855332", "1364445"], ["0259255", "25925a", "", "1234567890"]),
])
def test_code_syntax_checks(check, good, bad):
    assert all(check(c) for c in good), [c for c in good if not check(c)]
    assert not any(check(c) for c in bad), [c for c in bad if check(c)]


def _copy(tmp_path: Path) -> Path:
    out = tmp_path / "valuesets"
    shutil.copytree(valuesets.DEFAULT_DIR, out)
    return out


def test_a_bad_check_digit_is_named_with_its_file(tmp_path, known):
    d = _copy(tmp_path)
    doc = yaml.safe_load((d / "diabetes.yaml").read_text())
    doc["codes"]["snomed"].append("44054007")
    (d / "diabetes.yaml").write_text(yaml.safe_dump(doc))
    problems = valuesets.lint(valuesets.load(d), known)
    assert problems == ["valuesets/diabetes.yaml: snomed code '44054007' is not valid snomed syntax"]


def test_a_code_read_as_present_and_absent_is_refused(tmp_path, known):
    d = _copy(tmp_path)
    doc = yaml.safe_load((d / "smoking-never.yaml").read_text())
    doc["codes"]["snomed"].append("449868002")  # "smokes tobacco daily" among the non-smokers
    (d / "smoking-never.yaml").write_text(yaml.safe_dump(doc))
    problems = valuesets.lint(valuesets.load(d), known)
    assert len(problems) == 1 and "449868002" in problems[0] and "smoking-current" in problems[0]


def test_a_code_meaning_two_things_at_once_is_allowed():
    """Diabetes in pregnancy is both: two findings, no contradiction."""
    ids = {vs.id for vs in valuesets.default().lookup(ICD10CM, "O24.011")}
    assert ids == {"diabetes", "pregnancy"}


def test_a_value_set_without_a_source_does_not_load(tmp_path):
    d = _copy(tmp_path)
    doc = yaml.safe_load((d / "warfarin.yaml").read_text())
    del doc["source"]
    (d / "warfarin.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(valuesets.ValueSetError, match=r"valuesets/warfarin.yaml: 'source' is required"):
        valuesets.load(d)


def test_icd10cm_codes_match_their_children_but_not_their_siblings():
    vs = valuesets.default()
    assert {v.id for v in vs.lookup(ICD10CM, "N18.30")} == {"chronic-kidney-disease"}  # listed: N18.3
    assert {v.id for v in vs.lookup(ICD10CM, "e11.65")} == {"diabetes"}
    assert vs.lookup(ICD10CM, "N17.9") == []  # acute kidney failure was filtered out
    assert vs.lookup(ICD10CM, "S52.90XA") == []
    assert vs.lookup(SNOMED, "65966004") == []  # fracture of forearm: no leg finding


def test_the_native_api_accepts_any_code_of_a_value_set_and_says_what_it_read(client):
    resp = client.post("/v1/evaluations", json={"patient": {"age": 67, "sex": "male"}, "findings": [
        {"system": RXNORM, "code": "259255"},
        {"system": ICD10CM, "code": "E11.65"},
        {"system": LOINC, "code": "59408-5", "value": 91, "unit": "%"},
        {"code": "pain_calf"}]})
    assert resp.status_code == 200, resp.get_json()
    read = {(c["system"], c["code"]): c["finding"] for c in resp.get_json()["codings_read"]}
    assert read == {(RXNORM, "259255"): "takes_statin", (ICD10CM, "E11.65"): "diabetes",
                    (LOINC, "59408-5"): "oxygen_saturation"}


def test_a_code_in_no_value_set_is_still_unknown(client):
    resp = client.post("/v1/evaluations", json={"findings": [{"system": SNOMED, "code": "65966004"}]})
    assert resp.status_code == 422
    assert resp.get_json()["errors"][0]["reason"] == "unknown-code"


def test_a_class_built_value_set_names_its_classification_and_every_value_set_it_took_codes_from():
    """NSAIDs have no published value set: nsaids.yaml is built from ATC M01A over published
    value sets, and says so (scripts/import_valuesets.py CLASS_PLAN)."""
    nsaids = valuesets.load().sets["nsaids"]
    assert nsaids.source["kind"] == "classification" and "M01A" in nsaids.source["name"]
    assert nsaids.source["built_from"] and all("@" in b for b in nsaids.source["built_from"])
    assert {"5640", "7258", "3355"} <= set(nsaids.codes["rxnorm"])  # ibuprofen, naproxen, diclofenac
    assert nsaids.findings == {"takes_nsaid": "active", "takes_oedema_causing_medicine": "active"}


def test_the_native_api_reads_an_nsaid_and_a_fluoroquinolone(client):
    resp = client.post("/v1/evaluations", json={"patient": {"age": 70, "sex": "female"}, "findings": [
        {"system": RXNORM, "code": "5640"}, {"system": RXNORM, "code": "309309"}]})
    assert resp.status_code == 200, resp.get_json()
    read = {c["code"]: c["finding"] for c in resp.get_json()["codings_read"]}
    assert read == {"5640": "takes_nsaid", "309309": "takes_fluoroquinolone"}
