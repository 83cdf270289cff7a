"""netd.health without sockets: probes sent, answered or lost, and what `host ls` shows
(loss, the path-MTU binary search, the flags with their advice, unreachable peers)."""

from __future__ import annotations

import time
from typing import Any

from netd.calc import Snapshot
from netd.health import GRACE, HealthProber, _Sent, decode, frame, probe_mac
from netd.model import Endpoint, Host, Network
from plugins.weave import names as weave_names

assert weave_names.bridge_name(5)  # weave's link names are claimed on import
ME = Host(name="h1", underlay_ip="10.0.0.1")
PEER = Host(name="h2", underlay_ip="10.0.0.2")
NET = Network(name="blue", subnet="10.1.0.0/24", gateway="10.1.0.1", vni=5, mtu=1450)


def ep(name: str, host: str) -> Endpoint:
    return Endpoint(network="blue", name=name, container=name, netns=f"/run/netns/{name}",
                    host=host, ifname="eth0", ip="10.1.0.2", mac="02:00:00:00:00:01")


SNAPSHOT = Snapshot(networks={"blue": NET},
                    endpoints={("blue", "a"): ep("a", "h1"), ("blue", "b"): ep("b", "h2")},
                    hosts={"h1": ME, "h2": PEER})


class FakeNetwork:
    """Answers probes up to `mtu` bytes on every path (None: answers nothing)."""

    def __init__(self, prober: HealthProber, mtu: int | None) -> None:
        self.prober = prober
        self.mtu = mtu
        self.sent: list[tuple[str, str, int]] = []

    def send(self, me: Host, peers: list[str], path: str, how: Any, kind: str,
             size: int) -> None:
        prober = self.prober
        for peer in peers:
            with prober._lock:
                prober._seq += 1
                seq = prober._seq
                prober._sent[seq] = _Sent(peer, path, size, time.monotonic() - 0.001, kind)
            self.sent.append((path, kind, size))
            if self.mtu is not None and size <= self.mtu:
                prober._answered(seq, peer)


def prober_with(mtu: int | None) -> tuple[HealthProber, FakeNetwork]:
    prober = HealthProber(lambda: ME, lambda: SNAPSHOT, host_ttl=30, interval=0.0)
    fake = FakeNetwork(prober, mtu)
    prober._send = fake.send  # type: ignore[method-assign]
    return prober, fake


def rounds(prober: HealthProber, n: int) -> None:
    for _ in range(n):
        prober.probe_round()


def test_a_healthy_peer_on_both_paths() -> None:
    prober, _ = prober_with(9000)
    rounds(prober, 3)
    peer = prober.peers()["h2"]
    assert peer["health"] == "healthy" and peer["loss"] == 0 and peer["flags"] == []
    assert peer["paths"]["blue"]["path_mtu"] == 1450
    assert peer["paths"]["underlay"]["path_mtu"] == 1500
    assert peer["lease_expires_by"] > time.time()


def test_the_path_mtu_is_searched_and_flagged_with_advice() -> None:
    prober, fake = prober_with(1300)
    rounds(prober, 14)
    peer = prober.peers()["h2"]
    blue = peer["paths"]["blue"]
    assert blue["mtu_ok"] is False and 1292 <= blue["path_mtu"] <= 1300
    assert peer["health"] == "degraded"
    advice = next(f for f in peer["flags"] if "network blue" in f)
    assert f"--mtu {blue['path_mtu']}" in advice
    assert any("underlay carries only" in f for f in peer["flags"])
    assert any(kind == "search" for _, kind, _ in fake.sent)


def test_a_silent_peer_is_unreachable() -> None:
    prober, fake = prober_with(9000)
    rounds(prober, 2)
    fake.mtu = None
    prober._paths[("h2", "underlay")].last_seen -= 10
    prober._paths[("h2", "blue")].last_seen -= 10
    rounds(prober, 2)
    assert prober.peers()["h2"]["health"] == "unreachable"


def test_losses_before_a_new_path_came_up_do_not_count() -> None:
    prober, _ = prober_with(None)
    rounds(prober, 3)
    assert prober.peers()["h2"]["loss"] is None  # still within GRACE
    for state in prober._paths.values():
        state.created -= GRACE + 1
    rounds(prober, 3)
    assert prober.peers()["h2"]["loss"] == 1


def test_frames_carry_their_message_padded_to_size() -> None:
    data = frame(probe_mac("h1"), {"t": "req", "seq": 1}, 1450)
    assert len(data) == 14 + 1450 and data[:6] == b"\xff" * 6 and data[12:14] == b"\x88\xb5"
    assert decode(data[14:]) == {"t": "req", "seq": 1}
    assert probe_mac("h1")[0] == 0x02 and probe_mac("h1") != probe_mac("h2")
