"""The openflow driver's policy flows (plugins.openflow.security) and how the driver
renders HostState.policy: anti-spoofing on every port, conntrack for ports in a group,
member flows changing only their own cookies, fail closed for a port without policy."""

from __future__ import annotations

from dataclasses import replace

from netd.model import SecurityGroup, SecurityGroupRule
from netd.plugin import HostState
from netd.policy.compute import host_policy
from netd.policy.model import HostPolicy, PortPolicy, Rule
from plugins.openflow.cookies import OWNER_MASK, Kind, kind_of, owner_cookie, stable_id
from plugins.openflow.driver import OpenFlowDriver
from plugins.openflow.names import host_veth_name
from plugins.openflow.pipeline import (
    EGRESS_HOOK,
    EGRESS_RULES,
    FLOOD,
    INGRESS_HOOK,
    INGRESS_RULES,
    PRIO_DEFAULT,
    Flow,
    LocalPort,
    NetworkView,
    network_flows,
    pipeline_flows,
)
from plugins.openflow.security import (
    CS_EST,
    CS_NEW,
    port_flows,
    port_ranges,
    port_zone,
    rule_matches,
)
from tests.support.fakenetlink import FakeNetlink
from tests.unit.plugins.openflow.test_openflow_apply import NET, FakeSwitch, desired, driver, ep

PORT = LocalPort("blue/a", "02:00:0a:01:00:0a", "10.1.0.10", 3)


def policy(*rules: Rule, groups: tuple[str, ...] = ("web",)) -> PortPolicy:
    return PortPolicy(network="blue", endpoint="a", tenant="t", driver="openflow", link=None,
                      bridge=None, ip=PORT.ip, mac=PORT.mac, subnet="10.1.0.0/24",
                      groups=groups,
                      ingress=tuple(r for r in rules if r.direction == "ingress"),
                      egress=tuple(r for r in rules if r.direction == "egress"))


def actions(flow: Flow) -> list[str]:
    return [a[0] for a in flow.actions]


def test_port_ranges_cover_exactly_the_range() -> None:
    for low, high in ((80, 80), (8000, 8080), (1, 65535), (1023, 1025), (0, 7)):
        covered = {v for value, mask in port_ranges(low, high)
                   for v in range(65536) if v & mask == value}
        assert covered == set(range(low, high + 1)), (low, high)
    assert port_ranges(80, 80) == [(80, 0xFFFF)]


def test_both_hooks_end_in_drop_and_a_port_without_policy_gets_no_flows() -> None:
    ends = {f.table: f for f in pipeline_flows() if f.priority == PRIO_DEFAULT}
    for table in (EGRESS_HOOK, EGRESS_RULES, INGRESS_HOOK, INGRESS_RULES):
        assert ends[table].goto is None and ends[table].actions == ()
    assert port_flows(7, PORT, None, {}) == []


def test_an_open_port_gets_anti_spoofing_and_no_conntrack() -> None:
    flows = port_flows(7, PORT, policy(groups=()), {})
    assert {kind_of(f.cookie) for f in flows} == {Kind.PORT_SECURITY}
    assert not any("ct" in actions(f) for f in flows)
    egress = [dict(f.match) for f in flows if f.table == EGRESS_HOOK and f.goto is not None]
    assert {"in_port": 3, "eth_type": 0x0806, "arp_spa": PORT.ip,
            "arp_sha": PORT.mac} in egress
    assert {"in_port": 3, "eth_type": 0x0800, "ipv4_src": PORT.ip} in egress
    dhcp = [f for f in flows if dict(f.match).get("udp_src") == 67]
    assert dhcp and dhcp[0].goto is None and dhcp[0].actions == ()


def test_a_port_in_a_group_is_tracked_in_its_own_zone_both_ways() -> None:
    web = Rule(id="r1", direction="ingress", protocol="tcp", port_min=8080, port_max=8080,
               group="t/web")
    flows = port_flows(7, PORT, policy(web), {"t/web": frozenset({"10.1.0.11", "10.1.0.12"})})
    zone = port_zone(PORT.ofport)
    cts = {f.table: a for f in flows for a in f.actions if a[0] == "ct"}
    assert cts[EGRESS_HOOK] == ("ct", False, zone, EGRESS_RULES)
    assert cts[INGRESS_HOOK] == ("ct", False, zone, INGRESS_RULES)
    new = [f for f in flows if f.table == INGRESS_RULES and dict(f.match).get("ct_state",
                                                                          (0, 0))[0] & CS_NEW]
    assert sorted(dict(f.match)["ipv4_src"] for f in new) == ["10.1.0.11", "10.1.0.12"]
    assert all(dict(f.match)["tcp_dst"] == 8080 and ("ct", True, zone, None) in f.actions
               for f in new)
    # egress open (no egress rules): every new connection is committed
    out_new = [f for f in flows if f.table == EGRESS_RULES
               and dict(f.match).get("ct_state", (0, 0))[0] & CS_NEW]
    assert len(out_new) == 1 and "ipv4_dst" not in dict(out_new[0].match)
    assert any(f.table == INGRESS_RULES and dict(f.match)["ct_state"][0] & CS_EST
               for f in flows)
    assert {owner_cookie(Kind.SECURITY_GROUP, stable_id("blue/a")),
            owner_cookie(Kind.PORT_SECURITY, stable_id("blue/a"))} == {
        f.cookie & OWNER_MASK for f in flows}


def test_a_member_that_joins_adds_only_its_own_flows() -> None:
    web = Rule(id="r1", direction="ingress", protocol="udp", port_min=52, port_max=55,
               group="t/web")
    before = {f.cookie for f in port_flows(7, PORT, policy(web),
                                           {"t/web": frozenset({"10.1.0.11"})})}
    after = {f.cookie for f in port_flows(7, PORT, policy(web),
                                          {"t/web": frozenset({"10.1.0.11", "10.1.0.12"})})}
    assert before < after and len(after - before) == 1  # 52-55 is one masked match


def test_cidr_and_any_protocol_matches() -> None:
    cidr = Rule(id="r", direction="egress", protocol="any", cidr="10.2.0.0/16")
    assert rule_matches(cidr, {}) == [(("ipv4_dst", ("10.2.0.0", "255.255.0.0")),)]
    everyone = Rule(id="r", direction="ingress", protocol="icmp", cidr="0.0.0.0/0")
    assert rule_matches(everyone, {}) == [(("ip_proto", 1),)]


def test_ipv4_floods_skip_ports_in_a_group() -> None:
    view = NetworkView(vni=7, local=(PORT, LocalPort("blue/b", "02:00:00:00:00:0b",
                                                     "10.1.0.11", 4)), closed=(3,))
    ip_floods = [f for f in network_flows(view) if f.table == FLOOD
                 and dict(f.match).get("eth_type") == 0x0800]
    assert ip_floods and all(("output", 3) not in f.actions and ("output", 4) in f.actions
                             for f in ip_floods)


def test_the_driver_renders_host_policy_and_closes_a_port_it_lacks() -> None:
    nl = FakeNetlink()
    a, b = nl.add_netns("/run/netns/a"), nl.add_netns("/run/netns/b")
    d, ovs, switch = driver(nl)
    local = [ep("a", 10, a), ep("b", 11, b)]
    group = SecurityGroup(tenant="default", name="web", rules=(SecurityGroupRule(
        id="r1", direction="ingress", protocol="tcp", port_min=80, port_max=80,
        group="web"),))
    members = [replace(e, security_groups=("web",)) for e in local]
    computed = host_policy({NET.name: NET}, members, {("default", "web"): group}, "h1")
    state = desired(local, [])
    with_policy = HostState(state.host, state.networks, state.hosts,
                            policy=computed.of_drivers(frozenset({"openflow"})))
    report = d.apply(with_policy, sweep=True, verify=True)
    assert report.errors == {}
    kinds = {kind_of(c) for c in switch.flows}
    assert Kind.SECURITY_GROUP in kinds and Kind.PORT_SECURITY in kinds
    # a policy without port b: b has no hook flows (closed), a keeps its own
    only_a = HostPolicy(ports=tuple(p for p in computed.ports if p.endpoint == "a"),
                        members=computed.members)
    d.apply(HostState(state.host, state.networks, state.hosts, policy=only_a),
            sweep=True, verify=False)
    owners = {c & OWNER_MASK for c in switch.flows}
    b_id, a_id = stable_id("blue/b"), stable_id("blue/a")
    assert owner_cookie(Kind.PORT_SECURITY, b_id) not in owners
    assert owner_cookie(Kind.ENDPOINT, b_id) in owners
    assert owner_cookie(Kind.PORT_SECURITY, a_id) in owners
    assert host_veth_name("blue", "b") in ovs.table
    assert isinstance(switch, FakeSwitch) and isinstance(d, OpenFlowDriver)
