"""The only pyroute2 user: a small, typed facade over rtnetlink for every driver.

Why a facade: drivers should say *what* they want ("this bridge with this MTU exists")
and get back how many kernel objects that changed, without each re-learning pyroute2's
quirks (fdb flags, netns sockets, error codes). "Already exists" on an add and "not
found" on a delete are success (one helper decides: sockets.tolerant); anything else
becomes a DatapathError naming the object.

Layout, by object kind (each a class adding its requests; Netlink combines them):
  sockets     socket cache per (thread, netns), the netns opener, error translation
  links       links: bridge, vxlan, veth into a container netns, MTU/MAC/master/up
  addresses   IPv4 addresses
  routes      routes with table, protocol and onlink; list and sweep by RTPROT_NETD
  neighbours  ARP parameters, neighbour entries and the FDB
  queries     one-shot reads for start-up and API threads

Ownership (DESIGN §4): links netd creates carry OWNED_PREFIX; routes it installs carry
RTPROT_NETD, a protocol number no common routing daemon uses (see
/etc/iproute2/rt_protos).
"""

from __future__ import annotations

from netd.netlink.addresses import Addresses
from netd.netlink.links import ADDRGENMODE_NONE, OWNED_PREFIX, VXLAN_PORT, Link, LinkRef, VethPair
from netd.netlink.neighbours import ZERO_MAC, FdbEntry, Neighbours
from netd.netlink.queries import default_underlay_ip, link_names, underlay_mtu
from netd.netlink.routes import ROUTE_PROTO, RT_TABLE_MAIN, RTPROT_NETD, Route, Routes
from netd.netlink.sockets import NetnsNotFound, tolerant


class Netlink(Addresses, Routes, Neighbours):
    """Cached rtnetlink sockets plus idempotent link/address/route/neighbour/fdb requests.

    Methods return the number of kernel objects they created, changed or removed.
    """


__all__ = [
    "ADDRGENMODE_NONE",
    "OWNED_PREFIX",
    "ROUTE_PROTO",
    "RTPROT_NETD",
    "RT_TABLE_MAIN",
    "VXLAN_PORT",
    "ZERO_MAC",
    "FdbEntry",
    "Link",
    "LinkRef",
    "Netlink",
    "NetnsNotFound",
    "Route",
    "VethPair",
    "default_underlay_ip",
    "link_names",
    "tolerant",
    "underlay_mtu",
]
