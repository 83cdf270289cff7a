"""A tiny in-memory Store for unit tests.

It proves code against the Store protocol (revisions, create-if-absent, conditional
commits) without a file or a server; a real store proves the behaviour. It is
thread-safe, keeps no history and has no leases or watches.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from netd.store.base import (
    CommitResult,
    Condition,
    ConditionalWrites,
    Delete,
    DeletePrefix,
    KeyValue,
    Operation,
    Put,
    Watch,
)


class MemStore(ConditionalWrites):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, KeyValue] = {}
        self._revision = 0
        self.commits = 0  # transactions attempted, for tests that count retries
        self.failed_commits = 0

    def get(self, key: str) -> KeyValue | None:
        with self._lock:
            return self._data.get(key)

    def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        with self._lock:
            items = [kv for k, kv in self._data.items() if k.startswith(prefix)]
            return sorted(items, key=lambda kv: kv.key), self._revision

    def put(self, key: str, value: str, lease: int = 0) -> int:
        return self.commit([], [Put(key, value, lease)]).revision

    def delete(self, key: str) -> bool:
        with self._lock:
            if key not in self._data:
                return False
            self._revision += 1
            del self._data[key]
            return True

    def commit(
        self, conditions: Sequence[Condition], operations: Sequence[Operation]
    ) -> CommitResult:
        with self._lock:
            self.commits += 1
            for cond in conditions:
                kv = self._data.get(cond.key)
                if (kv.mod_revision if kv else 0) != cond.mod_revision:
                    self.failed_commits += 1
                    return CommitResult(False, self._revision)
            if not operations:
                return CommitResult(True, self._revision)
            self._revision += 1
            rev = self._revision
            for op in operations:
                if isinstance(op, Put):
                    old = self._data.get(op.key)
                    created = old.create_revision if old else rev
                    self._data[op.key] = KeyValue(op.key, op.value, created, rev, op.lease)
                elif isinstance(op, Delete):
                    self._data.pop(op.key, None)
                elif isinstance(op, DeletePrefix):
                    for key in [k for k in self._data if k.startswith(op.prefix)]:
                        del self._data[key]
            return CommitResult(True, rev)

    def revision(self) -> int:
        with self._lock:
            return self._revision

    def grant_lease(self, ttl: int) -> int:
        raise NotImplementedError("MemStore has no leases")

    def keepalive(self, lease: int) -> bool:
        raise NotImplementedError("MemStore has no leases")

    def revoke_lease(self, lease: int) -> None:
        raise NotImplementedError("MemStore has no leases")

    def watch(self, prefix: str, start_revision: int) -> Watch:
        raise NotImplementedError("MemStore has no watches")

    def close(self) -> None:
        pass

