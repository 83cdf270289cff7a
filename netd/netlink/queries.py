"""One-shot queries for API threads and daemon start-up (short-lived sockets)."""

from __future__ import annotations

from pyroute2 import IPRoute

from netd.netlink.links import AF_INET, Links


def link_names(netns: str | None = None, nl: Links | None = None) -> set[str]:
    """Names of every link in `netns` (None: the daemon's own netns). With `nl` (the
    daemon's facade, whose netns opener makes a container socket cost ~0.1 ms instead of
    a ~10 ms fork) its socket into `netns` is closed again, as the calling API thread
    will not come back for it."""
    if nl is not None:
        try:
            return {link.name for link in nl.list_links(netns=netns)}
        finally:
            if netns is not None:
                nl.close_netns(netns)
    own = Links(opener=False)
    try:
        return {link.name for link in own.list_links(netns=netns)}
    finally:
        own.close()


def default_underlay_ip() -> str:
    """The preferred source address of the default route, else the first global IPv4
    address, else 127.0.0.1 (a single-host setup)."""
    with IPRoute() as ipr:
        for route in ipr.get_default_routes(family=AF_INET):
            src = route.get_attr("RTA_PREFSRC")
            if src:
                return str(src)
            oif = route.get_attr("RTA_OIF")
            for addr in ipr.get_addr(family=AF_INET, index=oif):
                return str(addr.get_attr("IFA_ADDRESS"))
        for addr in ipr.get_addr(family=AF_INET):
            ip = str(addr.get_attr("IFA_ADDRESS"))
            if not ip.startswith("127."):
                return ip
    return "127.0.0.1"


def underlay_mtu(ip: str) -> int | None:
    """MTU of the link that carries `ip`; None when `ip` is no address of this netns."""
    with IPRoute() as ipr:
        for addr in ipr.get_addr(family=AF_INET, address=ip):
            links = ipr.link("get", index=addr["index"])
            if links:
                mtu = int(links[0].get_attr("IFLA_MTU") or 1500)
                # loopback's 65536 is no underlay: treat a loopback-only host as 1500
                return 1500 if mtu > 9216 else mtu
    return None
