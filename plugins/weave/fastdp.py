"""Weave's fast datapath: an L2 overlay per network made of kernel objects only.

Per network with local endpoints: a bridge `ndb<vni>` and a vxlan device `ndv<vni>`
(VNI, UDP 4789, local = this host's underlay address, no learning) enslaved to it.
Forwarding needs no learning and no multicast because the store already knows every
endpoint: each remote endpoint gets a permanent fdb entry MAC -> its host's underlay
address and a permanent neighbour entry IP -> MAC on the vxlan device; the device
answers ARP from those entries itself (vxlan `proxy`), so ARP never crosses hosts.
Broadcast and unknown unicast go to one all-zero-MAC fdb entry per peer host that has
endpoints on the network, and to no other host. The bridge port of the vxlan device
has learning off and neigh_suppress on. Local endpoints (veths on the bridge) are the
driver's, shared with sleeve (plugins.weave.driver).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from netd.errors import DatapathError
from netd.model import Host, Network
from netd.netlink import ZERO_MAC, FdbEntry, Netlink
from netd.plugin import (
    ApplyReport,
    NetworkState,
    network_id,
    other_peers,
    remote_endpoints,
)
from plugins.weave.names import bridge_name, vxlan_name


@dataclass(frozen=True)
class FastdpNetwork:
    """What the bridge and vxlan device of one network depend on."""

    network: Network
    local_ip: str  # this host's underlay address: the vxlan device's source


@dataclass(frozen=True)
class FastdpRemotes:
    """What the vxlan device must hold for the remote side of one network."""

    fdb: frozenset[FdbEntry]
    neigh: tuple[tuple[str, str], ...]  # (ip, mac), sorted


class FastDP:
    """The kernel-VXLAN backend of the weave driver (see plugins.weave.driver.Backend)."""

    name = "fastdp"

    def __init__(self, netlink: Netlink) -> None:
        self._nl = netlink

    def link_names(self, ns: NetworkState) -> set[str]:
        return {bridge_name(ns.network.vni), vxlan_name(ns.network.vni)}

    def network_plan(self, ns: NetworkState, host: Host) -> FastdpNetwork:
        return FastdpNetwork(ns.network, host.underlay_ip)

    def apply_network(self, ns: NetworkState, plan: FastdpNetwork, report: ApplyReport) -> bool:
        net = plan.network
        br, vx = bridge_name(net.vni), vxlan_name(net.vni)
        nl = self._nl
        try:
            report.changed += nl.ensure_bridge(br, net.mtu)
            report.changed += nl.ensure_vxlan(
                vx, net.vni, plan.local_ip, mtu=net.mtu, learning=False, proxy=True
            )
            report.changed += nl.set_master(vx, br)
            report.changed += nl.ensure_brport_flags(vx, neigh_suppress=True, learning=False)
            report.changed += nl.link_up(vx)
        except DatapathError as exc:
            report.fail(network_id(net), str(exc))
            return False
        return True

    def remote_plan(
        self, ns: NetworkState, host: Host, hosts: Mapping[str, Host], report: ApplyReport
    ) -> FastdpRemotes:
        fdb: set[FdbEntry] = set()
        neigh: dict[str, str] = {}
        for ep, peer in remote_endpoints(ns, hosts, report):
            fdb.add(FdbEntry(ep.mac, peer.underlay_ip))
            neigh[ep.ip] = ep.mac
        for peer in other_peers(ns, host):
            fdb.add(FdbEntry(ZERO_MAC, peer.underlay_ip))
        return FastdpRemotes(frozenset(fdb), tuple(sorted(neigh.items())))

    def apply_remotes(
        self,
        ns: NetworkState,
        plan: FastdpRemotes,
        previous: FastdpRemotes | None,
        report: ApplyReport,
    ) -> bool:
        """Write the difference to the kernel: against `previous` (what this process
        last applied) when given, else against a dump of the device's tables."""
        vx = vxlan_name(ns.network.vni)
        nl = self._nl
        try:
            if previous is not None:
                have_fdb, have_neigh = set(previous.fdb), dict(previous.neigh)
            else:
                have_fdb, have_neigh = nl.fdb_entries(vx), nl.neigh_entries(vx)
            want_neigh = dict(plan.neigh)
            for entry in sorted(have_fdb - plan.fdb, key=str):
                report.changed += nl.fdb_del(vx, entry.mac, entry.dst)
            for entry in sorted(plan.fdb - have_fdb, key=str):
                report.changed += nl.fdb_add(vx, entry.mac, entry.dst)
            for ip in sorted(have_neigh.keys() - want_neigh.keys()):
                report.changed += nl.neigh_del(vx, ip)
            for ip, mac in plan.neigh:
                if have_neigh.get(ip) != mac:
                    report.changed += nl.neigh_set(vx, ip, mac)
        except DatapathError as exc:
            report.fail(network_id(ns.network), str(exc))
            return False
        return True
