"""The durable-rules adapter: facts in, ordered rule firings out.

This is the only module that imports durable-rules, so every hazard of using it per request
(shared/notes/durable-rules.md, numbered H1..H12 below) is handled here and nowhere else:

H1  delete_state on a session where no action ran crashes the process: each Engine has one
    state, made by a private start fact whose sentinel rule fires; only a state whose sentinel
    ran is ever deleted.
H2  the stock Host starts timer threads that run actions outside the request: the Host (and
    the rest of durable's Python layer) is not used; the adapter drives the C engine
    (`durable_rules_engine`) itself, so no thread is ever started.
H3  an identical fact asserted twice, a fact no rule handles (an unknown code, or a value
    that fails every rule's test), or an empty batch fails the whole batch (or the process):
    facts are de-duplicated by content id, a "sink" rule joins every fact with a fact that
    never exists (so each one is handled and none fires it), and an empty batch is never
    sent.
H4  fact identity is a 32-bit hash: every fact carries an `id` computed from a SHA-256 of
    its full canonical content.
H5  negation is order dependent: `none` is never compiled into the engine; the action checks
    it against the evaluation's input findings, which are all known before the run. The
    loader refuses `none` over derived facts or scores.
H6  `any` fires once per matching alternative: a rule's conclusions are recorded once per
    evaluation (later firings only add the facts they matched).
H7  a rule with only negative tests loops: the loader requires a positive test, and every
    compiled pattern starts with a type test.
H8  >1024 live sessions corrupt the engine: one state per Engine, reused by every evaluation
    (its facts are retracted afterwards); on a failure it is deleted and made again.
H9  exponent floats are rejected, strings are coerced against numbers, huge facts are dropped:
    numbers are normalised to plain decimals, values and choices live in separate typed
    fields, and facts are small and checked.
H10 exceptions inside actions are swallowed, and engine messages carry the whole fact batch:
    actions record their own exceptions, and every engine failure is re-raised as an
    `EngineError` with a fixed message, never the engine's.
H11 the C engine has no locking: one process-wide lock around each evaluation.
H12 Python 3.13 removed `PyEval_CallObject`, which its C code calls: scripts/setup.sh and
    deploy/Containerfile build it there with `-DPyEval_CallObject=PyObject_CallObject` on CC.
    From Python 3.12 durable's Python layer calls the deprecated `datetime.utcfromtimestamp`
    in every action; the adapter no longer goes through that layer, so no evaluation warns.
    pytest still ignores exactly that DeprecationWarning from `durable.engine` (pyproject.toml)
    for the tests that show the raw engine's hazards through durable's own Host.
H15 a `$or` of choices inside an `$any` alternative never matches: `_alternatives` gives each
    value of a multi-value `in` leaf its own alternative (found in rule set 0.3.1, when
    muscle.strain.grade2 read `thigh_bruising in [mild, moderate]` and stopped firing).

Only findings that some positive rule leaf can match are asserted (`Engine.relevant`); the
others could only reach the sink rule. Each fact's JSON is written once (`fact_json`), and each
Engine remembers per input fact its JSON and relevance. Findings are spread over 16 type tags
(`finding_tag`), so that no node of the C engine's alpha network has hundreds of children to
probe (see FINDING_BUCKETS). Nothing per evaluation forms a reference cycle (no garbage for the
collector to find inside a request; tests/test_engine_lean.py).

Chaining runs in rounds driven from here: the rules' actions record what they derive; the
adapter then asserts the new derived facts as the next batch, until nothing new is derived.
Scores are summed once the other rules have settled and asserted as facts, then rounds
continue. Asserting from Python rather than from inside actions keeps every engine call
inside this module's error handling.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import logging
import math
import threading
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import durable_rules_engine as _dre  # durable-rules' C engine (H2: its Python `Host` is not used)
import orjson

from service.errors import EngineError
from service.knowledge.model import Group, Knowledge, Leaf, Rule

# Fact type tags, kept short: the engine compares them on every match.
T_START, T_PATIENT, T_FINDING, T_FACT, T_SCORE = "__start__", "p", "f", "d", "s"
_KIND_TAG = {"patient": T_PATIENT, "finding": T_FINDING, "fact": T_FACT, "score": T_SCORE}
# Findings are spread over FINDING_BUCKETS type tags ("f0".."f15", chosen by a CRC of the code),
# so that no node of the engine's alpha network has hundreds of children. The engine keeps a
# node's children in one table probed linearly from `hash(property name) & 31` (events.c
# handleAlpha), and all children of the single "f" node tested the same property ("code"): every
# property of every finding walked all ~240 of them (measured: 11.3 us to assert one finding that
# no rule reads, 2.6 us for a patient fact). With 16 tags each walk is ~15 long and the root's
# ~20; a root with more tags walks longer, so ~sqrt(codes) is about the best count.
FINDING_BUCKETS = 16
_FINDING_TAGS = tuple(f"{T_FINDING}{b}" for b in range(FINDING_BUCKETS))
_TAG_KIND = {T_PATIENT: "patient", T_FACT: "fact", T_SCORE: "score"} | dict.fromkeys(_FINDING_TAGS, "finding")


@functools.lru_cache(maxsize=4096)
def finding_tag(code: str) -> str:
    """The type tag of every finding fact with this code, and of every pattern that tests it.
    A pure function of the code (not Python's per-process `hash`), so facts and patterns agree
    in any engine, in any process."""
    return _FINDING_TAGS[zlib.crc32(code.encode()) % FINDING_BUCKETS]


def _tag(kind: str, key: str) -> str:
    return finding_tag(key) if kind == "finding" else _KIND_TAG[kind]
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


@dataclass
class _Session:
    """What the actions of one evaluation record. Looked up by the session id."""

    input_findings: Mapping[str, Fact]
    patient: Fact | None
    matched: dict[str, MatchedFact] = field(default_factory=dict)  # content id -> as reported
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
    if fact.kind not in _KIND_TAG:
        raise EngineError("unknown fact kind")
    body: dict[str, Any] = {"t": _tag(fact.kind, fact.key)}
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


# json.dumps(x, ensure_ascii=False) builds a new JSONEncoder on every call; this one writes the same text.
_to_json = json.JSONEncoder(ensure_ascii=False).encode

SID = "w"  # the one engine state of each Engine (its ruleset is its own, so one name serves all)
_START_BATCH = json.dumps([{"t": T_START, "id": "start", "sid": SID}])


# (content id, the fact's JSON for the engine, how a firing reports it)
Prepared = tuple[str, str, MatchedFact]


@functools.lru_cache(maxsize=8192)
def fact_json(fact: Fact) -> Prepared:
    """Everything the adapter sends or reads back about one fact, written once per distinct
    fact. The standard library writes the numbers, as durable's own layer did:
    `normalise_number` has already made them plain decimals that the engine reads (H9)."""
    body = fact_payload(fact)
    body["sid"] = SID
    return body["id"], _to_json(body), _matched_of(body)


def _matched_of(node: Mapping[str, Any]) -> MatchedFact:
    kind = _TAG_KIND.get(node["t"], "")
    if kind == "finding":
        return MatchedFact("finding", node["code"], node.get("present"), node.get("value"), node.get("choice"))
    if kind == "patient":
        return MatchedFact("patient", "patient", None, node.get("age"), node.get("sex"))
    if kind == "fact":
        return MatchedFact("fact", node["name"])
    if kind == "score":
        return MatchedFact("score", node["sid_"], None, node.get("value"))
    return MatchedFact(str(node["t"]), "")  # no rule tests an unknown type: never reported


_generation = 0  # bumped by clear_fact_caches: each Engine then forgets its own memo of inputs


def clear_fact_caches() -> None:
    """Forget memoised payloads (tests that patch how payloads are built)."""
    global _generation
    _fact_payload.cache_clear()
    fact_json.cache_clear()
    _generation += 1


# --- compilation -----------------------------------------------------------------------------


def _leaf_tests(leaf: Leaf) -> list[dict[str, Any]]:
    """Engine tests for one leaf, equality tests first (H9: order equality before range)."""
    tag = _tag(leaf.kind, leaf.key)
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


class _Rules:
    """One compiled ruleset in the C engine, driven through its C API (`durable_rules_engine`).

    durable's Python layer (`Host`, `Closure`, `Promise`, json.dumps of every batch) cost about
    as much as the engine itself per evaluation, and its `Host` starts the timer threads of H2;
    none of it is used. Every call that can fail goes through `_call`, which maps any failure
    to `EngineError` with a fixed message (H10: the C layer's messages may quote facts)."""

    def __init__(self, name: str, definition_json: str) -> None:
        self.name = name
        self.handle = _call(_dre.create_ruleset, name, definition_json)

    def assert_facts(self, batch_json: str, expect: int | None = None) -> int:
        return self._state_offset(_call(_dre.assert_facts, self.handle, batch_json), "asserted", expect)

    def retract_facts(self, batch_json: str, expect: int) -> int:
        return self._state_offset(_call(_dre.retract_facts, self.handle, batch_json), "retracted", expect)

    @staticmethod
    def _state_offset(result: tuple[int, int], what: str, expect: int | None) -> int:
        code, offset = result
        if code != 0:  # 1 not handled, 2 already observed, 3 deferred (H3): the batch had no effect
            raise EngineError(f"the rules engine refused the facts {what} (code {code})")
        # Our one state never moves. Measured: a batch whose facts the engine misreads (H9, an
        # exponent number) returns "OK" with an uninitialised offset, and using it crashes the
        # process; a batch with the start fact hid that before. Refuse any other offset.
        if expect is not None and offset != expect:
            raise EngineError(f"the rules engine {what} the facts into an unknown state")
        return offset

    def run_actions(self, offset: int, actions: Mapping[str, Callable[[Any], None]]) -> int:
        """Run every action the state has pending, in the engine's order; return how many ran.
        Each action's message is {rule name: what it matched}; the engine's state fact is not
        read or written back (no action changes it)."""
        ran = 0
        started = _call(_dre.start_action_for_state, self.handle, offset)
        if started is None:
            return 0
        messages = started[1]
        while messages is not None:
            ran += 1
            for rule_name, message in orjson.loads(messages).items():
                action = actions.get(rule_name)
                if action is None:  # cannot happen with our own definition; refuse to guess
                    _call(_dre.abandon_action, self.handle, offset)
                    raise EngineError("the rules engine fired an unknown rule")
                action(message)
            messages = _call(_dre.complete_and_start_action, self.handle, offset)
        return ran

    def pending(self, offset: int) -> bool:
        """Whether the state has an action waiting (it is abandoned, not run)."""
        if _call(_dre.start_action_for_state, self.handle, offset) is None:
            return False
        _call(_dre.abandon_action, self.handle, offset)
        return True

    def delete_state(self) -> None:
        _call(_dre.delete_state, self.handle, SID)


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except EngineError:
        raise
    except Exception as exc:  # H10: never the engine's message, which can hold the batch
        raise EngineError(f"the rules engine failed ({exc.__class__.__name__})") from None


class Engine:
    """Compiled once per process (before gunicorn forks); `evaluate` is called per request.

    One engine state (session id `SID`) is reused by every evaluation in this process: it is
    created on first use by the start fact, whose sentinel action makes deleting it safe (H1);
    each evaluation asserts its facts into it and retracts all of them afterwards, so that the
    state is back to holding only the start fact. Creating a state per request cost ~2 MB of
    malloc and memset each time. On any failure the state is deleted and made again on the
    next evaluation (tests/test_engine_reuse.py replays long shuffled sequences through one
    state against a fresh engine per evaluation, which must give the same answers)."""

    def __init__(self, knowledge: Knowledge) -> None:
        self._knowledge = knowledge
        self._rules = {r.id: r for r in knowledge.rules}
        self._score_rules = [r for r in knowledge.rules if r.then.score]
        self._session: _Session | None = None
        self._state_ready = False
        self._offset = -1  # the state's place in the engine, known once it is made
        self._actions: dict[str, Callable[[Any], None]] = {_SENTINEL: self._sentinel, _SINK: self._sentinel}
        definition: dict[str, Any] = {
            _SENTINEL: {"all": [{"m": {"t": T_START}}]},
            # H3: every fact passes this rule's first pattern, so the engine counts it as
            # handled; the second pattern never matches, so the rule never fires.
            _SINK: {
                "all": [
                    {"m": {"$or": [{"t": tag} for tag in _TAG_KIND]}},
                    {"n": {"t": T_NEVER}},
                ],
            },
        }
        for n, rule in enumerate(knowledge.rules):
            definition[f"r{n}"] = compile_rule(rule)
            self._actions[f"r{n}"] = self._action(rule)
        self._rule_names = {f"r{n}": r.id for n, r in enumerate(knowledge.rules)}
        # Findings no positive leaf can match are not asserted: they could only reach the sink
        # rule. `none` is checked against the whole input (session.input_findings), not these.
        self._leaves: dict[str, list[Leaf]] = {}
        self._patient_rules = False
        for rule in knowledge.rules:
            for leaf in rule.when.positive_leaves():
                if leaf.kind == "finding":
                    self._leaves.setdefault(leaf.key, []).append(leaf)
                elif leaf.kind == "patient":
                    self._patient_rules = True
        # Per input fact, keyed by its fields (hashed and compared in C, unlike the dataclass):
        # its prepared JSON if some positive leaf can match it, else None. Every entry's fact
        # passed fact_json's checks (H9) when it was made, so a hit needs no new check.
        self._inputs: dict[tuple[Any, ...], Prepared | None] = {}
        # Per rule id, the prepared facts it derives (built on first use, from fact_json).
        self._derives: dict[str, tuple[Prepared, ...]] = {}
        self._generation = _generation
        self._definition_json = json.dumps(definition, ensure_ascii=False)
        try:
            self._engine = _Rules(f"legpain_{next(_counter)}", self._definition_json)
        except EngineError:  # the engine's message is opaque; say what was refused
            raise EngineError("the rules engine refused the compiled rule set") from None

    @property
    def live_sessions(self) -> int:
        """Engine states alive in this adapter: 0 before the first evaluation, then 1 (H8)."""
        return 1 if self._state_ready else 0

    # Actions run inside the engine: they must never raise (H10) and only record.
    def _sentinel(self, message: Any) -> None:
        return None

    def _action(self, rule: Rule) -> Callable[[Any], None]:
        def run(message: Any) -> None:
            session = self._session
            if session is None:  # an action outside an evaluation: nothing may record it
                return
            try:
                if _none_blocks(rule, session):
                    return
                matched = _matched_facts(message, session.matched)
                record = session.fired.get(rule.id)
                if record is None:
                    session.fired[rule.id] = {"round": session.round, "matched": matched}
                    session.order.append(rule.id)
                else:  # H6: a repeat firing adds what it matched, never new conclusions
                    _add_new(record["matched"], matched)
            except Exception as exc:  # H10: recorded, re-raised by `evaluate` without data
                session.errors.append(f"{rule.id}: {exc.__class__.__name__}")

        return run

    def relevant(self, fact: Fact) -> bool:
        """Whether some positive leaf of some rule can match this input fact."""
        if fact.kind == "patient":
            return self._patient_rules
        if fact.kind != "finding":
            return True
        return any(leaf_matches(leaf, fact) for leaf in self._leaves.get(fact.key, ()))

    def _batch(self, facts: list[Fact]) -> list[Prepared]:
        """The prepared input facts to assert: the relevant ones, in input order. H9: every
        input fact is checked (fact_json refuses), asserted or not."""
        if self._generation != _generation:  # clear_fact_caches: payloads may be built otherwise now
            self._inputs.clear()
            self._derives.clear()
            self._generation = _generation
        memo = self._inputs
        batch: list[Prepared] = []
        for f in facts:
            key = (f.kind, f.key, f.present, f.value, f.choice)
            try:
                prepared = memo[key]
            except KeyError:
                prepared = fact_json(f)
                if not self.relevant(f):
                    prepared = None
                if len(memo) >= 16384:  # numbers vary: keep the memo bounded
                    memo.clear()
                memo[key] = prepared
            if prepared is not None:
                batch.append(prepared)
        return batch

    def evaluate(self, facts: Iterable[Fact]) -> EngineResult:
        facts = list(facts)
        findings = {f.key: f for f in facts if f.kind == "finding"}
        patients = [f for f in facts if f.kind == "patient"]
        session = _Session(input_findings=findings, patient=patients[0] if patients else None)
        with _LOCK:  # H11: the C engine has no locking
            self._session = session
            try:
                self._ensure_state()
                batch = self._batch(facts)
                asserted: dict[str, str] = {}
                try:
                    self._run(session, batch, asserted)
                finally:
                    if asserted:  # back to the start fact alone: nothing reaches the next patient
                        self._retract(asserted)
                if session.errors:
                    raise EngineError(f"a rule action failed: {session.errors[0]}")
            except BaseException:
                self._reset_state()
                raise
            finally:
                self._session = None
        return self._result(session)

    def _ensure_state(self) -> None:
        if self._state_ready:
            return
        offset = self._engine.assert_facts(_START_BATCH)
        if self._engine.run_actions(offset, self._actions) != 1:  # exactly the sentinel
            raise EngineError("the rules engine did not start its state")
        self._offset = offset
        self._state_ready = True

    def _reset_state(self) -> None:
        """After any failure: delete the state (safe, H1: the sentinel ran when it was made)
        and make it again on the next evaluation. If even that fails, the whole ruleset is
        replaced by a fresh one (the old one is abandoned, never touched again)."""
        ready, self._state_ready = self._state_ready, False
        try:
            if ready:
                self._engine.delete_state()
                return
        except EngineError:
            pass
        log.warning("engine: the rule state could not be reset; compiling a fresh engine ruleset")
        self._engine = _Rules(f"legpain_{next(_counter)}", self._definition_json)

    def _run(self, session: _Session, batch: list[Prepared], asserted: dict[str, str]) -> None:
        scored = False
        while True:
            fresh: list[tuple[str, str]] = []
            for fid, text, matched in batch:  # H3: never the same fact twice, in a batch or across rounds
                if fid not in asserted:
                    asserted[fid] = text
                    session.matched[fid] = matched
                    fresh.append((fid, text))
            if fresh:
                fresh.sort()
                offset = self._engine.assert_facts("[" + ",".join(t for _, t in fresh) + "]", self._offset)
                self._engine.run_actions(offset, self._actions)
            session.round += 1
            if session.round > MAX_ROUNDS:
                raise EngineError("rule chaining did not settle")
            batch = self._derived(session)
            if any(p[0] not in asserted for p in batch):
                continue
            if not scored:  # every rule that can add points has settled: sum the scores
                scored = True
                batch = [fact_json(f) for f in self._score_facts(session)]
                if any(p[0] not in asserted for p in batch):
                    continue
            return

    def _retract(self, asserted: dict[str, str]) -> None:
        offset = self._engine.retract_facts("[" + ",".join(asserted.values()) + "]", self._offset)
        # Nothing is negated in the engine (H5), so a retraction cannot make a rule fire; if
        # one did, the state is no longer what it should be.
        if self._engine.pending(offset):
            raise EngineError("the rules engine fired while facts were retracted")

    def _derived(self, session: _Session) -> list[Prepared]:
        """The facts derived by every rule fired so far, each once, in the order first derived."""
        out: list[Prepared] = []
        for rule_id in session.order:
            prepared = self._derives.get(rule_id)
            if prepared is None:
                prepared = self._derives[rule_id] = tuple(
                    fact_json(Fact("fact", n)) for n in dict.fromkeys(self._rules[rule_id].then.derive))
            for p in prepared:
                if p not in out:
                    out.append(p)
        return out

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


def _matched_facts(message: Any, known: dict[str, MatchedFact]) -> list[MatchedFact]:
    """The facts a firing matched, read from the engine's message for that action: a dict of
    pattern name -> fact, with nested dicts or lists for `$all` / `$any` groups. Each fact is
    known by its content id (the facts this evaluation asserted). Each fact once, in the order
    first met.

    `known` holds one MatchedFact per content id, and a fact not in it (which the engine cannot
    report: it holds only this evaluation's facts) is added on first sight, so within one
    evaluation equal facts are the same object and `is` tells them apart, without the
    dataclass's Python-level __eq__."""
    found: list[MatchedFact] = []
    # Measured: the engine's messages are flat (pattern name -> fact, also for `$all` and
    # `$any` groups), so the first level is read here without a call per node.
    if isinstance(message, dict):
        for node in message.values():
            if isinstance(node, dict) and "t" in node:
                if node["t"] in _TAG_KIND:
                    fid = node.get("id", "")
                    m = known.get(fid)
                    if m is None:
                        m = known[fid] = _matched_of(node)
                    found.append(m)
            else:
                _visit(node, known, found)
    else:
        _visit(message, known, found)
    out: list[MatchedFact] = []
    _add_new(out, found)
    return out


def _visit(node: Any, known: dict[str, MatchedFact], found: list[MatchedFact]) -> None:
    # A module function, not a closure inside _matched_facts: a nested function that calls
    # itself is a reference cycle, left for the garbage collector after every firing (measured:
    # 36 cyclic objects per evaluation, a gen-0 collection every ~25 evaluations).
    if isinstance(node, dict) and "t" in node:
        if node["t"] in _TAG_KIND:
            fid = node.get("id", "")
            m = known.get(fid)
            if m is None:
                m = known[fid] = _matched_of(node)
            found.append(m)
    elif isinstance(node, dict):
        for v in node.values():
            _visit(v, known, found)
    elif isinstance(node, list):
        for v in node:
            _visit(v, known, found)


def _add_new(out: list[MatchedFact], items: Iterable[MatchedFact]) -> None:
    """Append each item not already in `out`, by identity (see _matched_facts)."""
    for m in items:
        for x in out:
            if x is m:
                break
        else:
            out.append(m)
