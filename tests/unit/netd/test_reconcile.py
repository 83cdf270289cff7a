"""The reconciler over a watchable in-memory store and fake drivers: one worker per
driver, waits on the worker that owns an item, retries, resyncs, driver prefixes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from netd import liveness
from netd.errors import DatapathError
from netd.liveness import echo_reply_from, echo_request
from netd.model import Endpoint, Host, Network
from netd.plugin import ApplyReport, BackendSpec, DriverSpec, HostState, endpoint_id
from netd.reconcile import Reconciler
from netd.store.keys import Keys
from tests.support.memwatch import WatchableMemStore

KEYS = Keys()
H1 = Host(name="h1", underlay_ip="192.0.2.1")
H2 = Host(name="h2", underlay_ip="192.0.2.2")
WAIT = 5.0  # generous: only a hang reaches it


class FakeDriver:
    """Records every apply; `gate` (when set) blocks applies until released; `fail`
    decides per call which items fail."""

    def __init__(self, name: str, watch_prefixes: tuple[str, ...] = ()) -> None:
        self.spec = DriverSpec(name=name, backends=(BackendSpec("b", 0),), default_backend="b",
                               watch_prefixes=watch_prefixes)
        self.applies: list[tuple[HostState, bool, bool]] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.fail: Callable[[HostState], dict[str, str]] = lambda desired: {}
        self.lock = threading.Lock()

    def apply(self, desired: HostState, *, sweep: bool, verify: bool) -> ApplyReport:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(WAIT)
        with self.lock:
            self.applies.append((desired, sweep, verify))
        return ApplyReport(errors=dict(self.fail(desired)))

    def last(self) -> HostState:
        with self.lock:
            return self.applies[-1][0]

    def count(self) -> int:
        with self.lock:
            return len(self.applies)

    def observe(self) -> dict[str, Any]:
        return {}

    def setup(self) -> dict[str, Any]:
        return {}

    def teardown(self) -> None:
        pass

    def close(self) -> None:
        pass


def network(name: str, driver: str) -> Network:
    return Network(name=name, subnet="10.1.0.0/24", gateway="10.1.0.1", vni=len(name),
                   mtu=1450, driver=driver, backend="b")


def endpoint(net: str, name: str, host: str = "h1") -> Endpoint:
    return Endpoint(network=net, name=name, container=name, netns=f"/run/netns/{name}",
                    host=host, ifname="eth0", ip="10.1.0.5", mac="02:42:0a:01:00:05")


def put(store: WatchableMemStore, key: str, value: str) -> int:
    return store.put(key, value)


def add_endpoint(store: WatchableMemStore, ep: Endpoint) -> int:
    return store.put(KEYS.endpoint(ep.network, ep.name), ep.to_json())


def eventually(check: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


@pytest.fixture
def store() -> WatchableMemStore:
    s = WatchableMemStore()
    s.put(KEYS.host("h1"), H1.to_json())
    return s


def start(store: WatchableMemStore, *drivers: FakeDriver, **kw: Any) -> Reconciler:
    rec = Reconciler(store, KEYS, {d.spec.name: d for d in drivers}, lambda: H1,
                     retry_interval=kw.pop("retry_interval", 0.05), **kw)
    rec.start()
    return rec


@pytest.fixture
def running() -> Iterator[list[Reconciler]]:
    started: list[Reconciler] = []
    yield started
    for rec in started:
        assert rec.stop(WAIT)


def test_a_blocked_driver_does_not_delay_another_drivers_apply(
    store: WatchableMemStore, running: list[Reconciler]
) -> None:
    slow, fast = FakeDriver("slow"), FakeDriver("fast")
    store.put(KEYS.network("s"), network("s", "slow").to_json())
    store.put(KEYS.network("f"), network("f", "fast").to_json())
    rec = start(store, slow, fast)
    running.append(rec)
    assert rec.wait_applied(store.revision(), None, WAIT)
    slow.gate, slow.entered = threading.Event(), threading.Event()
    try:
        add_endpoint(store, endpoint("s", "a"))
        assert slow.entered.wait(WAIT)  # the slow driver is now stuck in apply
        revision = add_endpoint(store, endpoint("f", "b"))
        started = time.monotonic()
        assert rec.wait_applied(revision, "endpoint:f/b", WAIT)
        assert time.monotonic() - started < 1.0
        assert [e.name for e in fast.last().networks["f"].local] == ["b"]
        assert not rec.wait_applied(revision, "endpoint:s/a", 0.1)
        status = rec.status().workers
        assert status["slow"].applying_since > 0 and status["fast"].applying_since == 0
        assert status["fast"].revision >= revision > status["slow"].revision
    finally:
        slow.gate.set()
    assert rec.wait_applied(revision, "endpoint:s/a", WAIT)
    assert [e.name for e in slow.last().networks["s"].local] == ["a"]


def test_a_removal_waits_only_for_the_driver_that_served_the_item(
    store: WatchableMemStore, running: list[Reconciler]
) -> None:
    slow, fast = FakeDriver("slow"), FakeDriver("fast")
    store.put(KEYS.network("s"), network("s", "slow").to_json())
    store.put(KEYS.network("f"), network("f", "fast").to_json())
    add_endpoint(store, endpoint("f", "b"))
    rec = start(store, slow, fast)
    running.append(rec)
    assert rec.wait_applied(store.revision(), None, WAIT)
    slow.gate, slow.entered = threading.Event(), threading.Event()
    try:
        add_endpoint(store, endpoint("s", "a"))
        assert slow.entered.wait(WAIT)
        assert store.delete(KEYS.endpoint("f", "b"))
        revision = store.revision()
        assert rec.owner_of("endpoint:f/b") == "fast"
        assert rec.wait_applied(revision, "endpoint:f/b", WAIT)
        last = fast.last().networks.get("f")
        assert last is None or last.local == ()
        assert not rec.wait_applied(revision, None, 0.1)
    finally:
        slow.gate.set()


def test_a_driver_whose_state_did_not_change_is_not_called(
    store: WatchableMemStore, running: list[Reconciler]
) -> None:
    one, two = FakeDriver("one"), FakeDriver("two")
    store.put(KEYS.network("n1"), network("n1", "one").to_json())
    rec = start(store, one, two)
    running.append(rec)
    assert rec.wait_applied(store.revision(), None, WAIT)
    calls = two.count()
    revision = add_endpoint(store, endpoint("n1", "a"))
    assert rec.wait_applied(revision, None, WAIT)  # every worker counts it as applied
    assert two.count() == calls
    assert rec.status().workers["two"].revision >= revision


def test_first_apply_verifies_without_sweeping_then_events_sweep_without_verifying(
    store: WatchableMemStore, running: list[Reconciler]
) -> None:
    drv = FakeDriver("d")
    rec = start(store, drv)
    running.append(rec)
    eventually(lambda: drv.count() >= 1)
    assert drv.applies[0][1:] == (False, True)  # sweep, verify
    store.put(KEYS.network("n"), network("n", "d").to_json())
    revision = add_endpoint(store, endpoint("n", "a"))
    assert rec.wait_applied(revision, "endpoint:n/a", WAIT)
    assert drv.applies[-1][1:] == (True, False)


def test_failed_item_is_reported_and_retried_without_a_store_change(
    store: WatchableMemStore, running: list[Reconciler]
) -> None:
    drv = FakeDriver("d")
    failures = iter([{"endpoint:n/a": "veth refused"}])
    drv.fail = lambda desired: next(failures, {})
    store.put(KEYS.network("n"), network("n", "d").to_json())
    revision = add_endpoint(store, endpoint("n", "a"))
    rec = start(store, drv, retry_interval=0.5)
    running.append(rec)
    assert rec.wait_applied(revision, "endpoint:n/a", WAIT)
    assert rec.item_error("endpoint:n/a") == "veth refused"
    assert rec.status().workers["d"].retry_in > 0
    eventually(lambda: rec.item_error("endpoint:n/a") is None)
    assert drv.count() == 2  # the failing first sync and its retry
    assert drv.applies[1][0] is drv.applies[0][0]  # the same desired state, again
    assert rec.status().errors == {}


def test_driver_exception_becomes_a_driver_item_error(
    store: WatchableMemStore, running: list[Reconciler]
) -> None:
    drv = FakeDriver("d")

    def boom(desired: HostState) -> dict[str, str]:
        raise DatapathError("netlink went away")

    drv.fail = boom
    rec = start(store, drv, retry_interval=10.0)
    running.append(rec)
    assert rec.wait_applied(store.revision(), None, WAIT)
    assert rec.item_error("driver:d") == "netlink went away"
    assert rec.owner_of("driver:d") == "d"


def test_request_resync_applies_with_verify(
    store: WatchableMemStore, running: list[Reconciler]
) -> None:
    drv = FakeDriver("d")
    rec = start(store, drv)
    running.append(rec)
    eventually(lambda: drv.count() >= 1)
    before = drv.count()
    rec.request_resync("d")
    eventually(lambda: drv.count() > before)
    assert drv.applies[-1][2] is True


def test_periodic_resync_verifies_the_same_state(
    store: WatchableMemStore, running: list[Reconciler]
) -> None:
    drv = FakeDriver("d")
    rec = start(store, drv, resync_interval=0.1)
    running.append(rec)
    eventually(lambda: drv.count() >= 3)
    assert all(verify for _, _, verify in drv.applies)


def test_records_under_a_driver_prefix_reach_only_that_driver(
    store: WatchableMemStore, running: list[Reconciler]
) -> None:
    flannelish = FakeDriver("f", watch_prefixes=("/coreos.com/network/subnets/",))
    other = FakeDriver("o")
    store.put("/coreos.com/network/subnets/10.5.1.0-24", '{"PublicIP": "192.0.2.9"}')
    rec = start(store, flannelish, other)
    running.append(rec)
    eventually(lambda: flannelish.count() >= 1)
    assert flannelish.last().records == {
        "/coreos.com/network/subnets/10.5.1.0-24": '{"PublicIP": "192.0.2.9"}'}
    store.put("/coreos.com/network/subnets/10.5.2.0-24", '{"PublicIP": "192.0.2.8"}')
    store.delete("/coreos.com/network/subnets/10.5.1.0-24")
    eventually(lambda: set(flannelish.last().records)
               == {"/coreos.com/network/subnets/10.5.2.0-24"})
    assert other.last().records == {}
    store.put("/coreos.com/network/config", "{}")  # outside the declared prefix
    time.sleep(0.2)
    assert "/coreos.com/network/config" not in flannelish.last().records


def test_a_compacted_watch_relists(store: WatchableMemStore, running: list[Reconciler]) -> None:
    drv = FakeDriver("d")
    store.put(KEYS.network("n"), network("n", "d").to_json())
    rec = start(store, drv)
    running.append(rec)
    assert rec.wait_applied(store.revision(), None, WAIT)
    store.broken = True
    store.wake()
    eventually(lambda: not rec.status().store_ok)
    revision = add_endpoint(store, endpoint("n", "a"))  # missed by the dead watch
    store.compact(store.revision() + 1)
    store.broken = False
    assert rec.wait_applied(revision, "endpoint:n/a", WAIT)
    assert [e.name for e in drv.last().networks["n"].local] == ["a"]
    assert rec.status().store_ok


def test_a_vanished_host_stays_for_the_grace_then_goes(
    store: WatchableMemStore, running: list[Reconciler]
) -> None:
    drv = FakeDriver("d")
    store.put(KEYS.network("n"), network("n", "d").to_json())
    store.put(KEYS.host("h2"), H2.to_json())
    add_endpoint(store, endpoint("n", "a"))
    add_endpoint(store, endpoint("n", "b", host="h2"))
    rec = start(store, drv, host_grace=0.5)
    running.append(rec)
    assert rec.wait_applied(store.revision(), None, WAIT)
    assert [e.name for e in drv.last().networks["n"].remote] == ["b"]
    revision = store.revision() + 1
    store.delete(KEYS.host("h2"))
    assert rec.wait_applied(revision, None, WAIT)
    assert [e.name for e in drv.last().networks["n"].remote] == ["b"]  # within the grace
    eventually(lambda: drv.last().networks["n"].remote == ())


def test_a_vanished_host_that_still_answers_stays_until_it_falls_silent(
    store: WatchableMemStore, running: list[Reconciler]
) -> None:
    """Its lease lapsed because it lost the store, not because it died: kept while it
    answers on the underlay, dropped after the grace once it does not."""
    drv = FakeDriver("d")
    answers = threading.Event()
    answers.set()
    asked: list[str] = []

    def still_there(host: Host) -> bool:
        asked.append(host.name)
        return answers.is_set()

    store.put(KEYS.network("n"), network("n", "d").to_json())
    store.put(KEYS.host("h2"), H2.to_json())
    add_endpoint(store, endpoint("n", "a"))
    add_endpoint(store, endpoint("n", "b", host="h2"))
    rec = start(store, drv, host_grace=0.3, still_there=still_there)
    running.append(rec)
    assert rec.wait_applied(store.revision(), None, WAIT)
    store.delete(KEYS.host("h2"))
    time.sleep(1.0)  # well past the grace
    assert [e.name for e in drv.last().networks["n"].remote] == ["b"]
    assert "h2" in asked
    answers.clear()
    eventually(lambda: drv.last().networks["n"].remote == ())


def test_echo_request_and_reply_parsing() -> None:
    request = echo_request(0x1234, 7)
    assert liveness._checksum(request) == 0
    reply = bytes([0x45]) + bytes(19) + bytes([0, 0]) + request[2:4] + request[4:]
    assert echo_reply_from(reply, 0x1234)
    assert not echo_reply_from(reply, 0x4321)
    assert not echo_reply_from(bytes([0x45]) + bytes(19) + request, 0x1234)  # a request


def test_wait_applied_for_an_item_of_no_loaded_driver_does_not_wait(
    store: WatchableMemStore, running: list[Reconciler]
) -> None:
    slow = FakeDriver("slow")
    store.put(KEYS.network("s"), network("s", "slow").to_json())
    rec = start(store, slow)
    running.append(rec)
    assert rec.wait_applied(store.revision(), None, WAIT)
    slow.gate = threading.Event()
    try:
        add_endpoint(store, endpoint("s", "a"))
        revision = store.put(KEYS.network("x"), network("x", "absent").to_json())
        assert rec.wait_applied(revision, "network:x", 1.0)
        assert rec.owner_of(endpoint_id(endpoint("x", "e"))) is None
    finally:
        slow.gate.set()


def test_the_prober_hears_a_host_that_answers() -> None:
    """(Silence is proved by the functional dead-host test: probes go to loopback only
    here.)"""
    import socket

    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()
    except PermissionError:
        pytest.skip("raw ICMP sockets need CAP_NET_RAW")
    prober = liveness.UnderlayProber(interval=0.2)
    prober.start()
    try:
        assert not prober.answering("127.0.0.1")  # asked first: probing starts now
        eventually(lambda: prober.answering("127.0.0.1"))
    finally:
        prober.stop()
