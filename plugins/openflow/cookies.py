"""Flow cookies: every flow netd installs says who owns it.

    bits 63..48  NETD_MAGIC (0x6e64, "nd"): the flow is netd's; anything else is foreign
    bits 47..40  kind of the owning object (Kind)
    bits 39..16  the owner's id within its kind (a VNI, or 24 bits of a stable hash)
    bits 15..0   16 bits of a hash of the flow's content (table, priority, match, actions)

One masked delete (`owner_mask`) removes exactly one object's flows; the content bits
let a resync compare a dumped flow with a desired one by cookie alone: a flow whose
cookie no desired flow carries is stale (or changed) and goes.
"""

from __future__ import annotations

import enum
import hashlib

NETD_MAGIC = 0x6E64
MAGIC_SHIFT = 48
KIND_SHIFT = 40
OWNER_SHIFT = 16
MAGIC_MASK = 0xFFFF << MAGIC_SHIFT
OWNER_MASK = MAGIC_MASK | (0xFF << KIND_SHIFT) | (0xFFFFFF << OWNER_SHIFT)
KIND_MASK = MAGIC_MASK | (0xFF << KIND_SHIFT)


class Kind(enum.IntEnum):
    PIPELINE = 1  # table defaults
    CANARY = 2
    NETWORK = 3  # owner: VNI
    ENDPOINT = 4  # owner: hash of "<network>/<endpoint>"
    REMOTE = 5  # a remote endpoint; owner: hash of "<network>/<endpoint>"
    TUNNEL = 6  # owner: hash of the tunnel port name
    MAC2MAC = 7  # owner: VNI
    PORT_SECURITY = 8  # a local port's anti-spoofing and hooks; owner: as ENDPOINT
    SECURITY_GROUP = 9  # a local port's stateful rules; owner: as ENDPOINT


def stable_id(key: str) -> int:
    """24 bits of sha256(key): the owner id of a named object."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:3], "big")


def owner_cookie(kind: Kind, owner: int) -> int:
    return (NETD_MAGIC << MAGIC_SHIFT) | (int(kind) << KIND_SHIFT) | (
        (owner & 0xFFFFFF) << OWNER_SHIFT)


def flow_cookie(kind: Kind, owner: int, content: str) -> int:
    digest = int.from_bytes(hashlib.sha256(content.encode()).digest()[:2], "big")
    return owner_cookie(kind, owner) | digest


def is_netd(cookie: int) -> bool:
    return (cookie & MAGIC_MASK) == NETD_MAGIC << MAGIC_SHIFT


def kind_of(cookie: int) -> Kind | None:
    if not is_netd(cookie):
        return None
    try:
        return Kind((cookie >> KIND_SHIFT) & 0xFF)
    except ValueError:
        return None


def describe(cookie: int) -> str:
    kind = kind_of(cookie)
    if kind is None:
        return f"foreign {cookie:#x}"
    return f"{kind.name.lower()}:{(cookie >> OWNER_SHIFT) & 0xFFFFFF}"
