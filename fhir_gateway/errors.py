"""One exception hierarchy; the FHIR edge maps each class to a status and an OperationOutcome."""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error we raise on purpose; `str(exc)` is safe to show a client."""

    status = 500
    issue_code = "exception"


class InvalidRequest(GatewayError):
    status, issue_code = 400, "invalid"


class InvalidSearch(InvalidRequest):
    """A search parameter that cannot be parsed (FHIR R4 search §3.1.1.3: syntax errors → 400)."""


class UnknownSearchParameter(InvalidSearch):
    status, issue_code = 400, "not-supported"


class InvalidResource(GatewayError):
    """A resource that fails fhir.resources validation; never stored."""

    status, issue_code = 422, "processing"


class Unauthorized(GatewayError):
    status, issue_code = 401, "login"


class Forbidden(GatewayError):
    status, issue_code = 403, "forbidden"


class NotFound(GatewayError):
    status, issue_code = 404, "not-found"


class Gone(GatewayError):
    status, issue_code = 410, "deleted"


class MethodNotAllowed(GatewayError):
    status, issue_code = 405, "not-supported"


class NotAcceptable(GatewayError):
    status, issue_code = 406, "not-supported"


class UnsupportedMediaType(GatewayError):
    status, issue_code = 415, "not-supported"


class PayloadTooLarge(GatewayError):
    status, issue_code = 413, "too-costly"


class PreconditionFailed(GatewayError):
    status, issue_code = 412, "conflict"


class ConfigError(GatewayError):
    """Configuration problems found at start-up; one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class StoreError(GatewayError):
    """The store failed; details go to the log, never to the client."""


class VersionConflict(StoreError):
    """A compare-and-set lost the race: somebody else wrote the record first."""

    status, issue_code = 409, "conflict"


class WithingsError(GatewayError):
    """Base for failures talking to Withings; never carries token values."""

    status, issue_code = 502, "transient"


class WithingsAuthError(WithingsError):
    """Status 100-102, 200, 401: the access token is bad; refresh, then re-consent."""


class WithingsInvalidGrant(WithingsAuthError):
    """The refresh token (or code) was refused for good: the user must consent again."""


class WithingsRateLimited(WithingsError):
    """Status 601; `wait_seconds` is Withings' own hint when it gives one."""

    def __init__(self, message: str, wait_seconds: float | None = None) -> None:
        super().__init__(message)
        self.wait_seconds = wait_seconds


class WithingsTransient(WithingsError):
    """Timeouts (522), 'an error occurred' families, network failures: retry with jitter."""


class WithingsInvalidParams(WithingsError):
    """Invalid-params family (e.g. 503 'invalid code', 293 bad callback URL): fail clearly."""


class WithingsUnauthorizedService(WithingsError):
    """214, 277, 2553, 2555: the app or plan may not call this service."""
