"""The flow pipeline of netd's integration bridge: pure functions from desired state to
flows (values), one function per kind of owning object.

Tables (OpenFlow 1.3; `metadata` carries the network's VNI, bit 32 marks a frame that
came from a tunnel):

  0   CLASSIFIER      a local port with its endpoint's source MAC -> metadata=VNI, 10;
                      a tunnel port -> 5; the MAC2MAC patch port -> 3; anything else
                      dropped (spoofed MACs too)
  3   MAC2MAC_IN      untunnelled frame from a peer on the segment: the destination MAC
                      names (VNI, local endpoint) -> real MAC, metadata=VNI|FROM_TUNNEL, 4
  4   MAC2MAC_SRC     its source MAC names (VNI, remote endpoint) -> real MAC, 30
  5   TUNNEL_INGRESS  tunnel port + tunnel key (VNI) of a network this host serves ->
                      metadata=VNI|FROM_TUNNEL, 30
  10  EGRESS_HOOK     anti-spoofing per local port (its ARP and IPv4 source only); a
                      port in a security group -> conntrack in its zone -> 11, others
                      -> 20; anything else dropped (plugins.openflow.security)
  11  EGRESS_RULES    established/related -> 20, new connections the port's egress
                      rules allow -> committed, 20; else dropped
  20  ARP_RESPONDER   ARP requests for known endpoints of the network answered by flows
                      (out the port they came in); others -> 30
  30  L2_LOOKUP       destination MAC of a local endpoint -> 40; of a remote endpoint
                      (frames not from a tunnel) -> tunnel key = VNI, out its host's
                      tunnel port; broadcast and unknown -> 60
  40  INGRESS_HOOK    frames to a local port: ARP and IPv4 to a port in a group ->
                      conntrack in its zone -> 41; to others -> 50; else dropped
  41  INGRESS_RULES   established/related -> 50, new connections the port's ingress
                      rules allow -> committed, 50; else dropped
  50  LOCAL_OUTPUT    destination MAC -> the endpoint's port
  60  FLOOD           frames from local ports: every local port of the network and the
                      tunnel of every peer host with the network; frames from a tunnel:
                      local ports only
  70  MAC2MAC_OUT     (MAC2MAC networks) a frame for a remote endpoint on the same segment,
                      destination already rewritten: source MAC rewritten, out the patch
                      port to the underlay bridge, untunnelled
  200 CANARY          one flow nothing reaches: its absence means the switch lost netd's
                      flows (ovs-vswitchd restarted, someone ran del-flows)

Each table ends in a priority-0 flow of netd's (drop, or goto the next table), so the
whole table content is netd's and recognisable by cookie (plugins.openflow.cookies).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from plugins.openflow.cookies import Kind, flow_cookie, stable_id

# tables
CLASSIFIER = 0
MAC2MAC_IN = 3
MAC2MAC_SRC = 4
TUNNEL_INGRESS = 5
EGRESS_HOOK = 10
EGRESS_RULES = 11
ARP_RESPONDER = 20
L2_LOOKUP = 30
INGRESS_HOOK = 40
INGRESS_RULES = 41
LOCAL_OUTPUT = 50
FLOOD = 60
MAC2MAC_OUT = 70
CANARY = 200
TABLES = {
    "classifier": CLASSIFIER, "tunnel_ingress": TUNNEL_INGRESS, "egress_hook": EGRESS_HOOK,
    "arp_responder": ARP_RESPONDER, "l2_lookup": L2_LOOKUP, "ingress_hook": INGRESS_HOOK,
    "egress_rules": EGRESS_RULES, "ingress_rules": INGRESS_RULES,
    "local_output": LOCAL_OUTPUT, "flood": FLOOD, "canary": CANARY,
    "mac2mac_in": MAC2MAC_IN, "mac2mac_src": MAC2MAC_SRC, "mac2mac_out": MAC2MAC_OUT,
}

# priorities
PRIO_DEFAULT = 0  # end of a table
PRIO_FLOOD = 10  # broadcast / unknown unicast within a network
PRIO_MAC2MAC = 90  # restore a MAC2MAC-rewritten destination
PRIO_MATCH = 100  # an exact object (port, MAC, IP)
PRIO_IP_FLOOD = 110  # IPv4 floods that skip ports in a security group

VNI_MASK = 0xFFFFFF
FROM_TUNNEL = 1 << 32
NETWORK_MASK = VNI_MASK | FROM_TUNNEL  # the VNI and where the frame came from
METADATA_ALL = (1 << 64) - 1
ETH_ARP = 0x0806
ETH_IP = 0x0800
ARP_REQUEST = 1
ARP_REPLY = 2

# one action: ("output", port) | ("in_port",) | ("set_field", name, value)
#             | ("move", src_field, dst_field, n_bits) | ("ct", commit, zone, table or None)
Action = tuple[Any, ...]


@dataclass(frozen=True)
class Flow:
    table: int
    priority: int
    kind: Kind
    owner: int
    match: tuple[tuple[str, Any], ...] = ()  # os-ken OFPMatch keyword arguments, sorted
    actions: tuple[Action, ...] = ()  # apply-actions, in order
    write_metadata: tuple[int, int] | None = None  # (value, mask)
    goto: int | None = None

    @property
    def cookie(self) -> int:
        content = repr((self.table, self.priority, self.match, self.actions,
                        self.write_metadata, self.goto))
        return flow_cookie(self.kind, self.owner, content)

    def describe(self) -> str:
        match = ",".join(f"{k}={_show(v)}" for k, v in self.match)
        acts = [",".join(str(a) for a in action) for action in self.actions]
        if self.write_metadata is not None:
            acts.append(f"write_metadata:{self.write_metadata[0]:#x}/{self.write_metadata[1]:#x}")
        if self.goto is not None:
            acts.append(f"goto:{self.goto}")
        return (f"table={self.table},priority={self.priority},cookie={self.cookie:#x},"
                f"{match} -> {';'.join(acts) or 'drop'}")


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return f"{_show(value[0])}/{_show(value[1])}"
    return hex(value) if isinstance(value, int) and value > 255 else str(value)


def _match(**fields: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(fields.items()))


@dataclass(frozen=True)
class LocalPort:
    key: str  # "<network>/<endpoint>"
    mac: str
    ip: str
    ofport: int


@dataclass(frozen=True)
class RemoteMac:
    key: str  # "<network>/<endpoint>"
    mac: str
    ip: str
    tunnel_ofport: int
    mac2mac: bool = False  # on this host's underlay segment: leaves untunnelled


@dataclass(frozen=True)
class NetworkView:
    """One network as the pipeline needs it: ports resolved to OpenFlow port numbers."""

    vni: int
    local: tuple[LocalPort, ...] = ()
    remote: tuple[RemoteMac, ...] = ()
    peer_tunnels: tuple[int, ...] = ()  # tunnel ofport of each peer host with the network
    mac2mac_port: int | None = None  # patch port to the underlay bridge (MAC2MAC on)
    closed: tuple[int, ...] = ()  # local ports in a security group: no IPv4 floods


# --- match helpers shared by the install and delete sides ---------------------------------
def network_match(vni: int, *, from_tunnel: bool | None = None, **fields: Any
                  ) -> tuple[tuple[str, Any], ...]:
    """Frames of network `vni`; from_tunnel None: from anywhere."""
    if from_tunnel is None:
        return _match(metadata=(vni, VNI_MASK), **fields)
    value = vni | (FROM_TUNNEL if from_tunnel else 0)
    return _match(metadata=(value, NETWORK_MASK), **fields)


def l2_match(vni: int, mac: str, *, from_tunnel: bool | None = None
             ) -> tuple[tuple[str, Any], ...]:
    return network_match(vni, from_tunnel=from_tunnel, eth_dst=mac)


def arp_match(vni: int, ip: str) -> tuple[tuple[str, Any], ...]:
    return network_match(vni, eth_type=ETH_ARP, arp_op=ARP_REQUEST, arp_tpa=ip)


# --- flows per kind -----------------------------------------------------------------------
def pipeline_flows() -> list[Flow]:
    """The end of every table, and the canary."""
    k, o = Kind.PIPELINE, 0
    return [
        Flow(CLASSIFIER, PRIO_DEFAULT, k, o),
        Flow(TUNNEL_INGRESS, PRIO_DEFAULT, k, o),
        Flow(EGRESS_HOOK, PRIO_DEFAULT, k, o),
        Flow(EGRESS_RULES, PRIO_DEFAULT, k, o),
        Flow(ARP_RESPONDER, PRIO_DEFAULT, k, o, goto=L2_LOOKUP),
        Flow(L2_LOOKUP, PRIO_DEFAULT, k, o),
        Flow(INGRESS_HOOK, PRIO_DEFAULT, k, o),
        Flow(INGRESS_RULES, PRIO_DEFAULT, k, o),
        Flow(LOCAL_OUTPUT, PRIO_DEFAULT, k, o),
        Flow(FLOOD, PRIO_DEFAULT, k, o),
        Flow(MAC2MAC_IN, PRIO_DEFAULT, k, o),
        Flow(MAC2MAC_SRC, PRIO_DEFAULT, k, o),
        Flow(MAC2MAC_OUT, PRIO_DEFAULT, k, o),
        canary_flow(),
    ]


def canary_flow() -> Flow:
    return Flow(CANARY, PRIO_DEFAULT, Kind.CANARY, 0)


def tunnel_flows(port_name: str, ofport: int) -> list[Flow]:
    return [Flow(CLASSIFIER, PRIO_MATCH, Kind.TUNNEL, stable_id(port_name),
                 _match(in_port=ofport), goto=TUNNEL_INGRESS)]


def arp_responder_actions(mac: str, ip: str) -> tuple[Action, ...]:
    """Turn the request into the reply in place and send it back (Neutron's responder)."""
    return (
        ("set_field", "arp_op", ARP_REPLY),
        ("move", "arp_sha", "arp_tha", 48),
        ("move", "arp_spa", "arp_tpa", 32),
        ("set_field", "arp_sha", mac),
        ("set_field", "arp_spa", ip),
        ("move", "eth_src", "eth_dst", 48),
        ("set_field", "eth_src", mac),
        ("in_port",),
    )


def network_flows(view: NetworkView) -> list[Flow]:
    k, v = Kind.NETWORK, view.vni
    local_out = tuple(("output", p.ofport) for p in sorted(view.local, key=lambda p: p.ofport))
    tunnels_out = tuple(("output", t) for t in sorted(set(view.peer_tunnels)))
    to_peers: tuple[Action, ...] = (("set_field", "tunnel_id", v), *tunnels_out) \
        if tunnels_out else ()
    flows = [
        Flow(L2_LOOKUP, PRIO_FLOOD, k, v, network_match(v), goto=FLOOD),
        Flow(FLOOD, PRIO_MATCH, k, v, network_match(v, from_tunnel=False),
             actions=local_out + to_peers),
        Flow(FLOOD, PRIO_MATCH, k, v, network_match(v, from_tunnel=True), actions=local_out),
    ]
    if view.closed:  # IPv4 broadcast and multicast never reach a port in a group
        open_out = tuple(a for a in local_out if a[1] not in view.closed)
        flows += [
            Flow(FLOOD, PRIO_IP_FLOOD, k, v, network_match(v, from_tunnel=False,
                                                           eth_type=ETH_IP),
                 actions=open_out + to_peers),
            Flow(FLOOD, PRIO_IP_FLOOD, k, v, network_match(v, from_tunnel=True,
                                                           eth_type=ETH_IP),
                 actions=open_out),
        ]
    for tun in sorted(set(view.peer_tunnels)):
        flows.append(Flow(TUNNEL_INGRESS, PRIO_MATCH, k, v, _match(in_port=tun, tunnel_id=v),
                          write_metadata=(v | FROM_TUNNEL, METADATA_ALL), goto=L2_LOOKUP))
    return flows


def endpoint_flows(vni: int, port: LocalPort) -> list[Flow]:
    k, o = Kind.ENDPOINT, stable_id(port.key)
    return [
        Flow(CLASSIFIER, PRIO_MATCH, k, o, _match(in_port=port.ofport, eth_src=port.mac),
             write_metadata=(vni, METADATA_ALL), goto=EGRESS_HOOK),
        Flow(ARP_RESPONDER, PRIO_MATCH, k, o, arp_match(vni, port.ip),
             actions=arp_responder_actions(port.mac, port.ip)),
        Flow(L2_LOOKUP, PRIO_MATCH, k, o, l2_match(vni, port.mac), goto=INGRESS_HOOK),
        Flow(LOCAL_OUTPUT, PRIO_MATCH, k, o, l2_match(vni, port.mac),
             actions=(("output", port.ofport),)),
    ]


def remote_flows(vni: int, remote: RemoteMac, mac2mac_port: int | None = None) -> list[Flow]:
    k, o = Kind.REMOTE, stable_id(remote.key)
    flows = [Flow(ARP_RESPONDER, PRIO_MATCH, k, o, arp_match(vni, remote.ip),
                  actions=arp_responder_actions(remote.mac, remote.ip))]
    if remote.mac2mac and mac2mac_port is not None:
        alias = mac2mac_alias(vni, remote.ip)
        flows += [
            Flow(L2_LOOKUP, PRIO_MATCH, k, o, l2_match(vni, remote.mac, from_tunnel=False),
                 actions=(("set_field", "eth_dst", alias),), goto=MAC2MAC_OUT),
            Flow(MAC2MAC_SRC, PRIO_MATCH, k, o, network_match(vni, eth_src=alias),
                 actions=(("set_field", "eth_src", remote.mac),), goto=L2_LOOKUP),
        ]
    else:
        flows.append(Flow(L2_LOOKUP, PRIO_MATCH, k, o, l2_match(vni, remote.mac, from_tunnel=False),
                          actions=(("set_field", "tunnel_id", vni),
                                   ("output", remote.tunnel_ofport))))
    return flows


def mac2mac_alias(vni: int, ip: str) -> str:
    """The MAC that names (network, endpoint) on the underlay segment: locally
    administered unicast 0a, the VNI (3 bytes), the address's last two bytes (unique in a
    subnet of /16 or smaller)."""
    octets = [int(x) for x in ip.split(".")]
    raw = [0x0A, (vni >> 16) & 0xFF, (vni >> 8) & 0xFF, vni & 0xFF, octets[2], octets[3]]
    return ":".join(f"{b:02x}" for b in raw)


def mac2mac_port_flows(ofport: int) -> list[Flow]:
    return [Flow(CLASSIFIER, PRIO_MATCH, Kind.MAC2MAC, 0, _match(in_port=ofport),
                 goto=MAC2MAC_IN)]


def mac2mac_endpoint_flows(vni: int, port: LocalPort, mac2mac_port: int) -> list[Flow]:
    """A local endpoint of a MAC2MAC network: frames to its alias come in untunnelled;
    frames it sends to an alias leave with its own alias as source."""
    k, o = Kind.MAC2MAC, stable_id(port.key)
    alias = mac2mac_alias(vni, port.ip)
    return [
        Flow(MAC2MAC_IN, PRIO_MATCH, k, o, _match(eth_dst=alias),
             actions=(("set_field", "eth_dst", port.mac),),
             write_metadata=(vni | FROM_TUNNEL, METADATA_ALL), goto=MAC2MAC_SRC),
        Flow(MAC2MAC_OUT, PRIO_MATCH, k, o, network_match(vni, eth_src=port.mac),
             actions=(("set_field", "eth_src", alias), ("output", mac2mac_port))),
    ]


@dataclass
class DesiredFlows:
    """Every flow the bridge should hold, grouped by owner cookie (kind | id)."""

    by_owner: dict[int, list[Flow]] = field(default_factory=dict)

    def add(self, flows: Iterable[Flow]) -> None:
        for flow in flows:
            self.by_owner.setdefault(flow.cookie & ~0xFFFF, []).append(flow)

    def all(self) -> list[Flow]:
        return [f for flows in self.by_owner.values() for f in flows]

    def cookies(self) -> set[int]:
        return {f.cookie for f in self.all()}


def desired_flows(networks: Sequence[NetworkView],
                  tunnels: Iterable[tuple[str, int]]) -> DesiredFlows:
    """The whole flow table for these networks and tunnel ports (name, ofport)."""
    out = DesiredFlows()
    out.add(pipeline_flows())
    for name, ofport in sorted(tunnels):
        out.add(tunnel_flows(name, ofport))
    from plugins.openflow.security import open_policy, port_flows

    for view in sorted(networks, key=lambda n: n.vni):
        out.add(network_flows(view))
        for port in view.local:
            out.add(endpoint_flows(view.vni, port))
            out.add(port_flows(view.vni, port, open_policy("", port), {}))
            if view.mac2mac_port is not None:
                out.add(mac2mac_endpoint_flows(view.vni, port, view.mac2mac_port))
        for remote in view.remote:
            out.add(remote_flows(view.vni, remote, view.mac2mac_port))
    return out
