"""Networks: create (validated, with a VNI), read, and remove without racing attaches."""

from __future__ import annotations

import json
import logging
import secrets as pysecrets
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ipam import ids
from netd.errors import (
    Conflict,
    InvalidInput,
    NetdError,
    NotFound,
    StoreUnavailable,
    Unsupported,
)
from netd.faults import crash_point
from netd.model import (
    CORE_OPTIONS,
    Endpoint,
    Network,
    check_name,
    subnets_overlap,
    validate_network,
)
from netd.plugin import BackendSpec, DriverSpec, PreparedNetwork
from netd.service import transaction
from netd.service.context import Context, only
from netd.service.transaction import Diagnosis, Txn
from netd.store.base import Condition, Delete, DeletePrefix, Put

log = logging.getLogger(__name__)

REMOVAL_TTL = 10  # seconds a crashed `network rm` blocks attaches to its network


def _check_driver(specs: Mapping[str, DriverSpec], network: Network) -> BackendSpec:
    """The backend of a stored network, refused if this netd cannot serve it."""
    spec = specs.get(network.driver)
    if spec is None:
        available = ", ".join(sorted(specs)) or "none"
        raise Unsupported(
            f"driver {network.driver} is not available in this netd "
            f"(available: {available})"
        )
    backend = spec.backend(network.backend)
    if backend is None:
        raise Unsupported(
            f"driver {network.driver} of this netd has no backend {network.backend}"
        )
    return backend


class Networks:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def create_network(self, request: dict[str, Any]) -> Network:
        fields = only(
            request,
            {"name", "subnet", "tenant", "driver", "backend", "vni", "gateway", "mtu",
             "encrypt", "options"},
        )
        if "name" not in fields or "subnet" not in fields:
            raise InvalidInput("network create needs a name and --subnet")
        network = validate_network(
            **fields, drivers=self.ctx.specs, underlay_mtu=self.ctx.host.underlay_mtu
        )
        hooks = self.ctx.hooks.get(network.driver)
        keys, store = self.ctx.keys, self.ctx.store
        created: dict[str, Network] = {}

        def plan() -> Txn:
            existing, _rev = store.list(keys.networks())
            tenant_kv = store.get(keys.tenant(network.tenant))
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
            vni = ids.vnis(keys).plan_take(network.name, taken_vnis, network.vni or None)
            # options every network takes (egress) are netd's, not the driver's: its
            # hooks plan without them, the stored network keeps them
            core = {k: v for k, v in network.options.items() if k in CORE_OPTIONS}
            driver_net = replace(network, options={k: v for k, v in network.options.items()
                                                   if k not in CORE_OPTIONS})
            prepared = (PreparedNetwork(network) if hooks is None
                        else hooks.prepare_network(driver_net))
            candidate = replace(prepared.network, vni=vni.value,
                                options={**prepared.network.options, **core})
            created["network"] = candidate
            ops = [
                Put(keys.network(candidate.name), candidate.to_json()),
                # touching the tenant record serialises overlap checks within a tenant
                Put(keys.tenant(candidate.tenant), json.dumps({"name": candidate.tenant})),
            ]
            if candidate.encrypt:
                ops.append(Put(keys.network_key(candidate.name), pysecrets.token_hex(32)))
            conditions = [
                Condition(keys.network(candidate.name), 0),
                Condition(keys.tenant(candidate.tenant),
                          tenant_kv.mod_revision if tenant_kv else 0),
            ]
            return Txn.of(vni, prepared, Txn(tuple(conditions), tuple(ops)))

        def on_failure(planned: Txn, diagnosis: Diagnosis) -> None:
            """Another create took the name, the VNI or the tenant: read again and see."""

        transaction.commit(store, plan, on_failure, what=f"network create {network.name}")
        candidate = created["network"]
        log.info("network %s created (%s)", candidate.name, candidate.subnet)
        return candidate

    # reads answer from the store, or from this host's last known copy of it while the
    # store is away (known to be, or found to be by this very read)
    def get_network(self, name: str) -> Network:
        check_name(name, "network name")
        known = self.ctx.last_known()
        if known is None:
            try:
                return self.ctx.network(name, fresh=True)[1]
            except StoreUnavailable:
                known = self.ctx.reconciler.snapshot()
        if name not in known.networks:
            raise NotFound(f"network {name!r} not found")
        return known.networks[name]

    def list_networks(self) -> list[Network]:
        known = self.ctx.last_known()
        if known is None:
            try:
                items, _ = self.ctx.store.list(self.ctx.keys.networks())
                return [Network.from_json(kv.value) for kv in items]
            except StoreUnavailable:
                known = self.ctx.reconciler.snapshot()
        return [known.networks[name] for name in sorted(known.networks)]

    def list_endpoints(self, network: str | None = None) -> list[Endpoint]:
        if network is not None:
            self.get_network(network)
        known = self.ctx.last_known()
        if known is None:
            try:
                items, _ = self.ctx.store.list(self.ctx.keys.endpoints(network))
                return [Endpoint.from_json(kv.value) for kv in items]
            except StoreUnavailable:
                known = self.ctx.reconciler.snapshot()
        return [ep for key, ep in sorted(known.endpoints.items())
                if network is None or ep.network == network]

    def inspect_network(self, name: str) -> dict[str, Any]:
        network = self.get_network(name)
        return {
            **network.to_dict(),
            "endpoints": [ep.to_dict() for ep in self.list_endpoints(name)],
        }

    def remove_network(self, name: str) -> None:
        """Remove a network that has no endpoints, racing no attach.

        An attach commits only while the network record is unchanged since it read it
        and no removal marker exists. So rm first rewrites the record (failing attaches
        that read it before) and creates the marker (failing attaches that read it
        after), then looks for endpoints, then deletes everything conditioned on both
        records: an endpoint can never be committed between the look and the delete."""
        ctx, keys, store = self.ctx, self.ctx.keys, self.ctx.store
        key = keys.network(check_name(name, "network name"))
        kv = store.get(key)
        if kv is None:
            raise NotFound(f"network {name!r} not found")
        network = Network.from_json(kv.value)
        self._refuse_if_attached(name)  # cheap: a busy network is refused without a write
        marker = keys.network_removal(name)
        lease = store.grant_lease(REMOVAL_TTL)
        try:
            def begun_failed(planned: Txn, diagnosis: Diagnosis) -> None:
                if diagnosis.current(key) is None:
                    raise NotFound(f"network {name!r} not found")
                raise Conflict(f"network {name!r} is being changed or removed by another "
                               "request; try again")

            begun = transaction.commit(
                store,
                lambda: Txn((Condition(key, kv.mod_revision), Condition(marker, 0)),
                            (Put(key, kv.value), Put(marker, ctx.host.name, lease))),
                begun_failed,
                what=f"network rm {name}",
            )
            assert begun is not None
            revision = begun[1]
            crash_point("rm.marked")
            self._refuse_if_attached(name)
            pool = ctx.pool(network, kv.create_revision, whole=True)

            def removal_failed(planned: Txn, diagnosis: Diagnosis) -> None:
                raise Conflict(f"network {name!r} changed while removing it; try again")

            transaction.commit(
                store,
                lambda: Txn(
                    (Condition(key, revision), Condition(marker, revision)),
                    (
                        Delete(key),
                        Delete(marker),
                        *ids.vnis(keys).plan_release(network.vni).operations,
                        Delete(keys.network_key(name)),
                        *pool.plan_release_all().operations,
                        DeletePrefix(keys.endpoints(name)),
                        # hosts' roles (expose): a network made again under the name
                        # starts unexposed
                        DeletePrefix(keys.roles(name)),
                    ),
                ),
                removal_failed,
                what=f"network rm {name}",
            )
        finally:
            # drops the marker too, unless the last commit deleted it already
            try:
                store.revoke_lease(lease)
            except NetdError as exc:
                log.warning("network rm %s: marker stays until its lease expires: %s", name, exc)
        crash_point("rm.committed")
        ctx.saw_network(None, name)
        ctx.local.forget_network(name)
        log.info("network %s removed", name)

    def _refuse_if_attached(self, name: str) -> None:
        attached, _ = self.ctx.store.list(self.ctx.keys.endpoints(name))
        if attached:
            names = ", ".join(sorted(Endpoint.from_json(a.value).name for a in attached)[:5])
            raise Conflict(
                f"network {name!r} has {len(attached)} endpoint(s) attached ({names}); "
                "detach them first"
            )
