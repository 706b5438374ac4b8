"""The encounter: a request after validation, as every intake (native JSON, FHIR prefetch, the
cases) hands it to the reasoning. Its own module so that the evaluation and ask_next, which both
read it, import it from below rather than from each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from service.reasoning.engine import Fact


@dataclass(frozen=True)
class Encounter:
    """A request after validation: findings keyed by local code, values already checked."""

    age: float | None
    sex: str | None
    findings: dict[str, dict[str, Any]]  # code -> {present, value?, choice?, laterality?}
    encounter_id: str | None = None
    # Asked but unknown (present: null): no fact for the rules; ask_next does not ask them again.
    unknown: frozenset[str] = frozenset()
    ask_next_limit: int | None = None  # None: the default slots (four urgency, three differential)
    # Coded findings of the native API: which finding each {system, code} was read as. Not part
    # of the encounter's identity: the same findings however they were coded.
    codings_read: tuple[dict[str, str], ...] = field(default=(), compare=False)
    # Set by service/reasoning/aliases.py: the deprecated codes sent ({code, replaced_by}), and for an
    # umbrella set from its atoms, those atoms (they, not the old code, are what was reported).
    deprecated_used: tuple[dict[str, Any], ...] = field(default=(), compare=False)
    umbrella_atoms: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False)

    def facts(self) -> list[Fact]:
        out: list[Fact] = []
        if self.age is not None or self.sex is not None:
            out.append(Fact("patient", "patient", value=self.age, choice=self.sex))
        for code in sorted(self.findings):
            f = self.findings[code]
            out.append(Fact("finding", code, f["present"], f.get("value"), f.get("choice")))
        return out
