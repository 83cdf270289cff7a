"""netd.events: the bus's long poll and the watcher's differences, with a fake reconciler."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pytest

from netd.calc import Snapshot
from netd.errors import InvalidInput
from netd.events import EventBus, EventWatcher, read_query
from netd.model import Endpoint, Host, Network

NET = Network(name="blue", subnet="10.1.0.0/24", gateway="10.1.0.1", vni=5, mtu=1450)


def ep(name: str, host: str = "h1") -> Endpoint:
    return Endpoint(network="blue", name=name, container=name, netns=f"/run/netns/{name}",
                    host=host, ifname="eth0", ip="10.1.0.2", mac="02:00:00:00:00:01")


@dataclass
class FakeStatus:
    revision: int = 0
    seen_revision: int = 0
    errors: dict[str, str] = field(default_factory=dict)
    store_ok: bool = True
    store_error: str = ""


class FakeReconciler:
    def __init__(self) -> None:
        self.state = FakeStatus()
        self.snap = Snapshot(hosts={"h1": Host(name="h1", underlay_ip="10.0.0.1")})

    def status(self) -> FakeStatus:
        return self.state

    def snapshot(self) -> Snapshot:
        return self.snap


def kinds(bus: EventBus) -> list[str]:
    return [e["kind"] for e in bus.read(0, 0)["events"]]


def test_long_poll_answers_when_an_event_comes() -> None:
    bus = EventBus()
    threading.Timer(0.2, lambda: bus.publish("x", "hello")).start()
    started = time.monotonic()
    answer = bus.read(0, 5)
    assert [e["message"] for e in answer["events"]] == ["hello"]
    assert time.monotonic() - started < 2 and answer["next"] == 1
    assert bus.read(1, 0.1)["events"] == []


def test_a_full_buffer_says_what_was_missed() -> None:
    bus = EventBus(capacity=3)
    for i in range(5):
        bus.publish("x", str(i))
    answer = bus.read(0, 0)
    assert [e["seq"] for e in answer["events"]] == [3, 4, 5] and answer["missed"] == 2


@pytest.mark.parametrize("query", [{"wait": "31"}, {"wait": "-1"}, {"since": "x"},
                                   {"wait": "nan"}, {"since": "-2"}])
def test_bad_queries(query: dict[str, str]) -> None:
    with pytest.raises(InvalidInput):
        read_query(EventBus(), query)


def test_the_watcher_publishes_what_changed() -> None:
    bus, rec = EventBus(), FakeReconciler()
    watcher = EventWatcher(bus, rec, lambda: "h1")
    watcher.step()
    assert kinds(bus) == []  # what was there at start is not news
    rec.snap = Snapshot(networks={"blue": NET}, endpoints={("blue", "a"): ep("a")},
                        hosts={**rec.snap.hosts, "h2": Host(name="h2", underlay_ip="10.0.0.2")})
    rec.state = FakeStatus(revision=4, seen_revision=5)
    watcher.step()
    assert kinds(bus) == ["network.created", "host.joined"]  # a: not applied yet
    rec.state = FakeStatus(revision=5, seen_revision=5)
    watcher.step()
    assert kinds(bus)[-1] == "endpoint.applied"
    rec.state = FakeStatus(revision=5, seen_revision=5, errors={"endpoint:blue/a": "boom"},
                           store_ok=False, store_error="etcd down")
    watcher.step()
    assert kinds(bus)[-2:] == ["store.down", "failure"]
    rec.snap = Snapshot(networks={"blue": NET}, hosts=rec.snap.hosts)
    rec.state = FakeStatus(revision=6, seen_revision=6)
    watcher.step()
    assert kinds(bus)[-3:] == ["store.up", "endpoint.removed", "recovered"]
    watcher.peer_changed("h2", "healthy", "unreachable")
    watcher.peer_changed("h2", "unreachable", "healthy")
    assert kinds(bus)[-2:] == ["peer.down", "peer.up"]
