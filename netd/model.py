"""The objects netd stores, as frozen dataclasses validated at the edge.

Everything that enters netd (API request, store read) becomes one of these through a
`validate_*`/`from_dict` function that raises InvalidInput with a message naming the
bad field. Inside netd the objects are trusted. Store values are their JSON.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal, Self

import netaddr

from netd.errors import HostLimit, InvalidInput

if TYPE_CHECKING:
    from netd.plugin import BackendSpec, DriverSpec

DEFAULT_DRIVER = "weave"
DEFAULT_TENANT = "default"
VNI_MIN, VNI_MAX = 1, 16_777_215
MTU_MIN, MTU_MAX = 68, 65_535
# The weave sleeve wire format's constants, still imported from here by plugins.weave
# (sleeve, crypto); the overheads that reach MTUs come from the driver's BackendSpec.

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_IFNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
_MAC_RE = re.compile(r"([0-9a-f]{2}:){5}[0-9a-f]{2}")
# patterns are used with fullmatch: `$` would also accept a trailing newline


def check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise InvalidInput(
            f"invalid {what} {value!r}: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def check_ifname(value: str) -> str:
    if not isinstance(value, str) or not _IFNAME_RE.fullmatch(value) or value in (".", ".."):
        raise InvalidInput(
            f"invalid interface name {value!r}: 1-15 letters, digits, '.', '_' or '-'"
        )
    return value


def check_mac(value: str) -> str:
    mac = str(value).lower()
    if not _MAC_RE.fullmatch(mac):
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


def check_options(value: Any, spec: DriverSpec) -> dict[str, str]:
    """Driver options (`-o KEY=VALUE`): only the keys the driver declares, each value
    parsing as the declared type. Stored as text in a canonical form (ints in decimal,
    bools as true/false); a JSON number or boolean is accepted for int/bool options."""
    if not isinstance(value, dict):
        raise InvalidInput(f"invalid driver options {value!r}: expected an object of KEY: VALUE")
    valid = ", ".join(o.name for o in spec.options)
    core = f"; every network also takes {', '.join(CORE_OPTIONS)}"
    out: dict[str, str] = {}
    for key, item in value.items():
        option = spec.option(key) if isinstance(key, str) else None
        if option is None and isinstance(key, str) and key in CORE_OPTIONS:
            out[key] = _option_text(spec.name, key, CORE_OPTIONS[key][0], item)
            continue
        if option is None:
            raise InvalidInput(
                f"unknown driver option {key!r} for driver {spec.name}: "
                + (f"valid options are {valid}" if valid else "it takes no options") + core
            )
        out[key] = _option_text(spec.name, key, option.type, item)
    return out


def _option_text(driver: str, key: str, kind: type, value: Any) -> str:
    bad = InvalidInput(
        f"invalid value {value!r} for option {key} of driver {driver}: expected "
        + {"int": "an integer", "bool": "true or false"}.get(kind.__name__, "a string")
    )
    if kind is bool:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower()
        raise bad
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value.strip()):
            return str(int(value))
        raise bad
    if not isinstance(value, str):
        raise bad
    return value


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
    if str(net) != value:
        raise InvalidInput(f"invalid subnet {value!r}: write it as {net.cidr}")
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
    if ip.version != 4 or str(ip) != value:
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
        # the subnet is stored validated as "a.b.c.d/len": no parse per call (drivers ask
        # per endpoint on every apply)
        return int(self.subnet.rpartition("/")[2])


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


@dataclass(frozen=True)
class HostRoles(_Record):
    """A host's roles on a network (e.g. "expose"): the host serves the network even
    with no local endpoint on it."""

    network: str
    host: str
    roles: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        data = dict(data)
        data["roles"] = tuple(data.get("roles", ()))
        return super().from_dict(data)


PUBLISH_PROTOCOLS = ("tcp", "udp")


@dataclass(frozen=True)
class Publish(_Record):
    """A host port forwarded to an endpoint's port (`netctl publish`): DNAT on the
    endpoint's host from its underlay address and loopback. Keyed by (host, protocol,
    host port), so one host port is published once per host."""

    host: str
    protocol: str  # tcp | udp
    host_port: int
    network: str
    endpoint: str
    port: int


# options every network takes whatever its driver (netd.gateway), beside the driver's own
CORE_OPTIONS: dict[str, tuple[type, str, Any]] = {
    "egress": (bool, "containers reach hosts outside the overlay through their own host, "
               "masqueraded to its underlay address", True),
}


def network_egress(network: Network) -> bool:
    return network.options.get("egress", "true") != "false"


def network_mtu(backend: BackendSpec, underlay_mtu: int, encrypt: bool = False) -> int:
    """The largest inner IP packet the backend carries over an underlay of this MTU."""
    return (underlay_mtu - backend.overhead
            - (backend.encryption_overhead if encrypt else 0))


def driver_spec(drivers: Mapping[str, DriverSpec], driver: str) -> DriverSpec:
    """The loaded driver's spec, or a refusal naming the drivers this netd has."""
    spec = drivers.get(driver)
    if spec is None:
        available = ", ".join(sorted(drivers)) or "none"
        raise InvalidInput(
            f"driver {driver} is not available in this netd (available: {available})"
        )
    return spec


def backend_spec(spec: DriverSpec, backend: str) -> BackendSpec:
    found = spec.backend(backend)
    if found is None:
        raise InvalidInput(
            f"driver {spec.name} has no backend {backend!r}: choose one of "
            f"{', '.join(b.name for b in spec.backends)}"
        )
    return found


def validate_network(
    *,
    drivers: Mapping[str, DriverSpec],
    name: str,
    subnet: str,
    tenant: str | None = None,
    driver: str | None = None,
    backend: str | None = None,
    vni: int | None = None,
    gateway: str | None = None,
    mtu: int | None = None,
    encrypt: bool = False,
    options: dict[str, Any] | None = None,
    underlay_mtu: int = 1500,
) -> Network:
    """A Network from user input, defaults filled in; vni may stay 0 (allocated later).

    `drivers`: the specs of the drivers this netd loaded; the driver, its backend,
    encryption and options must be ones they declare. Types are checked strictly (this
    is where JSON enters); an explicit MTU must fit the backend over `underlay_mtu`."""
    check_name(name, "network name")
    tenant = check_name(tenant or DEFAULT_TENANT, "tenant name")
    driver = check_str(driver, "driver") if driver is not None else DEFAULT_DRIVER
    spec = driver_spec(drivers, driver)
    backend = check_str(backend, "backend") if backend is not None else spec.default_backend
    bspec = backend_spec(spec, backend)
    encrypt = check_bool(encrypt, "encrypt")
    if encrypt and not bspec.encryption:
        capable = [f"--driver {d.name} --backend {b.name}"
                   for d in drivers.values() for b in d.backends if b.encryption]
        raise InvalidInput(
            f"backend {backend} of driver {driver} cannot encrypt"
            + (f": --encrypt needs {' or '.join(capable)}" if capable else "")
        )
    opts = {} if options is None else check_options(options, spec)
    net = parse_subnet(subnet)
    gw = str(first_usable(net)) if gateway is None else str(parse_ip(gateway, "gateway"))
    gw_addr = netaddr.IPAddress(gw)
    if gw_addr not in net or gw_addr in (net.network, net.broadcast):
        raise InvalidInput(f"gateway {gw} is not a usable address of {net.cidr}")
    vni_value = 0 if vni is None else check_vni(vni)
    largest = network_mtu(bspec, underlay_mtu, encrypt)
    mtu_value = largest if mtu is None else check_mtu(mtu)
    if mtu_value > largest:
        raise InvalidInput(
            f"MTU {mtu_value} is too large for {backend} over this host's underlay MTU "
            f"{underlay_mtu}: at most {largest} ({underlay_mtu} less "
            f"{underlay_mtu - largest} bytes of encapsulation)"
        )
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


def check_underlay_fits(network: Network, underlay_mtu: int, backend: BackendSpec) -> None:
    """Refuse a network whose MTU plus encapsulation does not fit this underlay: big
    packets would vanish silently (a black hole), so say it up front."""
    largest = network_mtu(backend, underlay_mtu, network.encrypt)
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
