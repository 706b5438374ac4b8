"""How well the rule set answers a folder of clinical cases, scored the way a validation is.

`rules/cases/*.yaml` are cases written next to the rules: each must pass (service.checks.cases).
`rules/cases/blind/*.yaml` are cases written from the guidelines by authors who never read the
rules, and reviewed by a second clinician (issue 12): they are scored, not pass/fail, because
their job is to find what the rules miss. The figures a validation reports per folder:
tier exact, within one tier, under-triage (and how many of those were emergencies),
over-triage, top-3 hits, required tests recommended, forbidden tests given, and the facts the
vocabulary could not express.

The blind format adds to the case format: `narrative` (instead of `summary`), `anywhere`
(conditions listed anywhere in the differential), `red_flags_expected` (true/false),
`unexpressible` (facts no finding can hold), `justification` and `review`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from service.errors import ServiceError
from service.intake.parse import parse_encounter
from service.knowledge.loader import StrictLoader
from service.knowledge.model import TIER_RANK, Test, tests_performed
from service.reasoning.evaluation import Evaluator

BLIND_DIR = "cases/blind"


@dataclass(frozen=True)
class ScoredCase:
    """One case as a validation reads it (a blind case, or a rule-side case re-read)."""

    id: str
    file: str
    request: dict[str, Any]
    expect: dict[str, Any]
    unexpressible: tuple[str, ...] = ()
    # Entries a reviewer moved out of `unexpressible` as not facts of the patient (teaching
    # points, speculation), each with the reason in the case's review; counted so that the
    # move is visible, never silent.
    not_facts: int = 0


@dataclass
class FolderScore:
    folder: str
    total: int = 0
    invalid: dict[str, str] = field(default_factory=dict)  # case id -> why its request was refused
    exact: int = 0
    within_one: int = 0
    under: list[str] = field(default_factory=list)  # "id: expected -> answered"
    under_emergency: list[str] = field(default_factory=list)
    over: list[str] = field(default_factory=list)
    top3_expected: int = 0
    top3_hits: int = 0
    anywhere_expected: int = 0
    anywhere_hits: int = 0
    tests_required: int = 0
    tests_required_given: int = 0
    forbidden_given: list[str] = field(default_factory=list)  # "id: test"
    red_flag_misses: list[str] = field(default_factory=list)  # expected a flag, none raised
    unexpressible: int = 0
    not_facts: int = 0
    by_expected_tier: dict[str, list[int]] = field(default_factory=dict)  # tier -> [exact, total]

    @property
    def scored(self) -> int:
        return self.total - len(self.invalid)

    def rate(self, part: int, whole: int) -> str:
        return f"{part}/{whole} ({100.0 * part / whole:.0f}%)" if whole else "0/0"

    def exact_rate(self) -> float:
        return self.exact / self.scored if self.scored else 0.0

    def lines(self) -> list[str]:
        n = self.scored
        per_tier = ", ".join(
            f"{t} {v[0]}/{v[1]}" for t, v in sorted(self.by_expected_tier.items(), key=lambda kv: -TIER_RANK[kv[0]])
        )
        return [
            f"{self.folder}: {self.total} cases, {len(self.invalid)} not evaluable",
            f"  tier exact {self.rate(self.exact, n)}; within one tier {self.rate(self.within_one, n)}"
            f" (by expected tier: {per_tier})",
            f"  under-triage {self.rate(len(self.under), n)}, of which emergencies {len(self.under_emergency)};"
            f" over-triage {self.rate(len(self.over), n)}",
            f"  top-3 hits {self.rate(self.top3_hits, self.top3_expected)};"
            f" listed anywhere {self.rate(self.anywhere_hits, self.anywhere_expected)}",
            f"  required tests {self.rate(self.tests_required_given, self.tests_required)};"
            f" forbidden tests given {len(self.forbidden_given)};"
            f" expected red flag missing {len(self.red_flag_misses)}",
            f"  unexpressible facts {self.unexpressible}"
            + (f" (and {self.not_facts} entries a reviewer ruled not facts of the patient)" if self.not_facts else ""),
        ]


def load_blind_cases(rules_dir: str | Path) -> list[ScoredCase]:
    """The blind folder's cases. A malformed file raises ServiceError naming it; a case whose
    request the vocabulary refuses is still returned (it is scored as not evaluable)."""
    folder = Path(rules_dir) / BLIND_DIR
    out: list[ScoredCase] = []
    seen: set[str] = set()
    for path in sorted(folder.glob("*.yaml")):
        rel = f"{BLIND_DIR}/{path.name}"
        try:
            # The rule set's loader: a key repeated in a case (two `tier:`) is refused, not
            # silently resolved to the last one. Bandit B506: StrictLoader is a SafeLoader.
            doc = yaml.load(path.read_text(encoding="utf-8"), Loader=StrictLoader)  # nosec B506
        except yaml.YAMLError as exc:
            raise ServiceError(f"{rel}: not valid YAML: {exc}") from exc
        items = doc.get("cases") if isinstance(doc, dict) else None
        if not isinstance(items, list):
            raise ServiceError(f"{rel}: expected a mapping with a 'cases' list")
        for item in items:
            cid = item.get("id") if isinstance(item, dict) else None
            expect = item.get("expect") if isinstance(item, dict) else None
            if not isinstance(cid, str) or not isinstance(expect, dict) or expect.get("tier") not in TIER_RANK:
                raise ServiceError(f"{rel}: case {cid!r} needs an id and expect.tier")
            if cid in seen:
                raise ServiceError(f"{rel}: case id {cid} is used twice")
            seen.add(cid)
            request = {"patient": item.get("patient") or {}, "findings": item.get("findings") or []}
            review = item.get("review") if isinstance(item.get("review"), dict) else {}
            not_facts = review.get("not_facts") or []
            out.append(ScoredCase(cid, rel, request, expect, tuple(item.get("unexpressible") or ()),
                                  len(not_facts) if isinstance(not_facts, list) else 0))
    return out


def score_folder(evaluator: Evaluator, folder: str, cases: list[ScoredCase]) -> FolderScore:
    s = FolderScore(folder)
    for case in cases:
        s.total += 1
        s.unexpressible += len(case.unexpressible)
        s.not_facts += case.not_facts
        try:
            answer = evaluator.evaluate(parse_encounter(evaluator.knowledge, case.request))
        except ServiceError as exc:
            s.invalid[case.id] = exc.detail
            continue
        _score_one(s, case, answer, evaluator.knowledge.tests)
    return s


def _score_one(s: FolderScore, case: ScoredCase, answer: dict[str, Any], evaluator_tests: dict[str, Test]) -> None:
    expect = case.expect
    want, got = expect["tier"], answer["urgency"]["tier"]
    diff = TIER_RANK[got] - TIER_RANK[want]
    bucket = s.by_expected_tier.setdefault(want, [0, 0])
    bucket[1] += 1
    if diff == 0:
        s.exact += 1
        bucket[0] += 1
    if abs(diff) <= 1:
        s.within_one += 1
    if diff < 0:
        s.under.append(f"{case.id}: expected {want}, answered {got}")
        if want == "emergency":
            s.under_emergency.append(case.id)
    elif diff > 0:
        s.over.append(f"{case.id}: expected {want}, answered {got}")
    ranked = [d["condition"] for d in answer["differential"]]
    top3 = expect.get("top3") or []
    s.top3_expected += len(top3)
    s.top3_hits += sum(1 for c in top3 if c in ranked[:3])
    anywhere = list(top3) + list(expect.get("anywhere") or [])
    s.anywhere_expected += len(anywhere)
    s.anywhere_hits += sum(1 for c in anywhere if c in ranked)
    # A test that includes another (whole-spine MRI, lumbar MRI) answers for it too.
    tests = tests_performed(evaluator_tests, {t["test"] for t in answer["recommended_tests"]})
    required = expect.get("tests_include") or []
    s.tests_required += len(required)
    s.tests_required_given += sum(1 for t in required if t in tests)
    s.forbidden_given += [f"{case.id}: {t}" for t in expect.get("tests_exclude") or [] if t in tests]
    if expect.get("red_flags_expected") and not answer["red_flags"]:
        s.red_flag_misses.append(case.id)


def rule_side_cases(evaluator: Evaluator) -> list[ScoredCase]:
    return [ScoredCase(c.id, c.file, c.request, c.expect) for c in evaluator.knowledge.cases]
