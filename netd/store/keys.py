"""The key layout: the only place that builds or parses store key strings.

Documented in docs/keys.md; change both together. Everything netd owns lives under
one prefix (`/netd/` by default) so several clusters can share an etcd.

RecordKinds is the one registry of what the reconciler watches: the record kinds under
netd's root that make up desired state, plus the prefixes drivers declare (their own
schemas, e.g. flannel's subnet leases), each owned by one driver.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

DEFAULT_PREFIX = "/netd"

# record kinds under the root that desired state is computed from -> path parts after
# "<root><family>/" (networks/<n>, endpoints/<n>/<e>, hosts/<h>, secrets/<n>, roles/<n>/<h>)
DESIRED_KINDS: dict[str, int] = {
    "networks": 1,
    "endpoints": 2,
    "hosts": 1,
    "secrets": 1,
    "roles": 2,
    "sg": 2,  # sg/<tenant>/<group>: policy only (netd.policy), no driver's state
    "publish": 2,  # publish/<host>/<proto>-<port>: gateway only (netd.gateway)
}


@dataclass(frozen=True)
class Keys:
    prefix: str = DEFAULT_PREFIX

    # whole-cluster watch: every daemon watches this and nothing else
    def root(self) -> str:
        return f"{self.prefix}/"

    def tenants(self) -> str:
        return f"{self.prefix}/tenants/"

    def tenant(self, name: str) -> str:
        return f"{self.tenants()}{name}"

    def networks(self) -> str:
        return f"{self.prefix}/networks/"

    def network(self, name: str) -> str:
        return f"{self.networks()}{name}"

    def removals(self) -> str:
        return f"{self.prefix}/removing/"

    def network_removal(self, name: str) -> str:
        """Marks a network that `network rm` is removing: attaches are refused meanwhile."""
        return f"{self.removals()}{name}"

    def vnis(self) -> str:
        return f"{self.prefix}/vni/"

    def vni(self, vni: int) -> str:
        return f"{self.vnis()}{vni}"

    def endpoints(self, network: str | None = None) -> str:
        base = f"{self.prefix}/endpoints/"
        return base if network is None else f"{base}{network}/"

    def endpoint(self, network: str, name: str) -> str:
        return f"{self.endpoints(network)}{name}"

    def hosts(self) -> str:
        return f"{self.prefix}/hosts/"

    def host(self, name: str) -> str:
        return f"{self.hosts()}{name}"

    def security_groups(self, tenant: str | None = None) -> str:
        """Security groups are scoped by tenant: sg/<tenant>/<group>."""
        base = f"{self.prefix}/sg/"
        return base if tenant is None else f"{base}{tenant}/"

    def security_group(self, tenant: str, name: str) -> str:
        return f"{self.security_groups(tenant)}{name}"

    def security_group_removal(self, tenant: str, name: str) -> str:
        """Marks a group `sg rm` is removing: attaches and rules naming it are refused."""
        return f"{self.prefix}/sg-removing/{tenant}/{name}"

    def ipam(self, network: str) -> str:
        return f"{self.prefix}/ipam/{network}/"

    def ipam_addresses(self, network: str) -> str:
        return f"{self.ipam(network)}addr/"

    def ipam_address(self, network: str, ip: str) -> str:
        return f"{self.ipam_addresses(network)}{ip}"

    def ipam_names(self, network: str) -> str:
        return f"{self.ipam(network)}names/"

    def ipam_name(self, network: str, endpoint: str) -> str:
        return f"{self.ipam_names(network)}{endpoint}"

    def ipam_macs(self, network: str) -> str:
        return f"{self.ipam(network)}mac/"

    def ipam_mac(self, network: str, mac: str) -> str:
        """One endpoint's claim on a MAC address, so no two endpoints of a network share one."""
        return f"{self.ipam_macs(network)}{mac}"

    def numbers(self, space: str) -> str:
        """Small numeric ids of one kind ("endpoint", "tenant"): ipam.ids."""
        return f"{self.prefix}/ids/{space}/"

    def number(self, space: str, n: int) -> str:
        return f"{self.numbers(space)}{n}"

    def roles(self, network: str | None = None) -> str:
        base = f"{self.prefix}/roles/"
        return base if network is None else f"{base}{network}/"

    def host_role(self, network: str, host: str) -> str:
        """A host's roles on a network (e.g. it exposes it): the host serves the network
        even without a local endpoint on it."""
        return f"{self.roles(network)}{host}"

    def publishes(self, host: str | None = None) -> str:
        base = f"{self.prefix}/publish/"
        return base if host is None else f"{base}{host}/"

    def publish(self, host: str, protocol: str, host_port: int) -> str:
        """A host port published on `host` (netctl publish): one record per host port."""
        return f"{self.publishes(host)}{protocol}-{host_port}"

    def secrets(self) -> str:
        return f"{self.prefix}/secrets/"

    def network_key(self, network: str) -> str:
        """The per-network encryption key (weave sleeve --encrypt)."""
        return f"{self.secrets()}{network}"

    def docker(self, host: str) -> str:
        """What this host's Docker plugin must remember (dockerd never replays it):
        Docker's ids are per dockerd, so per host."""
        return f"{self.prefix}/docker/{host}/"

    def docker_networks(self, host: str) -> str:
        return f"{self.docker(host)}networks/"

    def docker_network(self, host: str, network_id: str) -> str:
        """A Docker network id -> the netd network it maps to (and what Docker asked)."""
        return f"{self.docker_networks(host)}{network_id}"

    def docker_endpoints(self, host: str) -> str:
        return f"{self.docker(host)}endpoints/"

    def docker_endpoint(self, host: str, endpoint_id: str) -> str:
        """A Docker endpoint id -> its netd network, address, MAC and endpoint name."""
        return f"{self.docker_endpoints(host)}{endpoint_id}"

    def kind_of(self, key: str) -> tuple[str, tuple[str, ...]] | None:
        """('networks', ('net1',)), ('endpoints', ('net1', 'c1')), ... or None."""
        if not key.startswith(self.root()):
            return None
        parts = key[len(self.root()) :].split("/")
        return parts[0], tuple(parts[1:])


@dataclass(frozen=True)
class Record:
    """What a watched key is: a desired-state kind under netd's root (`family` is one of
    DESIRED_KINDS, `parts` the names in its path), or a record under a prefix a driver
    declared (`family` "driver", `owners` the drivers that declared the prefix, `parts`
    (prefix, rest of key))."""

    family: str
    parts: tuple[str, ...]
    owners: tuple[str, ...] = ()


class RecordKinds:
    """The one registry of watched records: netd's own root plus drivers' prefixes."""

    def __init__(self, keys: Keys, driver_prefixes: Mapping[str, Iterable[str]] = {}) -> None:
        self.keys = keys
        root = keys.root()
        owners: dict[str, list[str]] = {}  # prefix -> drivers that declared it
        for driver, prefixes in driver_prefixes.items():
            for prefix in prefixes:
                if not prefix.endswith("/"):
                    raise ValueError(f"driver {driver}: watch prefix {prefix!r} must end in /")
                if root.startswith(prefix) or any(
                    prefix.startswith(f"{root}{family}/") or f"{root}{family}/".startswith(prefix)
                    for family in DESIRED_KINDS
                ):
                    raise ValueError(f"driver {driver}: watch prefix {prefix!r} overlaps "
                                     f"netd's own records under {root}")
                owners.setdefault(prefix, []).append(driver)
        self._foreign = sorted((p, tuple(d)) for p, d in owners.items())

    def prefixes(self) -> list[str]:
        """Every prefix to list and watch: the root first, then drivers' prefixes (one
        inside another declared prefix is watched through the outer one)."""
        root = self.keys.root()
        # a declared prefix inside netd's root arrives through the root's own watch
        declared = [p for p, _ in self._foreign if not p.startswith(root)]
        outer = [p for p in declared if not any(p != q and p.startswith(q) for q in declared)]
        return [self.keys.root(), *outer]

    def classify(self, key: str) -> Record | None:
        """The record a key holds, or None for keys desired state does not depend on
        (IPAM claims, VNI index, tenants, removal markers ...)."""
        kind = self.keys.kind_of(key)
        if kind is not None:
            family, parts = kind
            if family in DESIRED_KINDS:
                if DESIRED_KINDS[family] == len(parts) and all(parts):
                    return Record(family, parts)
                return None
        matching = [(p, d) for p, d in self._foreign if key.startswith(p)]
        if not matching:
            return None
        owners = tuple(sorted({o for _, drivers in matching for o in drivers}))
        prefix = max((p for p, _ in matching), key=len)
        return Record("driver", (prefix, key[len(prefix) :]), owners)
