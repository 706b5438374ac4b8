"""One evaluation: validated request -> facts -> engine firings -> the answer.

Everything here is deterministic: the same request and rule set give the same answer apart
from `evaluation_id` (facts are sorted before they reach the engine, and every list in the
answer has a total order).
"""

from __future__ import annotations

import uuid
from typing import Any

from service.knowledge.model import PRIORITY_RANK, TIER_RANK, Knowledge, Rule
from service.reasoning import aliases
from service.reasoning.ask_next import QuestionRanker
from service.reasoning.encounter import Encounter
from service.reasoning.engine import Engine, EngineResult, Fact, Firing, MatchedFact

DISCLAIMER = (
    "Decision support, not a diagnosis. This output suggests what to consider and how soon; "
    "it does not replace the judgement of a qualified clinician who examines the patient."
)
BANDS = ((6, "high"), (3, "moderate"), (1, "low"))


class Evaluator:
    """Holds the compiled engine; one per process."""

    def __init__(self, knowledge: Knowledge, engine: Engine | None = None) -> None:
        self.knowledge = knowledge
        self.engine = engine or Engine(knowledge)
        self.ranker = QuestionRanker(knowledge)
        self.umbrellas = aliases.umbrellas(knowledge)

    def evaluate(self, encounter: Encounter) -> dict[str, Any]:
        # Deprecated bundled findings are set from their atoms before the rules see anything.
        encounter = aliases.expand(self.umbrellas, encounter)
        facts = encounter.facts()
        result = self.engine.evaluate(facts)
        return _Assembler(self.knowledge, encounter, facts, result, self.ranker).answer()


class _Assembler:
    def __init__(
        self, k: Knowledge, encounter: Encounter, facts: list[Fact], result: EngineResult, ranker: QuestionRanker,
    ) -> None:
        self.k = k
        self.facts = facts
        self.ranker = ranker
        self.enc = encounter
        self.result = result
        self.firings = result.firings
        self.rules: list[Rule] = [k.rules_by_id[f.rule_id] for f in result.firings]
        self.by_rule: dict[str, Firing] = {f.rule_id: f for f in result.firings}
        # Which input findings stand behind each derived fact, for "supporting findings".
        self.behind: dict[str, set[str]] = {}
        for firing in self.firings:
            for name in firing.derived:
                self.behind.setdefault(name, set()).update(self._findings_of(firing.matched))

    def _findings_of(self, matched: tuple[MatchedFact, ...]) -> set[str]:
        out: set[str] = set()
        for m in matched:
            if m.kind == "finding":
                out.update(self.enc.umbrella_atoms.get(m.key, (m.key,)))
            elif m.kind == "fact":
                out.update(self.behind.get(m.key, set()))
        return out

    def answer(self) -> dict[str, Any]:
        tier, reasons = self._tier()
        body: dict[str, Any] = {
            "evaluation_id": str(uuid.uuid4()),
            "ruleset": {"name": self.k.name, "version": self.k.version, "sha256": self.k.sha256,
                        "vocabulary_version": self.k.vocabulary_version},
            "urgency": {"tier": tier, "reasons": reasons},
            "warnings": self._warnings(),
            # Old bundled codes this request sent, with the atomic findings that replace them.
            "deprecated_codes_used": list(self.enc.deprecated_used),
            "red_flags": self._red_flags(),
            "differential": self._differential(),
            **self._tests(),
            "ask_next": self.ranker.rank(self.enc, self.facts, self.result, tier),
            "advice": self._advice(tier),
            "scores": self._scores(),
            "provenance": self._provenance(),
            "trace": self._trace(),
            "disclaimer": DISCLAIMER,
        }
        if self.enc.encounter_id is not None:
            body["encounter_id"] = self.enc.encounter_id
        return body

    def _warnings(self) -> list[dict[str, Any]]:
        """What the request left out that the answer depends on: a rule on age can never fire
        without an age, which would otherwise pass silently."""
        out = []
        for attr in self.ranker.missing_patient(self.enc):
            rules = self.ranker.patient_rules[attr]
            out.append({
                "code": f"{attr}-missing",
                "pointer": f"/patient/{attr}",
                "text": f"No {attr} was given, so the {len(rules)} rule(s) that depend on {attr} could not fire; "
                        f"send patient.{attr} (it is asked first in ask_next).",
                "rules": rules,
            })
        return out

    def _tier(self) -> tuple[str, list[dict[str, Any]]]:
        tier = "routine"
        reasons: list[dict[str, Any]] = []
        for rule in self.rules:
            for candidate, red_flag in (
                (rule.then.tier, None),
                (self.k.red_flags[rule.then.red_flag].tier if rule.then.red_flag else None, rule.then.red_flag),
            ):
                if candidate is None:
                    continue
                reason = {"tier": candidate, "rule": rule.id, "text": rule.title}
                if red_flag:
                    reason["red_flag"] = red_flag
                    reason["text"] = self.k.red_flags[red_flag].display
                reasons.append(reason)
                if TIER_RANK[candidate] > TIER_RANK[tier]:
                    tier = candidate
        reasons.sort(key=lambda r: (-TIER_RANK[r["tier"]], r["rule"], r.get("red_flag", "")))
        return tier, reasons

    def _red_flags(self) -> list[dict[str, Any]]:
        flags: dict[str, dict[str, Any]] = {}
        for rule in self.rules:
            code = rule.then.red_flag
            if code is None:
                continue
            flag = self.k.red_flags[code]
            entry = flags.setdefault(code, {
                "code": code, "display": flag.display, "tier": flag.tier,
                "rules": [], "findings": set(), "sources": list(flag.sources),
            })
            entry["rules"].append(rule.id)
            entry["findings"].update(self._findings_of(self.by_rule[rule.id].matched))
        out = [{**f, "findings": sorted(f["findings"])} for f in flags.values()]
        return sorted(out, key=lambda f: (-TIER_RANK[f["tier"]], f["code"]))

    def _differential(self) -> list[dict[str, Any]]:
        acc: dict[str, dict[str, Any]] = {}
        for rule in self.rules:
            found = self._findings_of(self.by_rule[rule.id].matched)
            for w, sign in [(w, 1) for w in rule.then.support] + [(w, -1) for w in rule.then.against]:
                entry = acc.setdefault(w.condition, {
                    "support": 0, "against": 0, "for": set(), "vs": set(), "rules": [],
                })
                if sign > 0:
                    entry["support"] += w.weight
                    entry["for"].update(found)
                else:
                    entry["against"] += w.weight
                    entry["vs"].update(found)
                if rule.id not in entry["rules"]:
                    entry["rules"].append(rule.id)
        out = []
        for code, e in acc.items():
            if e["support"] == 0:
                continue  # only evidence against: not part of the differential
            cond = self.k.conditions[code]
            score = e["support"] - e["against"]
            band = next((name for floor, name in BANDS if score >= floor), "unlikely")
            out.append({
                "condition": code,
                "display": cond.display,
                "codes": [_coding(c) for c in cond.codes],
                "score": score,
                "likelihood": band,
                "must_not_miss": cond.must_not_miss,
                "supporting_findings": sorted(e["for"]),
                "against_findings": sorted(e["vs"]),
                "rules": e["rules"],
            })
        # Must-not-miss conditions stay listed whatever their score (no truncation here);
        # on equal scores they rank first.
        out.sort(key=lambda d: (-d["score"], not d["must_not_miss"], d["condition"]))
        for rank, d in enumerate(out, start=1):
            d["rank"] = rank
        return out

    def _tests(self) -> dict[str, list[dict[str, Any]]]:
        """Recommended tests, and tests the rules say are not indicated here (the sources warn
        against imaging too early). Safety: an urgent, asap or stat recommendation always
        stands over a "not indicated"; a routine one gives way to it."""
        acc: dict[str, dict[str, Any]] = {}
        for rule in self.rules:
            for req in rule.then.tests:
                e = acc.setdefault(req.test, {"priority": req.priority, "for": [], "rules": [], "why": []})
                if PRIORITY_RANK[req.priority] > PRIORITY_RANK[e["priority"]]:
                    e["priority"] = req.priority
                for c in req.for_conditions:
                    if c not in e["for"]:
                        e["for"].append(c)
                e["rules"].append(rule.id)
                e["why"].append(rule.title)
        against: dict[str, dict[str, Any]] = {}
        for rule in self.rules:
            for n in rule.then.not_indicated:
                entry = against.setdefault(n.test, {"reasons": [], "rules": []})
                if n.reason not in entry["reasons"]:
                    entry["reasons"].append(n.reason)
                entry["rules"].append(rule.id)
        not_indicated = []
        for code, entry in against.items():
            rec = acc.get(code)
            if rec is not None and rec["priority"] != "routine":
                continue  # an urgent indication overrides a general caution
            acc.pop(code, None)
            not_indicated.append({
                "test": code,
                "display": self.k.tests[code].display,
                "reason": " ".join(entry["reasons"]),
                "rules": entry["rules"],
            })
        out = []
        for code, e in acc.items():
            test = self.k.tests[code]
            out.append({
                "test": code,
                "display": test.display,
                "codes": [_coding(c) for c in test.codes],
                "priority": e["priority"],
                "for_conditions": sorted(e["for"]),
                "rules": e["rules"],
                "rationale": f"{test.shows}. Recommended because: " + "; ".join(e["why"]) + ".",
            })
        out.sort(key=lambda t: (-PRIORITY_RANK[t["priority"]], t["test"]))
        return {"recommended_tests": out, "tests_not_indicated": sorted(not_indicated, key=lambda t: t["test"])}

    def _advice(self, tier: str) -> list[dict[str, Any]]:
        acc: dict[str, list[str]] = {}
        for rule in self.rules:
            for code in rule.then.advice:
                acc.setdefault(code, []).append(rule.id)
        out = []
        for code, rules in acc.items():
            advice = self.k.advice[code]
            if TIER_RANK[tier] > TIER_RANK[advice.max_tier]:
                continue  # safety: no self-care advice above the tier it was written for
            out.append({"code": code, "text": advice.text, "sources": list(advice.sources), "rules": rules})
        return sorted(out, key=lambda a: a["code"])

    def _scores(self) -> list[dict[str, Any]]:
        out = []
        for sid, value in sorted(self.result.scores.items()):
            items = [
                {"rule": r.id, "title": r.title, "points": r.then.score[1]}
                for r in self.rules if r.then.score and r.then.score[0] == sid
            ]
            out.append({"score": sid, "display": self.k.scores[sid].display, "value": value, "items": items})
        return out

    def _provenance(self) -> list[dict[str, Any]]:
        out = []
        for rule in self.rules:
            out.append({
                "rule": rule.id,
                "version": rule.version,
                "title": rule.title,
                "evidence": rule.evidence,
                "sources": [_source(self.k, s) for s in rule.sources],
            })
        return out

    def _trace(self) -> list[dict[str, Any]]:
        out = []
        for f in self.firings:
            out.append({
                "seq": f.seq,
                "rule": f.rule_id,
                "round": f.round,
                "matched": [_matched(m) for m in f.matched],
                "derived": list(f.derived),
            })
        return out


def _coding(c: Any) -> dict[str, Any]:
    d = {"system": c.system, "code": c.code}
    if c.display:
        d["display"] = c.display
    return d


def _source(k: Knowledge, sid: str) -> dict[str, Any]:
    s = k.sources[sid]
    d: dict[str, Any] = {"id": s.id, "kind": s.kind, "title": s.title}
    if s.file:
        d["file"] = s.file
    if s.url:
        d["url"] = s.url
    return d


def _matched(m: MatchedFact) -> dict[str, Any]:
    d: dict[str, Any] = {"kind": m.kind, "code": m.key}
    if m.kind == "finding":
        d["present"] = m.present
    if m.value is not None:
        d["value"] = m.value
    if m.choice is not None:
        d["choice"] = m.choice
    return d
