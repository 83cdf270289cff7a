"""This host's gateway plan from its served networks, every host's roles and the host
ports published here: pure, no I/O.

* A network of a gateway driver that this host serves (a local endpoint or a role)
  gets a GatewayPort in its tenant's router; a tenant with any such network gets a
  router (namespace, uplink veth, transfer /30).
* Roles: "expose" makes this host route the subnet into the router; "no-masquerade"
  beside it keeps container sources on the way out. Other hosts' "expose" roles give
  mark ids (1..255, by sorted host name) so replies go back through the exposing host.
* The router's neighbour table holds every endpoint of the network, so the router
  never ARPs across the overlay.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from netd.gateway import names
from netd.gateway.model import Forward, GatewayPlan, GatewayPort, RoutedNetwork, Router
from netd.model import HostRoles, Network, Publish, network_egress
from netd.plugin import NetworkState
from netd.plumbing.names import roles_of

# drivers whose networks are one L2 segment on a bridge per network per host: the
# gateway plugs a veth into that bridge
GATEWAY_DRIVERS = frozenset({"weave"})
# drivers whose containers the host routes itself (their bridge holds a gateway of the
# host's own): no router namespace, the host's table does egress, expose and publish
ROUTED_DRIVERS = frozenset({"flannel"})
SERVED_DRIVERS = GATEWAY_DRIVERS | ROUTED_DRIVERS
EXPOSE = "expose"
NO_MASQUERADE = "no-masquerade"
MAX_EXPOSERS = 255


def bridge_of(network: Network) -> tuple[str | None, tuple[str, ...], str]:
    """(bridge, overlay ports, container port prefix) under the driver's claimed names."""
    bridge, tunnels, prefix = None, [], ""
    for role in roles_of(network.driver):
        if role.suffix == "number" and network.vni > 0:
            if role.role == "bridge":
                bridge = role.number(network.vni)
            else:
                tunnels.append(role.number(network.vni))
        elif role.role == "veth" and role.suffix == "hash":
            prefix = role.prefix
    return bridge, tuple(sorted(tunnels)), prefix


def exposers(roles: Mapping[str, HostRoles]) -> list[str]:
    """The hosts exposing a network (roles by host), sorted: index + 1 is their mark id."""
    return sorted(h for h, r in roles.items() if EXPOSE in r.roles)[:MAX_EXPOSERS]


def gateway_port(ns: NetworkState, host: str, roles: Mapping[str, HostRoles]) -> GatewayPort | None:
    net = ns.network
    bridge, tunnels, prefix = bridge_of(net)
    if bridge is None:
        return None
    mine = roles.get(host)
    my_roles = mine.roles if mine is not None else ()
    exposed = EXPOSE in my_roles
    neighbours = sorted({(e.ip, e.mac) for e in (*ns.local, *ns.remote)})
    others = tuple((i + 1, names.router_mac(h, net.name))
                   for i, h in enumerate(exposers(roles)) if h != host)
    return GatewayPort(
        network=net.name,
        bridge=bridge,
        host_link=names.gateway_port(net.name),
        router_link=names.router_port(net.name),
        gateway=net.gateway,
        prefixlen=net.prefixlen,
        subnet=net.subnet,
        mac=names.router_mac(host, net.name),
        mtu=net.mtu,
        tunnels=tunnels,
        neighbours=tuple(neighbours),
        egress=network_egress(net),
        masquerade=not (exposed and NO_MASQUERADE in my_roles),
        exposed=exposed,
        exposers=others,
        container_prefix=prefix,
    )


def gateway_plan(
    *,
    host: str,
    underlay_ip: str,
    scope: str,
    served: Iterable[NetworkState],
    roles: Mapping[str, Mapping[str, HostRoles]],
    published: Iterable[Publish],
) -> GatewayPlan:
    """`served`: the networks this host serves (every driver's); `roles`: network ->
    host -> roles; `published`: the host ports published on this host; `scope`: what
    tells this daemon's router namespaces apart on the machine (its state dir)."""
    by_tenant: dict[str, list[GatewayPort]] = {}
    endpoints: dict[tuple[str, str], str] = {}  # (network, endpoint) -> ip
    tenant_of: dict[str, str] = {}
    routed: list[RoutedNetwork] = []
    for ns in served:
        net = ns.network
        if net.driver in ROUTED_DRIVERS:
            bridge, tunnels, _ = bridge_of(net)
            mine = roles.get(net.name, {}).get(host)
            my_roles = mine.roles if mine is not None else ()
            if bridge is not None:
                routed.append(RoutedNetwork(
                    network=net.name, subnet=net.subnet, bridge=bridge,
                    egress=network_egress(net),
                    masquerade=not (EXPOSE in my_roles and NO_MASQUERADE in my_roles),
                    exposed=EXPOSE in my_roles, tunnels=tunnels, tenant=net.tenant))
                tenant_of[net.name] = ""
                for ep in ns.local:
                    endpoints[(net.name, ep.name)] = ep.ip
            continue
        if net.driver not in GATEWAY_DRIVERS:
            continue
        port = gateway_port(ns, host, roles.get(net.name, {}))
        if port is None:
            continue
        by_tenant.setdefault(net.tenant, []).append(port)
        tenant_of[net.name] = net.tenant
        for ep in ns.local:
            endpoints[(net.name, ep.name)] = ep.ip
    forwards: dict[str, list[Forward]] = {}
    for p in published:
        ip = endpoints.get((p.network, p.endpoint))
        if ip is None or p.host != host:
            continue
        forwards.setdefault(tenant_of[p.network], []).append(
            Forward(p.protocol, p.host_port, ip, p.port, p.network, p.endpoint))
    routers = []
    taken: set[int] = set()
    for tenant in sorted(by_tenant):
        block = names.transfer_block(tenant, taken)
        taken.add(block)
        host_ip, router_ip = names.transfer_addresses(block)
        routers.append(Router(
            tenant=tenant,
            netns=names.router_netns(scope, tenant),
            uplink=names.uplink(tenant),
            uplink_mac=names.uplink_mac(host, tenant),
            host_ip=host_ip,
            router_ip=router_ip,
            ports=tuple(sorted(by_tenant[tenant], key=lambda p: p.network)),
            forwards=tuple(sorted(forwards.get(tenant, []),
                                  key=lambda f: (f.protocol, f.host_port))),
        ))
    return GatewayPlan(underlay_ip=underlay_ip, routers=tuple(routers),
                       routed=tuple(sorted(routed, key=lambda r: r.network)),
                       forwards=tuple(sorted(forwards.get("", []),
                                             key=lambda f: (f.protocol, f.host_port))))
