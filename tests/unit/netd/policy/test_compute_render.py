"""The policy computation (pure) and its nftables rendering, without root."""

from __future__ import annotations

import re

import plugins.weave.names  # noqa: F401 - claims the weave link names
from netd.model import Endpoint, Network, SecurityGroup, SecurityGroupRule
from netd.policy import nft
from netd.policy.compute import host_policy, zone_of
from netd.policy.model import HostPolicy
from plugins.weave.names import bridge_name, host_veth_name

BLUE = Network("blue", "10.1.0.0/24", "10.1.0.1", 5, 1450)
RED = Network("red", "10.1.0.0/24", "10.1.0.1", 6, 1450, tenant="acme")
NETS = {"blue": BLUE, "red": RED}


def ep(name: str, host: str, ip: str, *groups: str, network: str = "blue") -> Endpoint:
    octets = [int(o) for o in ip.split(".")]
    return Endpoint(network, name, name, f"/run/netns/{name}", host, "eth0", ip,
                    "02:42:" + ":".join(f"{o:02x}" for o in octets), tuple(groups))


WEB = SecurityGroup("web", "default", (
    SecurityGroupRule("00000001", "ingress", "tcp", 80, 80, None, "web"),
    SecurityGroupRule("00000002", "egress", "udp", 53, 53, "10.9.0.0/16", None),
))
GROUPS = {("default", "web"): WEB, ("acme", "web"): SecurityGroup("web", "acme", ())}


def test_local_ports_with_resolved_rules_and_tenant_scoped_members() -> None:
    endpoints = [ep("a", "h1", "10.1.0.2", "web"), ep("b", "h2", "10.1.0.3", "web"),
                 ep("c", "h1", "10.1.0.4"),
                 ep("r", "h2", "10.1.0.5", "web", network="red")]  # acme's "web"
    policy = host_policy(NETS, endpoints, GROUPS, "h1")
    assert [p.endpoint for p in policy.ports] == ["a", "c"]
    a = policy.port("blue", "a")
    assert a is not None and a.link == host_veth_name("blue", "a")
    assert a.bridge == bridge_name(5) and a.restricted_ingress and a.restricted_egress
    assert [r.port_min for r in a.ingress] == [80] and a.ingress[0].group == "default/web"
    assert policy.members == {"default/web": frozenset({"10.1.0.2", "10.1.0.3"})}
    c = policy.port("blue", "c")
    assert c is not None and not c.restricted_ingress and not c.restricted_egress
    assert policy.zones == {bridge_name(5): zone_of("default")}


def test_a_missing_group_closes_ingress() -> None:
    policy = host_policy(NETS, [ep("a", "h1", "10.1.0.2", "gone")], {}, "h1")
    (port,) = policy.ports
    assert port.restricted_ingress and port.ingress == ()


def test_zones_are_per_tenant_and_fit_sixteen_bits() -> None:
    policy = host_policy(NETS, [ep("a", "h1", "10.1.0.2"), ep("r", "h1", "10.1.0.2",
                                                            network="red")], {}, "h1")
    assert policy.zones == {bridge_name(5): zone_of("default"), bridge_name(6): zone_of("acme")}
    assert zone_of("default") != zone_of("acme")
    assert all(1 <= zone_of(f"t{i}") <= 65535 for i in range(1000))


def test_render_fails_closed_and_keys_rules_by_port() -> None:
    policy = host_policy(NETS, [ep("a", "h1", "10.1.0.2", "web")], GROUPS, "h1")
    text = nft.render(policy, ["weave"]).full()
    veth = host_veth_name("blue", "a")
    assert 'iifname "ndh*" drop' in text and 'oifname "ndh*" drop' in text
    assert "ether saddr != 02:42:0a:01:00:02 drop" in text
    assert "arp saddr ip != 10.1.0.2 drop" in text
    assert re.search(f'ingress {{ "{bridge_name(5)}" . 10.1.0.2 : jump in_[0-9a-f]{{12}} }}',
                     text)
    assert f"jump p_{veth}" in text
    assert "ip daddr 10.9.0.0/16 udp dport 53 return" in text
    assert "tcp dport 80 meta mark set" in text
    assert "ct state established,related" in text
    # only netd's own tables are named
    tables = set(re.findall(r"(?:table|element|set|chain) (bridge|ip|inet|arp|netdev) (\w+)",
                            text))
    assert {t for _, t in tables} == {"netd"}


def test_empty_policy_still_fails_closed() -> None:
    text = nft.render(HostPolicy(), ["weave"]).full()
    assert 'iifname "ndh*" drop' in text and "jump p_" not in text


def test_changes_touch_only_what_changed() -> None:
    scripts: list[str] = []
    applier = nft.NftApplier(["weave"], run=scripts.append)
    local = ep("a", "h1", "10.1.0.2", "web")
    applier.apply(host_policy(NETS, [local], GROUPS, "h1"))
    assert "delete table bridge netd" in scripts[-1]  # the first apply: whole, atomic
    assert applier.apply(host_policy(NETS, [local], GROUPS, "h1")) == 0  # unchanged
    # a member on another host: only the set's elements
    applier.apply(host_policy(NETS, [local, ep("b", "h2", "10.1.0.3", "web")], GROUPS, "h1"))
    assert "delete table" not in scripts[-1] and "chain" not in scripts[-1]
    assert scripts[-1].splitlines() == [
        f"add element ip netd {nft.set_name('default/web')} {{ 10.1.0.3 }}"]
    # one more local port: its own chains and elements, nothing of port a
    other = ep("c", "h1", "10.1.0.4")
    applier.apply(host_policy(NETS, [local, other], GROUPS, "h1"))
    veth_a, veth_c = host_veth_name("blue", "a"), host_veth_name("blue", "c")
    assert "delete table" not in scripts[-1] and veth_c in scripts[-1]
    assert veth_a not in scripts[-1]
    # the port leaves: its chains go, after its elements
    applier.apply(host_policy(NETS, [local], GROUPS, "h1"))
    last = scripts[-1]
    assert last.index("delete element bridge netd to_ports") < last.index(
        f"delete chain bridge netd o_{veth_c}")


def test_ports_with_the_same_rules_share_one_rule_chain() -> None:
    scripts: list[str] = []
    applier = nft.NftApplier(["weave"], run=scripts.append)
    a, b = ep("a", "h1", "10.1.0.2", "web"), ep("b", "h1", "10.1.0.3", "web")
    applier.apply(host_policy(NETS, [a], GROUPS, "h1"))
    chains = set(re.findall(r"chain (in_[0-9a-f]{12})", scripts[-1]))
    assert len(chains) == 1
    applier.apply(host_policy(NETS, [a, b], GROUPS, "h1"))  # b reuses a's chain
    assert "chain in_" not in scripts[-1] and f"jump {chains.pop()}" in scripts[-1]
    applier.apply(host_policy(NETS, [b], GROUPS, "h1"))  # still used by b: kept
    assert "delete chain ip netd in_" not in scripts[-1]
    applier.apply(host_policy(NETS, [], GROUPS, "h1"))  # the last user gone: deleted
    assert "delete chain ip netd in_" in scripts[-1]
    assert scripts[-1].index("delete element ip netd ingress") < scripts[-1].index(
        "delete chain ip netd in_")
