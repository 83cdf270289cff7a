"""Pure computation of this host's desired state from a store snapshot.

No I/O here: the reconciler feeds a Snapshot (decoded store contents) and the host's
name, and gets one HostState per driver. Tests drive this with plain objects.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

from netd.errors import NetdError
from netd.model import Endpoint, Host, Network
from netd.plugin import HostState, NetworkState
from netd.store.keys import Keys

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    networks: Mapping[str, Network] = field(default_factory=dict)
    endpoints: Mapping[tuple[str, str], Endpoint] = field(default_factory=dict)
    hosts: Mapping[str, Host] = field(default_factory=dict)  # live hosts only (leased keys)
    secrets: Mapping[str, str] = field(default_factory=dict)  # network -> key (hex)

    @classmethod
    def from_kvs(cls, keys: Keys, kvs: Mapping[str, str]) -> Snapshot:
        """Decode the raw store contents; records that fail to decode are skipped."""
        networks: dict[str, Network] = {}
        endpoints: dict[tuple[str, str], Endpoint] = {}
        hosts: dict[str, Host] = {}
        secrets: dict[str, str] = {}
        for key, value in kvs.items():
            kind = keys.kind_of(key)
            if kind is None:
                continue
            family, parts = kind
            try:
                if family == "networks" and len(parts) == 1:
                    networks[parts[0]] = Network.from_json(value)
                elif family == "endpoints" and len(parts) == 2:
                    endpoints[(parts[0], parts[1])] = Endpoint.from_json(value)
                elif family == "hosts" and len(parts) == 1:
                    hosts[parts[0]] = Host.from_json(value)
                elif family == "secrets" and len(parts) == 1:
                    secrets[parts[0]] = value
            except (NetdError, ValueError) as exc:
                log.warning("skipping undecodable record %s: %s", key, exc)
        return cls(networks=networks, endpoints=endpoints, hosts=hosts, secrets=secrets)


def desired_states(
    snapshot: Snapshot, this_host: Host, drivers: set[str]
) -> dict[str, HostState]:
    """One HostState per driver in `drivers`: the networks this host serves.

    A host serves a network when it has a local endpoint on it. Remote endpoints and
    peers count only while their host is alive (its leased registry key exists).
    """
    hosts = dict(snapshot.hosts)
    hosts[this_host.name] = this_host
    by_network: dict[str, list[Endpoint]] = defaultdict(list)
    for ep in snapshot.endpoints.values():
        by_network[ep.network].append(ep)

    per_driver: dict[str, dict[str, NetworkState]] = {d: {} for d in drivers}
    for name, network in sorted(snapshot.networks.items()):
        if network.driver not in per_driver:
            continue
        members = sorted(by_network.get(name, ()), key=lambda e: e.name)
        local = tuple(e for e in members if e.host == this_host.name)
        if not local:
            continue
        remote = tuple(
            e for e in members if e.host != this_host.name and e.host in snapshot.hosts
        )
        peer_names = sorted({e.host for e in remote})
        per_driver[network.driver][name] = NetworkState(
            network=network,
            local=local,
            remote=remote,
            peers=tuple(hosts[h] for h in peer_names),
            secret=snapshot.secrets.get(name),
        )
    return {
        driver: HostState(host=this_host, networks=nets, hosts=hosts)
        for driver, nets in per_driver.items()
    }
