"""Container interfaces: what every driver does to put a container on a network.

A container port is a veth pair: the container end is created directly inside the
container's network namespace (no move: ~3 ms instead of ~20) with the endpoint's name,
MAC, MTU, address, a short ARP retransmit time and a default route via the gateway; the
host end (named by the driver, netd.plumbing.names) stays here, optionally a port of a
bridge. `plug` is idempotent (a repeated call changes nothing, an existing pair is
adopted) and closes its socket into the container's namespace when done: an open
socket would keep a vanished container's namespace, veth and address alive.

Default route handover: a container has one default route (netd's, RTPROT_NETD, on the
interface of the network attached first). When that endpoint goes, the kernel removes
the route with its veth; `siblings_to_replug` names the container's remaining ports, and
plugging one of them again installs the default route on its interface.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from netd.errors import DatapathError
from netd.faults import crash_point
from netd.netlink import ADDRGENMODE_NONE, Link, Netlink, NetnsNotFound

ARP_RETRANS_MS = 100  # container ARP retry: see Netlink.ensure_arp_retrans

K = TypeVar("K")


@dataclass(frozen=True)
class ContainerPort:
    """One container interface, as `plug` leaves it."""

    host_name: str  # host end of the veth (an owned name)
    netns: str  # path of the container's network namespace
    ifname: str  # container end, e.g. eth0
    mac: str
    mtu: int
    ip: str
    prefixlen: int
    gateway: str | None  # default route via this address; None: none
    arp_retrans_ms: int = ARP_RETRANS_MS


class PlugFailed(DatapathError):
    """Plugging a port failed; what it changed (rollback included) is in `changed`."""

    def __init__(self, message: str, changed: int) -> None:
        super().__init__(message)
        self.changed = changed


def plug(
    nl: Netlink,
    port: ContainerPort,
    *,
    master: Link | None = None,
    host_links: Mapping[str, Link] | None = None,
) -> int:
    """Make `port` exist as described; returns the number of kernel objects changed.

    `master`: the bridge the host end is a port of. `host_links`: a fresh dump of this
    namespace's links by name (saves reading the host end). On failure the host end is
    removed again when this call created it or the container's namespace is gone, and
    PlugFailed is raised."""
    changed = 0
    existed = False
    try:
        if host_links is None:
            link = nl.get_link(port.host_name)
            host_links = {} if link is None else {port.host_name: link}
        existed = port.host_name in host_links
        pair = nl.ensure_veth_into_netns(
            port.host_name, port.ifname, port.netns, mac=port.mac, mtu=port.mtu,
            master=master, host_links=host_links,
        )
        changed += pair.changed
        peer = pair.peer
        crash_point("plug.veth")
        # a peer this call created has the kernel's defaults: nothing to read first
        changed += nl.ensure_arp_retrans(peer, port.arp_retrans_ms, port.netns,
                                         fresh=pair.created)
        changed += nl.ensure_address(peer, port.ip, port.prefixlen, port.netns,
                                     fresh=pair.created)
        if port.gateway is not None:
            changed += nl.ensure_default_route(port.gateway, peer, port.netns)
    except DatapathError as exc:
        message = str(exc)
        if not existed or isinstance(exc, NetnsNotFound):
            try:
                changed += nl.delete_link(port.host_name)
            except DatapathError as cleanup:
                message = f"{message}; {cleanup}"
        raise PlugFailed(message, changed) from None
    finally:
        nl.close_netns(port.netns)
    return changed


def unplug(nl: Netlink, host_name: str) -> int:
    """Remove a port by its host end (the container end dies with it); absent is fine."""
    return nl.delete_link(host_name)


def host_end_ok(link: Link | None, master: Link | None, mtu: int) -> bool:
    """The host end of a port is as `plug` leaves it (judged from a link dump)."""
    return (
        link is not None
        and link.kind == "veth"
        and link.peer_index > 0
        and (master is None or link.master == master.index)
        and link.mtu == mtu
        and link.up
        and link.addrgenmode in (None, ADDRGENMODE_NONE)
    )


def siblings_to_replug(gone: Iterable[str], staying: Mapping[K, str]) -> set[K]:
    """The staying ports (key -> netns path) in a namespace that loses a port (netns
    paths in `gone`): plugging them again hands the default route over."""
    lost = set(gone)
    return {key for key, netns in staying.items() if netns in lost}
