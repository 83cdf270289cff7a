"""The driver contract: desired state in, kernel made to match, failures reported.

A driver never sees add/remove events. netd.calc computes the complete desired state of
this host for the driver's networks (a HostState) and the reconciler hands it to
`apply`, again and again: after every store change and on a periodic resync. `apply`
must be idempotent ("already exists" is success, "not found" on delete is success),
must only touch objects it owns (DESIGN §4), and must report, per item, what it could
not do instead of raising: the reconciler retries failed items while the rest proceeds.

Item ids in an ApplyReport: "network:<name>" and "endpoint:<network>/<endpoint>".
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

from netd.model import Endpoint, Host, Network

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NetworkState:
    network: Network
    local: tuple[Endpoint, ...]  # endpoints attached on this host
    remote: tuple[Endpoint, ...]  # endpoints on other live hosts
    peers: tuple[Host, ...]  # other live hosts with endpoints on this network
    secret: str | None = None  # per-network key, when the network is encrypted


@dataclass(frozen=True)
class HostState:
    host: Host  # this host
    networks: Mapping[str, NetworkState]  # networks of one driver that this host serves
    hosts: Mapping[str, Host]  # every live host, this one included


def remote_endpoints(
    ns: NetworkState, hosts: Mapping[str, Host], report: ApplyReport
) -> Iterator[tuple[Endpoint, Host]]:
    """Each remote endpoint of the network with the host it lives on; one whose host is
    unknown is reported as failed and skipped."""
    for ep in ns.remote:
        peer = hosts.get(ep.host)
        if peer is None:
            report.fail(endpoint_id(ep), f"host {ep.host} of remote endpoint is not known")
            continue
        yield ep, peer


def other_peers(ns: NetworkState, host: Host) -> list[Host]:
    """The network's peer hosts, never this host (not even under another name)."""
    return [p for p in ns.peers if p.name != host.name and p.underlay_ip != host.underlay_ip]


def endpoint_id(ep: Endpoint) -> str:
    return f"endpoint:{ep.network}/{ep.name}"


def network_id(net: Network) -> str:
    return f"network:{net.name}"


@dataclass
class ApplyReport:
    errors: dict[str, str] = field(default_factory=dict)  # item id -> message
    changed: int = 0  # kernel objects created, changed or removed

    def fail(self, item: str, message: str) -> None:
        self.errors[item] = message

    def merge(self, other: ApplyReport) -> None:
        self.errors.update(other.errors)
        self.changed += other.changed


@runtime_checkable
class Driver(Protocol):
    name: str

    def setup(self, host: Host) -> dict[str, Any]:
        """Prepare host-wide pieces; returns this driver's data for the host registry."""
        ...

    def apply(self, desired: HostState, *, sweep: bool, verify: bool) -> ApplyReport:
        """Make the kernel match `desired`.

        sweep: also remove owned leftovers that `desired` does not name (only after the
        first full sync). verify: check every item against the kernel; without it, a
        driver may skip items equal to what it last applied successfully (the periodic
        resync and the first sync verify; store events need not)."""
        ...

    def observe(self) -> dict[str, Any]:
        """What this driver currently has in the kernel, for `netctl status`."""
        ...

    def teardown(self) -> None:
        """Remove everything this driver owns on this host."""
        ...

    def close(self) -> None:
        """Stop the driver's threads; leave the datapath in place."""
        ...


def load_drivers(**kwargs: Any) -> dict[str, Driver]:
    """Every driver registered under entry point group netd.plugins, instantiated with
    `kwargs`; one that fails to load is logged and skipped, so the others still serve."""
    drivers: dict[str, Driver] = {}
    for ep in entry_points(group="netd.plugins"):
        try:
            drivers[ep.name] = ep.load()(**kwargs)
        except Exception as exc:
            log.error("driver %s failed to load: %s", ep.name, exc)
    return drivers
