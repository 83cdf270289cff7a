"""What every part of the service shares: the store, this host, caches and locks.

The caches are advice only - every write is conditioned on the records it read - so
a stale entry costs one failed commit and a re-read, never a wrong write:
* network records by name (an attach reads no network record when it has one);
* one address pool per network (its view of the pool, see ipam.pool);
* this host's endpoints by container netns (an attach looks at its own container's
  interfaces only, not at every endpoint of the cluster).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ipam.pool import AddressPool
from ipam.scope import AddressRange
from netd import faults
from netd.calc import Snapshot
from netd.container import ContainerRef
from netd.errors import InvalidInput, NetdError, NotFound, StoreUnavailable
from netd.hosts import HostRegistration
from netd.model import Endpoint, Host, Network, check_name
from netd.plugin import DriverSpec, NetworkHooks
from netd.reconcile import Reconciler
from netd.service import transaction
from netd.store.base import KeyValue, Store
from netd.store.keys import Keys

log = logging.getLogger(__name__)

APPLY_TIMEOUT = 15.0
WRITE_WAITS_FOR_STORE = 3.0  # a write waits this long for a broken watch before refusing


class Context:
    def __init__(
        self,
        store: Store,
        keys: Keys,
        registration: HostRegistration,
        reconciler: Reconciler,
        drivers: Mapping[str, DriverSpec],
        containers: Callable[[str], ContainerRef],
        links: Callable[[str], set[str]],
        hooks: Mapping[str, NetworkHooks] | None = None,
    ) -> None:
        self.store = store
        self.hooks = dict(hooks or {})
        self.keys = keys
        self.registration = registration
        self.reconciler = reconciler
        self.drivers = frozenset(drivers)
        self.specs = dict(drivers)
        self.resolve = containers
        self.links = links
        # attach/detach of one container run one at a time: choosing ethN, committing
        # and waiting for the datapath must not interleave with another of its attaches
        self.netns_locks = KeyedLocks()
        self.local = LocalEndpoints(store, keys, lambda: self.host.name)
        transaction.follow_health(store, lambda: self.reconciler.store_down() is not None)
        self._networks: dict[str, KeyValue] = {}
        # keyed by the network record's create_revision, so a network recreated under
        # the same name gets a new pool; one pool per range (a driver may scope per host)
        self._pools: dict[tuple[str, AddressRange], tuple[int, AddressPool]] = {}
        self._lock = threading.Lock()

    @property
    def host(self) -> Host:
        return self.registration.host

    def network(self, name: str, fresh: bool = False) -> tuple[KeyValue, Network]:
        """The network record (cached unless `fresh`); NotFound if there is none."""
        check_name(name, "network name")
        kv = None if fresh else self._networks.get(name)
        if kv is None:
            kv = self.store.get(self.keys.network(name))
            with self._lock:
                if kv is None:
                    self._networks.pop(name, None)
                else:
                    self._networks[name] = kv
        if kv is None:
            raise NotFound(f"network {name!r} not found")
        return kv, Network.from_json(kv.value)

    def saw_network(self, kv: KeyValue | None, name: str) -> None:
        """Remember a network record read elsewhere (None: it is gone)."""
        with self._lock:
            if kv is None:
                self._networks.pop(name, None)
                for key in [k for k in self._pools if k[0] == name]:
                    del self._pools[key]
            else:
                self._networks[name] = kv

    def address_range(self, network: Network, ip: str | None = None) -> AddressRange:
        """Where this host allocates on `network` (or may place a fixed `ip`): the whole
        subnet, unless the network's driver scopes it (NetworkHooks.address_range)."""
        hooks = self.hooks.get(network.driver)
        if hooks is None:
            return address_range(network)
        return hooks.address_range(network, ip)

    def pool(self, network: Network, created: int, ip: str | None = None, *,
             whole: bool = False) -> AddressPool:
        """The pool of the range an attach (of `ip`) uses here; `whole`: the network's
        whole subnet, whatever its driver scopes (releasing every address)."""
        scope = address_range(network) if whole else self.address_range(network, ip)
        with self._lock:
            cached = self._pools.get((network.name, scope))
            if cached is None or cached[0] != created:
                cached = (created, AddressPool(self.store, self.keys, scope))
                self._pools[(network.name, scope)] = cached
            return cached[1]

    def store_down(self) -> str | None:
        """"store unavailable since <time> (<why>)" while this host's watch of the store
        is broken, else None."""
        down = self.reconciler.store_down()
        if down is None:
            return None
        since, why = down
        why = " ".join(why.split())  # one line, whatever the store said
        return f"store unavailable since {utc(since)}" + (f" ({why})" if why else "")

    def refuse_while_store_down(self, what: str) -> None:
        """Writes fail at once, sending nothing, while the store is known to be away.
        (Every write request starts here: crash points count from the first one.)"""
        faults.arm()
        deadline = time.monotonic() + WRITE_WAITS_FOR_STORE
        while self.reconciler.store_down() is not None and time.monotonic() < deadline:
            time.sleep(0.1)  # a watch failing over to another member is back within this
        down = self.store_down()
        if down is not None:
            raise StoreUnavailable(f"{what}: {down}; nothing was changed, try again once "
                                   "netctl status says the store is reachable")

    def last_known(self) -> Snapshot | None:
        """The reconciler's copy of the store while the store is away (reads answer
        from it), else None (read the store)."""
        return self.reconciler.snapshot() if self.reconciler.store_down() else None

    def await_apply(self, revision: int, item: str | None) -> str | None:
        if not self.reconciler.wait_applied(revision, item, APPLY_TIMEOUT):
            return f"this host did not apply the change within {APPLY_TIMEOUT:.0f} s"
        return None if item is None else self.reconciler.item_error(item)


def utc(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))


def address_range(network: Network) -> AddressRange:
    """Where IPAM allocates for `network` on this host: the whole subnet today; a driver
    that leases per-host subnets (flannel) narrows it here."""
    return AddressRange.of(network)


class LocalEndpoints:
    """This host's endpoints by container netns: netns -> {endpoint key: ifname}.

    Only this host's daemon writes its endpoints, so after one full read at first use
    the index follows this daemon's own commits. An attach then looks at one container.
    """

    def __init__(self, store: Store, keys: Keys, host: Callable[[], str]) -> None:
        self.store = store
        self.keys = keys
        self.host = host
        self._lock = threading.Lock()
        self._by_netns: dict[str, dict[str, str]] | None = None

    def _index(self) -> dict[str, dict[str, str]]:
        if self._by_netns is None:
            items, _ = self.store.list(self.keys.endpoints())
            index: dict[str, dict[str, str]] = {}
            me = self.host()
            for kv in items:
                ep = Endpoint.from_json(kv.value)
                if ep.host == me:
                    index.setdefault(ep.netns, {})[kv.key] = ep.ifname
            self._by_netns = index
        return self._by_netns

    def of(self, netns: str) -> dict[str, str]:
        """{endpoint key: ifname} of the endpoints committed in `netns` on this host."""
        with self._lock:
            return dict(self._index().get(netns, {}))

    def add(self, endpoint: Endpoint) -> None:
        with self._lock:
            key = self.keys.endpoint(endpoint.network, endpoint.name)
            self._index().setdefault(endpoint.netns, {})[key] = endpoint.ifname

    def remove(self, endpoint: Endpoint) -> None:
        with self._lock:
            index = self._index()
            mine = index.get(endpoint.netns, {})
            mine.pop(self.keys.endpoint(endpoint.network, endpoint.name), None)
            if not mine:
                index.pop(endpoint.netns, None)

    def forget_network(self, network: str) -> None:
        with self._lock:
            if self._by_netns is None:
                return
            prefix = self.keys.endpoints(network)
            for mine in self._by_netns.values():
                for key in [k for k in mine if k.startswith(prefix)]:
                    del mine[key]


def only(request: dict[str, Any], allowed: set[str]) -> dict[str, Any]:
    """The request's fields (None dropped); InvalidInput naming any unknown field."""
    if not isinstance(request, dict):
        raise InvalidInput("request body must be a JSON object")
    unknown = set(request) - allowed
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}")
    return {k: v for k, v in request.items() if v is not None}


def revalidated(ctx: Context, name: str, check: Callable[[Network], None],
                fresh: bool = False) -> tuple[KeyValue, Network]:
    """The network, checked by `check`; a refusal based on a cached record is checked
    again against the store's record before it is reported."""
    kv, network = ctx.network(name, fresh)
    try:
        check(network)
    except NetdError:
        if fresh:
            raise
        current, network = ctx.network(name, fresh=True)
        if current.mod_revision == kv.mod_revision:
            raise
        check(network)
        kv = current
    return kv, network


class KeyedLocks:
    """One lock per key (a container's netns path), dropped when nobody uses it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)
