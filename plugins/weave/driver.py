"""The weave driver: one L2 overlay per network, carried by a pluggable backend.

The driver owns what is common to its backends: deciding which links the desired
state needs, sweeping owned links it no longer needs (only those it named itself in
this process, or every owned leftover once the daemon says a full sync happened), and
turning one failed item into a report entry instead of an exception. A backend
(`fastdp` = kernel VXLAN, `sleeve` = userspace UDP, plugins.weave.sleeve) only builds
its datapath for one network at a time, through the small Backend interface below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from netd.errors import DatapathError
from netd.model import Host
from netd.netlink import OWNED_PREFIX, Netlink
from netd.plugin import ApplyReport, HostState, NetworkState, endpoint_id, network_id
from plugins.weave.fastdp import FastDP
from plugins.weave.names import bridge_name, owned_role, vni_of

SLEEVE_PORT = 6784  # weave's sleeve UDP port
_SWEEP_ORDER = {"veth": 0, "vxlan": 1, "bridge": 2}  # ports before the bridges they sit on


class Backend(Protocol):
    def link_names(self, ns: NetworkState) -> set[str]:
        """Every owned link this network needs on this host (kept from the sweep)."""
        ...

    def apply_network(self, ns: NetworkState, host: Host, report: ApplyReport) -> bool:
        """Host-side pieces of one network; False (and a report entry) if not usable."""
        ...

    def apply_endpoints(self, ns: NetworkState, report: ApplyReport) -> None: ...

    def apply_remotes(
        self, ns: NetworkState, host: Host, hosts: Mapping[str, Host], report: ApplyReport
    ) -> None: ...


class WeaveDriver:
    name = "weave"

    def __init__(self, *, state_dir: Path | None = None, **_: Any) -> None:
        self.state_dir = state_dir
        self._nl = Netlink()
        self._backends: dict[str, Backend] = {"fastdp": FastDP(self._nl)}
        self._named: set[str] = set()  # links named by an apply of this process

    def setup(self, host: Host) -> dict[str, Any]:
        return {"vtep": host.underlay_ip, "sleeve_port": SLEEVE_PORT}

    def apply(self, desired: HostState, sweep: bool) -> ApplyReport:
        report = ApplyReport()
        plans: list[tuple[Backend, NetworkState]] = []
        keep: set[str] = set()
        for ns in desired.networks.values():
            backend = self._backends.get(ns.network.backend)
            if backend is None:
                report.fail(network_id(ns.network), self._no_backend(ns.network.backend))
                continue
            if ns.local:
                keep |= backend.link_names(ns)
                plans.append((backend, ns))
        self._sweep(keep, lambda name: sweep or name in self._named, report)
        for backend, ns in plans:
            try:
                self._apply_network(backend, ns, desired, report)
            except Exception as exc:  # one bad network must not stop the others
                report.fail(network_id(ns.network), f"unexpected error: {exc!r}")
        self._named |= keep
        self._nl.close_unused({ep.netns for _, ns in plans for ep in ns.local})
        return report

    @staticmethod
    def _no_backend(backend: str) -> str:
        if backend == "sleeve":
            return "sleeve backend not available yet"
        return f"weave has no backend {backend!r}"

    @staticmethod
    def _apply_network(
        backend: Backend, ns: NetworkState, desired: HostState, report: ApplyReport
    ) -> None:
        if not backend.apply_network(ns, desired.host, report):
            for ep in ns.local:
                report.fail(endpoint_id(ep), f"network {ns.network.name} is not ready")
            return
        backend.apply_endpoints(ns, report)
        backend.apply_remotes(ns, desired.host, desired.hosts, report)

    def _owned(self) -> list[str]:
        names = [link.name for link in self._nl.list_links(OWNED_PREFIX)]
        owned = [n for n in names if owned_role(n) is not None]
        return sorted(owned, key=lambda n: (_SWEEP_ORDER[owned_role(n) or "veth"], n))

    def _sweep(self, keep: set[str], removable: Callable[[str], bool], report: ApplyReport) -> None:
        try:
            owned = self._owned()
        except DatapathError as exc:
            report.fail("link:*", f"cannot list links to sweep: {exc}")
            return
        for name in owned:
            if name in keep or not removable(name):
                continue
            try:
                report.changed += self._nl.delete_link(name)
                self._named.discard(name)
            except DatapathError as exc:
                report.fail(f"link:{name}", str(exc))

    def observe(self) -> dict[str, Any]:
        links = {name: owned_role(name) for name in self._owned()}
        networks: dict[str, Any] = {}
        for name, role in links.items():
            vni = vni_of(name)
            if role != "vxlan" or vni is None:
                continue
            networks[str(vni)] = {
                "bridge": bridge_name(vni) if bridge_name(vni) in links else None,
                "vxlan": name,
                "fdb": len(self._nl.fdb_entries(name)),
                "neighbours": len(self._nl.neigh_entries(name)),
            }
        return {
            "links": links,
            "networks": networks,
            "ports": sum(1 for r in links.values() if r == "veth"),
        }

    def teardown(self) -> None:
        report = ApplyReport()
        self._sweep(set(), lambda _name: True, report)
        self._named.clear()
        if report.errors:
            raise DatapathError("; ".join(f"{k}: {v}" for k, v in report.errors.items()))

    def close(self) -> None:
        self._nl.close()
