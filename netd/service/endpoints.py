"""Endpoints: attach a container to a network and detach it, one commit each.

An attach plans its address (ipam.pool), its MAC claim (ipam.macs) and its endpoint
record, and commits them at once while the network is unchanged and not being removed
(netd.service.transaction). When the commit fails it asks which condition failed, in
this order: the address record changed (someone took the address: plan again; its
derived MAC colliding is the same race, not a MAC conflict; asked first as by far the
most common loss, at one read), the endpoint exists (a repeated or conflicting attach),
the network changed or is being removed, the name's sticky record changed, and only
then the MAC claim. It then waits until this host applied the endpoint, and undoes the
commit exactly if the datapath refused it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from ipam import macs
from ipam.pool import AddressPool, Plan
from netd.container import ContainerRef, endpoint_name
from netd.errors import Conflict, DatapathError, Exhausted, InvalidInput, NotFound
from netd.faults import crash_point
from netd.model import (
    Endpoint,
    Network,
    check_ifname,
    check_mac,
    check_name,
    check_str,
    check_str_list,
    check_underlay_fits,
    mac_from_ip,
)
from netd.plugin import endpoint_id
from netd.service import transaction
from netd.service.context import (
    APPLY_TIMEOUT,
    Context,
    only,
    revalidated,
)
from netd.service.groups import Groups, GroupUse, check_groups
from netd.service.networks import _check_driver
from netd.service.transaction import Diagnosis, Txn
from netd.store.base import Condition, Delete, KeyValue, Put

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Attach:
    """One planned attach: the address plan, the endpoint and the whole transaction."""

    address: Plan
    endpoint: Endpoint
    conditions: tuple[Condition, ...]
    operations: tuple[Any, ...]


class _Exists(Exception):
    """The endpoint record appeared under the attach: answer as a repeated attach."""

    def __init__(self, kv: KeyValue) -> None:
        super().__init__(kv.key)
        self.kv = kv


class _StaleNetwork(Exception):
    """The cached network record is not the network's current one: start again."""


class Endpoints:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def attach(self, request: dict[str, Any]) -> Endpoint:
        fields = only(request, {"container", "network", "ip", "mac", "ifname", "sg", "name"})
        if not fields.get("container") or not fields.get("network"):
            raise InvalidInput("attach needs a container and --network")
        try:
            return self._attach(fields, fresh=False)
        except _StaleNetwork:
            return self._attach(fields, fresh=True)

    def _attach(self, fields: dict[str, Any], fresh: bool) -> Endpoint:
        ctx = self.ctx
        container = check_str(fields["container"], "container reference")
        asked_groups = "sg" in fields
        groups = check_groups(check_str_list(fields.get("sg", []), "security groups"))
        mac = check_mac(check_str(fields["mac"], "MAC address")) if fields.get("mac") else None
        ifname = check_ifname(fields["ifname"]) if fields.get("ifname") else None
        requested_ip = check_str(fields["ip"], "IP address") if fields.get("ip") else None

        def check(network: Network) -> None:
            backend = _check_driver(ctx.specs, network)
            check_underlay_fits(network, ctx.host.underlay_mtu, backend)
            if requested_ip is not None:
                ctx.address_range(network, requested_ip).check(requested_ip)

        name = check_name(fields["network"], "network name")
        net_kv, network = revalidated(ctx, name, check, fresh)
        pool = ctx.pool(network, net_kv.create_revision, requested_ip)
        ref = ctx.resolve(container)
        if fields.get("name"):  # a runtime names the endpoint (its container's name)
            ref = replace(ref, name=check_name(check_str(fields["name"], "name"), "endpoint name"))
        key = ctx.keys.endpoint(network.name, ref.name)

        with ctx.netns_locks.hold(ref.netns):
            mine = ctx.local.of(ref.netns)
            if key in mine:
                existing = ctx.store.get(key)
                if existing is not None:
                    return self._existing_attach(existing, ref, requested_ip, mac, ifname,
                                                 groups if asked_groups else None)
            used = set(mine.values()) | ctx.links(ref.netns)
            if ifname is None:
                ifname = _free_ifname(ref, used)
            elif ifname in used:
                raise Conflict(f"container {ref.name} already has an interface named {ifname}")
            try:
                planned, revision = self._commit_attach(
                    network, net_kv, fresh, ref, requested_ip, mac, ifname, groups, pool
                )
            except _Exists as exists:
                return self._existing_attach(exists.kv, ref, requested_ip, mac, ifname,
                                             groups if asked_groups else None)
            endpoint = planned.endpoint
            ctx.local.add(endpoint)
            crash_point("attach.committed")
            error = ctx.await_apply(revision, endpoint_id(endpoint))
            if error is not None:
                self._rollback_attach(planned, revision, pool)
                raise DatapathError(f"attach of {ref.name} to {network.name} failed: {error}")
            crash_point("attach.applied")
        log.info("attached %s to %s as %s", ref.name, network.name, endpoint.ip)
        return endpoint

    def _existing_attach(
        self,
        kv: KeyValue,
        ref: ContainerRef,
        requested_ip: str | None,
        mac: str | None,
        ifname: str | None,
        groups: tuple[str, ...] | None = None,
    ) -> Endpoint:
        """A repeated attach: the same request answers with the endpoint once this host
        applied it; a different one (other netns, address, MAC, interface) is refused."""
        endpoint = Endpoint.from_json(kv.value)
        where = f"{endpoint.name} is already attached to {endpoint.network}"
        if endpoint.host != self.ctx.host.name:
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
        if groups is not None and groups != endpoint.security_groups:
            raise Conflict(
                f"{where} in security groups {','.join(endpoint.security_groups) or '(none)'}; "
                "change them with netctl endpoint update "
                f"{endpoint.name} --network {endpoint.network} [--sg GROUP]..."
            )
        self.ctx.local.add(endpoint)
        error = self.ctx.await_apply(kv.mod_revision, endpoint_id(endpoint))
        if error is not None:
            raise DatapathError(f"{endpoint.name} on {endpoint.network}: {error}")
        return endpoint

    def _commit_attach(
        self,
        network: Network,
        net_kv: KeyValue,
        fresh: bool,
        ref: ContainerRef,
        requested_ip: str | None,
        mac: str | None,
        ifname: str,
        groups: tuple[str, ...],
        pool: AddressPool,
    ) -> tuple[_Attach, int]:
        """Reserve the address, claim the MAC and write the endpoint in one commit, which
        holds only while the network is unchanged and not being removed."""
        ctx, keys = self.ctx, self.ctx.keys
        key = keys.endpoint(network.name, ref.name)
        net_key, marker = keys.network(network.name), keys.network_removal(network.name)
        state = {"network_revision": net_kv.mod_revision}
        own_claims: dict[str, int] = {}  # MAC -> revision of a claim this name left behind
        avoid: set[str] = set()  # free addresses whose derived MAC another endpoint has

        group_service = Groups(ctx)

        def plan() -> _Attach:
            use = group_service.plan_use(network.tenant, groups) if groups else GroupUse()
            address = pool.plan_reserve(ref.name, requested_ip, avoid)
            endpoint = Endpoint(
                network=network.name,
                name=ref.name,
                container=ref.ref,
                netns=ref.netns,
                host=ctx.host.name,
                ifname=ifname,
                ip=address.ip,
                mac=mac or mac_from_ip(address.ip),
                security_groups=groups,
            )
            claim = macs.plan_claim(keys, network.name, endpoint.mac, ref.name,
                                    own_claims.get(endpoint.mac, 0))
            whole = Txn.of(
                address,
                Txn(
                    (Condition(net_key, state["network_revision"]), Condition(marker, 0),
                     Condition(key, 0)),
                    (Put(key, endpoint.to_json()),),
                ),
                claim,
                use,
            )
            return _Attach(address, endpoint, whole.conditions, whole.operations)

        def on_failure(planned: _Attach, diagnosis: Diagnosis) -> None:
            # the common loss first, at one read: another daemon took the address
            address = planned.address
            addr_key = keys.ipam_address(network.name, address.ip)
            if diagnosis.failed(addr_key):
                pool.collided(address.ip)  # plan again (its derived MAC: the same race)
                return
            if groups and group_service.refuse_if_removing(diagnosis, network.tenant, groups):
                return
            if diagnosis.failed(key):
                current = diagnosis.current(key)
                if current is not None:
                    raise _Exists(current)
            if diagnosis.failed(net_key):
                current = diagnosis.current(net_key)
                ctx.saw_network(current, network.name)
                same = (current is not None and current.value == net_kv.value
                        and current.create_revision == net_kv.create_revision)
                if not same:
                    if current is None or fresh:
                        raise NotFound(f"network {network.name!r} was removed")
                    raise _StaleNetwork(network.name)  # recreated or changed: start again
                assert current is not None
                state["network_revision"] = current.mod_revision
            if diagnosis.failed(marker):
                raise Conflict(f"network {network.name!r} is being removed")
            if diagnosis.failed(keys.ipam_name(network.name, ref.name)):
                pool.invalidate()  # our own name record changed: read the pool again
                return
            mac_key = keys.ipam_mac(network.name, planned.endpoint.mac)
            if diagnosis.failed(mac_key):
                claim = diagnosis.current(mac_key)
                owner = macs.owner_of(claim)
                if claim is not None and owner == ref.name:
                    own_claims[planned.endpoint.mac] = claim.mod_revision
                elif claim is not None and mac is None and address.automatic:
                    avoid.add(address.ip)  # free, but its derived MAC is taken: another
                elif claim is not None:
                    derived = "" if mac else (
                        f" (derived from IP {address.ip}; give --mac or --ip)")
                    raise Conflict(
                        f"MAC {planned.endpoint.mac} is already used by {owner or '?'} on "
                        f"network {network.name}{derived}"
                    )

        result = transaction.commit(
            ctx.store, plan, on_failure, what=f"attach of {ref.name} to {network.name}"
        )
        assert result is not None
        planned, revision = result
        pool.committed(ref.name, planned.address, revision)
        return planned, revision

    def _rollback_attach(self, planned: _Attach, revision: int, pool: AddressPool) -> None:
        """Undo an attach committed at `revision`: the store ends exactly as before it
        (the sticky name record too), and this host's datapath follows."""
        endpoint, keys = planned.endpoint, self.ctx.keys
        key = keys.endpoint(endpoint.network, endpoint.name)
        mac_key = keys.ipam_mac(endpoint.network, endpoint.mac)
        undo = pool.plan_undo(endpoint.name, planned.address, revision)
        pool.invalidate()
        self.ctx.local.remove(endpoint)

        def changed(planned: Txn, diagnosis: Diagnosis) -> None:
            raise _Changed

        undone: int | None
        try:
            result = transaction.commit(
                self.ctx.store,
                lambda: Txn.of(
                    Txn((Condition(key, revision), Condition(mac_key, revision)),
                        (Delete(key), Delete(mac_key))),
                    undo,
                ),
                changed,
                what=f"undoing the attach of {endpoint.name}",
            )
            undone = result[1] if result is not None else None
        except _Changed:  # something changed since: release what is still ours
            undone = self._commit_detach(endpoint, pool)
        if undone is not None:
            self.ctx.reconciler.wait_applied(undone, endpoint_id(endpoint), APPLY_TIMEOUT)

    def update(self, request: dict[str, Any]) -> Endpoint:
        """Replace an endpoint's security groups (`netctl endpoint update CONTAINER
        --network NET [--sg GROUP]...`; no --sg: no groups), without detaching: one
        conditional commit of the endpoint record; the policy follows on every host."""
        ctx = self.ctx
        fields = only(request, {"container", "network", "sg"})
        if not fields.get("container") or not fields.get("network"):
            raise InvalidInput("endpoint update needs a container and --network")
        _, network = ctx.network(check_name(fields["network"], "network name"), fresh=True)
        name = endpoint_name(check_str(fields["container"], "container reference"))
        groups = check_groups(check_str_list(fields.get("sg", []), "security groups"))
        key = ctx.keys.endpoint(network.name, name)
        group_service = Groups(ctx)
        updated: dict[str, Endpoint] = {}

        def plan() -> Txn | None:
            kv = ctx.store.get(key)
            if kv is None:
                raise NotFound(f"{name} is not attached to network {network.name}")
            current = Endpoint.from_json(kv.value)
            updated["endpoint"] = replace(current, security_groups=groups)
            if current.security_groups == groups:
                return None
            use = group_service.plan_use(network.tenant, groups) if groups else GroupUse()
            return Txn.of(use, Txn((Condition(key, kv.mod_revision),),
                                   (Put(key, updated["endpoint"].to_json()),)))

        def failed(planned: Txn, diagnosis: Diagnosis) -> None:
            group_service.refuse_if_removing(diagnosis, network.tenant, groups)

        result = transaction.commit(ctx.store, plan, failed,
                                    what=f"endpoint update {name} on {network.name}")
        endpoint = updated["endpoint"]
        if result is not None and endpoint.host == ctx.host.name:
            ctx.reconciler.wait_applied(result[1], endpoint_id(endpoint), APPLY_TIMEOUT)
        log.info("endpoint %s on %s: groups %s", name, network.name, ",".join(groups) or "-")
        return endpoint

    def detach(self, request: dict[str, Any], wait: bool = True) -> Endpoint:
        """`wait` False: return once the store is updated, not waiting for this host's
        datapath (a runtime tearing the container's netns down anyway: Docker's Leave)."""
        ctx = self.ctx
        fields = only(request, {"container", "network"})
        if not fields.get("container") or not fields.get("network"):
            raise InvalidInput("detach needs a container and --network")
        net_kv, network = ctx.network(check_name(fields["network"], "network name"), fresh=True)
        name = endpoint_name(check_str(fields["container"], "container reference"))
        kv = ctx.store.get(ctx.keys.endpoint(network.name, name))
        if kv is None:
            raise NotFound(f"{name} is not attached to network {network.name}")
        endpoint = Endpoint.from_json(kv.value)
        if endpoint.host != ctx.host.name:
            raise Conflict(
                f"{name} is attached on host {endpoint.host}; detach it with that host's netctl"
            )
        pool = ctx.pool(network, net_kv.create_revision, whole=True)
        with ctx.netns_locks.hold(endpoint.netns):
            revision = self._commit_detach(endpoint, pool)
            if revision is None:
                raise NotFound(f"{name} is not attached to network {network.name}")
            crash_point("detach.committed")
            error = ctx.await_apply(revision, endpoint_id(endpoint)) if wait else None
            crash_point("detach.applied")
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
        ctx, keys = self.ctx, self.ctx.keys
        key = keys.endpoint(endpoint.network, endpoint.name)
        released: list[str] = []

        def plan() -> Txn | None:
            kv = ctx.store.get(key)
            if kv is None:
                return None
            current = Endpoint.from_json(kv.value)
            released[:] = [current.ip]
            return Txn.of(
                Txn((Condition(key, kv.mod_revision),), (Delete(key),)),
                pool.plan_release(current.name, current.ip),
                macs.plan_release(ctx.store, keys, current.network, current.mac, current.name),
            )

        result = transaction.commit(
            ctx.store, plan, transaction.retry_on_any_failure,
            what=f"detaching {endpoint.name} from {endpoint.network}",
        )
        ctx.local.remove(endpoint)
        if result is None and released:
            # planned once, gone now: an attempt whose answer was lost (a failing-over
            # store) was applied, or a concurrent detach did it; either way it is done
            pool.released(released[0])
            return ctx.store.revision()
        if result is None:
            return None
        pool.released(released[0])
        return result[1]


class _Changed(Exception):
    pass


def _free_ifname(ref: ContainerRef, used: set[str]) -> str:
    for n in range(0, 4096):
        name = f"eth{n}"
        if name not in used:
            return name
    raise Exhausted(f"container {ref.name} has no free ethN interface name")
