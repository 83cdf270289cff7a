"""`netctl trace SRC DST`: why a packet between two endpoints is or is not delivered,
from desired state alone (pure: no store, no kernel; netd.trace_kernel checks the
answer against the kernel).

The verdict follows the order netd's policy is enforced in (docs/policy.md): endpoints
that share no network have no path (and two tenants never share one: the tenant
boundary); then the source's egress rules, if its groups have any (else egress is
open); then the destination's ingress rules, if it is in a group (else ingress is open).
The first rule that matches decides; none matching is a deny by the port's closing
`drop`. Rules come from netd.policy.compute.host_policy, the same function the daemon
enforces from, evaluated for the host of each end.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import netaddr

from netd.errors import InvalidInput, NotFound
from netd.model import Endpoint, Host, Network, SecurityGroup
from netd.policy.compute import host_policy, link_of
from netd.policy.model import HostPolicy, PortPolicy, Rule

PROTOCOLS = ("icmp", "tcp", "udp")


@dataclass(frozen=True)
class Flow:
    protocol: str = "icmp"
    port: int | None = None

    @classmethod
    def parse(cls, protocol: str | None, port: str | int | None) -> Flow:
        protocol = protocol or "icmp"
        if protocol not in PROTOCOLS:
            raise InvalidInput(f"invalid protocol {protocol!r}: one of {', '.join(PROTOCOLS)}")
        if port in (None, ""):
            return cls(protocol, None)
        if protocol == "icmp":
            raise InvalidInput("--port needs --proto tcp or udp")
        text = str(port)
        if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 65535:
            raise InvalidInput(f"invalid port {port!r}: expected 1-65535")
        return cls(protocol, int(text))

    def __str__(self) -> str:
        return self.protocol + (f" port {self.port}" if self.port is not None else "")


@dataclass(frozen=True)
class Decision:
    """Who decided at one end: a rule, the port's closing drop, or an open direction."""

    allowed: bool
    direction: str  # egress | ingress
    host: str
    endpoint: str
    rule: Rule | None = None
    group: str | None = None  # the group the rule belongs to
    index: int | None = None  # the rule's position in its port's chain
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        rule = None
        if self.rule is not None:
            r = self.rule
            rule = {"id": r.id, "group": self.group, "direction": r.direction,
                    "protocol": r.protocol, "port_min": r.port_min, "port_max": r.port_max,
                    "cidr": r.cidr, "remote_group": r.group.split("/", 1)[1] if r.group else None,
                    "text": rule_text(r)}
        return {"allowed": self.allowed, "direction": self.direction, "host": self.host,
                "endpoint": self.endpoint, "rule": rule, "reason": self.reason}


@dataclass
class Trace:
    src: Endpoint
    dst: Endpoint
    flow: Flow
    verdict: str  # allow | deny | no-path
    reason: str
    path: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    ports: dict[str, PortPolicy] = field(default_factory=dict)  # "src"/"dst" -> its policy
    members: dict[str, frozenset[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "src": _endpoint(self.src), "dst": _endpoint(self.dst),
            "flow": {"protocol": self.flow.protocol, "port": self.flow.port},
            "verdict": self.verdict, "reason": self.reason, "path": self.path,
            "decisions": [d.to_dict() for d in self.decisions],
        }


def _endpoint(ep: Endpoint) -> dict[str, Any]:
    return {"name": ep.name, "network": ep.network, "host": ep.host, "ip": ep.ip,
            "ifname": ep.ifname}


def rule_text(r: Rule) -> str:
    ports = ""
    if r.port_min is not None:
        ports = (f" port {r.port_min}" if r.port_min == r.port_max
                 else f" ports {r.port_min}-{r.port_max}")
    remote = f"cidr {r.cidr}" if r.cidr else f"group {(r.group or '').split('/', 1)[-1]}"
    way = "from" if r.direction == "ingress" else "to"
    return f"{r.direction} {r.protocol}{ports} {way} {remote}"


def resolve(ref: str, endpoints: Iterable[Endpoint]) -> list[Endpoint]:
    """Endpoints named `ref` (the container's endpoint name) or holding address `ref`."""
    if not isinstance(ref, str) or not ref:
        raise InvalidInput("give the source and destination: an endpoint name or address")
    found = [ep for ep in endpoints if ep.name == ref or ep.ip == ref]
    if not found:
        raise NotFound(f"no endpoint named or addressed {ref!r} (netctl endpoint ls)")
    return sorted(found, key=lambda e: (e.network, e.name))


def pick(srcs: list[Endpoint], dsts: list[Endpoint]) -> tuple[Endpoint, Endpoint]:
    """The pair to trace: one sharing a network if any (the first by network name)."""
    pairs = [(s, d) for s in srcs for d in dsts if (s.network, s.name) != (d.network, d.name)]
    if not pairs:
        raise InvalidInput("source and destination are the same endpoint")
    shared = [(s, d) for s, d in pairs if s.network == d.network]
    return (shared or pairs)[0]


def rule_matches(rule: Rule, remote_ip: str, flow: Flow,
                 members: Mapping[str, frozenset[str]]) -> bool:
    if rule.protocol != "any" and rule.protocol != flow.protocol:
        return False
    if rule.port_min is not None and (
            flow.port is None or not rule.port_min <= flow.port <= (rule.port_max or 0)):
        return False
    if rule.cidr is not None:
        return netaddr.IPAddress(remote_ip) in netaddr.IPNetwork(rule.cidr)
    if rule.group is not None:
        return remote_ip in members.get(rule.group, frozenset())
    return True


def decide(port: PortPolicy, direction: str, host: str, remote_ip: str, flow: Flow,
           members: Mapping[str, frozenset[str]],
           groups: Mapping[tuple[str, str], SecurityGroup]) -> Decision:
    rules = port.egress if direction == "egress" else port.ingress
    restricted = port.restricted_egress if direction == "egress" else port.restricted_ingress
    if not restricted:
        why = ("no egress rules in its groups: egress is open" if direction == "egress"
               else "in no security group: ingress is open")
        return Decision(True, direction, host, port.endpoint, reason=why)
    for index, rule in enumerate(rules):
        if rule_matches(rule, remote_ip, flow, members):
            group = next((g for g in port.groups
                          if any(r.id == rule.id for r in getattr(
                              groups.get((port.tenant, g)), "rules", ()))), None)
            return Decision(True, direction, host, port.endpoint, rule, group, index,
                            f"{direction} rule {rule.id} of group {group}: {rule_text(rule)}")
    return Decision(False, direction, host, port.endpoint, index=len(rules),
                    reason=f"no {direction} rule of groups {', '.join(port.groups)} matches "
                           f"{flow} {'to' if direction == 'egress' else 'from'} {remote_ip}: "
                           "the port's closing drop")


def path_of(src: Endpoint, dst: Endpoint, network: Network,
            hosts: Mapping[str, Host]) -> list[dict[str, Any]]:
    link_src, bridge = link_of(network.driver, network, src.name)
    link_dst, _ = link_of(network.driver, network, dst.name)
    hops: list[dict[str, Any]] = [
        {"hop": "endpoint", **_endpoint(src)},
        {"hop": "port", "host": src.host, "link": link_src, "bridge": bridge},
    ]
    if src.host != dst.host:
        a, b = hosts.get(src.host), hosts.get(dst.host)
        hops.append({"hop": "tunnel", "driver": network.driver, "backend": network.backend,
                     "vni": network.vni, "encrypted": network.encrypt,
                     "from": a.underlay_ip if a else None, "to": b.underlay_ip if b else None,
                     "peer": dst.host, "peer_alive": b is not None})
    hops += [{"hop": "port", "host": dst.host, "link": link_dst, "bridge": bridge},
             {"hop": "endpoint", **_endpoint(dst)}]
    return hops


def trace(networks: Mapping[str, Network], endpoints: Iterable[Endpoint],
          hosts: Mapping[str, Host], groups: Mapping[tuple[str, str], SecurityGroup],
          src_ref: str, dst_ref: str, flow: Flow) -> Trace:
    endpoints = [ep for ep in endpoints if ep.network in networks]
    src, dst = pick(resolve(src_ref, endpoints), resolve(dst_ref, endpoints))
    a, b = networks[src.network], networks[dst.network]
    result = Trace(src, dst, flow, "no-path", "")
    if a.tenant != b.tenant:
        result.reason = (f"tenant boundary: {src.name} is in tenant {a.tenant}, {dst.name} in "
                         f"tenant {b.tenant}; netd never carries traffic between tenants")
        result.verdict = "deny"
        return result
    if a.name != b.name:
        result.reason = (f"no shared network: {src.name} is on {a.name}, {dst.name} on "
                         f"{b.name}; netd carries traffic within a network only")
        return result
    result.path = path_of(src, dst, a, hosts)
    if src.host != dst.host and dst.host not in hosts:
        result.reason = f"host {dst.host} is not alive: its registry lease has lapsed"
        return result
    policies: dict[str, HostPolicy] = {}
    for host in {src.host, dst.host}:
        policies[host] = host_policy(networks, endpoints, groups, host)
    out = policies[src.host].port(src.network, src.name)
    into = policies[dst.host].port(dst.network, dst.name)
    if out is None or into is None:  # host_policy has a port for every local endpoint
        raise NotFound("the endpoints' policy could not be computed")
    result.ports = {"src": out, "dst": into}
    result.members = {**policies[src.host].members, **policies[dst.host].members}
    egress = decide(out, "egress", src.host, dst.ip, flow, policies[src.host].members, groups)
    result.decisions.append(egress)
    if egress.allowed:
        result.decisions.append(decide(into, "ingress", dst.host, src.ip, flow,
                                       policies[dst.host].members, groups))
    final = result.decisions[-1]
    result.verdict = "allow" if all(d.allowed for d in result.decisions) else "deny"
    result.reason = final.reason if not final.allowed else "; ".join(
        f"{d.direction} on {d.host}: {d.reason}" for d in result.decisions)
    return result
