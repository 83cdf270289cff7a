"""Link names of the flannel driver, claimed through netd's naming so a restarted daemon
knows its own links and no other driver's sweep takes them. flanneld names its devices
`flannel.<VNI>` / `flannel0`; interop needs only the wire format and the etcd schema, so
netd's keep its ownership prefix. The number is netd's VNI of the network (unique in the
cluster), not flannel's VNI (1 for every flannel network by default).

  ndflb<n>       bridge of a network, address <lease>.1 (flannel's cni0/docker0)
  ndflv<n>       vxlan device (flannel.<VNI>), address <lease>.0/32
  ndflu<n>       TUN of the udp backend (flannel0), address <lease>.0/32
  ndflh<8 hex>   host end of an endpoint's veth: hash of "<network>/<endpoint>"
"""

from __future__ import annotations

from netd.plumbing.names import claim

BRIDGE = claim("flannel", "bridge", "flb", "number")
VXLAN = claim("flannel", "vxlan", "flv", "number")
TUN = claim("flannel", "tun", "flu", "number")
VETH = claim("flannel", "veth", "flh", "hash")
ROLES = (BRIDGE, VXLAN, TUN, VETH)


def owned(name: str) -> bool:
    return any(role.matches(name) for role in ROLES)


def number_of(name: str) -> int | None:
    for role in (BRIDGE, VXLAN, TUN):
        n = role.number_of(name)
        if n is not None:
            return n
    return None
