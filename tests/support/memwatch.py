"""MemStore with watches and leases, for unit tests of what watches and leases.

Watches deliver every change under a prefix from a start revision, in order (the event
log is kept whole unless `compact` is called, after which older starts raise
Compacted). Leases never expire on their own: a test calls `expire(lease)` to play the
TTL running out (its keys vanish, keepalive answers False), so nothing depends on time.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from netd.errors import Compacted, StoreUnavailable
from netd.store.base import CommitResult, Condition, Operation, WatchEvent
from tests.support.memstore import MemStore


class WatchableMemStore(MemStore):
    def __init__(self) -> None:
        super().__init__()
        self._events: list[WatchEvent] = []
        self._compacted = 0  # events before this revision are forgotten
        self._changed = threading.Condition()
        self._leases: dict[int, int] = {}  # id -> ttl
        self._next_lease = 100
        self.keepalives = 0
        self.granted = 0
        self.broken = False  # every watch raises StoreUnavailable while True

    # --- writes record events ----------------------------------------------------------
    def commit(
        self, conditions: Sequence[Condition], operations: Sequence[Operation]
    ) -> CommitResult:
        with self._changed:
            before = {k: kv.value for k, kv in self._data.items()}
            result = super().commit(conditions, operations)
            if result.succeeded:
                self._record(before, result.revision)
            return result

    def delete(self, key: str) -> bool:
        with self._changed:
            before = {k: kv.value for k, kv in self._data.items()}
            existed = super().delete(key)
            if existed:
                self._record(before, self._revision)
            return existed

    def _record(self, before: dict[str, str], revision: int) -> None:
        after = {k: kv.value for k, kv in self._data.items()}
        for key in sorted(set(before) | set(after)):
            if key not in after:
                self._events.append(WatchEvent("delete", key, None, revision))
            elif before.get(key) != after[key] or self._data[key].mod_revision == revision:
                self._events.append(WatchEvent("put", key, after[key], revision))
        self._changed.notify_all()

    def compact(self, revision: int) -> None:
        with self._changed:
            self._compacted = revision
            self._events = [e for e in self._events if e.revision >= revision]

    # --- watches ------------------------------------------------------------------------
    def watch(self, prefix: str, start_revision: int) -> MemWatch:
        return MemWatch(self, prefix, start_revision)

    def events_since(self, prefix: str, start: int, timeout: float) -> list[WatchEvent]:
        with self._changed:
            if self.broken:
                raise StoreUnavailable("the test broke the store")
            if start < self._compacted:
                raise Compacted(f"revision {start} was compacted", self._compacted)
            found = [e for e in self._events if e.revision >= start and e.key.startswith(prefix)]
            if not found and timeout > 0:
                self._changed.wait(timeout)
                if self.broken:
                    raise StoreUnavailable("the test broke the store")
                found = [e for e in self._events
                         if e.revision >= start and e.key.startswith(prefix)]
            return found

    def wake(self) -> None:
        with self._changed:
            self._changed.notify_all()

    # --- leases -------------------------------------------------------------------------
    def grant_lease(self, ttl: int) -> int:
        with self._lock:
            self._next_lease += 1
            self._leases[self._next_lease] = ttl
            self.granted += 1
            return self._next_lease

    def keepalive(self, lease: int) -> bool:
        with self._lock:
            self.keepalives += 1
            return lease in self._leases

    def revoke_lease(self, lease: int) -> None:
        self.expire(lease)

    def expire(self, lease: int) -> None:
        """The lease's TTL ran out: it and its keys are gone."""
        with self._lock:
            self._leases.pop(lease, None)
            keys = [k for k, kv in self._data.items() if kv.lease == lease]
        for key in keys:
            self.delete(key)


class MemWatch:
    def __init__(self, store: WatchableMemStore, prefix: str, start: int) -> None:
        self._store = store
        self._prefix = prefix
        self._next = start if start > 0 else store.revision() + 1
        self._closed = False

    def get(self, timeout: float) -> list[WatchEvent]:
        if self._closed:
            return []
        events = self._store.events_since(self._prefix, self._next, timeout)
        if events:
            self._next = events[-1].revision + 1
        return events

    def close(self) -> None:
        self._closed = True
