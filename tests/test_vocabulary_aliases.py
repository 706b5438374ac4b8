"""Vocabulary 0.3.1: bundled findings split into atomic ones, the old codes kept as deprecated
umbrellas (service/reasoning/aliases.py). An old code must give the same answer as its atoms, be named
in deprecated_codes_used, and never be asked."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.checks.lint import finding_codes
from service.intake.parse import parse_encounter
from service.knowledge import valuesets
from service.knowledge.loader import RuleLoadError, load_knowledge
from service.reasoning import aliases
from service.reasoning.encounter import Encounter

ROOT = Path(__file__).resolve().parents[1]
OLD_CODES = {
    "leg_paralysis_or_plaster", "takes_diuretic_or_statin", "foot_ulcer_or_gangrene", "pregnant_or_postpartum",
    "skin_break_or_wound", "recent_leg_injury_or_crush", "frothy_urine_or_puffy_face",
    "osteoporosis_or_long_term_steroids", "statin_started_or_increased", "heart_attack_or_stroke",
    "pregnancy_headache_or_visual",
}


def clinical(answer: dict[str, Any]) -> dict[str, Any]:
    """What a clinician reads in an answer; supporting findings name what was sent (an atom
    or the old code), so only the conditions, scores and rule ids are compared."""
    return {
        "tier": answer["urgency"]["tier"],
        "reasons": [(r["rule"], r["tier"]) for r in answer["urgency"]["reasons"]],
        "red_flags": [f["code"] for f in answer["red_flags"]],
        "differential": [(d["condition"], d["score"], d["rank"], d["rules"]) for d in answer["differential"]],
        "tests": [(t["test"], t["priority"], t["rules"]) for t in answer["recommended_tests"]],
        "not_indicated": [t["test"] for t in answer["tests_not_indicated"]],
        "advice": [a["code"] for a in answer["advice"]],
        "scores": [(s["score"], s["value"]) for s in answer["scores"]],
        "rules": [p["rule"] for p in answer["provenance"]],
    }


def evaluate(evaluator, body: dict[str, Any]) -> dict[str, Any]:
    return evaluator.evaluate(parse_encounter(evaluator.knowledge, body))


def test_the_issue_bundles_are_deprecated_with_atomic_replacements(knowledge):
    deprecated = {f.code for f in knowledge.findings.values() if f.deprecated}
    assert deprecated >= OLD_CODES
    for code in deprecated:
        f = knowledge.findings[code]
        assert len(f.replaced_by) >= 2 and not f.codes
        for atom in f.replaced_by:
            assert knowledge.findings[atom].type == "boolean" and not knowledge.findings[atom].deprecated


def rule_side_cases(knowledge) -> list[Any]:
    return [c for c in knowledge.cases if "/blind/" not in c.file]


def test_every_old_code_is_sent_by_a_rule_side_case_that_expects_it(knowledge):
    sent = {code for c in rule_side_cases(knowledge) for code in c.expect.get("deprecated_codes_used", [])}
    assert sent == {f.code for f in knowledge.findings.values() if f.deprecated}


def interchangeable(knowledge) -> set[str]:
    """Old codes whose atoms no rule tests directly: for them the old code and its atoms must
    give the same answer both ways. (takes_diuretic_or_statin is not: rules also test
    takes_diuretic and takes_statin themselves, so an atom says more than the old code; the
    rule-side cases that send it keep their 0.3.0 expectations, which is the check there.)"""
    direct = {leaf.key for r in knowledge.rules
              for leaf in [*r.when.positive_leaves(), *r.when.none] if leaf.kind == "finding"}
    return {code for code, atoms in aliases.umbrellas(knowledge) if not direct & set(atoms)}


def _as_umbrellas(knowledge, findings: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The case's atoms sent as their old codes (an umbrella present when any atom is, absent
    when every atom is denied), or None when the case sends no atom of any umbrella."""
    by_code = {f["code"]: f for f in findings}
    out = [dict(f) for f in findings]
    changed = False
    for code, atoms in aliases.umbrellas(knowledge):
        sent = [by_code[a] for a in atoms if a in by_code]
        if not sent or code in by_code or code not in interchangeable(knowledge):
            continue
        present = any(f.get("present", True) is True for f in sent)
        if not present and len(sent) < len(atoms):
            continue  # only some atoms denied: the umbrella is not known, nothing to send
        out = [f for f in out if f["code"] not in atoms]
        out.append({"code": code, **({} if present else {"present": False})})
        changed = True
    return out if changed else None


def _as_atoms(knowledge, findings: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """Each old code sent as its atoms: present -> its first atom; denied -> all its atoms."""
    out: list[dict[str, Any]] = []
    changed = False
    for f in findings:
        finding = knowledge.findings[f["code"]]
        if not finding.deprecated or finding.code not in interchangeable(knowledge):
            out.append(dict(f))
            continue
        changed = True
        if f.get("present", True) is True:
            out.append({"code": finding.replaced_by[0]})
        else:
            out += [{"code": a, "present": False} for a in finding.replaced_by]
    return out if changed else None


def test_old_codes_and_their_atoms_give_the_same_answer_on_every_rule_side_case(knowledge, evaluator):
    compared = 0
    for case in rule_side_cases(knowledge):
        base = evaluate(evaluator, case.request)
        for variant in (_as_umbrellas(knowledge, case.request["findings"]),
                        _as_atoms(knowledge, case.request["findings"])):
            if variant is None:
                continue
            other = evaluate(evaluator, {**case.request, "findings": variant})
            assert clinical(other) == clinical(base), case.id
            compared += 1
    assert compared >= 25  # every case that sends an old code or an atom of one
    # rules test these atoms directly: takes_diuretic / takes_statin, and since rule set 0.3.1
    # leg_trapped_immobile (muscle.unconscious_long_lie: an unconscious long lie, not any injury)
    assert interchangeable(knowledge) >= OLD_CODES - {"takes_diuretic_or_statin", "recent_leg_injury_or_crush"}


def test_the_answer_lists_the_old_codes_sent_with_their_replacements(evaluator):
    old = evaluate(evaluator, {"patient": {"age": 31, "sex": "female"},
                               "findings": [{"code": "pregnant_or_postpartum"}, {"code": "calf_tenderness"}]})
    assert old["deprecated_codes_used"] == [
        {"code": "pregnant_or_postpartum", "replaced_by": ["pregnant", "postpartum_6w"]}]
    new = evaluate(evaluator, {"patient": {"age": 31, "sex": "female"},
                               "findings": [{"code": "pregnant"}, {"code": "calf_tenderness"}]})
    assert new["deprecated_codes_used"] == []
    assert old["ruleset"]["vocabulary_version"] == new["ruleset"]["vocabulary_version"] == "0.3.2"


def test_an_old_code_sent_as_unknown_is_reported_and_its_atoms_are_not_asked(evaluator):
    body = {"patient": {"age": 60, "sex": "male"},
            "findings": [{"code": "leg_swelling_unilateral"}, {"code": "calf_pain_unilateral"},
                         {"code": "calf_tenderness"}, {"code": "leg_paralysis_or_plaster", "present": None}]}
    answer = evaluate(evaluator, body)
    assert [d["code"] for d in answer["deprecated_codes_used"]] == ["leg_paralysis_or_plaster"]
    asked = {q.get("finding") for q in answer["ask_next"]}
    assert not asked & {"leg_paralysis_or_plaster", "leg_paralysis", "leg_in_plaster"}


def encounter(findings: dict[str, bool]) -> Encounter:
    return Encounter(age=70, sex="female", findings={c: {"present": p} for c, p in findings.items()})


def test_or_semantics_present_if_any_atom_denied_only_if_all(knowledge):
    pairs = aliases.umbrellas(knowledge)
    one_denied = aliases.expand(pairs, encounter({"foot_ulcer": False}))
    assert "foot_ulcer_or_gangrene" not in one_denied.findings  # gangrene is still unknown
    both_denied = aliases.expand(pairs, encounter({"foot_ulcer": False, "foot_gangrene": False}))
    assert both_denied.findings["foot_ulcer_or_gangrene"] == {"present": False}
    one_present = aliases.expand(pairs, encounter({"foot_ulcer": False, "foot_gangrene": True}))
    assert one_present.findings["foot_ulcer_or_gangrene"] == {"present": True}
    assert one_present.umbrella_atoms == {"foot_ulcer_or_gangrene": ("foot_gangrene",)}
    assert one_present.deprecated_used == ()  # only atoms were sent
    # Every atom asked, none present, one not known: the umbrella is not known either, so
    # ask_next reads it as asked (a rule's other alternatives are asked next).
    asked = aliases.expand(pairs, Encounter(age=70, sex="female", findings={"foot_ulcer": {"present": False}},
                                            unknown=frozenset({"foot_gangrene"})))
    assert "foot_ulcer_or_gangrene" not in asked.findings and "foot_ulcer_or_gangrene" in asked.unknown
    assert asked.deprecated_used == ()
    # Presence wins over an old code sent as denied (as everywhere in the rules).
    clash = aliases.expand(pairs, encounter({"foot_ulcer_or_gangrene": False, "foot_ulcer": True}))
    assert clash.findings["foot_ulcer_or_gangrene"] == {"present": True}
    assert [d["code"] for d in clash.deprecated_used] == ["foot_ulcer_or_gangrene"]


def test_supporting_findings_name_the_atoms_that_were_sent(evaluator):
    answer = evaluate(evaluator, {"patient": {"age": 68, "sex": "female"},
                                  "findings": [{"code": "diabetes"}, {"code": "foot_gangrene"},
                                               {"code": "abi_value", "value": 1.52}]})
    named = {f for d in answer["differential"] for f in d["supporting_findings"]}
    named |= {f for r in answer["red_flags"] for f in r["findings"]}
    assert "foot_gangrene" in named and "foot_ulcer_or_gangrene" not in named


def test_ask_next_asks_atoms_one_at_a_time_and_never_an_old_code(knowledge, evaluator):
    # a list of 20: since rule set 0.3.1 and the interview's presentations (issue 16) the
    # swollen leg's red-flag screen and risk factors come before the Wells paralysis item
    body = {"patient": {"age": 60, "sex": "male"}, "ask_next_limit": 20,
            "findings": [{"code": "leg_swelling_unilateral"}, {"code": "calf_pain_unilateral"},
                         {"code": "calf_tenderness"}]}
    asked = [q.get("finding") for q in evaluate(evaluator, body)["ask_next"]]
    assert "leg_paralysis" in asked and "leg_in_plaster" not in asked
    body["findings"].append({"code": "leg_paralysis", "present": False})
    asked = [q.get("finding") for q in evaluate(evaluator, body)["ask_next"]]
    assert "leg_in_plaster" in asked
    deprecated = {f.code for f in knowledge.findings.values() if f.deprecated}
    for case in rule_side_cases(knowledge):  # and on partial presentations: never an old code
        for n in (1, 3):
            partial = {**case.request, "findings": case.request["findings"][:n]}
            assert not {q.get("finding") for q in evaluate(evaluator, partial)["ask_next"]} & deprecated, case.id


def test_ask_atoms_moves_the_credit_and_keeps_the_larger():
    pairs = (("a_or_b", ("a", "b")),)
    credit, reasons, reach = {"a_or_b": (5.0, 1.0), "b": (2.0, 3.0)}, {"a_or_b": ["r1"], "b": ["r2"]}, {"a_or_b": 3}
    aliases.ask_atoms(pairs, credit, reasons, reach, answered={"a"})
    assert credit == {"b": (5.0, 3.0)} and reasons == {"b": ["r2", "r1"]} and reach == {"b": 3}


def test_first_open_is_the_first_atom_answered_nowhere():
    atoms = ("a", "b", "c")
    assert aliases.first_open(atoms, set()) == "a"
    assert aliases.first_open(atoms, {"a"}) == "b"
    assert aliases.first_open(atoms, {"a": 1}, frozenset({"b"})) == "c"  # known and asked apart
    assert aliases.first_open(atoms, {"a", "c"}, {"b"}) is None


def test_findings_catalogue_and_openapi_carry_the_vocabulary_version(client, knowledge):
    body = client.get("/v1/findings").get_json()
    assert body["version"] == knowledge.vocabulary_version == "0.3.2"
    items = {f["code"]: f for f in body["items"]}
    assert items["pregnant_or_postpartum"]["deprecated"] is True
    assert items["pregnant_or_postpartum"]["replaced_by"] == ["pregnant", "postpartum_6w"]
    assert "deprecated" not in items["pregnant"]
    spec = client.get("/openapi.json").get_json()
    assert spec["info"]["x-vocabulary-version"] == "0.3.2"
    assert "deprecated_codes_used" in spec["components"]["schemas"]["EvaluationResponse"]["required"]


def test_the_full_form_asks_atoms_not_old_codes(client, knowledge):
    html = client.get("/").get_data(as_text=True)
    for f in knowledge.findings.values():
        if f.deprecated:
            assert f'value="{f.code}"' not in html and f'"{f.code}"' not in html, f.code
    assert 'pregnant"' in html and "vocabulary 0.3.2" in html


def test_the_changelog_lists_every_deprecated_code_with_its_replacements(knowledge):
    text = (ROOT / "rules" / "CHANGELOG.md").read_text()
    section = text.split("## Vocabulary 0.3.1", 1)[1].split("\n## ", 1)[0]
    for f in knowledge.findings.values():
        if f.deprecated:
            line = next((ln for ln in section.splitlines() if f"`{f.code}`" in ln), "")
            assert line and all(f"`{a}`" in line for a in f.replaced_by), f.code


def test_records_are_read_onto_atoms_never_onto_an_old_code(knowledge):
    vsets = valuesets.for_knowledge(knowledge)
    read = {f for vs in vsets.sets.values() for f in vs.findings} | {m.finding for ms in vsets.measurements.values()
                                                                     for m in ms}
    assert not {f for f in read if knowledge.findings[f].deprecated}
    assert {"pregnant", "previous_heart_attack", "previous_stroke", "osteoporosis", "long_term_oral_steroids"} <= read


# --- lint and loading ---------------------------------------------------------------------------


def test_the_shipped_vocabulary_codes_pass_lint(knowledge):
    assert finding_codes(knowledge, valuesets.for_knowledge(knowledge)) == []


def test_lint_catches_a_bad_check_digit_a_code_of_the_wrong_kind_and_a_value_set_disagreement(knowledge):
    from dataclasses import replace

    from service.knowledge.model import Coding

    findings = dict(knowledge.findings)
    sct, lnc = "http://snomed.info/sct", "http://loinc.org"
    findings["fever"] = replace(findings["fever"], codes=(Coding(sct, "386661007"),))  # check digit off by one
    findings["heart_rate"] = replace(findings["heart_rate"], codes=(Coding(lnc, "8310-5"),))  # temperature's
    findings["pregnant"] = replace(findings["pregnant"], codes=(Coding(sct, "386661006"),))  # fever, not pregnancy
    findings["diabetes"] = replace(findings["diabetes"], codes=(Coding(lnc, "8867-4"),))
    findings["smoker"] = replace(findings["pregnant_or_postpartum"], code="smoker", codes=(Coding(sct, "77176002"),))
    problems = "\n".join(finding_codes(replace(knowledge, findings=findings), valuesets.for_knowledge(knowledge)))
    assert "fever: SNOMED CT code '386661007' fails" in problems
    assert "heart_rate: LOINC code 8310-5 is not the one its measurement list reads" in problems
    assert "pregnant: SNOMED CT code 386661006 is in none of the value sets" in problems
    assert "diabetes: LOINC codes a measurement" in problems
    assert "smoker: a deprecated alias carries no codes" in problems
    assert re.search(r"smoking-current.yaml: reads records onto smoker, a deprecated alias", problems)


@pytest.mark.parametrize(("entry", "message"), [
    ("deprecated: true\n    replaced_by: [a, nope]", "replaced_by names 'nope', which is not a finding"),
    ("deprecated: true\n    replaced_by: [a]", "replaced_by must list two or more distinct findings"),
    ("deprecated: true", "a deprecated finding has 'deprecated: true' and 'replaced_by'"),
])
def test_loading_refuses_a_broken_alias(tmp_path, entry, message):
    from tests.conftest import mini_rules_with

    rules = mini_rules_with(tmp_path / "rules")
    path = rules / "vocabulary.yaml"
    alias = (f"  - code: a_or_b\n    display: A or B\n    question: A or B?\n    type: boolean\n"
             f"    topic: pain\n    {entry}\n")
    path.write_text(path.read_text().replace("findings:\n", "findings:\n" + alias, 1))
    with pytest.raises(RuleLoadError) as err:
        load_knowledge(rules)
    assert message in str(err.value)


def test_loading_refuses_a_vocabulary_without_a_version(tmp_path):
    from tests.conftest import mini_rules_with

    rules = mini_rules_with(tmp_path / "rules")
    path = rules / "vocabulary.yaml"
    path.write_text(re.sub(r"^version:.*\n", "", path.read_text(), flags=re.M))
    with pytest.raises(RuleLoadError) as err:
        load_knowledge(rules)
    assert "'version'" in str(err.value)


# --- the CDS Hooks path ------------------------------------------------------------------------


def test_a_record_with_an_old_local_code_is_read_and_named_on_the_card(client, knowledge):
    from tests.test_cds_hooks import SERVICE, dvt_request, observation

    req = dvt_request(knowledge)
    req = copy.deepcopy(req)
    req["prefetch"]["observations"]["entry"].append(
        {"resource": observation(knowledge, "obs-plaster", "leg_paralysis_or_plaster", category="survey",
                                 valueBoolean=True), "search": {"mode": "match"}})
    resp = client.post(SERVICE, json=req)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    prov = resp.get_json()["cards"][0]["extension"]["example.legpain-cds.provenance"]
    assert prov["deprecatedCodesUsed"] == [{"code": "leg_paralysis_or_plaster",
                                            "replacedBy": ["leg_paralysis", "leg_in_plaster"]}]
    assert prov["ruleset"]["vocabulary_version"] == "0.3.2"
    assert "dvt.wells.paralysis_or_plaster" in {r["rule"] for r in prov["rules"]}


def test_vocabulary_yaml_states_its_version_first():
    doc = yaml.safe_load((ROOT / "rules" / "vocabulary.yaml").read_text())
    assert next(iter(doc)) == "version" and doc["version"] == "0.3.2"


def test_the_guidance_response_names_the_vocabulary_and_the_old_codes_used(client):
    from fhir.resources.R4B.parameters import Parameters

    body = {"patient": {"age": 58, "sex": "female"},
            "findings": [{"code": "leg_paralysis_or_plaster"}, {"code": "leg_swelling_unilateral"}]}
    resp = client.post("/v1/evaluations", json=body, headers={"Accept": "application/fhir+json"})
    assert resp.status_code == 200
    output = next(r for r in resp.get_json()["contained"] if r["resourceType"] == "Parameters")
    Parameters.model_validate(output)
    params = output["parameter"]
    assert {"name": "vocabularyVersion", "valueString": "0.3.2"} in params
    old = [p for p in params if p["name"] == "deprecatedCode"]
    assert old == [{"name": "deprecatedCode", "part": [
        {"name": "code", "valueCode": "leg_paralysis_or_plaster"},
        {"name": "replacedBy", "valueCode": "leg_paralysis"}, {"name": "replacedBy", "valueCode": "leg_in_plaster"}]}]
