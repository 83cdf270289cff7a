"""The flannel driver: an L3 overlay with one subnet per host, as flannel builds it.

Each host serving a network leases one subnet of it in flannel's own etcd schema
(plugins.flannel.config, .subnets) and puts its containers there, behind a bridge
holding the subnet's first address (their gateway). Other hosts' subnets are reached
through the backend, programmed from the lease records exactly as flanneld programs
them, so netd hosts and flanneld hosts are peers both ways:

* vxlan: one device per network (flannel's `flannel.<VNI>`, UDP 8472, nolearning),
  address `<subnet>.0/32` and MAC = the lease's VtepMAC; per remote lease a permanent
  neighbour `<subnet>.0 -> VtepMAC`, a permanent FDB entry `VtepMAC -> PublicIP`, then
  `route <subnet> via <subnet>.0 onlink`. `direct_routing`: a peer on this host's
  underlay subnet gets `route <subnet> via <PublicIP>` instead.
* host-gw: `route <subnet> via <PublicIP>`; a peer that is not on-link is an error
  for that lease and nothing is written for it.
* udp: a TUN device and flannel's udp wire format (plugins.flannel.udp).

Routes carry RTPROT_NETD. The lease records reach the driver through the prefixes it
declares (`HostState.records`); its own lease is taken through the lease keeper. A
fixed `--ip` outside this host's lease is routed as a /32 to this host by the other
netd hosts (flanneld hosts cannot know it). Owned routes, neighbours and FDB entries no
lease wants are removed; leftovers of before a restart only once the first full sync
is done (`sweep`).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from ipam.scope import AddressRange
from netd.errors import Conflict, DatapathError, InvalidInput, NetdError
from netd.model import Endpoint, Network
from netd.netlink import FdbEntry, Link, Route
from netd.netlink.routes import RTPROT_NETD
from netd.plugin import (
    ApplyReport,
    BackendSpec,
    DriverContext,
    DriverSpec,
    HostState,
    NetworkState,
    OptionSpec,
    PreparedNetwork,
    endpoint_id,
    network_id,
)
from netd.plumbing import ContainerPort, PlugFailed, plug
from netd.plumbing import host_end_ok as port_host_end_ok
from netd.store.base import Condition, Put
from netd.store.keys import DEFAULT_PREFIX
from plugins.flannel import names
from plugins.flannel.config import (
    COREOS_PREFIX,
    DEFAULT_ROOT,
    FlannelConfig,
    SubnetLease,
    adopt,
    parse_lease,
)
from plugins.flannel.subnets import SubnetLeases
from plugins.flannel.udp import UdpEngine

log = logging.getLogger(__name__)

VXLAN_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
UDP_OVERHEAD = 28  # outer IPv4 20 + UDP 8: the inner IP packet is the payload
FORWARDING = Path("/proc/sys/net/ipv4/ip_forward")


@dataclass(frozen=True)
class Remotes:
    """What one network needs for the other hosts' subnets."""

    neighbours: Mapping[str, str]  # vxlan: <subnet>.0 -> VtepMAC
    fdb: frozenset[FdbEntry]  # vxlan: VtepMAC -> PublicIP
    routes: tuple[Route, ...]


@dataclass(frozen=True)
class LocalPart:
    """This host's side of a network as last applied cleanly."""

    ns: NetworkState
    lease: SubnetLease
    bridge: Link
    dev: Link | None
    routes: tuple[Route, ...]  # /32 routes of local fixed addresses outside the lease


class FlannelDriver:
    spec: ClassVar[DriverSpec] = DriverSpec(
        name="flannel",
        backends=(
            BackendSpec("vxlan", VXLAN_OVERHEAD),
            BackendSpec("udp", UDP_OVERHEAD),
            BackendSpec("host-gw", 0),
        ),
        default_backend="vxlan",
        options=(
            OptionSpec("prefix", str, "etcd prefix of flannel's config and subnets "
                       f"({COREOS_PREFIX} joins flanneld)", f"{DEFAULT_PREFIX}/flannel/<network>"),
            OptionSpec("subnet_len", int, "prefix length of each host's subnet", 24),
            OptionSpec("subnet_min", str, "first subnet hosts may lease"),
            OptionSpec("subnet_max", str, "last subnet hosts may lease"),
            OptionSpec("vni", int, "VXLAN network id (flannel's default 1)", 1),
            OptionSpec("port", int, "UDP port: vxlan 8472, udp 8285 by default"),
            OptionSpec("direct_routing", bool, "vxlan: plain routes to peers on the "
                       "same underlay subnet", False),
            OptionSpec("lease_ttl", int, "seconds a subnet lease outlives its host", 86400),
        ),
        watch_prefixes=(f"{DEFAULT_PREFIX}{DEFAULT_ROOT}", f"{COREOS_PREFIX}/"),
    )

    def __init__(self, ctx: DriverContext) -> None:
        self.ctx = ctx
        self.nl = ctx.netlink
        self.subnets = SubnetLeases(ctx)
        self.udp = UdpEngine()
        self._ports: dict[tuple[str, str], ContainerPort] = {}  # applied local ports
        self._served: dict[str, Network] = {}  # networks applied by this process
        self._installed: dict[str, set[tuple[int, str, int]]] = {}  # net -> route keys
        self._applied: dict[str, tuple[Any, ...]] = {}  # net -> basis of its last clean apply
        # the start-up sweep (and every verify pass) lists the host's links; between them
        # an apply removes only what it knows it leaves, so its cost stays flat in the
        # number of links on the host
        self._swept = False
        self._local: dict[str, LocalPart] = {}
        self._remotes_applied: dict[str, Remotes] = {}
        self._forwarding = False
        self.forwarding_path = FORWARDING  # tests point it elsewhere

    # --- declarations and hooks --------------------------------------------------------
    def setup(self) -> dict[str, Any]:
        return {}

    def config(self, network: Network) -> FlannelConfig:
        config = FlannelConfig.of(network, self.ctx.keys.prefix)
        watched = self.spec.watch_prefixes
        if not any(f"{config.prefix}/".startswith(w) for w in watched):
            raise InvalidInput(
                f"prefix {config.prefix} is not watched by netd: use {COREOS_PREFIX} or a "
                f"path under {watched[0]}"
            )
        return config

    def prepare_network(self, network: Network) -> PreparedNetwork:
        """Adopt flannel's config at <prefix>/config, or plan writing it (in the
        network's own commit); refuse a conflict."""
        config = self.config(network)
        key = config.config_key
        existing = self.ctx.store.get(key)
        if existing is None:
            self._refuse_shared(network, config)
            return PreparedNetwork(replace(network, options=config.options()),
                                   (Condition(key, 0),), (Put(key, config.to_json()),))
        if config.prefix.startswith(f"{self.ctx.keys.prefix}{DEFAULT_ROOT}"):
            # netd's own prefix and no network uses it (refused otherwise): a removed
            # network's config, replaced
            self._refuse_shared(network, config)
            return PreparedNetwork(replace(network, options=config.options()),
                                   (Condition(key, existing.mod_revision),),
                                   (Put(key, config.to_json()),))
        adopted = adopt(config, existing.value, dict(network.options))
        self._refuse_shared(network, adopted)
        return PreparedNetwork(replace(network, options=adopted.options()),
                               (Condition(key, existing.mod_revision),))

    def _refuse_shared(self, network: Network, config: FlannelConfig) -> None:
        """Two flannel networks can share neither a prefix nor, on vxlan and udp, the
        (VNI, port) or port their devices listen on: one host may serve both."""
        items, _ = self.ctx.store.list(self.ctx.keys.networks())
        for kv in items:
            try:
                other = Network.from_json(kv.value)
            except (NetdError, ValueError):
                continue
            if other.name == network.name:
                raise Conflict(f"network {network.name!r} already exists")
            if other.driver != self.spec.name:
                continue
            try:
                theirs = FlannelConfig.of(other, self.ctx.keys.prefix)
            except NetdError:
                continue
            if theirs.prefix == config.prefix:
                raise Conflict(f"flannel network {other.name} already uses prefix "
                               f"{config.prefix}; give -o prefix=... another path")
            if config.backend == "host-gw" or theirs.backend == "host-gw":
                continue
            if theirs.port == config.port and (config.backend == "udp" or theirs.backend == "udp"
                                               or theirs.vni == config.vni):
                raise Conflict(
                    f"flannel network {other.name} already uses VNI {theirs.vni} on UDP port "
                    f"{theirs.port}; give this one another -o vni=N (vxlan) or -o port=N")

    def address_range(self, network: Network, ip: str | None) -> AddressRange:
        """Automatic addresses come from this host's lease (gateway: its first address);
        a fixed `ip` may also lie outside every host's lease."""
        config = self.config(network)
        lease = self.subnets.acquire(network, config).lease
        scope = AddressRange(network.name, lease.subnet, lease.gateway)
        if ip is None or _inside(ip, lease.subnet):
            return scope
        items, _ = self.ctx.store.list(config.subnets_prefix)
        for kv in items:
            other = parse_lease(kv.key[len(config.subnets_prefix):], kv.value)
            if other is not None and _inside(ip, other.subnet):
                raise InvalidInput(
                    f"IP {ip} is inside subnet {other.subnet} leased by host "
                    f"{other.public_ip}; a fixed --ip must lie in this host's subnet "
                    f"{lease.subnet} or outside every host's lease"
                )
        if _inside(ip, network.subnet):
            size = 1 << (32 - config.subnet_len)
            n = int(ipaddress.IPv4Address(ip))
            low = int(ipaddress.IPv4Address(config.subnet_min))
            high = int(ipaddress.IPv4Address(config.subnet_max)) + size - 1
            if low <= n <= high and (n - low) % size in (0, 1, size - 1):
                raise InvalidInput(
                    f"IP {ip} is the network, gateway or broadcast address of a subnet "
                    "hosts may lease; pick another"
                )
        return AddressRange(network.name, network.subnet, network.gateway)

    # --- apply -------------------------------------------------------------------------
    def apply(self, desired: HostState, *, sweep: bool, verify: bool) -> ApplyReport:
        report = ApplyReport()
        keep_links: set[str] = set()
        keep_routes: set[tuple[int, str, int]] = set()
        routes = None if verify else self.nl.list_routes()
        for name, ns in desired.networks.items():
            keep_links |= self._links_of(ns)
            basis = self._basis(ns, desired)
            if not verify and basis is not None and self._applied.get(name) == basis:
                keep_routes |= self._installed.get(name, set())
                continue  # nothing it depends on changed since its last clean apply
            self._applied.pop(name, None)
            failed = len(report.errors)
            try:
                keep_routes |= self._apply_network(ns, desired, report, verify, routes)
                if len(report.errors) == failed and basis is not None:
                    self._applied[name] = basis
            except NetdError as exc:
                self._local.pop(name, None)
                self._remotes_applied.pop(name, None)
                report.fail(network_id(ns.network), str(exc))
                for ep in ns.local:
                    report.errors.setdefault(endpoint_id(ep), f"network {name}: {exc}")
                keep_routes |= self._installed.get(name, set())
        for name in [n for n in self._served if n not in desired.networks]:
            self._leave(name, report)
        if sweep and (verify or not self._swept):
            failed = len(report.errors)
            self._sweep(desired, keep_links, keep_routes, report)
            self._swept = len(report.errors) == failed
        return report

    def _basis(self, ns: NetworkState, desired: HostState) -> tuple[Any, ...] | None:
        """What a network's datapath depends on: its state (the same object while
        unchanged), its lease records, the live hosts, this host's lease."""
        held = self.subnets.held(ns.network.name)
        if held is None:
            return None
        records = leases_of(held.config, desired.records)
        return (id(ns), ns, tuple(sorted(records.items())), held.lease,
                tuple(sorted((h.name, h.underlay_ip) for h in desired.hosts.values())))

    def _links_of(self, ns: NetworkState) -> set[str]:
        net = ns.network
        links = {names.BRIDGE.number(net.vni)}
        if net.backend == "vxlan":
            links.add(names.VXLAN.number(net.vni))
        elif net.backend == "udp":
            links.add(names.TUN.number(net.vni))
        links |= {names.VETH.hashed(f"{net.name}/{ep.name}") for ep in ns.local}
        return links

    def _ensure_forwarding(self) -> None:
        if self._forwarding:
            return
        path = self.forwarding_path
        try:
            if path.read_text().strip() != "1":
                path.write_text("1\n")
        except OSError as exc:
            raise DatapathError(f"cannot enable IPv4 forwarding ({path}): {exc}") from None
        self._forwarding = True

    def _apply_network(
        self, ns: NetworkState, desired: HostState, report: ApplyReport, verify: bool,
        routes: list[Route] | None = None,
    ) -> set[tuple[int, str, int]]:
        """Make one network's datapath as wanted; `routes`: a dump of the main table
        taken at the start of this apply (None: read it here)."""
        net = ns.network
        config = self.config(net)
        held = self.subnets.acquire(net, config)
        lease = held.lease
        nl = self.nl
        local = self._local.get(net.name)
        if verify or local is None or local.ns is not ns or local.lease != lease:
            failed = len(report.errors)
            local = self._apply_local(ns, config, lease, desired, report, verify)
            if len(report.errors) == failed:
                self._local[net.name] = local
            else:
                self._local.pop(net.name, None)
        bridge, dev = local.bridge, local.dev
        wanted: list[Route] = list(local.routes)
        remotes = self._remotes(ns, config, lease, desired, dev, report)
        wanted.extend(remotes.routes)
        if net.backend == "vxlan" and dev is not None:
            previous = None if verify else self._remotes_applied.get(net.name)
            self._remotes_applied.pop(net.name, None)
            failed = len(report.errors)
            self._apply_vxlan_entries(dev.name, remotes, previous, report)
            if len(report.errors) == failed:
                self._remotes_applied[net.name] = remotes
        if net.backend == "udp":
            self.udp.set_routes(net.name, {r.dst: r.gateway or "" for r in remotes.routes
                                           if r.gateway}, config.port)
            wanted = [r for r in wanted if r.oif == bridge.index]
            if dev is not None:
                wanted.append(Route(config.network, oif=dev.index))
        present = {r.key: r for r in (nl.list_routes() if routes is None else routes)}
        for route in wanted:
            if present.get(route.key) == route:
                continue
            try:
                report.changed += nl.ensure_route(route)
            except DatapathError as exc:
                report.fail(f"route:{net.name}/{route.dst}", str(exc))
        keys = {r.key for r in wanted}
        owned_oifs = {bridge.index} | ({dev.index} if dev is not None else set())
        for have in present.values():
            if have.protocol != RTPROT_NETD or have.key in keys:
                continue
            if have.oif in owned_oifs or (
                have.key in self._installed.get(net.name, set())
                or _inside_net(have.dst, config.network)
            ):
                report.changed += nl.delete_route(have)
        self._installed[net.name] = keys
        return keys

    def _apply_local(self, ns: NetworkState, config: FlannelConfig, lease: SubnetLease,
                     desired: HostState, report: ApplyReport, verify: bool) -> LocalPart:
        """This host's side of a network: bridge, backend device, container ports."""
        net = ns.network
        nl = self.nl
        self._ensure_forwarding()
        bridge_name = names.BRIDGE.number(net.vni)
        report.changed += nl.ensure_bridge(bridge_name, net.mtu)
        report.changed += nl.ensure_address(bridge_name, lease.gateway, lease.prefixlen)
        dev: Link | None = None
        if net.backend == "vxlan":
            dev = self._ensure_vxlan(net, config, lease, desired, report)
        elif net.backend == "udp":
            dev = self._ensure_tun(net, config, lease, desired, report)
        self._served[net.name] = net
        bridge = nl._need(bridge_name)
        host_links = {link.name: link for link in nl.list_links(names.VETH.prefix)}
        routes: list[Route] = []
        for ep in ns.local:
            route = self._apply_port(net, lease, ep, bridge, host_links, report, verify)
            if route is not None:
                routes.append(route)
        for key in [k for k in self._ports if k[0] == net.name]:
            if key[1] not in {ep.name for ep in ns.local}:
                del self._ports[key]
                report.changed += nl.delete_link(names.VETH.hashed(f"{net.name}/{key[1]}"))
        return LocalPart(ns, lease, bridge, dev, tuple(routes))

    def _ensure_vxlan(self, net: Network, config: FlannelConfig, lease: SubnetLease,
                      desired: HostState, report: ApplyReport) -> Link:
        nl = self.nl
        name = names.VXLAN.number(net.vni)
        report.changed += nl.ensure_vxlan(name, config.vni, desired.host.underlay_ip,
                                          mtu=net.mtu, port=config.port)
        report.changed += nl.set_mac(name, lease.vtep_mac)
        report.changed += nl.ensure_address(name, lease.network_address, 32)
        report.changed += nl.link_up(name)
        return nl._need(name)

    def _ensure_tun(self, net: Network, config: FlannelConfig, lease: SubnetLease,
                    desired: HostState, report: ApplyReport) -> Link:
        nl = self.nl
        name = names.TUN.number(net.vni)
        self.udp.ensure(net.name, name, desired.host.underlay_ip, config.port)
        report.changed += nl.set_mtu(name, net.mtu)
        report.changed += nl.ensure_no_ipv6_ll(name)
        report.changed += nl.ensure_address(name, lease.network_address, 32)
        report.changed += nl.link_up(name)
        return nl._need(name)

    def _apply_port(self, net: Network, lease: SubnetLease, ep: Endpoint, bridge: Link,
                    host_links: Mapping[str, Link], report: ApplyReport,
                    verify: bool) -> Route | None:
        """Plug one local endpoint; a fixed address outside the lease gets a /32 and a
        host route to it on the bridge (returned)."""
        inside = _inside(ep.ip, lease.subnet)
        port = ContainerPort(
            host_name=names.VETH.hashed(f"{net.name}/{ep.name}"), netns=ep.netns,
            ifname=ep.ifname, mac=ep.mac, mtu=net.mtu, ip=ep.ip,
            prefixlen=lease.prefixlen if inside else 32,
            gateway=lease.gateway if inside else None,
        )
        route = None if inside else Route(f"{ep.ip}/32", oif=bridge.index)
        key = (net.name, ep.name)
        if (not verify and self._ports.get(key) == port
                and port_host_end_ok(host_links.get(port.host_name), bridge, net.mtu)):
            return route
        try:
            report.changed += plug(self.nl, port, master=bridge, host_links=host_links)
            if not inside:
                report.changed += self._gateway_route(port, lease.gateway)
        except PlugFailed as exc:
            report.changed += exc.changed
            report.fail(endpoint_id(ep), str(exc))
            self._ports.pop(key, None)
            return route
        except DatapathError as exc:
            report.fail(endpoint_id(ep), str(exc))
            self._ports.pop(key, None)
            return route
        self._ports[key] = port
        return route

    def _gateway_route(self, port: ContainerPort, gateway: str) -> int:
        """A /32 container reaches its gateway on-link: a link route to it, then the
        default route via it."""
        nl = self.nl
        try:
            peer = nl._need(port.ifname, port.netns)
            changed = nl.ensure_route(Route(f"{gateway}/32", oif=peer.index), port.netns)
            return changed + nl.ensure_default_route(gateway, peer, port.netns)
        finally:
            nl.close_netns(port.netns)

    def _remotes(self, ns: NetworkState, config: FlannelConfig, lease: SubnetLease,
                 desired: HostState, dev: Link | None, report: ApplyReport) -> Remotes:
        net = ns.network
        me = desired.host.underlay_ip
        leases = leases_of(config, desired.records)
        remote = [le for le in leases.values() if le.subnet != lease.subnet
                  and le.public_ip != me and _inside_net(le.subnet, config.network)]
        neighbours: dict[str, str] = {}
        fdb: set[FdbEntry] = set()
        routes: list[Route] = []
        via: dict[str, Route] = {}  # public ip -> how to reach its subnet
        for le in remote:
            item = f"lease:{net.name}/{le.subnet}"
            if net.backend == "vxlan":
                if le.backend_type != "vxlan" or not le.vtep_mac:
                    continue
                direct = self._direct(le.public_ip) if config.direct_routing else None
                if direct is not None:
                    r = Route(le.subnet, oif=direct.oif, gateway=le.public_ip)
                elif dev is not None:
                    neighbours[le.network_address] = le.vtep_mac
                    fdb.add(FdbEntry(le.vtep_mac, le.public_ip))
                    r = Route(le.subnet, oif=dev.index, gateway=le.network_address, onlink=True)
                else:
                    continue
            elif net.backend == "host-gw":
                if le.backend_type != "host-gw":
                    continue
                direct = self._direct(le.public_ip)
                if direct is None:
                    report.fail(item, (
                        f"host-gw: peer {le.public_ip} (subnet {le.subnet}) is not on-link "
                        "with this host; host-gw needs every host on one L2 segment (use "
                        "the vxlan backend, or direct_routing with vxlan)"))
                    continue
                r = Route(le.subnet, oif=direct.oif, gateway=le.public_ip)
            else:  # udp: the engine forwards; the route is its table entry
                if le.backend_type != "udp":
                    continue
                r = Route(le.subnet, gateway=le.public_ip)
            routes.append(r)
            via[le.public_ip] = r
        for ep in ns.remote:
            peer = desired.hosts.get(ep.host)
            if peer is None or peer.underlay_ip not in via:
                continue
            owner = next(le for le in remote if le.public_ip == peer.underlay_ip)
            if _inside(ep.ip, owner.subnet):
                continue
            r = via[peer.underlay_ip]
            routes.append(replace(r, dst=f"{ep.ip}/32"))
        return Remotes(neighbours, frozenset(fdb), tuple(routes))

    def _direct(self, public_ip: str) -> Route | None:
        """The route to a peer's PublicIP when it is on-link (no gateway), else None."""
        route = self.nl.route_to(public_ip)
        if route is None or route.gateway is not None:
            return None
        return route

    def _apply_vxlan_entries(self, dev: str, remotes: Remotes, previous: Remotes | None,
                             report: ApplyReport) -> None:
        """Neighbours and FDB entries as `remotes` wants: against the kernel, or (a
        store event, `previous` applied cleanly) as the difference to `previous`."""
        nl = self.nl
        if previous is not None:
            for ip, mac in remotes.neighbours.items():
                if previous.neighbours.get(ip) != mac:
                    report.changed += nl.neigh_set(dev, ip, mac)
            for ip in set(previous.neighbours) - set(remotes.neighbours):
                report.changed += nl.neigh_del(dev, ip)
            for entry in sorted(remotes.fdb - previous.fdb, key=str):
                report.changed += nl.fdb_add(dev, entry.mac, entry.dst)
            for entry in sorted(previous.fdb - remotes.fdb, key=str):
                report.changed += nl.fdb_del(dev, entry.mac, entry.dst)
            return
        have_neigh = nl.neigh_entries(dev)
        for ip, mac in remotes.neighbours.items():
            if have_neigh.get(ip) != mac:
                report.changed += nl.neigh_set(dev, ip, mac)
        for ip in set(have_neigh) - set(remotes.neighbours):
            report.changed += nl.neigh_del(dev, ip)
        have_fdb = nl.fdb_entries(dev)
        for entry in sorted(remotes.fdb - have_fdb, key=str):
            report.changed += nl.fdb_add(dev, entry.mac, entry.dst)
        for entry in sorted(have_fdb - remotes.fdb, key=str):
            report.changed += nl.fdb_del(dev, entry.mac, entry.dst)

    # --- leaving and sweeping ----------------------------------------------------------
    def _leave(self, name: str, report: ApplyReport) -> None:
        """This host no longer serves the network: its links go (routes on them with
        them), the routes it installed elsewhere too; its lease stays (flannel keeps a
        host's subnet for the lease's TTL) unless the network itself was removed."""
        net = self._served.pop(name)
        self._applied.pop(name, None)
        self._local.pop(name, None)
        self._remotes_applied.pop(name, None)
        for table, dst, metric in self._installed.pop(name, set()):
            report.changed += self.nl.delete_route(Route(dst, table=table, metric=metric))
        self.udp.remove(name)
        for link in [names.BRIDGE.number(net.vni), names.VXLAN.number(net.vni),
                     names.TUN.number(net.vni)]:
            try:
                report.changed += self.nl.delete_link(link)
            except DatapathError as exc:
                report.fail(f"link:{link}", str(exc))
        for port in [k for k in self._ports if k[0] == name]:
            del self._ports[port]
        try:
            removed = self.ctx.store.get(self.ctx.keys.network(name)) is None
            if removed:  # the network is gone, not just this host's last container
                self.subnets.release(name)
        except NetdError as exc:
            log.warning("flannel %s: keeping the lease, cannot tell whether the network "
                        "was removed: %s", name, exc)

    def _sweep(self, desired: HostState, keep_links: set[str],
               keep_routes: set[tuple[int, str, int]], report: ApplyReport) -> None:
        owned = [link for link in self.nl.list_links("nd") if names.owned(link.name)]
        owned_oifs = {link.index for link in owned}
        # veths first, then devices, then bridges
        for link in sorted(owned, key=lambda li: (not names.VETH.matches(li.name),
                                                   names.BRIDGE.matches(li.name))):
            if link.name in keep_links:
                continue
            try:
                if names.TUN.matches(link.name):
                    self.udp.remove_device(link.name)
                report.changed += self.nl.delete_link(link.name)
            except DatapathError as exc:
                report.fail(f"link:{link.name}", str(exc))
        cidrs = [FlannelConfig.of(ns.network, self.ctx.keys.prefix).network
                 for ns in desired.networks.values()]
        for route in self.nl.list_routes(protocol=RTPROT_NETD):
            if route.key in keep_routes:
                continue
            if route.oif in owned_oifs or any(_inside_net(route.dst, c) for c in cidrs):
                report.changed += self.nl.delete_route(route)

    # --- the rest of the contract ------------------------------------------------------
    def observe(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self._served:
            held = self.subnets.held(name)
            out[name] = {
                "subnet": held.lease.subnet if held else None,
                "lease_id": held.kept.id if held else 0,
                "routes": sorted(k[1] for k in self._installed.get(name, set())),
            }
        out["udp"] = self.udp.stats()
        return out

    def teardown(self) -> None:
        report = ApplyReport()
        for name in list(self._served):
            self._leave(name, report)
            self.subnets.release(name)

    def close(self) -> None:
        self.udp.close()


def leases_of(config: FlannelConfig, records: Mapping[str, str]) -> dict[str, SubnetLease]:
    """The subnet leases of one network among the driver's watched records."""
    prefix = config.subnets_prefix
    out: dict[str, SubnetLease] = {}
    for key, value in records.items():
        if key.startswith(prefix):
            lease = parse_lease(key[len(prefix):], value)
            if lease is not None:
                out[lease.subnet] = lease
    return out


def _inside(ip: str, cidr: str) -> bool:
    try:
        return ipaddress.IPv4Address(ip) in ipaddress.IPv4Network(cidr)
    except ValueError:
        return False


def _inside_net(dst: str, cidr: str) -> bool:
    try:
        return ipaddress.IPv4Network(dst).subnet_of(ipaddress.IPv4Network(cidr))
    except (ValueError, TypeError):
        return False
