"""Small numeric ids handed out cluster-wide: VNIs today; per-endpoint and per-tenant
ids (OpenFlow cookies, conntrack zones) use the same planner once a driver needs them.

An id is taken by creating its record (absent -> owner) in the same commit as the
record that uses it, so two daemons can never hand out one id. Pure planning: the
caller reads what is taken, plans, and commits through the transaction helper.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from netd.errors import Conflict, Exhausted
from netd.model import VNI_MAX, VNI_MIN
from netd.store.base import Condition, Delete, Operation, Put
from netd.store.keys import Keys


@dataclass(frozen=True)
class IdPlan:
    value: int
    conditions: tuple[Condition, ...] = ()
    operations: tuple[Operation, ...] = ()


@dataclass(frozen=True)
class IdSpace:
    """Ids `first..last`, each recorded at `key(n)`; `what` names them in messages."""

    what: str
    key: Callable[[int], str]
    first: int
    last: int
    lowest_first: bool = True  # else random candidates (many concurrent takers)

    def plan_take(
        self,
        owner: str,
        taken: Iterable[int],
        requested: int | None = None,
        rng: random.Random | None = None,
    ) -> IdPlan:
        """Take `requested`, or a free id: the lowest (stable, readable VNIs) or a random
        one. `taken` is advice read before; the record's absence is the condition."""
        used = set(taken)
        if requested is not None:
            if requested in used:
                raise Conflict(f"{self.what} {requested} is already used")
            value = requested
        else:
            value = self._free(used, rng or random.Random())
        key = self.key(value)
        return IdPlan(value, (Condition(key, 0),), (Put(key, owner),))

    def plan_release(self, value: int) -> IdPlan:
        return IdPlan(value, (), (Delete(self.key(value)),))

    def _free(self, used: set[int], rng: random.Random) -> int:
        if len(used) >= self.last - self.first + 1:
            raise Exhausted(f"every {self.what} is in use")
        if not self.lowest_first:
            for _ in range(32):
                n = rng.randint(self.first, self.last)
                if n not in used:
                    return n
        for n in range(self.first, self.last + 1):
            if n not in used:
                return n
        raise Exhausted(f"every {self.what} is in use")





def vnis(keys: Keys) -> IdSpace:
    """Network VNIs: the lowest free one, recorded at `Keys.vni(n)` = network name."""
    return IdSpace("VNI", keys.vni, VNI_MIN, VNI_MAX)


def endpoint_ids(keys: Keys) -> IdSpace:
    """Per-endpoint ids (16 bits, for OpenFlow cookies): random, many concurrent takers."""
    return IdSpace("endpoint id", lambda n: keys.number("endpoint", n), 1, 0xFFFF, False)


def tenant_ids(keys: Keys) -> IdSpace:
    """Per-tenant ids (conntrack zones are 16 bits; 0 is the default zone)."""
    return IdSpace("tenant id", lambda n: keys.number("tenant", n), 1, 0xFFFF)
