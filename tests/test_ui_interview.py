"""The interview in real headless Chromium: a nurse answers only what the page asks (from a
clinical case, "Don't know" for what the case does not hold), and the tier must settle within a
few answers; the answer so far updates after each; the note is copied; keyboard-only use works;
axe-core finds no serious or critical violation on the interview, the full form and the result."""

from __future__ import annotations

from typing import Any

import pytest

from service.config import DEFAULT_RULES_DIR
from service.knowledge.loader import load_knowledge
from service.web.interview import PAIN_SITES, opening_codes
from tests import test_ui_browser as ui
from tests.test_ui_browser import ARTIFACTS, CASES, ROOT

# The browser tests' fixtures: a gunicorn of this module's own, Chromium, and an offline page.
base_url, browser, page = ui.base_url, ui.browser, ui.page

pytestmark = pytest.mark.slow

AXE = ROOT / "tests" / "a11y" / "node_modules" / "axe-core" / "axe.min.js"
OPENING = opening_codes(load_knowledge(DEFAULT_RULES_DIR))


def expected_tier(case_id: str) -> str:
    return CASES[case_id].expect["tier"]


def wait_live(page, answers: int) -> str:
    """Wait for the answer to `answers` answers to be shown; its tier."""
    page.wait_for_selector(f"#live[data-answers='{answers}'][aria-busy='false']")
    return page.locator("#live-banner").get_attribute("data-tier")


def start(page, case_id: str) -> tuple[dict[str, dict[str, Any]], int]:
    """Steps 1 and 2: age, sex, and the opening's complaints and pain sites the case holds (each
    tick counted as an answer). Returns the case's findings and the number of answers given."""
    case = CASES[case_id]
    patient = case.request["patient"]
    held = {f["code"]: f for f in case.request["findings"]}
    given = 0
    if "age" in patient:
        page.fill("#iv-age", str(patient["age"]))
        page.locator("#iv-age").dispatch_event("change")
        given += 1
    if "sex" in patient:
        page.select_option("#iv-sex", patient["sex"])
        given += 1
    for code in OPENING:
        if code in held and held[code].get("present", True):
            page.check(f"#iv-{'site' if code in PAIN_SITES else 'complaint'}-{code}")
            given += 1
    wait_live(page, 0)
    return held, given


def answer_first(page, held: dict[str, dict[str, Any]]) -> tuple[str, int]:
    """Answer the first question the page asks, from the case; Don't know otherwise. A question
    group (one question, a checkbox per item): tick what the case holds, then "None of these" /
    "No to the others" when the case denies every item left, else "Don't know". Returns the
    finding or group asked and how many findings it answered."""
    box = page.locator("#iv-questions .iv-q:not(.iv-answered)").first
    group = box.get_attribute("data-group")
    if group:
        codes = box.locator("input[data-code]").evaluate_all("is => is.map(i => i.dataset.code)")
        ticked = [c for c in codes if c in held and held[c].get("present", True) is True]
        for c in ticked:
            page.check(f"#iv-g-{group}-{c}")
        rest = [c for c in codes if c not in ticked]
        denied = rest and all(c in held and held[c].get("present") is False for c in rest)
        page.click(f"#iv-g-{group}-{'none' if denied else 'unknown'}")
        return group, len(codes)
    code = box.get_attribute("data-code")
    f = held.get(code)
    if box.locator("input[type=radio]").count():
        which = "unknown" if f is None else ("yes" if f.get("present", True) else "no")
        page.click(f"label[for='iv-{code}-{which}']")
    elif box.locator("input[type=number]").count():
        if f is None or f.get("present") is False:
            page.click(f"#iv-{code}-unknown")
        else:
            page.fill(f"#iv-{code}-value", str(f["value"]))
            page.locator(f"#iv-{code}-value").dispatch_event("change")
    else:
        page.select_option(f"#iv-{code}-value", "?" if f is None or f.get("present") is False else f["value"])
    return code, 1


def run_interview(page, case_id: str, max_questions: int) -> tuple[list[str], int]:
    """The interview from a case until the tier is the case's; the questions asked and how many
    questions in all (the opening counted as one, as in bench/interview_replay.py)."""
    held, _ = start(page, case_id)
    final = expected_tier(case_id)
    tiers = [page.locator("#live-banner").get_attribute("data-tier")]
    notes = [page.locator("#note").input_value()]
    asked: list[str] = []
    answers = 0
    while tiers[-1] != final and 1 + len(asked) < max_questions:
        key, n = answer_first(page, held)
        asked.append(key)
        answers += n
        tiers.append(wait_live(page, answers))
        notes.append(page.locator("#note").input_value())
        assert notes[-1] != notes[-2], "the answer so far did not update after an answer"
    assert tiers[-1] == final, (case_id, asked, tiers)
    return asked, 1 + len(asked)


def test_dvt_case_reaches_urgent_within_ten_questions(page):
    asked, questions = run_interview(page, "dvt-wells-likely-in", 10)
    assert questions <= 10, (questions, asked)
    # The tier settles before the differential does: a D-dimer (Wells unlikely so far) or a duplex.
    assert "D-dimer" in page.locator("#live-tests").inner_text() or "duplex" in page.locator("#live-tests").inner_text()
    assert "Deep vein thrombosis" in page.locator("#live-conditions").inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "interview-dvt.png"), full_page=True)


def test_cauda_equina_case_reaches_emergency_with_its_screen_as_one_question(page):
    asked, questions = run_interview(page, "cauda-equina-retention-saddle-bilateral-emergency", 4)
    # The opening (back pain, sciatica, both legs), then one question: the both-legs screen.
    assert questions <= 2 and asked == ["both_legs_nerves"], (questions, asked)
    assert page.locator("#live-flags .flag").count() >= 1
    assert "emergency department" in page.locator("#live-banner").inner_text()


def test_an_answer_can_be_changed_and_unknown_moves_on(page):
    held, _ = start(page, "dvt-wells-likely-in")
    box = page.locator("#iv-questions .iv-q").first
    group = box.get_attribute("data-group")
    assert group == "breathless_heart", group  # a swollen calf: breathlessness first, as one question
    codes = box.locator("input[data-code]").evaluate_all("is => is.map(i => i.dataset.code)")
    assert "breathlessness" in codes and len(codes) > 1
    page.click(f"#iv-g-{group}-unknown")
    wait_live(page, len(codes))
    # Don't know is an answer, for every item: the group is not asked again.
    page.locator("body").click()  # focus leaves it, so it moves to the answered list on the next answer
    second, n = answer_first(page, held)
    wait_live(page, len(codes) + n)
    assert second != group
    shown = page.locator("#iv-questions .iv-q:not(.iv-answered)").evaluate_all(
        "bs => bs.map(b => b.dataset.group || b.dataset.code)")
    assert group not in shown
    # Each item is now in the answered list as a question of its own: change one to yes.
    first = codes[0]
    page.click(f"label[for='iv-{first}-yes']")
    wait_live(page, len(codes) + n)
    note = page.locator("#note").input_value()
    display = page.locator(f"#q-{first}").get_attribute("data-display")
    present = note.split("Findings present:")[1].split("Findings denied:")[0]
    unknown = note.split("Asked, not known:")[1].split("Urgency:")[0]
    assert display in present and display not in unknown, note


def test_a_group_tick_counts_at_once_and_none_denies_the_others(page):
    """Ticking an item sends it at once (the tier follows); "No to the others" denies the rest."""
    page.fill("#iv-age", "45")
    page.locator("#iv-age").dispatch_event("change")
    page.check("#iv-site-back_pain")
    wait_live(page, 0)
    box = page.locator("#iv-questions .iv-q").first
    assert box.get_attribute("data-group") == "cauda_equina"
    assert "passing urine" in box.locator("legend").inner_text()
    page.check("#iv-g-cauda_equina-saddle_anaesthesia")
    assert wait_live(page, 1) == "emergency"
    assert page.locator("#iv-g-cauda_equina-none").inner_text() == "No to the others"
    items = box.locator("input[data-code]").count()
    page.click("#iv-g-cauda_equina-none")
    wait_live(page, items)
    note = page.locator("#note").input_value()
    denied = note.split("Findings denied:")[1].split("Asked, not known:")[0]
    saddle = page.locator("#q-saddle_anaesthesia").get_attribute("data-display")
    assert saddle not in denied and page.locator("#q-urinary_retention").get_attribute("data-display") in denied


def test_stop_rules_and_red_flag_screen_are_shown(page):
    run_interview(page, "cauda-equina-retention-saddle-bilateral-emergency", 6)
    stops = page.locator("#live-stops").inner_text()
    # Emergency is the top tier: nothing can raise it.
    assert "can no longer go up" in stops
    assert "Red-flag screen" in page.locator("#live-screen").inner_text()


def test_the_note_is_copied(page):
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    run_interview(page, "dvt-wells-likely-in", 10)
    page.click("#copy-note")
    page.wait_for_selector("#copy-status:has-text('Copied')")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == page.locator("#note").input_value()
    for part in ("Findings present:", "Findings denied:", "Urgency: URGENT", "Reasons:", "Tests:", "Rule set: "):
        assert part in copied, part
    assert "Pain in the calf of one leg" in copied  # findings by their display names
    assert "D-dimer" in copied or "duplex" in copied


def test_keyboard_only_interview_to_the_result(page):
    held = {f["code"]: f for f in CASES["cauda-equina-retention-saddle-bilateral-emergency"].request["findings"]}
    kb = page.keyboard

    def tab_to(predicate: str, limit: int = 80) -> None:
        for _ in range(limit):
            kb.press("Tab")
            if page.evaluate(predicate):
                return
        pytest.fail(f"never reached by Tab: {predicate}")

    tab_to("document.activeElement.id === 'iv-age'")
    kb.type("45")
    kb.press("Tab")
    assert page.evaluate("document.activeElement.id") == "iv-sex"
    kb.press("m")  # a closed select takes the first option starting with the key
    assert page.input_value("#iv-sex") == "male"
    tab_to("document.activeElement.id === 'iv-site-back_pain'")
    kb.press("Space")
    wait_live(page, 0)
    answered = 0
    questions = 0
    while page.locator("#live-banner").get_attribute("data-tier") != "emergency":
        assert questions < 4, "no emergency after four questions by keyboard"
        tab_to("document.activeElement.closest('#iv-questions .iv-q:not(.iv-answered)') !== null")
        group = page.evaluate("document.activeElement.closest('.iv-q').dataset.group || ''")
        if group:  # one question: Space on each item the patient says yes to, then "No to the others"
            items = page.locator(f"#iv-g-{group} input[data-code]").count()
            while code := page.evaluate("document.activeElement.dataset.code || ''"):
                if code in held and held[code].get("present", True):
                    kb.press("Space")
                kb.press("Tab")
            assert page.evaluate("document.activeElement.id") == f"iv-g-{group}-none"
            kb.press("Enter")
            answered += items
        else:
            code = page.evaluate("document.activeElement.closest('.iv-q').dataset.code")
            f = held.get(code)
            steps = 0 if f and f.get("present", True) else 1 if f else 2  # Yes, No, Don't know
            if steps == 0:
                kb.press("Space")
            for _ in range(steps):
                kb.press("ArrowRight")
            answered += 1
        questions += 1
        wait_live(page, answered)
    tab_to("document.activeElement.id === 'iv-finish'")
    kb.press("Enter")
    page.wait_for_selector("#result:not([hidden])")
    assert page.evaluate("document.activeElement.id") == "result-heading"
    assert page.locator("#banner").get_attribute("class") == "banner tier-emergency"


def test_phone_width_shows_the_answer_above_the_questions(browser, base_url):
    context = browser.new_context(viewport={"width": 390, "height": 844})
    p = context.new_page()
    p.goto(base_url + "/")
    p.fill("#iv-age", "58")
    p.locator("#iv-age").dispatch_event("change")
    wait_live(p, 0)
    live = p.locator("#live").bounding_box()
    questions = p.locator("#interview").bounding_box()
    assert live["y"] < questions["y"]
    assert p.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    context.close()


def test_tablet_width_shows_them_side_by_side(browser, base_url):
    context = browser.new_context(viewport={"width": 768, "height": 1024})
    p = context.new_page()
    p.goto(base_url + "/")
    p.fill("#iv-age", "58")
    p.locator("#iv-age").dispatch_event("change")
    wait_live(p, 0)
    live = p.locator("#live").bounding_box()
    questions = p.locator("#interview").bounding_box()
    assert live["x"] > questions["x"] + questions["width"] - 1
    assert p.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    context.close()


def test_all_questions_switches_to_the_full_form_with_the_answers(page):
    held, _ = start(page, "dvt-wells-likely-in")
    box = page.locator("#iv-questions .iv-q").first
    codes = box.locator("input[data-code]").evaluate_all("is => is.map(i => i.dataset.code)")
    _, n = answer_first(page, held)  # the breathlessness group: nothing ticked, Don't know
    wait_live(page, n)
    page.click("#mode-form")
    assert page.locator("#questionnaire").is_visible()
    assert not page.locator("#interview").is_visible()
    assert page.input_value("#patient-age") == "58"
    for code in codes:  # every item of the group is carried over as asked, not known
        assert page.is_checked(f"#{code}-unknown"), code
    assert page.is_checked("#leg_swelling_unilateral-yes")  # and the opening
    page.click("#evaluate")
    page.wait_for_selector("#result:not([hidden])")
    page.click("#mode-interview")
    assert page.locator("#interview").is_visible()


def _axe(page) -> list[dict[str, Any]]:
    if not page.evaluate("typeof axe !== 'undefined'"):
        page.add_script_tag(path=str(AXE))
    found = page.evaluate("async () => (await axe.run(document)).violations"
                          ".map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.map(n => n.target)}))")
    return [v for v in found if v["impact"] in ("serious", "critical")]


@pytest.mark.skipif(not AXE.exists(), reason="axe-core is not installed (scripts/setup-browser.sh installs it)")
def test_accessibility_interview_full_form_and_result(browser, base_url):
    # The page's CSP forbids inline script, so axe-core is injected into a context that bypasses
    # it (the test's own script, not the page's); the page itself is unchanged.
    context = browser.new_context(viewport={"width": 1024, "height": 900}, bypass_csp=True)
    page = context.new_page()
    page.goto(base_url + "/")
    held, _ = start(page, "dvt-wells-likely-in")
    assert _axe(page) == [], "interview, a question group shown"
    _, n = answer_first(page, held)
    wait_live(page, n)
    assert _axe(page) == [], "interview"
    page.click("#mode-form")
    assert _axe(page) == [], "full form"
    page.click("#mode-interview")
    page.click("#iv-finish")
    page.wait_for_selector("#result:not([hidden])")
    assert _axe(page) == [], "result"
    context.close()


def test_one_request_in_flight_and_the_latest_answers_win(page):
    """Three answers given at once: never two requests at a time, and what is shown is the
    answer to all three (not to the first, which was in flight when the others came)."""
    in_flight = [0]
    most = [0]
    sent = [0]

    def started(request):
        if request.url.endswith("/v1/evaluations"):
            sent[0] += 1
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])

    def finished(request):
        if request.url.endswith("/v1/evaluations"):
            in_flight[0] -= 1

    page.on("request", started)
    page.on("requestfinished", finished)
    page.on("requestfailed", finished)
    page.evaluate("""() => { for (const code of ['back_pain', 'pain_buttock', 'pain_calf']) {
        const box = document.getElementById('iv-site-' + code); box.checked = true;
        box.dispatchEvent(new Event('change')); } }""")
    page.wait_for_function("""() => { const n = document.getElementById('note').value;
        return n.includes('Low back pain') && n.includes('Pain in the buttock') && n.includes('Pain in the calf'); }""")
    page.wait_for_selector("#live[aria-busy='false']")
    assert most[0] == 1
    assert sent[0] == 2  # the first, then one with the latest answers (not one per change)


def test_an_ask_next_link_in_the_full_answer_opens_the_full_form(page):
    start(page, "dvt-wells-likely-in")
    page.click("#iv-finish")
    page.wait_for_selector("#result:not([hidden])")
    first = page.locator("#ask-next button[data-code]").first
    code = first.get_attribute("data-code")
    first.click()
    assert page.locator("#questionnaire").is_visible() and not page.locator("#interview").is_visible()
    assert page.evaluate("document.activeElement.closest('.finding')?.id") == f"q-{code}"
    assert page.input_value("#patient-age") == "58"  # the interview's answers came along


def test_a_group_never_asks_again_what_the_opening_ticked(page):
    """A cold, pale leg ticked in the opening: the ischaemic leg group (cold and pale, numb,
    weak toes, absent pulses) asks the rest of its items, not the cold pale leg again (a "None of
    these" would deny it)."""
    page.fill("#iv-age", "70")
    page.locator("#iv-age").dispatch_event("change")
    page.check("#iv-complaint-leg_cold_pale")
    wait_live(page, 0)
    page.wait_for_selector("#iv-g-acute_limb_ischaemia")
    shown = page.locator("#iv-g-acute_limb_ischaemia input[data-code]").evaluate_all(
        "is => is.map(i => i.dataset.code)")
    assert "toe_movement_weak" in shown and "leg_cold_pale" not in shown, shown
