"""Safety invariants as properties over generated encounters (hypothesis), on the real rule
set. Each property is a sentence of the product's safety contract:
- a red flag always yields at least its tier;
- adding a finding never lowers a tier forced by a red flag;
- finding order does not change the answer;
- a must-not-miss condition with support is always listed;
- an emergency answer never carries self-care advice;
- every conclusion names rules that fired, and every fired rule names its sources.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.config import DEFAULT_RULES_DIR
from service.intake.parse import parse_encounter
from service.knowledge.loader import load_knowledge
from service.knowledge.model import TIER_RANK, Finding
from service.reasoning.evaluation import Evaluator

KNOWLEDGE = load_knowledge(DEFAULT_RULES_DIR)
EVALUATOR = Evaluator(KNOWLEDGE)
FINDINGS = sorted(KNOWLEDGE.findings.values(), key=lambda f: f.code)
# Findings some red flag rule reads: drawing them often makes red flags common in the sample.
RED_FLAG_FINDINGS = sorted({
    leaf.key for r in KNOWLEDGE.rules if r.then.red_flag for leaf in r.when.positive_leaves() if leaf.kind == "finding"
})
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def finding_item(f: Finding) -> st.SearchStrategy[dict[str, Any]]:
    if f.type == "boolean":
        return st.booleans().map(lambda present: {"code": f.code, "present": present})
    if f.type == "choice":
        return st.sampled_from(f.choices).map(lambda v: {"code": f.code, "value": v})
    lo, hi = f.range  # type: ignore[misc]
    return st.floats(lo, hi, allow_nan=False).map(lambda v: {"code": f.code, "value": round(v, 2)})


@st.composite
def encounters(draw: st.DrawFn, min_size: int = 0) -> dict[str, Any]:
    codes = draw(st.lists(st.sampled_from(FINDINGS), min_size=min_size, max_size=25, unique_by=lambda f: f.code))
    flags = draw(st.lists(st.sampled_from(RED_FLAG_FINDINGS), max_size=2, unique=True))
    chosen = {f.code: f for f in codes}
    for code in flags:
        chosen[code] = KNOWLEDGE.findings[code]
    items = [draw(finding_item(f)) for f in chosen.values()]
    patient = draw(st.fixed_dictionaries({}, optional={
        "age": st.integers(16, 100), "sex": st.sampled_from(["female", "male", "other", "unknown"]),
    }))
    return {"patient": patient, "findings": items}


def evaluate(body: dict[str, Any]) -> dict[str, Any]:
    return EVALUATOR.evaluate(parse_encounter(KNOWLEDGE, body))


@SETTINGS
@given(encounters())
def test_a_red_flag_always_yields_at_least_its_tier(body):
    answer = evaluate(body)
    tier = TIER_RANK[answer["urgency"]["tier"]]
    for flag in answer["red_flags"]:
        assert tier >= TIER_RANK[KNOWLEDGE.red_flags[flag["code"]].tier]
    fired_flags = {KNOWLEDGE.rules_by_id[p["rule"]].then.red_flag for p in answer["provenance"]} - {None}
    assert fired_flags == {f["code"] for f in answer["red_flags"]}


@SETTINGS
@given(encounters(), st.data())
def test_adding_a_finding_never_lowers_a_red_flag_tier(body, data):
    before = evaluate(body)
    forced = max((TIER_RANK[f["tier"]] for f in before["red_flags"]), default=0)
    known = {f["code"] for f in body["findings"]}
    unknown = [f for f in FINDINGS if f.code not in known]
    if not unknown:
        return
    extra = data.draw(st.sampled_from(unknown).flatmap(finding_item))
    after = evaluate({**body, "findings": [*body["findings"], extra]})
    assert TIER_RANK[after["urgency"]["tier"]] >= forced
    assert {f["code"] for f in before["red_flags"]} <= {f["code"] for f in after["red_flags"]}


@SETTINGS
@given(encounters(min_size=2), st.randoms(use_true_random=False))
def test_finding_order_does_not_change_the_answer(body, rnd):
    first = evaluate(body)
    shuffled = list(body["findings"])
    rnd.shuffle(shuffled)
    again = evaluate({**body, "findings": shuffled})
    first.pop("evaluation_id")
    again.pop("evaluation_id")
    assert again == first


@SETTINGS
@given(encounters())
def test_a_supported_must_not_miss_condition_is_always_listed(body):
    answer = evaluate(body)
    listed = {d["condition"] for d in answer["differential"]}
    for p in answer["provenance"]:
        for w in KNOWLEDGE.rules_by_id[p["rule"]].then.support:
            if KNOWLEDGE.conditions[w.condition].must_not_miss:
                assert w.condition in listed


@SETTINGS
@given(encounters())
def test_an_emergency_answer_never_carries_self_care_advice(body):
    answer = evaluate(body)
    if answer["urgency"]["tier"] == "emergency":
        assert answer["advice"] == []
    for a in answer["advice"]:
        assert TIER_RANK[answer["urgency"]["tier"]] <= TIER_RANK[KNOWLEDGE.advice[a["code"]].max_tier]


@SETTINGS
@given(encounters())
def test_every_conclusion_is_traceable(body):
    answer = evaluate(body)
    fired = {p["rule"] for p in answer["provenance"]}
    assert all(p["sources"] for p in answer["provenance"])
    cited = {r["rule"] for r in answer["urgency"]["reasons"]}
    cited |= {r for d in answer["differential"] for r in d["rules"]}
    cited |= {r for t in answer["recommended_tests"] for r in t["rules"]}
    cited |= {r for a in answer["advice"] for r in a["rules"]}
    assert cited <= fired
    assert "not a diagnosis" in answer["disclaimer"]
