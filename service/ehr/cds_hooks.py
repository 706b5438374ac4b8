"""CDS Hooks 2.0 service: discovery, the leg-pain triage service and its feedback endpoint.

    GET  /cds-services                         discovery
    POST /cds-services/leg-pain-triage         patient-view or encounter-start -> cards
    POST /cds-services/leg-pain-triage/feedback

One service id answers both hooks (the spec's "update stale guidance": a client replaces the
check-in card with the chart-open card). Errors on these endpoints are FHIR OperationOutcome
bodies: 400 bad request, 401 (no detail), 412 missing data, 413, 415, 500. (An unknown service
id is a path the app does not have: the app's 404, problem+json.)

Data (412 logic). The service's prefetch templates ask for `patient`, `observations` and
`conditions`. For each key the request either satisfies it (a resource or Bundle, or `null`
= the client has no data) or not (key missing, an OperationOutcome = the client's prefetch
failed, or a Bundle with a `next` page). Unsatisfied keys are fetched from `fhirServer` with
`fhirAuthorization` when that server is on the allowlist (CDS_HOOKS_FHIR_SERVERS); otherwise,
or if the fetch fails, the answer is 412 with an OperationOutcome naming each key. Keys the
service did not ask for are ignored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from flask import Blueprint, Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException

from service.ehr.hooks_auth import AuthenticationFailed, Authenticator, HooksConfigError, load_issuers
from service.ehr.replay_store import from_config as replay_store_from_config
from service.errors import ServiceError
from service.fhir.ids import has_dot_segment, is_fhir_id
from service.fhir.mapping import FhirInputError, Mapped, map_prefetch, prefetch_code_filter
from service.fhir.out import (
    EXTENSION_RULESET,
    NON_ADHERENCE,
    OVERRIDE_CODES,
    card_type_of,
    cards_for,
    operation_outcome,
)
from service.knowledge.model import Knowledge
from service.ops.body import read_json_body
from service.reasoning.evaluation import Evaluator

log = logging.getLogger("service.cds_hooks")
bp = Blueprint("cds_hooks", __name__)
JSON = "application/json"

SERVICE_ID = "leg-pain-triage"
HOOKS = ("patient-view", "encounter-start")
# Keys without which no triage is safe: missing, they give 412 unless what did arrive already
# raises a red flag or an urgent / emergency tier.
PREFETCH_KEYS = ("patient", "observations", "conditions")
# Keys that add what the record knows (vital signs, laboratory results, smoking status,
# medicines, recent surgery). An EHR that cannot run one still gets its card, which names the
# data not read, so that "not read" is never mistaken for "not there".
EXTRA_KEYS = ("vital-signs", "laboratory", "social-history", "medications", "procedures")
ALL_KEYS = PREFETCH_KEYS + EXTRA_KEYS
KEY_DATA = {"patient": "the Patient (age, sex)", "observations": "coded findings (Observation)",
            "conditions": "problems and diagnoses (Condition)", "vital-signs": "vital signs (Observation)",
            "laboratory": "laboratory results (Observation)", "social-history": "smoking status (Observation)",
            "medications": "medicines (MedicationRequest)", "procedures": "recent procedures (Procedure)"}

# Every pattern is full-matched (re.fullmatch): `$` alone also matches before a trailing newline.
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_USER_ANY = re.compile(r"(Practitioner|PractitionerRole|Patient|RelatedPerson)/[A-Za-z0-9\-.]{1,64}")
_USER_CLINICIAN = re.compile(r"(Practitioner|PractitionerRole)/[A-Za-z0-9\-.]{1,64}")
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]+")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


# --- errors: every one leaves as an OperationOutcome ---------------------------------------


class HookError(ServiceError):
    """An error on a CDS Hooks endpoint. `issues`: (FHIR issue code, message, expression)."""

    issue_code = "invalid"

    def __init__(self, detail: str, issues: list[tuple[str, str, str | None]] | None = None) -> None:
        super().__init__(detail)
        self.issues = issues or [(self.issue_code, detail, None)]


class HookBadRequest(HookError):
    status = 400
    slug = "cds-hooks-bad-request"
    title = "Bad CDS Hooks request"


class HookUnauthorized(HookError):
    status = 401
    slug = "cds-hooks-unauthorized"
    title = "Unauthorized"
    issue_code = "security"


class PreconditionFailed(HookError):
    status = 412
    slug = "cds-hooks-precondition-failed"
    title = "Required FHIR data unavailable"
    issue_code = "processing"


_STATUS_ISSUE = {400: "invalid", 401: "security", 404: "not-found", 405: "not-supported", 412: "processing",
                 413: "too-long", 415: "not-supported", 422: "invalid"}


def _outcome(status: int, issues: list[tuple[str, str, str | None]], headers: dict[str, str] | None = None) -> Response:
    body = operation_outcome([{"code": c, "diagnostics": m, "expression": e} for c, m, e in issues])
    return Response(orjson.dumps(body), status=status, mimetype=JSON, headers=headers)


def _unauthorized() -> Response:
    # The same body for every failure: nothing about what was wrong (best practices).
    return _outcome(401, [("security", "Unauthorized", None)], {"WWW-Authenticate": 'Bearer realm="cds-services"'})


@bp.errorhandler(ServiceError)
def _service_error(err: ServiceError) -> Response:
    if isinstance(err, HookUnauthorized):
        return _unauthorized()
    if isinstance(err, HookError):
        return _outcome(err.status, err.issues)
    if err.status >= 500:
        log.error("CDS Hooks request failed: %s", err.__class__.__name__)
        return _outcome(500, [("exception", "The service could not complete this request.", None)])
    return _outcome(err.status, [(_STATUS_ISSUE.get(err.status, "invalid"), err.detail, None)])


@bp.errorhandler(HTTPException)
def _http_error(err: HTTPException) -> Response:
    status = err.code or 500
    detail = f"The body is larger than the limit of {_settings().max_body} bytes." if status == 413 else err.name
    return _outcome(status, [(_STATUS_ISSUE.get(status, "processing"), detail, None)])


@bp.errorhandler(Exception)
def _unexpected(err: Exception) -> Response:
    # Only the type: messages can carry request values (patient data, tokens).
    log.error("CDS Hooks unhandled error: %s", err.__class__.__name__)
    return _outcome(500, [("exception", "The service could not complete this request.", None)])


# --- settings, installed by `install` ------------------------------------------------------


class FetchError(Exception):
    """A FHIR read failed. Its message never holds the URL or the token."""


def _no_redirects() -> urllib.request.OpenerDirector:
    class _Refuse(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
            raise urllib.error.HTTPError(req.full_url, code, "redirect refused", headers, fp)

    return urllib.request.build_opener(_Refuse)


def urllib_transport(url: str, headers: dict[str, str], timeout: float, max_bytes: int) -> tuple[int, bytes]:
    """GET url; (status, body). Redirects are refused: they would carry the bearer token."""
    req = urllib.request.Request(url, headers=headers, method="GET")
    try:
        with _no_redirects().open(req, timeout=timeout) as resp:  # only allow-listed servers
            return resp.status, resp.read(max_bytes + 1)
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise FetchError(exc.__class__.__name__) from None


@dataclass
class FhirFetcher:
    """Reads from a CDS Client's FHIR server with the access token it passed, only for
    servers on the allowlist. The token is used for this request only: never stored, never
    logged. Pagination (`next` links under the same base) is followed up to `max_pages`."""

    allowed: frozenset[str]
    timeout: float = 5.0
    max_bytes: int = 4 * 1024 * 1024
    max_pages: int = 5
    transport: Callable[[str, dict[str, str], float, int], tuple[int, bytes]] = urllib_transport

    def can_fetch(self, fhir_server: str | None, auth: dict[str, Any] | None) -> bool:
        return bool(fhir_server and auth and fhir_server.rstrip("/") in self.allowed)

    def get(self, url: str, token: str) -> dict[str, Any]:
        status, body = self.transport(url, {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"},
                                      self.timeout, self.max_bytes)
        if status == 404:
            raise FetchError("HTTP 404")
        if status != 200:
            raise FetchError(f"HTTP {status}")
        if len(body) > self.max_bytes:
            raise FetchError("response too large")
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise FetchError("response is not JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
            raise FetchError("response is not a FHIR resource")
        return data

    def complete(self, base: str, bundle: dict[str, Any], token: str) -> dict[str, Any]:
        """Follow `next` links of a searchset Bundle and merge the pages into one Bundle."""
        entries = list(bundle.get("entry") or [])
        page, pages = bundle, 1
        while (nxt := next_link(page)) is not None:
            if not nxt.startswith(base.rstrip("/") + "/") or has_dot_segment(urllib.parse.urlsplit(nxt).path):
                raise FetchError("next link outside the FHIR server")
            if pages >= self.max_pages:
                raise FetchError("too many pages")
            page = self.get(nxt, token)
            if page.get("resourceType") != "Bundle":
                raise FetchError("next page is not a Bundle")
            entries.extend(page.get("entry") or [])
            pages += 1
        merged = {k: v for k, v in bundle.items() if k not in ("link", "entry")}
        merged["entry"] = entries
        return merged


def next_link(bundle: dict[str, Any]) -> str | None:
    links = bundle.get("link")
    if not isinstance(links, list):
        return None
    for link in links:
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return link["url"]
    return None


@dataclass
class HooksSettings:
    auth: Authenticator
    fetcher: FhirFetcher
    cors_origins: frozenset[str]
    base_url: str | None
    max_body: int
    observation_max_age_days: int
    discovery: bytes = b""
    templates: dict[str, str] = field(default_factory=dict)


def _settings() -> HooksSettings:
    return current_app.extensions["cds_hooks"]


def _list(raw: Any) -> frozenset[str]:
    items = raw if isinstance(raw, list | tuple | set | frozenset) else str(raw or "").split(",")
    return frozenset(s.strip().rstrip("/") for s in items if s and s.strip())


def prefetch_templates(k: Knowledge) -> dict[str, str]:
    """Searches any FHIR R4 server runs within the CDS Hooks query rules (patient, token and
    date parameters, _sort, _count). Categories, not code lists: the value sets hold thousands
    of codes and a URL must stay under 2,000 characters. Conditions are asked for whatever
    their clinical status, because a resolved DVT or cancer is history the rules need; the
    service decides what is current. Procedures come from the last 12 weeks (the longest window
    a procedure rule uses), computed by the EHR with the 3.0 relative-date FHIRPath only where
    supported, so the template leaves the date to the service and sorts newest first."""
    codes = prefetch_code_filter(k)
    pid = "{{context.patientId}}"
    return {
        "patient": f"Patient/{pid}",
        "observations": f"Observation?patient={pid}&code={codes}&_sort=-date&_count=200",
        "conditions": f"Condition?patient={pid}&category=problem-list-item,encounter-diagnosis&_count=200",
        "vital-signs": f"Observation?patient={pid}&category=vital-signs&_sort=-date&_count=100",
        "laboratory": f"Observation?patient={pid}&category=laboratory&_sort=-date&_count=100",
        "social-history": f"Observation?patient={pid}&category=social-history&_sort=-date&_count=20",
        "medications": f"MedicationRequest?patient={pid}&status=active&_count=100",
        "procedures": f"Procedure?patient={pid}&_sort=-date&_count=50",
    }


def discovery_document(k: Knowledge, templates: dict[str, str]) -> dict[str, Any]:
    usage = ("Needs the patient's Patient, Observation and Condition data: prefetched, or readable with "
             "fhirAuthorization from an allow-listed FHIR server; otherwise it answers 412. Findings are read "
             "through the SNOMED CT / LOINC codes of GET /v1/findings and the local system urn:legpain-cds:finding "
             "(code = the finding's local code). Observations older than the freshness window are not used.")
    ruleset = {EXTENSION_RULESET: {"name": k.name, "version": k.version, "sha256": k.sha256}}
    common = {"id": SERVICE_ID, "prefetch": templates, "usageRequirements": usage, "extension": ruleset}
    return {"services": [
        {"hook": "patient-view", "title": "Leg pain when lying down: triage (chart open)",
         "description": ("Urgency tier, red flags, ranked differential and suggested tests for leg or back-of-thigh "
                         "pain that comes on when lying down, from the patient's recorded findings. Decision "
                         "support, not a diagnosis."), **common},
        {"hook": "encounter-start", "title": "Leg pain when lying down: triage at check-in",
         "description": ("The same triage when an encounter starts (check-in / triage desk): how soon the patient "
                         "should be seen and which tests to consider. Decision support, not a diagnosis."),
         **common},
    ]}



def public_base_url(raw: Any, *, required: bool) -> str | None:
    """CDS_HOOKS_BASE_URL, the public base URL that a JWT's `aud` must name. Required whenever
    issuers are configured: the audience is never derived from the request (its Host header is
    the caller's to choose, so a token minted for another service could be replayed here with a
    matching Host). HooksConfigError (one line) when missing or not a plain http(s) base URL."""
    value = str(raw or "").strip().rstrip("/")
    if not value:
        if required:
            raise HooksConfigError("CDS_HOOKS_BASE_URL must be set when CDS_HOOKS_TRUSTED_ISSUERS is set: it is the "
                                   "public base URL (e.g. https://cds.example.org) that every JWT's aud is checked "
                                   "against; the request's Host header is never used")
        return None
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment \
            or "@" in parts.netloc or any(c.isspace() for c in value):
        raise HooksConfigError(f"CDS_HOOKS_BASE_URL {value!r} must be an absolute http(s) URL without user, "
                               "query or fragment (e.g. https://cds.example.org)")
    return value


def install(app: Flask, knowledge: Knowledge) -> None:
    """Register the blueprint, its authentication, CORS and settings (from app.config)."""
    cfg = app.config
    issuers = load_issuers(cfg.get("HOOKS_TRUSTED_ISSUERS"))  # raises: the service must not start
    base_url = public_base_url(cfg.get("HOOKS_BASE_URL"), required=bool(issuers))
    settings = HooksSettings(
        auth=Authenticator(issuers, leeway=int(cfg.get("HOOKS_JWT_LEEWAY", 30)),
                           max_lifetime=int(cfg.get("HOOKS_JWT_MAX_LIFETIME", 3600)),
                           replay_cache_size=int(cfg.get("HOOKS_REPLAY_CACHE_SIZE", 100_000)),
                           replay_store=replay_store_from_config(cfg) if issuers else None),
        fetcher=FhirFetcher(_list(cfg.get("HOOKS_FHIR_SERVERS")), timeout=float(cfg.get("HOOKS_FHIR_TIMEOUT", 5))),
        cors_origins=_list(cfg.get("HOOKS_CORS_ORIGINS")),
        base_url=base_url,
        max_body=int(cfg.get("HOOKS_MAX_BODY_BYTES", 2 * 1024 * 1024)),
        observation_max_age_days=int(cfg.get("HOOKS_OBSERVATION_MAX_AGE_DAYS", 7)),
    )
    settings.templates = prefetch_templates(knowledge)
    settings.discovery = orjson.dumps(discovery_document(knowledge, settings.templates))
    app.extensions["cds_hooks"] = settings
    app.register_blueprint(bp)
    if _feedback_to_metrics not in FEEDBACK.listeners:  # once per process, however many apps
        add_feedback_listener(_feedback_to_metrics)
    if not settings.auth.enabled:
        log.warning("CDS Hooks endpoints are OPEN: no trusted issuers configured (CDS_HOOKS_TRUSTED_ISSUERS). "
                    "Any caller can use /cds-services; keep the service bound to loopback or configure issuers.")
    else:
        log.info("CDS Hooks: JWT required from %d trusted issuer(s)", len(issuers))


# --- per-request hooks: body limit, authentication, CORS ----------------------------------


@bp.before_request
def _before() -> None:
    settings = _settings()
    request.max_content_length = settings.max_body
    if request.method == "OPTIONS" or not settings.auth.enabled:
        return
    # Never the request's own URL: its host comes from the caller (install requires base_url).
    base = settings.base_url
    if base is None:
        raise HookUnauthorized("Unauthorized")
    audiences = [base + request.path]
    if request.endpoint == "cds_hooks.feedback":  # feedback: its own URL or the service's
        audiences.append(base + f"/cds-services/{SERVICE_ID}")
    try:
        settings.auth.verify(request.headers.get("Authorization"), audiences)
    except AuthenticationFailed as exc:
        log.warning("CDS Hooks call rejected (401): %s", exc.reason)  # the reason class only, never the token
        raise HookUnauthorized("Unauthorized") from None


@bp.after_request
def _cors(resp: Response) -> Response:
    origin = request.headers.get("Origin")
    resp.vary.add("Origin")
    if origin and origin.rstrip("/") in _settings().cors_origins:
        resp.headers["Access-Control-Allow-Origin"] = origin
        if request.method == "OPTIONS":
            resp.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            resp.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
            resp.headers["Access-Control-Max-Age"] = "600"
    return resp


# --- discovery -----------------------------------------------------------------------------


@bp.get("/cds-services")
def discovery() -> Response:
    return Response(_settings().discovery, mimetype=JSON)


# --- the service ---------------------------------------------------------------------------


def _read_body() -> Any:
    return read_json_body()


def _is_str(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def validate_request(body: Any) -> list[tuple[str, str]]:
    """The CDS Hooks 2.0 request rules: (expression, message) for each problem."""
    if not isinstance(body, dict):
        return [("", "The request must be a JSON object.")]
    errs: list[tuple[str, str]] = []
    allowed = {"hook", "hookInstance", "fhirServer", "fhirAuthorization", "context", "prefetch", "extension"}
    errs += [(key, "is not a CDS Hooks request field") for key in sorted(set(body) - allowed)]
    for key in ("hook", "hookInstance", "context"):
        if key not in body:
            errs.append((key, "is required"))
    if "hook" in body and not _is_str(body["hook"]):
        errs.append(("hook", "must be a non-empty string"))
    if "hookInstance" in body and not (isinstance(body["hookInstance"], str) and _UUID.fullmatch(body["hookInstance"])):
        errs.append(("hookInstance", "must be a UUID"))
    server = body.get("fhirServer")
    if "fhirServer" in body:
        parsed = urllib.parse.urlsplit(server) if isinstance(server, str) else None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc:
            errs.append(("fhirServer", "must be an absolute http(s) URL"))
    if "fhirAuthorization" in body:
        auth = body["fhirAuthorization"]
        if "fhirServer" not in body:
            errs.append(("fhirServer", "is required when fhirAuthorization is given"))
        if not isinstance(auth, dict):
            errs.append(("fhirAuthorization", "must be an object"))
        else:
            fields = {"access_token", "token_type", "expires_in", "scope", "subject", "patient"}
            errs += [(f"fhirAuthorization.{k}", "is not a fhirAuthorization field") for k in sorted(set(auth) - fields)]
            for key in ("access_token", "scope", "subject"):
                if not _is_str(auth.get(key)):
                    errs.append((f"fhirAuthorization.{key}", "is required (a non-empty string)"))
            if auth.get("token_type") != "Bearer":
                errs.append(("fhirAuthorization.token_type", "must be 'Bearer'"))
            # expires_in is REQUIRED in 2.0 but EHRs omit it; the token is used for this call only.
            exp = auth.get("expires_in")
            if "expires_in" in auth and (isinstance(exp, bool) or not isinstance(exp, int) or exp < 0):
                errs.append(("fhirAuthorization.expires_in", "must be a non-negative integer"))
            if "patient" in auth and not _is_str(auth["patient"]):
                errs.append(("fhirAuthorization.patient", "must be a non-empty string"))
    if "context" in body and not isinstance(body["context"], dict):
        errs.append(("context", "must be an object"))
    if "prefetch" in body:
        prefetch = body["prefetch"]
        if not isinstance(prefetch, dict) or not prefetch:
            errs.append(("prefetch", "must be a non-empty object (omit it when there is nothing to send)"))
        else:
            for key, value in prefetch.items():
                if value is None:
                    continue
                if not isinstance(value, dict) or not (isinstance(value.get("resourceType"), str)
                                                       and _RESOURCE_TYPE.fullmatch(value["resourceType"])):
                    errs.append((f"prefetch.{key}", "must be a FHIR resource (with resourceType) or null"))
    if "extension" in body and not (isinstance(body["extension"], dict) and body["extension"]):
        errs.append(("extension", "must be a non-empty object"))
    return errs


def validate_context(hook: str, context: dict[str, Any]) -> list[tuple[str, str]]:
    errs: list[tuple[str, str]] = []
    user = _USER_CLINICIAN if hook == "encounter-start" else _USER_ANY
    required = ("userId", "patientId", "encounterId") if hook == "encounter-start" else ("userId", "patientId")
    for key in required:
        if key not in context:
            errs.append((f"context.{key}", f"is required for {hook}"))
    if "userId" in context and not (isinstance(context["userId"], str) and user.fullmatch(context["userId"])):
        kinds = "Practitioner or PractitionerRole" if hook == "encounter-start" else \
            "Practitioner, PractitionerRole, Patient or RelatedPerson"
        errs.append(("context.userId", f"must be a reference to a {kinds} (e.g. Practitioner/123)"))
    for key in ("patientId", "encounterId"):
        if key in context and not is_fhir_id(context[key]):
            # Checked before anything is fetched: patientId goes into the FHIR server's URL.
            errs.append((f"context.{key}", "must be a FHIR id (1-64 of A-Z a-z 0-9 - .; not '.' or '..')"))
    return errs


def _token(body: dict[str, Any]) -> str | None:
    auth = body.get("fhirAuthorization")
    return auth.get("access_token") if isinstance(auth, dict) else None


@dataclass
class Prefetched:
    """Each key's data (a resource, a Bundle, or None = no data) and what could not be read:
    (key, why) for a key with no data at all, and notes for keys read only in part."""

    data: dict[str, Any]
    unread: list[tuple[str, str]] = field(default_factory=list)
    partial: list[tuple[str, str]] = field(default_factory=list)

    def missing_required(self) -> list[tuple[str, str]]:
        return [(k, why) for k, why in self.unread if k in PREFETCH_KEYS]


def resolve_prefetch(body: dict[str, Any], settings: HooksSettings) -> Prefetched:
    """Each of our prefetch keys -> its data, from the request or fetched. Nothing is raised
    here: the caller decides between a card and 412 once it knows what the data say."""
    prefetch = body.get("prefetch") or {}
    server = body.get("fhirServer")
    can_fetch = settings.fetcher.can_fetch(server, body.get("fhirAuthorization"))
    patient_id = body["context"]["patientId"]
    out = Prefetched({})
    for key in ALL_KEYS:
        given = prefetch.get(key)
        if key in prefetch and given is None:
            out.data[key] = None
            continue
        if given is not None and given["resourceType"] == "OperationOutcome":
            # The client tried and its server refused: asking the same server again would
            # only repeat the failure (and the load), so the key is read as unavailable.
            out.data[key] = None
            out.unread.append((key, "came back as an OperationOutcome (the client's prefetch failed)"))
            continue
        if given is not None and given["resourceType"] == "Bundle" and next_link(given) is not None:
            out.data[key] = given
            if can_fetch:
                try:
                    out.data[key] = _fetch(settings, key, server, body, patient_id, given)
                    continue
                except FetchError as exc:
                    log.warning("CDS Hooks: reading further pages of prefetch key %r failed: %s", key, exc)
            out.partial.append((key, "only the first page was read (further pages could not be fetched)"))
            continue
        if given is not None:
            out.data[key] = given
            continue
        why = "was not prefetched"
        if can_fetch:
            try:
                out.data[key] = _fetch(settings, key, server, body, patient_id, None)
                continue
            except FetchError as exc:
                log.warning("CDS Hooks: reading prefetch key %r from the FHIR server failed: %s", key, exc)
                why += "; reading it from the FHIR server failed"
        else:
            why += "; the FHIR server cannot be queried (" + (
                "no fhirAuthorization" if not body.get("fhirAuthorization") else
                "fhirServer is not on this service's allowlist") + ")"
        out.data[key] = None
        out.unread.append((key, why))
    return out


def precondition_failed(missing: list[tuple[str, str]]) -> PreconditionFailed:
    return PreconditionFailed("Required FHIR data unavailable.", [
        ("processing", f"Cannot evaluate leg-pain triage: prefetch key '{key}' {why}.", f"prefetch.{key}")
        for key, why in missing])


def _fetch(settings: HooksSettings, key: str, server: str, body: dict[str, Any], patient_id: str,
           given: Any) -> dict[str, Any]:
    token = _token(body)
    if token is None:  # can_fetch checked fhirAuthorization, and validation its access_token
        raise FetchError("no access token to read the FHIR server with")
    base = server.rstrip("/")
    if not is_fhir_id(patient_id):  # validate_context refused it already; never build a URL from one
        raise FetchError("patientId is not a FHIR id")
    if isinstance(given, dict) and given.get("resourceType") == "Bundle" and next_link(given) is not None:
        return settings.fetcher.complete(base, given, token)
    relative = settings.templates[key].replace("{{context.patientId}}", urllib.parse.quote(patient_id, safe=""))
    data = settings.fetcher.get(f"{base}/{relative}", token)
    if data["resourceType"] == "OperationOutcome":
        raise FetchError("the FHIR server answered an OperationOutcome")
    if data["resourceType"] == "Bundle":
        data = settings.fetcher.complete(base, data, token)
    return data


@bp.post(f"/cds-services/{SERVICE_ID}")
def call_service() -> Response:
    body = _read_body()
    errs = validate_request(body)
    if not errs and body["hook"] not in HOOKS:
        raise HookBadRequest("Hook not served.", [(
            "not-supported", f"Service {SERVICE_ID!r} answers the hooks {', '.join(HOOKS)}; this call is for "
                             f"{body['hook']!r}.", "hook")])
    if not errs:
        errs = validate_context(body["hook"], body["context"])
    if errs:
        raise HookBadRequest("The CDS Hooks request is not valid.",
                             [("invalid", f"{expr or 'body'} {msg}" if expr else msg, expr or None)
                              for expr, msg in errs])
    settings = _settings()
    got = resolve_prefetch(body, settings)
    data = got.data
    evaluator: Evaluator = current_app.extensions["evaluator"]
    context = body["context"]
    try:
        mapped: Mapped = map_prefetch(
            evaluator.knowledge,
            patient=data["patient"],
            records=[(f"prefetch.{key}", data[key]) for key in ALL_KEYS if key != "patient"],
            patient_id=context["patientId"],
            encounter_id=context.get("encounterId"),
            max_observation_age_days=settings.observation_max_age_days,
        )
    except FhirInputError as exc:
        raise HookBadRequest("The FHIR data cannot be read.", [("structure", str(exc), exc.path)]) from None
    answer = evaluator.evaluate(mapped.encounter)
    missing = got.missing_required()
    # Partial data: what arrived is evaluated. A red flag or an urgent / emergency tier in it
    # cannot be lowered by more data (the rules are monotone for red flags), so it is shown at
    # once, naming what could not be read; anything milder could change, so 412 as before.
    if missing and not (answer["red_flags"] or answer["urgency"]["tier"] in ("urgent", "emergency")):
        raise precondition_failed(missing)
    from service.ops.metrics import record_evaluation  # imported late: prometheus multiprocess set-up

    record_evaluation(answer, api="cds-hooks", knowledge=evaluator.knowledge)
    not_read = [(KEY_DATA[k], why) for k, why in got.unread + got.partial]
    cards = cards_for(answer, evaluator.knowledge, mapped, patient_id=context["patientId"],
                      encounter_id=context.get("encounterId"), not_read=not_read)
    return Response(orjson.dumps({"cards": cards}), mimetype=JSON)


# --- feedback ------------------------------------------------------------------------------


def validate_feedback(body: Any) -> list[tuple[str, str]]:
    if not isinstance(body, dict):
        return [("", "The feedback request must be a JSON object.")]
    errs = [(key, "is not a feedback request field") for key in sorted(set(body) - {"feedback", "extension"})]
    if "extension" in body and not (isinstance(body["extension"], dict) and body["extension"]):
        errs.append(("extension", "must be a non-empty object"))
    items = body.get("feedback")
    if not isinstance(items, list):
        return [*errs, ("feedback", "is required (an array)")]
    fields = {"card", "outcome", "acceptedSuggestions", "overrideReason", "outcomeTimestamp", "extension"}
    for i, item in enumerate(items):
        p = f"feedback[{i}]"
        if not isinstance(item, dict):
            errs.append((p, "must be an object"))
            continue
        errs += [(f"{p}.{k}", "is not a feedback field") for k in sorted(set(item) - fields)]
        if not _is_str(item.get("card")):
            errs.append((f"{p}.card", "is required (the card's uuid)"))
        if item.get("outcome") not in ("accepted", "overridden"):
            errs.append((f"{p}.outcome", "must be 'accepted' or 'overridden'"))
        ts = item.get("outcomeTimestamp")
        if not (isinstance(ts, str) and _RFC3339.fullmatch(ts) and _valid_datetime(ts)):
            errs.append((f"{p}.outcomeTimestamp", "is required (an RFC 3339 date-time, e.g. 2025-01-02T14:05:31Z)"))
        if "acceptedSuggestions" in item:
            sug = item["acceptedSuggestions"]
            if not isinstance(sug, list) or not sug or not all(
                    isinstance(s, dict) and set(s) == {"id"} and _is_str(s["id"]) for s in sug):
                errs.append((f"{p}.acceptedSuggestions", "must be a non-empty array of {\"id\": suggestion uuid}"))
        elif item.get("outcome") == "accepted":
            errs.append((f"{p}.acceptedSuggestions", "is required when the outcome is accepted"))
        if "overrideReason" in item:
            errs += _validate_override(item["overrideReason"], f"{p}.overrideReason")
        if "extension" in item and not (isinstance(item["extension"], dict) and item["extension"]):
            errs.append((f"{p}.extension", "must be a non-empty object"))
    return errs


def _valid_datetime(value: str) -> bool:
    try:
        datetime.fromisoformat(value.replace("z", "Z").replace("t", "T"))
    except ValueError:
        return False
    return True


def _validate_override(reason: Any, p: str) -> list[tuple[str, str]]:
    if not isinstance(reason, dict):
        return [(p, "must be an object")]
    errs = [(f"{p}.{k}", "is not an overrideReason field") for k in sorted(set(reason) - {"reason", "userComment"})]
    if "reason" not in reason and "userComment" not in reason:
        errs.append((p, "needs a reason or a userComment"))
    if "reason" in reason:
        coding = reason["reason"]
        if not (isinstance(coding, dict) and _is_str(coding.get("code")) and _is_str(coding.get("system"))
                and set(coding) <= {"code", "system", "display"}
                and ("display" not in coding or _is_str(coding["display"]))):
            errs.append((f"{p}.reason", "must be a Coding with system and code (and optionally display)"))
    if "userComment" in reason and not _is_str(reason["userComment"]):
        errs.append((f"{p}.userComment", "must be a non-empty string"))
    return errs


class FeedbackStats:
    """Counts of feedback per card type, in this process. Nothing about the patient: only
    the card type (carried by the card uuid), the outcome and the override reason code.
    Free-text comments are never kept. A repeat of the same feedback (same card, outcome,
    timestamp, suggestions and reason) seen recently is accepted but not counted twice."""

    def __init__(self, recent: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._max_recent = recent
        self.accepted: Counter[str] = Counter()
        self.accepted_suggestions: Counter[str] = Counter()
        self.overridden: Counter[tuple[str, str]] = Counter()
        self.duplicates = 0
        self.listeners: list[Callable[[str, str, str, int], None]] = []

    def record(self, service_id: str, item: dict[str, Any]) -> bool:
        card_type = card_type_of(item["card"])
        reason = "none"
        override = item.get("overrideReason") or {}
        if isinstance(override.get("reason"), dict):
            coding = override["reason"]
            reason = coding["code"] if coding["system"] == NON_ADHERENCE and coding["code"] in OVERRIDE_CODES \
                else "other"
        suggestions = sorted(s["id"] for s in item.get("acceptedSuggestions") or [])
        key = hashlib.sha256(json.dumps([service_id, item["card"], item["outcome"], item["outcomeTimestamp"],
                                         suggestions, reason]).encode()).hexdigest()
        with self._lock:
            if key in self._recent:
                self._recent.move_to_end(key)
                self.duplicates += 1
                return False
            self._recent[key] = None
            while len(self._recent) > self._max_recent:
                self._recent.popitem(last=False)
            if item["outcome"] == "accepted":
                self.accepted[card_type] += 1
                self.accepted_suggestions[card_type] += len(suggestions)
            else:
                self.overridden[(card_type, reason)] += 1
            listeners = list(self.listeners)
        for listener in listeners:
            try:
                listener(card_type, item["outcome"], reason if item["outcome"] == "overridden" else "",
                         len(suggestions))
            except Exception as exc:  # a metrics listener must never fail the feedback call
                log.error("feedback listener failed: %s", exc.__class__.__name__)
        return True

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            overridden: dict[str, dict[str, int]] = {}
            for (card_type, reason), n in sorted(self.overridden.items()):
                overridden.setdefault(card_type, {})[reason] = n
            return {
                "accepted": dict(sorted(self.accepted.items())),
                "accepted_suggestions": dict(sorted(self.accepted_suggestions.items())),
                "overridden": overridden,
                "duplicates": self.duplicates,
            }

    def reset(self) -> None:
        with self._lock:
            self._recent.clear()
            self.accepted.clear()
            self.accepted_suggestions.clear()
            self.overridden.clear()
            self.duplicates = 0


FEEDBACK = FeedbackStats()


def feedback_counts() -> dict[str, Any]:
    """Feedback counted in this process, for metrics:
    {"accepted": {card_type: n}, "accepted_suggestions": {card_type: n},
     "overridden": {card_type: {reason_code | "other" | "none": n}}, "duplicates": n}.
    Card types: urgency-emergency, urgency-urgent, urgency-soon, urgency-routine, unknown
    (a uuid not issued by this service). Under gunicorn each worker counts its own feedback:
    use `add_feedback_listener` to feed multiprocess-safe counters instead."""
    return FEEDBACK.snapshot()


def add_feedback_listener(listener: Callable[[str, str, str, int], None]) -> None:
    """Call listener(card_type, outcome, reason, n_accepted_suggestions) for each feedback
    counted (not for repeats). reason is "" for accepted outcomes."""
    FEEDBACK.listeners.append(listener)


def _feedback_to_metrics(card_type: str, outcome: str, reason: str, accepted_suggestions: int) -> None:
    """Feedback into the multiprocess-safe Prometheus counter (per-process counts above)."""
    from service.ops.metrics import record_cds_feedback  # after PROMETHEUS_MULTIPROC_DIR is set

    record_cds_feedback(outcome, card_type)


@bp.post(f"/cds-services/{SERVICE_ID}/feedback")
def feedback() -> Response:
    body = _read_body()
    errs = validate_feedback(body)
    if errs:
        raise HookBadRequest("The feedback is not valid.",
                             [("invalid", f"{expr} {msg}" if expr else msg, expr or None) for expr, msg in errs])
    counted = sum(FEEDBACK.record(SERVICE_ID, item) for item in body["feedback"])
    received = len(body["feedback"])
    return Response(orjson.dumps({"received": received, "counted": counted, "repeats": received - counted,
                                  "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}), mimetype=JSON)


# --- OpenAPI documentation (service/app/openapi.py adds these paths) -----------------------------


def openapi_paths() -> dict[str, dict[str, Any]]:
    """The CDS Hooks endpoints for the OpenAPI document. Their bodies are defined by CDS Hooks
    2.0 (https://cds-hooks.hl7.org/2.0/), so they are described, not modelled, here."""
    outcome = {"application/json": {"schema": {
        "type": "object", "description": "FHIR R4 OperationOutcome", "required": ["resourceType", "issue"],
        "properties": {"resourceType": {"type": "string", "enum": ["OperationOutcome"]},
                       "issue": {"type": "array", "items": {"type": "object"}}}}}}
    json_object = {"application/json": {"schema": {"type": "object"}}}

    def errors(*codes: int) -> dict[str, Any]:
        text = {400: "Not a valid CDS Hooks request, a hook this service does not answer, or FHIR data it "
                     "cannot read (the OperationOutcome names where)",
                401: "Trusted issuers are configured and the JWT is missing or not acceptable (no detail given)",
                412: "Required FHIR data (patient, observations, conditions) was neither prefetched nor readable "
                     "from the FHIR server",
                413: "The body is larger than CDS_HOOKS_MAX_BODY_BYTES",
                415: "The body is not application/json"}
        return {str(c): {"description": text[c], "content": outcome} for c in codes}

    return {
        "/cds-services": {"get": {
            "operationId": "cdsHooksDiscovery",
            "summary": "CDS Hooks discovery: the leg-pain triage service for patient-view and encounter-start, "
                       "with its prefetch templates",
            "responses": {"200": {"description": "The services", "content": json_object}, **errors(401)}}},
        f"/cds-services/{SERVICE_ID}": {"post": {
            "operationId": "cdsHooksLegPainTriage",
            "summary": "CDS Hooks service call (patient-view or encounter-start): FHIR R4 prefetch in, one "
                       "urgency card out (none when nothing in the record bears on leg pain)",
            "requestBody": {"required": True, "content": json_object},
            "responses": {"200": {"description": "{cards: [...]}", "content": json_object},
                          **errors(400, 401, 412, 413, 415)}}},
        f"/cds-services/{SERVICE_ID}/feedback": {"post": {
            "operationId": "cdsHooksFeedback",
            "summary": "CDS Hooks feedback: accepted / overridden cards, counted per card type (nothing about "
                       "the patient is kept)",
            "requestBody": {"required": True, "content": json_object},
            "responses": {"200": {"description": "{received, counted, repeats, at}", "content": json_object},
                          **errors(400, 401, 413, 415)}}},
    }
