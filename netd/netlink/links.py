"""Links: read, create (bridge, vxlan, veth into a container netns), change, delete.

Every `ensure_*` reads what exists first and writes only the difference, so a repeated
apply changes nothing and a restarted daemon adopts what it finds. Callers that already
hold a Link (from `list_links` or an earlier call) pass it instead of its name: a verify
pass over many endpoints then reads the host side from one dump.

IPv6: host-side links netd creates (bridges, vxlan, TAPs, host veth ends) get
addrgenmode none, so they have no IPv6 link-local address and send no ND/MLD/DAD
chatter over the overlay; container ends are left to the container.
"""

from __future__ import annotations

import errno
import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from netd.errors import DatapathError
from netd.netlink.linkdump import dump_links
from netd.netlink.sockets import Sockets, tolerant, where

OWNED_PREFIX = "nd"  # every link netd creates starts with this
VXLAN_PORT = 4789  # IANA VXLAN port
ADDRGENMODE_NONE = 1  # IN6_ADDR_GEN_MODE_NONE

IFF_UP = 1
AF_INET = 2
AF_INET6 = 10


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
    created: bool = False  # this call created the pair: the peer is as the kernel made it


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
        up=bool(msg["flags"] & IFF_UP),
        master=int(msg.get_attr("IFLA_MASTER") or 0),
        peer_index=int(msg.get_attr("IFLA_LINK") or 0),
        info=info,
        addrgenmode=None if addrgenmode is None else int(addrgenmode),
    )


def _decode_link(message: bytes) -> Link:
    """A link message the direct parser leaves to pyroute2 (kind-specific data)."""
    msg = ifinfmsg(message)
    msg.decode()
    return _link_from_msg(msg)


class Links(Sockets):
    """Link requests. Methods return the number of kernel objects they changed."""

    def get_link(self, name: str, netns: str | None = None) -> Link | None:
        ipr = self._ipr(netns)
        try:
            msgs = ipr.link("get", ifname=name)
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT):
                return None
            raise DatapathError(f"cannot read link {name}{where(netns)}: {exc}") from None
        return _link_from_msg(msgs[0]) if msgs else None

    def _need(self, name: LinkRef, netns: str | None = None) -> Link:
        if isinstance(name, Link):
            return name
        link = self.get_link(name, netns)
        if link is None:
            raise DatapathError(f"link {name} does not exist{where(netns)}")
        return link

    def list_links(self, prefix: str = "", netns: str | None = None) -> list[Link]:
        with self._reading("list links", netns):
            if netns is None:  # the host: thousands of links, parsed directly
                links = dump_links(Link, _decode_link)
            else:
                links = [_link_from_msg(m) for m in self._ipr(netns).get_links()]
        return [link for link in links if link.name.startswith(prefix)]

    def delete_link(self, name: str, netns: str | None = None) -> int:
        link = self.get_link(name, netns)
        if link is None:
            return 0
        ipr = self._ipr(netns)
        return tolerant(
            f"delete link {name}", lambda: ipr.link("del", index=link.index), netns,
            absent_ok=True,
        )

    def link_up(self, name: LinkRef, netns: str | None = None) -> int:
        link = self._need(name, netns)
        if link.up:
            return 0
        ipr = self._ipr(netns)
        return tolerant(
            f"set link {link.name} up", lambda: ipr.link("set", index=link.index, state="up"), netns
        )

    def set_mtu(self, name: LinkRef, mtu: int, netns: str | None = None) -> int:
        link = self._need(name, netns)
        if link.mtu == mtu:
            return 0
        ipr = self._ipr(netns)
        return tolerant(
            f"set MTU {mtu} on {link.name}",
            lambda: ipr.link("set", index=link.index, mtu=mtu),
            netns,
        )

    def set_mac(self, name: LinkRef, mac: str, netns: str | None = None) -> int:
        link = self._need(name, netns)
        if link.mac == mac.lower():
            return 0
        ipr = self._ipr(netns)
        return tolerant(
            f"set MAC {mac} on {link.name}",
            lambda: ipr.link("set", index=link.index, address=mac),
            netns,
        )

    def set_master(self, name: LinkRef, master: LinkRef) -> int:
        link, bridge = self._need(name), self._need(master)
        if link.master == bridge.index:
            return 0
        ipr = self._ipr()
        return tolerant(
            f"attach {link.name} to {bridge.name}",
            lambda: ipr.link("set", index=link.index, master=bridge.index),
        )

    def ensure_no_ipv6_ll(
        self, name: LinkRef, netns: str | None = None, *, never_had_carrier: bool = False
    ) -> int:
        """addrgenmode none on `name` and no IPv6 link-local address on it. Call before
        the link first goes up; on an adopted link it also removes the fe80:: address.
        `never_had_carrier`: the link was just created and has had no carrier, so the
        kernel gave it no link-local address (saves an address dump, whose cost grows
        with the links of the namespace)."""
        link = self._need(name, netns)
        if link.addrgenmode in (None, ADDRGENMODE_NONE):
            return 0
        ipr = self._ipr(netns)
        mode = [["IFLA_INET6_ADDR_GEN_MODE", ADDRGENMODE_NONE]]
        spec = {"attrs": [["AF_INET6", {"attrs": mode}]]}
        tolerant(
            f"set addrgenmode none on {link.name}",
            lambda: ipr.link("set", index=link.index, IFLA_AF_SPEC=spec),
            netns,
        )
        if never_had_carrier:
            return 1
        with self._reading(f"read IPv6 addresses of {link.name}", netns):
            lladdrs = [
                (str(m.get_attr("IFA_ADDRESS")), int(m["prefixlen"]))
                for m in ipr.get_addr(family=AF_INET6, index=link.index)
                if str(m.get_attr("IFA_ADDRESS")).lower().startswith("fe80:")
            ]
        for addr, plen in lladdrs:
            tolerant(
                f"remove address {addr}/{plen} from {link.name}",
                functools.partial(
                    ipr.addr, "del", index=link.index, address=addr, prefixlen=plen
                ),
                netns,
                absent_ok=True,
            )
        return 1

    def _check_kind(self, link: Link, kind: str) -> None:
        if link.kind != kind:
            raise DatapathError(
                f"link {link.name} exists but is a {link.kind or 'plain device'}, not a {kind}: "
                f"remove it or free the name"
            )

    def ensure_bridge(self, name: str, mtu: int) -> int:
        """A bridge with an address of its own (set, so the kernel never swaps it for the
        lowest port's: containers that cached the gateway's MAC on it would lose it when
        that port goes)."""
        changed = 0
        link = self.get_link(name)
        if link is None:
            ipr = self._ipr()
            changed += tolerant(
                f"create bridge {name}",
                lambda: ipr.link("add", ifname=name, kind="bridge", mtu=mtu,
                                 address=bridge_mac(name)),
            )
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
            ipr = self._ipr()
            changed += tolerant(
                what,
                lambda: ipr.link(
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
                ),
            )
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
        with self._reading(f"read bridge port flags of {name}"):
            msgs = ipr.brport("show", index=link.index)
        info = msgs[0].get_attr("IFLA_PROTINFO") if msgs else None
        if info is None:
            raise DatapathError(f"link {name} is not a bridge port")
        have = (info.get_attr("IFLA_BRPORT_NEIGH_SUPPRESS"), info.get_attr("IFLA_BRPORT_LEARNING"))
        if have == (int(neigh_suppress), int(learning)):
            return 0
        return tolerant(
            f"set bridge port flags of {name}",
            lambda: ipr.brport(
                "set", index=link.index, neigh_suppress=int(neigh_suppress), learning=int(learning)
            ),
        )

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
        self._ipr(netns)  # NetnsNotFound before anything is created
        host = host_links.get(host_name) if host_links is not None else self.get_link(host_name)
        peer = None
        if host is not None:
            peer = self.get_link(peer_name, netns)
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
        created = False
        if host is None or peer is None:
            if peer is not None:
                raise self._foreign_peer(peer_name, netns)
            what = f"create veth {host_name} with peer {peer_name} in netns {netns}"
            ipr = self._ipr()
            # the host end is created up and a port of `master` at once (the peer stays
            # down, so neither end has carrier or an IPv6 link-local address yet)
            extra: dict[str, Any] = {"state": "up"}
            if master is not None:
                extra["master"] = master.index
            try:
                changed += tolerant(
                    what,
                    lambda: ipr.link(
                        "add",
                        ifname=host_name,
                        kind="veth",
                        mtu=mtu,
                        peer={"ifname": peer_name, "net_ns_fd": netns, "address": mac,
                              "mtu": mtu},
                        **extra,
                    ),
                )
            except DatapathError:
                if self.get_link(peer_name, netns) is not None:
                    raise self._foreign_peer(peer_name, netns) from None
                raise
            created = True
            host, peer = self._need(host_name), self._need(peer_name, netns)
        changed += self.set_mtu(host, mtu)
        changed += self.set_mac(peer, mac, netns)
        changed += self.set_mtu(peer, mtu, netns)
        changed += self.ensure_no_ipv6_ll(host, never_had_carrier=created)
        # netd's networks are IPv4 only: the container end gets no IPv6 link-local either,
        # so a new container sends no DAD/RS/MLD that the bridge would flood to every port
        changed += self.ensure_no_ipv6_ll(peer, netns, never_had_carrier=created)
        changed += self.link_up(peer, netns)
        if master is not None:
            changed += self.set_master(host, master)
        changed += self.link_up(host)
        return VethPair(changed, host, peer, created)

    @staticmethod
    def _foreign_peer(peer_name: str, netns: str) -> DatapathError:
        return DatapathError(
            f"interface {peer_name} already exists in netns {netns} and is not "
            f"netd's: choose another --ifname"
        )


def bridge_mac(name: str) -> str:
    """A stable, locally administered unicast MAC for netd's bridge `name`."""
    digest = hashlib.sha256(f"netd-bridge:{name}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))
