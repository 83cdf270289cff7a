"""Names and addresses of the gateway's kernel objects, decided before they exist.

Link names are claimed through netd.plumbing.names (owner "gateway"), so restarts adopt
them and no driver's sweep takes them:

  ndg<8 hex>   host end (a port of the network's bridge) of a network's gateway veth;
               its other end, in the tenant's router namespace, carries the gateway
               address: hashed from "<network>"
  ndr<8 hex>   host end of a tenant router's uplink veth: hashed from "<tenant>"

A router namespace lives in /run/netns (so it survives the daemon: kill -9 keeps the
datapath), named `ndrt<10 hex>` from a hash of this daemon's state dir, host name and
tenant: simulated hosts sharing one machine never collide.
"""

from __future__ import annotations

import hashlib

from netd.plumbing.names import claim

GATEWAY_PORT = claim("gateway", "gwport", "g", "hash")
UPLINK = claim("gateway", "uplink", "r", "hash")

ROUTER_NETNS_PREFIX = "ndrt"
NETNS_DIR = "/run/netns"
ROUTER_UPLINK = "up0"  # the uplink's end inside the router namespace
# transfer nets between a router and its host: one /30 per tenant in this block
TRANSFER_BASE = (169 << 24) | (254 << 16) | (64 << 8)  # 169.254.64.0/18
TRANSFER_BLOCKS = 4096
MARK_SHIFT = 16  # exposing-host id bits of the packet and conntrack mark (0x00ff0000)
MARK_MASK = 0x00FF0000


def _hex(text: str, n: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def gateway_port(network: str) -> str:
    return GATEWAY_PORT.hashed(network)


def router_port(network: str) -> str:
    """The gateway veth's end inside the router namespace."""
    return "g" + _hex(network, 8)


def uplink(tenant: str) -> str:
    return UPLINK.hashed(tenant)


def router_netns(scope: str, tenant: str) -> str:
    """The router namespace's name; `scope` tells this daemon apart (state dir, host)."""
    return ROUTER_NETNS_PREFIX + _hex(f"{scope}/{tenant}", 10)


def netns_path(name: str) -> str:
    return f"{NETNS_DIR}/{name}"


def router_mac(host: str, network: str) -> str:
    """The gateway's MAC on `host` for `network`: locally administered, one per host, so
    a frame for the gateway of another host (an exposing one) can be told apart."""
    digest = _hex(f"{host}/{network}", 8)
    return "02:6e:" + ":".join(digest[i:i + 2] for i in range(0, 8, 2))


def uplink_mac(host: str, tenant: str) -> str:
    digest = _hex(f"uplink/{host}/{tenant}", 8)
    return "02:6f:" + ":".join(digest[i:i + 2] for i in range(0, 8, 2))


def transfer_block(tenant: str, taken: set[int]) -> int:
    """The tenant's /30 block index: from a hash of its name, the next free one on a
    collision (`taken`: blocks already given on this host, in tenant order)."""
    block = int(_hex(tenant, 8), 16) % TRANSFER_BLOCKS
    while block in taken:
        block = (block + 1) % TRANSFER_BLOCKS
    return block


def transfer_addresses(block: int) -> tuple[str, str]:
    """(host end, router end) of a transfer /30."""
    base = TRANSFER_BASE + 4 * block

    def dotted(n: int) -> str:
        return ".".join(str((n >> s) & 0xFF) for s in (24, 16, 8, 0))

    return dotted(base + 1), dotted(base + 2)
