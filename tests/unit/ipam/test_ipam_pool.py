"""AddressPool's plans against the in-memory store and the real embedded (SQLite) store.

The pool only plans; `_Committing` commits its plans through the service's transaction
helper the way an attach does (the address part of it). Concurrency through the whole
attach path is tested in test_service.py and test_ipam_etcd_concurrency.py.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipam.pool import WINDOW, AddressPool, Plan
from ipam.scope import AddressRange, to_int
from netd.errors import Conflict, Exhausted, InvalidInput
from netd.model import Network
from netd.service import transaction
from netd.service.transaction import Diagnosis
from netd.store.base import Store
from netd.store.keys import Keys
from tests.support.memstore import MemStore

KEYS = Keys()


def _network(subnet: str = "10.1.0.0/24", gateway: str = "10.1.0.1") -> Network:
    return Network(name="n1", subnet=subnet, gateway=gateway, vni=1, mtu=1450)


@pytest.fixture(params=["memory", "embedded"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "memory":
        yield MemStore()
        return
    embedded = pytest.importorskip("netd.store.embedded")
    real = embedded.EmbeddedStore(tmp_path / "netd.db")
    try:
        yield real
    finally:
        real.close()


class _Committing:
    """An AddressPool whose plans are committed at once, as the service does."""

    def __init__(self, pool: AddressPool) -> None:
        self.pool = pool
        self.store = pool.store

    def reserve(self, endpoint: str, ip: str | None = None) -> str:
        pool = self.pool

        def on_failure(plan: Plan, diagnosis: Diagnosis) -> None:
            if diagnosis.failed(KEYS.ipam_name(pool.network, endpoint)):
                pool.invalidate()
            else:
                pool.collided(plan.ip)

        result = transaction.commit(self.store, lambda: pool.plan_reserve(endpoint, ip),
                                    on_failure, what="reserve")
        assert result is not None
        pool.committed(endpoint, *result)
        return result[0].ip

    def release(self, endpoint: str, ip: str) -> None:
        transaction.commit(self.store, lambda: self.pool.plan_release(endpoint, ip),
                           transaction.retry_on_any_failure, what="release")
        self.pool.released(ip)

    def forget(self, endpoint: str) -> None:
        transaction.commit(self.store, lambda: self.pool.plan_forget(endpoint),
                           transaction.retry_on_any_failure, what="forget")
        self.pool.invalidate()

    def release_all(self) -> None:
        plan = self.pool.plan_release_all()
        self.store.commit(plan.conditions, plan.operations)
        self.pool.invalidate()

    def plan_reserve(self, endpoint: str, ip: str | None = None) -> Plan:
        return self.pool.plan_reserve(endpoint, ip)

    def in_use(self) -> dict[str, str]:
        return self.pool.in_use()

    def reservations(self) -> dict[str, str]:
        return self.pool.reservations()


def _pool(store: Store, network: Network | None = None, seed: int = 1) -> _Committing:
    scope = AddressRange.of(network or _network())
    return _Committing(AddressPool(store, KEYS, scope, rng=random.Random(seed)))


def _ipam_keys(store: Store) -> dict[str, dict[str, str]]:
    items, _ = store.list(KEYS.ipam("n1"))
    return {kv.key: json.loads(kv.value) for kv in items}


def test_fixed_address_writes_both_records(store: Store) -> None:
    pool = _pool(store)
    assert pool.reserve("c1", "10.1.0.5") == "10.1.0.5"
    assert _ipam_keys(store) == {
        KEYS.ipam_address("n1", "10.1.0.5"): {"owner": "c1"},
        KEYS.ipam_name("n1", "c1"): {"ip": "10.1.0.5"},
    }
    assert pool.in_use() == {"10.1.0.5": "c1"}
    assert pool.reservations() == {"c1": "10.1.0.5"}


def test_same_endpoint_again_is_idempotent(store: Store) -> None:
    pool = _pool(store)
    pool.reserve("c1", "10.1.0.5")
    revision = store.revision()
    assert pool.reserve("c1", "10.1.0.5") == "10.1.0.5"
    assert pool.reserve("c1") == "10.1.0.5"
    assert store.revision() == revision


def test_duplicate_fixed_address_is_a_conflict(store: Store) -> None:
    pool = _pool(store)
    pool.reserve("c1", "10.1.0.5")
    with pytest.raises(Conflict) as err:
        pool.reserve("c2", "10.1.0.5")
    assert str(err.value) == "IP 10.1.0.5 is already in use on network n1 by endpoint c1"
    assert pool.in_use() == {"10.1.0.5": "c1"}
    assert pool.reservations() == {"c1": "10.1.0.5"}


@pytest.mark.parametrize(
    ("ip", "reason"),
    [
        ("10.2.0.5", "outside network n1"),
        ("10.1.0.0", "network address"),
        ("10.1.0.255", "broadcast address"),
        ("10.1.0.1", "gateway"),
        ("10.1.0.256", "invalid IP address"),
    ],
)
def test_unusable_fixed_address_is_refused(store: Store, ip: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        _pool(store).reserve("c1", ip)
    assert _ipam_keys(store) == {}


def test_endpoint_holding_another_address_cannot_take_a_second(store: Store) -> None:
    pool = _pool(store)
    pool.reserve("c1", "10.1.0.5")
    with pytest.raises(Conflict, match=r"already holds IP 10\.1\.0\.5"):
        pool.reserve("c1", "10.1.0.6")
    assert pool.in_use() == {"10.1.0.5": "c1"}


def test_slash29_exhausts_after_five(store: Store) -> None:
    pool = _pool(store, _network("10.1.0.0/29", "10.1.0.1"))
    got = {pool.reserve(f"c{i}") for i in range(5)}
    assert got == {f"10.1.0.{i}" for i in range(2, 7)}
    before = _ipam_keys(store)
    with pytest.raises(Exhausted) as err:
        pool.reserve("c9")
    assert str(err.value) == "network n1 has no free address (5 in use)"
    assert _ipam_keys(store) == before


def test_release_frees_the_address_and_keeps_the_reservation(store: Store) -> None:
    pool = _pool(store)
    ip = pool.reserve("c1")
    pool.release("c2", ip)  # not the owner: nothing happens
    assert pool.in_use() == {ip: "c1"}
    pool.release("c1", ip)
    assert pool.in_use() == {}
    assert pool.reservations() == {"c1": ip}
    pool.release("c1", ip)  # idempotent
    pool.release("c1", "10.1.0.77")


def test_reattach_gets_the_same_address(store: Store) -> None:
    pool = _pool(store)
    ip = pool.reserve("web")
    pool.release("web", ip)
    others = {pool.reserve(f"other{i}") for i in range(100)}
    assert ip not in others
    assert pool.reserve("web") == ip
    # also from another daemon's pool object with its own random sequence
    pool.release("web", ip)
    assert _pool(store, seed=99).reserve("web") == ip


def test_sticky_reservation_not_stolen_while_others_are_free(store: Store) -> None:
    pool = _pool(store, _network("10.1.0.0/29", "10.1.0.1"))
    held = {pool.reserve(f"c{i}"): f"c{i}" for i in range(4)}
    for ip, name in held.items():
        pool.release(name, ip)
    (only_unreserved,) = {f"10.1.0.{i}" for i in range(2, 7)} - set(held)
    assert pool.reserve("x1") == only_unreserved
    # nothing unreserved is left: a sticky address is better than failing
    fallback = pool.reserve("x2")
    assert fallback in held
    owner = held[fallback]
    # the name whose address went to x2 gets another one (the last sticky address left
    # may be its own or another's; either way it is unique)
    again = pool.reserve(owner)
    assert again != fallback
    assert len(pool.in_use()) == 3


def test_forget_drops_the_reservation_too(store: Store) -> None:
    pool = _pool(store)
    ip = pool.reserve("c1")
    pool.forget("c1")
    assert _ipam_keys(store) == {}
    pool.forget("c1")  # idempotent
    pool.reserve("c2", ip)  # the address is free for anyone


def test_release_all_and_in_use(store: Store) -> None:
    pool = _pool(store)
    for i in range(5):
        pool.reserve(f"c{i}")
    assert sorted(pool.in_use().values()) == [f"c{i}" for i in range(5)]
    pool.release_all()
    assert _ipam_keys(store) == {}
    assert pool.in_use() == {}


def test_plan_writes_nothing_and_goes_stale(store: Store) -> None:
    pool = _pool(store)
    revision = store.revision()
    plan = pool.plan_reserve("c1")
    assert store.revision() == revision
    _pool(store).reserve("c2", plan.ip)  # someone takes the planned address first
    assert not store.commit(plan.conditions, plan.operations).succeeded
    assert pool.in_use() == {plan.ip: "c2"}


def test_stale_view_of_another_daemon_never_duplicates(store: Store) -> None:
    network = _network("10.1.0.0/27", "10.1.0.1")
    a, b = _pool(store, network, seed=1), _pool(store, network, seed=1)
    got = [a.reserve("a0")]  # a reads its view now; b's allocations come after it
    got += [b.reserve(f"b{i}") for i in range(15)]
    got += [a.reserve(f"a{i}") for i in range(1, 14)]  # a's view misses b's 15
    assert len(got) == len(set(got)) == 29
    with pytest.raises(Exhausted):
        a.reserve("a99")


def test_view_that_says_full_is_reread(store: Store) -> None:
    network = _network("10.1.0.0/29", "10.1.0.1")
    a, b = _pool(store, network), _pool(store, network)
    held = {a.reserve(f"c{i}"): f"c{i}" for i in range(5)}
    freed = sorted(held)[2]
    b.forget(held[freed])  # another daemon frees one; a's cached view still says full
    assert a.reserve("late") == freed


def _offsets(ips: list[str], first: str) -> list[int]:
    base = to_int(first)
    assert base is not None
    return [(to_int(ip) or 0) - base for ip in ips]


def test_daemons_pick_in_windows_of_their_own_on_big_ranges(store: Store) -> None:
    network = _network("10.2.0.0/20", "10.2.0.1")  # 4094 usable: windows of WINDOW
    a, b = _pool(store, network, seed=1), _pool(store, network, seed=2)
    got_a = [a.reserve(f"a{i}") for i in range(WINDOW // 2)]
    got_b = [b.reserve(f"b{i}") for i in range(WINDOW // 2)]
    for got in (got_a, got_b):
        offsets = sorted(_offsets(got, "10.2.0.1"))
        # all inside one window (wrapping around the range's end counts as inside)
        gaps = [y - x for x, y in itertools.pairwise(offsets)]
        assert offsets[-1] - offsets[0] < WINDOW or max(gaps) > 4094 - WINDOW
    assert not set(got_a) & set(got_b)


def test_a_collision_moves_the_window(store: Store) -> None:
    network = _network("10.2.0.0/20", "10.2.0.1")
    pool = AddressPool(store, KEYS, AddressRange.of(network), rng=random.Random(3))
    first = pool.plan_reserve("c0").ip
    pool.collided(first)  # another daemon took it: it allocates around here
    later = [pool.plan_reserve(f"c{i}").ip for i in range(1, 9)]
    assert all(abs(o) >= WINDOW for o in _offsets(later, first))


def test_small_ranges_are_picked_from_whole(store: Store) -> None:
    network = _network("10.1.0.0/24", "10.1.0.1")  # fewer than MIN_WINDOWS windows
    pool = _pool(store, network, seed=5)
    offsets = _offsets([pool.reserve(f"c{i}") for i in range(40)], "10.1.0.1")
    assert max(offsets) - min(offsets) > WINDOW
