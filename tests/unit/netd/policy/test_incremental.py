"""The incremental policy (PolicyIndex) equals the whole computation (host_policy)
after every event of random sequences, and hands out the same objects for what did not
change (the appliers skip by identity)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

import plugins.weave.names  # noqa: F401 - claims the weave link names
from netd.model import Endpoint, Network, SecurityGroup, SecurityGroupRule
from netd.policy import nft
from netd.policy.compute import PolicyIndex, host_policy

KERNEL = ("weave", "flannel")
HOSTS = ("h1", "h2")
TENANTS = ("default", "acme")
GROUP_NAMES = ("web", "db")


def network(name: str, tenant: str, vni: int, driver: str) -> Network:
    return Network(name, "10.1.0.0/24", "10.1.0.1", vni, 1450, tenant=tenant, driver=driver)


networks = st.builds(network, st.sampled_from(("blue", "red")), st.sampled_from(TENANTS),
                     st.integers(1, 3), st.sampled_from(("weave", "flannel")))


def endpoint(net: str, name: str, host: str, last: int, groups: tuple[str, ...]) -> Endpoint:
    return Endpoint(net, name, name, f"/run/netns/{name}", host, "eth0", f"10.1.0.{last}",
                    f"02:42:0a:01:00:{last:02x}", groups)


endpoints = st.builds(
    endpoint, st.sampled_from(("blue", "red")), st.sampled_from(("a", "b", "c", "d")),
    st.sampled_from(HOSTS), st.integers(2, 5),
    st.lists(st.sampled_from(GROUP_NAMES), max_size=2).map(tuple))

rules = st.builds(
    SecurityGroupRule, st.sampled_from(("00000001", "00000002", "00000003")),
    st.sampled_from(("ingress", "egress")), st.sampled_from(("tcp", "any")),
    st.none(), st.none(), st.sampled_from((None, "10.9.0.0/16")),
    st.sampled_from(GROUP_NAMES))
groups = st.builds(lambda t, n, rs: SecurityGroup(n, t, tuple(rs)), st.sampled_from(TENANTS),
                   st.sampled_from(GROUP_NAMES), st.lists(rules, max_size=3))

events = st.one_of(
    st.tuples(st.just("put_network"), networks),
    st.tuples(st.just("drop_network"), st.sampled_from(("blue", "red"))),
    st.tuples(st.just("put_endpoint"), endpoints),
    st.tuples(st.just("drop_endpoint"), st.sampled_from(("blue", "red")),
              st.sampled_from(("a", "b", "c", "d"))),
    st.tuples(st.just("put_group"), groups),
    st.tuples(st.just("drop_group"), st.sampled_from(TENANTS), st.sampled_from(GROUP_NAMES)),
    st.tuples(st.just("host"), st.sampled_from(HOSTS)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(events, max_size=40))
def test_incremental_equals_full_recompute(sequence: list[tuple[object, ...]]) -> None:
    index = PolicyIndex()
    nets: dict[str, Network] = {}
    eps: dict[tuple[str, str], Endpoint] = {}
    sgs: dict[tuple[str, str], SecurityGroup] = {}
    host = "h1"
    previous = index.policy(host)
    for event in sequence:
        kind = event[0]
        if kind == "put_network":
            net = event[1]
            assert isinstance(net, Network)
            nets[net.name] = net
            index.put_network(net)
        elif kind == "drop_network":
            nets.pop(str(event[1]), None)
            index.drop_network(str(event[1]))
        elif kind == "put_endpoint":
            ep = event[1]
            assert isinstance(ep, Endpoint)
            eps[(ep.network, ep.name)] = ep
            index.put_endpoint(ep)
        elif kind == "drop_endpoint":
            eps.pop((str(event[1]), str(event[2])), None)
            index.drop_endpoint(str(event[1]), str(event[2]))
        elif kind == "put_group":
            sg = event[1]
            assert isinstance(sg, SecurityGroup)
            sgs[(sg.tenant, sg.name)] = sg
            index.put_group(sg.tenant, sg.name, sg)
        elif kind == "drop_group":
            sgs.pop((str(event[1]), str(event[2])), None)
            index.drop_group(str(event[1]), str(event[2]))
        else:
            host = str(event[1])
        got = index.policy(host)
        assert got == host_policy(nets, eps.values(), sgs, host)
        if got == previous:
            assert got is previous  # unchanged: the same object
        for port in got.ports:  # an unchanged port keeps its object
            old = previous.port(port.network, port.endpoint)
            if old == port:
                assert old is port
        previous = got


def test_a_member_elsewhere_changes_only_its_set() -> None:
    index = PolicyIndex()
    web = SecurityGroup("web", "default", (
        SecurityGroupRule("00000001", "ingress", "tcp", 80, 80, None, "web"),))
    index.put_network(network("blue", "default", 1, "weave"))
    index.put_group("default", "web", web)
    index.put_endpoint(endpoint("blue", "a", "h1", 2, ("web",)))
    first = index.policy("h1")
    index.put_endpoint(endpoint("blue", "b", "h2", 3, ("web",)))
    second = index.policy("h1")
    assert second.ports is first.ports
    assert second.members == {"default/web": frozenset({"10.1.0.2", "10.1.0.3"})}
    assert index.policy("h1") is second


@settings(max_examples=200, deadline=None)
@given(st.lists(events, max_size=30))
def test_rendering_from_the_previous_equals_rendering_afresh(
        sequence: list[tuple[object, ...]]) -> None:
    index = PolicyIndex()
    previous = nft.render(index.policy("h1"), KERNEL)
    for event in sequence:
        kind = event[0]
        if kind == "host":
            continue
        group = event[1]
        if isinstance(group, SecurityGroup):
            index.put_group(group.tenant, group.name, group)
        else:
            getattr(index, str(kind))(*event[1:])
        policy = index.policy("h1")
        incremental = nft.render(policy, KERNEL, previous=previous)
        fresh = nft.render(policy, KERNEL)
        assert incremental == fresh
        assert incremental.shared_refs.keys() == fresh.shared_refs.keys()
        assert incremental.set_refs == fresh.set_refs
        assert incremental.bridge_refs == fresh.bridge_refs
        assert incremental.delta(previous) == replace(incremental, base=None).delta(previous)
        previous = incremental
