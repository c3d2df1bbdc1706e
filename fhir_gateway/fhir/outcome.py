"""OperationOutcome resources. Pure."""

from __future__ import annotations

from typing import Any, Literal

Severity = Literal["fatal", "error", "warning", "information"]


def operation_outcome(
    code: str, diagnostics: str, *, severity: Severity = "error"
) -> dict[str, Any]:
    """One-issue OperationOutcome, e.g. ('not-found', 'Observation/x is not known')."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


def warnings_outcome(messages: list[str]) -> dict[str, Any]:
    """An OperationOutcome listing warnings, for a searchset entry with search.mode=outcome."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "warning", "code": "informational", "diagnostics": message}
            for message in messages
        ],
    }
