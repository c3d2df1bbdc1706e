"""Search responses remembered per request, valid for exactly one store data version. Pure.

The key is everything a searchset depends on besides the data: resource type, the parameters
as sent, `Prefer: handling=strict`, the caller's AccessContext and the response media type.
The value is only served while the store's data version (store/data_version.py) is the one it
was read at: the version is probed before the search runs, so a commit racing with the search
can only make an entry look older than it is, never newer. Searches whose meaning depends on
the clock (`ap` dates) and cursor pages are not stored (see FhirApi._search).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable

SearchKey = tuple[Hashable, ...]

# Every searchset starts with these bytes (bundle.searchset puts "id" second), so a cached
# body can be served with a fresh Bundle.id by splicing 36 bytes.
_ID_PREFIX = b'{"resourceType":"Bundle","id":"'
_ID_END = len(_ID_PREFIX) + 36


class SearchCache:
    """Least recently used searchset bytes, bounded in entries and bytes."""

    def __init__(
        self,
        new_id: Callable[[], str],
        *,
        max_entries: int = 2048,
        max_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        self._new_id = new_id
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._entries: OrderedDict[SearchKey, bytes] = OrderedDict()
        self._size = 0
        self._version: int | None = None
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: SearchKey, version: int) -> bytes | None:
        """The body stored under `key` at this data version, with a fresh Bundle.id."""
        if version != self._version:
            # Data changed: every entry is stale. Forget them all rather than keep dead bytes.
            self._entries.clear()
            self._size = 0
            self._version = version
        body = self._entries.get(key)
        if body is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return b"".join((_ID_PREFIX, self._new_id().encode(), body[_ID_END:]))

    def put(self, key: SearchKey, version: int, body: bytes) -> None:
        """Remember `body`, read at `version`; ignored if the data has moved on since."""
        if version != self._version or len(body) > self._max_bytes // 8:
            return
        if not body.startswith(_ID_PREFIX) or body[_ID_END : _ID_END + 1] != b'"':
            raise ValueError("not a searchset from bundle.searchset: cannot refresh its id")
        previous = self._entries.pop(key, None)
        if previous is not None:
            self._size -= len(previous)
        self._entries[key] = body
        self._size += len(body)
        while len(self._entries) > self._max_entries or self._size > self._max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._size -= len(evicted)
