"""Address ranges (a driver's per-host scope), MAC claims and numeric ids: plans only."""

from __future__ import annotations

import random

import pytest

from ipam import ids, macs
from ipam.allocator import candidates, usable_count
from ipam.scope import AddressRange
from netd.errors import Conflict, Exhausted, InvalidInput
from netd.model import Network
from netd.store.base import Condition, Put
from netd.store.keys import Keys
from tests.support.memstore import MemStore

KEYS = Keys()


def test_range_of_a_network_is_its_subnet_without_the_gateway() -> None:
    network = Network(name="n", subnet="10.1.0.0/29", gateway="10.1.0.1", vni=1, mtu=1450)
    scope = AddressRange.of(network)
    assert scope.size() == usable_count(network) == 5
    assert scope.check("10.1.0.2") == "10.1.0.2"
    with pytest.raises(InvalidInput, match="gateway"):
        scope.check("10.1.0.1")


def test_a_per_host_scope_allocates_only_inside_it() -> None:
    """A driver's per-host range (flannel: the host's leased /28 of a /16, with its own
    gateway) and excluded addresses: nothing outside is ever a candidate."""
    scope = AddressRange("n", "10.5.3.16/28", gateway="10.5.3.17",
                         excluded=frozenset({"10.5.3.18", "10.9.9.9"}))
    assert scope.size() == 14 - 2
    got = set(candidates(scope, [], [], random.Random(1)))
    assert got == {f"10.5.3.{i}" for i in range(19, 31)}
    with pytest.raises(InvalidInput, match="excluded"):
        scope.check("10.5.3.18")
    with pytest.raises(InvalidInput, match="outside"):
        scope.check("10.5.3.2")
    with pytest.raises(Exhausted, match="no free address"):
        candidates(scope, got, [], random.Random(1))


def test_mac_claim_plans() -> None:
    store = MemStore()
    claim = macs.plan_claim(KEYS, "n", "02:00:00:00:00:01", "c1")
    assert claim.conditions == (Condition(KEYS.ipam_mac("n", "02:00:00:00:00:01"), 0),)
    assert store.commit(claim.conditions, claim.operations).succeeded
    assert not store.commit(claim.conditions, claim.operations).succeeded  # taken once
    assert macs.plan_release(store, KEYS, "n", "02:00:00:00:00:01", "c2").operations == ()
    mine = macs.plan_release(store, KEYS, "n", "02:00:00:00:00:01", "c1")
    assert store.commit(mine.conditions, mine.operations).succeeded
    assert store.get(claim.key) is None


def test_vnis_lowest_free_and_taken_once() -> None:
    store = MemStore()
    space = ids.vnis(KEYS)
    first = space.plan_take("a", taken=[1, 2, 4])
    assert first.value == 3
    assert first.operations == (Put(KEYS.vni(3), "a"),)
    assert store.commit(first.conditions, first.operations).succeeded
    # a second taker that read before the first committed plans the same VNI: refused
    again = space.plan_take("b", taken=[1, 2, 4])
    assert not store.commit(again.conditions, again.operations).succeeded
    with pytest.raises(Conflict, match="VNI 4 is already used"):
        space.plan_take("c", taken=[4], requested=4)


def test_endpoint_ids_are_random_and_bounded() -> None:
    space = ids.endpoint_ids(KEYS)
    values = {space.plan_take("e", [], rng=random.Random(n)).value for n in range(20)}
    assert len(values) > 10 and all(1 <= v <= 0xFFFF for v in values)
    taken = space.plan_take("e", [1])
    assert taken.conditions == (Condition(KEYS.number("endpoint", taken.value), 0),)
    tiny = ids.IdSpace("zone", lambda n: KEYS.number("tenant", n), 1, 2)
    with pytest.raises(Exhausted, match="every zone is in use"):
        tiny.plan_take("t", [1, 2])
