"""The rule set as JSON for the catalogue endpoints (GET /v1/findings, /v1/rules, ...)."""

from __future__ import annotations

from typing import Any

from service.knowledge.model import Group, Knowledge, Leaf, Rule


def _codes(codes: Any) -> list[dict[str, Any]]:
    return [{"system": c.system, "code": c.code, **({"display": c.display} if c.display else {})} for c in codes]


def _leaf(leaf: Leaf) -> dict[str, Any]:
    d: dict[str, Any] = {leaf.kind: leaf.key}
    if leaf.kind == "finding" and not leaf.present:
        d["present"] = False
    if leaf.op is not None:
        d["op"], d["value"] = leaf.op, leaf.value
    if len(leaf.values) == 1:
        d["is"] = leaf.values[0]
    elif leaf.values:
        d["in"] = list(leaf.values)
    return d


def _node(node: Leaf | Group) -> dict[str, Any]:
    return {node.mode: [_node(i) for i in node.items]} if isinstance(node, Group) else _leaf(node)


def rule_item(k: Knowledge, rule: Rule) -> dict[str, Any]:
    when = {mode: [_node(n) for n in getattr(rule.when, mode)] for mode in ("all", "any", "none")}
    t = rule.then
    then: dict[str, Any] = {}
    if t.derive:
        then["derive"] = list(t.derive)
    if t.score:
        then["score"] = {"id": t.score[0], "points": t.score[1]}
    if t.support:
        then["support"] = [{"condition": w.condition, "weight": w.weight} for w in t.support]
    if t.against:
        then["against"] = [{"condition": w.condition, "weight": w.weight} for w in t.against]
    if t.red_flag:
        then["red_flag"] = t.red_flag
    if t.tier:
        then["tier"] = t.tier
    if t.tests:
        then["tests"] = [{"test": r.test, "priority": r.priority, "for": list(r.for_conditions)} for r in t.tests]
    if t.advice:
        then["advice"] = list(t.advice)
    if t.not_indicated:
        then["not_indicated"] = [{"test": n.test, "reason": n.reason} for n in t.not_indicated]
    return {
        "id": rule.id,
        "version": rule.version,
        "title": rule.title,
        "rationale": rule.rationale,
        "domain": rule.domain,
        "file": rule.file,
        "evidence": rule.evidence,
        "sources": list(rule.sources),
        "when": {m: v for m, v in when.items() if v},
        "then": then,
    }


def catalogue_items(k: Knowledge) -> dict[str, list[dict[str, Any]]]:
    findings = []
    for f in k.findings.values():
        item: dict[str, Any] = {
            "code": f.code, "display": f.display, "question": f.question, "type": f.type,
            "topic": f.topic, "codes": _codes(f.codes),
        }
        if f.unit:
            item["unit"] = f.unit
        if f.range:
            item["range"] = list(f.range)
        if f.choices:
            item["choices"] = list(f.choices)
        if f.deprecated:
            item["deprecated"] = True
            item["replaced_by"] = list(f.replaced_by)
        findings.append(item)
    return {
        "findings": findings,
        "conditions": [
            {"code": c.code, "display": c.display, "must_not_miss": c.must_not_miss, "codes": _codes(c.codes)}
            for c in k.conditions.values()
        ],
        "tests": [
            {"code": t.code, "display": t.display, "shows": t.shows, "codes": _codes(t.codes),
             **({"not_indicated": t.not_indicated} if t.not_indicated else {})}
            for t in k.tests.values()
        ],
        "rules": [rule_item(k, r) for r in k.rules],
        "sources": [
            {key: v for key, v in vars(s).items() if v is not None} for s in k.sources.values()
        ],
        "red_flags": [
            {"code": r.code, "display": r.display, "tier": r.tier, "sources": list(r.sources)}
            for r in k.red_flags.values()
        ],
        "advice": [
            {"code": a.code, "text": a.text, "max_tier": a.max_tier, "sources": list(a.sources)}
            for a in k.advice.values()
        ],
        # The red-flag screens the nurse page asks as one question (issue 16), for clients that
        # build their own interview from ask_next: a question whose finding is an item brings up
        # the whole group.
        "question_groups": [
            {"id": g.id, "label": g.label, "items": list(g.items), "sources": list(g.sources)}
            for g in k.question_groups
        ],
    }
