"""The reconciler with a policy worker: group and membership changes reach the policy
without re-offering drivers, a blocked policy apply does not delay a driver, attaches
wait for the policy too, flow drivers get their policy in HostState.policy."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from netd.model import Endpoint, SecurityGroup, SecurityGroupRule
from netd.policy.worker import PolicyWorker
from netd.reconcile import Reconciler
from tests.support.memwatch import WatchableMemStore
from tests.unit.netd.policy.test_worker import FakeApplier
from tests.unit.netd.test_reconcile import (
    KEYS,
    WAIT,
    FakeDriver,
    add_endpoint,
    endpoint,
    eventually,
    network,
    put,
    start,
)


@pytest.fixture
def store() -> WatchableMemStore:
    from tests.unit.netd.test_reconcile import H1

    s = WatchableMemStore()
    s.put(KEYS.host("h1"), H1.to_json())
    return s


@pytest.fixture
def running() -> Iterator[list[Reconciler]]:
    started: list[Reconciler] = []
    yield started
    for rec in started:
        assert rec.stop(WAIT)


def member(name: str, host: str, ip: str, *groups: str) -> Endpoint:
    ep = endpoint("blue", name, host)
    return Endpoint(**{**ep.to_dict(), "ip": ip, "security_groups": groups})


WEB = SecurityGroup("web", "default", (
    SecurityGroupRule("00000001", "ingress", "tcp", 80, 80, None, "web"),))


def test_membership_reaches_the_policy_not_the_driver(
        store: WatchableMemStore, running: list[Reconciler]) -> None:
    driver = FakeDriver("weave")
    applier = FakeApplier()
    worker = PolicyWorker(applier, retry_interval=0.05)
    put(store, KEYS.network("blue"), network("blue", "weave").to_json())
    put(store, KEYS.security_group("default", "web"), WEB.to_json())
    add_endpoint(store, member("a", "h1", "10.1.0.2", "web"))
    rec = start(store, driver, policy=worker)
    running.append(rec)
    eventually(lambda: bool(applier.applied) and driver.count() > 0)
    drivers_before = driver.count()
    revision = add_endpoint(store, member("b", "h2", "10.1.0.3", "web"))  # remote member
    assert rec.wait_applied(revision, "endpoint:blue/a", WAIT)
    assert applier.applied[-1].members == {"default/web": frozenset({"10.1.0.2", "10.1.0.3"})}
    # a group change re-offers the policy only
    rules = (*WEB.rules, SecurityGroupRule("00000002", "ingress", "icmp", cidr="10.0.0.0/8"))
    before = driver.count()
    revision = put(store, KEYS.security_group("default", "web"),
                   SecurityGroup("web", "default", rules).to_json())
    assert rec.wait_applied(revision, None, WAIT)
    port = applier.applied[-1].port("blue", "a")
    assert port is not None and len(port.ingress) == 2
    assert driver.count() == before  # the driver's state did not change: no apply
    assert "policy" in rec.workers() and drivers_before > 0


def test_a_blocked_policy_apply_does_not_delay_a_driver(
        store: WatchableMemStore, running: list[Reconciler]) -> None:
    driver = FakeDriver("weave")
    applier = FakeApplier()
    worker = PolicyWorker(applier, retry_interval=0.05)
    put(store, KEYS.network("blue"), network("blue", "weave").to_json())
    rec = start(store, driver, policy=worker)
    running.append(rec)
    eventually(lambda: driver.count() > 0)
    applier.gate.clear()
    revision = add_endpoint(store, member("a", "h1", "10.1.0.2"))
    eventually(lambda: any(ns.local for ns in driver.last().networks.values()))
    assert not rec.wait_applied(revision, "endpoint:blue/a", 0.2)  # the attach waits
    applier.gate.set()
    assert rec.wait_applied(revision, "endpoint:blue/a", WAIT)


def test_flow_drivers_get_their_policy_in_host_state(
        store: WatchableMemStore, running: list[Reconciler]) -> None:
    flows = FakeDriver("openflow")
    put(store, KEYS.network("blue"), network("blue", "openflow").to_json())
    put(store, KEYS.security_group("default", "web"), WEB.to_json())
    add_endpoint(store, member("a", "h1", "10.1.0.2", "web"))
    rec = start(store, flows, flow_policy_drivers=frozenset({"openflow"}))
    running.append(rec)
    eventually(lambda: flows.count() > 0 and flows.last().policy is not None)
    policy = flows.last().policy
    assert policy is not None
    (port,) = policy.ports
    assert (port.endpoint, port.ip, port.groups) == ("a", "10.1.0.2", ("web",))
    assert policy.members == {"default/web": frozenset({"10.1.0.2"})}
