"""Regression tests for the durable-rules hazards (shared/notes/durable-rules.md, H1..H12 in
service/reasoning/engine.py). Each test fails or crashes without the guard it names. Hazards that kill
the process are run in a subprocess so that a crash fails one test rather than the suite."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import threading
import tomllib

import pytest

from service.errors import EngineError
from service.reasoning import engine as engine_mod
from service.reasoning.engine import Engine, Fact, fact_payload, normalise_number
from tests.conftest import MINI_RULES, ROOT


def run_py(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True, timeout=120,
    )


@pytest.fixture(scope="module")
def eng(mini_knowledge) -> Engine:
    return Engine(mini_knowledge)


def fired(result) -> list[str]:
    return [f.rule_id for f in result.firings]


# H1 ------------------------------------------------------------------------------------------

@pytest.mark.skipif(
    sys.version_info >= (3, 12),
    reason="H1 is undefined behaviour (the engine frees fields it never set): measured here, it crashes "
           "on 3.11 every time but happened not to crash on 3.12.1 and 3.13.0; the sentinel guard stays "
           "and its test below runs on every version",
)
def test_h1_raw_engine_crashes_deleting_a_session_where_no_action_ran():
    """Shows the hazard is real on this machine: without a sentinel the process dies."""
    proc = run_py("""
        from durable import engine
        class H(engine.Host):
            def _run(self): pass
        h = H()
        h.register_rulesets({'rs': {'r': {'all': [{'m': {'t': 'x'}}], 'run': lambda c: None}}})
        try:
            h.assert_facts('rs', [{'id': '1', 'sid': 's1', 't': 'y'}])
        except Exception:
            pass
        h.delete_state('rs', 's1')
        print('survived')
    """)
    assert proc.returncode != 0 and "survived" not in proc.stdout


def test_h1_adapter_survives_evaluations_where_no_rule_fires():
    proc = run_py(f"""
        from service.knowledge.loader import load_knowledge
        from service.reasoning.engine import Engine, Fact
        e = Engine(load_knowledge({str(MINI_RULES)!r}))
        for _ in range(200):
            assert e.evaluate([Fact('finding', 'unused')]).firings == ()
            assert e.evaluate([]).firings == ()
            assert e.evaluate([Fact('finding', 'angle', value=80)]).firings == ()
        print('survived')
    """)
    assert proc.returncode == 0, proc.stderr
    assert "survived" in proc.stdout


# H2 ------------------------------------------------------------------------------------------

def test_h2_no_engine_threads_run_outside_requests(mini_knowledge):
    before = {t.ident for t in threading.enumerate()}
    eng = Engine(mini_knowledge)
    eng.evaluate([Fact("finding", "a"), Fact("finding", "b")])
    new = [t for t in threading.enumerate() if t.ident not in before]
    assert new == []
    # durable's Host (which starts the timers) is not used at all: the C engine is driven directly
    assert not any(type(v).__module__.startswith("durable") for v in vars(eng).values())


# H3 ------------------------------------------------------------------------------------------

def test_h3_a_repeated_fact_is_asserted_once(eng):
    result = eng.evaluate([Fact("finding", "a"), Fact("finding", "a"), Fact("finding", "b")])
    assert "mini.join_ab" in fired(result)


def test_h3_a_fact_that_fails_every_test_does_not_sink_the_batch(eng):
    # angle 80 fails the only rule on angle ("< 60"); without the sink rule the engine raises
    # MessageNotHandledException for the whole batch and A+B never join.
    result = eng.evaluate([Fact("finding", "angle", value=80), Fact("finding", "a"), Fact("finding", "b")])
    assert "mini.join_ab" in fired(result)
    assert "mini.angle_low" not in fired(result)


def test_h3_unknown_code_and_empty_input(eng):
    assert eng.evaluate([Fact("finding", "unused")]).firings == ()
    assert eng.evaluate([]).firings == ()


# H4 ------------------------------------------------------------------------------------------

def test_h4_fact_ids_come_from_the_full_content():
    ids = {fact_payload(Fact("finding", "angle", value=v))["id"] for v in range(0, 91)}
    assert len(ids) == 91
    a = fact_payload(Fact("finding", "onset", choice="sudden"))
    assert a["id"] == fact_payload(Fact("finding", "onset", choice="sudden"))["id"]
    assert len(a["id"]) == 32


def test_h4_many_distinct_facts_all_reach_the_rules(eng):
    for v in range(0, 60):
        result = eng.evaluate([Fact("finding", "angle", value=v + 0.25)])
        assert fired(result) == ["mini.angle_low"], v


# H5 ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("order", [("a", "blocker"), ("blocker", "a")])
def test_h5_an_input_blocker_cancels_the_rule_in_any_order(eng, order):
    # Reproduced in the raw engine: a $not whose blocker comes later in the batch still fires.
    result = eng.evaluate([Fact("finding", code) for code in order])
    assert "mini.a_not_blocker" not in fired(result)


def test_h5_without_the_blocker_the_rule_fires(eng):
    assert "mini.a_not_blocker" in fired(eng.evaluate([Fact("finding", "a")]))


def test_h5_denied_blocker_does_not_block(eng):
    result = eng.evaluate([Fact("finding", "a"), Fact("finding", "blocker", present=False)])
    assert "mini.a_not_blocker" in fired(result)


# H6 ------------------------------------------------------------------------------------------

def test_h6_any_with_both_alternatives_concludes_once(eng, mini_evaluator):
    result = eng.evaluate([Fact("finding", "b"), Fact("finding", "c")])
    assert fired(result).count("mini.any_bc") == 1
    firing = next(f for f in result.firings if f.rule_id == "mini.any_bc")
    assert {m.key for m in firing.matched} == {"b", "c"}  # both alternatives in provenance
    assert result.scores == {"points": 1}  # its score item counted once


# H7 is a load-time guard: tests/test_loader.py::test_rule_with_only_negative_tests_is_refused

# H8 / H11 ------------------------------------------------------------------------------------

def test_h8_one_state_serves_thousands_of_evaluations(eng):
    for i in range(1500):  # more than the engine's 1024 live-session limit
        eng.evaluate([Fact("finding", "a"), Fact("finding", "b"), Fact("finding", "angle", value=i % 90)])
    assert eng.live_sessions == 1


def test_h8_a_failure_deletes_the_state_and_the_next_evaluation_makes_it_again(mini_knowledge):
    eng = Engine(mini_knowledge)
    assert eng.live_sessions == 0  # made on first use, in the worker that uses it
    eng.evaluate([Fact("finding", "a")])
    assert eng.live_sessions == 1
    with pytest.raises(EngineError):
        eng.evaluate([Fact("finding", "a"), Fact("finding", "ratio", value=1e20)])
    assert eng.live_sessions == 0
    assert fired(eng.evaluate([Fact("finding", "a"), Fact("finding", "b")]))[:1] == ["mini.join_ab"]
    assert eng.live_sessions == 1


def test_h11_concurrent_threads_get_correct_answers(eng):
    errors: list[str] = []

    def worker(n: int) -> None:
        for i in range(150):
            facts = [Fact("finding", "a"), Fact("finding", "b")] + ([Fact("finding", "c")] if (n + i) % 2 else [])
            got = fired(eng.evaluate(facts))
            want_flag = (n + i) % 2 == 1
            if ("mini.abc_flag" in got) != want_flag:
                errors.append(f"thread {n} iteration {i}: {got}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# H9 ------------------------------------------------------------------------------------------

def test_h9_small_floats_reach_the_engine_as_plain_decimals(eng):
    assert normalise_number(0.00005) in (0, 0.0001)
    assert normalise_number(1e-9) == 0
    assert eng.evaluate([Fact("finding", "ratio", value=0.00005)]).firings == ()
    assert fired(eng.evaluate([Fact("finding", "ratio", value=0.5)])) == ["mini.ratio_tiny"]


def test_h9_without_normalising_exponent_numbers_give_wrong_answers(eng, monkeypatch):
    """Measured here: the engine reads '1e+20' wrongly, so 1e20 > 0.0001 does not fire. With
    the guard such a value is refused (and intake's ranges stop it long before)."""
    monkeypatch.setattr(engine_mod, "normalise_number", lambda x: x)
    engine_mod.clear_fact_caches()  # payloads are memoised: build them with the patch
    # Misread: either the rule does not fire, or (the batch alone in a reused state) the engine
    # answers with an uninitialised state offset, which the adapter refuses instead of using.
    try:
        assert "mini.ratio_tiny" not in fired(eng.evaluate([Fact("finding", "ratio", value=1e20)]))
    except EngineError as exc:
        assert "unknown state" in str(exc)
    monkeypatch.undo()
    engine_mod.clear_fact_caches()
    with pytest.raises(EngineError):
        eng.evaluate([Fact("finding", "ratio", value=1e20)])


def test_h9_exponent_thresholds_are_refused_at_load(tmp_path):
    import shutil

    from service.errors import RuleLoadError
    from service.knowledge.loader import load_knowledge

    shutil.copytree(MINI_RULES, tmp_path / "r")
    rules = tmp_path / "r" / "domains" / "mini.yaml"
    rules.write_text(rules.read_text().replace("value: 0.0001}", "value: 0.00001}"))
    with pytest.raises(RuleLoadError) as info:
        load_knowledge(tmp_path / "r")
    assert "mini.ratio_tiny" in str(info.value)


def test_h9_values_never_coerce_between_types():
    with pytest.raises(EngineError):
        normalise_number(True)  # type: ignore[arg-type]
    with pytest.raises(EngineError):
        normalise_number("0.85")  # type: ignore[arg-type]
    with pytest.raises(EngineError):
        normalise_number(float("inf"))
    # choices and numbers travel in separate fields, so "0.85" can never be compared to 0.9
    body = fact_payload(Fact("finding", "onset", choice="sudden"))
    assert "value" not in body and body["choice"] == "sudden"


# H10 -----------------------------------------------------------------------------------------

def test_h10_an_exception_inside_an_action_surfaces_without_patient_data(eng, monkeypatch):
    def boom(rule, session):
        raise ValueError("SECRET patient value 0.42")

    monkeypatch.setattr(engine_mod, "_none_blocks", boom)
    with pytest.raises(EngineError) as info:
        eng.evaluate([Fact("finding", "a"), Fact("finding", "ratio", value=0.42)])
    assert "SECRET" not in str(info.value) and "0.42" not in str(info.value)
    assert info.value.__suppress_context__ or info.value.__cause__ is None


def test_h10_engine_rejection_messages_are_not_passed_on(eng, monkeypatch):
    original = engine_mod.fact_payload

    def with_secret(fact):
        body = original(fact)
        body["note"] = "SECRET-12345"
        body["t"] = "unhandled"  # no rule, not even the sink, handles it: the batch is refused
        return body

    monkeypatch.setattr(engine_mod, "fact_payload", with_secret)
    engine_mod.clear_fact_caches()
    try:
        with pytest.raises(EngineError) as info:
            eng.evaluate([Fact("finding", "a")])
    finally:
        monkeypatch.undo()
        engine_mod.clear_fact_caches()
    assert "SECRET" not in str(info.value)
    # no engine exception travels with it (one that would print the batch in a traceback)
    assert info.value.__cause__ is None and (info.value.__suppress_context__ or info.value.__context__ is None)
    assert fired(eng.evaluate([Fact("finding", "a"), Fact("finding", "b")]))[:1] == ["mini.join_ab"]


# H12 -----------------------------------------------------------------------------------------

UTC_WARNING = "datetime.datetime.utcfromtimestamp() is deprecated"
EVALUATE_MINI = f"""
    from service.knowledge.loader import load_knowledge
    from service.reasoning.engine import Engine, Fact
    result = Engine(load_knowledge({str(MINI_RULES)!r})).evaluate([Fact("finding", "a"), Fact("finding", "b")])
    print(sorted(f.rule_id for f in result.firings))
"""


def run_py_warnings(code: str, *filters: str) -> subprocess.CompletedProcess[str]:
    args = [a for f in filters for a in ("-W", f)]
    return subprocess.run([sys.executable, *args, "-c", textwrap.dedent(code)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_h12_the_engine_fires_on_this_python_with_only_the_utcfromtimestamp_warning_ignored():
    """Every other warning an error, as under pytest: the engine still imports and fires on
    this interpreter (3.13 only with the PyEval_CallObject define of scripts/setup.sh)."""
    proc = run_py_warnings(EVALUATE_MINI, "error", f"ignore:{UTC_WARNING}:DeprecationWarning:durable.engine")
    assert proc.returncode == 0, proc.stderr
    assert "mini.join_ab" in proc.stdout


def test_h12_the_adapter_never_reaches_the_deprecated_call_on_any_python():
    """durable's Python layer calls `utcfromtimestamp` (deprecated from 3.12) in every action;
    the adapter drives the C engine itself, so with every DeprecationWarning an error it still
    fires on every version. The pytest filter remains for tests that use durable's Host."""
    proc = run_py_warnings(EVALUATE_MINI, "error::DeprecationWarning")
    assert proc.returncode == 0 and "mini.join_ab" in proc.stdout, proc.stderr


def test_h12_the_pytest_filter_names_exactly_that_message_and_module():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    filters = meta["tool"]["pytest"]["ini_options"]["filterwarnings"]
    assert filters[0] == "error"
    ignored = [f for f in filters if f.startswith("ignore")]
    assert len(ignored) == 1
    _, message, category, module = ignored[0].split(":")
    assert re.match(message, UTC_WARNING) and category == "DeprecationWarning"
    assert re.fullmatch(module, "durable.engine") and not re.fullmatch(module, "service.reasoning.engine")


def test_h12_requires_python_admits_every_version_the_suite_runs_on():
    from packaging.specifiers import SpecifierSet

    spec = SpecifierSet(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"])
    assert all(v in spec for v in ("3.11", "3.12", "3.13")) and "3.14" not in spec and "3.10" not in spec
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in spec


def test_h12_setup_and_container_build_the_engine_the_same_way_for_3_13():
    define = 'CC="${CC:-gcc} -DPyEval_CallObject=PyObject_CallObject"'
    assert define in (ROOT / "scripts" / "setup.sh").read_text()
    assert define in (ROOT / "deploy" / "Containerfile").read_text()


# chaining and scores -------------------------------------------------------------------------

def test_chaining_runs_in_rounds_and_scores_after_settling(eng):
    result = eng.evaluate([Fact("finding", "a"), Fact("finding", "b"), Fact("finding", "c")])
    rounds = {f.rule_id: f.round for f in result.firings}
    assert rounds["mini.join_ab"] == 0
    assert rounds["mini.chain_abc"] == 1
    assert rounds["mini.abc_flag"] == 2
    assert rounds["mini.points_two"] == 3  # the score fact is asserted after the rest settled
    assert result.scores == {"points": 2}
    assert [f.seq for f in result.firings] == list(range(1, len(result.firings) + 1))


# nested groups compile to the engine's $all / $any forms ---------------------------------------

NESTED = """
  - id: mini.nested_any_in_all
    version: 1
    title: A with (B, or C and sudden onset)
    rationale: any nested in all, with an all inside the any's alternatives at the top level.
    sources: [src-000]
    evidence: low
    when:
      all: [{finding: a}]
      any: [{finding: b}, {all: [{finding: c}, {finding: onset, is: sudden}]}]
    then: {support: [{condition: cond_x, weight: 1}]}
  - id: mini.group_in_all
    version: 1
    title: angle under 30, and (ratio over 1 or onset gradual)
    rationale: a group inside all.
    sources: [src-000]
    evidence: low
    when:
      all:
        - {finding: angle, op: "<", value: 30}
        - {any: [{finding: ratio, op: ">", value: 1}, {finding: onset, is: gradual}]}
    then: {support: [{condition: cond_y, weight: 1}]}
"""


@pytest.fixture(scope="module")
def nested_engine(tmp_path_factory):
    from service.knowledge.loader import load_knowledge
    from tests.conftest import mini_rules_with

    return Engine(load_knowledge(mini_rules_with(tmp_path_factory.mktemp("nested") / "rules", NESTED)))


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        ([Fact("finding", "a"), Fact("finding", "b")], True),
        ([Fact("finding", "a"), Fact("finding", "c"), Fact("finding", "onset", choice="sudden")], True),
        ([Fact("finding", "a"), Fact("finding", "c"), Fact("finding", "onset", choice="gradual")], False),
        ([Fact("finding", "a"), Fact("finding", "c")], False),
        ([Fact("finding", "b"), Fact("finding", "c"), Fact("finding", "onset", choice="sudden")], False),
    ],
)
def test_any_nested_in_all(nested_engine, facts, expected):
    assert ("mini.nested_any_in_all" in fired(nested_engine.evaluate(facts))) is expected


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        ([Fact("finding", "angle", value=20), Fact("finding", "ratio", value=1.5)], True),
        ([Fact("finding", "angle", value=20), Fact("finding", "onset", choice="gradual")], True),
        ([Fact("finding", "angle", value=40), Fact("finding", "ratio", value=1.5)], False),
        ([Fact("finding", "angle", value=20), Fact("finding", "ratio", value=0.5)], False),
    ],
)
def test_group_inside_all(nested_engine, facts, expected):
    assert ("mini.group_in_all" in fired(nested_engine.evaluate(facts))) is expected


@pytest.mark.parametrize("bruise", ["mild", "moderate"])
def test_h15_a_choice_list_inside_any_matches_each_of_its_values(evaluator, bruise):
    # muscle.strain.grade2: any of weakness, limping or thigh_bruising in [mild, moderate]
    from service.intake.parse import parse_encounter

    body = {"patient": {"age": 25, "sex": "male"},
            "findings": [{"code": "sudden_onset_during_sport"}, {"code": "thigh_muscle_tenderness"},
                         {"code": "thigh_bruising", "value": bruise}]}
    answer = evaluator.evaluate(parse_encounter(evaluator.knowledge, body))
    assert "muscle.strain.grade2" in [r["rule"] for r in answer["urgency"]["reasons"]]
    assert answer["urgency"]["tier"] == "soon"
