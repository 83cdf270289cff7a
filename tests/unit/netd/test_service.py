"""The API's logic over a real (embedded) store, with the kernel side faked.

The reconciler, the host registration, container resolution and the netns link
listing are fakes, so each test can force an interleaving (a `network rm` between an
attach's read and its commit, two attaches of one container at once) or a datapath
failure, and then check the store's exact contents.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from netd.calc import Snapshot
from netd.container import ContainerRef, endpoint_name
from netd.errors import (
    Conflict,
    Contention,
    DatapathError,
    Exhausted,
    HostLimit,
    InvalidInput,
    NotFound,
    StoreUnavailable,
    Unsupported,
)
from netd.model import Host, Network, mac_from_ip
from netd.reconcile import SyncStatus
from netd.service import Service, context, transaction
from netd.service.transaction import Diagnosis, Txn
from netd.store.base import (
    CommitResult,
    Condition,
    DeletePrefix,
    KeyValue,
    Operation,
    OutcomeUnknown,
    Put,
)
from netd.store.embedded import EmbeddedStore
from netd.store.keys import Keys
from tests.support.drivers import WEAVE_SPECS

KEYS = Keys()


class FakeRegistration:
    def __init__(self, host: Host) -> None:
        self.host = host


class FakeReconciler:
    """Applies everything at once; `errors` and `applies` script the datapath's answer."""

    def __init__(self) -> None:
        self.errors: dict[str, str] = {}
        self.applies = True
        self.waited: list[int] = []
        self.watch_error = ""  # the store watch's failure; "" while it is live
        self.down_since = 0.0  # wall clock the watch broke (0: it follows the store)
        self.known = Snapshot()  # the local copy reads fall back to

    def wait_applied(self, revision: int, item: str | None, timeout: float) -> bool:
        self.waited.append(revision)
        return self.applies

    def item_error(self, item: str) -> str | None:
        return self.errors.get(item)

    def status(self) -> SyncStatus:
        return SyncStatus(revision=7, last_sync=1.0, syncs=3,
                          store_ok=not self.watch_error, store_error=self.watch_error,
                          store_down_since=self.down_since)

    def store_down(self) -> tuple[float, str] | None:
        return (self.down_since, self.watch_error) if self.down_since else None

    def kept_hosts(self) -> set[str]:
        return set()

    def snapshot(self) -> Snapshot:
        return self.known

    def observe(self) -> dict[str, Any]:
        return {"weave": {"links": {"nwb1": "bridge"}, "networks": {}, "ports": 0}}


class HookedStore(EmbeddedStore):
    """An embedded store that runs `before_commit(ops)` / `before_list(prefix)` first."""

    before_commit: Callable[[Sequence[Operation]], None] | None = None
    before_list: Callable[[str], None] | None = None

    def commit(self, conditions: Sequence[Condition],
               operations: Sequence[Operation]) -> CommitResult:
        if self.before_commit is not None:
            self.before_commit(operations)
        return super().commit(conditions, operations)

    def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        if self.before_list is not None:
            self.before_list(prefix)
        return super().list(prefix)


def fake_resolve(ref: str) -> ContainerRef:
    if ref.isdigit():
        netns = f"/proc/{ref}/ns/net"
    elif ref.startswith("/"):
        netns = ref
    else:
        netns = f"/run/netns/{ref}"
    return ContainerRef(ref=ref, name=endpoint_name(ref), netns=netns)


def no_links(netns: str) -> set[str]:
    return set()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[HookedStore]:
    s = HookedStore(tmp_path / "netd.db")
    yield s
    s.close()


def make_service(store: EmbeddedStore, underlay_mtu: int = 1500,
                 links: Callable[[str], set[str]] = no_links) -> Service:
    host = Host(name="h1", underlay_ip="192.0.2.1", underlay_mtu=underlay_mtu)
    return Service(store, KEYS, FakeRegistration(host), FakeReconciler(),  # type: ignore[arg-type]
                   WEAVE_SPECS, containers=fake_resolve, links=links)


@pytest.fixture
def svc(store: HookedStore) -> Service:
    service = make_service(store)
    service.create_network({"name": "blue", "subnet": "10.1.0.0/24"})
    return service


def contents(store: EmbeddedStore) -> dict[str, str]:
    """Every record but the host registry."""
    items, _ = store.list(KEYS.root())
    return {kv.key: kv.value for kv in items if not kv.key.startswith(KEYS.hosts())}


def attach(svc: Service, container: str, network: str = "blue", **kw: Any) -> dict[str, Any]:
    return svc.attach({"container": container, "network": network, **kw}).to_dict()


# --- network rm racing attach -------------------------------------------------------------
@pytest.mark.parametrize("moment", ["first look", "second look", "delete"])
def test_attach_during_rm_never_both_succeed(
    svc: Service, store: HookedStore, moment: str
) -> None:
    """A whole attach runs at one moment of a `network rm` (before its first or second
    look at the endpoints, or between the last look and the delete): exactly one of
    them succeeds, and the store stays consistent either way."""
    outcome: dict[str, Any] = {}
    looks = 0

    def run_attach() -> None:
        store.before_list = store.before_commit = None
        try:
            outcome["attach"] = attach(svc, "c1")
        except (Conflict, NotFound) as exc:
            outcome["attach"] = exc

    def at_look(prefix: str) -> None:
        nonlocal looks
        if prefix == KEYS.endpoints("blue"):
            looks += 1
            if (looks, moment) in ((1, "first look"), (2, "second look")):
                run_attach()

    def at_delete(ops: Sequence[Operation]) -> None:
        if moment == "delete" and DeletePrefix(KEYS.endpoints("blue")) in ops:
            run_attach()

    store.before_list, store.before_commit = at_look, at_delete
    try:
        svc.remove_network("blue")
        outcome["rm"] = "ok"
    except Conflict as exc:
        outcome["rm"] = exc
    assert "attach" in outcome, "the interleaving did not happen"
    attached = isinstance(outcome["attach"], dict)
    removed = outcome["rm"] == "ok"
    assert attached != removed, outcome
    if removed:
        assert contents(store) == {KEYS.tenant("default"): '{"name": "default"}'}
    else:
        assert svc.list_endpoints("blue")[0].name == "c1"
        assert store.get(KEYS.network_removal("blue")) is None


def test_attach_reading_the_network_before_rm_fails_cleanly(
    svc: Service, store: HookedStore
) -> None:
    def rm_first(ops: Sequence[Operation]) -> None:
        store.before_commit = None
        svc.remove_network("blue")

    store.before_commit = rm_first
    with pytest.raises(NotFound, match="removed"):
        attach(svc, "c1")
    assert contents(store) == {KEYS.tenant("default"): '{"name": "default"}'}


def test_attach_retries_with_the_rewritten_network_record(
    svc: Service, store: HookedStore
) -> None:
    """A refused `network rm` rewrites the record: an attach that read it before plans
    again with the new revision instead of failing eight times on the old one."""
    def rewrite(ops: Sequence[Operation]) -> None:
        store.before_commit = None
        kv = store.get(KEYS.network("blue"))
        assert kv is not None
        store.put(kv.key, kv.value)

    store.before_commit = rewrite
    assert attach(svc, "c1")["name"] == "c1"


def test_attach_refused_while_network_is_being_removed(svc: Service, store: HookedStore) -> None:
    lease = store.grant_lease(10)
    store.put(KEYS.network_removal("blue"), "h9", lease)
    with pytest.raises(Conflict, match="being removed"):
        attach(svc, "c1")
    store.revoke_lease(lease)
    assert attach(svc, "c1")["name"] == "c1"


def test_refused_rm_leaves_no_marker(svc: Service, store: HookedStore) -> None:
    attach(svc, "c1")
    with pytest.raises(Conflict, match="detach them first"):
        svc.remove_network("blue")
    assert store.get(KEYS.network_removal("blue")) is None


# --- repeated attach -----------------------------------------------------------------------
def test_same_name_from_another_netns_is_refused(svc: Service) -> None:
    attach(svc, "c1")
    with pytest.raises(Conflict, match="another namespace"):
        attach(svc, "/var/run/docker/netns/c1")
    attach(svc, "4242")
    with pytest.raises(Conflict, match="another namespace"):
        attach(svc, "pid-4242")


def test_repeat_with_other_ifname_is_refused(svc: Service) -> None:
    first = attach(svc, "c1")
    assert attach(svc, "c1", ifname="eth0") == first
    with pytest.raises(Conflict, match="as interface eth0"):
        attach(svc, "c1", ifname="eth3")


def test_repeat_attach_waits_for_the_datapath(svc: Service, store: HookedStore) -> None:
    attach(svc, "c1")
    record = store.get(KEYS.endpoint("blue", "c1"))
    assert record is not None
    reconciler: FakeReconciler = svc.reconciler  # type: ignore[assignment]
    reconciler.waited.clear()
    attach(svc, "c1")
    assert reconciler.waited == [record.mod_revision]
    reconciler.applies = False
    with pytest.raises(DatapathError, match="did not apply"):
        attach(svc, "c1")
    reconciler.applies = True
    reconciler.errors["endpoint:blue/c1"] = "veth refused"
    with pytest.raises(DatapathError, match="veth refused"):
        attach(svc, "c1")


# --- drivers and MTU -------------------------------------------------------------------------
def test_driver_not_loaded_is_refused(svc: Service, store: HookedStore) -> None:
    with pytest.raises(InvalidInput, match=r"driver flannel is not available in this netd "
                                           r"\(available: weave\)"):
        svc.create_network({"name": "f", "subnet": "10.2.0.0/24", "driver": "flannel"})
    assert store.get(KEYS.network("f")) is None
    other = Network(name="f", subnet="10.2.0.0/24", gateway="10.2.0.1", vni=9, mtu=1450,
                    driver="flannel", backend="vxlan")
    store.put(KEYS.network("f"), other.to_json())
    with pytest.raises(Unsupported, match="driver flannel is not available"):
        attach(svc, "c1", network="f")
    assert store.list(KEYS.endpoints())[0] == []


def test_underlay_too_small_for_the_network_is_refused(store: HookedStore) -> None:
    make_service(store).create_network({"name": "blue", "subnet": "10.1.0.0/24"})  # mtu 1450
    small = make_service(store, underlay_mtu=1400)
    # a limit of this host (409: attach elsewhere or raise the MTU), not a missing feature
    with pytest.raises(HostLimit, match=r"underlay MTU 1400 is too small .* needs 1500"):
        attach(small, "c1")
    assert store.list(KEYS.endpoints())[0] == []


# --- MAC claims --------------------------------------------------------------------------------
def test_derived_mac_cannot_duplicate_an_explicit_one(svc: Service, store: HookedStore) -> None:
    attach(svc, "c", ip="10.1.0.5", mac="02:42:0a:01:00:14")
    before = contents(store)
    with pytest.raises(Conflict, match=r"MAC 02:42:0a:01:00:14 is already used by c"):
        attach(svc, "d", ip="10.1.0.20")
    assert contents(store) == before
    with pytest.raises(Conflict, match="already used by c"):
        attach(svc, "e", mac="02:42:0a:01:00:14")
    assert store.get(KEYS.ipam_mac("blue", "02:42:0a:01:00:14")) is not None
    svc.detach({"container": "c", "network": "blue"})
    assert store.get(KEYS.ipam_mac("blue", "02:42:0a:01:00:14")) is None
    assert attach(svc, "d", ip="10.1.0.20")["mac"] == "02:42:0a:01:00:14"


def test_rm_removes_mac_claims(svc: Service, store: HookedStore) -> None:
    attach(svc, "c", mac="02:00:00:00:00:01")
    svc.detach({"container": "c", "network": "blue"})
    svc.remove_network("blue")
    assert store.list(KEYS.ipam("blue"))[0] == []


# --- concurrency within one container ------------------------------------------------------------
def test_concurrent_attaches_of_one_container_get_distinct_ifnames(store: HookedStore) -> None:
    def slow_links(netns: str) -> set[str]:
        time.sleep(0.3)  # both attaches would read the container's links at once
        return {"lo"}

    svc = make_service(store, links=slow_links)
    svc.create_network({"name": "blue", "subnet": "10.1.0.0/24"})
    svc.create_network({"name": "red", "subnet": "10.2.0.0/24"})
    results: dict[str, Any] = {}

    def run(network: str) -> None:
        results[network] = attach(svc, "c1", network=network)

    threads = [threading.Thread(target=run, args=(n,)) for n in ("blue", "red")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert {r["ifname"] for r in results.values()} == {"eth0", "eth1"}


# --- rollback and detach -----------------------------------------------------------------------
def test_failed_attach_leaves_the_store_as_before(svc: Service, store: HookedStore) -> None:
    reconciler: FakeReconciler = svc.reconciler  # type: ignore[assignment]
    before = contents(store)
    reconciler.errors["endpoint:blue/c1"] = "kernel said no"
    with pytest.raises(DatapathError, match="kernel said no"):
        attach(svc, "c1", ip="10.1.0.77")
    assert contents(store) == before  # no sticky name record left behind

    reconciler.errors.clear()
    attach(svc, "c1", ip="10.1.0.5")
    svc.detach({"container": "c1", "network": "blue"})
    before = contents(store)  # c1's sticky reservation is 10.1.0.5
    reconciler.errors["endpoint:blue/c1"] = "kernel said no"
    with pytest.raises(DatapathError):
        attach(svc, "c1", ip="10.1.0.6")
    assert contents(store) == before


def test_detach_replans_when_the_address_record_changes(svc: Service, store: HookedStore) -> None:
    attach(svc, "c1", ip="10.1.0.5")

    def touch_address(ops: Sequence[Operation]) -> None:
        store.before_commit = None
        kv = store.get(KEYS.ipam_address("blue", "10.1.0.5"))
        assert kv is not None
        store.put(kv.key, kv.value)

    store.before_commit = touch_address
    svc.detach({"container": "c1", "network": "blue"})
    assert store.get(KEYS.ipam_address("blue", "10.1.0.5")) is None
    assert store.get(KEYS.endpoint("blue", "c1")) is None
    assert store.list(KEYS.ipam_macs("blue"))[0] == []


def test_detach_reports_the_apply_timeout(svc: Service) -> None:
    attach(svc, "c1")
    svc.reconciler.applies = False  # type: ignore[attr-defined]
    with pytest.raises(DatapathError, match="did not apply"):
        svc.detach({"container": "c1", "network": "blue"})
    assert svc.list_endpoints("blue") == []


def test_detach_by_the_proc_path_of_a_dead_process(svc: Service) -> None:
    attach(svc, "999999999")
    ep = svc.detach({"container": "/proc/999999999/ns/net", "network": "blue"})
    assert ep.name == "pid-999999999"


def test_endpoint_names() -> None:
    assert endpoint_name("/proc/123/ns/net") == "pid-123"
    assert endpoint_name("123") == "pid-123"
    assert endpoint_name("/run/netns/c1") == "c1"
    assert endpoint_name("c1") == "c1"


# --- strict request types -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("request_fields", "message"),
    [
        ({"options": "x"}, "driver options"),
        ({"options": {"a": 1}}, "driver option"),
        ({"vni": 1.9}, "VNI"),
        ({"vni": True}, "VNI"),
        ({"vni": "5"}, "VNI"),
        ({"mtu": 1400.5}, "MTU"),
        ({"encrypt": "false"}, "encrypt"),
        ({"driver": 5}, "driver"),
        ({"subnet": 5}, "subnet"),
        ({"subnet": "224.1.0.0/16"}, "multicast"),
    ],
)
def test_create_refuses_wrong_types(svc: Service, store: HookedStore,
                                    request_fields: dict[str, Any], message: str) -> None:
    before = contents(store)
    with pytest.raises(InvalidInput, match=message):
        svc.create_network({"name": "n", "subnet": "10.9.0.0/24", **request_fields})
    assert contents(store) == before


@pytest.mark.parametrize(
    ("request_fields", "message"),
    [
        ({"sg": "abc"}, "list of strings"),
        ({"sg": [1]}, "list of strings"),
        ({"ip": 5}, "IP"),
        ({"mac": 5}, "MAC"),
        ({"ifname": 5}, "interface name"),
        ({"container": ["c1"]}, "container"),
    ],
)
def test_attach_refuses_wrong_types(svc: Service, store: HookedStore,
                                    request_fields: dict[str, Any], message: str) -> None:
    before = contents(store)
    with pytest.raises(InvalidInput, match=message):
        svc.attach({"container": "c1", "network": "blue", **request_fields})
    assert contents(store) == before


# --- status ---------------------------------------------------------------------------------------
class DownStore(EmbeddedStore):
    def revision(self) -> int:
        raise StoreUnavailable("etcd unreachable at http://192.0.2.9:2379 (connection refused)")

    def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        raise StoreUnavailable("etcd unreachable")

    def get(self, key: str) -> KeyValue | None:
        raise StoreUnavailable("etcd unreachable")


class HangingStore(EmbeddedStore):
    def revision(self) -> int:
        time.sleep(6)
        return 1


@pytest.mark.parametrize("kind", [DownStore, HangingStore])
def test_status_answers_without_the_store(tmp_path: Path, kind: type[EmbeddedStore]) -> None:
    store = kind(tmp_path / "netd.db")
    try:
        svc = make_service(store)
        started = time.monotonic()
        status = svc.status()
        assert time.monotonic() - started < 3.0
    finally:
        store.close()
    assert status["store"]["reachable"] is False
    assert status["store"]["error"]


def test_status_is_not_reachable_while_the_watch_is_dead(svc: Service) -> None:
    """The store answers a probe, but this host's watch is dead: it follows nothing."""
    reconciler = svc.reconciler
    assert isinstance(reconciler, FakeReconciler)
    reconciler.watch_error = "watch on etcd at http://192.0.2.9:2379 presumed dead"
    status = svc.status()
    assert status["store"]["reachable"] is False
    assert "presumed dead" in status["store"]["error"]
    assert "presumed dead" in status["store"]["watch"]
    reconciler.watch_error = ""
    assert svc.status()["store"] | {"revision": 0} == {
        "reachable": True, "revision": 0, "error": "", "watch": "ok", "state": "reachable",
        "unavailable_since": 0.0}


def test_status_probes_a_live_store(svc: Service, store: HookedStore) -> None:
    status = svc.status()
    assert status["store"] == {
        "reachable": True, "revision": store.revision(), "error": "", "watch": "ok",
        "state": "reachable", "unavailable_since": 0.0}



# --- concurrency across hosts (issue 6, defect 1) ----------------------------------------------
def make_host_service(store: EmbeddedStore, host: str) -> Service:
    registration = FakeRegistration(Host(name=host, underlay_ip="192.0.2.9", underlay_mtu=1500))
    return Service(store, KEYS, registration, FakeReconciler(),  # type: ignore[arg-type]
                   WEAVE_SPECS, containers=fake_resolve, links=no_links)


def test_address_taken_under_an_automatic_attach_is_planned_again(
    svc: Service, store: HookedStore
) -> None:
    """Another host takes the very address this attach planned, just before its commit:
    the address and its derived MAC are both taken. That is one race, not a MAC
    conflict: the attach picks another address."""
    other = make_host_service(store, "h2")

    def take_it(ops: Sequence[Operation]) -> None:
        store.before_commit = None
        prefix = KEYS.ipam_addresses("blue")
        planned = next(op for op in ops if isinstance(op, Put) and op.key.startswith(prefix))
        attach(other, "k10", ip=planned.key[len(prefix):])

    store.before_commit = take_it
    mine = attach(svc, "c1")
    theirs = svc.list_endpoints("blue")
    assert {ep.name for ep in theirs} == {"c1", "k10"}
    assert len({ep.ip for ep in theirs}) == 2 and len({ep.mac for ep in theirs}) == 2
    assert mine["mac"] == mac_from_ip(mine["ip"])


def test_automatic_address_whose_derived_mac_is_claimed_is_skipped(
    svc: Service, store: HookedStore
) -> None:
    """A free address whose derived MAC an explicit --mac holds is not handed out; the
    attach takes another free address instead of failing."""
    attach(svc, "x", ip="10.1.0.5", mac=mac_from_ip("10.1.0.7"))
    small = make_service(store)
    small.create_network({"name": "tiny", "subnet": "10.3.0.0/29"})  # 5 usable
    attach(small, "y", network="tiny", ip="10.3.0.2", mac=mac_from_ip("10.3.0.6"))
    got = {attach(small, f"z{i}", network="tiny")["ip"] for i in range(3)}
    assert got == {"10.3.0.3", "10.3.0.4", "10.3.0.5"}
    with pytest.raises(Exhausted, match="no free address"):
        attach(small, "z9", network="tiny")


def test_lost_races_are_contention_not_exhaustion(svc: Service, store: HookedStore) -> None:
    """Every commit loses to a concurrent change: the attach gives up with a 409 that
    says try again - never "no free address" - and writes nothing."""
    def touch_network(ops: Sequence[Operation]) -> None:
        kv = store.get(KEYS.network("blue"))
        assert kv is not None
        EmbeddedStore.put(store, kv.key, kv.value)

    before = contents(store)
    store.before_commit = touch_network
    with pytest.raises(Contention, match="try again") as err:
        attach(svc, "c1")
    assert not isinstance(err.value, Exhausted)
    assert contents(store) == before


def test_threads_on_three_hosts_fill_a_small_network(store: HookedStore) -> None:
    """60 automatic attaches at once from 3 hosts (20 threads each) on a /26 (61 usable):
    all succeed with unique addresses and MACs; the last address is handed out next,
    then "no free address"."""
    services = [make_host_service(store, f"h{n}") for n in range(3)]
    services[0].create_network({"name": "busy", "subnet": "10.96.0.0/26"})
    results: list[dict[str, Any]] = []
    errors: list[str] = []
    start = threading.Barrier(60)

    def run(service: Service, name: str) -> None:
        start.wait(10)
        try:
            results.append(attach(service, name, network="busy"))
        except Exception as exc:
            errors.append(f"{name}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run, args=(services[n % 3], f"c{n}")) for n in range(60)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len({r["ip"] for r in results}) == 60
    assert len({r["mac"] for r in results}) == 60
    last = attach(services[1], "c60", network="busy")["ip"]
    assert last not in {r["ip"] for r in results}
    with pytest.raises(Exhausted, match="no free address"):
        attach(services[2], "c61", network="busy")


# --- security groups (issue 6, defect 5) --------------------------------------------------------
def test_attach_naming_a_missing_security_group_changes_nothing(
    svc: Service, store: HookedStore
) -> None:
    """(Security groups themselves: tests/unit/netd/policy/test_groups.py.)"""
    before = contents(store)
    with pytest.raises(NotFound, match="security group 'web' not found"):
        attach(svc, "c1", sg=["web"])
    assert contents(store) == before


# --- attach cost: this container only (issue 6, build 9) ----------------------------------------
def test_attach_reads_only_its_own_container(svc: Service, store: HookedStore) -> None:
    """After the first attach, an attach lists no endpoint prefix and reads no network
    record: its cost does not grow with the endpoints of the cluster."""
    attach(svc, "c0")
    listed: list[str] = []
    store.before_list = listed.append
    for i in range(1, 20):
        attach(svc, f"c{i}")
    assert [p for p in listed if p.startswith(KEYS.endpoints())] == []


# --- the transaction helper ---------------------------------------------------------------------
def test_transaction_diagnoses_the_failed_condition_and_bounds_retries(
    store: HookedStore,
) -> None:
    a, b = KEYS.network("a"), KEYS.network("b")
    store.put(a, "1")
    kv = store.get(a)
    assert kv is not None
    seen: list[tuple[bool, bool]] = []

    def on_failure(planned: Txn, diagnosis: Diagnosis) -> None:
        seen.append((diagnosis.failed(a), diagnosis.failed(b)))

    stale = Txn((Condition(a, kv.mod_revision - 1), Condition(b, 0)), (Put(b, "x"),))
    with pytest.raises(Contention, match="thing lost to concurrent changes 3 times"):
        transaction.commit(store, lambda: stale, on_failure, what="thing", attempts=3)
    assert seen == [(True, False)] * 3
    assert store.get(b) is None

    plans = iter([stale, Txn((Condition(a, kv.mod_revision),), (Put(b, "y"),))])
    result = transaction.commit(store, lambda: next(plans), on_failure, what="thing")
    assert result is not None and store.get(b) is not None
    assert transaction.commit(store, lambda: None, on_failure, what="nothing") is None


def test_transaction_refusal_from_the_diagnosis_stops_at_once(store: HookedStore) -> None:
    calls = []

    def refuse(planned: Txn, diagnosis: Diagnosis) -> None:
        calls.append(1)
        raise Conflict("taken")

    store.put(KEYS.network("a"), "1")
    with pytest.raises(Conflict, match="taken"):
        transaction.commit(store, lambda: Txn((Condition(KEYS.network("a"), 0),), ()),
                           refuse, what="x")
    assert calls == [1]


# --- the store away: writes refused at once, reads from the last known state ----------------
def test_writes_are_refused_at_once_while_the_store_is_away(
    svc: Service, store: HookedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(context, "WRITE_WAITS_FOR_STORE", 0.2)
    attach(svc, "c1")
    before = contents(store)
    reconciler = svc.reconciler
    assert isinstance(reconciler, FakeReconciler)
    reconciler.watch_error = "watch on etcd at http://192.0.2.9:2379 presumed dead"
    reconciler.down_since = 1_800_000_000.0
    sent: list[str] = []
    store.before_commit = lambda ops: sent.append("commit")
    for write in (lambda: attach(svc, "c2"),
                  lambda: svc.detach({"container": "c1", "network": "blue"}),
                  lambda: svc.create_network({"name": "red", "subnet": "10.2.0.0/24"}),
                  lambda: svc.remove_network("blue"),
                  lambda: svc.create_group({"name": "web"})):
        with pytest.raises(StoreUnavailable) as refused:
            write()
        message = str(refused.value)
        assert "store unavailable since 2027-01-15 08:00:00 UTC" in message, message
        assert "presumed dead" in message and "nothing was changed" in message
        assert "\n" not in message
    assert sent == [] and contents(store) == before
    status = svc.status()["store"]
    assert status["unavailable_since"] == 1_800_000_000.0
    assert status["state"].startswith("store unavailable since 2027-01-15 08:00:00 UTC")


def test_reads_answer_from_the_last_known_state_while_the_store_is_away(
    svc: Service, store: HookedStore
) -> None:
    attach(svc, "c1")
    known = {"networks": svc.list_networks(), "endpoints": svc.list_endpoints(),
             "inspect": svc.inspect_network("blue")}
    reconciler = svc.reconciler
    assert isinstance(reconciler, FakeReconciler)
    reconciler.known = Snapshot(
        networks={n.name: n for n in known["networks"]},  # type: ignore[union-attr]
        endpoints={(e.network, e.name): e for e in known["endpoints"]},  # type: ignore[union-attr]
    )

    def unreachable(_: object) -> None:
        raise StoreUnavailable("etcd unreachable")

    store.before_list = unreachable  # a read that finds the store away falls back too
    assert svc.list_networks() == known["networks"]
    assert svc.list_endpoints("blue") == known["endpoints"]
    reconciler.down_since, reconciler.watch_error = 1.0, "gone"
    store.before_list = lambda prefix: pytest.fail(f"listed {prefix} with the store away")
    assert svc.list_networks() == known["networks"]
    assert svc.list_endpoints() == known["endpoints"]
    assert svc.inspect_network("blue") == known["inspect"]
    with pytest.raises(NotFound):
        svc.inspect_network("red")


# --- a failing-over store: writes are planned again, never applied twice ---------------------
class LosingStore(HookedStore):
    """Applies the `lose`-th commit, then says its outcome is unknown (an etcd member that
    died after it proposed the change); `refuse` commits fail before reaching it."""

    lose = 0
    refuse = 0
    commits = 0

    def commit(self, conditions: Sequence[Condition],
               operations: Sequence[Operation]) -> CommitResult:
        self.commits += 1
        if self.refuse:
            self.refuse -= 1
            raise StoreUnavailable("etcd unreachable at http://192.0.2.9:2379 (no leader)")
        result = super().commit(conditions, operations)
        if self.commits == self.lose:
            raise OutcomeUnknown("etcd at http://192.0.2.9:2379 broke off txn; the change "
                                 "may or may not have been applied")
        return result


@pytest.mark.parametrize("lost", ["attach", "detach"])
def test_a_write_whose_answer_was_lost_is_done_once(tmp_path: Path, lost: str) -> None:
    store = LosingStore(tmp_path / "netd.db")
    try:
        svc = make_service(store)
        svc.create_network({"name": "blue", "subnet": "10.1.0.0/24"})
        if lost == "detach":
            attach(svc, "c1")
        store.lose = store.commits + 1
        store.refuse = 0
        if lost == "attach":
            ep = attach(svc, "c1")
            assert [e.ip for e in svc.list_endpoints("blue")] == [ep["ip"]]
        else:
            svc.detach({"container": "c1", "network": "blue"})
            assert svc.list_endpoints("blue") == []
        kinds = sorted(k.split("/")[4] for k in contents(store) if "/ipam/blue/" in k)
        assert kinds == (["addr", "mac", "names"] if lost == "attach" else ["names"])
    finally:
        store.close()


def test_a_write_meeting_an_election_is_planned_again(tmp_path: Path) -> None:
    store = LosingStore(tmp_path / "netd.db")
    try:
        svc = make_service(store)
        svc.create_network({"name": "blue", "subnet": "10.1.0.0/24"})
        store.refuse = 3
        assert attach(svc, "c1")["name"] == "c1"
        assert len(svc.list_endpoints("blue")) == 1
    finally:
        store.close()
