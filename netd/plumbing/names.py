"""Names of the host-side links netd creates, shared by every driver.

Why here: a name is decided before anything is created, so a restarted daemon can tell
its own links (adopt or sweep) from anyone else's, and one driver's sweep must never
take another driver's links. So each driver claims its name roles here: a code of
letters after OWNED_PREFIX ("nd") that no other role's code starts with, and a suffix
kind, either a number (a VNI, up to 8 digits) or 8 hex digits of a stable hash (e.g. of
"<network>/<endpoint>"). Names fit the kernel's 15 characters. Claims are made at import
time of the driver's names module; a code claimed twice by different roles fails the
import loudly.
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
from dataclasses import dataclass
from typing import Literal

from netd.netlink import OWNED_PREFIX

MAX_IFNAME = 15  # IFNAMSIZ - 1
NUMBER_DIGITS = 8  # up to 99999999: every 24-bit VNI fits
HASH_DIGITS = 8

Suffix = Literal["number", "hash"]


@dataclass(frozen=True)
class NameRole:
    """One kind of link a driver names: e.g. weave's bridge `ndb<vni>`."""

    owner: str  # the driver
    role: str  # e.g. "bridge", "veth"
    code: str  # letters after OWNED_PREFIX
    suffix: Suffix

    @property
    def prefix(self) -> str:
        return OWNED_PREFIX + self.code

    def number(self, n: int) -> str:
        """The name for number `n` (a "number" role)."""
        if self.suffix != "number" or not 0 < n < 10**NUMBER_DIGITS:
            raise ValueError(f"{self.role} names take a number 1..{10**NUMBER_DIGITS - 1}")
        return f"{self.prefix}{n}"

    def hashed(self, key: str) -> str:
        """The name for `key` (a "hash" role): stable across restarts and hosts."""
        if self.suffix != "hash":
            raise ValueError(f"{self.role} names take a number")
        digest = hashlib.sha256(key.encode()).hexdigest()
        return f"{self.prefix}{digest[:HASH_DIGITS]}"

    def matches(self, name: str) -> bool:
        return _pattern(self.prefix, self.suffix).fullmatch(name) is not None

    def number_of(self, name: str) -> int | None:
        """The number in `name` when it is this role's, else None."""
        if self.suffix != "number" or not self.matches(name):
            return None
        return int(name[len(self.prefix) :])


@functools.cache
def _pattern(prefix: str, suffix: Suffix) -> re.Pattern[str]:
    number = f"[1-9][0-9]{{0,{NUMBER_DIGITS - 1}}}"
    body = number if suffix == "number" else f"[0-9a-f]{{{HASH_DIGITS}}}"
    return re.compile(rf"{re.escape(prefix)}{body}")


_lock = threading.Lock()
_roles: dict[str, NameRole] = {}  # code -> role


def claim(owner: str, role: str, code: str, suffix: Suffix) -> NameRole:
    """Register a name role; the same claim again returns it, a clash raises ValueError."""
    wanted = NameRole(owner, role, code, suffix)
    digits = NUMBER_DIGITS if suffix == "number" else HASH_DIGITS
    if not re.fullmatch(r"[a-z]+", code) or len(OWNED_PREFIX + code) + digits > MAX_IFNAME:
        raise ValueError(f"name code {code!r}: lowercase letters, names within {MAX_IFNAME}")
    with _lock:
        for other in _roles.values():
            if other == wanted:
                return other
            if other.code.startswith(code) or code.startswith(other.code):
                raise ValueError(
                    f"link names {OWNED_PREFIX}{code}* of {owner}/{role} clash with "
                    f"{OWNED_PREFIX}{other.code}* of {other.owner}/{other.role}"
                )
        _roles[code] = wanted
    return wanted


def role_of(name: str) -> NameRole | None:
    """The claimed role `name` belongs to, or None (not netd's, or of no known driver)."""
    with _lock:
        roles = list(_roles.values())
    for role in roles:
        if role.matches(name):
            return role
    return None


def roles_of(owner: str) -> list[NameRole]:
    with _lock:
        return [r for r in _roles.values() if r.owner == owner]
