"""Presentations: the interview's opening complaints and what ask_next asks first for each.

rules/presentations.yaml (optional: a rule set without it has no priors) names, for a finding a
patient says unprompted, its red-flag screen and then what tells its causes apart. The findings
stay ordinary findings: ticking a presentation in the opening sends it as present, and the rules
read it like any answer. Only ask_next reads the lists (service/reasoning/ask_next.py), so a request from
any client that holds a presentation is asked the same questions the nurse page asks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from service.errors import LoadProblem, RuleLoadError
from service.knowledge.loader import StrictLoader
from service.knowledge.model import Knowledge

FILE = "presentations.yaml"


@dataclass(frozen=True)
class Presentation:
    finding: str
    label: str
    red_flags: tuple[str, ...]
    differential: tuple[str, ...]
    sources: tuple[str, ...]
    opening: bool = True  # offered in the opening's list (the pain sites have a list of their own)


def read_document(k: Knowledge, rules_dir: Path | None = None) -> object | None:
    """presentations.yaml parsed (None when the rule set has none): the presentations and the
    question groups (service/knowledge/question_groups.py) both live in it."""
    folder = rules_dir or k.rules_dir
    path = Path(folder) / FILE if folder is not None else None
    if path is None or not path.exists():
        return None
    try:
        # Bandit B506: StrictLoader is a SafeLoader that also refuses a repeated key.
        return yaml.load(path.read_text(encoding="utf-8"), Loader=StrictLoader)  # nosec B506
    except yaml.YAMLError as exc:
        raise RuleLoadError([LoadProblem(FILE, None, f"not valid YAML: {exc}")]) from exc


def load_presentations(k: Knowledge, rules_dir: Path | None = None) -> tuple[Presentation, ...]:
    """The rule set's presentations, checked against its vocabulary and sources; () without the file."""
    doc = read_document(k, rules_dir)
    if doc is None:
        return ()
    problems: list[str] = []
    items = doc.get("presentations") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise RuleLoadError([LoadProblem(FILE, None, "expected a mapping with a 'presentations' list")])
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
        if code not in k.findings or k.findings[code].type != "boolean":
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
            if q not in k.findings:
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
            if s not in k.sources:
                problems.append(f"{where} ({code}): source {s!r} is not in sources.yaml")
        opening = item.get("opening", True)
        if not isinstance(opening, bool):
            problems.append(f"{where} ({code}): opening must be true or false")
        label = item.get("label", k.findings[code].display if code in k.findings else code)
        if not isinstance(label, str) or not label:
            problems.append(f"{where} ({code}): label must be a non-empty string")
        out.append(Presentation(code, str(label), lists["red_flags"], lists["differential"], lists["sources"],
                                bool(opening)))
    if problems:
        raise RuleLoadError([LoadProblem(FILE, None, p) for p in problems])
    return tuple(out)
