"""The interview's grouping exists twice by design: `next_asks` (service/web/interview.py, which
the interview replay bench/interview_replay.py measures) and its mirror `nextAsks` in the page's
static/interview.js (what a nurse sees). Both are run here on the same inputs and must give the
same questions: ask_next's answers from real evaluations of clinical cases (several where a
question group applies, one partly answered, answers arriving after the list was ranked) and edge
cases (an empty list, patient items only, limits). The JS runs for real, in the page, in Debian's
Chromium (scripts/setup-browser.sh installs it; the test skips without it)."""

from __future__ import annotations

from typing import Any

import pytest

from service import create_app
from service.intake.parse import parse_encounter
from service.knowledge.model import Case, QuestionGroup
from service.web.interview import ASK_NEXT_LIMIT, SHOWN_AT_ONCE, groups_by_item, next_asks
from service.web.ui import groups_for_page

# The browser fixture of the page's other browser tests (skips without Chromium).
from tests.test_ui_browser import browser  # noqa: F401

pytestmark = pytest.mark.slow

ORIGIN = "http://cds.test"  # never on the network: every request is answered by the app in process

# Run in the page: its own nextAsks, with the page's state set to one input (the answers given, no
# opening ticked, no group shown yet). `groups` null keeps the groups the page read from its own
# data-groups attribute (the real rule set's); else they replace them (the edge cases).
RUN_JS = """([groups, lists, inputs]) => {
  if (groups !== null) {
    iv.groups = new Map();
    for (const g of groups) for (const item of g.items) iv.groups.set(item.code, g);
  }
  document.getElementById("iv-questions").replaceChildren();
  for (const box of document.querySelectorAll("#iv-opening input[data-code]")) box.checked = false;
  return inputs.map(([list, answered, n]) => {
    iv.answers = new Map(answered.map((c) => [c, { present: null }]));
    return nextAsks(lists[list], n)
      .map((a) => ({ group: a.group ? a.group.id : null, codes: a.codes, first: a.first }));
  });
}"""

def _python(asks: list[dict[str, Any]], groups: dict[str, QuestionGroup], answered: list[str],
            n: int) -> list[dict[str, Any]]:
    return [{"group": a.group.id if a.group else None, "codes": list(a.codes), "first": a.first}
            for a in next_asks(asks, groups, set(answered), n)]


@pytest.fixture(scope="module")
def app():
    return create_app({"TESTING": True})


@pytest.fixture()
def page(browser, app):  # noqa: F811
    """The nurse page in Chromium, served by the app in process (no server to start)."""
    client = app.test_client()
    context = browser.new_context()
    page = context.new_page()

    def serve(route):
        with client.get(route.request.url.removeprefix(ORIGIN)) as resp:  # closes a static file's handle
            route.fulfill(status=resp.status_code, headers=dict(resp.headers), body=resp.get_data())

    page.route(ORIGIN + "/**", serve)
    page.goto(ORIGIN + "/")
    page.wait_for_function("typeof nextAsks === 'function' && iv.groups.size > 0")
    yield page
    context.close()


def _evaluate(app, patient: dict[str, Any], findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ask_next's list for a request, as the page asks it (ask_next_limit: every question)."""
    evaluator = app.extensions["evaluator"]
    body = {"patient": patient, "findings": findings, "ask_next_limit": ASK_NEXT_LIMIT}
    return evaluator.evaluate(parse_encounter(evaluator.knowledge, body))["ask_next"]


def _chosen_cases(app) -> list[tuple[Case, list[dict[str, Any]]]]:
    """Clinical cases with their ask_next lists: for each question group, the first case (both case
    folders, in file order) whose list brings it up first of the groups, and the first three whose
    lists bring up none."""
    k = app.extensions["evaluator"].knowledge
    groups = groups_by_item(k)
    by_group: dict[str, tuple[Case, list[dict[str, Any]]]] = {}
    ungrouped: list[tuple[Case, list[dict[str, Any]]]] = []
    for case in k.cases:
        asks = _evaluate(app, case.request["patient"], case.request["findings"])
        grouped = [groups[q["finding"]].id for q in asks if q.get("finding") in groups]
        if grouped:
            by_group.setdefault(grouped[0], (case, asks))
        elif len(ungrouped) < 3:
            ungrouped.append((case, asks))
    return [*by_group.values(), *ungrouped]


def _real_inputs(app) -> tuple[list[list[dict[str, Any]]], list[tuple[int, list[str], int]], list[str]]:
    """ask_next lists from the cases, and inputs over them: (list, answered, n), and the cases'
    ids (to name a failing input)."""
    k = app.extensions["evaluator"].knowledge
    groups = groups_by_item(k)
    lists: list[list[dict[str, Any]]] = []
    inputs: list[tuple[int, list[str], int]] = []
    names: list[str] = []
    for case, asks in _chosen_cases(app):
        patient, findings = case.request["patient"], case.request["findings"]
        sent = [f["code"] for f in findings]
        lists.append(asks)
        names.append(case.id)
        here = len(lists) - 1
        for n in (1, SHOWN_AT_ONCE, ASK_NEXT_LIMIT):
            inputs.append((here, sent, n))
        grouped = [q["finding"] for q in asks if q.get("finding") in groups]
        if not grouped:
            continue
        group = groups[grouped[0]]
        # Answers that arrive while the list is out: its best-ranked grouped item answered, so the
        # group is brought up by its next item, without the one answered.
        inputs.append((here, [*sent, grouped[0]], SHOWN_AT_ONCE))
        rest = [c for c in group.items if c != grouped[0] and c not in sent]
        if rest:
            # A group partly answered, as the page sends it: one item (not the best-ranked)
            # answered "don't know", the case evaluated again; the group is still asked for the rest.
            lists.append(_evaluate(app, patient, [*findings, {"code": rest[0], "present": None}]))
            names.append(f"{case.id} + {rest[0]} unknown")
            inputs.append((len(lists) - 1, [*sent, rest[0]], SHOWN_AT_ONCE))
            # ...and every item but the best-ranked one answered "no".
            lists.append(_evaluate(app, patient, [*findings, *({"code": c, "present": False} for c in rest)]))
            names.append(f"{case.id} + {rest} denied")
            inputs.append((len(lists) - 1, [*sent, *rest], SHOWN_AT_ONCE))
    return lists, inputs, names


def test_the_page_and_next_asks_ask_the_same_questions_on_real_cases(page, app):
    k = app.extensions["evaluator"].knowledge
    groups = groups_by_item(k)
    lists, inputs, names = _real_inputs(app)
    js = page.evaluate(RUN_JS, [None, lists, inputs])
    for (list_no, answered, n), got in zip(inputs, js, strict=True):
        want = _python(lists[list_no], groups, answered, n)
        assert got == want, f"{names[list_no]}: answered {answered}, n={n}"
    # The inputs reach what they are for: every question group asked, in some input with a part of
    # it answered, and questions up to the page's limit and beyond it.
    asked = [a for out in js for a in out]
    assert {a["group"] for a in asked} >= {g.id for g in k.question_groups}
    assert any(a["group"] and len(a["codes"]) < len(groups[a["first"]["finding"]].items) for a in asked)
    assert any(len(out) == SHOWN_AT_ONCE for out in js) and any(len(out) > SHOWN_AT_ONCE for out in js)


def _ask(code: str, aim: str = "urgency") -> dict[str, Any]:
    return {"finding": code, "question": f"{code}?", "aim": aim, "tier_steps": 1, "raises_tier_to": "urgent"}


# Invented groups and lists, for what the cases do not hold. The groups' items are in the page's
# shape (groups_for_page) and as QuestionGroups for next_asks, from one spec.
EDGE_GROUPS = {"screen": ("a", "b", "c"), "pair": ("d", "e"), "f": ("g", "h")}
AGE = {"patient": "age", "display": "Age", "question": "How old?"}
EDGES: list[tuple[str, list[dict[str, Any]], list[str], int]] = [
    ("empty list", [], [], SHOWN_AT_ONCE),
    ("empty list, nothing answered, no limit to reach", [], ["a"], 1),
    ("patient items only", [AGE, {"patient": "sex", "display": "Sex", "question": "Sex?"}], [], SHOWN_AT_ONCE),
    ("age first, then findings", [AGE, _ask("x"), _ask("b"), _ask("y")], [], SHOWN_AT_ONCE),
    ("group brought up by its middle item, in the group's order", [_ask("b"), _ask("x")], [], 2),
    ("group's later items do not ask it again", [_ask("c"), _ask("a"), _ask("x"), _ask("b")], [], SHOWN_AT_ONCE),
    ("group partly answered", [_ask("b"), _ask("x")], ["a"], SHOWN_AT_ONCE),
    ("group answered but for one", [_ask("c"), _ask("x")], ["a", "b"], SHOWN_AT_ONCE),
    ("best item answered meanwhile: the next item brings the group", [_ask("a"), _ask("x"), _ask("c")], ["a"], 2),
    ("an answered single question is skipped", [_ask("x"), _ask("y"), _ask("z")], ["x"], SHOWN_AT_ONCE),
    ("two groups and singles", [_ask("x"), _ask("e"), _ask("a"), _ask("d"), _ask("y")], [], SHOWN_AT_ONCE),
    ("limit 1", [_ask("x"), _ask("a"), _ask("y")], [], 1),
    ("limit above what there is", [_ask("x"), _ask("a"), _ask("b"), _ask("y")], [], 10),
    ("limit reached exactly", [_ask("x"), _ask("a"), _ask("y")], [], 3),
    ("limit 0", [_ask("x"), _ask("a"), _ask("y")], [], 0),
    ("every item answered but listed", [_ask("a"), _ask("b"), _ask("x", "differential")], ["a", "b", "c"], 3),
    ("a finding listed twice", [_ask("x"), _ask("x"), _ask("y")], [], SHOWN_AT_ONCE),
    # Group ids and finding codes are both lower-case codes (none of the rule set's are equal
    # today): a group "f" does not hide the ungrouped finding "f".
    ("a group whose id is a finding's code", [_ask("g"), _ask("f"), _ask("x")], [], SHOWN_AT_ONCE),
]


def test_the_page_and_next_asks_agree_on_edge_cases(page):
    page_groups = [{"id": gid, "label": gid, "items": [{"code": c, "display": c, "question": c} for c in items]}
                   for gid, items in EDGE_GROUPS.items()]
    groups = {c: QuestionGroup(gid, gid, items, ("src",)) for gid, items in EDGE_GROUPS.items() for c in items}
    lists = [asks for _, asks, _, _ in EDGES]
    js = page.evaluate(RUN_JS, [page_groups, lists, [[i, answered, n] for i, (_, _, answered, n) in enumerate(EDGES)]])
    for (name, asks, answered, n), got in zip(EDGES, js, strict=True):
        assert got == _python(asks, groups, answered, n), name
    # The inputs do reach what they are named for.
    by_name = dict(zip((e[0] for e in EDGES), js, strict=True))
    assert by_name["empty list"] == [] and by_name["patient items only"] == []
    assert by_name["group partly answered"][0]["codes"] == ["b", "c"]
    assert [a["group"] or a["codes"][0] for a in by_name["two groups and singles"]] == ["x", "pair", "screen"]
    assert [a["group"] or a["codes"][0] for a in by_name["a group whose id is a finding's code"]] == ["f", "f", "x"]


def test_the_groups_the_page_reads_are_the_rule_sets(page, app):
    """The real-case test keeps the page's own groups (its data-groups attribute): they are the
    groups next_asks is given, item for item."""
    k = app.extensions["evaluator"].knowledge
    in_page = page.evaluate("() => [...new Set(iv.groups.values())].map((g) => [g.id, g.items.map((i) => i.code)])")
    assert in_page == [[g["id"], [i["code"] for i in g["items"]]] for g in groups_for_page(k)]
    assert in_page == [[g.id, list(g.items)] for g in k.question_groups]
