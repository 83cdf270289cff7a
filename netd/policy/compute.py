"""This host's policy from the store's records: pure, no I/O (beside netd.calc).

* Every local endpoint gets a PortPolicy: its IP and MAC (anything else it sends is
  dropped), its groups' rules resolved (a remote group becomes a member set, kept
  current as members come and go on any host), its host-side link and bridge names
  from the driver's claimed name roles (netd.plumbing.names: "veth" hashed from
  "<network>/<endpoint>", "bridge" numbered by VNI).
* Groups are scoped by tenant: an endpoint's group names are looked up in its network's
  tenant; a member set holds the addresses of that tenant's endpoints only.
* A group an endpoint names that does not exist (removed under a race) counts as a
  group without rules: its ingress is closed (fail closed).
* A conntrack zone per tenant, set on its L2 drivers' bridges, keeps equal addresses of
  two tenants' overlapping subnets apart in the connection table.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping

from netd.model import Endpoint, Network, SecurityGroup
from netd.plumbing.names import roles_of
from netd.policy.model import HostPolicy, PortPolicy, Rule

# drivers whose networks are one L2 segment on a bridge per network, whose traffic is
# therefore bridged (not routed): their bridges get conntrack zones
L2_DRIVERS = frozenset({"weave"})


def zone_of(tenant: str) -> int:
    """A tenant's conntrack zone (1..65535): one per tenant, not per network, so a
    connection routed between two networks of one tenant keeps one zone both ways
    (subnets never overlap within a tenant); two tenants share one only on a hash
    collision (1 in 65535 per pair)."""
    digest = hashlib.sha256(tenant.encode()).digest()
    return 1 + int.from_bytes(digest[:4], "big") % 65535


def link_of(driver: str, network: Network, endpoint: str) -> tuple[str | None, str | None]:
    """(host-side veth, bridge) names of an endpoint under `driver`'s claimed roles."""
    return _names(driver, network.name, network.vni, endpoint)


@functools.lru_cache(maxsize=65536)
def _names(driver: str, network: str, vni: int, endpoint: str) -> tuple[str | None, str | None]:
    veth = bridge = None
    for role in roles_of(driver):
        if role.role == "veth" and role.suffix == "hash":
            veth = role.hashed(f"{network}/{endpoint}")
        elif role.role == "bridge" and role.suffix == "number" and vni > 0:
            bridge = role.number(vni)
    return veth, bridge


def set_key(tenant: str, group: str) -> str:
    return f"{tenant}/{group}"


def _resolve(tenant: str, groups: Iterable[str],
             known: Mapping[tuple[str, str], SecurityGroup]) -> tuple[list[Rule], list[Rule]]:
    ingress: dict[tuple[object, ...], Rule] = {}
    egress: dict[tuple[object, ...], Rule] = {}
    for name in groups:
        group = known.get((tenant, name))
        if group is None:
            continue
        for r in group.rules:
            remote = set_key(tenant, r.group) if r.group else None
            rule = Rule(id=r.id, direction=r.direction, protocol=r.protocol or "any",
                        port_min=r.port_min, port_max=r.port_max, cidr=r.cidr, group=remote)
            ident = (rule.protocol, rule.port_min, rule.port_max, rule.cidr, rule.group)
            (ingress if r.direction == "ingress" else egress).setdefault(ident, rule)
    order = sorted
    return ([ingress[k] for k in order(ingress, key=repr)],
            [egress[k] for k in order(egress, key=repr)])


def host_policy(
    networks: Mapping[str, Network],
    endpoints: Iterable[Endpoint],
    groups: Mapping[tuple[str, str], SecurityGroup],
    this_host: str,
) -> HostPolicy:
    members: dict[str, set[str]] = {}
    local: list[Endpoint] = []
    for ep in endpoints:
        network = networks.get(ep.network)
        if network is None:
            continue
        for name in ep.security_groups:
            members.setdefault(set_key(network.tenant, name), set()).add(ep.ip)
        if ep.host == this_host:
            local.append(ep)
    ports: list[PortPolicy] = []
    zones: dict[str, int] = {}
    for ep in sorted(local, key=lambda e: (e.network, e.name)):
        network = networks[ep.network]
        ingress, egress = _resolve(network.tenant, ep.security_groups, groups)
        link, bridge = link_of(network.driver, network, ep.name)
        if bridge is not None and network.driver in L2_DRIVERS:
            zones[bridge] = zone_of(network.tenant)
        ports.append(PortPolicy(
            network=ep.network, endpoint=ep.name, tenant=network.tenant,
            driver=network.driver, link=link, bridge=bridge, ip=ep.ip, mac=ep.mac,
            subnet=network.subnet, groups=tuple(ep.security_groups),
            ingress=tuple(ingress), egress=tuple(egress),
        ))
    used = {r.group for p in ports for r in (*p.ingress, *p.egress) if r.group}
    return HostPolicy(
        ports=tuple(ports),
        members={k: frozenset(members.get(k, ())) for k in sorted(used)},
        zones=dict(sorted(zones.items())),
    )
