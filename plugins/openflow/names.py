"""Names of what the openflow driver creates, claimed through the core's naming
(netd.plumbing.names) so a restarted daemon recognises its own ports and no other driver
takes them.

  ndoi1           the integration bridge (OVS creates a tap of that name: a link)
  ndop<8 hex>     host end of an endpoint's veth, an OVS port of the bridge
  ndog<8 hex>     GRE port towards one remote host (hash of its underlay IP)
  ndox<8 hex>     VXLAN port towards one remote host
  ndom1, ndom2    MAC2MAC patch pair: ndom1 on the integration bridge, ndom2 on the
                  host's underlay bridge
"""

from __future__ import annotations

from netd.plumbing.names import claim

BRIDGE = claim("openflow", "bridge", "oi", "number")
VETH = claim("openflow", "veth", "op", "hash")
GRE = claim("openflow", "gre", "og", "hash")
VXLAN = claim("openflow", "vxlan", "ox", "hash")
PATCH = claim("openflow", "patch", "om", "number")
PATCH_INT = PATCH.number(1)  # on the integration bridge
PATCH_UNDERLAY = PATCH.number(2)  # on the underlay bridge

INTEGRATION_BRIDGE = BRIDGE.number(1)  # ndoi1


def host_veth_name(network: str, endpoint: str) -> str:
    return VETH.hashed(f"{network}/{endpoint}")


def tunnel_port_name(backend: str, remote_ip: str) -> str:
    return (GRE if backend == "gre" else VXLAN).hashed(remote_ip)


def is_tunnel_port(name: str) -> bool:
    return GRE.matches(name) or VXLAN.matches(name)


def is_veth_port(name: str) -> bool:
    return VETH.matches(name)
