"""The gateway plan and its nft text, computed purely."""

from __future__ import annotations

import plugins.weave.names  # noqa: F401  (claims weave's link names)
from netd.gateway import names
from netd.gateway.compute import gateway_plan
from netd.gateway.nft import host_tables, router_table
from netd.model import Endpoint, HostRoles, Network, Publish
from netd.plugin import NetworkState


def network(name: str, subnet: str, vni: int, tenant: str = "default",
            **options: str) -> Network:
    prefix = subnet.rsplit(".", 1)[0]
    return Network(name=name, subnet=subnet, gateway=f"{prefix}.1", vni=vni, mtu=1450,
                   tenant=tenant, options=dict(options))


def endpoint(net: Network, name: str, host: str, last: int) -> Endpoint:
    ip = f"{net.subnet.rsplit('.', 1)[0]}.{last}"
    return Endpoint(network=net.name, name=name, container=name, netns=f"/run/netns/{name}",
                    host=host, ifname="eth0", ip=ip, mac=f"02:42:00:00:00:{last:02x}")


def plan(served: list[NetworkState], roles: dict[str, dict[str, HostRoles]] | None = None,
         published: tuple[Publish, ...] = ()):  # type: ignore[no-untyped-def]
    return gateway_plan(host="h1", underlay_ip="10.250.0.1", scope="/var/lib/netd/h1",
                        served=served, roles=roles or {}, published=published)


def test_one_router_per_tenant_with_a_port_per_network() -> None:
    a, b = network("a", "10.1.0.0/24", 1), network("b", "10.2.0.0/24", 2)
    c = network("c", "10.1.0.0/24", 3, tenant="other")  # overlaps a: another router
    served = [NetworkState(n, local=(endpoint(n, f"e{n.vni}", "h1", 5),), remote=(), peers=())
              for n in (a, b, c)]
    p = plan(served)
    assert [r.tenant for r in p.routers] == ["default", "other"]
    default, other = p.routers
    assert [port.network for port in default.ports] == ["a", "b"]
    assert default.netns != other.netns and default.router_ip != other.router_ip
    port = default.ports[0]
    assert port.bridge == "ndb1" and port.tunnels == ("ndt1", "ndv1")
    assert port.gateway == "10.1.0.1" and port.prefixlen == 24
    assert port.egress and port.masquerade and not port.exposed
    assert port.mac == names.router_mac("h1", "a") != names.router_mac("h2", "a")
    assert names.GATEWAY_PORT.matches(port.host_link)
    # the same inputs give an equal plan (the worker skips an equal one)
    assert plan(served) == p


def test_neighbours_are_every_endpoint_of_the_network() -> None:
    a = network("a", "10.1.0.0/24", 1)
    ns = NetworkState(a, local=(endpoint(a, "x", "h1", 5),),
                      remote=(endpoint(a, "y", "h2", 6),), peers=())
    (port,) = plan([ns]).routers[0].ports
    assert port.neighbours == (("10.1.0.5", "02:42:00:00:00:05"),
                               ("10.1.0.6", "02:42:00:00:00:06"))


def test_egress_option_and_expose_roles() -> None:
    a = network("a", "10.1.0.0/24", 1, egress="false")
    ns = NetworkState(a, local=(), remote=(), peers=(), roles=("expose", "no-masquerade"))
    roles = {"a": {"h1": HostRoles("a", "h1", ("expose", "no-masquerade")),
                   "h3": HostRoles("a", "h3", ("expose",))}}
    router = plan([ns], roles).routers[0]
    (port,) = router.ports
    assert not port.egress and port.exposed and not port.masquerade
    assert router.exposed == ("10.1.0.0/24",)
    assert port.exposers == ((2, names.router_mac("h3", "a")),)
    text = router_table(router)
    assert f'iifname "{port.router_link}" oifname "up0" drop' in text
    assert "masquerade" not in text.split("snat_out", 1)[1].split("}", 1)[0]
    host = host_tables(plan([ns], roles))
    assert "ct mark set 0x00020000" in host
    assert f"ether daddr set {names.router_mac('h3', 'a')}" in host
    assert 'arp saddr ip 10.1.0.1 drop' in host


def test_published_ports_of_local_endpoints_only() -> None:
    a = network("a", "10.1.0.0/24", 1)
    ns = NetworkState(a, local=(endpoint(a, "x", "h1", 5),), remote=(), peers=())
    published = (Publish("h1", "tcp", 8080, "a", "x", 80),
                 Publish("h1", "udp", 5353, "a", "gone", 53))
    router = plan([ns], published=published).routers[0]
    assert [(f.protocol, f.host_port, f.ip, f.port) for f in router.forwards] == [
        ("tcp", 8080, "10.1.0.5", 80)]
    assert f"tcp dport 8080 dnat to {router.router_ip}:8080" in host_tables(
        plan([ns], published=published))
    assert "tcp dport 8080 dnat to 10.1.0.5:80" in router_table(router)


def test_no_router_for_networks_of_other_drivers() -> None:
    f = Network(name="f", subnet="10.9.0.0/16", gateway="10.9.0.1", vni=9, mtu=1450,
                driver="flannel")
    assert plan([NetworkState(f, local=(), remote=(), peers=())]).routers == ()
