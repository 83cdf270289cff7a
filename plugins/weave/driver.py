"""The weave driver: one L2 overlay per network, carried by a pluggable backend.

The driver owns what is common to its backends: the local endpoints (a veth per
endpoint, its host end a port of the network's bridge `ndb<vni>`), deciding which
links the desired state needs, sweeping owned links it no longer needs, incremental
apply, and turning one failed item into a report entry instead of an exception. A
backend (`fastdp` = kernel VXLAN, plugins.weave.fastdp; `sleeve` = userspace UDP,
plugins.weave.sleeve_backend) builds the rest of one network through the small
Backend interface below.

Incremental apply: the driver remembers, per item (network, local endpoint, remote
set of a network), what it last applied successfully in this process. With
verify=False an item equal to that is skipped without a netlink call, so an attach on
a host with a thousand endpoints costs one endpoint's work; failed items are always
re-applied; verify=True (first sync, periodic resync) checks everything against the
kernel: the host side of every endpoint from one link dump, the container side (a
socket into its netns and four requests) for at most `verify_budget` endpoints per
pass, round-robin, plus every endpoint whose host side is wrong or that this process
has not applied successfully yet (so the first pass after a restart checks all).
Leftovers from before a restart are found by listing links only on a full
sweep (sweep and verify, or the first sweep of the process); otherwise the driver
deletes by name the links it made and no longer needs.

Sockets into container namespaces are closed as soon as the endpoint is applied: an
open socket keeps a namespace (and the container's veth and address) alive after the
container is gone, and costs file descriptors per endpoint. Skipped endpoints need no
socket, so only changed endpoints and verify applies open one.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol

from netd.errors import DatapathError, NetdError
from netd.model import SLEEVE_CRYPTO_OVERHEAD, SLEEVE_HEADER, Endpoint, Host, Network
from netd.netlink import ADDRGENMODE_NONE, OWNED_PREFIX, Link, NetnsNotFound
from netd.plugin import (
    ApplyReport,
    BackendSpec,
    DriverContext,
    DriverSpec,
    HostState,
    NetworkState,
    endpoint_id,
    network_id,
)
from plugins.weave.fastdp import FastDP
from plugins.weave.names import bridge_name, host_veth_name, owned_role, vni_of
from plugins.weave.sleeve import DEFAULT_PORT, SleeveEngine
from plugins.weave.sleeve_backend import Sleeve

SLEEVE_PORT = DEFAULT_PORT  # weave's sleeve UDP port
ARP_RETRANS_MS = 100  # container ARP retry: see Netlink.ensure_arp_retrans
VERIFY_BUDGET = 200  # container namespaces a verify pass checks (docs/drivers.md)
_SWEEP_ORDER = {"veth": 0, "vxlan": 1, "tap": 1, "bridge": 2}  # ports before bridges


class Backend(Protocol):
    name: str

    def link_names(self, ns: NetworkState) -> set[str]:
        """The owned network-level links (bridge, tunnel port) this network needs."""
        ...

    def fingerprint(self, ns: NetworkState, host: Host) -> object:
        """Everything apply_network depends on; equal fingerprints need no re-apply."""
        ...

    def apply_network(self, ns: NetworkState, host: Host, report: ApplyReport) -> bool:
        """Bridge and tunnel port of one network; False (and a report entry) if not usable."""
        ...

    def remote_plan(
        self, ns: NetworkState, host: Host, hosts: Mapping[str, Host], report: ApplyReport
    ) -> object:
        """The remote side of a network as a comparable value (pure, no kernel access)."""
        ...

    def apply_remotes(
        self, ns: NetworkState, plan: object, previous: object | None, report: ApplyReport
    ) -> bool:
        """Make the datapath hold `plan`; `previous` is what this process applied last
        (None: unknown, read the kernel). False (and a report entry) on failure."""
        ...


def remotes_id(net: Network) -> str:
    return f"remotes:{net.name}"


IPV4_UDP = 20 + 8  # outer IPv4 and UDP headers
ETHERNET = 14  # the inner frame's Ethernet header


class WeaveDriver:
    name = "weave"
    spec: ClassVar[DriverSpec] = DriverSpec(
        name="weave",
        backends=(
            # kernel VXLAN: outer IPv4 + UDP + VXLAN 8 + inner Ethernet
            BackendSpec("fastdp", overhead=IPV4_UDP + 8 + ETHERNET),
            # userspace UDP: outer IPv4 + UDP + sleeve header + inner Ethernet;
            # encrypted frames carry a nonce and an AEAD tag more
            BackendSpec("sleeve", overhead=IPV4_UDP + SLEEVE_HEADER + ETHERNET,
                        encryption=True, encryption_overhead=SLEEVE_CRYPTO_OVERHEAD),
        ),
        default_backend="fastdp",
    )

    def __init__(
        self,
        ctx: DriverContext,
        *,
        sleeve_port: int = SLEEVE_PORT,
        verify_budget: int | None = VERIFY_BUDGET,
    ) -> None:
        """`verify_budget`: how many container namespaces one verify pass checks at most
        (round-robin); None checks all of them every pass."""
        self._ctx = ctx
        self.state_dir = ctx.state_dir
        self._verify_budget = verify_budget
        self._verify_cursor: str | None = None  # last endpoint id the budget covered
        self._nl = ctx.netlink
        self._host: Host | None = None
        self._sleeve_port = sleeve_port
        self._sleeve = Sleeve(self._nl, self._new_engine)
        self._backends: dict[str, Backend] = {"fastdp": FastDP(self._nl), "sleeve": self._sleeve}
        self._named: set[str] = set()  # links named by an apply of this process
        self._applied: dict[str, object] = {}  # item id -> what was applied successfully
        self._listed_sweep_done = False

    def setup(self) -> dict[str, Any]:
        host = self._host = self._ctx.host()
        return {"vtep": host.underlay_ip, "sleeve_port": self._sleeve_port}

    def _new_engine(self) -> SleeveEngine:
        assert self._host is not None
        return SleeveEngine(self._host.underlay_ip, self._sleeve_port)

    # -- apply --------------------------------------------------------------------------

    def apply(self, desired: HostState, *, sweep: bool, verify: bool) -> ApplyReport:
        if self._host is None:
            self._host = desired.host
        report = ApplyReport()
        plans: list[tuple[Backend, NetworkState]] = []
        keep: set[str] = set()
        for ns in desired.networks.values():
            backend = self._backends.get(ns.network.backend)
            if backend is None:
                _fail_network(ns, f"weave has no backend {ns.network.backend!r}", report)
                continue
            if ns.local:
                keep |= backend.link_names(ns)
                keep |= {host_veth_name(ep.network, ep.name) for ep in ns.local}
                plans.append((backend, ns))
        self._refresh_neighbours_of_removed(plans)
        # verify: the host side of every endpoint comes from this one dump
        owned = self._list_owned(report) if verify else None
        if sweep and (verify or not self._listed_sweep_done):
            if owned is None and not verify:
                owned = self._list_owned(report)
            if owned is not None:
                self._remove([n for n in _sorted_owned(owned) if n not in keep], report)
            self._listed_sweep_done = owned is not None
        else:
            self._remove(sorted(self._named - keep, key=_sweep_key), report)
        spot: set[str] | None = None  # endpoints whose container side this pass checks
        if verify and owned is not None and self._verify_budget is not None:
            ids = sorted(endpoint_id(ep) for _, ns in plans for ep in ns.local)
            spot, self._verify_cursor = round_robin(ids, self._verify_cursor, self._verify_budget)
        live: set[str] = set()
        for backend, ns in plans:
            live |= {network_id(ns.network), remotes_id(ns.network)}
            live |= {endpoint_id(ep) for ep in ns.local}
            try:
                self._apply_network(backend, ns, desired, verify, owned, spot, report)
            except Exception as exc:  # one bad network must not stop the others
                _fail_network(ns, f"unexpected error: {exc!r}", report)
                self._forget(ns)
        self._applied = {k: v for k, v in self._applied.items() if k in live}
        self._named |= keep
        self._nl.close_unused(set())
        return report

    def _refresh_neighbours_of_removed(self, plans: list[tuple[Backend, NetworkState]]) -> None:
        """An endpoint going away may take its container's default route with it: the
        container's remaining endpoints are applied again so one of them installs it."""
        wanted = {endpoint_id(ep): ep for _, ns in plans for ep in ns.local}
        gone = {
            done[-1].netns
            for item, done in self._applied.items()
            if item.startswith("endpoint:") and item not in wanted
            and isinstance(done, tuple) and isinstance(done[-1], Endpoint)
        }
        for item, ep in wanted.items():
            if ep.netns in gone:
                self._applied.pop(item, None)

    def _forget(self, ns: NetworkState) -> None:
        for item in (network_id(ns.network), remotes_id(ns.network)):
            self._applied.pop(item, None)
        for ep in ns.local:
            self._applied.pop(endpoint_id(ep), None)

    def _apply_network(
        self,
        backend: Backend,
        ns: NetworkState,
        desired: HostState,
        verify: bool,
        host_links: Mapping[str, Link] | None,
        spot: set[str] | None,
        report: ApplyReport,
    ) -> None:
        """`host_links`: this apply's dump of owned links; `spot`: with a verify budget,
        the endpoints whose container side this pass checks (None: all)."""
        net, host = ns.network, desired.host
        fingerprint = (backend.name, backend.fingerprint(ns, host))
        # fresh: the network's own links were applied as they are now; only then may
        # its endpoints and remote set be skipped too
        fresh = not verify and self._applied.get(network_id(net)) == fingerprint
        before: dict[str, object] = {}  # endpoint id -> applied before this verify pass
        if verify and spot is not None and host_links is not None:
            before = {endpoint_id(ep): self._applied.get(endpoint_id(ep)) for ep in ns.local}
        if not fresh:
            self._forget(ns)
            if not backend.apply_network(ns, host, report):
                reason = report.errors.get(network_id(net), "")
                for ep in ns.local:
                    report.fail(endpoint_id(ep), f"network {net.name} is not ready: {reason}")
                return
            self._applied[network_id(net)] = fingerprint
        bridge: Link | None = None
        for ep in ns.local:
            done = (net.vni, net.mtu, net.prefixlen, net.gateway, ep)
            if fresh and self._applied.get(endpoint_id(ep)) == done:
                continue
            self._applied.pop(endpoint_id(ep), None)
            if bridge is None:
                try:
                    bridge = self._nl.get_link(bridge_name(net.vni))
                except DatapathError as exc:
                    report.fail(endpoint_id(ep), f"{ep.container}: {exc}")
                    continue
                if bridge is None:
                    report.fail(endpoint_id(ep), f"bridge {bridge_name(net.vni)} is gone")
                    continue
            if (
                before.get(endpoint_id(ep)) == done
                and endpoint_id(ep) not in (spot or ())
                and host_links is not None
                and host_end_ok(host_links.get(host_veth_name(net.name, ep.name)), bridge, net)
            ):
                self._applied[endpoint_id(ep)] = done  # host side checked; container's later
                continue
            if self._apply_endpoint(net, ep, bridge, host_links, report):
                self._applied[endpoint_id(ep)] = done
        failed_before = len(report.errors)
        plan = backend.remote_plan(ns, host, desired.hosts, report)
        previous = self._applied.pop(remotes_id(net), None)
        if fresh and previous == plan:
            self._applied[remotes_id(net)] = plan
            return
        applied = backend.apply_remotes(ns, plan, previous if fresh else None, report)
        if applied and len(report.errors) == failed_before:
            self._applied[remotes_id(net)] = plan

    def _apply_endpoint(
        self,
        net: Network,
        ep: Endpoint,
        bridge: Link,
        host_links: Mapping[str, Link] | None,
        report: ApplyReport,
    ) -> bool:
        """A veth: container end inside the container's netns with the endpoint's name,
        MAC, address, MTU and default route; host end a port of the network's bridge.
        `host_links`: this apply's dump of owned links (None: read them one by one)."""
        nl = self._nl
        host_if = host_veth_name(ep.network, ep.name)
        existed = False
        try:
            if host_links is not None:
                existed = host_if in host_links
            else:
                existed = nl.get_link(host_if) is not None
            if not ep.netns:
                raise DatapathError(f"endpoint {ep.name} has no network namespace path")
            pair = nl.ensure_veth_into_netns(
                host_if, ep.ifname, ep.netns, mac=ep.mac, mtu=net.mtu, master=bridge,
                host_links=host_links,
            )
            report.changed += pair.changed
            peer = pair.peer
            report.changed += nl.ensure_arp_retrans(peer, ARP_RETRANS_MS, ep.netns)
            report.changed += nl.ensure_address(peer, ep.ip, net.prefixlen, ep.netns)
            report.changed += nl.ensure_default_route(net.gateway, peer, ep.netns)
        except DatapathError as exc:
            report.fail(endpoint_id(ep), f"{ep.container}: {exc}")
            if not existed or isinstance(exc, NetnsNotFound):
                try:
                    report.changed += nl.delete_link(host_if)
                except DatapathError as cleanup:
                    report.fail(endpoint_id(ep), f"{ep.container}: {exc}; {cleanup}")
            return False
        finally:
            if ep.netns:
                nl.close_netns(ep.netns)
        return True

    # -- sweep --------------------------------------------------------------------------

    def _owned(self) -> list[str]:
        return _sorted_owned({link.name: link for link in self._nl.list_links(OWNED_PREFIX)})

    def _list_owned(self, report: ApplyReport) -> dict[str, Link] | None:
        """This driver's links by name, from one dump; None (and a report entry) on failure."""
        try:
            links = self._nl.list_links(OWNED_PREFIX)
        except DatapathError as exc:
            report.fail("link:*", f"cannot list links: {exc}")
            return None
        return {link.name: link for link in links if owned_role(link.name) is not None}

    def _sweep_listed(self, keep: set[str], report: ApplyReport) -> bool:
        """Remove every owned link not in `keep`, found by listing; False if listing failed."""
        owned = self._list_owned(report)
        if owned is None:
            return False
        self._remove([name for name in _sorted_owned(owned) if name not in keep], report)
        return True

    def _remove(self, names: list[str], report: ApplyReport) -> None:
        for name in names:
            try:
                if owned_role(name) == "tap":
                    report.changed += self._sleeve.remove_tap(name)
                else:
                    report.changed += self._nl.delete_link(name)
                self._named.discard(name)
            except NetdError as exc:
                report.fail(f"link:{name}", str(exc))

    # -- status and lifecycle -----------------------------------------------------------

    def observe(self) -> dict[str, Any]:
        links = {name: owned_role(name) for name in self._owned()}
        networks: dict[str, Any] = {}
        for name, role in links.items():
            vni = vni_of(name)
            if vni is None or role not in ("vxlan", "tap"):
                continue
            bridge = bridge_name(vni) if bridge_name(vni) in links else None
            if role == "vxlan":
                networks[str(vni)] = {
                    "bridge": bridge,
                    "vxlan": name,
                    "fdb": len(self._nl.fdb_entries(name)),
                    "neighbours": len(self._nl.neigh_entries(name)),
                }
            else:
                networks[str(vni)] = {"bridge": bridge, "tap": name}
        return {
            "links": links,
            "networks": networks,
            "ports": sum(1 for r in links.values() if r == "veth"),
            "sleeve": self._sleeve.observe(),
        }

    def teardown(self) -> None:
        report = ApplyReport()
        self._sweep_listed(set(), report)
        self._named.clear()
        self._applied.clear()
        if report.errors:
            raise DatapathError("; ".join(f"{k}: {v}" for k, v in report.errors.items()))

    def close(self) -> None:
        """Stop the sleeve engine's threads and close sockets; the datapath (bridges,
        vxlan devices, TAPs, veths) stays for the next daemon to adopt."""
        self._sleeve.close()
        self._nl.close()


def _sweep_key(name: str) -> tuple[int, str]:
    return (_SWEEP_ORDER[owned_role(name) or "veth"], name)


def round_robin(ids: Sequence[str], cursor: str | None, n: int) -> tuple[set[str], str | None]:
    """The next `n` of the sorted `ids` after `cursor` (wrapping around), and the new
    cursor. Ids added or removed between calls only shift the window."""
    if len(ids) <= n:
        return set(ids), None
    start = 0 if cursor is None else bisect.bisect_right(ids, cursor)
    window = [ids[(start + i) % len(ids)] for i in range(n)]
    return set(window), window[-1] if window else cursor


def host_end_ok(link: Link | None, bridge: Link, net: Network) -> bool:
    """The host end of an endpoint's veth is as apply leaves it (from a link dump)."""
    return (
        link is not None
        and link.kind == "veth"
        and link.peer_index > 0
        and link.master == bridge.index
        and link.mtu == net.mtu
        and link.up
        and link.addrgenmode in (None, ADDRGENMODE_NONE)
    )


def _sorted_owned(links: Mapping[str, Link]) -> list[str]:
    return sorted((n for n in links if owned_role(n) is not None), key=_sweep_key)


def _fail_network(ns: NetworkState, message: str, report: ApplyReport) -> None:
    """A network that cannot be built fails every local endpoint on it as well, so an
    attach waiting for its endpoint hears about it."""
    report.fail(network_id(ns.network), message)
    for ep in ns.local:
        report.fail(endpoint_id(ep), f"network {ns.network.name}: {message}")
