"""The only pyroute2 user: a small, typed facade over rtnetlink for every driver.

Why a facade: drivers should say *what* they want ("this bridge with this MTU exists")
and get back how many kernel objects that changed, without each re-learning pyroute2's
quirks (fdb flags, netns sockets, error codes). Every `ensure_*` reads what exists
first and writes only the difference, so a repeated apply changes nothing and a
restarted daemon adopts what it finds. "Already exists" is success; "not found" on
delete is success; anything else becomes a DatapathError naming the object.

Sockets: one IPRoute per (thread, netns). A container netns is given as a path
(/run/netns/NAME or /proc/PID/ns/net). Its socket comes from the Netlink's opener
process (netd.nsopener: ~0.1 ms, the daemon never switches netns itself) and is wrapped
with `IPRoute(fileno=fd)`; if the opener cannot run, `IPRoute(netns=path, flags=0)`
(forks the daemon, ~10 ms). Either way a missing netns is NetnsNotFound, never created.
Sockets stay cached across calls, keyed by the namespace's inode, so a netns deleted
and re-created under the same path is noticed. A cached socket keeps its namespace
alive: callers close the ones they no longer need (`close_netns`, `close_unused`), or
a vanished container's namespace and veths would linger.

Callers that already hold a Link (from `list_links` or an earlier call) pass it instead
of its name: a verify pass over many endpoints then reads the host side from one dump.

IPv6: host-side links netd creates (bridges, vxlan, TAPs, host veth ends) get
addrgenmode none, so they have no IPv6 link-local address and send no ND/MLD/DAD
chatter over the overlay; container ends are left to the container.

Ownership (DESIGN §4): links netd creates carry OWNED_PREFIX; routes it installs carry
ROUTE_PROTO, a protocol number no common routing daemon uses (see
/etc/iproute2/rt_protos).
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nlsocket import NetlinkRequest
from pyroute2.netlink.rtnl import RTM_SETNEIGHTBL
from pyroute2.netlink.rtnl.ndtmsg import ndtmsg

from netd.errors import DatapathError
from netd.nsopener import NsOpener, OpenerUnavailable

OWNED_PREFIX = "nd"  # every link netd creates starts with this
ROUTE_PROTO = 91  # rtm_protocol of routes netd installs ("netd" in `ip route` is 91)
VXLAN_PORT = 4789  # IANA VXLAN port
ZERO_MAC = "00:00:00:00:00:00"  # fdb flood (BUM) entries

_IFF_UP = 1
_NUD_NOARP = 0x40
_NUD_PERMANENT = 0x80
_NTF_SELF = 0x02
_AF_INET = 2
_AF_INET6 = 10
ADDRGENMODE_NONE = 1  # IN6_ADDR_GEN_MODE_NONE
_RT_TABLE_MAIN = 254


class NetnsNotFound(DatapathError):
    """A container network namespace path does not exist (the container is gone)."""


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str  # "" for kind-less devices (e.g. lo, physical NICs)
    mtu: int
    mac: str
    up: bool
    master: int  # ifindex of the master (bridge), 0 when none
    peer_index: int  # IFLA_LINK: the veth peer's ifindex (in its own netns), else 0
    info: dict[str, Any] = field(default_factory=dict)  # IFLA_INFO_DATA, e.g. IFLA_VXLAN_ID
    addrgenmode: int | None = None  # IPv6 address generation mode; None: no IPv6 on it


LinkRef = str | Link  # a link by name, or one already read (saves a request)


@dataclass(frozen=True)
class VethPair:
    """What ensure_veth_into_netns did and the two ends (index and name are current;
    other attributes may be as read before it changed them)."""

    changed: int
    host: Link
    peer: Link


@dataclass(frozen=True)
class FdbEntry:
    mac: str
    dst: str


def _link_from_msg(msg: Any) -> Link:
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    kind, info = "", {}
    if linkinfo is not None:
        kind = linkinfo.get_attr("IFLA_INFO_KIND") or ""
        data = linkinfo.get_attr("IFLA_INFO_DATA")
        if data is not None and hasattr(data, "get"):
            info = {name: value for name, value in data.get("attrs", ()) if name != "UNKNOWN"}
    addrgenmode = None
    spec = msg.get_attr("IFLA_AF_SPEC")
    inet6 = spec.get_attr("AF_INET6") if spec is not None else None
    if inet6 is not None:
        addrgenmode = inet6.get_attr("IFLA_INET6_ADDR_GEN_MODE")
    return Link(
        index=int(msg["index"]),
        name=str(msg.get_attr("IFLA_IFNAME")),
        kind=str(kind),
        mtu=int(msg.get_attr("IFLA_MTU") or 0),
        mac=str(msg.get_attr("IFLA_ADDRESS") or "").lower(),
        up=bool(msg["flags"] & _IFF_UP),
        master=int(msg.get_attr("IFLA_MASTER") or 0),
        peer_index=int(msg.get_attr("IFLA_LINK") or 0),
        info=info,
        addrgenmode=None if addrgenmode is None else int(addrgenmode),
    )


def _where(netns: str | None) -> str:
    return f" in netns {netns}" if netns else ""


class Netlink:
    """Cached rtnetlink sockets plus idempotent link/address/route/fdb/neigh helpers.

    Methods return the number of kernel objects they created, changed or removed.
    """

    def __init__(self, *, opener: bool = True) -> None:
        """`opener`: open container-netns sockets through a helper process (started on
        first use); False for short-lived instances that open one or two."""
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[IPRoute] = []
        self._opener = NsOpener() if opener else None

    # -- sockets ----------------------------------------------------------------------

    def _cache(self) -> dict[str | None, tuple[int, IPRoute]]:
        cache: dict[str | None, tuple[int, IPRoute]] | None = getattr(self._local, "sockets", None)
        if cache is None:
            cache = {}
            self._local.sockets = cache
        return cache

    def _ipr(self, netns: str | None = None) -> IPRoute:
        cache = self._cache()
        inode = 0
        if netns is not None:
            try:
                inode = os.stat(netns).st_ino
            except OSError:
                self.close_netns(netns)
                raise NetnsNotFound(
                    f"network namespace {netns} does not exist (container gone?)"
                ) from None
        cached = cache.get(netns)
        if cached is not None:
            if cached[0] == inode or netns is None:
                return cached[1]
            self.close_netns(netns)
        try:
            ipr = IPRoute() if netns is None else self._open_netns(netns)
        except FileNotFoundError:
            raise NetnsNotFound(
                f"network namespace {netns} does not exist (container gone?)"
            ) from None
        except OSError as exc:
            raise DatapathError(f"cannot open netlink socket{_where(netns)}: {exc}") from None
        cache[netns] = (inode, ipr)
        with self._lock:
            self._all.append(ipr)
        return ipr

    def _open_netns(self, netns: str) -> IPRoute:
        if self._opener is not None:
            try:
                fd = self._opener.open(netns)
            except OpenerUnavailable:
                pass
            else:
                try:
                    return IPRoute(fileno=fd)
                except Exception:
                    with suppress(OSError):
                        os.close(fd)
                    raise
        return IPRoute(netns=netns, flags=0)

    @property
    def opener_pid(self) -> int | None:
        """Process id of the netns opener while it runs."""
        return None if self._opener is None else self._opener.pid

    def _drop(self, ipr: IPRoute) -> None:
        with self._lock:
            if ipr in self._all:
                self._all.remove(ipr)
        with suppress(Exception):  # a closing socket has nothing useful to say
            ipr.close()

    def close_netns(self, netns: str) -> None:
        """Close this thread's socket into `netns`, letting the namespace die if unused."""
        cached = self._cache().pop(netns, None)
        if cached is not None:
            self._drop(cached[1])

    def close_unused(self, keep: set[str]) -> None:
        """Close this thread's container-netns sockets whose path is not in `keep`."""
        for path in [p for p in self._cache() if p is not None and p not in keep]:
            self.close_netns(path)

    def close(self) -> None:
        """Close every socket of every thread."""
        with self._lock:
            sockets, self._all = self._all, []
        for ipr in sockets:
            with suppress(Exception):
                ipr.close()
        self._local = threading.local()
        if self._opener is not None:
            self._opener.close()

    @contextmanager
    def _op(self, what: str, netns: str | None = None, exists_ok: bool = True) -> Iterator[None]:
        """Turn netlink errors into DatapathError naming `what`; EEXIST is success
        unless the caller already knows the object is absent (a clash, then)."""
        try:
            yield
        except NetlinkError as exc:
            if exc.code == errno.EEXIST and exists_ok:
                return
            raise DatapathError(f"cannot {what}{_where(netns)}: {exc.args[-1]}") from None
        except DatapathError:
            raise
        except OSError as exc:
            raise DatapathError(f"cannot {what}{_where(netns)}: {exc}") from None

    # -- links ------------------------------------------------------------------------

    def get_link(self, name: str, netns: str | None = None) -> Link | None:
        ipr = self._ipr(netns)
        try:
            msgs = ipr.link("get", ifname=name)
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT):
                return None
            raise DatapathError(f"cannot read link {name}{_where(netns)}: {exc}") from None
        return _link_from_msg(msgs[0]) if msgs else None

    def _need(self, name: LinkRef, netns: str | None = None) -> Link:
        if isinstance(name, Link):
            return name
        link = self.get_link(name, netns)
        if link is None:
            raise DatapathError(f"link {name} does not exist{_where(netns)}")
        return link

    def list_links(self, prefix: str = "", netns: str | None = None) -> list[Link]:
        with self._op("list links", netns):
            links = [_link_from_msg(m) for m in self._ipr(netns).get_links()]
        return [link for link in links if link.name.startswith(prefix)]

    def delete_link(self, name: str, netns: str | None = None) -> int:
        link = self.get_link(name, netns)
        if link is None:
            return 0
        try:
            self._ipr(netns).link("del", index=link.index)
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT):
                return 0
            raise DatapathError(f"cannot delete link {name}{_where(netns)}: {exc}") from None
        return 1

    def link_up(self, name: LinkRef, netns: str | None = None) -> int:
        link = self._need(name, netns)
        if link.up:
            return 0
        with self._op(f"set link {link.name} up", netns):
            self._ipr(netns).link("set", index=link.index, state="up")
        return 1

    def set_mtu(self, name: LinkRef, mtu: int, netns: str | None = None) -> int:
        link = self._need(name, netns)
        if link.mtu == mtu:
            return 0
        with self._op(f"set MTU {mtu} on {link.name}", netns):
            self._ipr(netns).link("set", index=link.index, mtu=mtu)
        return 1

    def set_mac(self, name: LinkRef, mac: str, netns: str | None = None) -> int:
        link = self._need(name, netns)
        if link.mac == mac.lower():
            return 0
        with self._op(f"set MAC {mac} on {link.name}", netns):
            self._ipr(netns).link("set", index=link.index, address=mac)
        return 1

    def set_master(self, name: LinkRef, master: LinkRef) -> int:
        link, bridge = self._need(name), self._need(master)
        if link.master == bridge.index:
            return 0
        with self._op(f"attach {link.name} to {bridge.name}"):
            self._ipr().link("set", index=link.index, master=bridge.index)
        return 1

    def ensure_no_ipv6_ll(self, name: LinkRef) -> int:
        """addrgenmode none on `name` and no IPv6 link-local address on it. Call before
        the link first goes up; on an adopted link it also removes the fe80:: address."""
        link = self._need(name)
        if link.addrgenmode in (None, ADDRGENMODE_NONE):
            return 0
        ipr = self._ipr()
        mode = [["IFLA_INET6_ADDR_GEN_MODE", ADDRGENMODE_NONE]]
        spec = {"attrs": [["AF_INET6", {"attrs": mode}]]}
        with self._op(f"set addrgenmode none on {link.name}"):
            ipr.link("set", index=link.index, IFLA_AF_SPEC=spec)
        with self._op(f"read IPv6 addresses of {link.name}"):
            lladdrs = [
                (str(m.get_attr("IFA_ADDRESS")), int(m["prefixlen"]))
                for m in ipr.get_addr(family=_AF_INET6, index=link.index)
                if str(m.get_attr("IFA_ADDRESS")).lower().startswith("fe80:")
            ]
        for addr, plen in lladdrs:
            with self._op(f"remove address {addr}/{plen} from {link.name}"):
                ipr.addr("del", index=link.index, address=addr, prefixlen=plen)
        return 1

    def _check_kind(self, link: Link, kind: str) -> None:
        if link.kind != kind:
            raise DatapathError(
                f"link {link.name} exists but is a {link.kind or 'plain device'}, not a {kind}: "
                f"remove it or free the name"
            )

    def ensure_bridge(self, name: str, mtu: int) -> int:
        changed = 0
        link = self.get_link(name)
        if link is None:
            with self._op(f"create bridge {name}", exists_ok=False):
                self._ipr().link("add", ifname=name, kind="bridge", mtu=mtu)
            changed += 1
            link = self._need(name)
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
        """A vxlan device with these parameters; one with different ones is replaced
        (the kernel cannot change them in place). `proxy` answers ARP from the device's
        neighbour table instead of flooding requests to every peer."""
        want: dict[str, Any] = {
            "IFLA_VXLAN_ID": vni,
            "IFLA_VXLAN_LOCAL": local_ip,
            "IFLA_VXLAN_PORT": port,
            "IFLA_VXLAN_LEARNING": int(learning),
            "IFLA_VXLAN_PROXY": int(proxy),
        }
        spec: dict[str, Any] = {}
        if dev is not None:
            lower = self._need(dev)
            want["IFLA_VXLAN_LINK"] = lower.index
            spec["vxlan_link"] = lower.index
        changed = 0
        link = self.get_link(name)
        if link is not None:
            self._check_kind(link, "vxlan")
            if any(link.info.get(k) != v for k, v in want.items()):
                changed += self.delete_link(name)
                link = None
        if link is None:
            what = f"create vxlan {name} (VNI {vni}, local {local_ip}, port {port})"
            user = self._vni_user(vni, port)
            if user is not None:
                raise DatapathError(f"cannot {what}: link {user} already uses VNI {vni}")
            with self._op(what, exists_ok=False):
                self._ipr().link(
                    "add",
                    ifname=name,
                    kind="vxlan",
                    mtu=mtu,
                    vxlan_id=vni,
                    vxlan_local=local_ip,
                    vxlan_port=port,
                    vxlan_learning=int(learning),
                    vxlan_proxy=int(proxy),
                    **spec,
                )
            changed += 1
        return changed + self.set_mtu(name, mtu) + self.ensure_no_ipv6_ll(name)

    def _vni_user(self, vni: int, port: int) -> str | None:
        for link in self.list_links():
            if link.kind == "vxlan" and (
                link.info.get("IFLA_VXLAN_ID"),
                link.info.get("IFLA_VXLAN_PORT"),
            ) == (vni, port):
                return link.name
        return None

    def ensure_brport_flags(self, name: str, *, neigh_suppress: bool, learning: bool) -> int:
        link = self._need(name)
        ipr = self._ipr()
        with self._op(f"read bridge port flags of {name}"):
            msgs = ipr.brport("show", index=link.index)
        info = msgs[0].get_attr("IFLA_PROTINFO") if msgs else None
        if info is None:
            raise DatapathError(f"link {name} is not a bridge port")
        have = (info.get_attr("IFLA_BRPORT_NEIGH_SUPPRESS"), info.get_attr("IFLA_BRPORT_LEARNING"))
        if have == (int(neigh_suppress), int(learning)):
            return 0
        with self._op(f"set bridge port flags of {name}"):
            ipr.brport(
                "set", index=link.index, neigh_suppress=int(neigh_suppress), learning=int(learning)
            )
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
        """A veth pair: `host_name` here, `peer_name` inside `netns` with `mac` and `mtu`,
        both up, the host end a port of `master` when given. The peer is created directly
        in the container netns (no move). An existing pair is adopted when both ends point
        at each other; a half pair is replaced; a foreign `peer_name` in the container is
        an error. `host_links`: a fresh dump of this netns's links by name (a name absent
        from it does not exist), so the host end costs no request of its own."""
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
            what = f"create veth {host_name} with peer {peer_name} in netns {netns}"
            with self._op(what, exists_ok=False):
                self._ipr().link(
                    "add",
                    ifname=host_name,
                    kind="veth",
                    mtu=mtu,
                    peer={"ifname": peer_name, "net_ns_fd": netns, "address": mac, "mtu": mtu},
                )
            changed += 1
            host, peer = self._need(host_name), self._need(peer_name, netns)
        changed += self.set_mtu(host, mtu)
        changed += self.set_mac(peer, mac, netns)
        changed += self.set_mtu(peer, mtu, netns)
        changed += self.link_up(peer, netns)
        changed += self.ensure_no_ipv6_ll(host)
        if master is not None:
            changed += self.set_master(host, master)
        changed += self.link_up(host)
        return VethPair(changed, host, peer)

    # -- addresses and routes ---------------------------------------------------------

    def ensure_address(
        self, name: LinkRef, ip: str, prefixlen: int, netns: str | None = None
    ) -> int:
        """`ip/prefixlen` is the only IPv4 address of `name` (a link netd owns)."""
        link = self._need(name, netns)
        ipr = self._ipr(netns)
        with self._op(f"read addresses of {link.name}", netns):
            have = {
                (m.get_attr("IFA_ADDRESS"), int(m["prefixlen"]))
                for m in ipr.get_addr(family=_AF_INET, index=link.index)
            }
        changed = 0
        for addr, plen in have - {(ip, prefixlen)}:
            with self._op(f"remove address {addr}/{plen} from {link.name}", netns):
                ipr.addr("del", index=link.index, address=addr, prefixlen=plen)
            changed += 1
        if (ip, prefixlen) not in have:
            with self._op(f"add address {ip}/{prefixlen} to {link.name}", netns):
                ipr.addr("add", index=link.index, address=ip, prefixlen=prefixlen)
            changed += 1
        return changed

    def ensure_default_route(
        self, gateway: str, name: LinkRef, netns: str | None = None
    ) -> int:
        """A default route via `gateway` on `name`, tagged ROUTE_PROTO. A default route
        that is not netd's, or netd's on another interface (another network attached
        first), is left alone: one default route per container."""
        link = self._need(name, netns)
        ipr = self._ipr(netns)
        with self._op("read routes", netns):
            defaults = [
                r
                for r in ipr.get_routes(family=_AF_INET, table=_RT_TABLE_MAIN)
                if r["dst_len"] == 0
            ]
        mine = [r for r in defaults if r.get_attr("RTA_OIF") == link.index]
        if any(r.get_attr("RTA_GATEWAY") == gateway for r in mine):
            return 0
        if defaults and not mine:
            return 0
        command = "replace" if mine else "add"
        with self._op(f"set default route via {gateway} on {link.name}", netns):
            ipr.route(
                command,
                dst="0.0.0.0/0",
                gateway=gateway,
                oif=link.index,
                proto=ROUTE_PROTO,
                table=_RT_TABLE_MAIN,
            )
        return 1

    def ensure_arp_retrans(self, name: LinkRef, ms: int, netns: str | None = None) -> int:
        """ARP retransmit interval of one interface (the kernel's retrans_time_ms).

        Container ends get a short one: the first ARP for a peer attached a moment ago
        may go out before this host has its neighbour entry, and the default 1 s retry
        would make a fresh endpoint look unreachable for a second."""
        link = self._need(name, netns)
        ipr = self._ipr(netns)
        with self._op(f"read neighbour parameters of {link.name}", netns):
            for table in ipr.get_ntables(_AF_INET):
                if table.get_attr("NDTA_NAME") != "arp_cache":
                    continue
                parms = dict((table.get_attr("NDTA_PARMS") or {}).get("attrs", ()))
                if parms.get("NDTPA_IFINDEX") == link.index:
                    if parms.get("NDTPA_RETRANS_TIME") == ms:
                        return 0
                    break
        msg = ndtmsg()
        msg["family"] = _AF_INET
        msg["attrs"] = [
            ("NDTA_NAME", "arp_cache"),
            ("NDTA_PARMS", {"attrs": [("NDTPA_IFINDEX", link.index), ("NDTPA_RETRANS_TIME", ms)]}),
        ]

        async def send() -> list[Any]:
            request = NetlinkRequest(
                ipr.asyncore, msg, msg_type=RTM_SETNEIGHTBL,
                msg_flags=NLM_F_REQUEST | NLM_F_ACK,
            )
            await request.send()
            return [m async for m in request.response()]

        with self._op(f"set ARP retransmit time of {link.name}", netns):
            ipr.asyncore.event_loop.run_until_complete(send())
        return 1

    # -- forwarding database and neighbours (on vxlan devices) ------------------------

    def fdb_entries(self, dev: str) -> set[FdbEntry]:
        """The device's own (self) entries with a remote destination."""
        link = self._need(dev)
        with self._op(f"read fdb of {dev}"):
            msgs = self._ipr().fdb("dump", ifindex=link.index)
        return {
            FdbEntry(str(m.get_attr("NDA_LLADDR")).lower(), str(m.get_attr("NDA_DST")))
            for m in msgs
            if m["ifindex"] == link.index
            and m.get_attr("NDA_DST") is not None
            and m["flags"] & _NTF_SELF
        }

    def fdb_add(self, dev: str, mac: str, dst: str) -> int:
        """A permanent entry mac -> dst. The all-zero MAC may have many destinations
        (one per flood target); any other MAC has exactly one."""
        link = self._need(dev)
        command = "append" if mac == ZERO_MAC else "replace"
        with self._op(f"add fdb entry {mac} dst {dst} on {dev}"):
            self._ipr().fdb(
                command,
                ifindex=link.index,
                lladdr=mac,
                dst=dst,
                state=_NUD_PERMANENT | _NUD_NOARP,
                flags=_NTF_SELF,
            )
        return 1

    def fdb_del(self, dev: str, mac: str, dst: str) -> int:
        link = self.get_link(dev)
        if link is None:
            return 0
        try:
            self._ipr().fdb("del", ifindex=link.index, lladdr=mac, dst=dst)
        except NetlinkError as exc:
            if exc.code in (errno.ENOENT, errno.ENODEV):
                return 0
            raise DatapathError(
                f"cannot delete fdb entry {mac} dst {dst} on {dev}: {exc}"
            ) from None
        return 1

    def neigh_entries(self, dev: str) -> dict[str, str]:
        """Permanent IPv4 neighbours of `dev`: ip -> mac."""
        link = self._need(dev)
        with self._op(f"read neighbours of {dev}"):
            msgs = self._ipr().neigh("dump", ifindex=link.index, family=_AF_INET)
        return {
            str(m.get_attr("NDA_DST")): str(m.get_attr("NDA_LLADDR")).lower()
            for m in msgs
            if m["ifindex"] == link.index
            and m["state"] & _NUD_PERMANENT
            and m.get_attr("NDA_LLADDR") is not None
        }

    def neigh_set(self, dev: str, ip: str, mac: str) -> int:
        link = self._need(dev)
        with self._op(f"set neighbour {ip} lladdr {mac} on {dev}"):
            self._ipr().neigh(
                "replace", ifindex=link.index, dst=ip, lladdr=mac, state=_NUD_PERMANENT
            )
        return 1

    def neigh_del(self, dev: str, ip: str) -> int:
        link = self.get_link(dev)
        if link is None:
            return 0
        try:
            self._ipr().neigh("del", ifindex=link.index, dst=ip)
        except NetlinkError as exc:
            if exc.code in (errno.ENOENT, errno.ENODEV):
                return 0
            raise DatapathError(f"cannot delete neighbour {ip} on {dev}: {exc}") from None
        return 1


# -- one-shot queries (API threads and daemon start-up; short-lived sockets) -------------


def link_names(netns: str | None = None) -> set[str]:
    """Names of every link in `netns` (None: the daemon's own netns)."""
    nl = Netlink(opener=False)
    try:
        return {link.name for link in nl.list_links(netns=netns)}
    finally:
        nl.close()


def default_underlay_ip() -> str:
    """The preferred source address of the default route, else the first global IPv4
    address, else 127.0.0.1 (a single-host setup)."""
    with IPRoute() as ipr:
        for route in ipr.get_default_routes(family=_AF_INET):
            src = route.get_attr("RTA_PREFSRC")
            if src:
                return str(src)
            oif = route.get_attr("RTA_OIF")
            for addr in ipr.get_addr(family=_AF_INET, index=oif):
                return str(addr.get_attr("IFA_ADDRESS"))
        for addr in ipr.get_addr(family=_AF_INET):
            ip = str(addr.get_attr("IFA_ADDRESS"))
            if not ip.startswith("127."):
                return ip
    return "127.0.0.1"


def underlay_mtu(ip: str) -> int | None:
    """MTU of the link that carries `ip`; None when `ip` is no address of this netns."""
    with IPRoute() as ipr:
        for addr in ipr.get_addr(family=_AF_INET, address=ip):
            links = ipr.link("get", index=addr["index"])
            if links:
                mtu = int(links[0].get_attr("IFLA_MTU") or 1500)
                # loopback's 65536 is no underlay: treat a loopback-only host as 1500
                return 1500 if mtu > 9216 else mtu
    return None
