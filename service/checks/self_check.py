"""The start-up self-check: clinical cases marked `self_check: true` must pass against the
rule set just loaded, or the service does not start.

Loading proves a rule set is well formed, not that it still says what it said: an emptied or
truncated domain file, or a rule edited by mistake, can load cleanly and soften an emergency
(issue 14: zero-byte cauda_equina.yaml answered `routine` to urinary retention with saddle
anaesthesia). `python -m service lint` requires at least one self-check case per red flag
(listed in `expect.red_flags_include`) and per emergency rule (listed in
`expect.rules_fired_include`), so every emergency path is exercised at every start:
`create_app` (and so gunicorn's preload and any WSGI server), and the CLI's `serve` and
`evaluate`. Cases are synthetic vignettes: the failure names the case, its file and what
differed, never patient data.
"""

from __future__ import annotations

import logging
import time

from service.checks.cases import check_case
from service.errors import LoadProblem, RuleLoadError
from service.reasoning.evaluation import Evaluator

log = logging.getLogger("service.self_check")


class SelfCheckError(RuleLoadError):
    """A self-check case failed: the rule set loaded but does not give its expected answers."""

    slug = "self-check-failed"
    title = "Rule set failed its start-up self-check"

    def __init__(self, problems: list[LoadProblem]) -> None:
        super().__init__(problems)
        lines = "\n".join(f"  - {p}" for p in problems)
        self.detail = (f"{len(problems)} self-check failure(s): the rule set loaded but does not give the answers "
                       f"its self-check cases expect:\n{lines}")
        self.args = (self.detail,)


def self_check_failures(evaluator: Evaluator) -> list[LoadProblem]:
    problems = []
    for case in evaluator.knowledge.cases:
        if case.self_check:
            for failure in check_case(evaluator, case):
                problems.append(LoadProblem(case.file, None, f"self-check case {case.id}: {failure}"))
    return problems


def run_self_check(evaluator: Evaluator) -> int:
    """Run every self-check case; raise SelfCheckError naming each failure. The number run."""
    started = time.perf_counter()
    problems = self_check_failures(evaluator)
    if problems:
        raise SelfCheckError(problems)
    count = sum(1 for c in evaluator.knowledge.cases if c.self_check)
    log.info("self-check passed", extra={"cds_fields": {
        "event": "self-check", "cases": count, "duration_ms": round((time.perf_counter() - started) * 1000, 1)}})
    return count
