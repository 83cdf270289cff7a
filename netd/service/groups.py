"""Security groups: create, list, inspect, remove, and their rules; scoped by tenant.

A group lives at `sg/<tenant>/<name>` (docs/keys.md): the same name in two tenants is
two groups. An endpoint names groups of its network's tenant. Every write is one
conditional commit on the group record (transaction.commit), so concurrent rule edits
never lose one another.

Removing a group in use is refused, racing no attach: like `network rm`, rm first
rewrites the record and creates a removal marker (an attach or a rule naming the group
commits only while the record is the one it read and no marker exists), then looks for
endpoints and rules that use it, then deletes conditioned on both records.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from netd.errors import Conflict, InvalidInput, NetdError, NotFound
from netd.model import Endpoint, Network, SecurityGroup, check_name
from netd.policy.rules import check_rule_id, check_tenant, validate_rule
from netd.service import transaction
from netd.service.context import Context, only
from netd.service.transaction import Diagnosis, Txn
from netd.store.base import Condition, Delete, KeyValue, Put

log = logging.getLogger(__name__)

REMOVAL_TTL = 10  # seconds a crashed `sg rm` blocks attaches naming its group


@dataclass(frozen=True)
class GroupUse:
    """What an attach or rule must hold to name groups: their records unchanged since
    read and no removal marker."""

    conditions: tuple[Condition, ...] = ()
    operations: tuple[Any, ...] = ()


class Groups:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    # --- reading ---------------------------------------------------------------------
    def _read(self, tenant: str, name: str) -> tuple[KeyValue, SecurityGroup]:
        check_name(name, "security group name")
        kv = self.ctx.store.get(self.ctx.keys.security_group(tenant, name))
        if kv is None:
            raise NotFound(f"security group {name!r} not found in tenant {tenant!r}")
        return kv, SecurityGroup.from_json(kv.value)

    def list_groups(self, tenant: str | None = None) -> list[SecurityGroup]:
        prefix = self.ctx.keys.security_groups(check_tenant(tenant) if tenant else None)
        items, _ = self.ctx.store.list(prefix)
        groups = [SecurityGroup.from_json(kv.value) for kv in items]
        return sorted(groups, key=lambda g: (g.tenant, g.name))

    def inspect_group(self, tenant: str | None, name: str) -> dict[str, Any]:
        tenant = check_tenant(tenant)
        _, group = self._read(tenant, name)
        members = [ep.to_dict() for ep in self._members(tenant, name)]
        return {**group.to_dict(), "members": members}

    def _tenant_networks(self, tenant: str) -> list[str]:
        items, _ = self.ctx.store.list(self.ctx.keys.networks())
        return [n.name for n in (Network.from_json(kv.value) for kv in items)
                if n.tenant == tenant]

    def _members(self, tenant: str, name: str) -> list[Endpoint]:
        out: list[Endpoint] = []
        for network in self._tenant_networks(tenant):
            items, _ = self.ctx.store.list(self.ctx.keys.endpoints(network))
            out += [ep for ep in (Endpoint.from_json(kv.value) for kv in items)
                    if name in ep.security_groups]
        return sorted(out, key=lambda e: (e.network, e.name))

    # --- groups ----------------------------------------------------------------------
    def create_group(self, request: dict[str, Any]) -> SecurityGroup:
        fields = only(request, {"name", "tenant"})
        if "name" not in fields:
            raise InvalidInput("sg create needs a NAME")
        group = SecurityGroup(name=check_name(fields["name"], "security group name"),
                              tenant=check_tenant(fields.get("tenant")))
        key = self.ctx.keys.security_group(group.tenant, group.name)

        def exists(planned: Txn, diagnosis: Diagnosis) -> None:
            raise Conflict(f"security group {group.name!r} already exists in tenant "
                           f"{group.tenant!r}")

        transaction.commit(
            self.ctx.store,
            lambda: Txn((Condition(key, 0),), (Put(key, group.to_json()),)),
            exists, what=f"sg create {group.name}",
        )
        log.info("security group %s/%s created", group.tenant, group.name)
        return group

    def remove_group(self, tenant: str | None, name: str) -> None:
        tenant = check_tenant(tenant)
        ctx, keys, store = self.ctx, self.ctx.keys, self.ctx.store
        key = keys.security_group(tenant, name)
        kv, _ = self._read(tenant, name)
        self._refuse_if_used(tenant, name)
        marker = keys.security_group_removal(tenant, name)
        lease = store.grant_lease(REMOVAL_TTL)
        try:
            def begun_failed(planned: Txn, diagnosis: Diagnosis) -> None:
                if diagnosis.current(key) is None:
                    raise NotFound(f"security group {name!r} not found in tenant {tenant!r}")
                raise Conflict(f"security group {name!r} is being changed or removed by "
                               "another request; try again")

            begun = transaction.commit(
                store,
                lambda: Txn((Condition(key, kv.mod_revision), Condition(marker, 0)),
                            (Put(key, kv.value), Put(marker, ctx.host.name, lease))),
                begun_failed, what=f"sg rm {name}",
            )
            assert begun is not None
            revision = begun[1]
            self._refuse_if_used(tenant, name)

            def removal_failed(planned: Txn, diagnosis: Diagnosis) -> None:
                raise Conflict(f"security group {name!r} changed while removing it; try again")

            transaction.commit(
                store,
                lambda: Txn((Condition(key, revision), Condition(marker, revision)),
                            (Delete(key), Delete(marker))),
                removal_failed, what=f"sg rm {name}",
            )
        finally:
            try:
                store.revoke_lease(lease)
            except NetdError as exc:
                log.warning("sg rm %s: marker stays until its lease expires: %s", name, exc)
        log.info("security group %s/%s removed", tenant, name)

    def _refuse_if_used(self, tenant: str, name: str) -> None:
        members = self._members(tenant, name)
        if members:
            names = ", ".join(f"{e.name} on {e.network}" for e in members[:5])
            raise Conflict(
                f"security group {name!r} is in use by {len(members)} endpoint(s) ({names}); "
                "change their groups first (netctl endpoint update CONTAINER --network NET "
                "[--sg OTHER])"
            )
        users = [g.name for g in self.list_groups(tenant)
                 if g.name != name and any(r.group == name for r in g.rules)]
        if users:
            raise Conflict(f"security group {name!r} is named by rules of group(s) "
                           f"{', '.join(users)}; remove those rules first")

    # --- rules -----------------------------------------------------------------------
    def add_rule(self, tenant: str | None, name: str, request: dict[str, Any]) -> dict[str, Any]:
        tenant = check_tenant(tenant)
        fields = only(request, {"direction", "protocol", "port", "cidr", "group"})
        rule = validate_rule(fields)
        keys = self.ctx.keys
        key = keys.security_group(tenant, name)
        added: dict[str, bool] = {}

        def plan() -> Txn | None:
            kv, group = self._read(tenant, name)
            if any(r.id == rule.id for r in group.rules):
                added["new"] = False
                return None  # the same rule again: nothing to do
            use = GroupUse()
            if rule.group is not None and rule.group != name:
                use = self.plan_use(tenant, (rule.group,))
            updated = replace(group, rules=(*group.rules, rule))
            added["new"] = True
            return Txn.of(use, Txn((Condition(key, kv.mod_revision),
                                    Condition(keys.security_group_removal(tenant, name), 0)),
                                   (Put(key, updated.to_json()),)))

        def failed(planned: Txn, diagnosis: Diagnosis) -> None:
            self._refuse_removing(diagnosis, tenant, (name, rule.group or name))

        transaction.commit(self.ctx.store, plan, failed, what=f"sg rule add {name}")
        return {"group": name, "tenant": tenant, "rule": rule.to_dict(),
                "added": added.get("new", False)}

    def remove_rule(self, tenant: str | None, name: str, rule_id: str) -> dict[str, Any]:
        tenant = check_tenant(tenant)
        rid = check_rule_id(rule_id)
        key = self.ctx.keys.security_group(tenant, name)

        def plan() -> Txn:
            kv, group = self._read(tenant, name)
            kept = tuple(r for r in group.rules if r.id != rid)
            if len(kept) == len(group.rules):
                raise NotFound(f"security group {name!r} has no rule {rid} "
                               "(see netctl sg inspect)")
            updated = replace(group, rules=kept)
            return Txn((Condition(key, kv.mod_revision),), (Put(key, updated.to_json()),))

        transaction.commit(self.ctx.store, plan, transaction.retry_on_any_failure,
                           what=f"sg rule rm {name}")
        return {"group": name, "tenant": tenant, "removed": rid}

    # --- for attaches ----------------------------------------------------------------
    def plan_use(self, tenant: str, groups: tuple[str, ...]) -> GroupUse:
        """Conditions for committing something that names `groups` of `tenant`: each
        exists (NotFound naming it otherwise), unchanged and not being removed."""
        conditions: list[Condition] = []
        keys = self.ctx.keys
        for name in groups:
            kv, _ = self._read(tenant, name)
            conditions += [Condition(kv.key, kv.mod_revision),
                           Condition(keys.security_group_removal(tenant, name), 0)]
        return GroupUse(tuple(conditions))

    def refuse_if_removing(self, diagnosis: Diagnosis, tenant: str,
                           groups: tuple[str, ...]) -> bool:
        """After a failed commit: raise if a named group is gone or being removed; True
        if one of them merely changed (plan again)."""
        return self._refuse_removing(diagnosis, tenant, groups)

    def _refuse_removing(self, diagnosis: Diagnosis, tenant: str,
                         groups: tuple[str, ...]) -> bool:
        keys = self.ctx.keys
        changed = False
        for name in groups:
            if diagnosis.failed(keys.security_group_removal(tenant, name)):
                raise Conflict(f"security group {name!r} is being removed")
            key = keys.security_group(tenant, name)
            if diagnosis.failed(key):
                if diagnosis.current(key) is None:
                    raise NotFound(f"security group {name!r} was removed")
                changed = True
        return changed


def check_groups(value: tuple[str, ...]) -> tuple[str, ...]:
    """Group names of an attach, each valid, no duplicates (order kept)."""
    seen: list[str] = []
    for name in value:
        check_name(name, "security group name")
        if name not in seen:
            seen.append(name)
    return tuple(seen)
