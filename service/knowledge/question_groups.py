"""Question groups: red flags that triage asks as one question (rules/presentations.yaml,
`question_groups`).

A guideline's screen is often one question with several parts: the GIRFT cauda equina pathway
asks bladder, bowel, saddle and sexual change together, ESVS asks the "6 Ps" of an ischaemic leg
together. A group names such a cluster: a label the nurse reads aloud, its items (yes/no findings
of the vocabulary, each in one group at most) and its sources. Groups change nothing in what
ask_next ranks or what the rules read: the nurse page (service/web/interview.py) asks the items of
the group its top question belongs to as one question, one checkbox each.

Read once with the presentations, by the loader (service/knowledge/loader.py), and kept in
`Knowledge.question_groups`: the page, the interview replay and GET /v1/question_groups read them
from there.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from service.knowledge.model import Finding, Knowledge, QuestionGroup, Source

__all__ = ["ID", "QuestionGroup", "check_question_groups", "load_question_groups"]

ID = re.compile(r"^[a-z][a-z0-9_]*$")


def load_question_groups(k: Knowledge) -> tuple[QuestionGroup, ...]:
    """The rule set's question groups, as the loader read and checked them; () without them."""
    return k.question_groups


def check_question_groups(doc: object, findings: Mapping[str, Finding], sources: Mapping[str, Source],
                          ) -> tuple[tuple[QuestionGroup, ...], list[str]]:
    """presentations.yaml's `question_groups` (`doc` parsed, not None), checked against the
    vocabulary and sources: the groups and the problems found (messages about presentations.yaml;
    none: valid)."""
    items = doc.get("question_groups", []) if isinstance(doc, dict) else []
    if not isinstance(items, list):
        return (), ["question_groups must be a list"]
    problems: list[str] = []
    out: list[QuestionGroup] = []
    owner: dict[str, str] = {}  # item -> the group that holds it
    for i, item in enumerate(items):
        where = f"question_groups[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not ID.match(item["id"]):
            problems.append(f"{where}: needs an id (lower case letters, digits, _)")
            continue
        gid = item["id"]
        where = f"{where} ({gid})"
        extra = set(item) - {"id", "label", "items", "sources"}
        if extra:
            problems.append(f"{where}: unknown key(s) {sorted(extra)}")
        if any(g.id == gid for g in out):
            problems.append(f"{where}: id listed twice")
        label = item.get("label")
        if not isinstance(label, str) or not label.strip():
            problems.append(f"{where}: label must be the question the nurse reads aloud")
            label = gid
        lists: dict[str, tuple[str, ...]] = {}
        for key in ("items", "sources"):
            value = item.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                problems.append(f"{where}: {key} must be a list of codes")
                value = []
            lists[key] = tuple(value)
        if len(lists["items"]) < 2:
            problems.append(f"{where}: a group asks two items or more")
        for code in lists["items"]:
            f = findings.get(code)
            if f is None or f.type != "boolean" or f.deprecated:
                problems.append(f"{where}: {code!r} is not a current yes/no finding of the vocabulary")
            if code in owner:
                problems.append(f"{where}: {code} is already in group {owner[code]}")
            owner.setdefault(code, gid)
        if not lists["sources"]:
            problems.append(f"{where}: give the sources that ask these together")
        for s in lists["sources"]:
            if s not in sources:
                problems.append(f"{where}: source {s!r} is not in sources.yaml")
        out.append(QuestionGroup(gid, " ".join(label.split()), lists["items"], lists["sources"]))
    return tuple(out), problems
