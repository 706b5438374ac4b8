"""bench/interview_replay.py counts what it says: the questions asked until the tier reached
its final value and stayed there."""

from __future__ import annotations

import importlib.util

from tests.conftest import ROOT

_spec = importlib.util.spec_from_file_location("interview_replay", ROOT / "bench" / "interview_replay.py")
replay_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(replay_mod)  # type: ignore[union-attr]


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
