"""Presentations: the interview's opening complaints and what ask_next asks first for each.

rules/presentations.yaml (optional: a rule set without it has no priors) names, for a finding a
patient says unprompted, its red-flag screen and then what tells its causes apart. The findings
stay ordinary findings: ticking a presentation in the opening sends it as present, and the rules
read it like any answer. Only ask_next reads the lists (service/reasoning/ask_next.py), so a request from
any client that holds a presentation is asked the same questions the nurse page asks.

The file is read once, by the loader (service/knowledge/loader.py), which checks it here and keeps
the result in `Knowledge.presentations` (the question groups of the same file in
`Knowledge.question_groups`): a bad file stops the load like a bad rule, and no user re-reads it.
"""

from __future__ import annotations

from collections.abc import Mapping

from service.knowledge.model import Finding, Knowledge, Presentation, Source

__all__ = ["FILE", "Presentation", "check_presentations", "load_presentations"]

FILE = "presentations.yaml"


def load_presentations(k: Knowledge) -> tuple[Presentation, ...]:
    """The rule set's presentations, as the loader read and checked them; () without the file."""
    return k.presentations


def check_presentations(doc: object, findings: Mapping[str, Finding], sources: Mapping[str, Source],
                        ) -> tuple[tuple[Presentation, ...], list[str]]:
    """presentations.yaml's `presentations` (`doc` parsed, not None), checked against the vocabulary
    and sources: the presentations and the problems found (messages about FILE; none: valid)."""
    problems: list[str] = []
    items = doc.get("presentations") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        return (), ["expected a mapping with a 'presentations' list"]
    out: list[Presentation] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        where = f"presentations[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("finding"), str):
            problems.append(f"{where}: needs a finding")
            continue
        code = item["finding"]
        extra = set(item) - {"finding", "label", "red_flags", "differential", "sources", "opening"}
        if extra:
            problems.append(f"{where} ({code}): unknown key(s) {sorted(extra)}")
        if code not in findings or findings[code].type != "boolean":
            problems.append(f"{where}: {code!r} is not a yes/no finding of the vocabulary")
        if code in seen:
            problems.append(f"{where}: {code} is listed twice")
        seen.add(code)
        lists: dict[str, tuple[str, ...]] = {}
        for key in ("red_flags", "differential", "sources"):
            value = item.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                problems.append(f"{where} ({code}): {key} must be a list of codes")
                value = []
            lists[key] = tuple(value)
        for q in lists["red_flags"] + lists["differential"]:
            if q not in findings:
                problems.append(f"{where} ({code}): {q!r} is not a finding of the vocabulary")
            elif q == code:
                problems.append(f"{where} ({code}): asks for itself")
        for key in ("red_flags", "differential"):
            dups = sorted({q for q in lists[key] if lists[key].count(q) > 1})
            if dups:
                problems.append(f"{where} ({code}): {key} repeats {dups}")
        both = sorted(set(lists["red_flags"]) & set(lists["differential"]))
        if both:
            problems.append(f"{where} ({code}): {both} listed as red flag and differential")
        if not lists["sources"]:
            problems.append(f"{where} ({code}): give the sources of its red-flag screen")
        for s in lists["sources"]:
            if s not in sources:
                problems.append(f"{where} ({code}): source {s!r} is not in sources.yaml")
        opening = item.get("opening", True)
        if not isinstance(opening, bool):
            problems.append(f"{where} ({code}): opening must be true or false")
        label = item.get("label", findings[code].display if code in findings else code)
        if not isinstance(label, str) or not label:
            problems.append(f"{where} ({code}): label must be a non-empty string")
        out.append(Presentation(code, str(label), lists["red_flags"], lists["differential"], lists["sources"],
                                bool(opening)))
    return tuple(out), problems
