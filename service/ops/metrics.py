"""Prometheus metrics, correct across gunicorn workers.

Two modes, chosen when `prometheus_client` is first imported:
- **multiprocess** (under gunicorn): `PROMETHEUS_MULTIPROC_DIR` is set (deploy/gunicorn.conf.py sets
  it before the app is imported). Each worker writes its samples to files in that directory and
  `GET /metrics` sums them with a fresh `CollectorRegistry` + `MultiProcessCollector` per scrape.
  gunicorn's `on_starting` empties the directory and `child_exit` merges dead workers' files into
  an archive; the files are preallocated so that a full volume never kills a worker
  (service/ops/metrics_files.py).
- **single process** (tests, `flask run`): the default registry.

Label values come only from closed sets: route templates, HTTP methods, status codes, tiers, the
rule set's own rule ids / condition codes / red-flag codes, validation reasons, feedback outcomes
and card types. Anything outside a set is counted as `other`. No label ever carries a request
value (no finding values, encounter ids, raw paths, free text).
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

if os.environ.get("PROMETHEUS_MULTIPROC_DIR") == "":
    del os.environ["PROMETHEUS_MULTIPROC_DIR"]  # prometheus_client would take "" as a directory
MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if MULTIPROC_DIR:
    os.makedirs(MULTIPROC_DIR, exist_ok=True)

import prometheus_client  # noqa: E402  (after the multiprocess directory is settled)
from flask import Blueprint, Flask, Response, current_app, g, request  # noqa: E402
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram  # noqa: E402
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric  # noqa: E402

from service.knowledge.model import TIER_RANK, Knowledge  # noqa: E402
from service.ops import logs, metrics_files  # noqa: E402

prometheus_client.disable_created_metrics()  # `_created` series double the output for nothing here
# Before the first metric exists: its files are preallocated, so a full metrics volume is an
# OSError and a counted error, never a SIGBUS that kills the worker (service/ops/metrics_files.py).
metrics_files.install()

PREFIX = "legpain_cds"
# Request latency: fine steps from 1 to 50 ms (where evaluations live), coarse above.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)
TIERS = tuple(sorted(TIER_RANK, key=TIER_RANK.__getitem__))
APIS = frozenset({"native", "cds-hooks"})
# Every `reason` the service puts in a 422 problem's `errors` (tests/test_metrics.py checks the
# source for new ones). Anything else is counted as "other".
VALIDATION_REASONS = frozenset({
    "schema", "type", "too-many", "unknown-code", "ambiguous-code", "duplicate", "unexpected-value",
    "missing-value", "unit", "out-of-range", "invalid-choice",
})
# CDS Hooks feedback (spec: outcome is "accepted" or "overridden").
FEEDBACK_OUTCOMES = frozenset({"accepted", "overridden"})
# Kinds of card the CDS Hooks service returns (service/fhir/out.py CARD_TYPES: one card per
# urgency tier, "questions" when there is too little for a tier; "unknown" for a card uuid it
# did not issue). tests/test_metrics.py keeps the two
# in step; anything else counts as "other".
CARD_TYPES = frozenset({f"urgency-{tier}" for tier in TIER_RANK} | {"questions", "unknown"})
OTHER = "other"
# The classic text format every Prometheus server reads (prometheus_client's "latest" is 1.0.0).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

HTTP_REQUESTS = Counter(f"{PREFIX}_http_requests", "HTTP requests by route template, method and status.",
                        ["route", "method", "status"])
HTTP_LATENCY = Histogram(f"{PREFIX}_http_request_duration_seconds",
                         "Time to answer an HTTP request, by route template and method.",
                         ["route", "method"], buckets=LATENCY_BUCKETS)
EVALUATIONS = Counter(f"{PREFIX}_evaluations", "Evaluations by urgency tier and API (native or cds-hooks).",
                      ["tier", "api"])
RED_FLAGS = Counter(f"{PREFIX}_red_flags", "Red flags raised, by red-flag code.", ["flag"])
TOP3 = Counter(f"{PREFIX}_differential_top3", "Conditions ranked in the top 3 of a differential, by condition.",
               ["condition"])
RULE_FIRINGS = Counter(f"{PREFIX}_rule_firings", "Rule firings by rule id (a rule fires at most once per evaluation).",
                       ["rule"])
VALIDATION_ERRORS = Counter(f"{PREFIX}_validation_errors",
                            "Entries of 422 problems' errors lists, by reason.", ["reason"])
UNKNOWN_CODES = Counter(f"{PREFIX}_unknown_codes", "Finding codes sent that the vocabulary does not know.", ["api"])
CDS_FEEDBACK = Counter(f"{PREFIX}_cds_hooks_feedback", "CDS Hooks card feedback by outcome and card type.",
                       ["outcome", "card_type"])

_SAFE_REVISION = re.compile(r"[0-9A-Za-z._-]{1,64}")
log = logging.getLogger("service.metrics")
F = TypeVar("F", bound=Callable[..., None])


def _never_fails(fn: F) -> F:
    """Recording is never allowed to cost a clinician the answer: a failure to count (say, a
    full metrics volume) is logged by type and the request goes on."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as exc:
            log.error("metrics not recorded: %s in %s", exc.__class__.__name__, fn.__name__)

    return wrapper  # type: ignore[return-value]


# --- recording ------------------------------------------------------------------------------


# Children by label values, so that a request does not pay `labels()` (its argument checks,
# a lock and a tuple of str() per call: about 2 µs each, a dozen times an evaluation). The
# child is prometheus_client's own (`labels()` makes it once and returns the same object every
# time after), so the samples, their files and the exposition are exactly as before. The keys
# come only from the closed label sets above, so the dict is as bounded as the series are.
_CHILDREN: dict[tuple[Any, ...], Any] = {}


def _child(metric: Any, *values: str) -> Any:
    key = (id(metric), *values)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = metric.labels(*values)  # may raise (full volume): nothing kept
    return child


@_never_fails
def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    _child(HTTP_REQUESTS, route, method, str(status)).inc()
    _child(HTTP_LATENCY, route, method).observe(seconds)


@_never_fails
def record_evaluation(answer: dict[str, Any], api: str = "native", knowledge: Knowledge | None = None) -> None:
    """Count one evaluation's tier, red flags, top-3 conditions and rule firings, and log it.

    Call once per evaluation answered to a client (not for readiness checks)."""
    k = knowledge or current_app.extensions["evaluator"].knowledge
    api = api if api in APIS else OTHER
    tier = answer["urgency"]["tier"]
    tier = tier if tier in TIER_RANK else OTHER
    flags = [f["code"] for f in answer.get("red_flags", ()) if f["code"] in k.red_flags]
    top3 = [d["condition"] for d in answer.get("differential", ())[:3] if d["condition"] in k.conditions]
    rules = [p["rule"] for p in answer.get("provenance", ()) if p["rule"] in k.rules_by_id]
    _child(EVALUATIONS, tier, api).inc()
    for flag in flags:
        _child(RED_FLAGS, flag).inc()
    for condition in top3:
        _child(TOP3, condition).inc()
    for rule in rules:
        _child(RULE_FIRINGS, rule).inc()
    logs.set_tier(tier)
    logs.log_evaluation({
        "api": api,
        "evaluation_id": answer.get("evaluation_id"),
        "ruleset_version": k.version,
        "tier": tier,
        "red_flags": flags,
        "top3": top3,
        "rules_fired": len(rules),
    })


@_never_fails
def record_validation_errors(errors: Iterable[dict[str, Any]], api: str = "native") -> None:
    """Count each entry of a 422 problem's `errors` by its reason; unknown codes separately."""
    unknown = 0
    for entry in errors:
        reason = entry.get("reason")
        if reason == "unknown-code":
            unknown += 1
        VALIDATION_ERRORS.labels(reason if reason in VALIDATION_REASONS else OTHER).inc()
    if unknown:
        record_unknown_codes(unknown, api)


@_never_fails
def record_unknown_codes(count: int, api: str = "native") -> None:
    """Codes the vocabulary does not know (422 entries, or FHIR codings the mapping skipped)."""
    if count > 0:
        UNKNOWN_CODES.labels(api if api in APIS else OTHER).inc(count)


@_never_fails
def record_cds_feedback(outcome: str, card_type: str) -> None:
    """One CDS Hooks feedback item. Values outside the closed sets are counted as `other`."""
    CDS_FEEDBACK.labels(outcome if outcome in FEEDBACK_OUTCOMES else OTHER,
                        card_type if card_type in CARD_TYPES else OTHER).inc()


def preinitialise(k: Knowledge) -> None:
    """Create the zero-valued series dashboards and alerts divide by (every tier, flag, condition,
    rule, reason), so that a rate is 0 rather than absent before the first event."""
    for tier in TIERS:
        EVALUATIONS.labels(tier, "native")
    for flag in k.red_flags:
        RED_FLAGS.labels(flag)
    for condition in k.conditions:
        TOP3.labels(condition)
    for rule in k.rules_by_id:
        RULE_FIRINGS.labels(rule)
    for reason in VALIDATION_REASONS:
        VALIDATION_ERRORS.labels(reason)
    UNKNOWN_CODES.labels("native")


# --- exposition -----------------------------------------------------------------------------


class InfoCollector:
    """`legpain_cds_ruleset_info` and `legpain_cds_build_info`, computed at scrape time (no files)."""

    def __init__(self, k: Knowledge, revision: str = "unknown") -> None:
        self.k = k
        self.revision = revision if _SAFE_REVISION.fullmatch(revision or "") else "unknown"

    def collect(self) -> Iterator[Metric]:
        ruleset = GaugeMetricFamily(f"{PREFIX}_ruleset_info", "The loaded rule set (value is always 1).",
                                    labels=["name", "version", "sha256"])
        ruleset.add_metric([self.k.name, self.k.version, self.k.sha256], 1)
        yield ruleset
        build = GaugeMetricFamily(f"{PREFIX}_build_info", "Service build (value is always 1).",
                                  labels=["version", "revision", "python_version"])
        build.add_metric([_package_version(), self.revision, platform.python_version()], 1)
        yield build


class StorageCollector:
    """`legpain_cds_metrics_storage_errors_total`: metric files that could not be created or
    grown (full volume); read at scrape time from a file preallocated at start."""

    def collect(self) -> Iterator[Metric]:
        errors = CounterMetricFamily(f"{PREFIX}_metrics_storage_errors",
                                     "Metric files that could not be created or grown (e.g. a full volume); the "
                                     "worker concerned keeps counting in memory.")
        errors.add_metric([], metrics_files.storage_errors())
        yield errors


class _Chain:
    def __init__(self, *collectors: Any) -> None:
        self.collectors = collectors

    def collect(self) -> Iterator[Metric]:
        for c in self.collectors:
            yield from c.collect()


def _package_version() -> str:
    # From the source, not the installed distribution's metadata: the container and the
    # development venv run the service from its source tree without installing it.
    from service import __version__

    return __version__


def exposition(k: Knowledge, revision: str = "unknown") -> bytes:
    info = InfoCollector(k, revision)
    if MULTIPROC_DIR:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        # Shared lock: gunicorn's master merges dead workers' files under the exclusive one, so
        # a scrape never sees a sample both in the archive and in its worker's file.
        with metrics_files.locked(MULTIPROC_DIR, exclusive=False):
            return prometheus_client.generate_latest(_Chain(registry, info, StorageCollector()))
    return prometheus_client.generate_latest(_Chain(REGISTRY, info, StorageCollector()))


bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    body = exposition(current_app.extensions["evaluator"].knowledge, current_app.config.get("BUILD_REVISION", ""))
    return Response(body, content_type=CONTENT_TYPE)


def init_app(app: Flask) -> None:
    preinitialise(app.extensions["evaluator"].knowledge)
    app.register_blueprint(bp)

    @app.after_request
    def _count(response: Response) -> Response:
        # The request's own objects, not the proxies: one look-up each, not four.
        route, method = logs.request_labels(request._get_current_object())
        started = g._get_current_object().__dict__.get("cds_started") or time.perf_counter()
        observe_request(route, method, response.status_code, time.perf_counter() - started)
        return response
