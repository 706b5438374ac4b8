"""Replay every clinical case as the nurse page's interview, and count the questions.

    .venv/bin/python -m bench.interview_replay [--rules DIR] [--json FILE] [--verbose]

Both case folders are replayed: rules/cases/*.yaml (written beside the rules) and
rules/cases/blind/*.yaml (written blind from the guidelines), each reported on its own and
together. Each case is asked as the page asks it: age and sex first (not counted), then

1. the opening question, "What is the problem, and where?" (service/web/interview.py): the
   complaints and pain sites the case holds as present are ticked (and "both legs" when it
   holds pain or numbness in both legs: SAID_AS). It counts as one question,
   asked of every case, whatever the case holds; an item the case does not hold is not ticked
   (which is not a denial); a case written with an old bundled code (vocabulary 0.3.1) says
   that code when one of its atoms is an item, as it answers a later question on an atom;
2. then one question at a time, always the page's first question: ask_next's top finding
   question (the page shows its first three; the presentations' red-flag screens first) or, when
   that finding is in a question group of rules/presentations.yaml, the whole group as ONE
   question (service/web/interview.py next_asks: every item of the group not answered yet, as
   the page shows it with a checkbox each). The replay never looks at the case to choose a
   question: only to answer the one asked, item by item for a group. A finding the case does
   not hold is answered, per mode,

  unknown  {"present": null}: asked, nobody knows ("Don't know" for a group's other items)
  no       {"present": false}: denied (a measurement or a choice the case does not hold is
           answered unknown: "no" is not a value; "None of these" / "No to the others")

The interview ends when the tier is the case's final tier and no question left could change it
(none could raise it, none could lower it: the page's stop rule), when ask_next has no finding
question left, or after 80 questions. Per case
it reports how many questions (the opening included) were asked before the tier reached its
final value (the tier of the case's full request) and stayed there; 0 when the tier never moved
from the tier of age and sex alone; "never" when the interview ends on another tier.
Goal (issue 16), in both modes: every case reaches its final tier, median <= 5, worst <= 15,
every emergency within 4. Exit status 0 whether or not the goal is met: it is a measurement
(tests/test_interview_replay.py holds the goal). With --rules given or not, the two modes run
side by side in two processes; the page's opening and groups are read once per process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.checks.case_scores import BLIND_DIR, load_blind_cases
from service.config import DEFAULT_RULES_DIR
from service.errors import ServiceError
from service.intake.parse import parse_encounter
from service.knowledge.loader import load_knowledge
from service.knowledge.model import Knowledge
from service.knowledge.question_groups import QuestionGroup
from service.reasoning.ask_next import LOWERS_LEAD
from service.reasoning.evaluation import Evaluator
from service.web.interview import ASK_NEXT_LIMIT, groups_by_item, next_asks, opening_codes

MODES = ("unknown", "no")
# The patient's words at the opening for findings a case holds under a narrower code: pain or
# numbness in both legs is "both legs" (case authors did not always add bilateral_leg_symptoms).
# Only the opening reads this; every later question is answered from the case's own codes.
SAID_AS = {"bilateral_leg_symptoms": ("radicular_pain_both_legs", "bilateral_leg_deficit_new", "ascending_numbness")}
MAX_QUESTIONS = 80
OPENING = 1  # the opening question counts as one question


@dataclass(frozen=True)
class ReplayCase:
    id: str
    folder: str
    request: dict[str, Any]


def all_cases(ev: Evaluator, rules_dir: Path) -> tuple[list[ReplayCase], list[str]]:
    """Both folders' cases, and the blind cases whose request the vocabulary refuses (skipped)."""
    cases = [ReplayCase(c.id, "cases/", c.request) for c in ev.knowledge.cases]
    refused: list[str] = []
    for c in load_blind_cases(rules_dir):
        try:
            parse_encounter(ev.knowledge, c.request)
        except ServiceError:
            refused.append(c.id)
            continue
        cases.append(ReplayCase(c.id, f"{BLIND_DIR}/", c.request))
    return cases, refused


def _tier(ev: Evaluator, body: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    answer = ev.evaluate(parse_encounter(ev.knowledge, body))
    return answer["urgency"]["tier"], [q for q in answer["ask_next"] if "finding" in q]


@dataclass(frozen=True)
class Page:
    """What the page offers, read once from the rule set (not once per case: reading
    rules/presentations.yaml took half the replay's time)."""

    opening: tuple[str, ...]  # the opening question's items
    groups: dict[str, QuestionGroup]  # grouped finding -> its question group


def page_of(k: Knowledge) -> Page:
    return Page(tuple(opening_codes(k)), groups_by_item(k))


def replay(ev: Evaluator, case: Any, mode: str, page: Page | None = None) -> dict[str, Any]:
    """One interview. `case` has `id` and `request` (a rule-side Case or a ReplayCase); `page` is
    read from the rule set when not given."""
    k = ev.knowledge
    page = page_of(k) if page is None else page
    groups = page.groups
    held = {f["code"]: f for f in case.request["findings"]}
    final, _ = _tier(ev, case.request)
    body: dict[str, Any] = {"patient": dict(case.request.get("patient", {})), "ask_next_limit": ASK_NEXT_LIMIT,
                            "findings": []}
    start, _ = _tier(ev, body)
    # The opening: every item the case holds as present is ticked; the rest is not sent.
    said = {code for code, narrower in SAID_AS.items()
            if code not in held and any(n in held and held[n].get("present", True) is True for n in narrower)}
    opened = [held.get(c, {"code": c}) for c in page.opening
              if (c in held and held[c].get("present", True) is True) or c in said]
    # A case written with an old bundled code (vocabulary 0.3.1) answers a question on one of
    # its atoms with that code, as the nurse would have recorded it. The opening is such a
    # question too: a case holding "recent fracture, crush, cast or long lie" says it there
    # (its atoms are opening items), sent as the case's own code, never as an atom it may not hold.
    umbrella_of = {a: c for c in held if k.findings[c].deprecated for a in k.findings[c].replaced_by}
    offered = set(page.opening)
    opened += [held[u] for u in dict.fromkeys(umbrella_of[c] for c in offered if c in umbrella_of and c not in held)
               if held[u].get("present", True) is True]
    body["findings"].extend(opened)
    sent = {f["code"] for f in body["findings"]}

    def answer(code: str) -> None:
        """The case's answer to one finding asked (alone or in its group)."""
        if code in held:
            found = held[code]
        elif code in umbrella_of and umbrella_of[code] not in sent:
            found = held[umbrella_of[code]]
        elif mode == "no" and k.findings[code].type == "boolean":
            found = {"code": code, "present": False}
        else:
            found = {"code": code, "present": None}
        body["findings"].append(found)
        sent.update((code, found["code"]))

    tier, questions = _tier(ev, body)
    tiers = [tier] * OPENING
    asked: list[str] = []
    while questions and len(asked) < MAX_QUESTIONS:
        if tier == final and not any(q["tier_steps"] > 0 or q["why"].startswith(LOWERS_LEAD) for q in questions):
            break  # the page's stop rule: no answer left can raise the tier, none can lower it
        nxt = next_asks(questions, groups, sent, 1)
        if not nxt:
            break
        for code in nxt[0].codes:  # a group is one question: each item answered from the case
            answer(code)
        asked.append(nxt[0].key)
        tier, questions = _tier(ev, body)
        tiers.append(tier)
    return {"case": case.id, "folder": getattr(case, "folder", "cases/"), "final": final,
            "opening": [f["code"] for f in opened], "asked": len(tiers), "questions": asked, "tiers": tiers,
            "settled": _settled(tiers, start, final)}


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
        "over_15": [r["case"] for r in rows if r["settled"] is not None and r["settled"] > 15],
        "emergencies": len(emergencies),
        "emergencies_over_4": late,
    }
    out["goal_met"] = (not out["never"] and out["median"] is not None and out["median"] <= 5
                       and out["worst"] <= 15 and not late)
    return out


def _replay_mode(rules_dir: str, cases: list[ReplayCase], mode: str) -> list[dict[str, Any]]:
    """One mode in a fresh process: its own rule set and engine (an engine is per process)."""
    ev = Evaluator(load_knowledge(rules_dir))
    page = page_of(ev.knowledge)
    return [replay(ev, case, mode, page) for case in cases]


def run(ev: Evaluator, cases: list[ReplayCase], rules_dir: str | Path | None = None) -> dict[str, Any]:
    """Every case in both modes: per mode, the summary of all cases and of each folder. Given the
    rules folder, the two modes run side by side in two fresh (spawned, not forked: the engine's
    C state is per process) processes, which halves the wall time on two cores."""
    folders = sorted({c.folder for c in cases})
    if rules_dir is not None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(len(MODES), mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {mode: pool.submit(_replay_mode, str(rules_dir), cases, mode) for mode in MODES}
            by_mode = {mode: f.result() for mode, f in futures.items()}
    else:
        page = page_of(ev.knowledge)
        by_mode = {mode: [replay(ev, case, mode, page) for case in cases] for mode in MODES}
    out: dict[str, Any] = {}
    for mode in MODES:
        rows = by_mode[mode]
        out[mode] = {"summary": summary(rows),
                     "folders": {f: summary([r for r in rows if r["folder"] == f]) for f in folders},
                     "cases": rows}
    return out


def _line(name: str, s: dict[str, Any]) -> str:
    late = s["emergencies_over_4"]
    return (f"{name}: {s['reached_final_tier']}/{s['cases']} reach the final tier; median {s['median']}, "
            f"worst {s['worst']}; emergencies {s['emergencies']}, over 4 questions: {len(late)}"
            f"{' (' + ', '.join(late) + ')' if late else ''}; never: {', '.join(s['never']) or 'none'}; "
            f"goal {'met' if s['goal_met'] else 'NOT met'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rules", type=Path, default=DEFAULT_RULES_DIR)
    ap.add_argument("--json", type=Path, help="write every case's figures here")
    ap.add_argument("--verbose", action="store_true", help="one line per case")
    args = ap.parse_args(argv)
    k = load_knowledge(args.rules)
    ev = Evaluator(k)
    cases, refused = all_cases(ev, args.rules)
    results = run(ev, cases, args.rules)
    report: dict[str, Any] = {"ruleset": f"{k.name} {k.version}", "refused": refused, "modes": results}
    for mode, res in results.items():
        if args.verbose:
            for r in res["cases"]:
                print(f"  {mode:7} {r['folder']:13} {r['case']:60} {r['final']:9} settled after {r['settled']} "
                      f"(asked {r['asked']}; opening {','.join(r['opening']) or '-'}; "
                      f"then {','.join(r['questions'][:6])})")
        print(_line(f"{mode:7} all", res["summary"]))
        for folder, s in res["folders"].items():
            print(_line(f"{mode:7} {folder}", s))
    if refused:
        print(f"not replayed (the vocabulary refuses their request): {', '.join(refused)}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
