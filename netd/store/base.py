"""The Store protocol: what netd needs from a key-value store, and nothing more.

Two implementations satisfy it (netd.store.etcd and netd.store.embedded) and one
contract suite (tests/unit/netd/store/test_store_contract.py) runs against both. Values are text
(netd writes JSON); keys are built only by netd.store.keys.

Semantics, shared by both implementations:
* every write bumps one store-wide revision; a key remembers the revision that created
  it and the one that last modified it (etcd's create_revision / mod_revision);
* `commit` is an all-or-nothing transaction guarded by per-key conditions; a condition
  with mod_revision 0 means "the key must be absent" (create-if-absent);
* a lease expires `ttl` seconds after its last keepalive and deletes its keys with it;
* a watch delivers every change under a prefix from a start revision on, in order, and
  raises Compacted when that revision is no longer kept (the caller re-lists).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from netd.errors import StoreUnavailable


class OutcomeUnknown(StoreUnavailable):
    """A write reached the store (or may have) and no answer came: it may or may not have
    been applied. The store never re-sends it; a caller whose writes are conditional
    may plan again, and its conditions tell whether the first attempt was applied."""


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: str
    create_revision: int
    mod_revision: int
    lease: int = 0


@dataclass(frozen=True)
class WatchEvent:
    type: Literal["put", "delete"]
    key: str
    value: str | None  # None for deletes
    revision: int  # the revision of the change


@dataclass(frozen=True)
class Condition:
    """Holds when `key` currently has this mod_revision (0: the key does not exist)."""

    key: str
    mod_revision: int


@dataclass(frozen=True)
class Put:
    key: str
    value: str
    lease: int = 0


@dataclass(frozen=True)
class Delete:
    key: str


@dataclass(frozen=True)
class DeletePrefix:
    prefix: str


Operation = Put | Delete | DeletePrefix


@dataclass(frozen=True)
class CommitResult:
    succeeded: bool
    revision: int  # the store revision after the transaction (or current, when it failed)


@runtime_checkable
class Watch(Protocol):
    def get(self, timeout: float) -> list[WatchEvent]:
        """Events since the previous call (blocking up to `timeout` s; [] on timeout).

        Raises Compacted if the requested start revision is no longer kept, and
        StoreUnavailable if the store went away (the caller re-lists and re-watches).
        """
        ...

    def close(self) -> None: ...


@runtime_checkable
class Store(Protocol):
    def get(self, key: str) -> KeyValue | None: ...

    def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        """All keys under prefix, sorted by key, and the store revision they were read at."""
        ...

    def put(self, key: str, value: str, lease: int = 0) -> int:
        """Unconditional write; returns the new revision."""
        ...

    def delete(self, key: str) -> bool:
        """True if the key existed."""
        ...

    def create(self, key: str, value: str, lease: int = 0) -> bool:
        """Create-if-absent; False if the key exists."""
        ...

    def compare_and_swap(
        self, key: str, value: str, mod_revision: int, lease: int = 0
    ) -> bool:
        """Write only if the key's mod_revision is still `mod_revision` (0: absent)."""
        ...

    def commit(
        self, conditions: Sequence[Condition], operations: Sequence[Operation]
    ) -> CommitResult:
        """Apply every operation if every condition holds, atomically; else nothing."""
        ...

    def revision(self) -> int: ...

    def grant_lease(self, ttl: int) -> int:
        """A new lease id, alive for ttl seconds unless kept alive."""
        ...

    def keepalive(self, lease: int) -> bool:
        """Refresh a lease; False if it has already expired (its keys are gone)."""
        ...

    def revoke_lease(self, lease: int) -> None: ...

    def watch(self, prefix: str, start_revision: int) -> Watch:
        """Changes under prefix with revision >= start_revision."""
        ...

    def close(self) -> None: ...


class ConditionalWrites:
    """create and compare_and_swap, derived from `commit`: one definition for every store."""

    def commit(
        self, conditions: Sequence[Condition], operations: Sequence[Operation]
    ) -> CommitResult:
        raise NotImplementedError

    def create(self, key: str, value: str, lease: int = 0) -> bool:
        return self.commit([Condition(key, 0)], [Put(key, value, lease)]).succeeded

    def compare_and_swap(self, key: str, value: str, mod_revision: int, lease: int = 0) -> bool:
        return self.commit([Condition(key, mod_revision)], [Put(key, value, lease)]).succeeded
