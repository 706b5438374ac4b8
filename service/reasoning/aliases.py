"""Deprecated bundled findings (vocabulary 0.3.1): old codes that keep working.

Before vocabulary 0.3.1 some findings bundled two or more clinical facts ("pregnant or gave
birth in the last 6 weeks", "a foot ulcer or gangrene"). Each is now split into atomic
findings; the old code stays in the vocabulary with `deprecated: true` and `replaced_by`.

An old code means "at least one of its atoms", so it cannot be renamed onto one atom. It stays
an umbrella the rules keep matching, with OR semantics, computed here before the engine runs:

* any atom reported present -> the umbrella is present (whatever was sent for it: presence
  wins, as it does everywhere in the rules);
* every atom reported absent -> the umbrella is absent;
* every atom asked, some not known (present: null), none present -> the umbrella is not known
  either (as if it had been asked and answered so);
* otherwise the umbrella is what the request sent for it directly, or not known.

Sending an old code directly still works; the answer lists it in `deprecated_codes_used` with
its replacements, so a client can move. ask_next never asks an umbrella: what it would be worth
goes to its first atom not yet answered (service/reasoning/ask_next.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Container
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.knowledge.model import Knowledge
    from service.reasoning.encounter import Encounter

Umbrellas = tuple[tuple[str, tuple[str, ...]], ...]


def umbrellas(k: Knowledge) -> Umbrellas:
    """(deprecated code, its atomic findings) in vocabulary order, read once per rule set."""
    return tuple((f.code, f.replaced_by) for f in k.findings.values() if f.deprecated)


def expand(pairs: Umbrellas, enc: Encounter) -> Encounter:
    """The encounter with every umbrella set from its atoms, and the deprecated codes it sent."""
    if not pairs:
        return enc
    findings = enc.findings
    unknown = enc.unknown
    used: list[dict[str, Any]] = []
    behind: dict[str, tuple[str, ...]] = {}
    for code, atoms in pairs:
        sent = findings.get(code)
        if sent is not None or code in unknown:
            used.append({"code": code, "replaced_by": list(atoms)})
        present = tuple(a for a in atoms if findings.get(a, {}).get("present") is True)
        if present:
            if sent is None or sent.get("present") is not True:
                findings = {**findings, code: {"present": True}}
                behind[code] = present  # the atoms stand behind it in supporting findings
        elif sent is None and all(findings.get(a, {}).get("present") is False for a in atoms):
            findings = {**findings, code: {"present": False}}
        elif sent is None and all(a in unknown or a in findings for a in atoms):
            # Every atom asked, none present, some not known: the umbrella was asked and is not
            # known either, so ask_next moves on to a rule's other alternatives.
            unknown = unknown | {code}
        if code in unknown:
            # Asked as the old question and not known: its atoms are not known either.
            unknown = unknown | {a for a in atoms if a not in findings}
    if findings is enc.findings and unknown is enc.unknown and not used:
        return enc
    return dataclasses.replace(enc, findings=findings, unknown=unknown,
                               deprecated_used=tuple(used), umbrella_atoms=behind)


def first_open(atoms: tuple[str, ...], *answered: Container[str]) -> str | None:
    """The atom an old bundled code is asked as: its first (in `replaced_by` order) not in any
    of `answered`, or None when every one was answered."""
    for atom in atoms:
        if not any(atom in done for done in answered):
            return atom
    return None


def ask_atoms(pairs: Umbrellas, credit: dict[str, tuple[float, float]], reasons: dict[str, list[str]],
              reach: dict[str, int], answered: set[str]) -> None:
    """ask_next: move an umbrella's credit onto its first atom not yet answered (one question
    at a time, in the order of `replaced_by`: the next is asked when the first is denied).
    An atom that rules also test directly keeps the larger of the two credits."""
    for code, atoms in pairs:
        if code not in credit:
            continue
        u, d = credit.pop(code)
        why = reasons.pop(code, [])
        top = reach.pop(code, 0)
        atom = first_open(atoms, answered)
        if atom is None:
            continue
        au, ad = credit.get(atom, (0.0, 0.0))
        credit[atom] = (max(u, au), max(d, ad))
        reasons[atom] = [*reasons.get(atom, []), *(r for r in why if r not in reasons.get(atom, []))]
        reach[atom] = max(reach.get(atom, 0), top)
