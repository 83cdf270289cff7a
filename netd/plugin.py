"""The driver contract: what a driver declares, what it receives, what it must do.

A driver is one package under plugins/, registered by entry point (group
`netd.plugins`). Its class declares a DriverSpec (backends with their encapsulation
overhead, `-o` options with their types, store prefixes it needs watched); validation,
MTU computation and the CLI read these declarations from the loaded drivers, so adding
a driver changes no core module. It is built with a DriverContext: everything of the
core it may use (this host, the store and key layout, the one shared netlink facade,
its state dir, the lease keeper, a way to ask for a resync and to publish host data).

A driver never sees add/remove events. netd.calc computes the complete desired state of
this host for the driver's networks (a HostState) and the driver's own reconcile worker
hands it to `apply`, again and again: after store changes and on a periodic resync.
`apply` must be idempotent ("already exists" is success, "not found" on delete is
success), must only touch objects it owns (DESIGN §4), and must report, per item, what
it could not do instead of raising: the worker retries failed items while the rest
proceeds. Between two applies, a NetworkState that did not change is the same object
(`is`), so a driver can skip it without comparing.

Item ids in an ApplyReport: "network:<name>" and "endpoint:<network>/<endpoint>"
(anything else a driver reports should start with "<kind>:<network>" when it belongs to
one network, so `wait_applied` finds the worker owning it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from netd.model import Endpoint, Host, Network

if TYPE_CHECKING:
    from ipam.scope import AddressRange
    from netd.leases import LeaseKeeper
    from netd.netlink import Netlink
    from netd.policy.model import HostPolicy
    from netd.store.base import Condition, Operation, Store
    from netd.store.keys import Keys

log = logging.getLogger(__name__)

OPTION_TYPES: tuple[type, ...] = (str, int, bool)


# --- declarations -------------------------------------------------------------------
@dataclass(frozen=True)
class BackendSpec:
    name: str
    overhead: int  # bytes of encapsulation on the underlay (outer headers)
    encryption: bool = False  # supports --encrypt
    encryption_overhead: int = 0  # further bytes per packet when encrypted

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "overhead": self.overhead, "encryption": self.encryption,
                "encryption_overhead": self.encryption_overhead}


@dataclass(frozen=True)
class OptionSpec:
    """One `-o KEY=VALUE` a driver accepts. Values travel and are stored as text; `type`
    says how the text must parse (int: decimal digits, bool: true/false)."""

    name: str
    type: type  # str | int | bool
    help: str
    default: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type.__name__, "help": self.help,
                "default": self.default}


@dataclass(frozen=True)
class DriverSpec:
    name: str
    backends: tuple[BackendSpec, ...]
    default_backend: str
    options: tuple[OptionSpec, ...] = ()
    # store prefixes beyond netd's root this driver needs (flannel: <prefix>/subnets/)
    watch_prefixes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = [b.name for b in self.backends]
        if self.default_backend not in names:
            raise ValueError(f"driver {self.name}: default backend {self.default_backend!r} "
                             f"is not one of its backends {names}")
        for option in self.options:
            if option.type not in OPTION_TYPES:
                raise ValueError(f"driver {self.name}: option {option.name} has type "
                                 f"{option.type.__name__}; use str, int or bool")

    def backend(self, name: str) -> BackendSpec | None:
        return next((b for b in self.backends if b.name == name), None)

    def option(self, name: str) -> OptionSpec | None:
        return next((o for o in self.options if o.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "default_backend": self.default_backend,
            "backends": [b.to_dict() for b in self.backends],
            "options": [o.to_dict() for o in self.options],
            "watch_prefixes": list(self.watch_prefixes),
        }


# --- what a driver receives ---------------------------------------------------------
@dataclass
class DriverContext:
    """What the core gives a driver. A driver uses these and nothing else of the core's
    running state: no store keys it builds itself, no netlink socket of its own."""

    name: str  # the driver's entry point name
    host: Callable[[], Host]  # this host, current (its data may change after start)
    store: Store
    keys: Keys
    netlink: Netlink  # the one shared facade (one netns opener for all drivers)
    state_dir: Path  # this driver's own directory (created)
    leases: LeaseKeeper  # keeps store records that live under a TTL alive
    request_resync: Callable[[], None]  # a full verify apply of this driver, soon
    # replace this driver's data in the host registry (other hosts see it)
    publish: Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class NetworkState:
    network: Network
    local: tuple[Endpoint, ...]  # endpoints attached on this host
    remote: tuple[Endpoint, ...]  # endpoints on other live hosts
    peers: tuple[Host, ...]  # other live hosts with endpoints or a role on this network
    secret: str | None = None  # per-network key, when the network is encrypted
    roles: tuple[str, ...] = ()  # this host's roles on the network (e.g. "expose")


@dataclass(frozen=True)
class HostState:
    host: Host  # this host
    # networks of one driver that this host serves (a local endpoint or a role on it)
    networks: Mapping[str, NetworkState]
    hosts: Mapping[str, Host]  # every live host, this one included
    # raw records under the driver's declared watch_prefixes (key -> value)
    records: Mapping[str, str] = field(default_factory=dict)
    # the computed policy of this driver's local endpoints, for drivers that enforce it
    # themselves (openflow: netd.reconcile's flow_policy_drivers); None for the others
    policy: HostPolicy | None = None


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


def network_of_item(item: str) -> str | None:
    """The network an item id belongs to: "endpoint:N/E", "network:N", "remotes:N" -> N."""
    kind, sep, rest = item.partition(":")
    if not sep or kind in ("driver", "link") or not rest:
        return None
    return rest.split("/", 1)[0]


@dataclass
class ApplyReport:
    errors: dict[str, str] = field(default_factory=dict)  # item id -> message
    changed: int = 0  # kernel objects created, changed or removed

    def fail(self, item: str, message: str) -> None:
        self.errors[item] = message

    def merge(self, other: ApplyReport) -> None:
        self.errors.update(other.errors)
        self.changed += other.changed


# --- what a driver implements -------------------------------------------------------
@runtime_checkable
class Driver(Protocol):
    spec: ClassVar[DriverSpec]

    def __init__(self, ctx: DriverContext) -> None: ...

    def setup(self) -> dict[str, Any]:
        """Prepare host-wide pieces; returns this driver's data for the host registry."""
        ...

    def apply(self, desired: HostState, *, sweep: bool, verify: bool) -> ApplyReport:
        """Make the kernel match `desired`.

        sweep: also remove owned leftovers that `desired` does not name (only after the
        first full sync). verify: check every item against the kernel; without it, a
        driver may skip items equal to what it last applied successfully (the periodic
        resync, a requested resync and the first sync verify; store events need not)."""
        ...

    def observe(self) -> dict[str, Any]:
        """What this driver currently has in the kernel, for `netctl status`."""
        ...

    def teardown(self) -> None:
        """Remove everything this driver owns on this host."""
        ...

    def close(self) -> None:
        """Stop the driver's threads; leave the datapath in place. The shared netlink
        facade and the store belong to the core: a driver never closes them."""
        ...


@dataclass(frozen=True)
class PreparedNetwork:
    """What `network create` commits for a driver, in the network's own transaction:
    the network to store and the driver's records (e.g. flannel's config) with the
    conditions they were planned on. A refused or raced create writes none of them."""

    network: Network
    conditions: tuple[Condition, ...] = ()
    operations: tuple[Operation, ...] = ()


@runtime_checkable
class NetworkHooks(Protocol):
    """Optional: a driver whose networks need more than netd's records (flannel: its
    config in its own schema, a subnet leased per host) implements these; the service
    calls them on the API thread."""

    def prepare_network(self, network: Network) -> PreparedNetwork:
        """Planning `network create` (again on each retry of its commit): the network to
        store (e.g. options adopted from an existing foreign config) and the driver's
        records to write with it; InvalidInput/Conflict refuse it. Reads only: the
        service commits."""
        ...

    def address_range(self, network: Network, ip: str | None) -> AddressRange:
        """Where this host allocates on `network` (ip None) or may place a fixed `ip`;
        e.g. the subnet this host leased, with its own gateway."""
        ...


def network_hooks(drivers: Mapping[str, Driver]) -> dict[str, NetworkHooks]:
    """The drivers that implement NetworkHooks, by name."""
    return {name: d for name, d in drivers.items() if isinstance(d, NetworkHooks)}


DriverFactory = Callable[[DriverContext], Driver]


def driver_classes() -> dict[str, type[Driver]]:
    """Every driver class registered under entry point group netd.plugins that imports
    and declares a DriverSpec; one that does not is logged and skipped."""
    classes: dict[str, type[Driver]] = {}
    for ep in entry_points(group="netd.plugins"):
        try:
            cls = ep.load()
            spec = cls.spec
        except Exception as exc:
            log.error("driver %s failed to load: %s", ep.name, exc)
            continue
        if not isinstance(spec, DriverSpec):
            log.error("driver %s declares no DriverSpec; skipped", ep.name)
            continue
        classes[ep.name] = cls
    return classes


def load_drivers(
    context: Callable[[str], DriverContext],
    classes: Mapping[str, type[Driver]] | None = None,
) -> dict[str, Driver]:
    """Each driver class (default: the registered ones) built with `context(name)`; one
    that fails to start is logged and skipped, so the others still serve."""
    drivers: dict[str, Driver] = {}
    for name, cls in (driver_classes() if classes is None else classes).items():
        try:
            drivers[name] = cls(context(name))
        except Exception as exc:
            log.error("driver %s failed to start: %s", name, exc)
    return drivers


def specs_of(drivers: Mapping[str, Driver]) -> dict[str, DriverSpec]:
    return {name: driver.spec for name, driver in drivers.items()}
