"""The one nftables module: renders a HostPolicy into netd's own tables and applies it.

Two tables, both named `netd`, nothing else touched (docs/policy.md has the why):

* `bridge netd`: per container port (the host-side veth), anti-spoofing on frames from
  it (prerouting: source MAC, source IP, ARP sender; no IPv6, no DHCP server replies)
  and, on frames to it (forward, output), destination checks plus a guard: an IPv4
  frame to a port in a group, or from a port with egress rules, passes only if netd's
  inet chain marked it as allowed (PASS bit of the packet mark). A port with a kernel
  driver's veth name that has no rules yet gets nothing through (fail closed).
* `ip netd`: conntrack zone per L2 bridge (raw prerouting), and the stateful policy in
  the forward hook, where br_netfilter hands bridged IPv4 with conntrack: established
  and related pass, new connections are matched against the port's resolved rules,
  keyed by (bridge, address) of the port (its address is pinned by anti-spoofing).
  Group members are named sets, so a membership change only rewrites set elements.

Applied with one `nft -f -` run per change: a file is one transaction, so the kernel
never holds half a policy. A changed structure replaces both tables in one transaction
(`table X; delete table X; table X {...}`: no moment without rules); a change of members
only is a flush and refill of the changed sets. A restarted daemon adopts the tables in
place (nothing is flushed at start) and its first apply replaces them atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import netaddr

from netd.errors import DatapathError
from netd.plumbing.names import roles_of
from netd.policy.model import HostPolicy, PortPolicy, Rule

log = logging.getLogger(__name__)

TABLE = "netd"
FAMILIES = ("bridge", "ip")
PASS = 0x20000000  # packet mark bit: netd's inet policy allowed this packet
BRIDGE_NF_SYSCTL = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
NFT = "nft"


def veth_prefixes(drivers: Iterable[str]) -> list[str]:
    """The host-side port name prefixes of kernel drivers (fail closed on these)."""
    return sorted({r.prefix for d in drivers for r in roles_of(d)
                   if r.role == "veth" and r.suffix == "hash"})


def set_name(key: str) -> str:
    return "g_" + hashlib.sha256(key.encode()).hexdigest()[:12]


def _q(name: str) -> str:
    return json.dumps(name)


def _elements(values: Iterable[str]) -> str:
    return ", ".join(sorted(values, key=lambda v: netaddr.IPNetwork(v).first))


def _match(rule: Rule) -> str:
    remote_field = "saddr" if rule.direction == "ingress" else "daddr"
    parts = []
    if rule.cidr is not None:
        parts.append(f"ip {remote_field} {rule.cidr}")
    elif rule.group is not None:
        parts.append(f"ip {remote_field} @{set_name(rule.group)}")
    if rule.protocol in ("tcp", "udp"):
        if rule.port_min is not None:
            ports = (str(rule.port_min) if rule.port_min == rule.port_max
                     else f"{rule.port_min}-{rule.port_max}")
            parts.append(f"{rule.protocol} dport {ports}")
        else:
            parts.append(f"meta l4proto {rule.protocol}")
    elif rule.protocol == "icmp":
        parts.append("meta l4proto icmp")
    return " ".join(parts)


@dataclass(frozen=True)
class Rendered:
    structure: str  # both tables without set elements
    sets: dict[str, frozenset[str]]  # set name -> elements

    def full(self) -> str:
        return self.structure + "".join(self.refill(n) for n in sorted(self.sets))

    def refill(self, name: str) -> str:
        text = f"flush set ip {TABLE} {name}\n"
        if self.sets[name]:
            text += f"add element ip {TABLE} {name} {{ {_elements(self.sets[name])} }}\n"
        return text


def render(policy: HostPolicy, drivers: Iterable[str]) -> Rendered:
    """Both tables for the ports of `drivers` (the kernel drivers) in `policy`."""
    drivers = sorted(set(drivers))
    ports = [p for p in policy.ports if p.driver in drivers and p.link]
    prefixes = veth_prefixes(drivers)
    lines: list[str] = []
    for family in FAMILIES:
        lines += [f"table {family} {TABLE}", f"delete table {family} {TABLE}"]
    lines += _bridge_table(ports, prefixes)
    lines += _ip_table(ports, policy)
    sets = {set_name(k): v for k, v in policy.members.items()
            if any(r.group == k for p in ports for r in (*p.ingress, *p.egress))}
    return Rendered("\n".join(lines) + "\n", sets)


def _bridge_table(ports: list[PortPolicy], prefixes: list[str]) -> list[str]:
    out = [f"table bridge {TABLE} {{"]
    from_ports = ", ".join(f"{_q(p.link or '')} : jump p_{p.link}" for p in ports)
    to_ports = ", ".join(f"{_q(p.link or '')} : jump o_{p.link}" for p in ports)
    guarded = [p for p in ports if p.restricted_egress]
    from_guard = ", ".join(f"{_q(p.link or '')} : jump e_{p.link}" for p in guarded)
    unknown_in = [f"    iifname {_q(prefix + '*')} drop" for prefix in prefixes]
    unknown_out = [f"    oifname {_q(prefix + '*')} drop" for prefix in prefixes]
    out += ["  chain prerouting {",
            "    type filter hook prerouting priority -200; policy accept;"]
    if ports:
        out.append(f"    iifname vmap {{ {from_ports} }}")
    out += [*unknown_in, "  }"]
    for hook in ("forward", "output"):
        out += [f"  chain {hook}_ports {{",
                f"    type filter hook {hook} priority 100; policy accept;"]
        if guarded:
            out.append(f"    iifname vmap {{ {from_guard} }}")
        if ports:
            out.append(f"    oifname vmap {{ {to_ports} }}")
        out += [*unknown_out, "  }"]
    for p in ports:
        out += [
            f"  chain p_{p.link} {{",
            f"    ether saddr != {p.mac} drop",
            f"    arp saddr ether != {p.mac} drop",
            f"    arp saddr ip != {p.ip} drop",
            "    ether type arp accept",
            f"    ip saddr != {p.ip} drop",
            "    udp sport 67 drop",
            "    ether type ip accept",
            "    drop",
            "  }",
        ]
        net = netaddr.IPNetwork(p.subnet)
        if p.restricted_ingress:
            allowed = f"ip daddr {p.ip}"
        else:
            allowed = f"ip daddr {{ {p.ip}, {net.broadcast}, 255.255.255.255, 224.0.0.0/4 }}"
        out += [f"  chain o_{p.link} {{", "    ether type arp accept"]
        if p.restricted_ingress:
            out.append(f"    meta mark & {PASS:#x} != {PASS:#x} drop")
        out += [f"    ether type ip {allowed} accept", "    drop", "  }"]
        if p.restricted_egress:
            out += [f"  chain e_{p.link} {{",
                    f"    ether type ip meta mark & {PASS:#x} != {PASS:#x} drop", "  }"]
    out.append("}")
    return out


def _ip_table(ports: list[PortPolicy], policy: HostPolicy) -> list[str]:
    out = [f"table ip {TABLE} {{"]
    used = sorted({r.group for p in ports for r in (*p.ingress, *p.egress) if r.group})
    for key in used:
        out.append(f"  set {set_name(key)} {{ type ipv4_addr; flags interval; }}")
    bridges = sorted({p.bridge for p in ports if p.bridge})
    zones = {b: z for b, z in policy.zones.items() if b in bridges}
    out += ["  chain zone {", "    type filter hook prerouting priority -300; policy accept;"]
    if zones:
        zmap = ", ".join(f"{_q(b)} : {z}" for b, z in sorted(zones.items()))
        out.append(f"    ct zone set iifname map {{ {zmap} }}")
    out += ["  }", "  chain forward {",
            "    type filter hook forward priority 0; policy accept;"]
    if bridges:
        names = ", ".join(_q(b) for b in bridges)
        out += [f"    iifname {{ {names} }} jump decide", f"    oifname {{ {names} }} jump decide"]
    out += ["  }", "  chain decide {",
            f"    ct state established,related meta mark set meta mark | {PASS:#x} accept",
            "    ct state invalid drop"]
    egress = [p for p in ports if p.restricted_egress and p.bridge]
    ingress = [p for p in ports if p.restricted_ingress and p.bridge]
    if egress:
        emap = ", ".join(f"{_q(p.bridge or '')} . {p.ip} : jump eg_{p.link}" for p in egress)
        out.append(f"    iifname . ip saddr vmap {{ {emap} }}")
    if ingress:
        imap = ", ".join(f"{_q(p.bridge or '')} . {p.ip} : jump in_{p.link}" for p in ingress)
        out.append(f"    oifname . ip daddr vmap {{ {imap} }}")
    out += [f"    meta mark set meta mark | {PASS:#x} accept", "  }"]
    for p in egress:
        out.append(f"  chain eg_{p.link} {{")
        out += [f"    {_match(r)} return" for r in p.egress]
        out += ["    drop", "  }"]
    for p in ingress:
        out.append(f"  chain in_{p.link} {{")
        out += [f"    {_match(r)} meta mark set meta mark | {PASS:#x} accept"
                for r in p.ingress]
        out += ["    drop", "  }"]
    out.append("}")
    return out


def run_nft(text: str, timeout: float = 10.0) -> None:
    """One nft transaction (a file is applied all or nothing)."""
    try:
        result = subprocess.run([NFT, "-f", "-"], input=text, capture_output=True, text=True,
                                timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DatapathError(f"nft failed to run: {exc}") from None
    if result.returncode != 0:
        raise DatapathError(f"nft refused the policy: {result.stderr.strip()[:500]}")


def list_tables() -> list[tuple[str, str]]:
    """(family, name) of every nftables table in this netns."""
    result = subprocess.run([NFT, "-j", "list", "tables"], capture_output=True, text=True,
                            timeout=10, check=False)
    if result.returncode != 0:
        raise DatapathError(f"nft list tables failed: {result.stderr.strip()[:300]}")
    items = json.loads(result.stdout or "{}").get("nftables", [])
    return [(i["table"]["family"], i["table"]["name"]) for i in items if "table" in i]


def ensure_bridge_netfilter() -> int:
    """br_netfilter must hand bridged IPv4 to the inet hooks (conntrack) in this netns."""
    try:
        if BRIDGE_NF_SYSCTL.read_text().strip() == "1":
            return 0
        BRIDGE_NF_SYSCTL.write_text("1\n")
        return 1
    except OSError as exc:
        raise DatapathError(
            f"cannot enable {BRIDGE_NF_SYSCTL} ({exc.strerror}): security groups need the "
            "br_netfilter module; without it restricted ports stay closed"
        ) from None


class NftApplier:
    """Keeps netd's tables equal to the rendered policy of the kernel drivers' ports."""

    def __init__(self, drivers: Iterable[str]) -> None:
        self.drivers = sorted(set(drivers))
        self._applied: Rendered | None = None

    def setup(self) -> None:
        """At start: fail closed at once if netd's tables are absent (a fresh host);
        tables already there (a restart) are adopted as they are, never flushed."""
        ensure_bridge_netfilter()
        present = set(list_tables())
        if not all((family, TABLE) in present for family in FAMILIES):
            run_nft(render(HostPolicy(), self.drivers).full())

    def apply(self, policy: HostPolicy, verify: bool = False) -> int:
        """Make netd's tables match `policy`; the number of nft transactions run.
        `verify`: rewrite them whole even if this process applied the same before
        (someone may have changed or deleted them)."""
        if verify:  # the periodic resync: repair any drift by one atomic replace
            ensure_bridge_netfilter()
            self._applied = None
        wanted = render(policy, self.drivers)
        last = self._applied
        if last is not None and last == wanted:
            return 0
        if last is not None and last.structure == wanted.structure:
            changed = [n for n in sorted(wanted.sets) if wanted.sets[n] != last.sets.get(n)]
            run_nft("".join(wanted.refill(n) for n in changed))
        else:
            run_nft(wanted.full())
        self._applied = wanted
        return 1

    def teardown(self) -> None:
        present = set(list_tables())
        text = "".join(f"delete table {family} {TABLE}\n" for family in FAMILIES
                       if (family, TABLE) in present)
        if text:
            run_nft(text)
        self._applied = None
