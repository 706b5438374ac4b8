"""A/B of ask_next's ranker: an older commit's `QuestionRanker.rank()` beside this checkout's.

    .venv/bin/python -m bench.ask_next_ab [--ref COMMIT] [--n 1000] [--repeat 2]

Loads `service/reasoning/{ask_next,ask_next_bits,ask_next_plan,aliases}.py` as they were at
`--ref` (git show) into a temporary package beside the current ones, builds both rankers on
the same rule set, and for `bench/latency.py`'s encounters (`build_inputs`: small, typical and
large, each also with the interview's `ask_next_limit`, and with a third of the padded denied
findings answered "unknown" instead) checks that both give byte-identical questions
(`orjson.dumps`), then times `rank()` of both per call, interleaved, alternating which goes
first (by default after the comparison, so that caches filled as met are warm, as in a worker
that has served a while; `--cold` times first). Prints p50 / p90 µs old and new per group and
their ratio; exits 1 on any difference.
A benchmark, not a test (tests/test_ask_next_plan.py is the test).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from bench.latency import GROUPS, build_inputs  # noqa: E402
from service.config import DEFAULT_RULES_DIR  # noqa: E402
from service.knowledge.loader import load_knowledge  # noqa: E402
from service.reasoning import aliases  # noqa: E402
from service.reasoning.ask_next import QuestionRanker  # noqa: E402
from service.reasoning.evaluation import Evaluator, _Assembler  # noqa: E402
from service.web.interview import ASK_NEXT_LIMIT  # noqa: E402

MODULES = ("aliases", "ask_next_plan", "ask_next_bits", "ask_next")  # in import order
OLD = "_ask_next_old"


def load_old(ref: str) -> types.ModuleType:
    """The ranker module as it was at `ref`, its sibling imports pointed at the old copies."""
    tmp = Path(tempfile.mkdtemp(prefix="ask_next_ab_"))
    pkg = tmp / OLD
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name in MODULES:
        text = subprocess.run(["git", "show", f"{ref}:service/reasoning/{name}.py"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout
        for other in MODULES:
            text = text.replace(f"service.reasoning.{other} ", f"{OLD}.{other} ")
        text = text.replace("from service.reasoning import aliases", f"from {OLD} import aliases")
        (pkg / f"{name}.py").write_text(text)
    sys.path.insert(0, str(tmp))
    for name in MODULES:
        spec = importlib.util.spec_from_file_location(f"{OLD}.{name}", pkg / f"{name}.py")
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        sys.modules[f"{OLD}.{name}"] = mod
        spec.loader.exec_module(mod)
    return sys.modules[f"{OLD}.ask_next"]


def with_unknown(enc: Any) -> Any:
    """A third of the denied findings answered "unknown" instead (as an interview sends them)."""
    denied = sorted(c for c, f in enc.findings.items() if f.get("present") is False)[::3]
    if not denied:
        return enc
    return dataclasses.replace(enc, findings={c: f for c, f in enc.findings.items() if c not in denied},
                               unknown=enc.unknown | frozenset(denied))


def inputs(evaluator: Evaluator, n: int) -> dict[str, list[tuple[Any, Any, Any, str]]]:
    """Per group: (encounter, facts, engine result, tier), as Evaluator.evaluate passes them."""
    k = evaluator.knowledge
    out: dict[str, list[tuple[Any, Any, Any, str]]] = {}
    for g, (name, target) in enumerate(GROUPS.items()):
        _, encs = build_inputs(k, n, g * n, target)
        for variant, change in (("", lambda e: e),
                                ("+limit", lambda e: dataclasses.replace(e, ask_next_limit=ASK_NEXT_LIMIT)),
                                ("+unknown", with_unknown),
                                ("+unknown+limit",
                                 lambda e: dataclasses.replace(with_unknown(e), ask_next_limit=ASK_NEXT_LIMIT))):
            rows = out[name + variant] = []
            for enc0 in encs:
                enc = aliases.expand(evaluator.umbrellas, change(enc0))
                facts = enc.facts()
                result = evaluator.engine.evaluate(facts)
                tier, _ = _Assembler(k, enc, facts, result, evaluator.ranker)._tier()
                rows.append((enc, facts, result, tier))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", default="3fbe904", help="the old version's commit")
    ap.add_argument("--rules", default=str(DEFAULT_RULES_DIR))
    ap.add_argument("--n", type=int, default=1000, help="encounters per size (x4 variants)")
    ap.add_argument("--repeat", type=int, default=2, help="timed passes over every encounter")
    ap.add_argument("--groups", default="", help="comma-separated groups to time (default: all)")
    ap.add_argument("--cold", action="store_true",
                    help="time before comparing: the rankers' caches start empty (by default the comparison "
                         "pass fills them first, as a long-running worker has them)")
    args = ap.parse_args()
    k = load_knowledge(Path(args.rules))
    evaluator = Evaluator(k)
    old_mod = load_old(args.ref)
    old: Any = old_mod.QuestionRanker(k)
    new = QuestionRanker(k)
    groups = inputs(evaluator, args.n)
    if not args.cold:
        compare(old, new, groups)
    timings(old, new, groups, args)
    if args.cold:
        compare(old, new, groups)


def compare(old: Any, new: Any, groups: dict[str, list[tuple[Any, Any, Any, str]]]) -> None:
    total = sum(len(v) for v in groups.values())
    bad = 0
    for name, rows in groups.items():
        for enc, facts, result, tier in rows:
            a = orjson.dumps(old.rank(enc, facts, result, tier))
            b = orjson.dumps(new.rank(enc, facts, result, tier))
            if a != b:
                bad += 1
                if bad <= 3:
                    print(f"DIFFERENT ({name}): {sorted(enc.findings)} unknown={sorted(enc.unknown)} "
                          f"limit={enc.ask_next_limit}\n old {a[:600]!r}\n new {b[:600]!r}")
    print(f"{total} encounters compared, {bad} different")
    if bad:
        raise SystemExit(1)


def timings(old: Any, new: Any, groups: dict[str, list[tuple[Any, Any, Any, str]]], args: Any) -> None:
    clock = time.perf_counter_ns
    print(f"{'group':<22} {'n':>6} {'old p50':>8} {'new p50':>8} {'ratio':>6} {'old p90':>8} {'new p90':>8}")
    gc.collect()
    gc.disable()
    try:
        for name, rows in groups.items():
            if args.groups and name not in args.groups.split(","):
                continue
            to: list[int] = []
            tn: list[int] = []
            for rep in range(args.repeat):
                for j, (enc, facts, result, tier) in enumerate(rows):
                    order = ((old, to), (new, tn)) if (j + rep) % 2 == 0 else ((new, tn), (old, to))
                    for ranker, times in order:
                        t0 = clock()
                        ranker.rank(enc, facts, result, tier)
                        times.append(clock() - t0)
                gc.collect()
            po, pn = statistics.median(to) / 1000, statistics.median(tn) / 1000
            qo = statistics.quantiles(to, n=10)[-1] / 1000
            qn = statistics.quantiles(tn, n=10)[-1] / 1000
            print(f"{name:<22} {len(to):>6} {po:>8.1f} {pn:>8.1f} {pn / po:>6.3f} {qo:>8.1f} {qn:>8.1f}")
    finally:
        gc.enable()
    with open("/proc/loadavg") as fh:
        print("load average:", fh.read().strip())


if __name__ == "__main__":
    main()
