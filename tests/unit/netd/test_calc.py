"""calc is pure: snapshots in, desired host states out."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netd.calc import DesiredState, Snapshot, desired_states
from netd.model import Endpoint, Host, HostRoles, Network
from netd.store.keys import Keys, Record, RecordKinds


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


# --- roles ----------------------------------------------------------------------------
def test_a_role_on_a_network_serves_it_without_a_local_endpoint() -> None:
    snap = Snapshot(
        networks={"blue": BLUE},
        endpoints={("blue", "b"): ep("b", "h2")},
        hosts={"h1": H1, "h2": H2},
        roles={("blue", "h1"): HostRoles(network="blue", host="h1", roles=("expose",))},
    )
    ns = desired_states(snap, H1, {"weave"})["weave"].networks["blue"]
    assert ns.local == () and ns.roles == ("expose",)
    assert [e.name for e in ns.remote] == ["b"] and ns.peers == (H2,)


def test_a_host_with_a_role_is_a_peer_of_the_hosts_with_endpoints() -> None:
    snap = Snapshot(
        networks={"blue": BLUE},
        endpoints={("blue", "a"): ep("a", "h1")},
        hosts={"h1": H1, "h2": H2, "h3": H3},
        roles={("blue", "h2"): HostRoles(network="blue", host="h2", roles=("expose",)),
               ("blue", "h3"): HostRoles(network="blue", host="h3", roles=())},
    )
    ns = desired_states(snap, H1, {"weave"})["weave"].networks["blue"]
    assert ns.peers == (H2,) and ns.roles == ()


# --- incremental ----------------------------------------------------------------------
KEYS = Keys()


def incremental(*records: tuple[str, str]) -> DesiredState:
    state = DesiredState(RecordKinds(KEYS, {"flannel": ("/coreos.com/network/subnets/",)}))
    for key, value in records:
        state.put(key, value)
    return state


def test_untouched_networks_keep_their_state_object() -> None:
    state = incremental(
        (KEYS.network("blue"), BLUE.to_json()), (KEYS.network("red"), RED.to_json()),
        (KEYS.host("h1"), H1.to_json()), (KEYS.host("h2"), H2.to_json()),
        (KEYS.endpoint("blue", "a"), ep("a", "h1").to_json()),
        (KEYS.endpoint("red", "b"), ep("b", "h1", "red").to_json()),
    )
    first = state.states(H1, ["weave", "flannel"])["weave"]
    state.put(KEYS.endpoint("blue", "c"), ep("c", "h2").to_json())
    second = state.states(H1, ["weave", "flannel"])
    assert second["weave"].networks["red"] is first.networks["red"]
    assert second["weave"].networks["blue"] is not first.networks["blue"]
    assert [e.name for e in second["weave"].networks["blue"].remote] == ["c"]
    # a driver none of whose networks changed gets the very same HostState
    third = state.states(H1, ["weave", "flannel"])
    assert third["weave"] is second["weave"] and third["flannel"] is second["flannel"]


def test_records_not_of_desired_state_touch_nothing() -> None:
    state = incremental((KEYS.network("blue"), BLUE.to_json()),
                        (KEYS.endpoint("blue", "a"), ep("a", "h1").to_json()))
    first = state.states(H1, ["weave"])["weave"]
    for key in (KEYS.ipam_address("blue", "10.1.0.9"), KEYS.vni(5), KEYS.tenant("t"),
                KEYS.network_removal("blue"), "/elsewhere/x"):
        assert state.put(key, '{"owner": "x"}') is False
    assert state.states(H1, ["weave"])["weave"] is first


def test_host_changes_recompute_every_network() -> None:
    state = incremental((KEYS.network("blue"), BLUE.to_json()),
                        (KEYS.endpoint("blue", "a"), ep("a", "h1").to_json()),
                        (KEYS.endpoint("blue", "b"), ep("b", "h2").to_json()))
    assert state.states(H1, ["weave"])["weave"].networks["blue"].remote == ()
    state.put(KEYS.host("h2"), H2.to_json())
    ns = state.states(H1, ["weave"])["weave"].networks["blue"]
    assert [e.name for e in ns.remote] == ["b"] and ns.peers == (H2,)
    moved = Host(name="h1", underlay_ip="192.0.2.99")  # this host's own data changed
    assert state.states(moved, ["weave"])["weave"].host == moved
    state.delete(KEYS.host("h2"))
    assert state.states(moved, ["weave"])["weave"].networks["blue"].remote == ()


def test_departed_hosts_count_as_alive_while_given() -> None:
    state = incremental((KEYS.network("blue"), BLUE.to_json()),
                        (KEYS.endpoint("blue", "a"), ep("a", "h1").to_json()),
                        (KEYS.endpoint("blue", "b"), ep("b", "h2").to_json()))
    ns = state.states(H1, ["weave"], {"h2": H2})["weave"].networks["blue"]
    assert ns.peers == (H2,)
    assert state.states(H1, ["weave"], {})["weave"].networks["blue"].peers == ()


def test_driver_records_go_to_their_driver_only() -> None:
    key = "/coreos.com/network/subnets/10.5.1.0-24"
    state = incremental((key, '{"PublicIP": "192.0.2.9"}'))
    states = state.states(H1, ["weave", "flannel"])
    assert states["flannel"].records == {key: '{"PublicIP": "192.0.2.9"}'}
    assert states["weave"].records == {}
    state.delete(key)
    assert state.states(H1, ["weave", "flannel"])["flannel"].records == {}


def test_a_network_removed_or_garbled_leaves_the_state() -> None:
    state = incremental((KEYS.network("blue"), BLUE.to_json()),
                        (KEYS.endpoint("blue", "a"), ep("a", "h1").to_json()))
    assert set(state.states(H1, ["weave"])["weave"].networks) == {"blue"}
    state.put(KEYS.network("blue"), "{garbage")
    assert state.states(H1, ["weave"])["weave"].networks == {}
    state.put(KEYS.network("blue"), BLUE.to_json())
    assert set(state.states(H1, ["weave"])["weave"].networks) == {"blue"}
    state.delete(KEYS.network("blue"))
    assert state.states(H1, ["weave"])["weave"].networks == {}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 11)), max_size=40))
def test_incremental_equals_computing_everything(steps: list[tuple[bool, int]]) -> None:
    """Any sequence of puts and deletes leaves DesiredState where the whole computation
    from the same records lands."""
    pool: list[tuple[str, str]] = [
        (KEYS.network("blue"), BLUE.to_json()),
        (KEYS.network("red"), RED.to_json()),
        (KEYS.host("h2"), H2.to_json()),
        (KEYS.host("h3"), H3.to_json()),
        (KEYS.network_key("blue"), "ab" * 32),
        (KEYS.host_role("red", "h1"),
         HostRoles(network="red", host="h1", roles=("expose",)).to_json()),
        (KEYS.host_role("blue", "h3"),
         HostRoles(network="blue", host="h3", roles=("expose",)).to_json()),
    ] + [
        (KEYS.endpoint(net, name), ep(name, host, net).to_json())
        for net, name, host in [("blue", "a", "h1"), ("blue", "b", "h2"), ("red", "c", "h3"),
                                ("red", "d", "h1"), ("blue", "e", "h3")]
    ]
    state = incremental()
    present: dict[str, str] = {}
    for is_put, index in steps:
        key, value = pool[index]
        if is_put:
            state.put(key, value)
            present[key] = value
        else:
            state.delete(key)
            present.pop(key, None)
        got = state.states(H1, ["weave"])["weave"]
        want = desired_states(Snapshot.from_kvs(KEYS, present), H1, {"weave"})["weave"]
        assert dict(got.networks) == dict(want.networks)
        assert dict(got.hosts) == dict(want.hosts)


def test_record_kinds_classify_root_kinds_and_drivers_prefixes() -> None:
    kinds = RecordKinds(KEYS, {"a": ("/x/",), "b": ("/x/y/", "/z/"), "c": ("/z/",)})
    assert kinds.prefixes() == [KEYS.root(), "/x/", "/z/"]
    assert kinds.classify(KEYS.endpoint("blue", "c1")) == Record("endpoints", ("blue", "c1"))
    assert kinds.classify(KEYS.host_role("blue", "h1")) == Record("roles", ("blue", "h1"))
    assert kinds.classify(KEYS.ipam_address("blue", "10.1.0.5")) is None
    assert kinds.classify(KEYS.endpoints("blue")) is None  # a prefix, not a record
    assert kinds.classify("/x/y/k") == Record("driver", ("/x/y/", "k"), ("a", "b"))
    assert kinds.classify("/x/k").owners == ("a",)
    assert kinds.classify("/z/k").owners == ("b", "c")
    assert kinds.classify("/elsewhere/k") is None
    with pytest.raises(ValueError, match="overlaps netd's own"):
        RecordKinds(KEYS, {"bad": ("/netd/hosts/",)})


def test_driver_prefix_inside_netds_root_arrives_through_the_root_watch() -> None:
    kinds = RecordKinds(KEYS, {"flannel": (f"{KEYS.root()}flannel/", "/coreos.com/network/")})
    assert kinds.prefixes() == [KEYS.root(), "/coreos.com/network/"]
    key = f"{KEYS.root()}flannel/blue/subnets/10.5.3.0-24"
    assert kinds.classify(key) == Record("driver", (f"{KEYS.root()}flannel/",
                                                    "blue/subnets/10.5.3.0-24"), ("flannel",))
    assert kinds.classify(KEYS.network("blue")) == Record("networks", ("blue",))
    assert kinds.classify(f"{KEYS.root()}ipam/blue/addr/10.5.3.4") is None
    state = DesiredState(kinds)
    assert state.put(key, "{}")
    assert state.states(H1, ["flannel"])["flannel"].records == {key: "{}"}
    with pytest.raises(ValueError, match="overlaps netd's own"):
        RecordKinds(KEYS, {"bad": (f"{KEYS.root()}endpoints/x/",)})
