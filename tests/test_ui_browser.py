"""The nurse page in a real headless Chromium (Debian's, driven by Playwright) against the
service under real gunicorn. Vignettes come from the clinical cases, so the page is tested on
what the rules really answer. Screenshots are saved to test-artifacts/."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.config import DEFAULT_RULES_DIR
from service.knowledge.loader import load_knowledge
from tests.test_gunicorn import GUNICORN, ROOT, free_port, server_env, stop, wait_ready

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
CASES = {c.id: c for c in load_knowledge(DEFAULT_RULES_DIR).cases}
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run"]


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    port = free_port()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(GUNICORN, cwd=ROOT, env=server_env(port), stdout=out, stderr=err)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(proc, url, err)
            yield url
        finally:
            stop(proc)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (scripts/setup-browser.sh installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield browser
        browser.close()


@pytest.fixture()
def page(browser, base_url):
    context = browser.new_context(viewport={"width": 1024, "height": 900})
    page = context.new_page()
    outside: list[str] = []

    def guard(route):  # offline: anything not from this service is a failure
        if route.request.url.startswith(base_url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", guard)
    page.goto(base_url + "/")
    yield page
    assert outside == [], f"the page tried to load from outside the service: {outside}"
    context.close()


def full_form(page) -> None:
    """The interview is the default; these tests use "All questions", the full form."""
    if page.locator("#questionnaire").is_hidden():
        page.click("#mode-form")


def fill_case(page, case_id: str) -> None:
    full_form(page)
    case = CASES[case_id]
    patient = case.request["patient"]
    if "age" in patient:
        page.fill("#patient-age", str(patient["age"]))
    if "sex" in patient:
        page.select_option("#patient-sex", patient["sex"])
    for f in case.request["findings"]:
        q = page.locator(f"#q-{f['code']}")
        kind = q.get_attribute("data-type")
        if kind == "boolean":  # a nurse clicks the Yes / No label
            page.click(f"label[for='{f['code']}-{'yes' if f.get('present', True) else 'no'}']")
        elif kind == "number":
            page.fill(f"#{f['code']}-value", str(f["value"]))
        else:
            page.select_option(f"#{f['code']}-value", f["value"])


def submit(page) -> None:
    page.click("#evaluate")
    page.wait_for_selector("#result:not([hidden])")


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def test_dvt_case_shows_urgent_and_duplex_ultrasound(page):
    fill_case(page, "dvt-wells-likely-in")
    submit(page)
    banner = page.locator("#banner")
    assert banner.get_attribute("class") == "banner tier-urgent"
    assert "Same-day assessment" in banner.inner_text()
    assert "Venous duplex ultrasound" in page.locator("#tests-table").inner_text()
    assert "must not miss" in page.locator("#differential").inner_text()
    assert "not a diagnosis" in page.locator("#result-disclaimer").inner_text()
    shot(page, "nurse-page-dvt.png")
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#result").screenshot(path=str(ARTIFACTS / "nurse-page-dvt-result.png"))


def test_cauda_equina_case_shows_emergency_and_no_self_care(page):
    fill_case(page, "cauda-equina-retention-saddle-bilateral-emergency")
    submit(page)
    assert page.locator("#banner").get_attribute("class") == "banner tier-emergency"
    assert "emergency department now" in page.locator("#banner").inner_text()
    assert page.locator("#red-flags .flag").count() >= 2
    assert page.locator("#advice li").count() == 0
    shot(page, "nurse-page-cauda-equina.png")


def test_provenance_expands_to_rules_and_sources(page):
    fill_case(page, "dvt-wells-likely-in")
    submit(page)
    assert not page.locator("#provenance-body").is_visible()
    page.click("#provenance summary")
    text = page.locator("#provenance-body").inner_text()
    assert "dvt.wells.likely" in text and "NICE" in text


def test_an_ask_next_question_jumps_to_its_field(page):
    full_form(page)
    page.click("label[for='back_pain-yes']")
    page.click("label[for='pain_shooting_buttock_to_thigh-yes']")
    submit(page)
    first = page.locator("#ask-next button[data-code]").first
    code = first.get_attribute("data-code")
    first.click()
    focused_in = page.evaluate("document.activeElement.closest('.finding')?.id")
    assert focused_in == f"q-{code}"
    # No age was given: it is asked first, and its question jumps to the age field.
    age = page.locator("#ask-next button").first
    assert age.get_attribute("data-patient") == "age"
    age.click()
    assert page.evaluate("document.activeElement.id") == "patient-age"


def test_keyboard_only_from_the_top(page):
    """Switch to all questions, tab into the red flags, answer with the arrow keys, tab to
    Evaluate, press Enter."""
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    for _ in range(5):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "mode-form":
            break
    page.keyboard.press("Enter")
    assert page.locator("#questionnaire").is_visible()
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.name") == "urinary_retention":
            break
    else:
        pytest.fail("never reached the urinary retention question by Tab")
    page.keyboard.press("ArrowLeft")  # unknown -> no
    page.keyboard.press("ArrowLeft")  # no -> yes
    assert page.is_checked("#urinary_retention-yes")
    for _ in range(1200):  # the full form holds every finding (about 320 at vocabulary 0.3.1)
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "evaluate":
            break
    else:
        pytest.fail("never reached the Evaluate button by Tab")
    page.keyboard.press("Enter")
    page.wait_for_selector("#result:not([hidden])")
    assert page.evaluate("document.activeElement.id") == "result-heading"  # screen readers land on it
    assert page.locator("#banner").get_attribute("class") == "banner tier-emergency"


def test_tablet_width_has_no_sideways_scrolling(browser, base_url):
    context = browser.new_context(viewport={"width": 768, "height": 1024})
    page = context.new_page()
    page.goto(base_url + "/")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    shot(page, "nurse-page-tablet.png")
    context.close()


def _luminance(rgb: str) -> float:
    r, g, b = (int(x) / 255 for x in rgb[rgb.index("(") + 1:rgb.index(")")].split(",")[:3])

    def lin(c: float) -> float:
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b)


@pytest.mark.parametrize("tier", ["emergency", "urgent", "soon", "routine"])
def test_banner_colours_have_readable_contrast(page, tier):
    colours = page.evaluate(f"""() => {{
        const d = document.createElement('div'); d.className = 'banner tier-{tier}'; document.body.append(d);
        const s = getComputedStyle(d); return [s.color, s.backgroundColor]; }}""")
    fg, bg = (_luminance(c) for c in colours)
    ratio = (max(fg, bg) + 0.05) / (min(fg, bg) + 0.05)
    assert ratio >= 4.5, (tier, colours, ratio)


def test_a_validation_error_is_shown_not_swallowed(page):
    full_form(page)
    page.fill("#patient-age", "300")
    page.click("#evaluate")
    page.wait_for_selector("#error:not([hidden])")
    assert "age" in page.locator("#error").inner_text().lower() or "valid" in page.locator("#error").inner_text()


def test_print_view_hides_the_questionnaire(page):
    fill_case(page, "dvt-wells-likely-in")
    submit(page)
    page.emulate_media(media="print")
    assert not page.locator("#questionnaire").is_visible()
    assert page.locator("#banner").is_visible()
    page.emulate_media(media="screen")


def test_artifacts_folder_is_ignored_by_git():
    if shutil.which("git") and (ROOT / ".git").exists():
        out = subprocess.run(["git", "check-ignore", "test-artifacts/x.png"], cwd=ROOT, capture_output=True,
                             text=True, env={**os.environ})
        assert out.returncode == 0
