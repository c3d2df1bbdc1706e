"""Withings body `status` codes in families (withings-api.md §2.2) and the exception of each."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any

from fhir_gateway.errors import (
    WithingsAuthError,
    WithingsError,
    WithingsInvalidGrant,
    WithingsInvalidParams,
    WithingsRateLimited,
    WithingsTransient,
    WithingsUnauthorizedService,
)


class StatusFamily(StrEnum):
    SUCCESS = "success"
    AUTHENTICATION_FAILED = "authentication failed"
    INVALID_PARAMS = "invalid params"
    UNAUTHORIZED = "unauthorized"
    NOT_IMPLEMENTED = "not implemented"
    TIMEOUT = "timeout"
    BAD_STATE = "bad state"
    TOO_MANY_REQUESTS = "too many requests"
    ERROR_OCCURRED = "an error occurred"
    UNKNOWN = "unknown"


Codes = Iterable[int | tuple[int, int]]  # single codes and inclusive (first, last) ranges


def _expand(codes: Codes) -> frozenset[int]:
    expanded: set[int] = set()
    for code in codes:
        if isinstance(code, tuple):
            expanded.update(range(code[0], code[1] + 1))
        else:
            expanded.add(code)
    return frozenset(expanded)


# The SPEC's "Response Status" table (L243-323), grouped exactly as aiowithings' const.py does.
STATUS_FAMILIES: Mapping[StatusFamily, frozenset[int]] = {
    StatusFamily.SUCCESS: _expand([0]),
    StatusFamily.AUTHENTICATION_FAILED: _expand([(100, 102), 200, 401]),
    StatusFamily.INVALID_PARAMS: _expand(
        [
            (201, 213),
            (216, 218),
            (220, 221),
            223,
            225,
            (227, 230),
            (234, 236),
            238,
            (240, 252),
            254,
            (260, 267),
            (271, 272),
            (275, 276),
            (283, 288),
            290,
            (293, 295),
            297,
            (300, 304),
            321,
            (323, 353),
            (380, 382),
            400,
            (501, 511),
            523,
            532,
            (3017, 3019),
        ]
    ),  # fmt: skip
    StatusFamily.UNAUTHORIZED: _expand([214, 277, 2553, 2555]),
    StatusFamily.NOT_IMPLEMENTED: _expand([2554]),
    StatusFamily.TIMEOUT: _expand([522]),
    StatusFamily.BAD_STATE: _expand([524]),
    StatusFamily.TOO_MANY_REQUESTS: _expand([601]),
    StatusFamily.ERROR_OCCURRED: _expand(
        [
            215,
            219,
            222,
            224,
            226,
            (231, 233),
            237,
            253,
            (255, 259),
            (268, 270),
            (273, 274),
            (278, 282),
            289,
            (291, 292),
            296,
            298,
            (305, 320),
            322,
            (370, 375),
            383,
            391,
            402,
            (516, 521),
            (525, 531),
            533,
            602,
            700,
            (1051, 1054),
            (2551, 2552),
            (2556, 2559),
            (3000, 3016),
            (3020, 3024),
            (5000, 5006),
            6000,
            (6010, 6011),
            9000,
            10000,
        ]
    ),  # fmt: skip
}

_FAMILY_OF_CODE: dict[int, StatusFamily] = {
    code: family for family, codes in STATUS_FAMILIES.items() for code in codes
}

# Families whose exception class follows from the family alone.
_EXCEPTION_OF_FAMILY: Mapping[StatusFamily, type[WithingsError]] = {
    StatusFamily.AUTHENTICATION_FAILED: WithingsAuthError,
    StatusFamily.INVALID_PARAMS: WithingsInvalidParams,
    StatusFamily.UNAUTHORIZED: WithingsUnauthorizedService,
    # A call the API does not implement will not start working on a retry.
    StatusFamily.NOT_IMPLEMENTED: WithingsInvalidParams,
    StatusFamily.TIMEOUT: WithingsTransient,
    # Withings "cannot share the exact nature" of errors (§2.2); a bounded retry of a read is cheap.
    StatusFamily.BAD_STATE: WithingsTransient,
    StatusFamily.ERROR_OCCURRED: WithingsTransient,
    StatusFamily.UNKNOWN: WithingsTransient,
}

# The token endpoint answers a dead code or refresh token with 503 "Invalid Params: invalid code" /
# "... invalid refresh_token" (withings-api.md §1.3); other invalid params there (client_id,
# redirect_uri, secret) are configuration errors, not a reason to make the user consent again.
_DEAD_GRANT = re.compile(r"\bcode\b|refresh[_ ]?token|invalid[_ ]grant\b", re.IGNORECASE)

# Anything that looks like a token or secret (long unbroken runs) never reaches a message.
_TOKEN_LIKE = re.compile(r"[A-Za-z0-9_\-.~+/=]{20,}")
_MAX_ERROR_TEXT = 160


def family_of(status: int) -> StatusFamily:
    """The §2.2 family of a body status; codes outside every list are UNKNOWN."""
    return _FAMILY_OF_CODE.get(status, StatusFamily.UNKNOWN)


def safe_error_text(error_text: str) -> str:
    """Withings' `error` text with token-like runs masked and its length bounded."""
    masked = _TOKEN_LIKE.sub("[redacted]", error_text.strip())
    return masked[:_MAX_ERROR_TEXT]


def wait_seconds_of(body: Mapping[str, Any]) -> float | None:
    """Withings' own back-off hint: `{"body": {"wait_seconds": 188}}` on status 601."""
    value = body.get("wait_seconds")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def exception_for(
    status: int,
    error_text: str,
    body: Mapping[str, Any],
    *,
    action: str = "call",
    token_request: bool = False,
) -> WithingsError:
    """The exception for a non-zero body status; `token_request` marks /v2/oauth2 requesttoken."""
    family = family_of(status)
    detail = safe_error_text(error_text)
    message = f"Withings {action} failed with status {status} ({family})"
    if detail:
        message = f"{message}: {detail}"
    if family is StatusFamily.TOO_MANY_REQUESTS:
        return WithingsRateLimited(message, wait_seconds=wait_seconds_of(body))
    if token_request and family is StatusFamily.INVALID_PARAMS and _DEAD_GRANT.search(error_text):
        return WithingsInvalidGrant(message)
    if family is StatusFamily.SUCCESS:  # a caller bug, not a Withings answer
        raise ValueError("status 0 is success, not an error")
    return _EXCEPTION_OF_FAMILY[family](message)
