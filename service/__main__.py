"""Command line: `python -m service serve | evaluate FILE | lint | cases | openapi`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from service.checks.self_check import SelfCheckError
from service.config import load_config
from service.errors import RuleLoadError, ServiceError, StartupRefused

ROOT = Path(__file__).resolve().parent.parent


def _evaluator(rules_dir: str | None, *, self_check: bool = True):  # type: ignore[no-untyped-def]
    """The loaded rule set. With `self_check` (serve, evaluate) its self-check cases must pass
    first (service/checks/self_check.py); lint and cases report failing cases themselves."""
    from service.checks.self_check import run_self_check
    from service.knowledge.loader import load_knowledge
    from service.reasoning.evaluation import Evaluator

    evaluator = Evaluator(load_knowledge(rules_dir or load_config()["RULES_DIR"]))
    if self_check:
        run_self_check(evaluator)
    return evaluator


def cmd_serve(args: argparse.Namespace) -> int:
    # Load once here so that a broken rule set fails with a readable message before gunicorn
    # starts; gunicorn's preload would refuse to start too, but with a traceback.
    _evaluator(args.rules)
    if args.rules:
        os.environ["CDS_RULES_DIR"] = args.rules
    if args.bind:
        os.environ["CDS_BIND"] = args.bind
    from service.app.exposure import binds_of, exposure_problem
    from service.app.startup import config_problem, port_problem

    config = load_config()
    binds = binds_of(config["BIND"])
    # Checked here as well as in the gunicorn config, so that the one line comes before any log.
    problem = (exposure_problem(binds, config) or config_problem(os.environ)
               or next((p for p in map(port_problem, binds) if p), None))
    if problem:
        print(problem, file=sys.stderr)
        return 2
    argv = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "deploy" / "gunicorn.conf.py"), "service:create_app()"]
    # Bandit B606 excluded: a fixed argv (this interpreter, gunicorn, our config), nothing from input.
    os.execv(sys.executable, argv)  # nosec B606
    return 0  # not reached


def cmd_evaluate(args: argparse.Namespace) -> int:
    from service.intake.parse import parse_encounter

    evaluator = _evaluator(args.rules)
    try:
        body = json.loads(Path(args.file).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        print(f"cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    try:
        answer = evaluator.evaluate(parse_encounter(evaluator.knowledge, body))
    except ServiceError as exc:
        print(json.dumps(exc.to_problem(), indent=2), file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2))
    return 0


def cmd_lint(args: argparse.Namespace) -> int:
    from service.checks.lint import lint

    evaluator = _evaluator(args.rules, self_check=False)
    errors, warnings = lint(evaluator)
    for w in warnings:
        print(f"warning: {w}")
    for e in errors:
        print(f"error: {e}")
    k = evaluator.knowledge
    print(
        f"{k.name} {k.version}: {len(k.rules)} rules, {len(k.findings)} findings, "
        f"{len(k.conditions)} conditions, {len(k.tests)} tests, {len(k.red_flags)} red flags, "
        f"{len(k.cases)} cases; {len(errors)} error(s), {len(warnings)} warning(s)"
    )
    return 1 if errors else 0


def cmd_cases(args: argparse.Namespace) -> int:
    from service.checks.case_scores import BLIND_DIR, load_blind_cases, rule_side_cases, score_folder
    from service.checks.cases import run_cases

    evaluator = _evaluator(args.rules, self_check=False)
    report = run_cases(evaluator)
    for case_id, failures in report.failures.items():
        for f in failures:
            print(f"FAIL {case_id}: {f}")
    print(report.summary(len(evaluator.knowledge.rules)))
    status = 1 if report.failures or report.total == 0 else 0

    # Validation figures per folder; the blind folder is scored, not pass/fail, except that an
    # under-triaged emergency anywhere fails the run (issue 12).
    rules_dir = args.rules or load_config()["RULES_DIR"]
    folders = [("cases/", rule_side_cases(evaluator))]
    blind = load_blind_cases(rules_dir)
    if blind:
        folders.append((f"{BLIND_DIR}/", blind))
    for name, cases in folders:
        score = score_folder(evaluator, name, cases)
        print("\n".join(score.lines()))
        if args.verbose:
            for label, items in (("not evaluable", [f"{k}: {v}" for k, v in score.invalid.items()]),
                                 ("under-triage", score.under), ("over-triage", score.over),
                                 ("forbidden test given", score.forbidden_given),
                                 ("red flag expected, none raised", score.red_flag_misses)):
                for item in items:
                    print(f"    {label}: {item}")
        for cid in score.under_emergency:
            print(f"FAIL {name}{cid}: an emergency answered below emergency")
            status = 1
        if name != "cases/" and args.min_blind_exact is not None and score.exact_rate() < args.min_blind_exact:
            print(f"FAIL {name}: tier exact {score.exact_rate():.0%} is below {args.min_blind_exact:.0%}")
            status = 1
    return status


def cmd_openapi(args: argparse.Namespace) -> int:
    from service.app.openapi import OPENAPI_DIR, build_spec, to_yaml

    text = to_yaml(build_spec())
    target = OPENAPI_DIR / "openapi.yaml"
    if args.write:
        target.write_text(text, encoding="utf-8")
        print(f"wrote {target}")
        return 0
    if args.check:
        same = target.exists() and target.read_text(encoding="utf-8") == text
        print("openapi/openapi.yaml is up to date" if same else
              "openapi/openapi.yaml differs: run python -m service openapi --write")
        return 0 if same else 1
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    parser.add_argument("--rules", help="rules directory (default: CDS_RULES_DIR or ./rules)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run under gunicorn with deploy/gunicorn.conf.py")
    p.add_argument("--bind", help="address:port (default CDS_BIND or 127.0.0.1:8000)")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("evaluate", help="evaluate a request JSON file and print the answer")
    p.add_argument("file")
    p.set_defaults(func=cmd_evaluate)
    sub.add_parser("lint", help="validate the rule set; non-zero exit on any error").set_defaults(func=cmd_lint)
    p = sub.add_parser("cases", help="run every clinical case; non-zero exit on any failure")
    p.add_argument("--verbose", "-v", action="store_true", help="list each blind case under- or over-triaged")
    p.add_argument("--min-blind-exact", type=float, default=None,
                   help="also fail when the blind folder's exact tier rate is below this fraction (e.g. 0.9)")
    p.set_defaults(func=cmd_cases)
    p = sub.add_parser("openapi", help="print, --write or --check openapi/openapi.yaml")
    p.add_argument("--write", action="store_true")
    p.add_argument("--check", action="store_true")
    p.set_defaults(func=cmd_openapi)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SelfCheckError as exc:
        print(f"rule set failed its start-up self-check; refusing to continue.\n{exc.detail}", file=sys.stderr)
        return 3
    except RuleLoadError as exc:
        print(f"rule set failed to load; refusing to continue.\n{exc.detail}", file=sys.stderr)
        return 3
    except StartupRefused as exc:  # configuration (keys, issuers, base URL): one line saying what to set
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
