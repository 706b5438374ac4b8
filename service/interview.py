"""What the interview page asks before ask_next takes over: age, sex and where the pain is.

The pain sites are findings of the vocabulary (a nurse ticks the places the patient points
to), so they reach the rules like any other answer; a site not ticked is simply not sent.
Shared by the page (service/ui.py) and the interview replay (bench/interview_replay.py), so
that the replay measures what the page does.
"""

from __future__ import annotations

from service.knowledge import Finding, Knowledge

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
