from __future__ import annotations

from pathlib import Path

import pytest

from service import create_app
from service.config import DEFAULT_RULES_DIR
from service.knowledge.loader import load_knowledge
from service.reasoning.evaluation import Evaluator

ROOT = Path(__file__).resolve().parent.parent
MINI_RULES = ROOT / "tests" / "fixtures" / "mini_rules"
# The team's shared folder, cloned beside the repository (as CI does): the CDS Hooks examples and
# schemas and the source documents that some tests check against. A clone without it still runs
# every other test; those marked `needs_shared` skip, saying why.
SHARED = ROOT.parent / "shared"
SHARED_MISSING = (f"needs ../shared ({SHARED}): the team's shared folder, with the CDS Hooks examples "
                  "and schemas and the source documents, is not beside this clone")


_SKIPPED_FOR_SHARED: list[str] = []


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("needs_shared") and not SHARED.is_dir():
        _SKIPPED_FOR_SHARED.append(item.nodeid)
        pytest.skip(SHARED_MISSING)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Name each test skipped for want of ../shared: pytest's summary folds them into one line."""
    if _SKIPPED_FOR_SHARED:
        terminalreporter.section(f"skipped: {len(_SKIPPED_FOR_SHARED)} tests need ../shared ({SHARED})")
        for nodeid in _SKIPPED_FOR_SHARED:
            terminalreporter.write_line(nodeid)


def mini_rules_with(target: Path, extra_rules: str = "") -> Path:
    """A copy of the mini rule set at `target`, with `extra_rules` (YAML list items) appended
    to domains/mini.yaml."""
    import shutil

    shutil.copytree(MINI_RULES, target)
    path = target / "domains" / "mini.yaml"
    path.write_text(path.read_text() + extra_rules)
    return target


@pytest.fixture(scope="session")
def knowledge():
    return load_knowledge(DEFAULT_RULES_DIR)


@pytest.fixture(scope="session")
def evaluator(knowledge):
    return Evaluator(knowledge)


@pytest.fixture(scope="session")
def mini_knowledge():
    return load_knowledge(MINI_RULES)


@pytest.fixture(scope="session")
def mini_evaluator(mini_knowledge):
    return Evaluator(mini_knowledge)


@pytest.fixture(scope="session")
def app():
    return create_app({"TESTING": True})


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def mini_app():
    return create_app({"TESTING": True, "RULES_DIR": str(MINI_RULES)})


@pytest.fixture()
def mini_client(mini_app):
    return mini_app.test_client()
