"""netd's gateway rules as nft text: the host's tables and each router's table.

Host (the daemon's netns), two tables of the gateway's own, beside the policy's:
* `ip netdgw`: DNAT of published ports (underlay address and loopback) to the tenant
  router's transfer address; masquerade of routers' transfer addresses to the
  underlay address (egress) and of loopback sources towards a router; the exposed-reply
  marks (a connection that came in from an exposing host's gateway MAC keeps that
  host's id in its conntrack mark; its replies get it back in the packet mark).
* `bridge netdgw`: no ARP for a gateway address crosses a network's overlay ports (the
  gateway is on every serving host: each answers only its local containers); frames
  from another exposing host's gateway MAC get its id in the packet mark; replies from
  local containers to this host's gateway MAC that carry an id are re-addressed to that
  host's gateway MAC (they return through the host the connection came in by, so its
  conntrack sees both directions).
Router (its own namespace): `ip netd` with DNAT of published ports to the endpoint,
masquerade of container sources leaving by the uplink, and the egress switch.

Each is applied whole in one transaction (`table X; delete table X; table X {...}`):
the kernel holds the old rules or the new ones, never half; NAT state of running
connections lives in conntrack and is untouched by a replace.
"""

from __future__ import annotations

import json

from netd.gateway.model import GatewayPlan, Router
from netd.gateway.names import MARK_MASK, MARK_SHIFT, ROUTER_UPLINK, UPLINK

TABLE = "netdgw"  # the host's tables (ip and bridge families)
ROUTER_TABLE = "netd"  # the router namespace's table


def _q(name: str) -> str:
    return json.dumps(name)


def _set(values: list[str]) -> str:
    return values[0] if len(values) == 1 else "{ " + ", ".join(values) + " }"


def _replace(family: str, table: str, body: str) -> str:
    return (f"table {family} {table}\ndelete table {family} {table}\n"
            f"table {family} {table} {{\n{body}}}\n")


def _chain(name: str, hook: str, rules: list[str]) -> str:
    text = "".join(f"    {r}\n" for r in rules)
    return f"  chain {name} {{\n    {hook}\n{text}  }}\n"


def host_tables(plan: GatewayPlan) -> str:
    """Both host tables, replacing what is there, in one transaction."""
    uplinks = _q(UPLINK.prefix + "*")
    dnat_in: list[str] = []
    dnat_local: list[str] = []
    for r in plan.routers:
        for f in r.forwards:
            to = f"{f.protocol} dport {f.host_port} dnat to {r.router_ip}:{f.host_port}"
            dnat_in.append(f"ip daddr {plan.underlay_ip} {to}")
            dnat_local.append(f"ip daddr {{ {plan.underlay_ip}, 127.0.0.1 }} {to}")
    for f in plan.forwards:
        to = f"{f.protocol} dport {f.host_port} dnat to {f.ip}:{f.port}"
        dnat_in.append(f"ip daddr {plan.underlay_ip} {to}")
        dnat_local.append(f"ip daddr {{ {plan.underlay_ip}, 127.0.0.1 }} {to}")
    masq = [f"oifname {uplinks} ip saddr 127.0.0.0/8 masquerade"]
    routed_forward: list[str] = ["ct status dnat accept"] if plan.routed else []
    routed_input: list[str] = []
    for n in plan.routed:
        bridge = _q(n.bridge)
        # the tenant's routed networks on this host reach each other through it as inside
        # traffic (netd.policy keeps tenants apart), not as egress or outside sources
        inside = _set(sorted({m.subnet for m in plan.routed if m.tenant == n.tenant}))
        masq.append(f"oifname {bridge} ip saddr 127.0.0.0/8 masquerade")
        if n.egress and n.masquerade:
            masq.append(f"ip saddr {n.subnet} ip daddr != {inside} masquerade")
        if not n.egress:
            routed_forward.append(f"iifname {bridge} ip daddr != {inside} ct state new drop")
            routed_input += [f"iifname {bridge} ct state established,related accept",
                             f"iifname {bridge} ip daddr != {n.subnet} drop"]
        if not n.exposed:
            overlay = (f"iifname != {_set([_q(t) for t in n.tunnels])} " if n.tunnels else "")
            routed_forward.append(f"{overlay}ip saddr != {inside} ip daddr {n.subnet} "
                                  "ct state new drop")
    sources = [r.router_ip for r in plan.routers]
    if sources:
        masq.append(f"oifname != {uplinks} ip saddr {_set(sources)} masquerade")
    ids = sorted({i for r in plan.routers for p in r.ports for i, _ in p.exposers})
    marks = []
    for i in ids:
        mark = f"{i << MARK_SHIFT:#010x}"
        marks.append(f"meta mark & {MARK_MASK:#010x} == {mark} ct state new ct mark set {mark}")
        marks.append(f"ct direction reply ct mark {mark} "
                     f"meta mark set meta mark & {~MARK_MASK & 0xFFFFFFFF:#010x} | {mark}")
    ip_body = (
        _chain("dnat_in", "type nat hook prerouting priority -100; policy accept;", dnat_in)
        + _chain("dnat_local", "type nat hook output priority -100; policy accept;",
                 dnat_local)
        + _chain("snat_out", "type nat hook postrouting priority 100; policy accept;", masq)
        + _chain("reply_marks", "type filter hook prerouting priority -150; policy accept;",
                 marks)
        # routed networks (flannel): outside traffic only where exposed, egress switch
        + _chain("routed_forward", "type filter hook forward priority 0; policy accept;",
                 routed_forward)
        + _chain("routed_input", "type filter hook input priority 0; policy accept;",
                 routed_input)
    )
    guard: list[str] = []
    tag: list[str] = []
    rewrite: list[str] = []
    for r in plan.routers:
        for p in r.ports:
            if p.tunnels:
                tunnels = _set([_q(t) for t in p.tunnels])
                for where in ("oifname", "iifname"):
                    guard.append(f"{where} {tunnels} arp saddr ip {p.gateway} drop")
                    guard.append(f"{where} {tunnels} arp daddr ip {p.gateway} drop")
            for i, mac in p.exposers:
                mark = f"{i << MARK_SHIFT:#010x}"
                if p.tunnels:
                    tag.append(f"iifname {tunnels} ether saddr {mac} meta mark set meta mark & "
                               f"{~MARK_MASK & 0xFFFFFFFF:#010x} | {mark}")
                if p.container_prefix:
                    rewrite.append(
                        f"iifname {_q(p.container_prefix + '*')} ether daddr {p.mac} "
                        f"meta mark & {MARK_MASK:#010x} == {mark} ether daddr set {mac}")
    bridge_body = (
        _chain("arp_guard", "type filter hook forward priority -10; policy accept;", guard)
        + _chain("expose_tag", "type filter hook prerouting priority -190; policy accept;", tag)
        # after br_netfilter (priority 0) ran the ip hooks that restore the mark
        + _chain("expose_return", "type filter hook prerouting priority 10; policy accept;",
                 rewrite)
    )
    return _replace("ip", TABLE, ip_body) + _replace("bridge", TABLE, bridge_body)


def delete_host_tables(present: set[tuple[str, str]]) -> str:
    return "".join(f"delete table {family} {TABLE}\n" for family in ("ip", "bridge")
                   if (family, TABLE) in present)


def router_table(router: Router) -> str:
    """The router namespace's table, replacing what is there, in one transaction."""
    up = _q(ROUTER_UPLINK)
    dnat = [f"iifname {up} ip daddr {router.router_ip} {f.protocol} dport {f.host_port} "
            f"dnat to {f.ip}:{f.port}" for f in router.forwards]
    snat = [f"oifname {up} ip saddr {p.subnet} masquerade"
            for p in router.ports if p.egress and p.masquerade]
    blocked = [f"iifname {_q(p.router_link)} oifname {up} drop"
               for p in router.ports if not p.egress]
    forward = ["ct state established,related accept", *blocked] if blocked else []
    body = (
        _chain("dnat_in", "type nat hook prerouting priority -100; policy accept;", dnat)
        + _chain("snat_out", "type nat hook postrouting priority 100; policy accept;", snat)
        + _chain("egress_guard", "type filter hook forward priority 0; policy accept;", forward)
    )
    return _replace("ip", ROUTER_TABLE, body)
