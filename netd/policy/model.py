"""The computed policy of one host, as frozen dataclasses (compared by value)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Rule:
    """One resolved rule: the remote is a CIDR or a member set (`HostPolicy.members`)."""

    id: str
    direction: str  # ingress | egress
    protocol: str  # tcp | udp | icmp | any
    port_min: int | None = None
    port_max: int | None = None
    cidr: str | None = None
    group: str | None = None  # member set key "<tenant>/<group>"


@dataclass(frozen=True)
class PortPolicy:
    """One local endpoint: what it may send as, and what it lets in and out."""

    network: str
    endpoint: str
    tenant: str
    driver: str
    link: str | None  # host-side link (kernel drivers); None when the driver has none
    bridge: str | None  # the network's bridge on this host (kernel drivers)
    ip: str
    mac: str
    subnet: str
    groups: tuple[str, ...] = ()
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()

    @property
    def restricted_ingress(self) -> bool:
        """In a group: ingress denied except by its groups' rules."""
        return bool(self.groups)

    @property
    def restricted_egress(self) -> bool:
        """Egress is open unless its groups have egress rules."""
        return bool(self.egress)


@dataclass(frozen=True)
class HostPolicy:
    ports: tuple[PortPolicy, ...] = ()  # sorted by (network, endpoint)
    # member set key "<tenant>/<group>" -> current addresses of its members (every host)
    members: Mapping[str, frozenset[str]] = field(default_factory=dict)
    zones: Mapping[str, int] = field(default_factory=dict)  # bridge -> conntrack zone

    def of_drivers(self, drivers: frozenset[str]) -> HostPolicy:
        ports = tuple(p for p in self.ports if p.driver in drivers)
        used = {r.group for p in ports for r in (*p.ingress, *p.egress) if r.group}
        return HostPolicy(ports, {k: v for k, v in self.members.items() if k in used},
                          {b: z for b, z in self.zones.items()
                           if any(p.bridge == b for p in ports)})

    def port(self, network: str, endpoint: str) -> PortPolicy | None:
        return next((p for p in self.ports
                     if p.network == network and p.endpoint == endpoint), None)
