"""One exception root for the service, and the problem details every failure is rendered as.

Like flask-smorest's error handler: every error the service raises on purpose derives from
`ServiceError`, and a single handler renders it as RFC 7807 `application/problem+json`.
Anything else becomes a bare 500 whose body says nothing about the internals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PROBLEM_BASE = "https://legpain-cds.example/problems/"


class ServiceError(Exception):
    """Root of every error the service raises deliberately."""

    status = 500
    slug = "internal-error"
    title = "Internal error"

    def __init__(self, detail: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []

    def to_problem(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": PROBLEM_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors:
            body["errors"] = self.errors
        return body


@dataclass(frozen=True)
class LoadProblem:
    file: str
    rule_id: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}" + (f" rule {self.rule_id}" if self.rule_id else "")
        return f"{where}: {self.message}"


class RuleLoadError(ServiceError):
    """The rule set is invalid. Raised at start-up: the service must not start."""

    slug = "rule-load-error"
    title = "Rule set failed to load"

    def __init__(self, problems: list[LoadProblem]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in the rule set:\n{lines}")


class EngineError(ServiceError):
    """The rules engine failed. The message never carries facts (they are patient data)."""

    slug = "engine-error"
    title = "Evaluation failed"


class BadRequest(ServiceError):
    status = 400
    slug = "malformed-request"
    title = "Malformed request"


class UnsupportedMediaType(ServiceError):
    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported media type"


class PayloadTooLarge(ServiceError):
    status = 413
    slug = "payload-too-large"
    title = "Payload too large"


class NotFound(ServiceError):
    status = 404
    slug = "not-found"
    title = "Not found"


class MethodNotAllowed(ServiceError):
    status = 405
    slug = "method-not-allowed"
    title = "Method not allowed"


class ValidationFailed(ServiceError):
    status = 422
    slug = "validation-error"
    title = "The request is not valid"


class NotReady(ServiceError):
    status = 503
    slug = "not-ready"
    title = "Not ready"


@dataclass
class FieldError:
    """One entry of a problem's `errors` list: where, and what is wrong there."""

    pointer: str  # JSON pointer into the request body, e.g. /findings/2/code
    reason: str  # machine-readable: unknown-code, out-of-range, ...
    detail: str
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"pointer": self.pointer, "reason": self.reason, "detail": self.detail, **self.extra}


class StartupRefused(RuntimeError):
    """The configuration is unusable or unsafe: the service must not start.

    A RuntimeError on purpose: gunicorn prints a RuntimeError raised while it loads the app or
    runs its start-up hooks as one line (`Error: <message>`) and exits 1, instead of a
    traceback. The message says what to set; it never quotes a key or a token."""
