"""Desired versus applied state per item, kept in one reusable place.

Why: a driver that re-applies everything on every store event costs O(endpoints) per
attach; one that skips items must know, per item, what it last applied successfully and
what it no longer wants. Calico Felix's delta tracker is the model: two maps, `desired`
(what the pure calculation asks for) and `applied` (what this process knows the
datapath holds), and from them the pending work:

* pending update: desired, and not applied with that very value (new, changed, or
  failed before);
* pending delete: applied, and no longer desired.

A driver sets the desired side, walks the pending items, and records each outcome:
`mark_applied` after success, `mark_deleted` after a delete, `mark_dirty` after a
failure or whenever the applied state is no longer known (a verify pass, a dependency
re-applied). A dirty item has no applied value: the next pass applies it again, against
the kernel rather than against a remembered value, while the other items proceed.
Values must compare by value (frozen dataclasses, tuples).

The tracker also keeps the set of keys that may be pending (as Felix keeps its pending
maps), updated by every single-key call, so `pending_updates`, `pending_deletes` and
`forget_undesired` cost O(pending items), not O(all items): a driver that changes one
item per store event pays for that item only. `replace_desired` compares the whole
map and costs O(all items); incremental callers use `set_desired`/`delete_desired`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


_MISSING = object()


class _Desired:
    """Marker: mark_applied records the item's desired value."""


DESIRED = _Desired()


class DeltaTracker(Generic[K, V]):
    def __init__(self) -> None:
        self._desired: dict[K, V] = {}
        self._applied: dict[K, V] = {}
        # every key not in sync (desired and not applied as desired, or applied and no
        # longer desired) is in here; keys in here may have become in sync since
        self._pending: dict[K, None] = {}

    def _recheck(self, key: K) -> None:
        if key in self._desired:
            if key in self._applied and self._applied[key] == self._desired[key]:
                self._pending.pop(key, None)
            else:
                self._pending[key] = None
        elif key in self._applied:
            self._pending[key] = None
        else:
            self._pending.pop(key, None)

    # -- desired side -------------------------------------------------------------------

    def set_desired(self, key: K, value: V) -> None:
        self._desired[key] = value
        self._recheck(key)

    def delete_desired(self, key: K) -> None:
        self._desired.pop(key, None)
        self._recheck(key)

    def replace_desired(self, items: Mapping[K, V]) -> None:
        """The complete desired state: keys absent from `items` become pending deletes."""
        old = self._desired
        self._desired = dict(items)
        for key in [k for k in old if k not in self._desired]:
            self._recheck(key)
        for key, value in self._desired.items():
            if old.get(key, _MISSING) != value or key in self._pending:
                self._recheck(key)

    def desired_keys(self) -> set[K]:
        return set(self._desired)

    def desired(self, key: K) -> V | None:
        return self._desired.get(key)

    def desired_items(self) -> Iterator[tuple[K, V]]:
        yield from list(self._desired.items())

    # -- applied side -------------------------------------------------------------------

    def applied(self, key: K) -> V | None:
        """What was last applied successfully (None: nothing, or not known)."""
        return self._applied.get(key)

    def applied_items(self) -> Iterator[tuple[K, V]]:
        yield from list(self._applied.items())

    def mark_applied(self, key: K, value: V | _Desired = DESIRED) -> None:
        """`key` now holds `value` (default: its desired value) in the datapath."""
        if isinstance(value, _Desired):
            self._applied[key] = self._desired[key]
        else:
            self._applied[key] = value
        self._recheck(key)

    def mark_deleted(self, key: K) -> None:
        """`key` is gone from the datapath (a delete succeeded)."""
        self._applied.pop(key, None)
        self._recheck(key)

    def mark_dirty(self, key: K) -> None:
        """What the datapath holds for `key` is unknown: apply it again next time."""
        self._applied.pop(key, None)
        self._recheck(key)

    def mark_all_dirty(self) -> None:
        self._applied.clear()
        self._pending = dict.fromkeys(self._desired)

    # -- pending work -------------------------------------------------------------------

    def in_sync(self, key: K) -> bool:
        """Desired and applied with the same value: nothing to do for `key`."""
        return key in self._desired and key in self._applied and (
            self._applied[key] == self._desired[key]
        )

    def pending_updates(self) -> Iterator[tuple[K, V]]:
        """Desired items not applied as desired, in the order they became pending."""
        for key in list(self._pending):
            if key in self._desired and not self.in_sync(key):
                yield key, self._desired[key]

    def pending_deletes(self) -> Iterator[tuple[K, V]]:
        """Applied items no longer desired, with the value last applied."""
        for key in list(self._pending):
            if key not in self._desired and key in self._applied:
                yield key, self._applied[key]

    def forget_undesired(self, keep: Iterable[K] = ()) -> None:
        """Drop the applied value of every item neither desired nor in `keep`: for items
        whose removal happens elsewhere (with their parent) and needs no delete of its own."""
        keep = set(keep)
        for key in [k for k in self._pending if k not in self._desired and k not in keep]:
            self._applied.pop(key, None)
            self._pending.pop(key, None)

    def __len__(self) -> int:
        return len(self._desired)
