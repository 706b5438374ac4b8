"""bench/interview_replay.py counts what it says: the questions asked until the tier reached
its final value and stayed there."""

from __future__ import annotations

import pytest

from bench import interview_replay as replay_mod


def test_settled_counts_until_the_final_tier_stays():
    s = replay_mod._settled
    assert s([], "urgent", "urgent") == 0  # final right after the first step
    assert s(["routine", "urgent", "urgent"], "routine", "urgent") == 2
    assert s(["urgent", "routine", "urgent"], "routine", "urgent") == 3  # reached, lost, reached again
    assert s(["urgent", "routine"], "routine", "urgent") is None  # ends elsewhere


def test_a_cauda_equina_case_settles_within_four_questions_in_both_modes(evaluator):
    case = next(c for c in evaluator.knowledge.cases if c.id == "cauda-equina-retention-saddle-bilateral-emergency")
    for mode in replay_mod.MODES:
        row = replay_mod.replay(evaluator, case, mode)
        assert row["final"] == "emergency"
        assert row["settled"] is not None and row["settled"] <= 4, (mode, row)


def test_the_summary_states_the_goal_honestly():
    rows = [{"case": "a", "final": "emergency", "settled": 5}, {"case": "b", "final": "routine", "settled": 0},
            {"case": "c", "final": "soon", "settled": None}]
    s = replay_mod.summary(rows)
    assert s["never"] == ["c"] and s["emergencies_over_4"] == ["a"] and s["goal_met"] is False
    assert replay_mod.summary([{"case": "b", "final": "routine", "settled": 0}])["goal_met"] is True


def test_the_opening_counts_as_one_question_and_the_replay_does_not_peek(evaluator):
    """A case holding a complaint: the opening ticks it (one question); every later question is
    ask_next's top question for the answers so far, whatever the case holds."""
    case = next(c for c in evaluator.knowledge.cases if c.id == "cauda-equina-retention-saddle-bilateral-emergency")
    row = replay_mod.replay(evaluator, case, "no")
    # The opening (back pain, sciatica, both legs), then the cauda equina screen: within 4.
    assert "back_pain" in row["opening"] and row["settled"] <= 4
    # The same interview for a case that holds nothing of the screen: the same first questions.
    quiet = replay_mod.ReplayCase("quiet", "cases/", {"patient": case.request["patient"],
                                                        "findings": [{"code": "back_pain"},
                                                                     {"code": "pain_shooting_buttock_to_thigh"},
                                                                     {"code": "bilateral_leg_symptoms"}]})
    other = replay_mod.replay(evaluator, quiet, "no")
    assert other["questions"][:1] == row["questions"][:1]
    assert other["final"] == "routine" and other["settled"] == 0


def test_both_case_folders_are_replayed(evaluator):
    from service.config import DEFAULT_RULES_DIR

    cases, refused = replay_mod.all_cases(evaluator, DEFAULT_RULES_DIR)
    folders = {c.folder for c in cases}
    assert folders == {"cases/", "cases/blind/"}
    assert sum(c.folder == "cases/blind/" for c in cases) + len(refused) >= 150


# Issue 16's goal is every case at its final tier, median <= 5, worst <= 15, every emergency
# within 4, in both modes. Reached (rules 0.3.1 + presentations, 422 cases, identical in both
# modes): every case reaches its final tier and the median is 2; NOT reached: 18 of 79
# emergencies need 5-11 questions and 47 cases more than 15 (worst 41: mostly back pain and
# sciatica behind a cauda equina screen of six bladder and saddle questions). These pins hold
# what was reached so that it cannot regress (rules 0.3.0 had 333 cases: worst 26, 9 late, 14
# over 15; 0.3.1 before its presentations were updated: 8 never, worst 75, 24 late, 56 over 15).
PINNED = {"median": 2, "worst": 41, "emergencies_over_4": 18, "over_15": 47}


@pytest.mark.slow
def test_the_interview_figures_do_not_regress_in_either_mode(evaluator):
    """Both case folders replayed in both modes (a few minutes)."""
    from service.config import DEFAULT_RULES_DIR

    cases, refused = replay_mod.all_cases(evaluator, DEFAULT_RULES_DIR)
    assert not refused
    results = replay_mod.run(evaluator, cases, DEFAULT_RULES_DIR)  # the two modes side by side
    for mode, res in results.items():
        s = res["summary"]
        assert s["never"] == [], (mode, s["never"])  # every case reaches its final tier
        assert s["median"] <= PINNED["median"], (mode, s["median"])
        assert s["worst"] <= PINNED["worst"], (mode, s["worst"])
        assert len(s["emergencies_over_4"]) <= PINNED["emergencies_over_4"], (mode, s["emergencies_over_4"])
        assert len(s["over_15"]) <= PINNED["over_15"], (mode, s["over_15"])
        # The cauda equina, limb ischaemia, compartment and hip fracture emergencies are all within 4.
        late = set(s["emergencies_over_4"])
        for case in ("cauda-equina-retention-saddle-bilateral-emergency", "acute-limb-ischaemia-emergency",
                     "compartment-syndrome-calf-after-blow-emergency", "v03-hip-fracture-after-fall-in",
                     "s11-ces-bilateral-deficit-in", "bilateral-sciatica-emergency",
                     # 0.3.1's new emergencies that the presentations' screens now ask early
                     "hip-fracture-shortened-rotated-leg-emergency", "v31-phlegmasia-tense-woody-leg-emergency",
                     "v31-grey-clammy-shock-emergency", "v31-long-lie-little-urine-rhabdomyolysis-emergency"):
            assert case not in late, (mode, case)
