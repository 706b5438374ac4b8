"""Replay every clinical case as the nurse page's interview, and count the questions.

    .venv/bin/python bench/interview_replay.py [--rules DIR] [--json FILE] [--verbose]

Each case in rules/cases/*.yaml is asked as the page asks it: age, sex and the pain sites the
case holds first (the page's first step; not counted), then one question at a time, always the
top finding question of ask_next (urgency questions first, as the page shows them). The answer
comes from the case; a question the case does not hold is answered, per mode,

  unknown  {"present": null}: asked, nobody knows
  no       {"present": false}: denied (a measurement or a choice the case does not hold is
           answered unknown: "no" is not a value)

The interview ends when ask_next has no finding question left (or after 80 questions). Per case
it reports how many questions were asked before the tier reached its final value (the tier of
the case's full request) and stayed there; "never" when the interview ends on another tier.
Goal (issue 16), in both modes: every case reaches its final tier, median <= 5, worst <= 15,
every emergency within 4. Exit status 0 whether or not the goal is met: it is a measurement.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.config import DEFAULT_RULES_DIR
from service.evaluation import Evaluator
from service.intake import parse_encounter
from service.interview import ASK_NEXT_LIMIT, PAIN_SITES
from service.knowledge import Case, Knowledge
from service.loader import load_knowledge

MODES = ("unknown", "no")
MAX_QUESTIONS = 80


def _tier(ev: Evaluator, body: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    answer = ev.evaluate(parse_encounter(ev.knowledge, body))
    return answer["urgency"]["tier"], [q for q in answer["ask_next"] if "finding" in q]


def replay(ev: Evaluator, case: Case, mode: str) -> dict[str, Any]:
    k: Knowledge = ev.knowledge
    held = {f["code"]: f for f in case.request["findings"]}
    final, _ = _tier(ev, case.request)
    body: dict[str, Any] = {"patient": dict(case.request.get("patient", {})), "ask_next_limit": ASK_NEXT_LIMIT,
                            "findings": [held[c] for c in PAIN_SITES if c in held]}
    tiers: list[str] = []
    tier, questions = _tier(ev, body)
    start = tier
    # A case written with an old bundled code (vocabulary 0.3.1) answers a question on one of
    # its atoms with that code, as the nurse would have recorded it.
    umbrella_of = {a: c for c in held if k.findings[c].deprecated for a in k.findings[c].replaced_by}
    while questions and len(tiers) < MAX_QUESTIONS:
        code = questions[0]["finding"]
        sent = {f["code"] for f in body["findings"]}
        if code in held:
            body["findings"].append(held[code])
        elif code in umbrella_of and umbrella_of[code] not in sent:
            body["findings"].append(held[umbrella_of[code]])
        elif mode == "no" and k.findings[code].type == "boolean":
            body["findings"].append({"code": code, "present": False})
        else:
            body["findings"].append({"code": code, "present": None})
        tier, questions = _tier(ev, body)
        tiers.append(tier)
    settled = _settled(tiers, start, final)
    return {"case": case.id, "final": final, "asked": len(tiers), "settled": settled}


def _settled(tiers: list[str], start: str, final: str) -> int | None:
    """Questions asked until the tier is `final` for good; None if it ends elsewhere."""
    seq = [start, *tiers]
    if seq[-1] != final:
        return None
    i = len(seq) - 1
    while i > 0 and seq[i - 1] == final:
        i -= 1
    return i


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    reached = [r["settled"] for r in rows if r["settled"] is not None]
    emergencies = [r for r in rows if r["final"] == "emergency"]
    late = [r["case"] for r in emergencies if r["settled"] is None or r["settled"] > 4]
    out = {
        "cases": len(rows),
        "reached_final_tier": len(reached),
        "never": [r["case"] for r in rows if r["settled"] is None],
        "median": statistics.median(reached) if reached else None,
        "worst": max(reached) if reached else None,
        "emergencies": len(emergencies),
        "emergencies_over_4": late,
    }
    out["goal_met"] = (not out["never"] and out["median"] is not None and out["median"] <= 5
                       and out["worst"] <= 15 and not late)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", type=Path, default=DEFAULT_RULES_DIR)
    ap.add_argument("--json", type=Path, help="write every case's figures here")
    ap.add_argument("--verbose", action="store_true", help="one line per case")
    args = ap.parse_args(argv)
    k = load_knowledge(args.rules)
    ev = Evaluator(k)
    report: dict[str, Any] = {"ruleset": f"{k.name} {k.version}", "modes": {}}
    for mode in MODES:
        rows = [replay(ev, case, mode) for case in k.cases]
        s = summary(rows)
        report["modes"][mode] = {"summary": s, "cases": rows}
        if args.verbose:
            for r in rows:
                print(f"  {mode:7} {r['case']:60} {r['final']:9} settled after {r['settled']} (asked {r['asked']})")
        print(f"{mode:7}: {s['reached_final_tier']}/{s['cases']} reach the final tier; median {s['median']}, "
              f"worst {s['worst']}; emergencies {s['emergencies']}, over 4 questions: {len(s['emergencies_over_4'])}"
              f"{' ' + ', '.join(s['emergencies_over_4']) if s['emergencies_over_4'] else ''}; "
              f"never: {', '.join(s['never']) or 'none'}; goal {'met' if s['goal_met'] else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
