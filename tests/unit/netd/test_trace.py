"""netd.trace: verdicts from desired state alone (the order netd enforces policy in)."""

from __future__ import annotations

from typing import Any

import pytest

from netd.errors import InvalidInput, NotFound
from netd.model import Endpoint, Host, Network, SecurityGroup
from netd.policy.rules import validate_rule
from netd.trace import Flow, trace

NET = Network(name="blue", subnet="10.1.0.0/24", gateway="10.1.0.1", vni=5, mtu=1450)
OTHER = Network(name="red", subnet="10.1.0.0/24", gateway="10.1.0.1", vni=6, mtu=1450,
                tenant="t2")
NETWORKS = {n.name: n for n in (NET, OTHER)}
HOSTS = {h: Host(name=h, underlay_ip=f"10.0.0.{i}") for i, h in enumerate(("h1", "h2"), 1)}


def ep(name: str, ip: str, host: str, network: str = "blue", *groups: str) -> Endpoint:
    return Endpoint(network=network, name=name, container=name, netns=f"/run/netns/{name}",
                    host=host, ifname="eth0", ip=ip, mac="02:00:00:00:00:01",
                    security_groups=tuple(groups))


ENDPOINTS = [ep("a", "10.1.0.2", "h1", "blue", "client"), ep("b", "10.1.0.3", "h2", "blue", "web"),
             ep("c", "10.1.0.4", "h1"), ep("d", "10.1.0.2", "h1", "red")]
WEB_80 = validate_rule({"direction": "ingress", "protocol": "tcp", "port": "80",
                        "group": "client"})
GROUPS = {("default", "web"): SecurityGroup(name="web", rules=(WEB_80,)),
          ("default", "client"): SecurityGroup(name="client")}


def run(src: str, dst: str, flow: Flow | None = None) -> dict[str, Any]:
    return trace(NETWORKS, ENDPOINTS, HOSTS, GROUPS, src, dst, flow or Flow()).to_dict()


def test_allowed_by_a_group_rule() -> None:
    t = run("a", "b", Flow("tcp", 80))
    assert t["verdict"] == "allow"
    assert t["decisions"][-1]["rule"]["id"] == WEB_80.id
    assert [h["hop"] for h in t["path"]] == ["endpoint", "port", "tunnel", "port", "endpoint"]


@pytest.mark.parametrize(("src", "flow"), [("a", Flow("tcp", 81)), ("a", Flow("tcp")),
                                           ("c", Flow("tcp", 80)), ("a", Flow("icmp"))])
def test_denied_by_the_closing_drop(src: str, flow: Flow) -> None:
    t = run(src, "b", flow)
    assert t["verdict"] == "deny" and "closing drop" in t["reason"]


def test_open_ports_and_the_tenant_boundary() -> None:
    assert run("b", "c")["verdict"] == "allow"
    t = run("c", "d")
    assert t["verdict"] == "deny" and "tenant boundary" in t["reason"]


def test_addresses_prefer_the_shared_network() -> None:
    t = run("10.1.0.4", "10.1.0.2")  # two endpoints hold 10.1.0.2: a (blue) and d (red)
    assert t["dst"]["name"] == "a"


def test_bad_input() -> None:
    with pytest.raises(NotFound):
        run("zz", "b")
    with pytest.raises(InvalidInput):
        run("a", "a")
    with pytest.raises(InvalidInput):
        Flow.parse("icmp", "80")
    with pytest.raises(InvalidInput):
        Flow.parse("tcp", "0")
