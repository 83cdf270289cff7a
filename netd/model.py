"""The objects netd stores, as frozen dataclasses validated at the edge.

Everything that enters netd (API request, store read) becomes one of these through a
`validate_*`/`from_dict` function that raises InvalidInput with a message naming the
bad field. Inside netd the objects are trusted. Store values are their JSON.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, Self

import netaddr

from netd.errors import HostLimit, InvalidInput

DRIVERS: dict[str, tuple[str, ...]] = {
    # driver -> backends; the first is the default
    "weave": ("fastdp", "sleeve"),
    "flannel": ("vxlan", "udp", "host-gw"),
    "openflow": ("gre", "vxlan"),
}
DEFAULT_DRIVER = "weave"
DEFAULT_TENANT = "default"
VNI_MIN, VNI_MAX = 1, 16_777_215
MTU_MIN, MTU_MAX = 68, 65_535
# bytes of outer headers each backend adds to an inner Ethernet frame's IP packet
ENCAP_OVERHEAD: dict[str, int] = {
    "fastdp": 50,  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
    "vxlan": 50,
    "sleeve": 28 + 14,  # outer IPv4 + UDP + inner Ethernet (sleeve adds its own below)
    "udp": 28,  # flannel udp carries IP packets, not frames
    "host-gw": 0,
    "gre": 38,  # outer IPv4 20 + GRE with key 8 + inner Ethernet 14 (+4 spare for VLAN)
}
SLEEVE_HEADER = 8  # sleeve frame header (see plugins/weave/sleeve)
SLEEVE_CRYPTO_OVERHEAD = 12 + 16  # nonce + AEAD tag

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
_MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")


def check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise InvalidInput(
            f"invalid {what} {value!r}: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def check_ifname(value: str) -> str:
    if not isinstance(value, str) or not _IFNAME_RE.match(value) or value in (".", ".."):
        raise InvalidInput(
            f"invalid interface name {value!r}: 1-15 letters, digits, '.', '_' or '-'"
        )
    return value


def check_mac(value: str) -> str:
    mac = str(value).lower()
    if not _MAC_RE.match(mac):
        raise InvalidInput(f"invalid MAC address {value!r}: expected aa:bb:cc:dd:ee:ff")
    first = int(mac[:2], 16)
    if first & 1:
        raise InvalidInput(f"invalid MAC address {value!r}: multicast bit set")
    if mac == "00:00:00:00:00:00":
        raise InvalidInput("invalid MAC address 00:00:00:00:00:00")
    return mac


def check_int(value: Any, what: str) -> int:
    """An integer as JSON gives it: no bool, no float, no string (1.9 is not 1)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"invalid {what} {value!r}: expected an integer")
    return value


def check_bool(value: Any, what: str) -> bool:
    """A JSON true/false: the string "false" is not false."""
    if not isinstance(value, bool):
        raise InvalidInput(f"invalid {what} {value!r}: expected true or false")
    return value


def check_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"invalid {what} {value!r}: expected a string")
    return value


def check_str_list(value: Any, what: str) -> tuple[str, ...]:
    """A list of strings; a bare string is refused (it is not a list of its letters)."""
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise InvalidInput(f"invalid {what} {value!r}: expected a list of strings")
    return tuple(value)


def check_options(value: Any) -> dict[str, str]:
    """Driver options: an object of string keys to string values."""
    if not isinstance(value, dict):
        raise InvalidInput(f"invalid driver options {value!r}: expected an object of KEY: VALUE")
    for key, item in value.items():
        if not isinstance(key, str) or not key or not isinstance(item, str):
            raise InvalidInput(
                f"invalid driver option {key!r}={item!r}: keys and values must be strings"
            )
    return dict(value)


def check_vni(value: Any) -> int:
    vni = check_int(value, "VNI")
    if not VNI_MIN <= vni <= VNI_MAX:
        raise InvalidInput(f"invalid VNI {vni}: must be {VNI_MIN}..{VNI_MAX}")
    return vni


def check_mtu(value: Any) -> int:
    mtu = check_int(value, "MTU")
    if not MTU_MIN <= mtu <= MTU_MAX:
        raise InvalidInput(f"invalid MTU {mtu}: must be {MTU_MIN}..{MTU_MAX}")
    return mtu


# ranges a tenant subnet must not touch: packets to them are never routed as unicast
RESERVED_RANGES: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "'this network' range"),
    ("127.0.0.0/8", "loopback range"),
    ("224.0.0.0/4", "multicast range"),
    ("240.0.0.0/4", "reserved range (and broadcast)"),
)


def parse_subnet(value: str) -> netaddr.IPNetwork:
    if not isinstance(value, str):
        raise InvalidInput(f"invalid subnet {value!r}: expected CIDR like 10.1.0.0/24")
    try:
        net = netaddr.IPNetwork(value)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise InvalidInput(f"invalid subnet {value!r}: expected CIDR like 10.1.0.0/24") from None
    if "/" not in str(value):
        raise InvalidInput(f"invalid subnet {value!r}: give a prefix length, e.g. /24")
    if net.version != 4:
        raise InvalidInput(f"invalid subnet {value!r}: only IPv4 subnets are supported")
    if net.ip != net.network:
        raise InvalidInput(
            f"invalid subnet {value!r}: host bits set, did you mean {net.cidr}?"
        )
    if net.prefixlen > 30:
        raise InvalidInput(f"invalid subnet {value!r}: prefix must be /30 or shorter")
    for cidr, what in RESERVED_RANGES:
        if subnets_overlap(str(net.cidr), cidr):
            raise InvalidInput(
                f"invalid subnet {value!r}: it overlaps the {what} {cidr}; "
                "use a private range such as 10.0.0.0/8"
            )
    return net


def parse_ip(value: str, what: str = "IP address") -> netaddr.IPAddress:
    if not isinstance(value, str):
        raise InvalidInput(f"invalid {what} {value!r}: expected dotted IPv4 like 10.1.0.5")
    try:
        ip = netaddr.IPAddress(value)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise InvalidInput(f"invalid {what} {value!r}") from None
    if ip.version != 4 or "/" in str(value) or str(ip) != str(value).strip():
        raise InvalidInput(f"invalid {what} {value!r}: expected dotted IPv4 like 10.1.0.5")
    return ip


def first_usable(subnet: netaddr.IPNetwork) -> netaddr.IPAddress:
    return netaddr.IPAddress(subnet.first + 1)


def check_ip_in_subnet(ip: str, network: Network) -> str:
    addr = parse_ip(ip)
    subnet = netaddr.IPNetwork(network.subnet)
    if addr not in subnet:
        raise InvalidInput(f"IP {ip} is outside network {network.name} ({network.subnet})")
    if addr == subnet.network:
        raise InvalidInput(f"IP {ip} is the network address of {network.subnet}")
    if addr == subnet.broadcast:
        raise InvalidInput(f"IP {ip} is the broadcast address of {network.subnet}")
    if str(addr) == network.gateway:
        raise InvalidInput(f"IP {ip} is the gateway of network {network.name}")
    return str(addr)


def mac_from_ip(ip: str) -> str:
    """A locally administered unicast MAC derived from the IPv4 address (02:42:a:b:c:d)."""
    octets = [int(o) for o in ip.split(".")]
    return "02:42:" + ":".join(f"{o:02x}" for o in octets)


class _Record:
    """JSON round-trip shared by the stored dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload,no-any-return]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise InvalidInput(f"malformed {cls.__name__.lower()} record: {exc}") from None

    @classmethod
    def from_json(cls, text: str) -> Self:
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class Tenant(_Record):
    name: str


@dataclass(frozen=True)
class Network(_Record):
    name: str
    subnet: str
    gateway: str
    vni: int
    mtu: int
    tenant: str = DEFAULT_TENANT
    driver: str = DEFAULT_DRIVER
    backend: str = "fastdp"
    encrypt: bool = False
    options: dict[str, str] = field(default_factory=dict)

    @property
    def prefixlen(self) -> int:
        return netaddr.IPNetwork(self.subnet).prefixlen


@dataclass(frozen=True)
class Endpoint(_Record):
    """One container interface on one network."""

    network: str
    name: str  # the endpoint name: the container name; IPAM reservations follow it
    container: str  # the reference the user gave (netns name, path, pid)
    netns: str  # the resolved netns path on `host`
    host: str
    ifname: str
    ip: str
    mac: str
    security_groups: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        data = dict(data)
        data["security_groups"] = tuple(data.get("security_groups", ()))
        return super().from_dict(data)


@dataclass(frozen=True)
class Host(_Record):
    name: str
    underlay_ip: str
    underlay_mtu: int = 1500
    # per-driver facts other hosts need, e.g. {"weave": {"sleeve_port": 6784}}
    driver_data: dict[str, dict[str, Any]] = field(default_factory=dict)
    version: str = ""


SgDirection = Literal["ingress", "egress"]


@dataclass(frozen=True)
class SecurityGroupRule(_Record):
    id: str
    direction: SgDirection
    protocol: str = "any"  # tcp | udp | icmp | any
    port_min: int | None = None
    port_max: int | None = None
    cidr: str | None = None
    group: str | None = None


@dataclass(frozen=True)
class SecurityGroup(_Record):
    name: str
    tenant: str = DEFAULT_TENANT
    rules: tuple[SecurityGroupRule, ...] = ()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        data = dict(data)
        data["rules"] = tuple(SecurityGroupRule.from_dict(r) for r in data.get("rules", ()))
        return super().from_dict(data)


def network_mtu(backend: str, underlay_mtu: int, encrypt: bool = False) -> int:
    """The largest inner IP packet the backend carries over an underlay of this MTU."""
    mtu = underlay_mtu - ENCAP_OVERHEAD[backend]
    if backend == "sleeve":
        mtu -= SLEEVE_HEADER + (SLEEVE_CRYPTO_OVERHEAD if encrypt else 0)
    return mtu


def validate_network(
    *,
    name: str,
    subnet: str,
    tenant: str | None = None,
    driver: str | None = None,
    backend: str | None = None,
    vni: int | None = None,
    gateway: str | None = None,
    mtu: int | None = None,
    encrypt: bool = False,
    options: dict[str, str] | None = None,
    underlay_mtu: int = 1500,
) -> Network:
    """A Network from user input, defaults filled in; vni may stay 0 (allocated later).

    Types are checked strictly (this is where JSON enters); an explicit MTU must fit
    the backend over `underlay_mtu` (this host's underlay)."""
    check_name(name, "network name")
    tenant = check_name(tenant or DEFAULT_TENANT, "tenant name")
    driver = check_str(driver, "driver") if driver is not None else DEFAULT_DRIVER
    if driver not in DRIVERS:
        raise InvalidInput(f"unknown driver {driver!r}: choose one of {', '.join(DRIVERS)}")
    backend = check_str(backend, "backend") if backend is not None else DRIVERS[driver][0]
    if backend not in DRIVERS[driver]:
        raise InvalidInput(
            f"driver {driver} has no backend {backend!r}: choose one of "
            f"{', '.join(DRIVERS[driver])}"
        )
    encrypt = check_bool(encrypt, "encrypt")
    if encrypt and (driver, backend) != ("weave", "sleeve"):
        raise InvalidInput("--encrypt needs --driver weave --backend sleeve")
    net = parse_subnet(subnet)
    gw = str(first_usable(net)) if gateway is None else str(parse_ip(gateway, "gateway"))
    gw_addr = netaddr.IPAddress(gw)
    if gw_addr not in net or gw_addr in (net.network, net.broadcast):
        raise InvalidInput(f"gateway {gw} is not a usable address of {net.cidr}")
    vni_value = 0 if vni is None else check_vni(vni)
    largest = network_mtu(backend, underlay_mtu, encrypt)
    mtu_value = largest if mtu is None else check_mtu(mtu)
    if mtu_value > largest:
        raise InvalidInput(
            f"MTU {mtu_value} is too large for {backend} over this host's underlay MTU "
            f"{underlay_mtu}: at most {largest} ({underlay_mtu} less "
            f"{underlay_mtu - largest} bytes of encapsulation)"
        )
    opts = {} if options is None else check_options(options)
    return Network(
        name=name,
        subnet=str(net.cidr),
        gateway=gw,
        vni=vni_value,
        mtu=mtu_value,
        tenant=tenant,
        driver=driver,
        backend=backend,
        encrypt=encrypt,
        options=opts,
    )


def check_underlay_fits(network: Network, underlay_mtu: int) -> None:
    """Refuse a network whose MTU plus encapsulation does not fit this underlay: big
    packets would vanish silently (a black hole), so say it up front."""
    largest = network_mtu(network.backend, underlay_mtu, network.encrypt)
    if network.mtu > largest:
        overhead = underlay_mtu - largest
        raise HostLimit(
            f"this host's underlay MTU {underlay_mtu} is too small for network "
            f"{network.name}: its MTU {network.mtu} plus {overhead} bytes of {network.backend} "
            f"encapsulation needs {network.mtu + overhead}; raise the underlay MTU or use "
            f"a network with MTU <= {largest}"
        )


def subnets_overlap(a: str, b: str) -> bool:
    na, nb = netaddr.IPNetwork(a), netaddr.IPNetwork(b)
    return na.first <= nb.last and nb.first <= na.last
