"""The sleeve backend of the weave driver: the userspace engine (plugins.weave.sleeve)
behind the same bridge as fastdp.

Per network with local endpoints: the bridge `ndb<vni>` and a persistent TAP
`ndt<vni>` that the SleeveEngine creates or adopts (TUNSETPERSIST, so a restarted
daemon re-opens the same device and the bridge keeps its port) and that netd.netlink
enslaves to the bridge (MTU = network MTU, addrgenmode none, up). Remote endpoints
become the engine's static MAC -> peer table, peer hosts its flood list (their sleeve
port from Host.driver_data["weave"]["sleeve_port"]). An encrypted network's key is
NetworkState.secret (64 hex characters); it never runs without one.

The engine (one UDP socket on underlay_ip:6784 and its threads) is created on the
first sleeve network, so hosts that only use fastdp never bind the port. Its datapath
is userspace: while the daemon restarts, sleeve traffic pauses (the TAP and bridge
stay; frames sent meanwhile are lost) and resumes once the new daemon adopts the TAP.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from netd.errors import DatapathError, NetdError
from netd.model import Host, Network
from netd.netlink import Netlink
from netd.plugin import (
    ApplyReport,
    NetworkState,
    network_id,
    other_peers,
    remote_endpoints,
)
from netd.plumbing import tap
from plugins.weave.names import bridge_name, tap_name, vni_of
from plugins.weave.sleeve import DEFAULT_PORT, SleeveEngine


@dataclass(frozen=True)
class SleeveNetwork:
    """What the bridge, TAP and engine network of one network depend on."""

    network: Network
    secret: str | None
    local_ip: str


@dataclass(frozen=True)
class SleeveRemotes:
    """What the engine must know about the remote side of one network."""

    peers: tuple[str, ...]  # "ip:port" of the other hosts with endpoints on it
    macs: tuple[tuple[str, str], ...]  # (remote MAC, its host's underlay IP), sorted


def sleeve_port(host: Host) -> int:
    return int(host.driver_data.get("weave", {}).get("sleeve_port", DEFAULT_PORT))


def network_key(ns: NetworkState) -> bytes | None:
    """The engine key of a network: None when plain; an encrypted one needs its secret."""
    if not ns.network.encrypt:
        return None
    if not ns.secret:
        raise DatapathError(
            f"network {ns.network.name} is encrypted but its key is missing from the store"
        )
    try:
        return bytes.fromhex(ns.secret)
    except ValueError:
        raise DatapathError(
            f"network {ns.network.name}: stored key is not hex; recreate the network"
        ) from None


class Sleeve:
    """The userspace-UDP backend of the weave driver (see plugins.weave.driver.Backend)."""

    name = "sleeve"

    def __init__(self, netlink: Netlink, make_engine: Callable[[], SleeveEngine]) -> None:
        self._nl = netlink
        self._make_engine = make_engine
        self.engine: SleeveEngine | None = None

    def _engine(self) -> SleeveEngine:
        if self.engine is None:
            self.engine = self._make_engine()
        return self.engine

    def link_names(self, ns: NetworkState) -> set[str]:
        return {bridge_name(ns.network.vni), tap_name(ns.network.vni)}

    def network_plan(self, ns: NetworkState, host: Host) -> SleeveNetwork:
        return SleeveNetwork(ns.network, ns.secret, host.underlay_ip)

    def apply_network(self, ns: NetworkState, plan: SleeveNetwork, report: ApplyReport) -> bool:
        net = ns.network
        br, tp = bridge_name(net.vni), tap_name(net.vni)
        nl = self._nl
        try:
            key = network_key(ns)
            engine = self._engine()
            report.changed += nl.ensure_bridge(br, net.mtu)
            if nl.get_link(tp) is None:
                # gone (or never made): an fd the engine still holds belongs to a dead device
                engine.remove_network(net.vni)
                report.changed += 1
            engine.ensure_network(net.vni, tp, net.mtu, key)
            report.changed += nl.set_mtu(tp, net.mtu)
            report.changed += nl.ensure_no_ipv6_ll(tp)
            report.changed += nl.set_master(tp, br)
            report.changed += nl.link_up(tp)
        except NetdError as exc:
            report.fail(network_id(net), str(exc))
            return False
        return True

    def remote_plan(
        self, ns: NetworkState, host: Host, hosts: Mapping[str, Host], report: ApplyReport
    ) -> SleeveRemotes:
        macs: dict[str, str] = {}
        for ep, peer in remote_endpoints(ns, hosts, report):
            macs[ep.mac] = peer.underlay_ip
        peers = {f"{p.underlay_ip}:{sleeve_port(p)}" for p in other_peers(ns, host)}
        return SleeveRemotes(tuple(sorted(peers)), tuple(sorted(macs.items())))

    def apply_remotes(
        self,
        ns: NetworkState,
        plan: SleeveRemotes,
        previous: SleeveRemotes | None,
        report: ApplyReport,
    ) -> bool:
        try:
            engine = self._engine()
            engine.set_peers(ns.network.vni, plan.peers)
            engine.set_static_macs(ns.network.vni, dict(plan.macs))
        except NetdError as exc:
            report.fail(network_id(ns.network), str(exc))
            return False
        return True

    def remove_tap(self, name: str) -> int:
        """Delete the TAP `name` (sweep): through the engine when it forwards it."""
        vni = vni_of(name)
        existed = tap.tap_exists(name)
        if self.engine is not None and vni is not None and vni in self.engine.networks():
            self.engine.remove_network(vni)
        else:
            tap.delete_tap(name)
        return int(existed)

    def observe(self) -> dict[str, Any]:
        if self.engine is None:
            return {}
        nets = {str(vni): info for vni, info in self.engine.networks().items()}
        return {"networks": nets, "host": self.engine.stats()}

    def close(self) -> None:
        """Stop the engine's threads; the TAPs stay for the next daemon to adopt."""
        if self.engine is not None:
            self.engine.close()
            self.engine = None
