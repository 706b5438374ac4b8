"""What the interview page asks before ask_next takes over: age, sex, then one opening question,
"What is the problem, and where?" (the complaints of rules/presentations.yaml and the pain sites).

The opening's items are findings of the vocabulary (a nurse ticks what the patient says), so
they reach the rules like any other answer; an item not ticked is simply not sent (not denied).
A ticked presentation also gives ask_next its red-flag screen and differential to ask first
(service/knowledge/presentations.py). Shared by the page (service/web/ui.py) and the interview replay
(bench/interview_replay.py), so that the replay measures what the page does.
"""

from __future__ import annotations

from service.knowledge.model import Finding, Knowledge
from service.knowledge.presentations import load_presentations

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
    return [(k.findings[p.finding], p.label) for p in load_presentations(k)
            if p.opening and p.finding not in PAIN_SITES]


def opening_codes(k: Knowledge) -> list[str]:
    """Every finding the opening question offers: the complaints, then the pain sites."""
    return [f.code for f, _ in complaints(k)] + [f.code for f in pain_sites(k)]
