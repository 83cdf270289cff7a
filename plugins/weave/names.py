"""Link names of the weave driver, claimed through the core's naming (netd.plumbing.names)
so a restarted daemon can tell which links are its own (adopt or sweep) and no other
driver ever takes them.

  ndb<vni>        bridge of a network       (VNI <= 16777215: at most 11 characters)
  ndv<vni>        vxlan device of a network (fastdp)
  ndt<vni>        persistent TAP of a network (sleeve)
  ndh<8 hex>      host end of an endpoint's veth: a stable hash of "<network>/<endpoint>"
"""

from __future__ import annotations

from typing import Literal

from netd.plumbing.names import NameRole, claim

LinkRole = Literal["bridge", "vxlan", "tap", "veth"]

BRIDGE = claim("weave", "bridge", "b", "number")
VXLAN = claim("weave", "vxlan", "v", "number")
TAP = claim("weave", "tap", "t", "number")
VETH = claim("weave", "veth", "h", "hash")
_ROLES: dict[LinkRole, NameRole] = {"bridge": BRIDGE, "vxlan": VXLAN, "tap": TAP, "veth": VETH}


def bridge_name(vni: int) -> str:
    return BRIDGE.number(vni)


def vxlan_name(vni: int) -> str:
    return VXLAN.number(vni)


def tap_name(vni: int) -> str:
    return TAP.number(vni)


def host_veth_name(network: str, endpoint: str) -> str:
    return VETH.hashed(f"{network}/{endpoint}")


def owned_role(name: str) -> LinkRole | None:
    """The role of a link the weave driver created, or None for anything else."""
    for role, pattern in _ROLES.items():
        if pattern.matches(name):
            return role
    return None


def vni_of(name: str) -> int | None:
    """The VNI in a bridge, vxlan or TAP name of this driver, else None."""
    for role in (BRIDGE, VXLAN, TAP):
        vni = role.number_of(name)
        if vni is not None:
            return vni
    return None
