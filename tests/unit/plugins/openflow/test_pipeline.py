"""The openflow driver's pure parts: cookies, the flow pipeline, error decoding."""

from __future__ import annotations

from plugins.openflow import cookies, pipeline
from plugins.openflow.app import decode_error
from plugins.openflow.cookies import Kind
from plugins.openflow.driver import OpenFlowDriver
from plugins.openflow.names import INTEGRATION_BRIDGE, host_veth_name, tunnel_port_name
from plugins.openflow.pipeline import (
    FLOOD,
    FROM_TUNNEL,
    L2_LOOKUP,
    LocalPort,
    NetworkView,
    RemoteMac,
    desired_flows,
)

VIEW = NetworkView(
    vni=7,
    local=(LocalPort("n/a", "02:00:00:00:00:0a", "10.0.0.10", 1),),
    remote=(RemoteMac("n/b", "02:00:00:00:00:0b", "10.0.0.11", 5),),
    peer_tunnels=(5,),
)


def test_backends_declare_their_overheads() -> None:
    spec = OpenFlowDriver.spec
    assert spec.default_backend == "gre"
    assert {b.name: b.overhead for b in spec.backends} == {"gre": 42, "vxlan": 50}


def test_names_are_owned_and_fit_a_link_name() -> None:
    for name in (INTEGRATION_BRIDGE, host_veth_name("net", "ep"),
                 tunnel_port_name("gre", "10.0.0.1"), tunnel_port_name("vxlan", "10.0.0.1")):
        assert name.startswith("nd") and len(name) <= 15
    assert tunnel_port_name("gre", "10.0.0.1") != tunnel_port_name("vxlan", "10.0.0.1")


def test_cookie_names_owner_and_content() -> None:
    a = cookies.flow_cookie(Kind.ENDPOINT, 42, "x")
    b = cookies.flow_cookie(Kind.ENDPOINT, 42, "y")
    assert cookies.is_netd(a) and not cookies.is_netd(0x1234)
    assert a & cookies.OWNER_MASK == b & cookies.OWNER_MASK == cookies.owner_cookie(
        Kind.ENDPOINT, 42)
    assert a != b
    assert cookies.kind_of(a) is Kind.ENDPOINT
    assert cookies.describe(a) == "endpoint:42"


def test_every_flow_is_netd_owned_and_the_table_is_deterministic() -> None:
    one = desired_flows([VIEW], [("ndog00000001", 5)])
    two = desired_flows([VIEW], [("ndog00000001", 5)])
    assert one.cookies() == two.cookies()
    assert all(cookies.is_netd(c) for c in one.cookies())
    # no two different flows share a cookie
    assert len(one.cookies()) == len(one.all())


def test_flood_from_local_reaches_peers_from_tunnel_only_local_ports() -> None:
    flows = pipeline.network_flows(VIEW)
    flood = {f.match: f.actions for f in flows if f.table == FLOOD}
    local = flood[pipeline.network_match(7, from_tunnel=False)]
    tunnel = flood[pipeline.network_match(7, from_tunnel=True)]
    assert ("output", 5) in local and ("set_field", "tunnel_id", 7) in local
    assert tunnel == (("output", 1),)


def test_no_peer_no_tunnel_output() -> None:
    alone = NetworkView(vni=9, local=VIEW.local)
    flood = [f for f in pipeline.network_flows(alone) if f.table == FLOOD]
    assert all(a[0] == "output" and a[1] == 1 for f in flood for a in f.actions)


def test_remote_mac_goes_out_its_tunnel_keyed_by_vni_and_not_back_from_a_tunnel() -> None:
    (arp, l2) = pipeline.remote_flows(7, VIEW.remote[0])
    assert l2.table == L2_LOOKUP
    assert dict(l2.match)["metadata"] == (7, pipeline.NETWORK_MASK)  # FROM_TUNNEL bit clear
    assert l2.actions == (("set_field", "tunnel_id", 7), ("output", 5))
    assert ("set_field", "arp_spa", "10.0.0.11") in arp.actions
    assert arp.actions[-1] == ("in_port",)


def test_tunnel_ingress_marks_the_frame() -> None:
    ingress = [f for f in pipeline.network_flows(VIEW) if f.table == pipeline.TUNNEL_INGRESS]
    assert len(ingress) == 1
    assert dict(ingress[0].match) == {"in_port": 5, "tunnel_id": 7}
    assert ingress[0].write_metadata == (7 | FROM_TUNNEL, pipeline.METADATA_ALL)


def test_changing_an_endpoint_changes_only_its_cookies() -> None:
    moved = NetworkView(7, (LocalPort("n/a", "02:00:00:00:00:0a", "10.0.0.10", 2),),
                        VIEW.remote, VIEW.peer_tunnels)
    before = {f.cookie for f in pipeline.endpoint_flows(7, VIEW.local[0])}
    after = {f.cookie for f in pipeline.endpoint_flows(7, moved.local[0])}
    assert before != after
    owners = {c & cookies.OWNER_MASK for c in before | after}
    assert len(owners) == 1  # one masked delete removes either version


def test_switch_errors_are_named() -> None:
    assert decode_error(5, 0) == "OFPET_FLOW_MOD_FAILED/OFPFMFC_UNKNOWN"
    assert decode_error(4, 3).startswith("OFPET_BAD_MATCH/")


def test_mac2mac_rewrites_on_the_way_out_and_restores_on_the_way_in() -> None:
    remote = RemoteMac("n/b", "02:00:00:00:00:0b", "10.0.0.11", 5, mac2mac=True)
    alias_b = pipeline.mac2mac_alias(7, "10.0.0.11")
    assert alias_b == "0a:00:00:07:00:0b"
    out = pipeline.remote_flows(7, remote, mac2mac_port=9)
    l2 = next(f for f in out if f.table == L2_LOOKUP)
    assert l2.actions == (("set_field", "eth_dst", alias_b),)
    assert l2.goto == pipeline.MAC2MAC_OUT
    restore_src = next(f for f in out if f.table == pipeline.MAC2MAC_SRC)
    assert dict(restore_src.match)["eth_src"] == alias_b
    mine = pipeline.mac2mac_endpoint_flows(7, VIEW.local[0], 9)
    egress = next(f for f in mine if f.table == pipeline.MAC2MAC_OUT)
    assert egress.actions[-1] == ("output", 9)
    # without the patch port the remote goes through its tunnel as always
    tunnelled = pipeline.remote_flows(7, remote, mac2mac_port=None)
    assert ("output", 5) in next(f for f in tunnelled if f.table == L2_LOOKUP).actions
