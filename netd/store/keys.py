"""The key layout: the only place that builds or parses store key strings.

Documented in docs/keys.md; change both together. Everything netd owns lives under
one prefix (`/netd/` by default) so several clusters can share an etcd.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "/netd"


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

    def security_groups(self) -> str:
        return f"{self.prefix}/sg/"

    def security_group(self, name: str) -> str:
        return f"{self.security_groups()}{name}"

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

    def secrets(self) -> str:
        return f"{self.prefix}/secrets/"

    def network_key(self, network: str) -> str:
        """The per-network encryption key (weave sleeve --encrypt)."""
        return f"{self.secrets()}{network}"

    def kind_of(self, key: str) -> tuple[str, tuple[str, ...]] | None:
        """('networks', ('net1',)), ('endpoints', ('net1', 'c1')), ... or None."""
        if not key.startswith(self.root()):
            return None
        parts = key[len(self.root()) :].split("/")
        return parts[0], tuple(parts[1:])
