"""calc is pure: snapshots in, desired host states out."""

from __future__ import annotations

from netd.calc import Snapshot, desired_states
from netd.model import Endpoint, Host, Network
from netd.store.keys import Keys


def ep(name: str, host: str, network: str = "blue", ip: str = "10.1.0.5") -> Endpoint:
    return Endpoint(network=network, name=name, container=name, netns=f"/run/netns/{name}",
                    host=host, ifname="eth0", ip=ip, mac="02:42:0a:01:00:05")


BLUE = Network(name="blue", subnet="10.1.0.0/24", gateway="10.1.0.1", vni=5, mtu=1450)
RED = Network(name="red", subnet="10.2.0.0/24", gateway="10.2.0.1", vni=6, mtu=1450)
H1 = Host(name="h1", underlay_ip="192.0.2.1")
H2 = Host(name="h2", underlay_ip="192.0.2.2")
H3 = Host(name="h3", underlay_ip="192.0.2.3")


def test_serves_only_networks_with_local_endpoints() -> None:
    snap = Snapshot(
        networks={"blue": BLUE, "red": RED},
        endpoints={("blue", "a"): ep("a", "h1"), ("red", "b"): ep("b", "h2", "red")},
        hosts={"h1": H1, "h2": H2},
    )
    state = desired_states(snap, H1, {"weave"})["weave"]
    assert set(state.networks) == {"blue"}
    assert state.networks["blue"].remote == ()
    assert state.networks["blue"].peers == ()


def test_remote_endpoints_only_on_live_hosts() -> None:
    snap = Snapshot(
        networks={"blue": BLUE},
        endpoints={
            ("blue", "a"): ep("a", "h1"),
            ("blue", "b"): ep("b", "h2"),
            ("blue", "c"): ep("c", "h3"),  # h3's lease expired: not in hosts
        },
        hosts={"h1": H1, "h2": H2},
    )
    ns = desired_states(snap, H1, {"weave"})["weave"].networks["blue"]
    assert [e.name for e in ns.local] == ["a"]
    assert [e.name for e in ns.remote] == ["b"]
    assert ns.peers == (H2,)


def test_other_drivers_are_left_out() -> None:
    other = Network(name="f", subnet="10.3.0.0/24", gateway="10.3.0.1", vni=1, mtu=1450,
                    driver="flannel", backend="vxlan")
    snap = Snapshot(networks={"f": other}, endpoints={("f", "a"): ep("a", "h1", "f")},
                    hosts={"h1": H1})
    states = desired_states(snap, H1, {"weave", "flannel"})
    assert states["weave"].networks == {}
    assert set(states["flannel"].networks) == {"f"}


def test_snapshot_decodes_store_and_skips_garbage() -> None:
    keys = Keys()
    snap = Snapshot.from_kvs(keys, {
        keys.network("blue"): BLUE.to_json(),
        keys.endpoint("blue", "a"): ep("a", "h1").to_json(),
        keys.host("h1"): H1.to_json(),
        keys.host("bad"): "{not json",
        keys.network_key("blue"): "00" * 32,
        "/elsewhere/x": "y",
    })
    assert snap.networks == {"blue": BLUE}
    assert list(snap.endpoints) == [("blue", "a")]
    assert list(snap.hosts) == ["h1"]
    assert snap.secrets == {"blue": "00" * 32}
