"""Link names of the weave driver: decided before anything is created, so a restarted
daemon can tell which links are its own (adopt or sweep) and never touch anyone else's.

All names start with netd's OWNED_PREFIX ("nd") and fit the kernel's 15 characters:
  ndb<vni>        bridge of a network       (VNI <= 16777215: at most 11 characters)
  ndv<vni>        vxlan device of a network (fastdp)
  ndt<vni>        persistent TAP of a network (sleeve)
  ndh<8 hex>      host end of an endpoint's veth: a stable hash of "<network>/<endpoint>"
"""

from __future__ import annotations

import hashlib
import re
from typing import Literal

from netd.netlink import OWNED_PREFIX

LinkRole = Literal["bridge", "vxlan", "tap", "veth"]

_BRIDGE = OWNED_PREFIX + "b"
_VXLAN = OWNED_PREFIX + "v"
_TAP = OWNED_PREFIX + "t"
_VETH = OWNED_PREFIX + "h"
_ROLE_RE: dict[LinkRole, re.Pattern[str]] = {
    "bridge": re.compile(rf"^{_BRIDGE}[1-9][0-9]{{0,7}}$"),
    "vxlan": re.compile(rf"^{_VXLAN}[1-9][0-9]{{0,7}}$"),
    "tap": re.compile(rf"^{_TAP}[1-9][0-9]{{0,7}}$"),
    "veth": re.compile(rf"^{_VETH}[0-9a-f]{{8}}$"),
}


def bridge_name(vni: int) -> str:
    return f"{_BRIDGE}{vni}"


def vxlan_name(vni: int) -> str:
    return f"{_VXLAN}{vni}"


def tap_name(vni: int) -> str:
    return f"{_TAP}{vni}"


def host_veth_name(network: str, endpoint: str) -> str:
    digest = hashlib.sha256(f"{network}/{endpoint}".encode()).hexdigest()
    return f"{_VETH}{digest[:8]}"


def owned_role(name: str) -> LinkRole | None:
    """The role of a link the weave driver created, or None for anything else."""
    for role, pattern in _ROLE_RE.items():
        if pattern.match(name):
            return role
    return None


def vni_of(name: str) -> int | None:
    """The VNI in a bridge, vxlan or TAP name of this driver, else None."""
    if owned_role(name) in ("bridge", "vxlan", "tap"):
        return int(name[len(_BRIDGE) :])
    return None
