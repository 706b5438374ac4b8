"""The clinical knowledge as typed, immutable objects.

`service.knowledge.loader` builds one `Knowledge` from the YAML under rules/; everything downstream
(the engine adapter, the evaluation, the catalogue endpoints) reads these objects and never
the YAML. Frozen dataclasses so that nothing in a request can change the loaded rule set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

TIERS: tuple[str, ...] = ("routine", "soon", "urgent", "emergency")
TIER_RANK: dict[str, int] = {t: i for i, t in enumerate(TIERS)}
# FHIR ServiceRequest.priority, least to most urgent.
PRIORITIES: tuple[str, ...] = ("routine", "urgent", "asap", "stat")
PRIORITY_RANK: dict[str, int] = {p: i for i, p in enumerate(PRIORITIES)}
EVIDENCE_LEVELS: tuple[str, ...] = ("high", "moderate", "low", "expert-opinion")
SEXES: tuple[str, ...] = ("female", "male", "other", "unknown")

FindingType = Literal["boolean", "number", "choice"]
Op = Literal["<", "<=", ">", ">=", "==", "!="]
OPS: tuple[str, ...] = ("<", "<=", ">", ">=", "==", "!=")


@dataclass(frozen=True)
class Coding:
    system: str
    code: str
    display: str | None = None
    # The value set that reads records onto this finding lists only this concept's subtypes
    # (VSAC expansions leave out a grouping concept such as "Diabetes mellitus"): lint then
    # does not require the code itself in the value set.
    valueset_parent: bool = False


@dataclass(frozen=True)
class Source:
    id: str
    kind: Literal["document", "guideline"]
    title: str
    file: str | None = None
    url: str | None = None
    citation: str | None = None


@dataclass(frozen=True)
class Finding:
    code: str
    display: str
    question: str
    type: FindingType
    topic: str
    unit: str | None = None
    range: tuple[float, float] | None = None
    choices: tuple[str, ...] = ()
    codes: tuple[Coding, ...] = ()
    # Vocabulary 0.3.1: a bundled finding ("X or Y") kept as a deprecated alias of its atomic
    # findings. It is set present when any of them is, denied when all are (service/reasoning/aliases.py).
    deprecated: bool = False
    replaced_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class Derived:
    name: str
    display: str


@dataclass(frozen=True)
class Score:
    id: str
    display: str
    sources: tuple[str, ...]


@dataclass(frozen=True)
class Condition:
    code: str
    display: str
    must_not_miss: bool
    codes: tuple[Coding, ...] = ()
    description: str | None = None


@dataclass(frozen=True)
class Test:
    code: str
    display: str
    shows: str
    codes: tuple[Coding, ...] = ()
    not_indicated: str | None = None  # when a clinician would not order it
    # Tests this one also performs (a whole-spine MRI images the lumbar spine): a case that asks
    # for, or forbids, an included test is answered by this one too.
    includes: tuple[str, ...] = ()

    __test__ = False  # not a pytest test class, despite the name


@dataclass(frozen=True)
class RedFlag:
    code: str
    display: str
    tier: str
    sources: tuple[str, ...]


@dataclass(frozen=True)
class Advice:
    code: str
    text: str
    max_tier: str
    sources: tuple[str, ...]


# --- rule conditions -------------------------------------------------------------------------


@dataclass(frozen=True)
class Leaf:
    """One test on one fact. `kind` names the fact type; `key` the finding code, patient
    attribute, derived fact name or score id."""

    kind: Literal["finding", "patient", "fact", "score"]
    key: str
    present: bool = True  # findings only: reported present (True) or denied (False)
    op: str | None = None
    value: float | str | None = None
    values: tuple[str, ...] = ()  # `in` for choice findings; `is` is stored as a 1-tuple

    def describe(self) -> str:
        if self.kind == "finding" and not self.present:
            return f"{self.key} absent"
        if self.op is not None:
            return f"{self.key} {self.op} {self.value}"
        if self.values:
            return f"{self.key} in {list(self.values)}"
        return self.key


@dataclass(frozen=True)
class Group:
    """all / any over leaves or nested groups."""

    mode: Literal["all", "any"]
    items: tuple[Leaf | Group, ...]

    def leaves(self) -> list[Leaf]:
        out: list[Leaf] = []
        for item in self.items:
            out.extend(item.leaves() if isinstance(item, Group) else [item])
        return out


@dataclass(frozen=True)
class When:
    all: tuple[Leaf | Group, ...] = ()
    any: tuple[Leaf | Group, ...] = ()
    none: tuple[Leaf, ...] = ()

    def positive_leaves(self) -> list[Leaf]:
        return Group("all", self.all + self.any).leaves()


# --- rule conclusions ------------------------------------------------------------------------


@dataclass(frozen=True)
class Weighted:
    condition: str
    weight: int


@dataclass(frozen=True)
class TestRequest:
    test: str
    priority: str
    for_conditions: tuple[str, ...]

    __test__ = False


@dataclass(frozen=True)
class NotIndicated:
    test: str
    reason: str


@dataclass(frozen=True)
class Then:
    derive: tuple[str, ...] = ()
    score: tuple[str, float] | None = None
    support: tuple[Weighted, ...] = ()
    against: tuple[Weighted, ...] = ()
    red_flag: str | None = None
    tier: str | None = None
    tests: tuple[TestRequest, ...] = ()
    advice: tuple[str, ...] = ()
    not_indicated: tuple[NotIndicated, ...] = ()


@dataclass(frozen=True)
class Rule:
    id: str
    version: int
    title: str
    rationale: str
    sources: tuple[str, ...]
    evidence: str
    when: When
    then: Then
    domain: str
    file: str


@dataclass(frozen=True)
class Case:
    id: str
    summary: str
    request: dict[str, Any]
    expect: dict[str, Any]
    file: str
    self_check: bool = False  # run at start-up against the loaded rule set (service/checks/self_check.py)


@dataclass(frozen=True)
class Presentation:
    """A complaint a patient volunteers (rules/presentations.yaml, checked by
    service/knowledge/presentations.py): what ask_next asks first when it is held."""

    finding: str
    label: str
    red_flags: tuple[str, ...]
    differential: tuple[str, ...]
    sources: tuple[str, ...]
    opening: bool = True  # offered in the opening's list (the pain sites have a list of their own)


@dataclass(frozen=True)
class QuestionGroup:
    """Red flags triage asks as one question (rules/presentations.yaml `question_groups`, checked
    by service/knowledge/question_groups.py)."""

    id: str
    label: str
    items: tuple[str, ...]
    sources: tuple[str, ...]


@dataclass(frozen=True)
class Knowledge:
    name: str
    version: str
    title: str
    sha256: str
    sources: dict[str, Source]
    findings: dict[str, Finding]
    derived: dict[str, Derived]
    scores: dict[str, Score]
    conditions: dict[str, Condition]
    tests: dict[str, Test]
    red_flags: dict[str, RedFlag]
    advice: dict[str, Advice]
    rules: tuple[Rule, ...]
    cases: tuple[Case, ...] = ()
    readiness_case: str | None = None
    rules_by_id: dict[str, Rule] = field(default_factory=dict)
    # The rule set's folder: its valuesets/ say which recorded codes count as which finding.
    rules_dir: Path | None = None
    # The vocabulary's own version (`version:` at the top of vocabulary.yaml): finding codes
    # and their meaning change on their own schedule, apart from the rules.
    vocabulary_version: str = ""
    # rules/presentations.yaml, read and checked once by the loader (empty without the file): the
    # interview's opening complaints, which ask_next asks first, and the page's question groups.
    presentations: tuple[Presentation, ...] = ()
    question_groups: tuple[QuestionGroup, ...] = ()

    def __post_init__(self) -> None:
        if not self.rules_by_id:
            object.__setattr__(self, "rules_by_id", {r.id: r for r in self.rules})


def tests_performed(tests: dict[str, Test], recommended: set[str]) -> set[str]:
    """The recommended tests with every test they include (one level: includes do not chain)."""
    out = set(recommended)
    for code in recommended:
        test = tests.get(code)
        if test is not None:
            out.update(test.includes)
    return out
