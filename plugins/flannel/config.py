"""flannel's network config and subnet-lease schema, as flanneld reads and writes them.

Why its own module: interop with the real flanneld rests on two things only, the etcd
schema and the wire format. The schema is here, with flannel's exact JSON field names:

  <prefix>/config                  {"Network", "SubnetLen", "SubnetMin", "SubnetMax",
                                    "Backend": {"Type", "VNI", "Port", "DirectRouting"}}
  <prefix>/subnets/<a.b.c.d-len>   {"PublicIP", "PublicIPv6", "BackendType",
                                    "BackendData": {"VNI", "VtepMAC"}}  (under an etcd lease)

A netd network's `-o` options are the config's values; `FlannelConfig.of(network)`
fills flannel's defaults for the absent ones (VNI 1, port 8472 for vxlan and 8285 for
udp, SubnetLen 24, SubnetMin the second subnet, SubnetMax the last). These keys belong
to flannel's schema, not to netd's key layout (netd.store.keys), so they are built here.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from dataclasses import dataclass, replace
from typing import Any

from netd.errors import Conflict, InvalidInput
from netd.model import Network

DEFAULT_ROOT = "/flannel/"  # under netd's own prefix: <keys.prefix>/flannel/<network>
COREOS_PREFIX = "/coreos.com/network"  # flanneld's default etcd prefix
VXLAN_PORT = 8472  # the kernel's (and flanneld's) default VXLAN port
UDP_PORT = 8285  # flannel's udp backend
DEFAULT_VNI = 1
DEFAULT_LEASE_TTL = 24 * 3600  # flannel's subnet lease TTL
OPTION_KEYS = ("prefix", "subnet_len", "subnet_min", "subnet_max", "vni", "port",
               "direct_routing", "lease_ttl")


def _net(text: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(text, strict=True)


@dataclass(frozen=True)
class FlannelConfig:
    prefix: str
    network: str  # CIDR
    backend: str  # vxlan | udp | host-gw
    subnet_len: int
    subnet_min: str  # address of the first subnet that may be leased
    subnet_max: str  # address of the last
    vni: int
    port: int
    direct_routing: bool
    lease_ttl: int

    # --- from a netd network --------------------------------------------------------
    @classmethod
    def of(cls, network: Network, root: str) -> FlannelConfig:
        """The network's flannel config: its options, flannel's defaults for the rest.
        `root` is netd's key prefix (e.g. "/netd"). InvalidInput when they do not fit."""
        opts = network.options
        prefix = opts.get("prefix") or f"{root}{DEFAULT_ROOT}{network.name}"
        net = _net(network.subnet)
        subnet_len = int(opts.get("subnet_len") or default_subnet_len(net.prefixlen))
        if not net.prefixlen < subnet_len <= 30:
            raise InvalidInput(
                f"invalid subnet_len {subnet_len} for network {network.subnet}: must be "
                f"longer than /{net.prefixlen} and at most /30"
            )
        size = 1 << (32 - subnet_len)
        first = int(net.network_address)
        lowest, highest = first + size, int(net.broadcast_address) + 1 - size
        subnet_min = opts.get("subnet_min") or str(ipaddress.IPv4Address(lowest))
        subnet_max = opts.get("subnet_max") or str(ipaddress.IPv4Address(highest))
        for what, value in (("subnet_min", subnet_min), ("subnet_max", subnet_max)):
            try:
                addr = int(ipaddress.IPv4Address(value))
            except ValueError:
                raise InvalidInput(f"invalid {what} {value!r}: expected an IPv4 address") from None
            if not first <= addr <= highest or (addr - first) % size:
                raise InvalidInput(
                    f"invalid {what} {value}: must be the start of a /{subnet_len} inside "
                    f"{network.subnet}"
                )
        if int(ipaddress.IPv4Address(subnet_min)) > int(ipaddress.IPv4Address(subnet_max)):
            raise InvalidInput(f"subnet_min {subnet_min} is above subnet_max {subnet_max}")
        default_port = {"vxlan": VXLAN_PORT, "udp": UDP_PORT}.get(network.backend, 0)
        port = int(opts.get("port") or default_port)
        vni = int(opts.get("vni") or DEFAULT_VNI)
        if not 0 <= port <= 65535:
            raise InvalidInput(f"invalid port {port}: must be 1..65535")
        if not 1 <= vni <= 16_777_215:
            raise InvalidInput(f"invalid vni {vni}: must be 1..16777215")
        ttl = int(opts.get("lease_ttl") or DEFAULT_LEASE_TTL)
        if ttl < 2:
            raise InvalidInput(f"invalid lease_ttl {ttl}: at least 2 seconds")
        if not prefix.startswith("/") or prefix.endswith("/"):
            raise InvalidInput(f"invalid prefix {prefix!r}: an etcd key path like "
                               f"{COREOS_PREFIX}, without a trailing /")
        return cls(
            prefix=prefix, network=str(net), backend=network.backend, subnet_len=subnet_len,
            subnet_min=subnet_min, subnet_max=subnet_max, vni=vni, port=port,
            direct_routing=opts.get("direct_routing") == "true", lease_ttl=ttl,
        )

    def options(self) -> dict[str, str]:
        """The network's options, every value explicit (as `check_options` stores them)."""
        return {
            "prefix": self.prefix, "subnet_len": str(self.subnet_len),
            "subnet_min": self.subnet_min, "subnet_max": self.subnet_max,
            "vni": str(self.vni), "port": str(self.port),
            "direct_routing": "true" if self.direct_routing else "false",
            "lease_ttl": str(self.lease_ttl),
        }

    # --- flannel's schema -----------------------------------------------------------
    @property
    def config_key(self) -> str:
        return f"{self.prefix}/config"

    @property
    def subnets_prefix(self) -> str:
        return f"{self.prefix}/subnets/"

    def subnet_key(self, subnet: str) -> str:
        return f"{self.subnets_prefix}{subnet_key_name(subnet)}"

    def to_json(self) -> str:
        backend: dict[str, Any] = {"Type": self.backend}
        if self.backend == "vxlan":
            backend.update(VNI=self.vni, Port=self.port, DirectRouting=self.direct_routing)
        elif self.backend == "udp":
            backend["Port"] = self.port
        return json.dumps({
            "Network": self.network, "SubnetLen": self.subnet_len,
            "SubnetMin": self.subnet_min, "SubnetMax": self.subnet_max, "Backend": backend,
        })

    def candidates(self) -> list[str]:
        """Every subnet that may be leased, in order."""
        size = 1 << (32 - self.subnet_len)
        low = int(ipaddress.IPv4Address(self.subnet_min))
        high = int(ipaddress.IPv4Address(self.subnet_max))
        return [f"{ipaddress.IPv4Address(a)}/{self.subnet_len}" for a in range(low, high + 1, size)]

    def leasable(self, subnet: str) -> bool:
        """`subnet` is one this config could lease (a restart's old lease still fits)."""
        net = _net(subnet)
        low = int(ipaddress.IPv4Address(self.subnet_min))
        high = int(ipaddress.IPv4Address(self.subnet_max))
        return net.prefixlen == self.subnet_len and low <= int(net.network_address) <= high


def default_subnet_len(network_len: int) -> int:
    """flannel's default: /24 for networks wider than /24, else one bit longer."""
    return 24 if network_len < 24 else network_len + 1


def adopt(config: FlannelConfig, stored: str, given: dict[str, str]) -> FlannelConfig:
    """The config to use when `stored` (flannel's JSON at <prefix>/config) exists: its
    values win over defaults, a value given explicitly (`given`, the user's options)
    or the network's subnet/backend that differs is refused (Conflict)."""
    try:
        data = json.loads(stored)
        backend = data.get("Backend") or {}
        net = str(_net(str(data["Network"])))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise Conflict(f"{config.config_key} holds no valid flannel config: {stored[:200]!r}"
                       ) from None
    where = f"the flannel config at {config.config_key}"
    if net != config.network:
        raise Conflict(f"{where} has Network {net}; this network's subnet {config.network} "
                       f"conflicts (use --subnet {net} to join it)")
    btype = str(backend.get("Type") or "udp")  # flannel's default backend
    if btype != config.backend:
        raise Conflict(f"{where} has Backend.Type {btype}; --backend {config.backend} "
                       f"conflicts (use --backend {btype} to join it)")
    size_default = default_subnet_len(_net(net).prefixlen)
    found = FlannelConfig.of(
        Network(name="adopted", subnet=net, gateway="", vni=0, mtu=0, driver="flannel",
                backend=btype, options={
                    "prefix": config.prefix,
                    "subnet_len": str(data.get("SubnetLen") or size_default),
                    "subnet_min": str(data.get("SubnetMin") or ""),
                    "subnet_max": str(data.get("SubnetMax") or ""),
                    "vni": str(backend.get("VNI") or ""),
                    "port": str(backend.get("Port") or ""),
                    "direct_routing": "true" if backend.get("DirectRouting") else "false",
                }),
        "",
    )
    found = replace(found, lease_ttl=config.lease_ttl)
    mine = found.options()
    for key, value in given.items():
        if key in ("prefix", "lease_ttl"):
            continue
        if mine.get(key) != value:
            raise Conflict(f"{where} has {key} {mine.get(key)}; -o {key}={value} conflicts")
    return found


# --- subnet leases -------------------------------------------------------------------
@dataclass(frozen=True)
class SubnetLease:
    """One record under <prefix>/subnets/: a host's subnet and how to reach it."""

    subnet: str  # CIDR
    public_ip: str
    backend_type: str
    vtep_mac: str = ""  # vxlan only
    vni: int = 0  # vxlan only

    def to_json(self) -> str:
        data: dict[str, Any] = {"PublicIP": self.public_ip, "PublicIPv6": None,
                                "BackendType": self.backend_type}
        if self.backend_type == "vxlan":
            data["BackendData"] = {"VNI": self.vni, "VtepMAC": self.vtep_mac}
        return json.dumps(data)

    @property
    def network_address(self) -> str:
        return self.subnet.split("/")[0]

    @property
    def gateway(self) -> str:
        """The first usable address: the host's bridge (flannel's FLANNEL_SUBNET)."""
        return str(_net(self.subnet).network_address + 1)

    @property
    def prefixlen(self) -> int:
        return int(self.subnet.split("/")[1])


def subnet_key_name(subnet: str) -> str:
    """"10.5.3.0/24" -> "10.5.3.0-24" (flannel's MakeSubnetKey)."""
    return subnet.replace("/", "-")


def parse_subnet_key(name: str) -> str | None:
    """"10.5.3.0-24" -> "10.5.3.0/24"; None for anything else (IPv6 parts ignored)."""
    base = name.split("&", 1)[0]
    ip, sep, plen = base.rpartition("-")
    if not sep or not plen.isdigit():
        return None
    try:
        return str(_net(f"{ip}/{int(plen)}"))
    except ValueError:
        return None


def parse_lease(name: str, value: str) -> SubnetLease | None:
    """A lease record as flanneld or netd wrote it; None when it is not one."""
    subnet = parse_subnet_key(name)
    if subnet is None:
        return None
    try:
        data = json.loads(value)
        public_ip = str(ipaddress.IPv4Address(data["PublicIP"]))
        backend_type = str(data.get("BackendType") or "")
        backend_data = data.get("BackendData") or {}
        if not isinstance(backend_data, dict):
            backend_data = {}
        mac = str(backend_data.get("VtepMAC") or "").lower()
        vni = backend_data.get("VNI") or 0
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return SubnetLease(subnet, public_ip, backend_type, mac, int(vni or 0))


def vtep_mac(host: str, network: str) -> str:
    """A stable, locally administered unicast MAC for this host's VTEP of a network:
    the same after a restart or a recreated device, so peers' entries stay valid."""
    digest = hashlib.sha256(f"{host}/{network}".encode()).digest()
    return "0e:" + ":".join(f"{b:02x}" for b in digest[:5])
