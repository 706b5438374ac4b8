"""Command line: `python -m service serve | evaluate FILE | lint | cases | openapi`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from service.config import load_config
from service.errors import RuleLoadError, ServiceError

ROOT = Path(__file__).resolve().parent.parent


def _evaluator(rules_dir: str | None):  # type: ignore[no-untyped-def]
    from service.evaluation import Evaluator
    from service.loader import load_knowledge

    return Evaluator(load_knowledge(rules_dir or load_config()["RULES_DIR"]))


def cmd_serve(args: argparse.Namespace) -> int:
    # Load once here so that a broken rule set fails with a readable message before gunicorn
    # starts; gunicorn's preload would refuse to start too, but with a traceback.
    _evaluator(args.rules)
    if args.rules:
        os.environ["CDS_RULES_DIR"] = args.rules
    if args.bind:
        os.environ["CDS_BIND"] = args.bind
    from service.auth import exposure_problem
    from service.startup import DEFAULT_BIND, config_problem, port_problem

    bind = os.environ.get("CDS_BIND", DEFAULT_BIND)
    # Checked here as well as in the gunicorn config, so that the one line comes before any log.
    problem = exposure_problem([bind], dict(os.environ)) or config_problem(os.environ) or port_problem(bind)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    argv = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "deploy" / "gunicorn.conf.py"), "service:create_app()"]
    # Bandit B606 excluded: a fixed argv (this interpreter, gunicorn, our config), nothing from input.
    os.execv(sys.executable, argv)  # nosec B606
    return 0  # not reached


def cmd_evaluate(args: argparse.Namespace) -> int:
    from service.intake import parse_encounter

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
    from service.lint import lint

    evaluator = _evaluator(args.rules)
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
    from service.cases import run_cases

    evaluator = _evaluator(args.rules)
    report = run_cases(evaluator)
    for case_id, failures in report.failures.items():
        for f in failures:
            print(f"FAIL {case_id}: {f}")
    print(report.summary(len(evaluator.knowledge.rules)))
    return 1 if report.failures or report.total == 0 else 0


def cmd_openapi(args: argparse.Namespace) -> int:
    from service.openapi import OPENAPI_DIR, build_spec, to_yaml

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
    sub.add_parser("cases", help="run every clinical case; non-zero exit on any failure").set_defaults(func=cmd_cases)
    p = sub.add_parser("openapi", help="print, --write or --check openapi/openapi.yaml")
    p.add_argument("--write", action="store_true")
    p.add_argument("--check", action="store_true")
    p.set_defaults(func=cmd_openapi)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except RuleLoadError as exc:
        print(f"rule set failed to load; refusing to continue.\n{exc.detail}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
