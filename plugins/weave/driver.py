"""The weave driver: one L2 overlay per network, carried by a pluggable backend.

The driver owns what is common to its backends: the local endpoints (a container port
per endpoint from netd.plumbing, its host end a port of the network's bridge
`ndb<vni>`), deciding which links the desired state needs, sweeping owned links it no
longer needs, incremental apply, and turning one failed item into a report entry
instead of an exception. A backend (`fastdp` = kernel VXLAN, plugins.weave.fastdp;
`sleeve` = userspace UDP, plugins.weave.sleeve_backend) builds the rest of one network
through the typed Backend interface below: it computes plans (pure values) and applies
them.

Incremental apply: desired versus applied state per item (network, local endpoint,
remote set of a network, owned link) lives in netd.delta trackers. With verify=False an
item whose applied value equals its desired value is skipped without a netlink call, so
an attach on a host with a thousand endpoints costs one endpoint's work; failed items
are marked dirty and re-applied next pass; verify=True (first sync, periodic resync)
checks everything against the kernel: the host side of every endpoint from one link
dump, the container side (a socket into its netns and four requests) for at most
`verify_budget` endpoints per pass, round-robin, plus every endpoint whose host side is
wrong or that this process has not applied successfully yet (so the first pass after a
restart checks all). Leftovers from before a restart are found by listing links only on
a full sweep (sweep and verify, or the first sweep of the process); otherwise the
driver deletes by name the links it made and no longer needs.

Sockets into container namespaces are closed as soon as the endpoint is applied (see
netd.plumbing.container). Skipped endpoints need no socket, so only changed endpoints
and verify applies open one.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from netd.delta import DeltaTracker
from netd.errors import DatapathError, NetdError
from netd.model import Endpoint, Host, Network
from netd.netlink import OWNED_PREFIX, Link
from netd.plugin import (
    ApplyReport,
    BackendSpec,
    DriverContext,
    DriverSpec,
    HostState,
    NetworkState,
    endpoint_id,
    network_id,
    network_of_item,
)
from netd.plumbing import ContainerPort, PlugFailed, plug, siblings_to_replug
from netd.plumbing import host_end_ok as port_host_end_ok
from plugins.weave.crypto import OVERHEAD as SEAL_OVERHEAD
from plugins.weave.fastdp import FastDP, FastdpNetwork, FastdpRemotes
from plugins.weave.names import bridge_name, host_veth_name, owned_role, vni_of
from plugins.weave.sleeve import DEFAULT_PORT, SLEEVE_HEADER, SleeveEngine
from plugins.weave.sleeve_backend import Sleeve, SleeveNetwork, SleeveRemotes

SLEEVE_PORT = DEFAULT_PORT  # weave's sleeve UDP port
VERIFY_BUDGET = 200  # container namespaces a verify pass checks (docs/drivers.md)
_SWEEP_ORDER = {"veth": 0, "vxlan": 1, "tap": 1, "bridge": 2}  # ports before bridges

NetPlan = TypeVar("NetPlan")
RemotePlan = TypeVar("RemotePlan")


class Backend(Protocol[NetPlan, RemotePlan]):
    """One way to carry a weave network between hosts. Plans are values (frozen
    dataclasses): equal plans need no re-apply."""

    name: str

    def link_names(self, ns: NetworkState) -> set[str]:
        """The owned network-level links (bridge, tunnel port) this network needs."""
        ...

    def network_plan(self, ns: NetworkState, host: Host) -> NetPlan:
        """Everything apply_network depends on (pure, no kernel access)."""
        ...

    def apply_network(self, ns: NetworkState, plan: NetPlan, report: ApplyReport) -> bool:
        """Bridge and tunnel port of one network; False (and a report entry) if not usable."""
        ...

    def remote_plan(
        self, ns: NetworkState, host: Host, hosts: Mapping[str, Host], report: ApplyReport
    ) -> RemotePlan:
        """The remote side of a network (pure, no kernel access)."""
        ...

    def apply_remotes(
        self,
        ns: NetworkState,
        plan: RemotePlan,
        previous: RemotePlan | None,
        report: ApplyReport,
    ) -> bool:
        """Make the datapath hold `plan`; `previous` is what this process applied last
        (None: unknown, read the kernel). False (and a report entry) on failure."""
        ...


if TYPE_CHECKING:  # mypy checks each backend against the protocol with its plan types

    def _typed(
        fastdp: FastDP, sleeve: Sleeve
    ) -> tuple[Backend[FastdpNetwork, FastdpRemotes], Backend[SleeveNetwork, SleeveRemotes]]:
        return fastdp, sleeve


@dataclass(frozen=True)
class PortPlan:
    """A local endpoint as applied: its container port on the network's bridge."""

    port: ContainerPort
    bridge: str


def port_plan(net: Network, ep: Endpoint) -> PortPlan:
    port = ContainerPort(
        host_name=host_veth_name(net.name, ep.name),
        netns=ep.netns,
        ifname=ep.ifname,
        mac=ep.mac,
        mtu=net.mtu,
        ip=ep.ip,
        prefixlen=net.prefixlen,
        gateway=net.gateway,
    )
    return PortPlan(port, bridge_name(net.vni))


@dataclass
class BackendItems(Generic[NetPlan, RemotePlan]):
    """The network-level items of one backend: its network and remote-set plans."""

    backend: Backend[NetPlan, RemotePlan]
    networks: DeltaTracker[str, NetPlan] = field(default_factory=DeltaTracker)
    remotes: DeltaTracker[str, RemotePlan] = field(default_factory=DeltaTracker)


@dataclass
class WeaveDelta:
    """Every item the driver tracks, desired versus applied."""

    ports: DeltaTracker[str, PortPlan] = field(default_factory=DeltaTracker)
    links: DeltaTracker[str, str] = field(default_factory=DeltaTracker)  # name -> role
    backends: dict[str, BackendItems[Any, Any]] = field(default_factory=dict)


@dataclass(eq=False)
class _Served:
    """A network this host serves, as the trackers' desired side last took it."""

    ns: NetworkState
    items: BackendItems[Any, Any]
    ports: dict[str, Endpoint] = field(default_factory=dict)  # endpoint id -> endpoint
    eps: dict[int, Endpoint] = field(default_factory=dict)  # id(endpoint) -> endpoint
    links: set[str] = field(default_factory=set)  # the network-level owned links
    clean: bool = False  # its last apply reported no error
    bridge: Link | None = None  # its bridge as last read


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
                        encryption=True, encryption_overhead=SEAL_OVERHEAD),
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
        self._delta = WeaveDelta()  # desired vs applied, per item (netd.delta)
        self._listed_sweep_done = False
        self._served: dict[str, _Served] = {}  # networks with local endpoints, by name
        self._by_netns: dict[str, set[str]] = {}  # container netns -> its desired ports
        self._basis: tuple[Host, Mapping[str, Host]] | None = None

    def setup(self) -> dict[str, Any]:
        host = self._host = self._ctx.host()
        return {"vtep": host.underlay_ip, "sleeve_port": self._sleeve_port}

    def _new_engine(self) -> SleeveEngine:
        assert self._host is not None
        return SleeveEngine(self._host.underlay_ip, self._sleeve_port)

    def _items(self, backend_name: str) -> BackendItems[Any, Any] | None:
        backend = self._backends.get(backend_name)
        if backend is None:
            return None
        items = self._delta.backends.get(backend_name)
        if items is None or items.backend is not backend:
            items = self._delta.backends[backend_name] = BackendItems(backend)
        return items

    # -- apply --------------------------------------------------------------------------

    def apply(self, desired: HostState, *, sweep: bool, verify: bool) -> ApplyReport:
        if self._host is None:
            self._host = desired.host
        delta = self._delta
        report = ApplyReport()
        work = self._update_desired(desired, verify, report)
        self._hand_over_default_routes()
        todo: dict[str, list[str]] = {}  # network -> its endpoints pending an update
        for item, _ in delta.ports.pending_updates():
            todo.setdefault(network_of_item(item) or "", []).append(item)
        for name, served in self._served.items():
            net = served.ns.network
            if (
                name in todo
                or not served.clean
                or not served.items.networks.in_sync(network_id(net))
                or not served.items.remotes.in_sync(remotes_id(net))
            ):
                work.setdefault(name, served)
        # verify: the host side of every endpoint comes from this one dump
        owned = self._list_owned(report) if verify else None
        if sweep and (verify or not self._listed_sweep_done):
            if owned is None and not verify:
                owned = self._list_owned(report)
            if owned is not None:
                keep = delta.links.desired_keys()
                self._remove([n for n in _sorted_owned(owned) if n not in keep], report)
            self._listed_sweep_done = owned is not None
        else:
            self._remove(sorted((n for n, _ in delta.links.pending_deletes()), key=_sweep_key),
                         report)
        spot: set[str] | None = None  # endpoints whose container side this pass checks
        if verify and owned is not None and self._verify_budget is not None:
            ids = sorted(delta.ports.desired_keys())
            spot, self._verify_cursor = round_robin(ids, self._verify_cursor, self._verify_budget)
        for name in sorted(work):
            served = work[name]
            ns = served.ns
            failed_before = len(report.errors)
            try:
                self._apply_network(served.items, ns, desired, verify, owned, spot,
                                    todo.get(name, []), report)
            except Exception as exc:  # one bad network must not stop the others
                _fail_network(ns, f"unexpected error: {exc!r}", report)
                self._forget(served.items, ns)
            served.clean = len(report.errors) == failed_before
        # items of networks this host no longer serves went with their links
        for items in delta.backends.values():
            items.networks.forget_undesired()
            items.remotes.forget_undesired()
        delta.ports.forget_undesired()
        for name, _ in delta.links.pending_updates():
            delta.links.mark_applied(name)
        self._nl.close_unused(set())
        return report

    def _update_desired(
        self, desired: HostState, everything: bool, report: ApplyReport
    ) -> dict[str, _Served]:
        """Bring the trackers' desired side to `desired`, touching only networks whose
        NetworkState is not the very object seen last time (calc keeps untouched ones
        identical), and within one only endpoints that are new objects; the networks
        that changed (all of them with `everything` or a new host basis)."""
        basis = (desired.host, desired.hosts)
        if self._basis is None or basis[0] != self._basis[0] or basis[1] is not self._basis[1]:
            everything = True
        self._basis = basis
        work: dict[str, _Served] = {}
        for name, ns in desired.networks.items():
            served = self._served.get(name)
            items = self._items(ns.network.backend)
            if items is None:
                _fail_network(ns, f"weave has no backend {ns.network.backend!r}", report)
                self._unserve(name)
                continue
            if not ns.local and not ns.roles:  # a role (expose) serves it without endpoints
                self._unserve(name)
                continue
            if served is not None and served.ns is ns and not everything:
                continue
            if served is None or served.items is not items or served.ns.network != ns.network:
                self._unserve(name)
                served = self._served[name] = _Served(ns, items)
                self._set_links(served, items.backend.link_names(ns))
                for ep in ns.local:
                    self._want_port(served, ep)
            else:
                now = dict(zip(map(id, ns.local), ns.local, strict=True))
                before = served.eps
                for key in before.keys() - now.keys():
                    self._unwant_port(served, before[key])
                served.ns = ns
                for key in now.keys() - before.keys():
                    self._want_port(served, now[key])
                self._set_links(served, items.backend.link_names(ns))
            work[name] = served
        for name in [n for n in self._served if n not in desired.networks]:
            self._unserve(name)
        return work

    def _want_port(self, served: _Served, ep: Endpoint) -> None:
        item = endpoint_id(ep)
        plan = port_plan(served.ns.network, ep)
        old = served.ports.get(item)
        if old is not None:
            served.eps.pop(id(old), None)
            self._port_netns(old, item, add=False)
        served.ports[item] = ep
        served.eps[id(ep)] = ep
        self._delta.ports.set_desired(item, plan)
        self._delta.links.set_desired(plan.port.host_name, "veth")
        self._port_netns(ep, item, add=True)

    def _unwant_port(self, served: _Served, ep: Endpoint) -> None:
        item = endpoint_id(ep)
        served.eps.pop(id(ep), None)
        if served.ports.get(item) is not ep:
            return  # replaced by a newer object of the same endpoint
        del served.ports[item]
        plan = self._delta.ports.desired(item)
        self._delta.ports.delete_desired(item)
        if plan is not None:
            self._delta.links.delete_desired(plan.port.host_name)
        self._port_netns(ep, item, add=False)

    def _port_netns(self, ep: Endpoint, item: str, *, add: bool) -> None:
        if add:
            self._by_netns.setdefault(ep.netns, set()).add(item)
            return
        items = self._by_netns.get(ep.netns)
        if items is not None:
            items.discard(item)
            if not items:
                del self._by_netns[ep.netns]

    def _set_links(self, served: _Served, names: set[str]) -> None:
        for name in served.links - names:
            self._delta.links.delete_desired(name)
        for name in names - served.links:
            self._delta.links.set_desired(name, owned_role(name) or "")
        served.links = set(names)

    def _unserve(self, name: str) -> None:
        """This host no longer serves network `name` with weave: nothing of it is desired."""
        served = self._served.pop(name, None)
        if served is None:
            return
        for ep in list(served.ports.values()):
            self._unwant_port(served, ep)
        self._set_links(served, set())
        net = served.ns.network
        served.items.networks.delete_desired(network_id(net))
        served.items.remotes.delete_desired(remotes_id(net))

    def _hand_over_default_routes(self) -> None:
        """An endpoint going away may take its container's default route with it: the
        container's remaining endpoints are applied again so one of them installs it."""
        ports = self._delta.ports
        gone = [plan.port.netns for _, plan in ports.pending_deletes()]
        staying = {item: netns for netns in set(gone) for item in self._by_netns.get(netns, ())}
        for item in siblings_to_replug(gone, staying):
            ports.mark_dirty(item)

    def _forget(self, items: BackendItems[Any, Any], ns: NetworkState) -> None:
        items.networks.mark_dirty(network_id(ns.network))
        items.remotes.mark_dirty(remotes_id(ns.network))
        for ep in ns.local:
            self._delta.ports.mark_dirty(endpoint_id(ep))

    def _apply_network(
        self,
        items: BackendItems[NetPlan, RemotePlan],
        ns: NetworkState,
        desired: HostState,
        verify: bool,
        host_links: Mapping[str, Link] | None,
        spot: set[str] | None,
        todo: Sequence[str],
        report: ApplyReport,
    ) -> None:
        """`host_links`: this apply's dump of owned links; `spot`: with a verify budget,
        the endpoints whose container side this pass checks (None: all); `todo`: the
        network's endpoints pending an update (all that a pass without verify looks at
        when the network itself is in sync)."""
        net, host, backend = ns.network, desired.host, items.backend
        ports = self._delta.ports
        net_item = network_id(net)
        items.networks.set_desired(net_item, backend.network_plan(ns, host))
        # fresh: the network's own links were applied as they are now; only then may
        # its endpoints and remote set be skipped too
        fresh = not verify and items.networks.in_sync(net_item)
        before: dict[str, PortPlan | None] = {}  # endpoint id -> applied before this pass
        if verify and spot is not None and host_links is not None:
            before = {endpoint_id(ep): ports.applied(endpoint_id(ep)) for ep in ns.local}
        if not fresh:
            self._forget(items, ns)
            plan = items.networks.desired(net_item)
            assert plan is not None
            if not backend.apply_network(ns, plan, report):
                reason = report.errors.get(net_item, "")
                for ep in ns.local:
                    report.fail(endpoint_id(ep), f"network {net.name} is not ready: {reason}")
                return
            items.networks.mark_applied(net_item)
        served = self._served[net.name]
        # the bridge as read since the network was last applied (only its index is used)
        bridge = served.bridge if fresh else None
        endpoints = [served.ports[i] for i in todo if i in served.ports] if fresh else ns.local
        for ep in endpoints:
            item = endpoint_id(ep)
            if fresh and ports.in_sync(item):
                continue
            ports.mark_dirty(item)
            want = ports.desired(item)
            assert want is not None
            if bridge is None:
                try:
                    bridge = self._nl.get_link(want.bridge)
                except DatapathError as exc:
                    report.fail(item, f"{ep.container}: {exc}")
                    continue
                if bridge is None:
                    report.fail(item, f"bridge {want.bridge} is gone")
                    continue
                served.bridge = bridge
            if (
                before.get(item) == want
                and item not in (spot or ())
                and host_links is not None
                and host_end_ok(host_links.get(want.port.host_name), bridge, net)
            ):
                ports.mark_applied(item)  # host side checked; container's later
                continue
            if self._plug(ep, want, bridge, host_links, report):
                ports.mark_applied(item)
            else:
                served.bridge = None  # read it again next time: it may be what failed
        failed_before = len(report.errors)
        remote_item = remotes_id(net)
        remote = backend.remote_plan(ns, host, desired.hosts, report)
        items.remotes.set_desired(remote_item, remote)
        previous = items.remotes.applied(remote_item)
        items.remotes.mark_dirty(remote_item)
        if fresh and previous == remote:
            items.remotes.mark_applied(remote_item)
            return
        applied = backend.apply_remotes(ns, remote, previous if fresh else None, report)
        if applied and len(report.errors) == failed_before:
            items.remotes.mark_applied(remote_item)

    def _plug(
        self,
        ep: Endpoint,
        want: PortPlan,
        bridge: Link,
        host_links: Mapping[str, Link] | None,
        report: ApplyReport,
    ) -> bool:
        """The endpoint's container port on `bridge`; False (and a report entry) on failure.
        `host_links`: this apply's dump of owned links (None: read them one by one)."""
        if not want.port.netns:
            report.fail(endpoint_id(ep),
                        f"{ep.container}: endpoint {ep.name} has no network namespace path")
            return False
        try:
            report.changed += plug(self._nl, want.port, master=bridge, host_links=host_links)
        except PlugFailed as exc:
            report.changed += exc.changed
            report.fail(endpoint_id(ep), f"{ep.container}: {exc}")
            return False
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
                self._delta.links.mark_deleted(name)
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
        self._delta = WeaveDelta()
        self._served, self._by_netns, self._basis = {}, {}, None
        if report.errors:
            raise DatapathError("; ".join(f"{k}: {v}" for k, v in report.errors.items()))

    def close(self) -> None:
        """Stop the sleeve engine's threads and close sockets; the datapath (bridges,
        vxlan devices, TAPs, veths) stays for the next daemon to adopt. The netlink
        facade is shared by every driver: the daemon closes it after them."""
        self._sleeve.close()


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
    return port_host_end_ok(link, bridge, net.mtu)


def _sorted_owned(links: Mapping[str, Link]) -> list[str]:
    return sorted((n for n in links if owned_role(n) is not None), key=_sweep_key)


def _fail_network(ns: NetworkState, message: str, report: ApplyReport) -> None:
    """A network that cannot be built fails every local endpoint on it as well, so an
    attach waiting for its endpoint hears about it."""
    report.fail(network_id(ns.network), message)
    for ep in ns.local:
        report.fail(endpoint_id(ep), f"network {ns.network.name}: {message}")
