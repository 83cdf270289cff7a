"""AddressPool against the in-memory store and the real embedded (SQLite) store."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipam.pool import AddressPool
from netd.errors import Conflict, Exhausted, InvalidInput
from netd.model import Network
from netd.store.base import Condition, Put, Store
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


def _pool(store: Store, network: Network | None = None, seed: int = 1) -> AddressPool:
    return AddressPool(store, KEYS, network or _network(), rng=random.Random(seed))


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


def test_reserve_with_the_callers_record_in_one_commit(store: Store) -> None:
    pool = _pool(store)
    ep_key = KEYS.endpoint("n1", "c1")

    def endpoint_record(ip: str) -> tuple[list[Condition], list[Put]]:
        return [Condition(ep_key, 0)], [Put(ep_key, json.dumps({"ip": ip}))]

    ip = pool.reserve("c1", extra=endpoint_record)
    got = store.get(ep_key)
    assert got is not None and json.loads(got.value) == {"ip": ip}
    # the caller's condition fails (the endpoint exists): retried, then refused, no IPAM change
    before = _ipam_keys(store)
    with pytest.raises(Conflict, match="attempts"):
        AddressPool(store, KEYS, _network(), max_attempts=3).reserve("c2", extra=endpoint_record)
    assert _ipam_keys(store) == before


def test_concurrent_threads_get_unique_addresses(store: Store) -> None:
    network = _network("10.8.0.0/22", "10.8.0.1")
    results: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        pool = AddressPool(store, KEYS, network, rng=random.Random(n))
        try:
            for i in range(40):
                ip = pool.reserve(f"t{n}-{i}")
                with lock:
                    results.append(ip)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == 320
    assert len(set(results)) == 320
    assert "10.8.0.1" not in results
    in_use = AddressPool(store, KEYS, network).in_use()
    assert sorted(in_use) == sorted(results)


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
