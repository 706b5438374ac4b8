"""In-process evaluation latency: how long one evaluation takes, without HTTP or gunicorn.

    .venv/bin/python bench/latency.py [--rules DIR] [--n 2000] [--warmup 200] [--out FILE]

Encounters are built from the rule set's clinical cases in rotation, each with a different
patient age (so no two evaluations in a run see the same facts), in three sizes:

  small    the case's own findings, at most 5
  typical  ~20 findings: the case's findings padded with vocabulary findings reported
           present: false (denied), as a triage questionnaire answered in full would send
  large    ~60 findings, padded the same way

and each is timed four ways, with time.perf_counter_ns around every single evaluation:

  engine   Evaluator.engine.evaluate(encounter.facts())        the durable-rules run only
  evaluate Evaluator.evaluate(encounter)                      engine + building the answer
  request  orjson.loads -> parse_encounter -> evaluate -> orjson.dumps
                                                              what a request costs minus HTTP
  wsgi     POST /v1/evaluations through the whole Flask app (create_app's wsgi_app, called
           with a WSGI environ as gunicorn builds it): the above plus Flask and werkzeug, the
           request id, metrics and both log lines (written to /dev/null), security headers

Prints a table (ms) and writes JSON with machine and rule-set details to
bench/results/latency-<timestamp>.json (or --out). A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import importlib.metadata
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from service.config import DEFAULT_RULES_DIR  # noqa: E402
from service.errors import RuleLoadError, ServiceError  # noqa: E402
from service.intake.parse import parse_encounter  # noqa: E402
from service.knowledge.loader import load_knowledge  # noqa: E402
from service.knowledge.model import Case, Knowledge  # noqa: E402
from service.reasoning.encounter import Encounter  # noqa: E402
from service.reasoning.evaluation import Evaluator  # noqa: E402

GROUPS: dict[str, int | None] = {"small": None, "typical": 20, "large": 60}  # None: the case, capped at 5
SMALL_MAX = 5
MODES = ("engine", "evaluate", "request", "wsgi")
AGE_MIN, AGE_SPAN_CENTI = 18.0, 6300  # ages 18.00 .. 80.99 in steps of 0.01: unique for 6300 in a row


def age_for(i: int) -> float:
    # A stride coprime with the span visits every age once before any repeats.
    return round(AGE_MIN + ((i * 37) % AGE_SPAN_CENTI) / 100, 2)


def build_body(k: Knowledge, case: Case, i: int, target: int | None, vocab: list[str]) -> dict[str, Any]:
    findings = [dict(f) for f in case.request.get("findings", [])]
    if target is None:
        findings = findings[:SMALL_MAX]
    else:
        have = {f["code"] for f in findings}
        # Rotate where the padding starts so that the denied findings differ between encounters.
        start = (i * 7) % len(vocab) if vocab else 0
        for code in vocab[start:] + vocab[:start]:
            if len(findings) >= target:
                break
            if code not in have:
                findings.append({"code": code, "present": False})
                have.add(code)
    patient = dict(case.request.get("patient") or {})
    patient["age"] = age_for(i)
    return {"patient": patient, "findings": findings}


def build_inputs(
    k: Knowledge, count: int, offset: int, target: int | None
) -> tuple[list[bytes], list[Encounter]]:
    vocab = sorted(k.findings)
    raws: list[bytes] = []
    encounters: list[Encounter] = []
    for j in range(count):
        i = offset + j
        case = k.cases[i % len(k.cases)]
        body = build_body(k, case, i, target, vocab)
        try:
            encounters.append(parse_encounter(k, body))
        except ServiceError as exc:
            raise SystemExit(f"case {case.id} does not make a valid request: {exc.detail} {exc.errors}") from None
        raws.append(orjson.dumps(body))
    return raws, encounters


def runner(evaluator: Evaluator, mode: str, rules: str | None = None) -> Callable[[bytes, Encounter], Any]:
    k = evaluator.knowledge
    engine = evaluator.engine
    if mode == "engine":
        return lambda raw, enc: engine.evaluate(enc.facts())
    if mode == "evaluate":
        return lambda raw, enc: evaluator.evaluate(enc)
    if mode == "wsgi":
        return wsgi_runner(evaluator, rules or str(DEFAULT_RULES_DIR))
    return lambda raw, enc: orjson.dumps(evaluator.evaluate(parse_encounter(k, orjson.loads(raw))))


def wsgi_runner(evaluator: Evaluator, rules: str) -> Callable[[bytes, Encounter], Any]:
    """POST /v1/evaluations through the app's whole WSGI callable, as a gunicorn worker calls it
    (single-process metrics unless PROMETHEUS_MULTIPROC_DIR is set, as under gunicorn). The app
    evaluates with the other modes' evaluator, so that the difference to `request` is the
    app's own cost, not a second engine's and ranker's cache misses."""
    import io
    import logging

    from service import create_app

    app = create_app({"RULES_DIR": rules})
    app.extensions["evaluator"] = evaluator
    sink = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the benchmark
    for handler in logging.getLogger("service").handlers:  # the JSON lines are formatted, not shown
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sink)
    base = {"REQUEST_METHOD": "POST", "PATH_INFO": "/v1/evaluations", "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
            "HTTP_HOST": "127.0.0.1:8000", "REMOTE_ADDR": "127.0.0.1", "CONTENT_TYPE": "application/json",
            "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr, "wsgi.version": (1, 0),
            "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False}
    wsgi_app = app.wsgi_app

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        if not status.startswith("200"):
            raise SystemExit(f"POST /v1/evaluations answered {status}")

    def call(raw: bytes, enc: Encounter) -> bytes:
        environ = {**base, "CONTENT_LENGTH": str(len(raw)), "wsgi.input": io.BytesIO(raw)}
        body = wsgi_app(environ, start_response)
        try:
            return b"".join(body)
        finally:
            body.close()  # type: ignore[attr-defined]

    return call


def time_interleaved(
    fns: dict[str, Callable[[bytes, Encounter], Any]],
    inputs: dict[str, tuple[list[bytes], list[Encounter]]],
) -> dict[str, list[int]]:
    """Time every mode's j-th evaluation before any mode's (j+1)-th, so that noise from the
    rest of the machine (other processes, frequency changes) falls on all modes alike."""
    modes = list(fns)
    count = len(inputs[modes[0]][0])
    out = {m: [0] * count for m in modes}
    clock = time.perf_counter_ns
    for j in range(count):
        for m in modes:
            raw, enc = inputs[m][0][j], inputs[m][1][j]
            fn = fns[m]
            t0 = clock()
            fn(raw, enc)
            out[m][j] = clock() - t0
    return out


def percentile(sorted_ns: list[int], p: float) -> float:
    """Nearest-rank percentile, in ms."""
    if not sorted_ns:
        return float("nan")
    rank = max(1, -(-len(sorted_ns) * p // 100))  # ceil(n * p / 100)
    return sorted_ns[int(rank) - 1] / 1e6


def stats(ns: list[int]) -> dict[str, float]:
    s = sorted(ns)
    return {
        "p50_ms": percentile(s, 50),
        "p90_ms": percentile(s, 90),
        "p99_ms": percentile(s, 99),
        "max_ms": s[-1] / 1e6,
        "mean_ms": sum(s) / len(s) / 1e6,
        "min_ms": s[0] / 1e6,
    }


def version_of(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = None
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "packages": {d: version_of(d) for d in ("durable-rules", "orjson", "marshmallow", "flask")},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rules", default=str(DEFAULT_RULES_DIR), help="rules directory (default: %(default)s)")
    parser.add_argument("--n", type=int, default=2000, help="timed evaluations per group and mode (default 2000)")
    parser.add_argument("--warmup", type=int, default=200, help="untimed evaluations first (default 200)")
    parser.add_argument("--out", help="JSON output file (default bench/results/latency-<timestamp>.json)")
    args = parser.parse_args(argv)
    if args.n < 1 or args.warmup < 0:
        parser.error("--n must be at least 1 and --warmup at least 0")

    t_load = time.perf_counter()
    try:
        k = load_knowledge(args.rules)
    except RuleLoadError as exc:
        print(f"rule set {args.rules} failed to load:\n{exc.detail}", file=sys.stderr)
        return 2
    evaluator = Evaluator(k)
    load_s = time.perf_counter() - t_load
    if not k.cases:
        print(f"rule set {args.rules} has no clinical cases to build encounters from", file=sys.stderr)
        return 2

    print(f"rule set {k.name} {k.version} ({k.sha256[:12]}): {len(k.rules)} rules, {len(k.findings)} findings, "
          f"{len(k.cases)} cases; loaded and compiled in {load_s * 1000:.0f} ms")
    print(f"n={args.n} per group and mode, warm-up {args.warmup}; python {sys.version.split()[0]}, "
          f"{os.cpu_count()} cpus\n")

    fns = {mode: runner(evaluator, mode, args.rules) for mode in MODES}
    results: list[dict[str, Any]] = []
    tiers: dict[str, dict[str, int]] = {}
    for g, (group, target) in enumerate(GROUPS.items()):
        # Disjoint index ranges for every group, mode and the warm-up: each encounter is
        # evaluated once, with an age no other encounter in the run has.
        base = g * (len(MODES) + 1) * (args.n + args.warmup)
        warm = {mode: build_inputs(k, args.warmup, base + i * args.warmup, target) for i, mode in enumerate(MODES)}
        base += len(MODES) * args.warmup
        inputs = {mode: build_inputs(k, args.n, base + i * args.n, target) for i, mode in enumerate(MODES)}
        if args.warmup:
            time_interleaved(fns, warm)
        gc.collect()
        timings = time_interleaved(fns, inputs)
        sizes = [len(e.findings) for _, encs in inputs.values() for e in encs]
        counts: dict[str, int] = {}
        for enc in inputs["evaluate"][1][: 4 * len(k.cases)]:
            tier = evaluator.evaluate(enc)["urgency"]["tier"]
            counts[tier] = counts.get(tier, 0) + 1
        tiers[group] = counts
        for mode in MODES:
            ns = timings[mode]
            results.append({
                "group": group,
                "mode": mode,
                "n": len(ns),
                "findings_mean": round(sum(sizes) / len(sizes), 1),
                "findings_min": min(sizes),
                "findings_max": max(sizes),
                **{key: round(v, 4) for key, v in stats(ns).items()},
            })

    cols = ("p50", "p90", "p99", "max", "mean")
    header = f"{'group':<8} {'findings':>8} {'mode':<9} {'n':>6} " + " ".join(f"{c:>8}" for c in cols)
    print(header + "   (ms)")
    print("-" * len(header))
    for r in results:
        print(f"{r['group']:<8} {r['findings_mean']:>8.1f} {r['mode']:<9} {r['n']:>6} {r['p50_ms']:>8.3f} "
              f"{r['p90_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['max_ms']:>8.3f} {r['mean_ms']:>8.3f}")

    now = dt.datetime.now(dt.UTC)
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"latency-{now:%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "in-process evaluation latency",
        "timestamp": now.isoformat(timespec="seconds"),
        "machine": machine_info(),
        "ruleset": {
            "dir": str(Path(args.rules).resolve()),
            "name": k.name,
            "version": k.version,
            "sha256": k.sha256,
            "rules": len(k.rules),
            "findings": len(k.findings),
            "cases": len(k.cases),
            "load_and_compile_ms": round(load_s * 1000, 1),
        },
        "params": {
            "n": args.n,
            "warmup": args.warmup,
            "groups": {"small": f"case findings, at most {SMALL_MAX}",
                       "typical": "padded to 20 with denied findings",
                       "large": "padded to 60 with denied findings"},
            "modes": {"engine": "Evaluator.engine.evaluate(encounter.facts())",
                      "evaluate": "Evaluator.evaluate(encounter)",
                      "request": "orjson.loads + parse_encounter + Evaluator.evaluate + orjson.dumps",
                      "wsgi": "POST /v1/evaluations through create_app()'s wsgi_app (Flask, metrics, logs)"},
            "percentiles": "nearest rank",
            "clock": "time.perf_counter_ns per evaluation, modes interleaved; gc enabled, collected before each group",
        },
        "tiers_sampled": tiers,
        "results": results,
    }
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {out.relative_to(ROOT) if out.resolve().is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
