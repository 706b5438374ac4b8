"""What the start-up self-check costs: load and compile the rule set, then run its
`self_check: true` cases (service/checks/self_check.py) once cold and --repeat times warm.

    .venv/bin/python bench/self_check_cost.py [--rules DIR] [--repeat 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.checks.self_check import run_self_check
from service.config import DEFAULT_RULES_DIR
from service.knowledge.loader import load_knowledge
from service.reasoning.evaluation import Evaluator


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rules", default=str(DEFAULT_RULES_DIR))
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    t0 = time.perf_counter()
    knowledge = load_knowledge(args.rules)
    t1 = time.perf_counter()
    evaluator = Evaluator(knowledge)
    t2 = time.perf_counter()
    cases = run_self_check(evaluator)
    t3 = time.perf_counter()
    warm = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        run_self_check(evaluator)
        warm.append(time.perf_counter() - start)
    ms = 1000.0
    print(f"rule set {knowledge.name} {knowledge.version}: {len(knowledge.rules)} rules, {cases} self-check cases")
    print(f"load {ms * (t1 - t0):.0f} ms, compile {ms * (t2 - t1):.0f} ms, self-check cold {ms * (t3 - t2):.1f} ms, "
          f"warm median {ms * statistics.median(warm):.1f} ms (max {ms * max(warm):.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
