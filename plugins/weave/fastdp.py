"""Weave's fast datapath: an L2 overlay per network made of kernel objects only.

Per network with local endpoints: a bridge `ndb<vni>` and a vxlan device `ndv<vni>`
(VNI, UDP 4789, local = this host's underlay address, no learning) enslaved to it.
Forwarding needs no learning and no multicast because the store already knows every
endpoint: each remote endpoint gets a permanent fdb entry MAC -> its host's underlay
address and a permanent neighbour entry IP -> MAC on the vxlan device; the device
answers ARP from those entries itself (vxlan `proxy`), so ARP never crosses hosts.
Broadcast and unknown unicast go to one all-zero-MAC fdb entry per peer host that has
endpoints on the network, and to no other host. The bridge port of the vxlan device
has learning off and neigh_suppress on.

Per local endpoint: a veth whose container end is created directly inside the
container's netns with the endpoint's name, MAC, address, MTU and default route, and
whose host end (`ndh<hash>`) is a port of the bridge. Everything carries network.mtu.
"""

from __future__ import annotations

from collections.abc import Mapping

from netd.errors import DatapathError
from netd.model import Endpoint, Host, Network
from netd.netlink import ZERO_MAC, FdbEntry, Netlink, NetnsNotFound
from netd.plugin import ApplyReport, NetworkState, endpoint_id, network_id
from plugins.weave.names import bridge_name, host_veth_name, vxlan_name


class FastDP:
    """The kernel-VXLAN backend of the weave driver (see plugins.weave.driver.Backend)."""

    def __init__(self, netlink: Netlink) -> None:
        self._nl = netlink

    def link_names(self, ns: NetworkState) -> set[str]:
        vni = ns.network.vni
        names = {bridge_name(vni), vxlan_name(vni)}
        return names | {host_veth_name(ep.network, ep.name) for ep in ns.local}

    def apply_network(self, ns: NetworkState, host: Host, report: ApplyReport) -> bool:
        net = ns.network
        br, vx = bridge_name(net.vni), vxlan_name(net.vni)
        nl = self._nl
        try:
            report.changed += nl.ensure_bridge(br, net.mtu)
            report.changed += nl.ensure_vxlan(
                vx, net.vni, host.underlay_ip, mtu=net.mtu, learning=False, proxy=True
            )
            report.changed += nl.set_master(vx, br)
            report.changed += nl.ensure_brport_flags(vx, neigh_suppress=True, learning=False)
            report.changed += nl.link_up(vx)
        except DatapathError as exc:
            report.fail(network_id(net), str(exc))
            return False
        return True

    def apply_endpoints(self, ns: NetworkState, report: ApplyReport) -> None:
        for ep in ns.local:
            self._apply_endpoint(ns.network, ep, report)

    def _apply_endpoint(self, net: Network, ep: Endpoint, report: ApplyReport) -> None:
        nl = self._nl
        host_if = host_veth_name(ep.network, ep.name)
        existed = False
        try:
            existed = nl.get_link(host_if) is not None
            if not ep.netns:
                raise DatapathError(f"endpoint {ep.name} has no network namespace path")
            report.changed += nl.ensure_veth_into_netns(
                host_if, ep.ifname, ep.netns, mac=ep.mac, mtu=net.mtu
            )
            report.changed += nl.set_master(host_if, bridge_name(net.vni))
            report.changed += nl.ensure_address(ep.ifname, ep.ip, net.prefixlen, ep.netns)
            report.changed += nl.ensure_default_route(net.gateway, ep.ifname, ep.netns)
        except DatapathError as exc:
            report.fail(endpoint_id(ep), f"{ep.container}: {exc}")
            if not existed or isinstance(exc, NetnsNotFound):
                try:
                    report.changed += nl.delete_link(host_if)
                except DatapathError as cleanup:
                    report.fail(endpoint_id(ep), f"{ep.container}: {exc}; {cleanup}")

    def apply_remotes(
        self, ns: NetworkState, host: Host, hosts: Mapping[str, Host], report: ApplyReport
    ) -> None:
        vx = vxlan_name(ns.network.vni)
        fdb: set[FdbEntry] = set()
        neigh: dict[str, str] = {}
        for ep in ns.remote:
            peer = hosts.get(ep.host)
            if peer is None:
                report.fail(endpoint_id(ep), f"host {ep.host} of remote endpoint is not known")
                continue
            fdb.add(FdbEntry(ep.mac, peer.underlay_ip))
            neigh[ep.ip] = ep.mac
        for peer in ns.peers:
            if peer.name != host.name and peer.underlay_ip != host.underlay_ip:
                fdb.add(FdbEntry(ZERO_MAC, peer.underlay_ip))
        nl = self._nl
        try:
            have_fdb = nl.fdb_entries(vx)
            for entry in sorted(have_fdb - fdb, key=str):
                report.changed += nl.fdb_del(vx, entry.mac, entry.dst)
            for entry in sorted(fdb - have_fdb, key=str):
                report.changed += nl.fdb_add(vx, entry.mac, entry.dst)
            have_neigh = nl.neigh_entries(vx)
            for ip in sorted(have_neigh.keys() - neigh.keys()):
                report.changed += nl.neigh_del(vx, ip)
            for ip, mac in sorted(neigh.items()):
                if have_neigh.get(ip) != mac:
                    report.changed += nl.neigh_set(vx, ip, mac)
        except DatapathError as exc:
            report.fail(network_id(ns.network), str(exc))
