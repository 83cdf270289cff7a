"""MAC claims: no two endpoints of a network share a MAC, explicit or derived from an IP.

`Keys.ipam_mac(net, mac)` = {"owner": endpoint}, created if absent in the endpoint's own
commit and deleted with it. These functions only plan; the caller commits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from netd.store.base import Condition, Delete, KeyValue, Operation, Put, Store
from netd.store.keys import Keys


@dataclass(frozen=True)
class MacClaim:
    """The conditions and operations of claiming or releasing one MAC."""

    key: str
    conditions: tuple[Condition, ...] = ()
    operations: tuple[Operation, ...] = ()


def plan_claim(keys: Keys, network: str, mac: str, owner: str, held_at: int = 0) -> MacClaim:
    """Claim `mac` for `owner`: the claim must be absent, or (`held_at`) be the one this
    owner left behind at that revision."""
    key = keys.ipam_mac(network, mac)
    return MacClaim(
        key, (Condition(key, held_at),), (Put(key, json.dumps({"owner": owner})),)
    )


def plan_release(store: Store, keys: Keys, network: str, mac: str, owner: str) -> MacClaim:
    """Drop `owner`'s claim on `mac`, if it holds it (read now)."""
    key = keys.ipam_mac(network, mac)
    claim = store.get(key)
    if claim is None or owner_of(claim) != owner:
        return MacClaim(key)
    return MacClaim(key, (Condition(key, claim.mod_revision),), (Delete(key),))


def owner_of(kv: KeyValue | None) -> str:
    """The owner named by a claim record ({"owner": NAME}), "" if none or unreadable."""
    if kv is None:
        return ""
    try:
        owner = json.loads(kv.value).get("owner", "")
    except (ValueError, AttributeError):
        return ""
    return owner if isinstance(owner, str) else ""
