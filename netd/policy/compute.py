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
from bisect import bisect_left
from collections.abc import Iterable, Mapping

from netd.model import Endpoint, Network, SecurityGroup
from netd.plumbing.names import roles_of
from netd.policy.model import HostPolicy, PortPolicy, Rule

# drivers whose networks are one L2 segment on a bridge per network, whose traffic is
# therefore bridged (not routed): their bridges get conntrack zones
L2_DRIVERS = frozenset({"weave"})


@functools.lru_cache(maxsize=4096)
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


def port_policy(network: Network, ep: Endpoint,
                groups: Mapping[tuple[str, str], SecurityGroup]) -> PortPolicy:
    """One local endpoint's policy: a function of its network, its own record and the
    groups it names (nothing else), so it is recomputed only when one of those changes."""
    ingress, egress = _resolve(network.tenant, ep.security_groups, groups)
    link, bridge = link_of(network.driver, network, ep.name)
    return PortPolicy(
        network=ep.network, endpoint=ep.name, tenant=network.tenant,
        driver=network.driver, link=link, bridge=bridge, ip=ep.ip, mac=ep.mac,
        subnet=network.subnet, groups=tuple(ep.security_groups),
        ingress=tuple(ingress), egress=tuple(egress),
    )


def zones_of(ports: Iterable[PortPolicy]) -> dict[str, int]:
    """Bridge -> its tenant's zone. A bridge is one network's, so its ports share a
    tenant; were they ever to differ, the smallest tenant name decides."""
    tenants: dict[str, str] = {}
    for p in ports:
        if p.bridge is not None and p.driver in L2_DRIVERS:
            tenants[p.bridge] = min(tenants.get(p.bridge, p.tenant), p.tenant)
    return {b: zone_of(t) for b, t in sorted(tenants.items())}


def host_policy(
    networks: Mapping[str, Network],
    endpoints: Iterable[Endpoint],
    groups: Mapping[tuple[str, str], SecurityGroup],
    this_host: str,
) -> HostPolicy:
    """The whole policy from every record (the reference `PolicyIndex` must equal)."""
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
    ports = [port_policy(networks[ep.network], ep, groups)
             for ep in sorted(local, key=lambda e: (e.network, e.name))]
    used = {r.group for p in ports for r in (*p.ingress, *p.egress) if r.group}
    return HostPolicy(
        ports=tuple(ports),
        members={k: frozenset(members.get(k, ())) for k in sorted(used)},
        zones=zones_of(ports),
    )


PortKey = tuple[str, str]  # (network, endpoint)


class PolicyIndex:
    """This host's policy kept current record by record (equal to `host_policy` over
    the same records; tests/unit/netd/policy/test_incremental.py checks it on random
    event sequences).

    A record changes only what depends on it: an endpoint its own port and the member
    sets of its groups (one address added or removed), a group the ports that name it,
    a network its endpoints. Unchanged ports keep their PortPolicy object and an
    unchanged policy is the same HostPolicy object, so the appliers can skip by
    identity. Not thread-safe: the reconciler's watch thread owns it (as calc's
    DesiredState)."""

    def __init__(self) -> None:
        self._networks: dict[str, Network] = {}
        self._groups: dict[tuple[str, str], SecurityGroup] = {}
        self._endpoints: dict[str, dict[str, Endpoint]] = {}  # network -> name -> ep
        # member set key -> address -> how many endpoints (of known networks) hold it
        self._members: dict[str, dict[str, int]] = {}
        self._frozen: dict[str, frozenset[str]] = {}  # member sets as last handed out
        self._host: str | None = None
        self._ports: dict[PortKey, PortPolicy] = {}
        self._order: list[PortKey] = []  # keys of _ports, sorted
        self._listed: list[PortPolicy] = []  # _ports in that order
        self._used: dict[str, int] = {}  # member set key -> local ports whose rules name it
        self._bridge_tenants: dict[str, dict[str, int]] = {}  # L2 bridge -> tenant -> ports
        self._named_by: dict[tuple[str, str], set[PortKey]] = {}  # group -> local ports
        self._dirty: set[PortKey] = set()
        self._changed_sets: set[str] = set()
        self._policy: HostPolicy | None = None

    # --- records ------------------------------------------------------------------
    def put_network(self, network: Network) -> None:
        self._leave_network(network.name)
        self._networks[network.name] = network
        self._join_network(network.name)

    def drop_network(self, name: str) -> None:
        self._leave_network(name)
        self._networks.pop(name, None)

    def put_endpoint(self, ep: Endpoint) -> None:
        self.drop_endpoint(ep.network, ep.name)
        self._endpoints.setdefault(ep.network, {})[ep.name] = ep
        self._count(ep, +1)
        self._dirty.add((ep.network, ep.name))

    def drop_endpoint(self, network: str, name: str) -> None:
        eps = self._endpoints.get(network)
        ep = eps.pop(name, None) if eps is not None else None
        if ep is None:
            return
        if not eps:
            del self._endpoints[network]
        self._count(ep, -1)
        self._dirty.add((network, name))

    def put_group(self, tenant: str, name: str, group: SecurityGroup) -> None:
        self._groups[(tenant, name)] = group
        self._dirty |= self._named_by.get((tenant, name), set())

    def drop_group(self, tenant: str, name: str) -> None:
        if self._groups.pop((tenant, name), None) is not None:
            self._dirty |= self._named_by.get((tenant, name), set())

    def reset(self) -> None:
        """Forget every record (before a re-list puts them all again)."""
        self.__init__()  # type: ignore[misc]

    # --- the policy ---------------------------------------------------------------
    def policy(self, this_host: str) -> HostPolicy:
        """This host's policy; the same object as last time when nothing changed."""
        if this_host != self._host:
            self._host = this_host
            self._dirty |= set(self._ports)
            self._dirty |= {(n, e) for n, eps in self._endpoints.items() for e in eps}
        if self._policy is not None and not self._dirty and not self._changed_sets:
            return self._policy
        ports_changed = False
        for key in self._dirty:
            port = self._port(key)
            old = self._ports.get(key)
            if port == old:
                continue
            ports_changed = True
            if old is not None:
                self._remove(key, old)
            if port is not None:
                self._add(key, port)
        self._dirty.clear()
        previous = self._policy
        if previous is None or ports_changed:
            ports = tuple(self._listed)
            zones: Mapping[str, int] = {
                b: zone_of(min(t)) for b, t in sorted(self._bridge_tenants.items())}
            used = sorted(self._used)
        else:
            ports, zones, used = previous.ports, previous.zones, list(previous.members)
        for name in self._changed_sets:
            now = frozenset(self._members.get(name, ()))
            if self._frozen.get(name) != now:
                self._frozen[name] = now
        self._changed_sets.clear()
        members = {k: self._frozen_set(k) for k in used}
        if previous is not None and not ports_changed and all(
                members[k] is previous.members[k] for k in used):
            return previous
        if previous is not None and zones == previous.zones:
            zones = previous.zones
        self._policy = HostPolicy(ports=ports, members=members, zones=zones)
        return self._policy

    # --- internals ----------------------------------------------------------------
    def _port(self, key: PortKey) -> PortPolicy | None:
        ep = self._endpoints.get(key[0], {}).get(key[1])
        network = self._networks.get(key[0])
        if ep is None or network is None or ep.host != self._host:
            return None
        return port_policy(network, ep, self._groups)

    def _add(self, key: PortKey, port: PortPolicy) -> None:
        self._ports[key] = port
        i = bisect_left(self._order, key)
        self._order.insert(i, key)
        self._listed.insert(i, port)
        for group in port.groups:
            self._named_by.setdefault((port.tenant, group), set()).add(key)
        for name in {r.group for r in (*port.ingress, *port.egress) if r.group}:
            self._used[name] = self._used.get(name, 0) + 1
        if port.bridge is not None and port.driver in L2_DRIVERS:
            tenants = self._bridge_tenants.setdefault(port.bridge, {})
            tenants[port.tenant] = tenants.get(port.tenant, 0) + 1

    def _remove(self, key: PortKey, port: PortPolicy) -> None:
        del self._ports[key]
        i = bisect_left(self._order, key)
        del self._order[i], self._listed[i]
        for group in port.groups:
            names = self._named_by.get((port.tenant, group))
            if names is not None:
                names.discard(key)
                if not names:
                    del self._named_by[(port.tenant, group)]
        for name in {r.group for r in (*port.ingress, *port.egress) if r.group}:
            self._used[name] -= 1
            if not self._used[name]:
                del self._used[name]
        if port.bridge is not None and port.driver in L2_DRIVERS:
            tenants = self._bridge_tenants[port.bridge]
            tenants[port.tenant] -= 1
            if not tenants[port.tenant]:
                del tenants[port.tenant]
                if not tenants:
                    del self._bridge_tenants[port.bridge]

    def _frozen_set(self, key: str) -> frozenset[str]:
        frozen = self._frozen.get(key)
        if frozen is None:
            frozen = self._frozen[key] = frozenset(self._members.get(key, ()))
        return frozen

    def _count(self, ep: Endpoint, step: int) -> None:
        network = self._networks.get(ep.network)
        if network is None:
            return
        for name in ep.security_groups:
            key = set_key(network.tenant, name)
            counts = self._members.setdefault(key, {})
            left = counts.get(ep.ip, 0) + step
            if left > 0:
                counts[ep.ip] = left
            else:
                counts.pop(ep.ip, None)
                if not counts:
                    del self._members[key]
            self._changed_sets.add(key)

    def _leave_network(self, name: str) -> None:
        for ep in self._endpoints.get(name, {}).values():
            self._count(ep, -1)
            self._dirty.add((name, ep.name))

    def _join_network(self, name: str) -> None:
        for ep in self._endpoints.get(name, {}).values():
            self._count(ep, +1)
            self._dirty.add((name, ep.name))
