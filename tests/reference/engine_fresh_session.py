"""The engine adapter as it was before the state was reused (git 77bb374, service/reasoning/engine.py),
kept unchanged below this docstring as the reference for tests/test_engine_reuse.py: a fresh
durable-rules session per evaluation, driven through durable's own Host, every input fact
asserted. The service must give exactly these answers. Test code only: never imported by the
service (which keeps service/reasoning/engine.py as its only durable-rules importer).
"""
# ruff: noqa

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import itertools
import logging
import math
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from durable import engine as _dr

from service.errors import EngineError
from service.knowledge.model import Group, Knowledge, Leaf, Rule

# Fact type tags, kept short: the engine compares them on every match.
T_START, T_PATIENT, T_FINDING, T_FACT, T_SCORE = "__start__", "p", "f", "d", "s"
_KIND_TAG = {"patient": T_PATIENT, "finding": T_FINDING, "fact": T_FACT, "score": T_SCORE}
_TAG_KIND = {v: k for k, v in _KIND_TAG.items()}
_SENTINEL = "__sentinel__"
_SINK = "__sink__"
T_NEVER = "__never__"  # no fact of this type is ever asserted
_OPS = {"<": "$lt", "<=": "$lte", ">": "$gt", ">=": "$gte", "==": None, "!=": "$neq"}
MAX_FACT_PROPERTIES = 16  # H9: the engine silently drops facts with ~250+ properties
MAX_STRING = 256  # H9: strings over 64K are compared only in part; ours are codes
MAX_ROUNDS = 64  # a cycle of derivations cannot run forever

log = logging.getLogger("service.engine")
_LOCK = threading.Lock()  # H11: process-wide, around every use of the C engine
_counter = itertools.count(1)


@dataclass(frozen=True)
class Fact:
    """One input or derived fact. `kind` is finding / patient / fact / score."""

    kind: str
    key: str
    present: bool = True
    value: float | None = None
    choice: str | None = None


@dataclass(frozen=True)
class MatchedFact:
    kind: str
    key: str
    present: bool | None = None
    value: float | None = None
    choice: str | None = None


@dataclass(frozen=True)
class Firing:
    seq: int
    rule_id: str
    round: int
    matched: tuple[MatchedFact, ...]
    derived: tuple[str, ...]


@dataclass(frozen=True)
class EngineResult:
    firings: tuple[Firing, ...]
    scores: Mapping[str, float]
    rounds: int


class _QuietHost(_dr.Host):
    """H2: no dispatch or timer threads; everything runs inside `assert_facts`."""

    def _run(self) -> None:
        return None


@dataclass
class _Session:
    """What the actions of one evaluation record. Looked up by the session id."""

    input_findings: Mapping[str, Fact]
    patient: Fact | None
    started: bool = False
    fired: dict[str, dict[str, Any]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    round: int = 0


def normalise_number(x: float) -> float | int:
    """H9: the engine rejects exponent notation ('1e-05'), which Python's json writes for
    very small and very large floats. Values are clinical measurements: four decimals is
    more precision than any of them has, and integers stay integers."""
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        raise EngineError("a fact value is not a finite number")
    if abs(x) >= 1e12:
        raise EngineError("a fact value is too large for the engine")
    if float(x).is_integer():
        return int(x)
    r = round(float(x), 4)
    return int(r) if r.is_integer() else r


def fact_payload(fact: Fact) -> dict[str, Any]:
    """The engine's view of a fact, with its content id (H4). Memoised: the same fact (a
    derived fact, a yes/no finding) recurs in almost every request; each caller gets its own
    copy, so that nothing can change the memoised one."""
    return dict(_fact_payload(fact))


@functools.lru_cache(maxsize=8192)
def _fact_payload(fact: Fact) -> dict[str, Any]:
    body: dict[str, Any] = {"t": _KIND_TAG[fact.kind]}
    if fact.kind == "patient":
        if fact.value is not None:
            body["age"] = normalise_number(fact.value)
        if fact.choice is not None:
            body["sex"] = fact.choice
    elif fact.kind == "finding":
        body["code"] = fact.key
        body["present"] = bool(fact.present)
        if fact.value is not None:
            body["value"] = normalise_number(fact.value)
        if fact.choice is not None:
            body["choice"] = fact.choice
    elif fact.kind == "fact":
        body["name"] = fact.key
    elif fact.kind == "score":
        body["sid_"] = fact.key
        body["value"] = normalise_number(fact.value if fact.value is not None else 0)
    else:
        raise EngineError("unknown fact kind")
    for v in body.values():
        if isinstance(v, str) and len(v) > MAX_STRING:
            raise EngineError("a fact string is longer than the engine compares")
    # The canonical text names every property, in a fixed order, with repr() of its value:
    # two facts get the same id only if they are the same fact.
    canonical = "\x1f".join(f"{k}={body[k]!r}" for k in sorted(body))
    body["id"] = hashlib.sha256(canonical.encode()).hexdigest()[:32]
    if len(body) > MAX_FACT_PROPERTIES:
        raise EngineError("a fact has too many properties")
    return body


# --- compilation -----------------------------------------------------------------------------


def _leaf_tests(leaf: Leaf) -> list[dict[str, Any]]:
    """Engine tests for one leaf, equality tests first (H9: order equality before range)."""
    tag = _KIND_TAG[leaf.kind]
    tests: list[dict[str, Any]] = [{"t": tag}]
    if leaf.kind == "finding":
        tests.append({"code": leaf.key})
        tests.append({"present": leaf.present})
        target = "choice" if leaf.values else "value"
    elif leaf.kind == "patient":
        target = leaf.key
    elif leaf.kind == "fact":
        tests.append({"name": leaf.key})
        target = ""
    else:
        tests.append({"sid_": leaf.key})
        target = "value"
    if leaf.values:
        if len(leaf.values) == 1:
            tests.append({target: leaf.values[0]})
        else:
            tests.append({"$or": [{target: v} for v in leaf.values]})
    if leaf.op is not None:
        op = _OPS[leaf.op]
        num = normalise_number(leaf.value)  # type: ignore[arg-type]
        tests.append({target: num} if op is None else {op: {target: num}})
    return tests


def _fact_key(leaf: Leaf) -> tuple[str, str]:
    return (leaf.kind, "" if leaf.kind == "patient" else leaf.key)


def _patterns(items: Iterable[Leaf | Group], prefix: str) -> list[dict[str, Any]]:
    """Leaves of one conjunction are grouped per fact (a single fact must satisfy all tests
    on it; the engine would otherwise try to join a fact with itself)."""
    groups: dict[tuple[str, str], list[Leaf]] = {}
    nested: list[Group] = []
    for item in items:
        if isinstance(item, Group):
            nested.append(item)
        else:
            groups.setdefault(_fact_key(item), []).append(item)
    out: list[dict[str, Any]] = []
    for n, (_key, leaves) in enumerate(groups.items()):
        tests: list[dict[str, Any]] = []
        for leaf in leaves:
            for t in _leaf_tests(leaf):
                if t not in tests:
                    tests.append(t)
        eq = [t for t in tests if not any(k.startswith("$") for k in t)]
        rng = [t for t in tests if any(k.startswith("$") for k in t)]
        out.append({f"{prefix}f{n}": {"$and": eq + rng}})
    for n, group in enumerate(nested):
        name = f"{prefix}g{n}"
        if group.mode == "all":
            out.append({f"{name}$all": _patterns(group.items, name + "_")})
        else:
            out.append({f"{name}$any": _alternatives(group.items, name + "_")})
    return out


def _alternatives(items: Iterable[Leaf | Group], prefix: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for n, item in enumerate(items):
        if isinstance(item, Group) and item.mode == "all":
            out.append({f"{prefix}a{n}$all": _patterns(item.items, f"{prefix}a{n}_")})
        elif isinstance(item, Group):
            out.extend(_alternatives(item.items, f"{prefix}a{n}_"))
        elif len(item.values) > 1:
            # H15: a `$or` of choices inside an `$any` alternative never matches in the engine
            # (measured: `any: [{finding: thigh_bruising, in: [mild, moderate]}]` fired for
            # neither value). An alternative per value says the same and does match.
            for m, value in enumerate(item.values):
                out.extend(_patterns([dataclasses.replace(item, values=(value,))], f"{prefix}a{n}v{m}_"))
        else:
            out.extend(_patterns([item], f"{prefix}a{n}_"))
    return out


def compile_rule(rule: Rule) -> dict[str, Any]:
    """The durable-rules JSON form of one rule, without its action."""
    when = rule.when
    if when.all and when.any:
        return {"all": [*_patterns(when.all, "m"), {"x$any": _alternatives(when.any, "x_")}]}
    if when.any:
        return {"any": _alternatives(when.any, "x_")}
    return {"all": _patterns(when.all, "m")}


def _none_blocks(rule: Rule, session: _Session) -> bool:
    """H5: `none` is evaluated here, against the input, which is complete before the run."""
    for leaf in rule.when.none:
        if leaf.kind == "finding":
            fact = session.input_findings.get(leaf.key)
            if fact is not None and leaf_matches(leaf, fact):
                return True
        elif leaf.kind == "patient" and session.patient is not None and leaf_matches(leaf, session.patient):
            return True
    return False


def leaf_matches(leaf: Leaf, fact: Fact) -> bool:
    """Python reading of one leaf against one known input fact (used for `none` and by the
    ask-next analysis). Derived facts and scores are not input and never passed here."""
    if leaf.kind == "patient":
        if leaf.key == "age":
            return fact.value is not None and compare(fact.value, leaf.op, leaf.value)
        return fact.choice is not None and fact.choice in leaf.values
    if fact.present != leaf.present:
        return False
    if not leaf.present:
        return True
    if leaf.values:
        return fact.choice in leaf.values
    if leaf.op is not None:
        return fact.value is not None and compare(fact.value, leaf.op, leaf.value)
    return True


def compare(a: float, op: str | None, b: Any) -> bool:
    a = normalise_number(a)
    b = normalise_number(b)
    return {
        "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b, "==": a == b, "!=": a != b,
    }[op or "=="]


# --- the engine ------------------------------------------------------------------------------


class Engine:
    """Compiled once per process (before gunicorn forks); `evaluate` is called per request."""

    def __init__(self, knowledge: Knowledge) -> None:
        self._knowledge = knowledge
        self._rules = {r.id: r for r in knowledge.rules}
        self._score_rules = [r for r in knowledge.rules if r.then.score]
        self._sessions: dict[str, _Session] = {}
        self._name = f"legpain_{next(_counter)}"
        definition: dict[str, Any] = {
            _SENTINEL: {"all": [{"m": {"t": T_START}}], "run": self._sentinel},
            # H3: every fact passes this rule's first pattern, so the engine counts it as
            # handled; the second pattern never matches, so the rule never fires.
            _SINK: {
                "all": [
                    {"m": {"$or": [{"t": tag} for tag in _TAG_KIND]}},
                    {"n": {"t": T_NEVER}},
                ],
                "run": self._sentinel,
            },
        }
        for n, rule in enumerate(knowledge.rules):
            compiled = compile_rule(rule)
            compiled["run"] = self._action(rule)
            definition[f"r{n}"] = compiled
        self._rule_names = {f"r{n}": r.id for n, r in enumerate(knowledge.rules)}
        self._host = _QuietHost()
        try:
            self._host.register_rulesets({self._name: definition})
        except Exception as exc:  # the engine's message is opaque; name what was refused
            raise EngineError(f"the rules engine refused the compiled rule set: {exc.__class__.__name__}") from None

    # Actions run inside the engine: they must never raise (H10) and only record.
    def _sentinel(self, c: Any) -> None:
        session = self._sessions.get(str(c.s.sid))
        if session is not None:
            session.started = True

    def _action(self, rule: Rule) -> Callable[[Any], None]:
        def run(c: Any) -> None:
            session = self._sessions.get(str(c.s.sid))
            if session is None:
                return
            try:
                if _none_blocks(rule, session):
                    return
                matched = _matched_facts(c)
                record = session.fired.get(rule.id)
                if record is None:
                    session.fired[rule.id] = {"round": session.round, "matched": matched}
                    session.order.append(rule.id)
                else:  # H6: a repeat firing adds what it matched, never new conclusions
                    for m in matched:
                        if m not in record["matched"]:
                            record["matched"].append(m)
            except Exception as exc:  # H10: recorded, re-raised by `evaluate` without data
                session.errors.append(f"{rule.id}: {exc.__class__.__name__}")

        return run

    def evaluate(self, facts: Iterable[Fact]) -> EngineResult:
        facts = list(facts)
        findings = {f.key: f for f in facts if f.kind == "finding"}
        patients = [f for f in facts if f.kind == "patient"]
        session = _Session(input_findings=findings, patient=patients[0] if patients else None)
        sid = f"e{next(_counter)}"
        with _LOCK:  # H11 and H8
            self._sessions[sid] = session
            try:
                self._run(sid, session, facts)
            finally:
                self._close(sid, session)
        if session.errors:
            raise EngineError(f"a rule action failed: {session.errors[0]}")
        return self._result(session)

    def _run(self, sid: str, session: _Session, facts: list[Fact]) -> None:
        asserted: set[str] = set()
        batch = [{"t": T_START, "id": "start"}] + [fact_payload(f) for f in facts]
        scored = False
        while True:
            fresh = []
            for body in batch:  # H3: never the same fact twice, in a batch or across rounds
                if body["id"] not in asserted:
                    asserted.add(body["id"])
                    fresh.append({**body, "sid": sid})
            if fresh:
                fresh.sort(key=lambda b: b["id"] if b["t"] != T_START else "")
                self._assert(fresh)
            session.round += 1
            if session.round > MAX_ROUNDS:
                raise EngineError("rule chaining did not settle")
            batch = [fact_payload(f) for f in self._derived(session)]
            if any(b["id"] not in asserted for b in batch):
                continue
            if not scored:  # every rule that can add points has settled: sum the scores
                scored = True
                batch = [fact_payload(f) for f in self._score_facts(session)]
                if any(b["id"] not in asserted for b in batch):
                    continue
            return

    def _assert(self, batch: list[dict[str, Any]]) -> None:
        try:
            self._host.assert_facts(self._name, batch)
        except Exception as exc:
            # H3/H9/H10: the exception's message holds the whole batch: patient data.
            raise EngineError(f"the rules engine rejected a fact batch ({exc.__class__.__name__})") from None

    def _close(self, sid: str, session: _Session) -> None:
        try:
            if not session.started:
                # H1: the batch failed before any action ran; run the sentinel so that the
                # state can be deleted without crashing the process.
                with contextlib.suppress(Exception):
                    self._host.assert_facts(self._name, [{"t": T_START, "id": "start-retry", "sid": sid}])
            if session.started:
                self._host.delete_state(self._name, sid)
        except Exception as exc:  # deleting a finished session cannot change this answer
            log.warning("engine: a finished session could not be deleted (%s)", exc.__class__.__name__)
        finally:
            self._sessions.pop(sid, None)

    def _derived(self, session: _Session) -> list[Fact]:
        names: list[str] = []
        for rule_id in session.order:
            for name in self._rules[rule_id].then.derive:
                if name not in names:
                    names.append(name)
        return [Fact("fact", n) for n in names]

    def _score_facts(self, session: _Session) -> list[Fact]:
        return [Fact("score", sid, value=v) for sid, v in self._scores(session).items()]

    def _scores(self, session: _Session) -> dict[str, float]:
        totals: dict[str, float] = {}
        for rule in self._score_rules:
            if rule.id in session.fired and rule.then.score:
                sid, points = rule.then.score
                totals[sid] = normalise_number(totals.get(sid, 0) + points)
        return totals

    def _result(self, session: _Session) -> EngineResult:
        firings = []
        for seq, rule_id in enumerate(session.order, start=1):
            record = session.fired[rule_id]
            firings.append(Firing(
                seq=seq,
                rule_id=rule_id,
                round=record["round"],
                matched=tuple(sorted(record["matched"], key=lambda m: (m.kind, m.key))),
                derived=self._rules[rule_id].then.derive,
            ))
        return EngineResult(tuple(firings), self._scores(session), session.round)


def _matched_facts(c: Any) -> list[MatchedFact]:
    """The facts a firing matched, read from the closure the engine hands the action."""
    # A single-pattern firing carries a dict; some multi-pattern ones a list of Content.
    raw = c.__dict__.get("_m")
    if raw is None:
        raw = [getattr(x, "_d", x) for x in c.__dict__.get("m", [])]
    out: list[MatchedFact] = []
    if isinstance(raw, dict) and all(isinstance(v, dict) and "t" in v for v in raw.values()):
        nodes: Any = list(raw.values())  # the usual shape: one fact per pattern name
    else:
        nodes = raw

    def visit(node: Any) -> None:
        if isinstance(node, dict) and "t" in node:
            tag = node["t"]
            kind = _TAG_KIND.get(tag)
            if kind == "finding":
                out.append(MatchedFact(
                    "finding", node["code"], node.get("present"), node.get("value"), node.get("choice"),
                ))
            elif kind == "patient":
                out.append(MatchedFact("patient", "patient", None, node.get("age"), node.get("sex")))
            elif kind == "fact":
                out.append(MatchedFact("fact", node["name"]))
            elif kind == "score":
                out.append(MatchedFact("score", node["sid_"], None, node.get("value")))
        elif isinstance(node, dict):
            for v in node.values():
                visit(v)
        elif isinstance(node, list):
            for v in node:
                visit(v)

    visit(nodes)
    unique: list[MatchedFact] = []
    for m in out:
        if m not in unique:
            unique.append(m)
    return unique
