"""An optional Store capability: a number that changes whenever the stored data may have changed.

Only a backend that can prove every commit changes it implements this (SQLite: `PRAGMA
data_version` on a connection that never writes). The FHIR edge caches search responses only
for stores that have it; MongoDB does not (no cheap, commit-exact signal across processes).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class DataVersioned(Protocol):
    async def data_version(self) -> int:
        """Equal results of two calls mean nothing was committed between the two calls' starts.

        A commit that finished before the call began is always reflected; compare for equality.
        """
        ...
