"""The range IPAM allocates in: a subnet, its gateway and addresses never handed out.

A network's range is its subnet and gateway (`AddressRange.of(network)`). A driver may
scope allocation more narrowly, per host (flannel: the subnet this host leased, with its
own gateway); the allocator and the pool only ever see the range, never the network.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field

from netd.errors import InvalidInput
from netd.model import Network, parse_ip


@dataclass(frozen=True)
class AddressRange:
    """`subnet` (CIDR) minus its network and broadcast address, `gateway` and `excluded`.

    `network` names the network the range belongs to (for messages and keys): several
    ranges of one network (one per host) share its address and name records.
    """

    network: str
    subnet: str
    gateway: str = ""
    excluded: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(cls, network: Network) -> AddressRange:
        """The whole network: its subnet without its gateway."""
        return cls(network.name, network.subnet, network.gateway)

    def bounds(self) -> tuple[int, int]:
        """(first, last) usable address as integers (network and broadcast left out)."""
        net = ipaddress.IPv4Network(self.subnet)
        return int(net.network_address) + 1, int(net.broadcast_address) - 1

    def reserved(self) -> frozenset[int]:
        """The gateway and excluded addresses inside the bounds, as integers."""
        first, last = self.bounds()
        out = set()
        for ip in (self.gateway, *self.excluded):
            n = to_int(ip) if ip else None
            if n is not None and first <= n <= last:
                out.add(n)
        return frozenset(out)

    def size(self) -> int:
        """How many addresses can be handed out."""
        first, last = self.bounds()
        return last - first + 1 - len(self.reserved())

    def check(self, ip: str) -> str:
        """`ip` if it may be handed out, else InvalidInput saying why."""
        n = int(parse_ip(ip))
        net = ipaddress.IPv4Network(self.subnet)
        if ipaddress.IPv4Address(n) not in net:
            raise InvalidInput(f"IP {ip} is outside network {self.network} ({self.subnet})")
        if n == int(net.network_address):
            raise InvalidInput(f"IP {ip} is the network address of {self.subnet}")
        if n == int(net.broadcast_address):
            raise InvalidInput(f"IP {ip} is the broadcast address of {self.subnet}")
        if self.gateway and n == to_int(self.gateway):
            raise InvalidInput(f"IP {ip} is the gateway of network {self.network}")
        if n in self.reserved():
            raise InvalidInput(f"IP {ip} is excluded from allocation on network {self.network}")
        return str(ipaddress.IPv4Address(n))

    def usable(self, ip: str) -> bool:
        try:
            self.check(ip)
        except InvalidInput:
            return False
        return True


def to_int(ip: str) -> int | None:
    """A dotted-quad IPv4 address as an integer, None if it is not one (strict, like
    ipaddress: no leading zeros, no short forms; inet_pton is ~20x cheaper)."""
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET, ip), "big")
    except (OSError, TypeError, ValueError):
        return None


def to_ip(n: int) -> str:
    """An integer as a dotted-quad IPv4 address."""
    return socket.inet_ntoa(n.to_bytes(4, "big"))
