"""The one way the service writes: a conditional commit, a bounded retry, a diagnosis.

Every write of the service is planned (conditions + operations, read from the store or
a cached view), committed all-or-nothing, and - when a condition failed - diagnosed:
the caller's `on_failure` asks *which* condition failed (`Diagnosis.failed(key)`, one
read per key asked, cached) and either raises a clear error or returns to plan again.
After ATTEMPTS lost commits it gives up with Contention (409, "try again"): a request
that lost races is never reported as anything else (not "pool exhausted").
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from netd.errors import Contention, StoreUnavailable
from netd.faults import crash_point
from netd.store.base import Condition, KeyValue, Operation, Store

log = logging.getLogger(__name__)

ATTEMPTS = 32  # commits lost to concurrent writers before giving up
# a commit (or a read planning it) that failed quickly because the store was unreachable
# or broke off is planned again for this long: a failing-over etcd cluster answers again
# within it. A commit whose first attempt was applied after all fails its conditions the
# second time and is diagnosed as such (never applied twice).
FAILOVER_FOR = 8.0
FAST_FAILURE = 2.5  # seconds: an attempt that took longer (a timeout) is repeated only
# while the store is not known to be away (see follow_health)
FAILOVER_PAUSE = 0.25
BACKOFF_AFTER = 2  # failed attempts before waiting a little (random, growing)
BACKOFF_MAX = 0.05  # seconds


class Planned(Protocol):
    @property
    def conditions(self) -> Sequence[Condition]: ...

    @property
    def operations(self) -> Sequence[Operation]: ...


@dataclass(frozen=True)
class Txn:
    """Conditions and operations to commit at once, gathered from several plans."""

    conditions: tuple[Condition, ...] = ()
    operations: tuple[Operation, ...] = ()

    @classmethod
    def of(cls, *parts: Planned) -> Txn:
        return cls(
            tuple(c for p in parts for c in p.conditions),
            tuple(o for p in parts for o in p.operations),
        )


class Diagnosis:
    """Which conditions of a failed commit no longer hold, read lazily key by key."""

    def __init__(self, store: Store, conditions: Iterable[Condition]) -> None:
        self.store = store
        self.expected = {c.key: c.mod_revision for c in conditions}
        self._read: dict[str, KeyValue | None] = {}

    def current(self, key: str) -> KeyValue | None:
        """The record as it is now (read once per diagnosis)."""
        if key not in self._read:
            self._read[key] = self.store.get(key)
        return self._read[key]

    def failed(self, *keys: str) -> bool:
        """True if the condition on any of `keys` no longer holds (keys without one: no)."""
        for key in keys:
            if key not in self.expected:
                continue
            kv = self.current(key)
            if (kv.mod_revision if kv is not None else 0) != self.expected[key]:
                return True
        return False


P = TypeVar("P", bound=Planned)


def commit(
    store: Store,
    plan: Callable[[], P | None],
    on_failure: Callable[[P, Diagnosis], None],
    *,
    what: str,
    attempts: int = ATTEMPTS,
    rng: random.Random | None = None,
) -> tuple[P, int] | None:
    """Plan, commit, and on a failed condition diagnose and plan again.

    `plan()` returns the plan (None: nothing to do, commit() returns None);
    `on_failure(plan, diagnosis)` raises to refuse the request or returns to retry.
    Returns the committed plan and the revision it was committed at."""
    jitter = rng or random
    failing_since: float | None = None
    for attempt in range(attempts):
        started = time.monotonic()
        try:
            planned = plan()
            if planned is None:
                return None
            crash_point("commit.before")
            result = store.commit(planned.conditions, planned.operations)
        except StoreUnavailable as exc:
            # a member died or an election runs (etcd cluster): another member answers
            # within a second or two. A store this host knows to be away (its watch is
            # broken too) fails the request as it is.
            now = time.monotonic()
            failing_since = failing_since or started
            slow = now - started > FAST_FAILURE
            if now - failing_since > FAILOVER_FOR or (slow and _known_down(store)):
                raise
            log.info("%s: %s; planning again", what, exc)
            time.sleep(FAILOVER_PAUSE)
            continue
        if result.succeeded:
            crash_point("commit.after")
            return planned, result.revision
        on_failure(planned, Diagnosis(store, planned.conditions))
        if attempt + 1 >= BACKOFF_AFTER:
            time.sleep(jitter.uniform(0, min(BACKOFF_MAX, 0.002 * 2**attempt)))
    raise Contention(f"{what} lost to concurrent changes {attempts} times in a row; try again")


_health: dict[int, Callable[[], bool]] = {}


def follow_health(store: Store, known_down: Callable[[], bool]) -> None:
    """Tell commit() how to know that `store` is away (this host's watch of it broke):
    a write that timed out then is not planned again."""
    _health[id(store)] = known_down


def _known_down(store: Store) -> bool:
    known_down = _health.get(id(store))
    return known_down is None or known_down()


def retry_on_any_failure(planned: Planned, diagnosis: Diagnosis) -> None:
    """An `on_failure` for plans that are simply re-read and planned again."""

    return None
