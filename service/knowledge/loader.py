"""Read rules/ into a validated `Knowledge`, or fail naming every file and rule at fault.

The format is documented in rules/README.md. Validation collects every problem before it
raises, so that one lint run shows them all. Anything the engine adapter would trip over
(negated derived facts, rules with no positive test, numbers the engine cannot parse) is
rejected here, at start-up, rather than found during a request.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any

import yaml

from service.errors import LoadProblem, RuleLoadError
from service.knowledge.model import (
    EVIDENCE_LEVELS,
    OPS,
    PRIORITIES,
    SEXES,
    TIERS,
    Advice,
    Case,
    Coding,
    Condition,
    Derived,
    Finding,
    Group,
    Knowledge,
    Leaf,
    NotIndicated,
    Presentation,
    QuestionGroup,
    RedFlag,
    Rule,
    Score,
    Source,
    Test,
    TestRequest,
    Then,
    Weighted,
    When,
)
from service.knowledge.presentations import FILE as PRESENTATIONS_FILE
from service.knowledge.presentations import check_presentations
from service.knowledge.question_groups import check_question_groups

# Full-matched (re.fullmatch): "$" alone also accepts a trailing newline.
CODE_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
RULE_ID_RE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)+")
SOURCE_ID_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
TOPICS = ("pain", "red_flags", "swelling_skin", "nerves", "circulation", "history", "measurements")
PATIENT_ATTRS = ("age", "sex")
# The engine compares numbers it receives as JSON text; it rejects exponent notation, so
# every threshold must print as a plain decimal (see service/reasoning/engine.py, hazard 9).
MAX_ABS_NUMBER = 1e9
MAX_LEAVES_PER_FACT = 16
CATALOGUE_FILES = (
    "ruleset.yaml",
    "sources.yaml",
    "vocabulary.yaml",
    "conditions.yaml",
    "tests.yaml",
    "red_flags.yaml",
    "advice.yaml",
)


class _Collector:
    """Accumulates problems; `where` sets the file and rule they are reported against."""

    def __init__(self) -> None:
        self.problems: list[LoadProblem] = []
        self.file = ""
        self.rule_id: str | None = None

    def add(self, message: str) -> None:
        self.problems.append(LoadProblem(self.file, self.rule_id, message))

    def at(self, file: str) -> _Collector:
        self.file, self.rule_id = file, None
        return self


def ruleset_sha256(rules_dir: Path) -> str:
    """Hash of every rule file's relative path and bytes: changes with any edit."""
    digest = hashlib.sha256()
    for path in sorted(_rule_files(rules_dir)):
        rel = path.relative_to(rules_dir).as_posix()
        digest.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _rule_files(rules_dir: Path) -> list[Path]:
    files = [rules_dir / name for name in CATALOGUE_FILES if (rules_dir / name).exists()]
    files += sorted((rules_dir / "domains").glob("*.yaml"))
    files += sorted((rules_dir / "cases").glob("*.yaml"))
    # Value sets decide what a record is read as, so they are part of what the hash stands for.
    files += sorted((rules_dir / "valuesets").glob("*.yaml"))
    # What the interview asks first (service/knowledge/presentations.py): it changes ask_next's answers.
    files += [p for p in [rules_dir / "presentations.yaml"] if p.exists()]
    return files


def load_knowledge(rules_dir: str | Path) -> Knowledge:
    rules_dir = Path(rules_dir)
    col = _Collector()
    if not rules_dir.is_dir():
        col.file = str(rules_dir)
        col.add("rules directory not found")
        raise RuleLoadError(col.problems)

    docs: dict[str, Any] = {}
    for name in CATALOGUE_FILES:
        col.file = name
        docs[name] = _read_yaml(rules_dir / name, col, required=True)

    sources = _guarded(col.at("sources.yaml"), {}, _load_sources, docs["sources.yaml"])
    findings, derived, scores = _guarded(
        col.at("vocabulary.yaml"), ({}, {}, {}), _load_vocabulary, docs["vocabulary.yaml"], sources)
    vocabulary_version = _guarded(col.at("vocabulary.yaml"), "", _vocabulary_version, docs["vocabulary.yaml"])
    conditions = _guarded(col.at("conditions.yaml"), {}, _load_conditions, docs["conditions.yaml"])
    tests = _guarded(col.at("tests.yaml"), {}, _load_tests, docs["tests.yaml"])
    red_flags = _guarded(col.at("red_flags.yaml"), {}, _load_red_flags, docs["red_flags.yaml"], sources)
    advice = _guarded(col.at("advice.yaml"), {}, _load_advice, docs["advice.yaml"], sources)
    # The presentations are checked against the vocabulary and the sources: with either at
    # fault they would only add problems that follow from it.
    catalogues_ok = not any(p.file in ("sources.yaml", "vocabulary.yaml") for p in col.problems)

    ctx = _Catalogues(sources, findings, derived, scores, conditions, tests, red_flags, advice)
    rules: list[Rule] = []
    seen: dict[str, str] = {}
    domain_files = sorted((rules_dir / "domains").glob("*.yaml"))
    if not domain_files:
        col.file = "domains/"
        col.add("no rule files (domains/*.yaml)")
    for path in domain_files:
        rel = path.relative_to(rules_dir).as_posix()
        col.file, col.rule_id = rel, None
        doc = _read_yaml(path, col, required=True)
        for rule in _guarded(col, [], _load_domain, doc, rel, ctx):
            if rule.id in seen:
                col.file, col.rule_id = rel, rule.id
                col.add(f"duplicate rule id (first defined in {seen[rule.id]})")
                continue
            seen[rule.id] = rel
            rules.append(rule)
    col.rule_id = None
    _check_scores(rules, ctx, col)
    # A declared red flag that no rule raises is a rule lost (an emptied or damaged domain
    # file), not a flag nobody needs: the service would never warn of it.
    raised = {r.then.red_flag for r in rules}
    col.file = "red_flags.yaml"
    for code in red_flags:
        if code not in raised:
            col.add(f"red flag {code} is raised by no rule (is a domain file damaged or missing?)")

    cases: list[Case] = []
    for path in sorted((rules_dir / "cases").glob("*.yaml")):
        rel = path.relative_to(rules_dir).as_posix()
        col.file, col.rule_id = rel, None
        cases.extend(_guarded(col, [], _load_cases, _read_yaml(path, col, required=True), rel))
    case_ids = [c.id for c in cases]
    for dup in sorted({c for c in case_ids if case_ids.count(c) > 1}):
        col.file = "cases/"
        col.add(f"duplicate case id {dup}")

    meta = docs["ruleset.yaml"] or {}
    col.file, col.rule_id = "ruleset.yaml", None
    if not isinstance(meta, dict):
        col.add("expected a mapping with name, version and title")
        meta = {}
    for key in ("name", "version", "title"):
        if not isinstance(meta.get(key), str) or not meta.get(key):
            col.add(f"'{key}' must be a non-empty string")
    readiness = meta.get("readiness_case")
    if readiness is not None and (not isinstance(readiness, str) or readiness not in case_ids):
        col.add(f"readiness_case {readiness!r} is not a case id")

    presentations, question_groups = (
        _load_presentations(rules_dir, findings, sources, col.at(PRESENTATIONS_FILE)) if catalogues_ok else ((), ()))

    if col.problems:
        raise RuleLoadError(col.problems)
    return Knowledge(
        name=meta["name"],
        version=str(meta["version"]),
        title=meta["title"],
        sha256=ruleset_sha256(rules_dir),
        sources=sources,
        findings=findings,
        derived=derived,
        scores=scores,
        conditions=conditions,
        tests=tests,
        red_flags=red_flags,
        advice=advice,
        rules=tuple(rules),
        cases=tuple(cases),
        readiness_case=readiness or (case_ids[0] if case_ids else None),
        rules_dir=rules_dir,
        vocabulary_version=vocabulary_version,
        presentations=presentations,
        question_groups=question_groups,
    )


def _load_presentations(rules_dir: Path, findings: dict[str, Finding], sources: dict[str, Source],
                        col: _Collector) -> tuple[tuple[Presentation, ...], tuple[QuestionGroup, ...]]:
    """rules/presentations.yaml (optional): the presentations and the question groups, read once
    here for every user (ask_next, the nurse page, GET /v1/question_groups) and checked by their
    own modules. Empty without the file, or with a file holding no YAML content."""
    path = rules_dir / PRESENTATIONS_FILE
    if not path.exists():
        return (), ()
    try:
        # Bandit B506: StrictLoader is a SafeLoader that also refuses a repeated key.
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=StrictLoader)  # nosec B506
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        col.add(f"not valid YAML: {exc}")
        return (), ()
    if doc is None:
        return (), ()
    try:
        presentations, problems = check_presentations(doc, findings, sources)
        groups, group_problems = check_question_groups(doc, findings, sources)
    except (TypeError, AttributeError, ValueError, KeyError) as exc:  # as _guarded: a type no check foresaw
        col.add(f"malformed content ({exc.__class__.__name__}): check the types against rules/README.md")
        return (), ()
    for message in problems + group_problems:
        col.add(message)
    return presentations, groups


# --- helpers ---------------------------------------------------------------------------------


def _guarded(col: _Collector, fallback: Any, fn: Any, *args: Any) -> Any:
    """Last line of defence: a value of a type no check foresaw (a list where a code belongs,
    a mapping where a number does) is a load problem naming the file, never a crash."""
    try:
        return fn(*args, col)
    except (TypeError, AttributeError, ValueError, KeyError) as exc:
        col.add(f"malformed content ({exc.__class__.__name__}): check the types against rules/README.md")
        return fallback


class _Catalogues:
    def __init__(self, sources, findings, derived, scores, conditions, tests, red_flags, advice):  # type: ignore[no-untyped-def]
        self.sources: dict[str, Source] = sources
        self.findings: dict[str, Finding] = findings
        self.derived: dict[str, Derived] = derived
        self.scores: dict[str, Score] = scores
        self.conditions: dict[str, Condition] = conditions
        self.tests: dict[str, Test] = tests
        self.red_flags: dict[str, RedFlag] = red_flags
        self.advice: dict[str, Advice] = advice


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key repeated in one mapping. PyYAML keeps the last
    value silently: `priority: stat` then `priority: routine` made an MRI routine."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)  # merge keys (<<) first, as the base class does
            seen: dict[Any, yaml.Mark] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"duplicate key {key!r} (first at line {first.line + 1})", key_node.start_mark)
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path, col: _Collector, required: bool) -> Any:
    if not path.exists():
        if required:
            col.add("file is missing")
        return None
    try:
        with path.open(encoding="utf-8") as fh:
            # Bandit B506: StrictLoader is a SafeLoader subclass, so no arbitrary Python objects.
            doc = yaml.load(fh, Loader=StrictLoader)  # nosec B506
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        col.add(f"not valid YAML{where}: {getattr(exc, 'problem', None) or exc.__class__.__name__}")
        return None
    if doc is None and required:
        # Zero bytes, or only blanks and comments: a truncated or emptied file, never a rule set
        # that means "nothing here". It used to load: cauda equina emptied answered routine.
        col.add("file is empty (no YAML content): a damaged or truncated rule file")
    return doc


def _items(doc: Any, key: str, col: _Collector) -> list[dict[str, Any]]:
    if doc is None:
        return []
    if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
        col.add(f"expected a mapping with a '{key}' list")
        return []
    out = []
    for i, item in enumerate(doc[key]):
        if not isinstance(item, dict):
            col.add(f"{key}[{i}] must be a mapping")
        else:
            out.append(item)
    return out


def _str(item: dict[str, Any], key: str, col: _Collector, what: str, required: bool = True) -> str | None:
    value = item.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        col.add(f"{what}: '{key}' must be a non-empty string")
        return None
    return value


def _code(item: dict[str, Any], key: str, col: _Collector, what: str, seen: set[str]) -> str | None:
    code = item.get(key)
    if not isinstance(code, str) or not CODE_RE.fullmatch(code):
        col.add(f"{what}: '{key}' {code!r} must be lower-case snake_case")
        return None
    if code in seen:
        col.add(f"{what}: duplicate {key} {code!r}")
        return None
    seen.add(code)
    return code


def _codings(item: dict[str, Any], col: _Collector, what: str) -> tuple[Coding, ...]:
    raw = item.get("codes") or []
    if not isinstance(raw, list):
        col.add(f"{what}: 'codes' must be a list")
        return ()
    out = []
    for c in raw:
        if not isinstance(c, dict) or not isinstance(c.get("system"), str) or c.get("code") in (None, ""):
            col.add(f"{what}: each code needs 'system' and 'code'")
            continue
        out.append(Coding(c["system"], str(c["code"]), c.get("display"), c.get("valueset_parent") is True))
    return tuple(out)


def _source_refs(item: dict[str, Any], sources: dict[str, Source], col: _Collector, what: str) -> tuple[str, ...]:
    refs = item.get("sources")
    if not isinstance(refs, list) or not refs:
        col.add(f"{what}: has no sources")
        return ()
    for ref in refs:
        if not isinstance(ref, str) or ref not in sources:
            col.add(f"{what}: unknown source {ref!r}")
    return tuple(str(r) for r in refs)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _plain_number(value: float, col: _Collector, what: str) -> bool:
    if abs(value) > MAX_ABS_NUMBER or (value != 0 and abs(value) < 1e-4):
        col.add(f"{what}: number {value} is outside what the engine can compare (1e-4 .. 1e9)")
        return False
    return True


# --- catalogues ------------------------------------------------------------------------------


def _load_sources(doc: Any, col: _Collector) -> dict[str, Source]:
    out: dict[str, Source] = {}
    for item in _items(doc, "sources", col):
        sid = item.get("id")
        if not isinstance(sid, str) or not SOURCE_ID_RE.fullmatch(sid):
            col.add(f"source id {sid!r} is not valid")
            continue
        if sid in out:
            col.add(f"duplicate source id {sid!r}")
            continue
        kind = item.get("kind")
        if kind not in ("document", "guideline"):
            col.add(f"source {sid}: kind must be document or guideline")
            continue
        title = _str(item, "title", col, f"source {sid}")
        if kind == "document" and not isinstance(item.get("file"), str):
            col.add(f"source {sid}: a document needs 'file'")
        out[sid] = Source(sid, kind, title or "", item.get("file"), item.get("url"), item.get("citation"))
    return out


def _load_vocabulary(doc: Any, sources: dict[str, Source], col: _Collector):  # type: ignore[no-untyped-def]
    findings: dict[str, Finding] = {}
    seen: set[str] = set()
    for item in _items(doc, "findings", col):
        code = _code(item, "code", col, "finding", seen)
        if code is None:
            continue
        what = f"finding {code}"
        ftype = item.get("type")
        if ftype not in ("boolean", "number", "choice"):
            col.add(f"{what}: type must be boolean, number or choice")
            continue
        topic = item.get("topic")
        if topic not in TOPICS:
            col.add(f"{what}: topic must be one of {', '.join(TOPICS)}")
        rng = None
        unit = item.get("unit")
        choices: tuple[str, ...] = ()
        if ftype == "number":
            raw = item.get("range")
            if not (isinstance(raw, list) and len(raw) == 2 and all(_number(v) for v in raw) and raw[0] < raw[1]):
                col.add(f"{what}: a number finding needs range [min, max] with min < max")
            else:
                rng = (float(raw[0]), float(raw[1]))
            if not isinstance(unit, str) or not unit:
                col.add(f"{what}: a number finding needs a UCUM 'unit'")
        elif ftype == "choice":
            raw = item.get("choices")
            if not (isinstance(raw, list) and raw and all(isinstance(c, str) and CODE_RE.fullmatch(c) for c in raw)):
                col.add(f"{what}: a choice finding needs 'choices', a list of snake_case values")
            else:
                choices = tuple(raw)
        findings[code] = Finding(
            code=code,
            display=_str(item, "display", col, what) or code,
            question=_str(item, "question", col, what) or "",
            type=ftype,
            topic=topic or "pain",
            unit=unit if ftype == "number" else None,
            range=rng,
            choices=choices,
            codes=_codings(item, col, what),
            deprecated=item.get("deprecated") is True,
            replaced_by=tuple(item.get("replaced_by") or ()),
        )
        if ("deprecated" in item) != ("replaced_by" in item) or item.get("deprecated") not in (None, True):
            col.add(f"{what}: a deprecated finding has 'deprecated: true' and 'replaced_by' (its atomic findings)")
    _check_aliases(findings, col)
    derived: dict[str, Derived] = {}
    seen_d: set[str] = set()
    for item in _items(doc, "derived", col) if doc and "derived" in doc else []:
        name = _code(item, "name", col, "derived fact", seen_d)
        if name:
            derived[name] = Derived(name, _str(item, "display", col, f"derived {name}") or name)
    scores: dict[str, Score] = {}
    seen_s: set[str] = set()
    for item in _items(doc, "scores", col) if doc and "scores" in doc else []:
        sid = _code(item, "id", col, "score", seen_s)
        if sid:
            scores[sid] = Score(
                sid, _str(item, "display", col, f"score {sid}") or sid,
                _source_refs(item, sources, col, f"score {sid}"),
            )
    return findings, derived, scores


VOCABULARY_VERSION_RE = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+")


def _vocabulary_version(doc: Any, col: _Collector) -> str:
    version = doc.get("version") if isinstance(doc, dict) else None
    if not isinstance(version, str) or not VOCABULARY_VERSION_RE.fullmatch(version):
        col.add("'version' (the vocabulary's own version, e.g. \"0.3.1\") must be a quoted MAJOR.MINOR.PATCH string")
        return ""
    return version


def _check_aliases(findings: dict[str, Finding], col: _Collector) -> None:
    """A deprecated finding is an umbrella over two or more atomic boolean findings: its
    replacements must exist, be booleans like it, and not be deprecated themselves (an alias
    of an alias would make the OR semantics depend on the order of expansion)."""
    for f in findings.values():
        if not f.deprecated:
            continue
        what = f"finding {f.code}"
        if f.type != "boolean":
            col.add(f"{what}: only a yes/no finding can be a deprecated alias")
        if len(f.replaced_by) < 2 or len(set(f.replaced_by)) != len(f.replaced_by):
            col.add(f"{what}: replaced_by must list two or more distinct findings")
        for code in f.replaced_by:
            atom = findings.get(code) if isinstance(code, str) else None
            if atom is None:
                col.add(f"{what}: replaced_by names {code!r}, which is not a finding")
            elif atom.deprecated or atom.type != "boolean":
                col.add(f"{what}: replaced_by {code} must be a yes/no finding that is not deprecated")


def _load_conditions(doc: Any, col: _Collector) -> dict[str, Condition]:
    out: dict[str, Condition] = {}
    seen: set[str] = set()
    for item in _items(doc, "conditions", col):
        code = _code(item, "code", col, "condition", seen)
        if code is None:
            continue
        what = f"condition {code}"
        mnm = item.get("must_not_miss", False)
        if not isinstance(mnm, bool):
            col.add(f"{what}: must_not_miss must be true or false")
        out[code] = Condition(
            code, _str(item, "display", col, what) or code, bool(mnm),
            _codings(item, col, what), item.get("description"),
        )
    return out


def _load_tests(doc: Any, col: _Collector) -> dict[str, Test]:
    out: dict[str, Test] = {}
    seen: set[str] = set()
    for item in _items(doc, "tests", col):
        code = _code(item, "code", col, "test", seen)
        if code is None:
            continue
        what = f"test {code}"
        out[code] = Test(
            code, _str(item, "display", col, what) or code,
            _str(item, "shows", col, what) or "", _codings(item, col, what),
            _str(item, "not_indicated", col, what, required=False),
            _includes(item, col, what),
        )
    for code, test in out.items():
        for inc in test.includes:
            if inc not in out or inc == code:
                col.add(f"test {code}: 'includes' names {inc!r}, not another declared test")
    return out


def _includes(item: dict[str, Any], col: _Collector, what: str) -> tuple[str, ...]:
    raw = item.get("includes", [])
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        col.add(f"{what}: 'includes' must be a list of test codes")
        return ()
    return tuple(raw)


def _load_red_flags(doc: Any, sources: dict[str, Source], col: _Collector) -> dict[str, RedFlag]:
    out: dict[str, RedFlag] = {}
    seen: set[str] = set()
    for item in _items(doc, "red_flags", col):
        code = _code(item, "code", col, "red flag", seen)
        if code is None:
            continue
        what = f"red flag {code}"
        tier = item.get("tier")
        if tier not in TIERS or tier == "routine":
            col.add(f"{what}: tier must be soon, urgent or emergency")
            tier = "emergency"  # fail safe for the rest of this load's checks
        out[code] = RedFlag(
            code, _str(item, "display", col, what) or code, tier,
            _source_refs(item, sources, col, what),
        )
    return out


def _load_advice(doc: Any, sources: dict[str, Source], col: _Collector) -> dict[str, Advice]:
    out: dict[str, Advice] = {}
    seen: set[str] = set()
    for item in _items(doc, "advice", col):
        code = _code(item, "code", col, "advice", seen)
        if code is None:
            continue
        what = f"advice {code}"
        max_tier = item.get("max_tier")
        if max_tier not in TIERS or max_tier == "emergency":
            col.add(f"{what}: max_tier must be routine, soon or urgent (never emergency)")
            max_tier = "routine"
        out[code] = Advice(
            code, _str(item, "text", col, what) or "", max_tier,
            _source_refs(item, sources, col, what),
        )
    return out


# --- rules -----------------------------------------------------------------------------------

_RULE_KEYS = {"id", "version", "title", "rationale", "sources", "evidence", "when", "then"}
_THEN_KEYS = {"derive", "score", "support", "against", "red_flag", "tier", "tests", "advice", "not_indicated"}


def _load_domain(doc: Any, rel: str, ctx: _Catalogues, col: _Collector) -> list[Rule]:
    if doc is None:
        return []
    if not isinstance(doc, dict):
        col.add("expected a mapping with 'domain', 'covers' and 'rules'")
        return []
    domain = doc.get("domain")
    if not isinstance(domain, str) or not domain:
        col.add("'domain' must be a non-empty string")
        domain = rel
    if not isinstance(doc.get("covers"), str):
        col.add("'covers' must say what the file covers and where it comes from")
    out = []
    items = _items(doc, "rules", col)
    if not items and isinstance(doc.get("rules"), list):
        col.add("'rules' is empty: a domain file holds at least one rule")
    for i, item in enumerate(items):
        rid = item.get("id")
        col.rule_id = rid if isinstance(rid, str) else f"rules[{i}]"
        if not isinstance(rid, str) or not RULE_ID_RE.fullmatch(rid):
            col.add(f"rule id {rid!r} must be dotted lower-case, e.g. dvt.wells.calf_swelling")
            continue
        try:
            rule = _load_rule(item, rid, domain, rel, ctx, col)
        except (TypeError, AttributeError, ValueError, KeyError) as exc:
            col.add(f"malformed rule ({exc.__class__.__name__}): check the types against rules/README.md")
            rule = None
        if rule is not None:
            out.append(rule)
    col.rule_id = None
    return out


def _load_rule(item: dict[str, Any], rid: str, domain: str, rel: str, ctx: _Catalogues, col: _Collector) -> Rule | None:
    before = len(col.problems)
    for key in sorted(set(item) - _RULE_KEYS):
        col.add(f"unknown key {key!r}")
    version = item.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        col.add("'version' must be a whole number >= 1")
    title = _str(item, "title", col, "rule")
    rationale = _str(item, "rationale", col, "rule")
    sources = _source_refs(item, ctx.sources, col, "rule")
    if item.get("evidence") not in EVIDENCE_LEVELS:
        col.add(f"'evidence' must be one of {', '.join(EVIDENCE_LEVELS)}")
    when = _load_when(item.get("when"), ctx, col)
    then = _load_then(item.get("then"), ctx, col)
    if len(col.problems) > before or when is None or then is None:
        return None
    return Rule(rid, version, title or "", rationale or "", sources, item["evidence"], when, then, domain, rel)


def _load_when(raw: Any, ctx: _Catalogues, col: _Collector) -> When | None:
    if not isinstance(raw, dict) or not raw or set(raw) - {"all", "any", "none"}:
        col.add("'when' must be a mapping of all / any / none")
        return None
    parts: dict[str, tuple] = {}
    for mode in ("all", "any", "none"):
        items = raw.get(mode, [])
        if not isinstance(items, list) or (mode in raw and not items):
            col.add(f"'when.{mode}' must be a non-empty list")
            return None
        parsed = []
        for item in items:
            node = _load_node(item, ctx, col, depth=0, allow_groups=mode != "none")
            if node is None:
                return None
            parsed.append(node)
        parts[mode] = tuple(parsed)
    when = When(all=parts["all"], any=parts["any"], none=parts["none"])
    # durable-rules: a rule with only negative tests matches its own state fact and loops
    # (hazard 7). Every rule needs a positive test.
    if not when.positive_leaves():
        col.add("'when' needs at least one positive test (in all or any)")
        return None
    for leaf in when.none:
        if leaf.kind in ("fact", "score"):
            # Hazard 5: a derived blocker does not cancel a pending firing.
            col.add(f"'when.none' may not test derived facts or scores ({leaf.key}); model the exclusion positively")
            return None
    # More than 64 sibling tests on one fact fail in the engine (error 303).
    counts: dict[tuple[str, str], int] = {}
    for leaf in when.positive_leaves():
        counts[(leaf.kind, leaf.key)] = counts.get((leaf.kind, leaf.key), 0) + 1
    if any(n > MAX_LEAVES_PER_FACT for n in counts.values()):
        col.add(f"more than {MAX_LEAVES_PER_FACT} tests on one fact")
        return None
    return when


def _load_node(item: Any, ctx: _Catalogues, col: _Collector, depth: int, allow_groups: bool) -> Leaf | Group | None:
    if isinstance(item, dict) and len(item) == 1 and next(iter(item)) in ("all", "any"):
        if not allow_groups or depth >= 1:
            col.add("groups nest one level deep, and not inside 'none'")
            return None
        mode = next(iter(item))
        sub = item[mode]
        if not isinstance(sub, list) or not sub:
            col.add(f"nested '{mode}' must be a non-empty list")
            return None
        nodes = [_load_node(s, ctx, col, depth + 1, allow_groups) for s in sub]
        if any(n is None for n in nodes):
            return None
        return Group(mode, tuple(nodes))  # type: ignore[arg-type]
    return _load_leaf(item, ctx, col)


def _load_leaf(item: Any, ctx: _Catalogues, col: _Collector) -> Leaf | None:
    if not isinstance(item, dict):
        col.add(f"condition {item!r} must be a mapping")
        return None
    kinds = [k for k in ("finding", "patient", "fact", "score") if k in item]
    if len(kinds) != 1:
        col.add(f"condition {item!r} must name exactly one of finding / patient / fact / score")
        return None
    kind = kinds[0]
    key = item[kind]
    if not isinstance(key, str):
        col.add(f"condition {item!r}: '{kind}' must name a code")
        return None
    allowed = {kind, "op", "value", "is", "in", "present"}
    extra = set(item) - allowed
    if extra:
        col.add(f"condition on {key!r} has unknown keys {sorted(extra)}")
        return None
    op, value = item.get("op"), item.get("value")
    if (op is None) != (value is None):
        col.add(f"condition on {key!r}: 'op' and 'value' go together")
        return None
    if op is not None and op not in OPS:
        col.add(f"condition on {key!r}: op {op!r} is not one of {' '.join(OPS)}")
        return None
    values: tuple[str, ...] = ()
    if "is" in item:
        values = (item["is"],)
    if "is" in item and not isinstance(item["is"], str):
        col.add(f"condition on {key!r}: 'is' takes one code")
        return None
    if "in" in item:
        if not isinstance(item["in"], list) or not item["in"] or not all(isinstance(v, str) for v in item["in"]):
            col.add(f"condition on {key!r}: 'in' must be a non-empty list")
            return None
        values = tuple(item["in"])
    present = item.get("present", True)
    if not isinstance(present, bool):
        col.add(f"condition on {key!r}: present must be true or false")
        return None
    if kind != "finding" and "present" in item:
        col.add(f"condition on {key!r}: 'present' applies to findings only")
        return None

    if kind == "finding":
        finding = ctx.findings.get(key)
        if finding is None:
            col.add(f"undeclared finding {key!r}")
            return None
        if not present and (op or values):
            col.add(f"condition on {key!r}: present: false cannot also test a value")
            return None
        if finding.type == "number":
            if values:
                col.add(f"condition on {key!r}: number findings compare with op/value, not is/in")
                return None
            if op is not None and not (_number(value) and _plain_number(float(value), col, f"condition on {key!r}")):
                col.add(f"condition on {key!r}: value must be a number")
                return None
        elif finding.type == "choice":
            if op is not None:
                col.add(f"condition on {key!r}: choice findings test with is/in, not op")
                return None
            bad = [v for v in values if v not in finding.choices]
            if bad:
                col.add(f"condition on {key!r}: {bad} not among its choices {list(finding.choices)}")
                return None
        elif op is not None or values:
            col.add(f"condition on {key!r}: a boolean finding takes no value test")
            return None
    elif kind == "patient":
        if key not in PATIENT_ATTRS:
            col.add(f"undeclared patient attribute {key!r} (age or sex)")
            return None
        if key == "age" and not (op is not None and _number(value) and not values):
            col.add("condition on age needs op and a numeric value")
            return None
        if key == "sex" and (op is not None or not values or any(v not in SEXES for v in values)):
            col.add(f"condition on sex needs is/in with values from {list(SEXES)}")
            return None
    elif kind == "fact":
        if key not in ctx.derived:
            col.add(f"undeclared derived fact {key!r}")
            return None
        if op is not None or values:
            col.add(f"condition on fact {key!r} takes no value test")
            return None
    else:
        if key not in ctx.scores:
            col.add(f"undeclared score {key!r}")
            return None
        if op is None or not _number(value) or not _plain_number(float(value), col, f"score {key}"):
            col.add(f"condition on score {key!r} needs op and a numeric value")
            return None
    return Leaf(kind, key, present, op, value, values)


def _load_then(raw: Any, ctx: _Catalogues, col: _Collector) -> Then | None:
    if not isinstance(raw, dict) or not raw:
        col.add("'then' must be a non-empty mapping")
        return None
    before = len(col.problems)
    for key in sorted(set(raw) - _THEN_KEYS):
        col.add(f"'then' has unknown key {key!r}")
    derive = raw.get("derive", [])
    if not isinstance(derive, list):
        col.add("'then.derive' must be a list")
        derive = []
    for name in derive:
        if not isinstance(name, str) or name not in ctx.derived:
            col.add(f"derives undeclared fact {name!r}")
    score = None
    if "score" in raw:
        s = raw["score"]
        if not (isinstance(s, dict) and isinstance(s.get("id"), str) and s.get("id") in ctx.scores
                and _number(s.get("points"))):
            col.add(f"'then.score' must be {{id: <declared score>, points: <number>}}, got {s!r}")
        else:
            score = (s["id"], s["points"])

    def weighted(key: str) -> tuple[Weighted, ...]:
        out = []
        for w in raw.get(key, []) or []:
            if not (isinstance(w, dict) and isinstance(w.get("condition"), str) and w["condition"] in ctx.conditions):
                col.add(f"'then.{key}' names undeclared condition {w!r}")
                continue
            weight = w.get("weight")
            if not isinstance(weight, int) or isinstance(weight, bool) or not 1 <= weight <= 5:
                col.add(f"'then.{key}' weight for {w['condition']} must be a whole number 1..5")
                continue
            out.append(Weighted(w["condition"], weight))
        return tuple(out)

    support, against = weighted("support"), weighted("against")
    red_flag = raw.get("red_flag")
    if red_flag is not None and (not isinstance(red_flag, str) or red_flag not in ctx.red_flags):
        col.add(f"raises undeclared red flag {red_flag!r}")
    tier = raw.get("tier")
    if tier is not None and (not isinstance(tier, str) or tier not in TIERS):
        col.add(f"tier {tier!r} is not one of {', '.join(TIERS)}")
    tests = []
    for t in raw.get("tests", []) or []:
        if not isinstance(t, dict) or not isinstance(t.get("test"), str) or t["test"] not in ctx.tests:
            col.add(f"recommends undeclared test {t!r}")
            continue
        if not isinstance(t.get("priority"), str) or t["priority"] not in PRIORITIES:
            col.add(f"test {t['test']}: priority must be one of {', '.join(PRIORITIES)}")
            continue
        fors = t.get("for", [])
        if not isinstance(fors, list) or any(not isinstance(c, str) or c not in ctx.conditions for c in fors):
            col.add(f"test {t['test']}: 'for' must list declared conditions")
            continue
        tests.append(TestRequest(t["test"], t["priority"], tuple(fors)))
    advice = raw.get("advice", []) or []
    if not isinstance(advice, list):
        col.add("'then.advice' must be a list")
        advice = []
    for code in advice:
        if not isinstance(code, str) or code not in ctx.advice:
            col.add(f"gives undeclared advice {code!r}")
    not_indicated = []
    for t in raw.get("not_indicated", []) or []:
        if not isinstance(t, dict) or not isinstance(t.get("test"), str) or t["test"] not in ctx.tests:
            col.add(f"'then.not_indicated' names undeclared test {t!r}")
        elif not isinstance(t.get("reason"), str) or not t["reason"].strip():
            col.add(f"'then.not_indicated' for {t['test']} needs a 'reason' a clinician can read")
        else:
            not_indicated.append(NotIndicated(t["test"], t["reason"]))
    if len(col.problems) > before:
        return None
    return Then(
        tuple(derive), score, support, against, red_flag, tier, tuple(tests), tuple(advice), tuple(not_indicated),
    )


def _check_scores(rules: list[Rule], ctx: _Catalogues, col: _Collector) -> None:
    """Scores are summed once, after the other rules settle (service/reasoning/engine.py). A rule that
    adds points must therefore not depend, even through derived facts, on any score."""
    derivers: dict[str, list[Rule]] = {}
    for rule in rules:
        for name in rule.then.derive:
            derivers.setdefault(name, []).append(rule)
    memo: dict[str, bool] = {}

    def depends_on_score(rule: Rule, stack: frozenset[str]) -> bool:
        if rule.id in memo:
            return memo[rule.id]
        if rule.id in stack:
            return False
        result = False
        for leaf in rule.when.positive_leaves():
            if leaf.kind == "score":
                result = True
            elif leaf.kind == "fact":
                result = result or any(depends_on_score(r, stack | {rule.id}) for r in derivers.get(leaf.key, []))
        memo[rule.id] = result
        return result

    for rule in rules:
        if rule.then.score and depends_on_score(rule, frozenset()):
            col.file, col.rule_id = rule.file, rule.id
            col.add("adds score points but depends on a score; scores are summed once, after the other rules")
    col.rule_id = None


# --- cases -----------------------------------------------------------------------------------

_EXPECT_KEYS = {
    "tier", "top3", "tests_include", "tests_exclude", "not_indicated_include", "red_flags_include", "absent",
    "advice_include", "advice_exclude", "not_indicated_exclude", "rules_fired_include",
    "deprecated_codes_used",  # vocabulary 0.3.1: the old bundled codes the case sends, exactly
}


def _load_cases(doc: Any, rel: str, col: _Collector) -> list[Case]:
    out = []
    items = _items(doc, "cases", col)
    if not items and isinstance(doc, dict) and isinstance(doc.get("cases"), list):
        col.add("'cases' is empty: a case file holds at least one case")
    for item in items:
        cid = item.get("id")
        if not isinstance(cid, str) or not cid:
            col.add("a case needs an 'id'")
            continue
        expect = item.get("expect")
        if not isinstance(expect, dict) or expect.get("tier") not in TIERS:
            col.add(f"case {cid}: 'expect.tier' must be one of {', '.join(TIERS)}")
            continue
        extra = set(expect) - _EXPECT_KEYS
        if extra:
            col.add(f"case {cid}: unknown expectation keys {sorted(extra)}")
        self_check = item.get("self_check", False)
        if not isinstance(self_check, bool):
            col.add(f"case {cid}: 'self_check' must be true or false")
            self_check = False
        fired = expect.get("rules_fired_include", [])
        if not (isinstance(fired, list) and all(isinstance(r, str) for r in fired)):
            col.add(f"case {cid}: 'expect.rules_fired_include' must be a list of rule ids")
        request = {"patient": item.get("patient") or {}, "findings": item.get("findings") or []}
        out.append(Case(cid, str(item.get("summary", "")), request, expect, rel, self_check))
    return out
