"""What the API does: validate, write desired state to the store, wait for this host.

Each operation validates everything before it writes (JSON types strictly, the
network's driver loaded here, its MTU fitting this host's underlay), writes with one
conditional store commit (so a refused or raced request changes nothing; `network rm`
takes two, see remove_network), and - for operations that touch this host's datapath -
waits until the reconciler has applied the change, rolling the store back exactly if
the driver failed the item. Attaches and detaches of one container run one at a time.
The HTTP layer (netd.api) only maps requests and errors; it holds no logic.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets as pysecrets
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import Any

from ipam.pool import AddressPool, Plan
from netd import netlink
from netd.container import ContainerRef, endpoint_name, resolve
from netd.errors import (
    Conflict,
    DatapathError,
    Exhausted,
    InvalidInput,
    NetdError,
    NotFound,
    Unsupported,
)
from netd.hosts import HostRegistration
from netd.model import (
    VNI_MAX,
    Endpoint,
    Host,
    Network,
    check_ifname,
    check_ip_in_subnet,
    check_mac,
    check_name,
    check_str,
    check_str_list,
    check_underlay_fits,
    mac_from_ip,
    subnets_overlap,
    validate_network,
)
from netd.plugin import BackendSpec, DriverSpec, endpoint_id
from netd.reconcile import Reconciler
from netd.store.base import (
    Condition,
    Delete,
    DeletePrefix,
    KeyValue,
    Operation,
    Put,
    Store,
)
from netd.store.keys import Keys

log = logging.getLogger(__name__)

APPLY_TIMEOUT = 15.0
COMMIT_RETRIES = 8
REMOVAL_TTL = 10  # seconds a crashed `network rm` blocks attaches to its network
STORE_PROBE_TIMEOUT = 2.0  # `status` answers within this even when the store hangs


class Service:
    def __init__(
        self,
        store: Store,
        keys: Keys,
        registration: HostRegistration,
        reconciler: Reconciler,
        drivers: Mapping[str, DriverSpec],
        *,
        containers: Callable[[str], ContainerRef] = resolve,
        links: Callable[[str], set[str]] = netlink.link_names,
    ) -> None:
        """`drivers`: the specs of the drivers this daemon loaded, by name (networks of
        other drivers are refused). `containers` and
        `links` resolve references and read a netns's interface names (tests fake them)."""
        self.store = store
        self.keys = keys
        self.registration = registration
        self.reconciler = reconciler
        self.drivers = frozenset(drivers)
        self.specs = dict(drivers)
        self._resolve = containers
        self._links = links
        # one pool per network (keyed by the network record's revision, so a network
        # recreated under the same name gets a new one): its cached view keeps
        # automatic picks from re-reading the whole pool on every attach
        self._pools: dict[str, tuple[int, AddressPool]] = {}
        self._pools_lock = threading.Lock()
        # attach/detach of one container run one at a time: choosing ethN, committing
        # and waiting for the datapath must not interleave with another of its attaches
        self._netns_locks = _KeyedLocks()

    @property
    def host(self) -> Host:
        return self.registration.host

    # --- networks -----------------------------------------------------------------
    def create_network(self, request: dict[str, Any]) -> Network:
        fields = _only(
            request,
            {"name", "subnet", "tenant", "driver", "backend", "vni", "gateway", "mtu",
             "encrypt", "options"},
        )
        if "name" not in fields or "subnet" not in fields:
            raise InvalidInput("network create needs a name and --subnet")
        network = validate_network(**fields, drivers=self.specs,
                                   underlay_mtu=self.host.underlay_mtu)
        for _ in range(COMMIT_RETRIES):
            existing, _rev = self.store.list(self.keys.networks())
            tenant_kv = self.store.get(self.keys.tenant(network.tenant))
            taken_vnis: set[int] = set()
            for kv in existing:
                other = Network.from_json(kv.value)
                taken_vnis.add(other.vni)
                if other.name == network.name:
                    raise Conflict(f"network {network.name!r} already exists")
                if other.tenant == network.tenant and subnets_overlap(
                    other.subnet, network.subnet
                ):
                    raise Conflict(
                        f"subnet {network.subnet} overlaps network {other.name!r} "
                        f"({other.subnet}) of tenant {network.tenant!r}"
                    )
            if network.vni and network.vni in taken_vnis:
                raise Conflict(f"VNI {network.vni} is already used by another network")
            candidate = network if network.vni else replace(network, vni=_pick_vni(taken_vnis))
            conditions = [
                Condition(self.keys.network(candidate.name), 0),
                Condition(self.keys.vni(candidate.vni), 0),
                Condition(
                    self.keys.tenant(candidate.tenant),
                    tenant_kv.mod_revision if tenant_kv else 0,
                ),
            ]
            ops: list[Operation] = [
                Put(self.keys.network(candidate.name), candidate.to_json()),
                Put(self.keys.vni(candidate.vni), candidate.name),
                # touching the tenant record serialises overlap checks within a tenant
                Put(self.keys.tenant(candidate.tenant), json.dumps({"name": candidate.tenant})),
            ]
            if candidate.encrypt:
                ops.append(Put(self.keys.network_key(candidate.name), pysecrets.token_hex(32)))
            if self.store.commit(conditions, ops).succeeded:
                log.info("network %s created (%s)", candidate.name, candidate.subnet)
                return candidate
        raise Conflict("network create raced with other changes too often; try again")

    def _check_driver(self, network: Network) -> BackendSpec:
        """The backend of a stored network, refused if this netd cannot serve it."""
        spec = self.specs.get(network.driver)
        if spec is None:
            available = ", ".join(sorted(self.drivers)) or "none"
            raise Unsupported(
                f"driver {network.driver} is not available in this netd "
                f"(available: {available})"
            )
        backend = spec.backend(network.backend)
        if backend is None:
            raise Unsupported(f"driver {network.driver} of this netd has no backend "
                              f"{network.backend}")
        return backend

    def get_network(self, name: str) -> Network:
        kv = self.store.get(self.keys.network(check_name(name, "network name")))
        if kv is None:
            raise NotFound(f"network {name!r} not found")
        return Network.from_json(kv.value)

    def list_networks(self) -> list[Network]:
        items, _ = self.store.list(self.keys.networks())
        return [Network.from_json(kv.value) for kv in items]

    def inspect_network(self, name: str) -> dict[str, Any]:
        network = self.get_network(name)
        endpoints = self.list_endpoints(name)
        return {
            **network.to_dict(),
            "endpoints": [ep.to_dict() for ep in endpoints],
        }

    def remove_network(self, name: str) -> None:
        """Remove a network that has no endpoints, racing no attach.

        An attach commits only while the network record is unchanged since it read it
        and no removal marker exists. So rm first rewrites the record (failing attaches
        that read it before) and creates the marker (failing attaches that read it
        after), then looks for endpoints, then deletes everything conditioned on both
        records: an endpoint can never be committed between the look and the delete."""
        key = self.keys.network(check_name(name, "network name"))
        kv = self.store.get(key)
        if kv is None:
            raise NotFound(f"network {name!r} not found")
        network = Network.from_json(kv.value)
        self._refuse_if_attached(name)  # cheap: a busy network is refused without a write
        marker = self.keys.network_removal(name)
        lease = self.store.grant_lease(REMOVAL_TTL)
        try:
            begun = self.store.commit(
                [Condition(key, kv.mod_revision), Condition(marker, 0)],
                [Put(key, kv.value), Put(marker, self.host.name, lease)],
            )
            if not begun.succeeded:
                if self.store.get(key) is None:
                    raise NotFound(f"network {name!r} not found")
                raise Conflict(f"network {name!r} is being changed or removed by another "
                               "request; try again")
            self._refuse_if_attached(name)
            pool = self._pool(network, kv.create_revision)
            result = self.store.commit(
                [Condition(key, begun.revision), Condition(marker, begun.revision)],
                [
                    Delete(key),
                    Delete(marker),
                    Delete(self.keys.vni(network.vni)),
                    Delete(self.keys.network_key(name)),
                    *pool.plan_release_all().operations,
                    DeletePrefix(self.keys.endpoints(name)),
                ],
            )
            if not result.succeeded:
                raise Conflict(f"network {name!r} changed while removing it; try again")
        finally:
            # drops the marker too, unless the last commit deleted it already
            try:
                self.store.revoke_lease(lease)
            except NetdError as exc:
                log.warning("network rm %s: marker stays until its lease expires: %s", name, exc)
        with self._pools_lock:
            self._pools.pop(name, None)
        log.info("network %s removed", name)

    def _refuse_if_attached(self, name: str) -> None:
        attached, _ = self.store.list(self.keys.endpoints(name))
        if attached:
            names = ", ".join(sorted(Endpoint.from_json(a.value).name for a in attached)[:5])
            raise Conflict(
                f"network {name!r} has {len(attached)} endpoint(s) attached ({names}); "
                "detach them first"
            )

    # --- endpoints ----------------------------------------------------------------
    def list_endpoints(self, network: str | None = None) -> list[Endpoint]:
        if network is not None:
            self.get_network(network)
        items, _ = self.store.list(self.keys.endpoints(network))
        return [Endpoint.from_json(kv.value) for kv in items]

    def attach(self, request: dict[str, Any]) -> Endpoint:
        fields = _only(request, {"container", "network", "ip", "mac", "ifname", "sg"})
        if not fields.get("container") or not fields.get("network"):
            raise InvalidInput("attach needs a container and --network")
        container = check_str(fields["container"], "container reference")
        groups = check_str_list(fields.get("sg", []), "security groups")
        for group in groups:
            check_name(group, "security group name")
        mac = check_mac(check_str(fields["mac"], "MAC address")) if fields.get("mac") else None
        ifname = check_ifname(fields["ifname"]) if fields.get("ifname") else None
        requested_ip = check_str(fields["ip"], "IP address") if fields.get("ip") else None
        net_kv = self.store.get(self.keys.network(check_name(fields["network"], "network name")))
        if net_kv is None:
            raise NotFound(f"network {fields['network']!r} not found")
        network = Network.from_json(net_kv.value)
        backend = self._check_driver(network)
        check_underlay_fits(network, self.host.underlay_mtu, backend)
        if requested_ip is not None:
            check_ip_in_subnet(requested_ip, network)
        pool = self._pool(network, net_kv.create_revision)
        ref = self._resolve(container)

        with self._netns_locks.hold(ref.netns):
            existing = self.store.get(self.keys.endpoint(network.name, ref.name))
            if existing is not None:
                return self._existing_attach(existing, ref, requested_ip, mac, ifname)
            for group in groups:
                if self.store.get(self.keys.security_group(group)) is None:
                    raise NotFound(f"security group {group!r} not found")
            used = self._used_ifnames(ref)
            if ifname is None:
                ifname = _free_ifname(ref, used)
            elif ifname in used:
                raise Conflict(f"container {ref.name} already has an interface named {ifname}")

            endpoint, revision, plan = self._commit_attach(
                network, net_kv, ref, requested_ip, mac, ifname, groups, pool
            )
            error = self._await_apply(revision, endpoint_id(endpoint))
            if error is not None:
                self._rollback_attach(endpoint, plan, revision, pool)
                raise DatapathError(f"attach of {ref.name} to {network.name} failed: {error}")
        log.info("attached %s to %s as %s", ref.name, network.name, endpoint.ip)
        return endpoint

    def _existing_attach(
        self,
        kv: KeyValue,
        ref: ContainerRef,
        requested_ip: str | None,
        mac: str | None,
        ifname: str | None,
    ) -> Endpoint:
        """A repeated attach: the same request answers with the endpoint once this host
        applied it; a different one (other netns, address, MAC, interface) is refused."""
        endpoint = Endpoint.from_json(kv.value)
        where = f"{endpoint.name} is already attached to {endpoint.network}"
        if endpoint.host != self.host.name:
            raise Conflict(f"{where} on host {endpoint.host}")
        if endpoint.netns != ref.netns:
            raise Conflict(
                f"{where} from network namespace {endpoint.netns}; {ref.ref} "
                f"({ref.netns}) is another namespace with the same endpoint name: "
                "detach the first one, or name this one differently"
            )
        if requested_ip is not None and requested_ip != endpoint.ip:
            raise Conflict(f"{where} with IP {endpoint.ip}; detach it first to change the address")
        if mac is not None and mac != endpoint.mac:
            raise Conflict(f"{where} with MAC {endpoint.mac}; detach it first to change it")
        if ifname is not None and ifname != endpoint.ifname:
            raise Conflict(
                f"{where} as interface {endpoint.ifname}; detach it first to rename it"
            )
        error = self._await_apply(kv.mod_revision, endpoint_id(endpoint))
        if error is not None:
            raise DatapathError(f"{endpoint.name} on {endpoint.network}: {error}")
        return endpoint

    def _commit_attach(
        self,
        network: Network,
        net_kv: KeyValue,
        ref: ContainerRef,
        requested_ip: str | None,
        mac: str | None,
        ifname: str,
        groups: tuple[str, ...],
        pool: AddressPool,
    ) -> tuple[Endpoint, int, Plan]:
        """Reserve the address, claim the MAC and write the endpoint in one commit, which
        holds only while the network is unchanged and not being removed."""
        key = self.keys.endpoint(network.name, ref.name)
        net_key, marker = self.keys.network(network.name), self.keys.network_removal(network.name)
        network_revision = net_kv.mod_revision
        own_claims: dict[str, int] = {}  # MAC -> revision of a claim this name left behind
        for _ in range(COMMIT_RETRIES):
            plan = pool.plan_reserve(ref.name, requested_ip)
            endpoint = Endpoint(
                network=network.name,
                name=ref.name,
                container=ref.ref,
                netns=ref.netns,
                host=self.host.name,
                ifname=ifname,
                ip=plan.ip,
                mac=mac or mac_from_ip(plan.ip),
                security_groups=groups,
            )
            mac_key = self.keys.ipam_mac(network.name, endpoint.mac)
            result = self.store.commit(
                [
                    *plan.conditions,
                    Condition(net_key, network_revision),
                    Condition(marker, 0),
                    Condition(key, 0),
                    Condition(mac_key, own_claims.get(endpoint.mac, 0)),
                ],
                [
                    *plan.operations,
                    Put(key, endpoint.to_json()),
                    Put(mac_key, json.dumps({"owner": ref.name})),
                ],
            )
            if result.succeeded:
                return endpoint, result.revision, plan
            # find out which condition failed: refuse clearly, or plan again
            current = self.store.get(net_key)
            if current is None or current.create_revision != net_kv.create_revision:
                raise NotFound(f"network {network.name!r} was removed")
            if self.store.get(marker) is not None:
                raise Conflict(f"network {network.name!r} is being removed")
            if self.store.get(key) is not None:
                raise Conflict(f"{ref.name} was attached to {network.name} concurrently")
            claim = self.store.get(mac_key)
            owner = _owner(claim)
            if claim is not None and owner != ref.name:
                derived = "" if mac else f" (derived from IP {plan.ip}; give --mac or --ip)"
                raise Conflict(
                    f"MAC {endpoint.mac} is already used by {owner or '?'} on network "
                    f"{network.name}{derived}"
                )
            if claim is not None:
                own_claims[endpoint.mac] = claim.mod_revision
            network_revision = current.mod_revision
            pool.invalidate()  # an address was taken under us: plan again
        raise Exhausted(f"could not reserve an address on {network.name}; try again")

    def _rollback_attach(
        self, endpoint: Endpoint, plan: Plan, revision: int, pool: AddressPool
    ) -> None:
        """Undo an attach committed at `revision`: the store ends exactly as before it
        (the sticky name record too), and this host's datapath follows."""
        key = self.keys.endpoint(endpoint.network, endpoint.name)
        mac_key = self.keys.ipam_mac(endpoint.network, endpoint.mac)
        undo = pool.plan_undo(endpoint.name, plan, revision)
        result = self.store.commit(
            [Condition(key, revision), Condition(mac_key, revision), *undo.conditions],
            [Delete(key), Delete(mac_key), *undo.operations],
        )
        pool.invalidate()
        undone: int | None = result.revision
        if not result.succeeded:  # something changed since: release what is still ours
            undone = self._commit_detach(endpoint, pool)
        if undone is not None:
            self.reconciler.wait_applied(undone, endpoint_id(endpoint), APPLY_TIMEOUT)

    def detach(self, request: dict[str, Any]) -> Endpoint:
        fields = _only(request, {"container", "network"})
        if not fields.get("container") or not fields.get("network"):
            raise InvalidInput("detach needs a container and --network")
        net_kv = self.store.get(self.keys.network(check_name(fields["network"], "network name")))
        if net_kv is None:
            raise NotFound(f"network {fields['network']!r} not found")
        network = Network.from_json(net_kv.value)
        name = endpoint_name(check_str(fields["container"], "container reference"))
        kv = self.store.get(self.keys.endpoint(network.name, name))
        if kv is None:
            raise NotFound(f"{name} is not attached to network {network.name}")
        endpoint = Endpoint.from_json(kv.value)
        if endpoint.host != self.host.name:
            raise Conflict(
                f"{name} is attached on host {endpoint.host}; detach it with that host's netctl"
            )
        pool = self._pool(network, net_kv.create_revision)
        with self._netns_locks.hold(endpoint.netns):
            revision = self._commit_detach(endpoint, pool)
            if revision is None:
                raise NotFound(f"{name} is not attached to network {network.name}")
            error = self._await_apply(revision, None)
        if error is not None:
            raise DatapathError(
                f"{name} is detached from {network.name} in the store, but {error}; "
                "it follows once the reconciler catches up (see netctl status)"
            )
        log.info("detached %s from %s", name, network.name)
        return endpoint

    def _commit_detach(self, endpoint: Endpoint, pool: AddressPool) -> int | None:
        """Delete the endpoint, free its address (keeping the sticky reservation) and its
        MAC claim in one commit, planned again if a record changes under it. The commit's
        revision, or None when the endpoint is gone already."""
        key = self.keys.endpoint(endpoint.network, endpoint.name)
        for _ in range(COMMIT_RETRIES):
            kv = self.store.get(key)
            if kv is None:
                return None
            current = Endpoint.from_json(kv.value)
            release = pool.plan_release(current.name, current.ip)
            claim = self._plan_mac_release(current)
            result = self.store.commit(
                [Condition(key, kv.mod_revision), *release.conditions, *claim.conditions],
                [Delete(key), *release.operations, *claim.operations],
            )
            if result.succeeded:
                pool.invalidate()
                return result.revision
        raise Conflict(
            f"detaching {endpoint.name} from {endpoint.network} raced with other changes "
            "too often; try again"
        )

    def _plan_mac_release(self, endpoint: Endpoint) -> Plan:
        key = self.keys.ipam_mac(endpoint.network, endpoint.mac)
        claim = self.store.get(key)
        if claim is None or _owner(claim) != endpoint.name:
            return Plan("")
        return Plan("", (Condition(key, claim.mod_revision),), (Delete(key),))

    def _await_apply(self, revision: int, item: str | None) -> str | None:
        if not self.reconciler.wait_applied(revision, item, APPLY_TIMEOUT):
            return f"this host did not apply the change within {APPLY_TIMEOUT:.0f} s"
        return None if item is None else self.reconciler.item_error(item)

    def _pool(self, network: Network, created: int) -> AddressPool:
        with self._pools_lock:
            cached = self._pools.get(network.name)
            if cached is None or cached[0] != created:
                cached = (created, AddressPool(self.store, self.keys, network))
                self._pools[network.name] = cached
            return cached[1]

    def _used_ifnames(self, ref: ContainerRef) -> set[str]:
        """Interface names the container has, or will have once committed endpoints of
        this host are applied. Reading the netns forks a helper: done once per attach."""
        items, _ = self.store.list(self.keys.endpoints())
        needle = json.dumps(ref.netns)[1:-1]
        local = {
            ep.ifname
            # most records name another netns: skip them before decoding
            for ep in (Endpoint.from_json(kv.value) for kv in items if needle in kv.value)
            if ep.host == self.host.name and ep.netns == ref.netns
        }
        return local | self._links(ref.netns)

    # --- hosts / status -------------------------------------------------------------
    def list_hosts(self) -> list[dict[str, Any]]:
        """Every host that is alive or still has endpoints, with the tunnel state seen
        from this host: the networks both have endpoints on, and whether this host's
        datapath towards it is programmed ("up"), failing ("error") or gone ("down")."""
        items, _ = self.store.list(self.keys.hosts())
        alive = {h.name: h for h in (Host.from_json(kv.value) for kv in items)}
        networks_of: dict[str, set[str]] = {}
        for ep in self.list_endpoints():
            networks_of.setdefault(ep.host, set()).add(ep.network)
        mine = networks_of.get(self.host.name, set())
        errors = self.reconciler.status().errors
        rows = []
        for name in sorted(set(alive) | set(networks_of)):
            host = alive.get(name)
            shared = sorted(mine & networks_of.get(name, set()))
            if name == self.host.name:
                tunnel, shared = "self", []
            elif not shared:
                tunnel = "-"
            elif host is None:
                tunnel = "down"
            elif any(f"network:{n}" in errors for n in shared):
                tunnel = "error"
            else:
                tunnel = "up"
            rows.append({
                "name": name,
                "underlay_ip": host.underlay_ip if host else "",
                "underlay_mtu": host.underlay_mtu if host else None,
                "alive": host is not None,
                "tunnel": tunnel,
                "shared_networks": shared,
            })
        return rows

    def status(self) -> dict[str, Any]:
        """What this daemon knows, answered even when the store is down or hangs: the
        store is probed briefly, counts come from the reconciler's local copy."""
        sync = self.reconciler.status()
        reachable, revision, error = self._probe_store()
        snapshot = self.reconciler.snapshot()
        local = [ep for ep in snapshot.endpoints.values() if ep.host == self.host.name]
        try:
            datapath = self.reconciler.observe()
        except Exception as exc:  # a status must answer whatever a driver does
            log.warning("observing the datapath failed: %s", exc)
            datapath = {"error": f"observing the datapath failed: {exc}"}
        return {
            "host": self.host.to_dict(),
            "drivers": sorted(self.drivers),
            "store": {"reachable": reachable, "revision": revision, "error": error},
            "networks": len(snapshot.networks),
            "endpoints": len(local),
            "last_sync": sync.last_sync,
            "applied_revision": sync.revision,
            "syncs": sync.syncs,
            "errors": sync.errors,
            "workers": {name: w.to_dict() for name, w in sorted(sync.workers.items())},
            "datapath": datapath,
        }

    def _probe_store(self) -> tuple[bool, int, str]:
        """(reachable, revision, error) from one read that may take STORE_PROBE_TIMEOUT."""
        answer: dict[str, Any] = {}

        def probe() -> None:
            try:
                answer["revision"] = self.store.revision()
            except Exception as exc:
                answer["error"] = str(exc) or type(exc).__name__

        worker = threading.Thread(target=probe, name="store-probe", daemon=True)
        worker.start()
        worker.join(STORE_PROBE_TIMEOUT)
        if "revision" in answer:
            return True, int(answer["revision"]), ""
        if "error" in answer:
            return False, 0, str(answer["error"])
        return False, 0, f"the store did not answer within {STORE_PROBE_TIMEOUT:.0f} s"


def _only(request: dict[str, Any], allowed: set[str]) -> dict[str, Any]:
    if not isinstance(request, dict):
        raise InvalidInput("request body must be a JSON object")
    unknown = set(request) - allowed
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}")
    return {k: v for k, v in request.items() if v is not None}


def _free_ifname(ref: ContainerRef, used: set[str]) -> str:
    for n in range(0, 4096):
        name = f"eth{n}"
        if name not in used:
            return name
    raise Exhausted(f"container {ref.name} has no free ethN interface name")


def _owner(kv: KeyValue | None) -> str:
    """The owner named by a claim record ({"owner": NAME}), "" if none or unreadable."""
    if kv is None:
        return ""
    try:
        owner = json.loads(kv.value).get("owner", "")
    except (ValueError, AttributeError):
        return ""
    return owner if isinstance(owner, str) else ""


class _KeyedLocks:
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


def _pick_vni(taken: set[int]) -> int:
    """The lowest free VNI (concurrent creators are kept apart by the VNI key's condition)."""
    for vni in range(1, VNI_MAX + 1):
        if vni not in taken:
            return vni
    raise Exhausted("every VNI is in use")
