"""Container plumbing every driver uses: container ports (veth into the container's
netns with address, routes and ARP settings; default-route handover), TUN/TAP devices,
and the naming of host-side links. Drivers import these instead of writing their own;
the kernel requests themselves go through netd.netlink.
"""

from netd.plumbing.container import (
    ARP_RETRANS_MS,
    ContainerPort,
    PlugFailed,
    host_end_ok,
    plug,
    siblings_to_replug,
    unplug,
)
from netd.plumbing.names import NameRole, claim, role_of

__all__ = [
    "ARP_RETRANS_MS",
    "ContainerPort",
    "NameRole",
    "PlugFailed",
    "claim",
    "host_end_ok",
    "plug",
    "role_of",
    "siblings_to_replug",
    "unplug",
]
