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

Applied through one libnftables context kept for the process life (netd.policy.libnft;
docs/policy.md says why): each change is one transaction, so the kernel never holds
half a policy. The base chains dispatch through named verdict maps (port -> its chain),
so a change is applied as the units that differ: a new port adds its chains and map
elements, a gone one deletes them, a changed one does both within the one transaction,
a change of members adds and deletes only the addresses that came and went. The first
apply of a process and every verify pass replace both tables whole in one transaction
(`table X; delete table X; table X {...}`: no moment without rules). A restarted daemon
adopts the tables in place (nothing is flushed at start).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import subprocess
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import netaddr

from netd.errors import DatapathError
from netd.plumbing.names import roles_of
from netd.policy.libnft import Libnft
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


Element = tuple[str, str, str, str]  # (family, map or set, key, value or "")
Chain = tuple[str, str, tuple[str, ...]]  # (family, name, rules)
K = TypeVar("K")
# how many ports use each shared chain, member set, bridge (per tenant), (tenant, subnet)
Counts = tuple[dict[Chain, int], dict[str, int], dict[str, dict[str, int]],
               dict[tuple[str, str], int]]


@dataclass(frozen=True)
class PortUnit:
    """Everything of one port: its chains (family, name, rules), its map elements and
    the shared chains they jump to (rule chains named by a hash of their rules: every
    port with the same rules uses one chain, so the table's chain count, which
    libnftables reads back before every transaction, does not grow with group
    members)."""

    chains: tuple[Chain, ...]
    elements: tuple[Element, ...]
    shared: tuple[Chain, ...] = ()


@dataclass(frozen=True)
class Rendered:
    """netd's tables as a fixed skeleton (base chains dispatching through named maps)
    plus units: per port, per member set, per bridge. A change is applied as the units
    that differ, so one more port costs its own lines, not a rewrite of every port."""

    skeleton: str
    ports: dict[str, PortUnit]  # link -> unit
    sets: dict[str, frozenset[str]]  # member set -> addresses
    bridge_elements: frozenset[Element]  # bridges and zones
    # link -> the PortPolicy its unit was rendered from (a later render reuses the unit
    # of the very same object without comparing)
    sources: dict[str, PortPolicy] = field(default_factory=dict, compare=False)
    # kept as ports come and go, so a render costs the ports that changed: how many
    # ports use each shared chain, each member set, each bridge (per tenant)
    shared_refs: dict[Chain, int] = field(default_factory=dict, compare=False)
    set_refs: dict[str, int] = field(default_factory=dict, compare=False)
    bridge_refs: dict[str, dict[str, int]] = field(default_factory=dict, compare=False)
    subnet_refs: dict[tuple[str, str], int] = field(default_factory=dict, compare=False)
    # what this render changed from the one it was made from (`base`)
    base: weakref.ref[Rendered] | None = field(default=None, compare=False, repr=False)
    changed: frozenset[str] = field(default=frozenset(), compare=False)  # new or changed
    removed: frozenset[str] = field(default=frozenset(), compare=False)
    ports_of: tuple[PortPolicy, ...] | None = field(default=None, compare=False, repr=False)

    def full(self) -> str:
        """Both tables from scratch, replacing what is there, in one transaction. Map
        and set elements go as one command per map (thousands of one-element commands
        cost seconds to evaluate)."""
        lines = [f"table {f} {TABLE}\ndelete table {f} {TABLE}" for f in FAMILIES]
        lines.append(self.skeleton)
        lines += [_add_set(n) for n in sorted(self.sets)]
        chains = [*sorted(self.shared_chains()),
                  *(c for _, u in sorted(self.ports.items()) for c in u.chains)]
        lines += [_chains_block(family, [c for c in chains if c[0] == family])
                  for family in FAMILIES]
        lines += [_set_elements("add", n, self.sets[n]) for n in sorted(self.sets)]
        elements = [e for _, u in sorted(self.ports.items()) for e in u.elements]
        lines += _grouped("add", [*sorted(self.bridge_elements), *elements])
        return "".join(line if line.endswith("\n") else line + "\n" for line in lines if line)

    def shared_chains(self) -> set[Chain]:
        return set(self.shared_refs)

    def delta(self, old: Rendered) -> str:
        """The transaction that turns `old` into this (same skeleton); "" if equal. A
        changed port is removed and added again within it: no moment without rules. A
        member set changes by the addresses that came and went."""
        out: list[str] = []
        if self.base is not None and self.base() is old:  # from `old`: changes known
            gone = {k: old.ports[k] for k in sorted(self.changed | self.removed)
                    if k in old.ports}
            new = {k: self.ports[k] for k in sorted(self.changed)}
        else:
            gone = {k: u for k, u in sorted(old.ports.items())
                    if not _same(self.ports.get(k), u)}
            new = {k: u for k, u in sorted(self.ports.items())
                   if not _same(old.ports.get(k), u)}
        out += _grouped("delete", [e for u in gone.values() for e in u.elements])
        out += _grouped("delete", sorted(old.bridge_elements - self.bridge_elements))
        shared_now = self._shared_if(gone or new)
        shared_before = old._shared_if(gone or new)
        for family, chain, _ in (*(c for u in gone.values() for c in u.chains),
                                 *sorted(shared_before - shared_now)):
            out += [f"flush chain {family} {TABLE} {chain}",
                    f"delete chain {family} {TABLE} {chain}"]
        out += [f"delete set ip {TABLE} {n}" for n in sorted(set(old.sets) - set(self.sets))]
        out += [_add_set(n) for n in sorted(set(self.sets) - set(old.sets))]
        for name in sorted(self.sets):
            now, before = self.sets[name], old.sets.get(name, frozenset())
            if now is not before:
                out.append(_set_elements("delete", name, before - now))
                out.append(_set_elements("add", name, now - before))
        out += [_add_chain(c) for c in sorted(shared_now - shared_before)]
        out += [_add_chains(u) for _, u in sorted(new.items())]
        out += _grouped("add", [*sorted(self.bridge_elements - old.bridge_elements),
                                *(e for u in new.values() for e in u.elements)])
        return "".join(line if line.endswith("\n") else line + "\n" for line in out if line)


    def _shared_if(self, ports_changed: object) -> set[Chain]:
        return self.shared_chains() if ports_changed else set()


def _same(a: PortUnit | None, b: PortUnit) -> bool:
    return a is b or a == b


def _set_elements(verb: str, name: str, values: frozenset[str]) -> str:
    if not values:
        return ""
    return f"{verb} element ip {TABLE} {name} {{ {_elements(values)} }}"


def _grouped(verb: str, elements: Iterable[Element]) -> list[str]:
    """One `add|delete element` command per map, in the order the maps first appear."""
    by_map: dict[tuple[str, str], list[str]] = {}
    for family, name, key, value in elements:
        item = f"{key} : {value}" if value and verb == "add" else key
        by_map.setdefault((family, name), []).append(item)
    return [f"{verb} element {family} {TABLE} {name} {{ {', '.join(items)} }}"
            for (family, name), items in by_map.items()]


def _add_set(name: str) -> str:
    # a hash of addresses, not an interval set: libnftables reads an interval set's
    # elements back before every transaction
    return f"add set ip {TABLE} {name} {{ type ipv4_addr; }}"


def _add_chains(unit: PortUnit) -> str:
    return "".join(_add_chain(c) for c in unit.chains)


def _add_chain(chain: Chain) -> str:
    family, name, rules = chain
    body = "".join(f"    {rule}\n" for rule in rules)
    return f"table {family} {TABLE} {{\n  chain {name} {{\n{body}  }}\n}}\n"


def _chains_block(family: str, chains: list[Chain]) -> str:
    """Many chains of one table in one block (half the evaluation time of a block each)."""
    if not chains:
        return ""
    body = "".join(f"  chain {name} {{\n" + "".join(f"    {r}\n" for r in rules) + "  }\n"
                   for _, name, rules in chains)
    return f"table {family} {TABLE} {{\n{body}}}\n"


def _shared(family: str, prefix: str, rules: tuple[str, ...]) -> Chain:
    digest = hashlib.sha256("\n".join(rules).encode()).hexdigest()[:12]
    return (family, f"{prefix}{digest}", rules)


def render(policy: HostPolicy, drivers: Iterable[str],
           previous: Rendered | None = None) -> Rendered:
    """Both tables for the ports of `drivers` (the kernel drivers) in `policy`. From
    `previous`, a port whose PortPolicy is the very object it was rendered from keeps
    its unit, and the counts of shared chains, sets and bridges change by the ports that
    came, went or changed."""
    kernel = frozenset(drivers)
    if previous is not None and previous.ports_of is policy.ports:
        units, sources = previous.ports, previous.sources  # not changed below
        shared_refs, set_refs = previous.shared_refs, previous.set_refs
        bridge_refs, subnet_refs = previous.bridge_refs, previous.subnet_refs
        changed: set[str] = set()
        removed: set[str] = set()
    else:
        base = previous or Rendered("", {}, {}, frozenset())
        units, sources = dict(base.ports), dict(base.sources)
        shared_refs, set_refs = dict(base.shared_refs), dict(base.set_refs)
        bridge_refs = {b: dict(t) for b, t in base.bridge_refs.items()}
        subnet_refs = dict(base.subnet_refs)
        counts = (shared_refs, set_refs, bridge_refs, subnet_refs)
        seen: set[str] = set()
        changed = set()
        for p in policy.ports:
            if not p.link or p.driver not in kernel:
                continue
            link = p.link
            seen.add(link)
            old = sources.get(link)
            if old is p:
                continue
            unit = _port_unit(p)
            if old is not None:
                _count(old, units[link], counts, -1)
            if old is None or not _same(units[link], unit):
                changed.add(link)
            units[link], sources[link] = unit, p
            _count(p, unit, counts, +1)
        removed = set(sources) - seen
        for link in removed:
            _count(sources[link], units[link], counts, -1)
            del units[link], sources[link]
    bridges = sorted(bridge_refs)
    elements = {("ip", "bridges", _q(b), "") for b in bridges}
    elements |= {("ip", "zones", _q(b), str(z)) for b, z in policy.zones.items()
                 if b in bridge_refs}
    tenant_of = {b: min(bridge_refs[b]) for b in bridges}
    elements |= {("ip", "same_tenant", f"{_q(a)} . {_q(b)}", "")
                 for a in bridges for b in bridges if tenant_of[a] == tenant_of[b]}
    return Rendered(
        skeleton=_skeleton_of(tuple(sorted(kernel)), _tenant_rules(bridge_refs, subnet_refs)),
        ports=units,
        sets={set_name(k): v for k, v in policy.members.items() if k in set_refs},
        bridge_elements=frozenset(elements),
        sources=sources, shared_refs=shared_refs, set_refs=set_refs, bridge_refs=bridge_refs,
        subnet_refs=subnet_refs,
        base=weakref.ref(previous) if previous is not None else None,
        changed=frozenset(changed), removed=frozenset(removed),
        ports_of=policy.ports,
    )


def _tenant_rules(bridge_refs: dict[str, dict[str, int]],
                  subnet_refs: dict[tuple[str, str], int]) -> tuple[str, ...]:
    """Routed traffic (flannel: a host forwards between every network it serves, through
    the bridges, its vxlan devices or the underlay) never goes from a bridge to another
    tenant's subnet, nor into a bridge from one: per bridge, addresses of other tenants'
    networks on this host that are not also its own tenant's. Only with two tenants here."""
    subnets: dict[str, set[str]] = {}
    for tenant, subnet in subnet_refs:
        subnets.setdefault(tenant, set()).add(subnet)
    rules: list[str] = []
    for bridge in sorted(bridge_refs):
        tenant = min(bridge_refs[bridge])
        foreign = {n for t, nets in subnets.items() if t != tenant for n in nets}
        if not foreign:
            continue
        own, other = _elements(subnets[tenant]), _elements(foreign)
        rules += [f"iifname {_q(bridge)} ip daddr != {{ {own} }} ip daddr {{ {other} }} drop",
                  f"oifname {_q(bridge)} ip saddr != {{ {own} }} ip saddr {{ {other} }} drop"]
    return tuple(rules)


def _count(p: PortPolicy, unit: PortUnit, counts: Counts, step: int) -> None:
    shared_refs, set_refs, bridge_refs, subnet_refs = counts
    for chain in unit.shared:
        _add(shared_refs, chain, step)
    for key in {r.group for r in (*p.ingress, *p.egress) if r.group}:
        _add(set_refs, key, step)
    if p.bridge:
        tenants = bridge_refs.setdefault(p.bridge, {})
        _add(tenants, p.tenant, step)
        if not tenants:
            del bridge_refs[p.bridge]
    _add(subnet_refs, (p.tenant, p.subnet), step)


def _add(counts: dict[K, int], key: K, step: int) -> None:
    left = counts.get(key, 0) + step
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


@functools.lru_cache(maxsize=64)
def _skeleton_of(drivers: tuple[str, ...], tenant_rules: tuple[str, ...]) -> str:
    return _skeleton(veth_prefixes(drivers), tenant_rules)


def _skeleton(prefixes: list[str], tenant_rules: tuple[str, ...] = ()) -> str:
    drop_in = "".join(f"    iifname {_q(prefix + '*')} drop\n" for prefix in prefixes)
    drop_out = "".join(f"    oifname {_q(prefix + '*')} drop\n" for prefix in prefixes)
    hooks = "".join(
        f"  chain {hook}_ports {{\n"
        f"    type filter hook {hook} priority 100; policy accept;\n"
        "    iifname vmap @egress_guard\n"
        f"    oifname vmap @to_ports\n{drop_out}  }}\n"
        for hook in ("forward", "output"))
    return (
        f"table bridge {TABLE} {{\n"
        "  map from_ports { type ifname : verdict; }\n"
        "  map to_ports { type ifname : verdict; }\n"
        "  map egress_guard { type ifname : verdict; }\n"
        "  chain prerouting {\n"
        "    type filter hook prerouting priority -200; policy accept;\n"
        f"    iifname vmap @from_ports\n{drop_in}  }}\n{hooks}}}\n"
        f"table ip {TABLE} {{\n"
        "  set bridges { typeof iifname; }\n"
        "  set same_tenant { typeof iifname . oifname; }\n"
        "  map zones { typeof iifname : ct zone; }\n"
        "  map egress { typeof iifname . ip saddr : verdict; }\n"
        "  map ingress { typeof oifname . ip daddr : verdict; }\n"
        "  chain zone {\n"
        "    type filter hook prerouting priority -300; policy accept;\n"
        "    ct zone set iifname map @zones\n"
        "  }\n"
        "  chain forward {\n"
        "    type filter hook forward priority 0; policy accept;\n"
        "    iifname @bridges jump decide\n"
        "    oifname @bridges jump decide\n"
        "  }\n"
        "  chain decide {\n"
        f"    ct state established,related meta mark set meta mark | {PASS:#x} accept\n"
        "    ct state invalid drop\n"
        + "".join(f"    {rule}\n" for rule in tenant_rules) +
        "    iifname @bridges oifname @bridges iifname . oifname != @same_tenant drop\n"
        "    iifname . ip saddr vmap @egress\n"
        "    oifname . ip daddr vmap @ingress\n"
        f"    meta mark set meta mark | {PASS:#x} accept\n"
        "  }\n"
        "}\n"
    )


@functools.lru_cache(maxsize=65536)
def _port_unit(p: PortPolicy) -> PortUnit:
    """A port's chains and map elements; cached by its (immutable) policy, so a render
    costs only the ports that changed."""
    return _render_port(p)


def _render_port(p: PortPolicy) -> PortUnit:
    link = p.link or ""
    net = netaddr.IPNetwork(p.subnet)
    guard = f"meta mark & {PASS:#x} != {PASS:#x} drop"
    chains: list[Chain] = [
        ("bridge", f"p_{link}", (
            f"ether saddr != {p.mac} drop",
            f"arp saddr ether != {p.mac} drop",
            f"arp saddr ip != {p.ip} drop",
            "ether type arp accept",
            f"ip saddr != {p.ip} drop",
            "udp sport 67 drop",
            "ether type ip accept",
            "drop",
        )),
    ]
    if p.restricted_ingress:
        to_port: tuple[str, ...] = ("ether type arp accept", guard,
                                    f"ether type ip ip daddr {p.ip} accept", "drop")
    else:
        # one rule per destination, not an anonymous set: libnftables fetches the
        # elements of every interval set (one request per set) before each transaction
        to_port = ("ether type arp accept",
                   *(f"ether type ip ip daddr {dst} accept"
                     for dst in (p.ip, net.broadcast, "255.255.255.255", "224.0.0.0/4")),
                   "drop")
    chains.append(("bridge", f"o_{link}", to_port))
    elements: list[Element] = [("bridge", "from_ports", _q(link), f"jump p_{link}"),
                               ("bridge", "to_ports", _q(link), f"jump o_{link}")]
    shared: list[Chain] = []
    if p.restricted_egress:
        guard_chain = ("bridge", "egress_guarded", (f"ether type ip {guard}",))
        shared.append(guard_chain)
        elements.append(("bridge", "egress_guard", _q(link), f"jump {guard_chain[1]}"))
    if p.bridge:
        key = f"{_q(p.bridge)} . {p.ip}"
        if p.restricted_egress:
            egress = _shared("ip", "eg_", (*(f"{_match(r)} return" for r in p.egress), "drop"))
            shared.append(egress)
            elements.append(("ip", "egress", key, f"jump {egress[1]}"))
        if p.restricted_ingress:
            allow = f"meta mark set meta mark | {PASS:#x} accept"
            ingress = _shared("ip", "in_", (*(f"{_match(r)} {allow}".strip()
                                              for r in p.ingress), "drop"))
            shared.append(ingress)
            elements.append(("ip", "ingress", key, f"jump {ingress[1]}"))
    return PortUnit(tuple(chains), tuple(elements), tuple(shared))


def run_nft(text: str, timeout: float = 10.0) -> None:
    """One nft transaction by the `nft` tool (a file is applied all or nothing); the
    applier uses its libnftables context instead, this serves tests and tools."""
    try:
        result = subprocess.run([NFT, "-f", "-"], input=text, capture_output=True, text=True,
                                timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DatapathError(f"nft failed to run: {exc}") from None
    if result.returncode != 0:
        raise DatapathError(f"nft refused the policy: {result.stderr.strip()[:500]}")


def list_tables(nft: Libnft) -> list[tuple[str, str]]:
    """(family, name) of every nftables table in this netns."""
    items = json.loads(nft.run("list tables", json_output=True) or "{}").get("nftables", [])
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
    """Keeps netd's tables equal to the rendered policy of the kernel drivers' ports,
    through one libnftables context kept for the process life (`netd.policy.libnft`)."""

    def __init__(self, drivers: Iterable[str],
                 run: Callable[[str], object] | None = None) -> None:
        """`run`: applies one nft transaction (default: the libnftables context)."""
        self.drivers = sorted(set(drivers))
        self._applied: Rendered | None = None
        self._nft: Libnft | None = None
        self._run = run

    def _context(self) -> Libnft:
        if self._nft is None:
            self._nft = Libnft()
        return self._nft

    def _apply_text(self, text: str) -> None:
        if self._run is not None:
            self._run(text)
        else:
            self._context().run(text)

    def setup(self) -> None:
        """At start: fail closed at once if netd's tables are absent (a fresh host);
        tables already there (a restart) are adopted as they are, never flushed."""
        ensure_bridge_netfilter()
        present = set(list_tables(self._context()))
        if not all((family, TABLE) in present for family in FAMILIES):
            self._apply_text(render(HostPolicy(), self.drivers).full())

    def apply(self, policy: HostPolicy, verify: bool = False) -> int:
        """Make netd's tables match `policy`; the number of nft transactions run.
        `verify`: rewrite them whole even if this process applied the same before
        (someone may have changed or deleted them)."""
        if verify:  # the periodic resync: repair any drift by one atomic replace
            ensure_bridge_netfilter()
            self._applied = None
        last = self._applied
        wanted = render(policy, self.drivers, previous=last)
        if last is not None and last == wanted:
            return 0
        if last is not None and last.skeleton == wanted.skeleton:
            text = wanted.delta(last)
        else:
            text = wanted.full()
        self._applied = None  # unknown until the transaction succeeded
        if text:
            self._apply_text(text)
        self._applied = wanted
        return 1

    def teardown(self) -> None:
        present = set(list_tables(self._context()))
        text = "".join(f"delete table {family} {TABLE}\n" for family in FAMILIES
                       if (family, TABLE) in present)
        if text:
            self._apply_text(text)
        self._applied = None
