"""Policy of the openflow driver: pure functions from a port's computed policy
(netd.policy.model.PortPolicy, handed over in HostState.policy) to flows in the hook
tables the pipeline reserved.

* Anti-spoofing (every port, cookie kind PORT_SECURITY): the classifier already admits
  only the port's own source MAC; EGRESS_HOOK (10) lets out ARP whose sender MAC and
  address are the port's and IPv4 from its address, nothing else (no IPv6, no other
  ethertype, no DHCP server replies). INGRESS_HOOK (40) admits frames to the port.
  Both hook tables end in drop: a port whose flows are not in place gets nothing
  through, either way (fail closed).
* Security groups (a port in a group, cookie kind SECURITY_GROUP): every IPv4 packet
  from or to the port passes OVS conntrack in the port's own zone (its OpenFlow port
  number: unique on the bridge, stable across a netd restart), once on the way out
  (10 -> ct -> EGRESS_RULES 11) and once on the way in (40 -> ct -> INGRESS_RULES 41).
  Established and related packets pass, invalid ones are dropped, a new connection
  passes and is committed only if a rule matches (egress: open unless the port's groups
  have egress rules). A zone per port sees both directions of each of its connections,
  and never another port's (two tenants' equal addresses stay apart); a packet between
  two local ports is tracked in each port's zone.
* A remote group is one flow per member address; a member that comes or goes changes
  exactly its own flows' cookies, so the driver's cookie diff installs or deletes just
  those.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping

from netd.policy.model import PortPolicy, Rule
from plugins.openflow.cookies import Kind, stable_id
from plugins.openflow.pipeline import (
    ARP_RESPONDER,
    EGRESS_HOOK,
    EGRESS_RULES,
    ETH_ARP,
    ETH_IP,
    INGRESS_HOOK,
    INGRESS_RULES,
    LOCAL_OUTPUT,
    Action,
    Flow,
    LocalPort,
    l2_match,
)

PRIO_DROP_FIRST = 200  # invalid connections, DHCP server replies
PRIO_STATE = 190  # established / related
PRIO_RULE = 100

# ct_state bits (OVS: ovs-fields(7))
CS_NEW, CS_EST, CS_REL, CS_INV, CS_TRK = 0x01, 0x02, 0x04, 0x10, 0x20
PROTO = {"tcp": 6, "udp": 17, "icmp": 1}
DHCP_SERVER_PORT = 67


def port_zone(ofport: int) -> int:
    """The conntrack zone of a local port (1..65535)."""
    return (ofport - 1) % 0xFFFF + 1


def ct(zone: int, *, commit: bool = False, table: int | None = None) -> Action:
    return ("ct", commit, zone, table)


def port_ranges(low: int, high: int) -> list[tuple[int, int]]:
    """[low, high] as (value, mask) pairs a masked tcp_dst/udp_dst can match."""
    out: list[tuple[int, int]] = []
    while low <= high:
        size = low & -low if low else 1 << 16
        while low + size - 1 > high:
            size >>= 1
        out.append((low, 0xFFFF & ~(size - 1)))
        low += size
    return out


def _state(bits: int, *, also_clear: int = 0) -> tuple[str, tuple[int, int]]:
    return ("ct_state", (bits | CS_TRK, bits | CS_TRK | also_clear))


def _remote_matches(rule: Rule, members: Mapping[str, frozenset[str]]
                    ) -> list[tuple[tuple[str, object], ...]]:
    """The remote part of a rule: one match per member address or the CIDR."""
    field = "ipv4_src" if rule.direction == "ingress" else "ipv4_dst"
    if rule.cidr is not None:
        net = ipaddress.ip_network(rule.cidr)
        if net.prefixlen == 0:
            return [()]
        if net.prefixlen == 32:
            return [((field, str(net.network_address)),)]
        return [((field, (str(net.network_address), str(net.netmask))),)]
    if rule.group is not None:
        return [((field, ip),) for ip in sorted(members.get(rule.group, ()),
                                                key=ipaddress.ip_address)]
    return [()]


def _proto_matches(rule: Rule) -> list[tuple[tuple[str, object], ...]]:
    if rule.protocol == "any":
        return [()]
    proto = PROTO[rule.protocol]
    if rule.port_min is None or rule.protocol == "icmp":
        return [(("ip_proto", proto),)]
    dst = f"{rule.protocol}_dst"
    high = rule.port_max if rule.port_max is not None else rule.port_min
    return [(("ip_proto", proto), (dst, value if mask == 0xFFFF else (value, mask)))
            for value, mask in port_ranges(rule.port_min, high)]


def rule_matches(rule: Rule, members: Mapping[str, frozenset[str]]
                 ) -> list[tuple[tuple[str, object], ...]]:
    """Every match (fields besides the port, IPv4 and ct_state) that lets a new
    connection through `rule`."""
    return [(*remote, *proto)
            for remote in _remote_matches(rule, members) for proto in _proto_matches(rule)]


def _sorted(*fields: tuple[str, object]) -> tuple[tuple[str, object], ...]:
    return tuple(sorted(fields))


def open_policy(network: str, port: LocalPort) -> PortPolicy:
    """The policy of a port when none was computed: anti-spoofing only, no groups."""
    endpoint = port.key.split("/", 1)[1]
    return PortPolicy(network=network, endpoint=endpoint, tenant="", driver="openflow",
                      link=None, bridge=None, ip=port.ip, mac=port.mac, subnet="")


def port_security_flows(vni: int, port: LocalPort, policy: PortPolicy) -> list[Flow]:
    """Anti-spoofing and the hook-table entries of one local port."""
    k, o, p = Kind.PORT_SECURITY, stable_id(port.key), port.ofport
    from_port = (("in_port", p),)
    restricted = policy.restricted_ingress or policy.restricted_egress
    zone = port_zone(p)
    ip_from_port = _sorted(*from_port, ("eth_type", ETH_IP), ("ipv4_src", port.ip))
    flows = [
        Flow(EGRESS_HOOK, PRIO_RULE, k, o, _sorted(*from_port, ("eth_type", ETH_ARP),
                                                  ("arp_spa", port.ip), ("arp_sha", port.mac)),
             goto=ARP_RESPONDER),
        Flow(EGRESS_HOOK, PRIO_DROP_FIRST, k, o, _sorted(
            *from_port, ("eth_type", ETH_IP), ("ipv4_src", port.ip), ("ip_proto", 17),
            ("udp_src", DHCP_SERVER_PORT))),
        Flow(EGRESS_HOOK, PRIO_RULE, k, o, ip_from_port,
             actions=(ct(zone, table=EGRESS_RULES),))
        if restricted else Flow(EGRESS_HOOK, PRIO_RULE, k, o, ip_from_port, goto=ARP_RESPONDER),
    ]
    to_port = l2_match(vni, port.mac)
    if policy.restricted_ingress:
        flows += [
            Flow(INGRESS_HOOK, PRIO_RULE, k, o, _sorted(*to_port, ("eth_type", ETH_ARP)),
                 goto=LOCAL_OUTPUT),
            Flow(INGRESS_HOOK, PRIO_RULE, k, o, _sorted(*to_port, ("eth_type", ETH_IP),
                                                       ("ipv4_dst", port.ip)),
                 actions=(ct(zone, table=INGRESS_RULES),)),
        ]
    else:
        flows.append(Flow(INGRESS_HOOK, PRIO_RULE, k, o, to_port, goto=LOCAL_OUTPUT))
    return flows


def security_group_flows(vni: int, port: LocalPort, policy: PortPolicy,
                         members: Mapping[str, frozenset[str]]) -> list[Flow]:
    """The stateful rules of a port in one or more groups (none for a port in none)."""
    if not (policy.restricted_ingress or policy.restricted_egress):
        return []
    k, o = Kind.SECURITY_GROUP, stable_id(port.key)
    zone = port_zone(port.ofport)
    commit = (ct(zone, commit=True),)
    flows: list[Flow] = []
    for table, own, goto, rules, restricted in (
        (EGRESS_RULES, (("in_port", port.ofport), ("eth_type", ETH_IP)), ARP_RESPONDER,
         policy.egress, policy.restricted_egress),
        (INGRESS_RULES, (*l2_match(vni, port.mac), ("eth_type", ETH_IP)), LOCAL_OUTPUT,
         policy.ingress, policy.restricted_ingress),
    ):
        flows += [
            Flow(table, PRIO_DROP_FIRST, k, o, _sorted(*own, _state(CS_INV))),
            Flow(table, PRIO_STATE, k, o, _sorted(*own, _state(CS_EST, also_clear=CS_INV)),
                 goto=goto),
            Flow(table, PRIO_STATE, k, o, _sorted(*own, _state(CS_REL, also_clear=CS_INV)),
                 goto=goto),
        ]
        new = _state(CS_NEW, also_clear=CS_INV)
        if not restricted:
            flows.append(Flow(table, PRIO_RULE, k, o, _sorted(*own, new), actions=commit,
                              goto=goto))
            continue
        for rule in rules:
            for match in rule_matches(rule, members):
                flows.append(Flow(table, PRIO_RULE, k, o, _sorted(*own, new, *match),
                                  actions=commit, goto=goto))
    return flows


def port_flows(vni: int, port: LocalPort, policy: PortPolicy | None,
               members: Mapping[str, frozenset[str]]) -> list[Flow]:
    """Everything of one port's policy; `policy` None: not computed yet, closed.
    Cached by the port, its policy and its remote groups' members: an apply recomputes
    only the ports whose policy or groups changed."""
    if policy is None:
        return []
    used = sorted({r.group for r in (*policy.ingress, *policy.egress) if r.group})
    return list(_port_flows(vni, port, policy,
                            tuple((k, members.get(k, frozenset())) for k in used)))


@functools.lru_cache(maxsize=16384)
def _port_flows(vni: int, port: LocalPort, policy: PortPolicy,
                members: tuple[tuple[str, frozenset[str]], ...]) -> tuple[Flow, ...]:
    return (*port_security_flows(vni, port, policy),
            *security_group_flows(vni, port, policy, dict(members)))
