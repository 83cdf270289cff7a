"""An in-memory stand-in for netd.netlink.Netlink, so driver and plumbing logic can be
unit-tested without root.

Same public methods and parameters as the facade (tests/unit/netd/test_fakenetlink.py
compares them), same semantics where drivers depend on them: per-netns links,
addresses, routes, neighbours, FDB and ARP parameters; "already exists" on an add and
"not found" on a delete are success; a missing netns is NetnsNotFound; a veth dies with
its peer (and so with the peer's namespace); an address brings its prefix route (proto
kernel), and a gateway must be reachable unless the route is onlink. What it does not
model: packets, timing, IPv6 addresses.

Test hooks: `add_netns` / `remove_netns`, `fail_on` (make a method raise for one object
until `clear_failures`), `writes` (kernel changes so far), `open_sockets` (namespaces
with a socket not yet closed) and `routes`/`addresses`/`arp_retrans` to inspect.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from netd.errors import DatapathError
from netd.netlink import (
    ADDRGENMODE_NONE,
    RT_TABLE_MAIN,
    RTPROT_NETD,
    VXLAN_PORT,
    ZERO_MAC,
    FdbEntry,
    Link,
    LinkRef,
    NetnsNotFound,
    Route,
    VethPair,
)

HOST: str | None = None  # the daemon's own namespace
RTPROT_KERNEL = 2
_DEFAULT = "0.0.0.0/0"


@dataclass
class _Ns:
    links: dict[str, Link] = field(default_factory=dict)
    peers: dict[int, tuple[str | None, int]] = field(default_factory=dict)  # veth peer
    addresses: dict[int, set[tuple[str, int]]] = field(default_factory=dict)
    routes: list[Route] = field(default_factory=list)
    neigh: dict[int, dict[str, str]] = field(default_factory=dict)
    fdb: dict[int, set[FdbEntry]] = field(default_factory=dict)
    arp_retrans: dict[int, int] = field(default_factory=dict)
    brport: dict[int, tuple[bool, bool]] = field(default_factory=dict)


def _where(netns: str | None) -> str:
    return f" in netns {netns}" if netns else ""


class FakeNetlink:
    def __init__(self) -> None:
        self._ns: dict[str | None, _Ns] = {HOST: _Ns()}
        self._next_index = 100
        self._failures: dict[tuple[str, str | None, str | None], str] = {}
        self.writes = 0
        self.open_sockets: set[str] = set()

    # -- test hooks ---------------------------------------------------------------------

    def add_netns(self, path: str) -> str:
        self._ns.setdefault(path, _Ns())
        return path

    def remove_netns(self, path: str) -> None:
        """The container is gone: its links go, and so does the host end of each veth."""
        ns = self._ns.pop(path)
        for peer_ns, peer_index in ns.peers.values():
            other = self._ns.get(peer_ns)
            if other is not None:
                for link in list(other.links.values()):
                    if link.index == peer_index:
                        self._remove_link(peer_ns, link)
        self.open_sockets.discard(path)

    def fail_on(
        self, method: str, name: str | None = None, netns: str | None = None,
        message: str = "injected failure",
    ) -> None:
        """Make `method` raise DatapathError for object `name` (None: any) in `netns`
        (None: any) until clear_failures."""
        self._failures[(method, name, netns)] = message

    def clear_failures(self) -> None:
        self._failures.clear()

    def routes(self, netns: str | None = None) -> list[Route]:
        return list(self._space(netns).routes)

    def addresses(self, name: str, netns: str | None = None) -> set[tuple[str, int]]:
        return self.list_addresses(name, netns)

    def arp_retrans(self, name: str, netns: str | None = None) -> int | None:
        link = self._need(name, netns)
        return self._space(netns).arp_retrans.get(link.index)

    def add_link(self, name: str, kind: str = "", netns: str | None = None, **attrs: Any) -> Link:
        """A link made by someone else (a leftover, a foreign device)."""
        return self._create(netns, name, kind, **attrs)

    # -- internals ----------------------------------------------------------------------

    def _space(self, netns: str | None) -> _Ns:
        ns = self._ns.get(netns)
        if ns is None:
            self.open_sockets.discard(netns or "")
            raise NetnsNotFound(f"network namespace {netns} does not exist (container gone?)")
        if netns is not None:
            self.open_sockets.add(netns)
        return ns

    def _check(self, method: str, name: str, netns: str | None) -> None:
        for (m, n, ns), message in self._failures.items():
            if m == method and n in (None, name) and (ns is None or ns == netns):
                raise DatapathError(f"cannot {method} {name}{_where(netns)}: {message}")

    def _create(self, netns: str | None, name: str, kind: str, **attrs: Any) -> Link:
        ns = self._space(netns)
        if name in ns.links:
            raise DatapathError(f"cannot create {kind} {name}{_where(netns)}: File exists")
        self._next_index += 1
        values: dict[str, Any] = {
            "mtu": 1500, "mac": f"02:fa:00:00:{self._next_index // 256:02x}:"
            f"{self._next_index % 256:02x}", "up": False, "master": 0, "peer_index": 0,
            "info": {}, "addrgenmode": 0,
        }
        values.update(attrs)
        link = Link(index=self._next_index, name=name, kind=kind, **values)
        ns.links[name] = link
        self.writes += 1
        return link

    def _update(self, netns: str | None, link: Link, **changes: Any) -> int:
        ns = self._space(netns)
        current = self._need(link, netns)
        if all(getattr(current, k) == v for k, v in changes.items()):
            return 0
        ns.links[current.name] = replace(current, **changes)
        self.writes += 1
        return 1

    def _need(self, name: LinkRef, netns: str | None = None) -> Link:
        ns = self._space(netns)
        if isinstance(name, Link):
            for link in ns.links.values():
                if link.index == name.index:
                    return link
            name = name.name
        link = ns.links.get(name)
        if link is None:
            raise DatapathError(f"link {name} does not exist{_where(netns)}")
        return link

    def _remove_link(self, netns: str | None, link: Link) -> None:
        ns = self._ns[netns]
        del ns.links[link.name]
        for other in list(ns.links.values()):
            if other.master == link.index:
                ns.links[other.name] = replace(other, master=0)
        ns.addresses.pop(link.index, None)
        ns.routes = [r for r in ns.routes if r.oif != link.index]
        for table in (ns.neigh, ns.fdb, ns.arp_retrans, ns.brport):
            table.pop(link.index, None)
        peer = ns.peers.pop(link.index, None)
        if peer is not None:
            peer_ns, peer_index = peer
            other_ns = self._ns.get(peer_ns)
            if other_ns is not None:
                for other in list(other_ns.links.values()):
                    if other.index == peer_index:
                        other_ns.peers.pop(other.index, None)
                        self._remove_link(peer_ns, other)

    # -- sockets ------------------------------------------------------------------------

    @property
    def opener_pid(self) -> int | None:
        return None

    def close_netns(self, netns: str) -> None:
        self.open_sockets.discard(netns)

    def close_unused(self, keep: set[str]) -> None:
        self.open_sockets &= keep

    def close(self) -> None:
        self.open_sockets.clear()

    # -- links --------------------------------------------------------------------------

    def get_link(self, name: str, netns: str | None = None) -> Link | None:
        self._check("get_link", name, netns)
        return self._space(netns).links.get(name)

    def list_links(self, prefix: str = "", netns: str | None = None) -> list[Link]:
        self._check("list_links", prefix, netns)
        return [link for n, link in self._space(netns).links.items() if n.startswith(prefix)]

    def delete_link(self, name: str, netns: str | None = None) -> int:
        self._check("delete_link", name, netns)
        link = self._space(netns).links.get(name)
        if link is None:
            return 0
        self._remove_link(netns, link)
        self.writes += 1
        return 1

    def link_up(self, name: LinkRef, netns: str | None = None) -> int:
        link = self._need(name, netns)
        self._check("link_up", link.name, netns)
        return self._update(netns, link, up=True)

    def set_mtu(self, name: LinkRef, mtu: int, netns: str | None = None) -> int:
        link = self._need(name, netns)
        self._check("set_mtu", link.name, netns)
        return self._update(netns, link, mtu=mtu)

    def set_mac(self, name: LinkRef, mac: str, netns: str | None = None) -> int:
        link = self._need(name, netns)
        self._check("set_mac", link.name, netns)
        return self._update(netns, link, mac=mac.lower())

    def set_master(self, name: LinkRef, master: LinkRef) -> int:
        link, bridge = self._need(name), self._need(master)
        self._check("set_master", link.name, HOST)
        return self._update(HOST, link, master=bridge.index)

    def ensure_no_ipv6_ll(
        self, name: LinkRef, netns: str | None = None, *, never_had_carrier: bool = False
    ) -> int:
        link = self._need(name, netns)
        if link.addrgenmode in (None, ADDRGENMODE_NONE):
            return 0
        return self._update(netns, link, addrgenmode=ADDRGENMODE_NONE)

    def _check_kind(self, link: Link, kind: str) -> None:
        if link.kind != kind:
            raise DatapathError(
                f"link {link.name} exists but is a {link.kind or 'plain device'}, not a {kind}: "
                f"remove it or free the name"
            )

    def ensure_bridge(self, name: str, mtu: int) -> int:
        self._check("ensure_bridge", name, HOST)
        changed = 0
        link = self.get_link(name)
        if link is None:
            link = self._create(HOST, name, "bridge", mtu=mtu)
            changed += 1
        else:
            self._check_kind(link, "bridge")
        changed += self.set_mtu(link, mtu) + self.ensure_no_ipv6_ll(link)
        return changed + self.link_up(link)

    def ensure_vxlan(
        self,
        name: str,
        vni: int,
        local_ip: str,
        *,
        mtu: int,
        port: int = VXLAN_PORT,
        learning: bool = False,
        proxy: bool = False,
        dev: str | None = None,
    ) -> int:
        self._check("ensure_vxlan", name, HOST)
        want: dict[str, Any] = {
            "IFLA_VXLAN_ID": vni,
            "IFLA_VXLAN_LOCAL": local_ip,
            "IFLA_VXLAN_PORT": port,
            "IFLA_VXLAN_LEARNING": int(learning),
            "IFLA_VXLAN_PROXY": int(proxy),
        }
        if dev is not None:
            want["IFLA_VXLAN_LINK"] = self._need(dev).index
        changed = 0
        link = self.get_link(name)
        if link is not None:
            self._check_kind(link, "vxlan")
            if any(link.info.get(k) != v for k, v in want.items()):
                changed += self.delete_link(name)
                link = None
        if link is None:
            for other in self._space(HOST).links.values():
                info = other.info
                if other.kind == "vxlan" and (info.get("IFLA_VXLAN_ID"),
                                              info.get("IFLA_VXLAN_PORT")) == (vni, port):
                    raise DatapathError(
                        f"cannot create vxlan {name} (VNI {vni}, local {local_ip}, port {port})"
                        f": link {other.name} already uses VNI {vni}"
                    )
            self._create(HOST, name, "vxlan", mtu=mtu, info=want)
            changed += 1
        return changed + self.set_mtu(name, mtu) + self.ensure_no_ipv6_ll(name)

    def ensure_brport_flags(self, name: str, *, neigh_suppress: bool, learning: bool) -> int:
        link = self._need(name)
        self._check("ensure_brport_flags", name, HOST)
        if not link.master:
            raise DatapathError(f"link {name} is not a bridge port")
        ns = self._space(HOST)
        if ns.brport.get(link.index) == (neigh_suppress, learning):
            return 0
        ns.brport[link.index] = (neigh_suppress, learning)
        self.writes += 1
        return 1

    def ensure_veth_into_netns(
        self,
        host_name: str,
        peer_name: str,
        netns: str,
        *,
        mac: str,
        mtu: int,
        master: Link | None = None,
        host_links: Mapping[str, Link] | None = None,
    ) -> VethPair:
        self._check("ensure_veth_into_netns", host_name, netns)
        changed = 0
        host = host_links.get(host_name) if host_links is not None else self.get_link(host_name)
        peer = self.get_link(peer_name, netns)
        if host is not None:
            self._check_kind(host, "veth")
            paired = (
                peer is not None
                and peer.kind == "veth"
                and peer.index == host.peer_index
                and peer.peer_index == host.index
            )
            if not paired:
                changed += self.delete_link(host_name)
                host = None
                peer = self.get_link(peer_name, netns)
        if host is None or peer is None:
            if peer is not None:
                raise DatapathError(
                    f"interface {peer_name} already exists in netns {netns} and is not "
                    f"netd's: choose another --ifname"
                )
            host = self._create(HOST, host_name, "veth", mtu=mtu)
            peer = self._create(netns, peer_name, "veth", mtu=mtu, mac=mac.lower(),
                                peer_index=host.index)
            self.writes -= 1  # one request made both ends
            self._ns[HOST].links[host_name] = host = replace(host, peer_index=peer.index)
            self._ns[HOST].peers[host.index] = (netns, peer.index)
            self._ns[netns].peers[peer.index] = (HOST, host.index)
            changed += 1
        changed += self.set_mtu(host, mtu)
        changed += self.set_mac(peer, mac, netns)
        changed += self.set_mtu(peer, mtu, netns)
        changed += self.ensure_no_ipv6_ll(peer, netns)
        changed += self.link_up(peer, netns)
        changed += self.ensure_no_ipv6_ll(host)
        if master is not None:
            changed += self.set_master(host, master)
        changed += self.link_up(host)
        return VethPair(changed, self._need(host_name), self._need(peer_name, netns))

    # -- addresses ----------------------------------------------------------------------

    def list_addresses(self, name: LinkRef, netns: str | None = None) -> set[tuple[str, int]]:
        link = self._need(name, netns)
        return set(self._space(netns).addresses.get(link.index, set()))

    def delete_address(
        self, name: LinkRef, ip: str, prefixlen: int, netns: str | None = None
    ) -> int:
        link = self._need(name, netns)
        self._check("delete_address", link.name, netns)
        ns = self._space(netns)
        have = ns.addresses.get(link.index, set())
        if (ip, prefixlen) not in have:
            return 0
        have.discard((ip, prefixlen))
        subnet = str(ipaddress.ip_interface(f"{ip}/{prefixlen}").network)
        ns.routes = [r for r in ns.routes if not (r.oif == link.index and r.dst == subnet)]
        ns.routes = [r for r in ns.routes if r.oif != link.index or self._reachable(ns, r)]
        self.writes += 1
        return 1

    def ensure_address(
        self, name: LinkRef, ip: str, prefixlen: int, netns: str | None = None,
        *, fresh: bool = False,
    ) -> int:
        link = self._need(name, netns)
        self._check("ensure_address", link.name, netns)
        have = self.list_addresses(link, netns)
        changed = 0
        for addr, plen in sorted(have - {(ip, prefixlen)}):
            changed += self.delete_address(link, addr, plen, netns)
        if (ip, prefixlen) not in have:
            ns = self._space(netns)
            ns.addresses.setdefault(link.index, set()).add((ip, prefixlen))
            subnet = str(ipaddress.ip_interface(f"{ip}/{prefixlen}").network)
            ns.routes.append(Route(subnet, oif=link.index, protocol=RTPROT_KERNEL))
            self.writes += 1
            changed += 1
        return changed

    # -- routes -------------------------------------------------------------------------

    def _reachable(self, ns: _Ns, route: Route) -> bool:
        if route.gateway is None or route.onlink:
            return True
        gateway = ipaddress.ip_address(route.gateway)
        return any(
            gateway in ipaddress.ip_interface(f"{ip}/{plen}").network
            for ip, plen in ns.addresses.get(route.oif, set())
        )

    def list_routes(
        self,
        netns: str | None = None,
        *,
        table: int | None = RT_TABLE_MAIN,
        protocol: int | None = None,
    ) -> list[Route]:
        self._check("list_routes", "", netns)
        return [
            r for r in self._space(netns).routes
            if (table is None or r.table == table) and (protocol is None or r.protocol == protocol)
        ]

    def _write_route(self, route: Route, netns: str | None) -> int:
        ns = self._space(netns)
        if route.oif and not any(link.index == route.oif for link in ns.links.values()):
            raise DatapathError(f"cannot set route {route.dst}{_where(netns)}: No such device")
        if not self._reachable(ns, route):
            raise DatapathError(
                f"cannot set route {route.dst}{_where(netns)}: Nexthop has invalid gateway"
            )
        ns.routes = [r for r in ns.routes if r.key != route.key] + [route]
        self.writes += 1
        return 1

    def route_to(self, ip: str, netns: str | None = None) -> Route | None:
        """Longest prefix match over the namespace's routes and its addresses' prefixes."""
        self._check("route_to", ip, netns)
        ns = self._space(netns)
        addr = ipaddress.ip_address(ip)
        found: list[tuple[int, Route]] = []
        for index, addrs in ns.addresses.items():
            for a, plen in addrs:
                net = ipaddress.ip_interface(f"{a}/{plen}").network
                if addr in net:
                    found.append((plen, Route(str(net), oif=index, protocol=2)))
        for r in ns.routes:
            net = ipaddress.ip_network(r.dst)
            if addr in net:
                found.append((net.prefixlen, r))
        return max(found, key=lambda f: f[0])[1] if found else None

    def ensure_route(self, route: Route, netns: str | None = None) -> int:
        self._check("ensure_route", route.dst, netns)
        for have in self.list_routes(netns, table=route.table):
            if have.key != route.key:
                continue
            if have == route:
                return 0
            if have.protocol != route.protocol:
                raise DatapathError(
                    f"route {route.dst} (table {route.table}){_where(netns)} exists with "
                    f"protocol {have.protocol}, not netd's: remove it or change the network"
                )
        return self._write_route(route, netns)

    def delete_route(self, route: Route, netns: str | None = None) -> int:
        self._check("delete_route", route.dst, netns)
        ns = self._space(netns)
        kept = [r for r in ns.routes if (r.key, r.protocol) != (route.key, route.protocol)]
        if len(kept) == len(ns.routes):
            return 0
        ns.routes = kept
        self.writes += 1
        return 1

    def sweep_routes(
        self,
        keep: Iterable[Route],
        netns: str | None = None,
        *,
        table: int | None = RT_TABLE_MAIN,
        protocol: int = RTPROT_NETD,
    ) -> int:
        wanted = {r.key for r in keep}
        return sum(
            self.delete_route(r, netns)
            for r in self.list_routes(netns, table=table, protocol=protocol)
            if r.key not in wanted
        )

    def ensure_default_route(
        self, gateway: str, name: LinkRef, netns: str | None = None
    ) -> int:
        link = self._need(name, netns)
        self._check("ensure_default_route", link.name, netns)
        defaults = [r for r in self.list_routes(netns) if r.dst == _DEFAULT]
        mine = [r for r in defaults if r.oif == link.index]
        if any(r.gateway == gateway for r in mine):
            return 0
        if defaults and not mine:
            return 0
        return self._write_route(Route(_DEFAULT, oif=link.index, gateway=gateway), netns)

    # -- neighbours and fdb -------------------------------------------------------------

    def ensure_arp_retrans(
        self, name: LinkRef, ms: int, netns: str | None = None, *, fresh: bool = False
    ) -> int:
        link = self._need(name, netns)
        self._check("ensure_arp_retrans", link.name, netns)
        ns = self._space(netns)
        if ns.arp_retrans.get(link.index) == ms:
            return 0
        ns.arp_retrans[link.index] = ms
        self.writes += 1
        return 1

    def fdb_entries(self, dev: str) -> set[FdbEntry]:
        link = self._need(dev)
        self._check("fdb_entries", dev, HOST)
        return set(self._space(HOST).fdb.get(link.index, set()))

    def fdb_add(self, dev: str, mac: str, dst: str) -> int:
        link = self._need(dev)
        self._check("fdb_add", dev, HOST)
        entries = self._space(HOST).fdb.setdefault(link.index, set())
        if mac != ZERO_MAC:  # replace: one destination per MAC
            entries -= {e for e in entries if e.mac == mac}
        entries.add(FdbEntry(mac.lower(), dst))
        self.writes += 1
        return 1

    def fdb_del(self, dev: str, mac: str, dst: str) -> int:
        link = self.get_link(dev)
        if link is None:
            return 0
        self._check("fdb_del", dev, HOST)
        entries = self._space(HOST).fdb.get(link.index, set())
        if FdbEntry(mac, dst) not in entries:
            return 0
        entries.discard(FdbEntry(mac, dst))
        self.writes += 1
        return 1

    def neigh_entries(self, dev: str, netns: str | None = None) -> dict[str, str]:
        link = self._need(dev, netns)
        self._check("neigh_entries", dev, netns)
        return dict(self._space(netns).neigh.get(link.index, {}))

    def neigh_set(self, dev: str, ip: str, mac: str, netns: str | None = None) -> int:
        link = self._need(dev, netns)
        self._check("neigh_set", dev, netns)
        self._space(netns).neigh.setdefault(link.index, {})[ip] = mac.lower()
        self.writes += 1
        return 1

    def neigh_del(self, dev: str, ip: str, netns: str | None = None) -> int:
        link = self.get_link(dev, netns)
        if link is None:
            return 0
        self._check("neigh_del", dev, netns)
        table = self._space(netns).neigh.get(link.index, {})
        if ip not in table:
            return 0
        del table[ip]
        self.writes += 1
        return 1
