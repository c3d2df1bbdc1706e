"""What a sync did, for the CLI, the workflow endpoint and logs: counts, outcomes, progress."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

Outcome = Literal["ok", "needs_reauth", "failed"]


@dataclass(slots=True)
class UserSyncReport:
    """What one user's sync did; counts only, never a token."""

    userid: str
    outcome: Outcome = "ok"
    pages: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    invalid: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    unknown_types: set[int] = field(default_factory=set)
    error: str | None = None

    @property
    def stored(self) -> int:
        return self.created + self.updated + self.unchanged

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "userid": self.userid,
            "outcome": self.outcome,
            "pages": self.pages,
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "deleted": self.deleted,
            "invalid": self.invalid,
            "skipped": dict(sorted(self.skipped.items())),
            "unknown_types": sorted(self.unknown_types),
        }
        if self.error is not None:
            body["error"] = self.error
        return body


@dataclass(slots=True)
class SyncReport:
    """A sync over several users; users flagged needs_reauth are listed, not synced."""

    users: list[UserSyncReport] = field(default_factory=list)
    needs_reauth: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "users": [user.to_json() for user in self.users],
            "needs_reauth": self.needs_reauth,
            "created": sum(user.created for user in self.users),
            "updated": sum(user.updated for user in self.users),
            "deleted": sum(user.deleted for user in self.users),
            "failed": [user.userid for user in self.users if user.outcome == "failed"],
        }


@dataclass(frozen=True, slots=True)
class SyncProgress:
    """Reported after every stored page and every finished user (a CLI progress bar)."""

    userid: str
    users_done: int
    users_total: int
    pages: int
    resources: int


ProgressCallback = Callable[[SyncProgress], None]
