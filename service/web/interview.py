"""What the interview page asks before ask_next takes over: age, sex, then one opening question,
"What is the problem, and where?" (the complaints of rules/presentations.yaml and the pain sites),
and how ask_next's ranked questions become the page's questions: a finding of a question group
(rules/presentations.yaml, `question_groups`) is asked with the rest of its group, as one question.

The opening's items are findings of the vocabulary (a nurse ticks what the patient says), so
they reach the rules like any other answer; an item not ticked is simply not sent (not denied).
A ticked presentation also gives ask_next its red-flag screen and differential to ask first
(service/knowledge/presentations.py; read once, at load, into `Knowledge.presentations`). Shared
by the page (service/web/ui.py) and the interview replay (bench/interview_replay.py), so that the
replay measures what the page does; static/interview.js `nextAsks` mirrors `next_asks`, and
tests/test_interview_mirror.py runs both on the same inputs.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from service.knowledge.model import Finding, Knowledge, QuestionGroup

# Head to foot, as a patient points. Only codes the rule set holds are shown.
PAIN_SITES = (
    "back_pain", "pain_buttock", "groin_pain", "pain_back_of_thigh", "lateral_thigh_knee_pain",
    "pain_behind_knee", "pain_calf", "calf_pain_unilateral", "pain_sole", "pain_forefoot",
)
# How many questions the page shows at a time, and how many it asks ask_next for (enough to
# know whether any question left could raise the tier: the stop rules).
SHOWN_AT_ONCE = 3
ASK_NEXT_LIMIT = 200


def pain_sites(k: Knowledge) -> list[Finding]:
    return [k.findings[c] for c in PAIN_SITES if c in k.findings and k.findings[c].type == "boolean"]


def complaints(k: Knowledge) -> list[tuple[Finding, str]]:
    """The opening's complaints: (finding, the label the page shows), in the file's order.
    A pain site is offered once, in the sites list."""
    return [(k.findings[p.finding], p.label) for p in k.presentations
            if p.opening and p.finding not in PAIN_SITES]


def opening_codes(k: Knowledge) -> list[str]:
    """Every finding the opening question offers: the complaints, then the pain sites."""
    return [f.code for f, _ in complaints(k)] + [f.code for f in pain_sites(k)]


@dataclass(frozen=True)
class Ask:
    """One question the page shows: a single finding of ask_next, or a group asked as one."""

    group: QuestionGroup | None
    codes: tuple[str, ...]  # the findings it answers (a group's items not answered yet)
    first: dict[str, Any]  # the ask_next item that brought it up (the group's best-ranked item)

    @property
    def key(self) -> str:
        return self.group.id if self.group else self.codes[0]


def groups_by_item(k: Knowledge) -> dict[str, QuestionGroup]:
    """Every grouped finding -> its group (a finding is in one group at most)."""
    return {code: g for g in k.question_groups for code in g.items}


def next_asks(asks: list[dict[str, Any]], groups: Mapping[str, QuestionGroup], answered: Collection[str],
              n: int) -> list[Ask]:
    """The page's next `n` questions from ask_next's ranked list: in ask_next's order, a finding of a
    group brings up its whole group (every item not answered yet, in the group's order) where its
    best-ranked item stands. The ranking is ask_next's; grouping only asks the items together."""
    out: list[Ask] = []
    # A group's id and a finding's code are both codes and may be equal: kept apart, as the page
    # keeps them ("group:" + id), so that a group never hides a finding of the same name.
    seen: set[tuple[str, str]] = set()
    for q in asks:
        code = q.get("finding")
        if code is None or code in answered:
            continue
        group = groups.get(code)
        key = ("group", group.id) if group else ("finding", code)
        if key in seen:
            continue
        seen.add(key)
        codes = tuple(c for c in group.items if c not in answered) if group else (code,)
        out.append(Ask(group, codes, q))
        if len(out) == n:
            break
    return out
