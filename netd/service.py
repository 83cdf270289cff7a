"""What the API does: validate, write desired state to the store, wait for this host.

Each operation validates everything before it writes, writes with one conditional
store commit (so a refused or raced request changes nothing), and - for operations
that touch this host's datapath - waits until the reconciler has applied the change,
rolling the store back if the driver failed the item. The HTTP layer (netd.api) only
maps requests and errors; it holds no logic.
"""

from __future__ import annotations

import json
import logging
import secrets as pysecrets
import threading
from dataclasses import replace
from typing import Any

from ipam.pool import AddressPool
from netd import netlink
from netd.container import ContainerRef, resolve
from netd.errors import Conflict, DatapathError, Exhausted, InvalidInput, NotFound
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
    mac_from_ip,
    subnets_overlap,
    validate_network,
)
from netd.plugin import endpoint_id
from netd.reconcile import Reconciler
from netd.store.base import Condition, Delete, DeletePrefix, Operation, Put, Store
from netd.store.keys import Keys

log = logging.getLogger(__name__)

APPLY_TIMEOUT = 15.0
COMMIT_RETRIES = 8


class Service:
    def __init__(
        self,
        store: Store,
        keys: Keys,
        registration: HostRegistration,
        reconciler: Reconciler,
    ) -> None:
        self.store = store
        self.keys = keys
        self.registration = registration
        self.reconciler = reconciler
        # one pool per network (keyed by the network record's revision, so a network
        # recreated under the same name gets a new one): its cached view keeps
        # automatic picks from re-reading the whole pool on every attach
        self._pools: dict[str, tuple[int, AddressPool]] = {}
        self._pools_lock = threading.Lock()

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
        network = validate_network(**fields, underlay_mtu=self.host.underlay_mtu)
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
                Put(self.keys.tenant(candidate.tenant), f'{{"name": "{candidate.tenant}"}}'),
            ]
            if candidate.encrypt:
                ops.append(Put(self.keys.network_key(candidate.name), pysecrets.token_hex(32)))
            if self.store.commit(conditions, ops).succeeded:
                log.info("network %s created (%s)", candidate.name, candidate.subnet)
                return candidate
        raise Conflict("network create raced with other changes too often; try again")

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
        kv = self.store.get(self.keys.network(check_name(name, "network name")))
        if kv is None:
            raise NotFound(f"network {name!r} not found")
        network = Network.from_json(kv.value)
        attached, _ = self.store.list(self.keys.endpoints(name))
        if attached:
            names = ", ".join(sorted(Endpoint.from_json(a.value).name for a in attached)[:5])
            raise Conflict(
                f"network {name!r} has {len(attached)} endpoint(s) attached ({names}); "
                "detach them first"
            )
        result = self.store.commit(
            [Condition(kv.key, kv.mod_revision)],
            [
                Delete(kv.key),
                Delete(self.keys.vni(network.vni)),
                Delete(self.keys.network_key(name)),
                DeletePrefix(self.keys.ipam(name)),
                DeletePrefix(self.keys.endpoints(name)),
            ],
        )
        if not result.succeeded:
            raise Conflict(f"network {name!r} changed while removing it; try again")
        log.info("network %s removed", name)

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
        groups = tuple(fields.get("sg") or ())
        for group in groups:
            check_name(group, "security group name")
        mac = check_mac(fields["mac"]) if fields.get("mac") else None
        ifname = check_ifname(fields["ifname"]) if fields.get("ifname") else None
        net_kv = self.store.get(self.keys.network(check_name(fields["network"], "network name")))
        if net_kv is None:
            raise NotFound(f"network {fields['network']!r} not found")
        network = Network.from_json(net_kv.value)
        pool = self._pool(network, net_kv.create_revision)
        requested_ip = fields.get("ip") or None
        if requested_ip is not None:
            check_ip_in_subnet(requested_ip, network)
        ref = resolve(str(fields["container"]))

        existing = self.store.get(self.keys.endpoint(network.name, ref.name))
        if existing is not None:
            return self._existing_attach(Endpoint.from_json(existing.value), requested_ip, mac)
        if groups:
            for group in groups:
                if self.store.get(self.keys.security_group(group)) is None:
                    raise NotFound(f"security group {group!r} not found")
        if mac is not None:
            self._check_mac_free(network, mac)
        used = self._used_ifnames(ref)
        if ifname is None:
            ifname = _free_ifname(ref, used)
        elif ifname in used:
            raise Conflict(f"container {ref.name} already has an interface named {ifname}")

        endpoint, revision = self._commit_attach(
            network, net_kv.mod_revision, ref, requested_ip, mac, ifname, groups, pool
        )
        error = self._await_apply(revision, endpoint_id(endpoint))
        if error is not None:
            self._commit_detach(endpoint, pool)
            raise DatapathError(f"attach of {ref.name} to {network.name} failed: {error}")
        log.info("attached %s to %s as %s", ref.name, network.name, endpoint.ip)
        return endpoint

    def _existing_attach(
        self, endpoint: Endpoint, requested_ip: str | None, mac: str | None
    ) -> Endpoint:
        if endpoint.host != self.host.name:
            raise Conflict(
                f"{endpoint.name} is already attached to {endpoint.network} on host "
                f"{endpoint.host}"
            )
        if requested_ip is not None and requested_ip != endpoint.ip:
            raise Conflict(
                f"{endpoint.name} is already attached to {endpoint.network} with IP "
                f"{endpoint.ip}; detach it first to change the address"
            )
        if mac is not None and mac != endpoint.mac:
            raise Conflict(
                f"{endpoint.name} is already attached to {endpoint.network} with MAC "
                f"{endpoint.mac}"
            )
        error = self.reconciler.item_error(endpoint_id(endpoint))
        if error is not None:
            raise DatapathError(f"{endpoint.name} on {endpoint.network}: {error}")
        return endpoint

    def _commit_attach(
        self,
        network: Network,
        network_revision: int,
        ref: ContainerRef,
        requested_ip: str | None,
        mac: str | None,
        ifname: str,
        groups: tuple[str, ...],
        pool: AddressPool,
    ) -> tuple[Endpoint, int]:
        key = self.keys.endpoint(network.name, ref.name)
        for _ in range(COMMIT_RETRIES):
            plan = pool.plan_reserve(ref.name, requested_ip)
            ip = plan.ip
            endpoint = Endpoint(
                network=network.name,
                name=ref.name,
                container=ref.ref,
                netns=ref.netns,
                host=self.host.name,
                ifname=ifname,
                ip=ip,
                mac=mac or mac_from_ip(ip),
                security_groups=groups,
            )
            result = self.store.commit(
                [
                    *plan.conditions,
                    Condition(self.keys.network(network.name), network_revision),
                    Condition(key, 0),
                ],
                [*plan.operations, Put(key, endpoint.to_json())],
            )
            if result.succeeded:
                return endpoint, result.revision
            if self.store.get(self.keys.network(network.name)) is None:
                raise NotFound(f"network {network.name!r} was removed")
            if self.store.get(key) is not None:
                raise Conflict(f"{ref.name} was attached to {network.name} concurrently")
            pool.invalidate()  # an address was taken under us: plan again
        raise Exhausted(f"could not reserve an address on {network.name}; try again")

    def detach(self, request: dict[str, Any]) -> Endpoint:
        fields = _only(request, {"container", "network"})
        if not fields.get("container") or not fields.get("network"):
            raise InvalidInput("detach needs a container and --network")
        net_kv = self.store.get(self.keys.network(check_name(str(fields["network"]),
                                                             "network name")))
        if net_kv is None:
            raise NotFound(f"network {fields['network']!r} not found")
        network = Network.from_json(net_kv.value)
        name = _endpoint_name(str(fields["container"]))
        kv = self.store.get(self.keys.endpoint(network.name, name))
        if kv is None:
            raise NotFound(f"{name} is not attached to network {network.name}")
        endpoint = Endpoint.from_json(kv.value)
        if endpoint.host != self.host.name:
            raise Conflict(
                f"{name} is attached on host {endpoint.host}; detach it with that host's netctl"
            )
        pool = self._pool(network, net_kv.create_revision)
        revision = self._commit_detach(endpoint, pool)
        self._await_apply(revision, None)
        log.info("detached %s from %s", name, network.name)
        return endpoint

    def _commit_detach(self, endpoint: Endpoint, pool: AddressPool) -> int:
        key = self.keys.endpoint(endpoint.network, endpoint.name)
        plan = pool.plan_release(endpoint.name, endpoint.ip)
        result = self.store.commit(plan.conditions, [*plan.operations, Delete(key)])
        if not result.succeeded:  # the address record changed under us: drop the endpoint anyway
            result = self.store.commit([], [Delete(key)])
        return result.revision

    def _await_apply(self, revision: int, item: str | None) -> str | None:
        if not self.reconciler.wait_applied(revision, APPLY_TIMEOUT):
            return f"this host did not apply the change within {APPLY_TIMEOUT:.0f} s"
        return None if item is None else self.reconciler.item_error(item)

    def _check_mac_free(self, network: Network, mac: str) -> None:
        for ep in self.list_endpoints(network.name):
            if ep.mac == mac:
                raise Conflict(f"MAC {mac} is already used by {ep.name} on {network.name}")

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
        return local | netlink.link_names(ref.netns)

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
        sync = self.reconciler.status()
        try:
            store_revision = self.store.revision()
            store_ok, store_error = True, ""
        except Exception as exc:
            store_revision, store_ok, store_error = 0, False, str(exc)
        endpoints = [ep for ep in self.list_endpoints() if ep.host == self.host.name]
        return {
            "host": self.host.to_dict(),
            "store": {"reachable": store_ok, "revision": store_revision, "error": store_error},
            "networks": len(self.list_networks()),
            "endpoints": len(endpoints),
            "last_sync": sync.last_sync,
            "applied_revision": sync.revision,
            "syncs": sync.syncs,
            "errors": sync.errors,
        }


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


def _endpoint_name(container: str) -> str:
    """The endpoint name for a reference, even when the container is gone already."""
    try:
        return resolve(container).name
    except NotFound:
        if container.isdigit():
            return f"pid-{container}"
        return check_name(container.rstrip("/").rsplit("/", 1)[-1], "container name")


def _pick_vni(taken: set[int]) -> int:
    """The lowest free VNI (concurrent creators are kept apart by the VNI key's condition)."""
    for vni in range(1, VNI_MAX + 1):
        if vni not in taken:
            return vni
    raise Exhausted("every VNI is in use")
