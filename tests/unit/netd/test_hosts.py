"""The host registry and the lease keeper under it, over an in-memory store whose
leases expire only when the test says so (no clocks)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from netd.errors import Conflict, StoreUnavailable
from netd.hosts import HostRegistration
from netd.leases import LeaseKeeper
from netd.model import Host
from netd.store.keys import Keys
from tests.support.memwatch import WatchableMemStore

KEYS = Keys()
H1 = Host(name="h1", underlay_ip="192.0.2.1")


def registration(store: WatchableMemStore, state_dir: Path, host: Host = H1,
                 changes: list[str] | None = None) -> tuple[HostRegistration, LeaseKeeper]:
    keeper = LeaseKeeper(store, state_dir)
    reg = HostRegistration(store, KEYS, host, 9, state_dir, leases=keeper,
                           on_change=lambda: changes.append("change") if changes is not None
                           else None)
    return reg, keeper


def keep_now(keeper: LeaseKeeper) -> None:
    """Run one keepalive round for every lease, as the keeper's thread does when due."""
    for kept in keeper.leases():
        kept.keep()


def record(store: WatchableMemStore, name: str = "h1") -> Host | None:
    kv = store.get(KEYS.host(name))
    return None if kv is None else Host.from_json(kv.value)


def test_start_writes_the_record_under_a_saved_lease(tmp_path: Path) -> None:
    store = WatchableMemStore()
    reg, _ = registration(store, tmp_path)
    reg.start()
    kv = store.get(KEYS.host("h1"))
    assert kv is not None and kv.lease == reg.lease.id != 0
    assert (tmp_path / "host-lease").read_text() == str(kv.lease)
    assert record(store) == H1


def test_a_restart_adopts_its_live_lease_and_peers_see_nothing(tmp_path: Path) -> None:
    store = WatchableMemStore()
    first, _ = registration(store, tmp_path)
    first.start()
    lease, revision = first.lease.id, store.revision()
    again, _ = registration(store, tmp_path)
    again.start()
    assert again.lease.id == lease and store.granted == 1
    kv = store.get(KEYS.host("h1"))
    assert kv is not None and kv.lease == lease and kv.mod_revision > revision


def test_a_restart_after_the_lease_expired_takes_a_new_one(tmp_path: Path) -> None:
    store = WatchableMemStore()
    first, _ = registration(store, tmp_path)
    first.start()
    store.expire(first.lease.id)
    again, _ = registration(store, tmp_path)
    again.start()
    assert again.lease.id not in (0, first.lease.id)
    assert record(store) == H1


def test_another_live_daemon_with_the_same_name_is_refused(tmp_path: Path) -> None:
    store = WatchableMemStore()
    other, _ = registration(store, tmp_path / "other", Host(name="h1", underlay_ip="192.0.2.7"))
    (tmp_path / "other").mkdir()
    (tmp_path / "mine").mkdir()
    other.start()
    mine, _ = registration(store, tmp_path / "mine")
    with pytest.raises(Conflict, match=r"already registered by another live netd "
                                       r"\(underlay 192.0.2.7\)"):
        mine.start()
    assert record(store) == Host(name="h1", underlay_ip="192.0.2.7")


def test_an_expired_lease_is_renewed_and_the_record_written_again(tmp_path: Path) -> None:
    store = WatchableMemStore()
    changes: list[str] = []
    reg, keeper = registration(store, tmp_path, changes=changes)
    reg.start()
    old = reg.lease.id
    store.expire(old)  # the store was away longer than the TTL
    assert record(store) is None
    keep_now(keeper)
    assert reg.lease.id != old
    kv = store.get(KEYS.host("h1"))
    assert kv is not None and kv.lease == reg.lease.id
    assert changes == ["change"]  # the reconciler is asked to offer everything again
    assert (tmp_path / "host-lease").read_text() == str(reg.lease.id)


def test_a_deleted_record_is_written_again_but_another_owner_is_not_fought(
    tmp_path: Path,
) -> None:
    store = WatchableMemStore()
    reg, keeper = registration(store, tmp_path)
    reg.start()
    store.delete(KEYS.host("h1"))
    keep_now(keeper)
    assert record(store) == H1
    intruder = store.grant_lease(9)
    store.put(KEYS.host("h1"), Host(name="h1", underlay_ip="192.0.2.66").to_json(), intruder)
    keep_now(keeper)
    kv = store.get(KEYS.host("h1"))
    assert kv is not None and kv.lease == intruder


def test_published_driver_data_reaches_the_record(tmp_path: Path) -> None:
    store = WatchableMemStore()
    changes: list[str] = []
    reg, _ = registration(store, tmp_path, changes=changes)
    reg.publish("weave", {"sleeve_port": 6784})  # before start: only the record to write
    reg.start()
    assert record(store) == Host(name="h1", underlay_ip="192.0.2.1",
                                 driver_data={"weave": {"sleeve_port": 6784}})
    changes.clear()
    reg.publish("flannel", {"subnet": "10.5.1.0/24"})
    current = record(store)
    assert current is not None and current.driver_data == {
        "weave": {"sleeve_port": 6784}, "flannel": {"subnet": "10.5.1.0/24"}}
    assert reg.host == current and changes == ["change"]
    reg.publish("flannel", {"subnet": "10.5.1.0/24"})  # the same again: nothing to do
    assert changes == ["change"]


def test_the_keeper_thread_keeps_every_lease_alive(tmp_path: Path) -> None:
    store = WatchableMemStore()
    keeper = LeaseKeeper(store, tmp_path)
    host_lease = keeper.lease("host", 1)
    subnet_lease = keeper.lease("subnet", 1, persist=False)
    host_lease.put("/netd/hosts/h1", "{}")
    subnet_lease.put("/coreos.com/network/subnets/10.5.1.0-24", "{}")
    keeper.start()
    try:
        deadline = time.monotonic() + 5
        while store.keepalives < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.keepalives >= 4  # both, at least twice, in well under the TTL each
        store.expire(subnet_lease.id)
        deadline = time.monotonic() + 5
        while store.get("/coreos.com/network/subnets/10.5.1.0-24") is None:
            assert time.monotonic() < deadline, "the lapsed lease's record never came back"
            time.sleep(0.05)
    finally:
        keeper.stop()
    assert not (tmp_path / "subnet-lease").exists()


def test_release_revokes_the_lease_and_its_records(tmp_path: Path) -> None:
    store = WatchableMemStore()
    keeper = LeaseKeeper(store, tmp_path)
    kept = keeper.lease("subnet", 30)
    kept.put("/coreos.com/network/subnets/10.5.1.0-24", "{}")
    kept.release()
    assert store.get("/coreos.com/network/subnets/10.5.1.0-24") is None
    assert kept not in keeper.leases() and kept.id == 0
    assert not (tmp_path / "subnet-lease").exists()


def test_data_published_while_the_store_is_down_is_written_when_it_is_back(
    tmp_path: Path,
) -> None:
    store = WatchableMemStore()
    reg, keeper = registration(store, tmp_path)
    reg.start()
    real_put = store.put

    def down(key: str, value: str, lease: int = 0) -> int:
        raise StoreUnavailable("store down")

    store.put = down  # type: ignore[method-assign]
    reg.publish("weave", {"sleeve_port": 7000})  # does not raise into the driver
    store.put = real_put  # type: ignore[method-assign]
    keep_now(keeper)
    current = record(store)
    assert current is not None and current.driver_data == {"weave": {"sleeve_port": 7000}}
