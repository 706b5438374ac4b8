"""Encounter.facts() shares the facts of findings without a value between encounters
(service/reasoning/encounter.py): the facts must be exactly those built fresh, in the same order."""

from __future__ import annotations

from typing import Any

from service.reasoning.encounter import Encounter
from service.reasoning.engine import Fact


def fresh(enc: Encounter) -> list[Fact]:
    """The facts as they were built before sharing: a new Fact for every finding."""
    out = []
    if enc.age is not None or enc.sex is not None:
        out.append(Fact("patient", "patient", value=enc.age, choice=enc.sex))
    for code in sorted(enc.findings):
        f = enc.findings[code]
        out.append(Fact("finding", code, f["present"], f.get("value"), f.get("choice")))
    return out


def fields(facts: list[Fact]) -> list[tuple[Any, ...]]:
    # type() too: a shared fact made for present=True must not stand in for present=1
    return [(f.kind, f.key, f.present, type(f.present), f.value, f.choice) for f in facts]


def test_shared_facts_are_the_facts_built_fresh():
    findings: dict[str, dict[str, Any]] = {
        "zz_yes": {"present": True}, "zz_no": {"present": False}, "aa_choice": {"present": True, "choice": "left"},
        "mm_number": {"present": True, "value": 3.5}, "mm_int_present": {"present": 1},
    }
    first = Encounter(age=61.0, sex="female", findings=findings)
    second = Encounter(age=None, sex=None, findings={**findings, "zz_yes": {"present": False}})
    for enc in (first, second, first):
        assert fields(enc.facts()) == fields(fresh(enc))
    assert [f.key for f in first.facts()] == ["patient", "aa_choice", "mm_int_present", "mm_number", "zz_no", "zz_yes"]


def test_facts_without_a_value_are_shared_and_measurements_are_not():
    findings = {"zz_shared_yes": {"present": True}, "zz_measured": {"present": True, "value": 2.25}}
    a = {f.key: f for f in Encounter(age=None, sex=None, findings=findings).facts()}
    b = {f.key: f for f in Encounter(age=None, sex=None, findings=findings).facts()}
    assert a["zz_shared_yes"] is b["zz_shared_yes"]
    assert a["zz_measured"] == b["zz_measured"] and a["zz_measured"] is not b["zz_measured"]
