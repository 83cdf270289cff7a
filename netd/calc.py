"""This host's desired state, computed from the store's records and nothing else.

`network_state` is the pure rule: given a network, its endpoints, its hosts' roles and
the live hosts, what this host must have for it (or None: it does not serve it). A host
serves a network when it has a local endpoint on it or a role on it (it exposes it);
remote endpoints and peers count only while their host is alive (its leased registry
key exists).

`DesiredState` keeps the watched records decoded (each store event decodes only its own
record, through the one registry of record kinds in netd.store.keys) and applies that
rule incrementally: only networks touched by events since the last call are computed
again (all of them when hosts, this host or the driver set change). A NetworkState of an
untouched network is the very same object as before, and a driver whose networks and
records did not change gets the very same HostState, so cost per attach does not grow
with the endpoints of other networks, and a driver can skip what is unchanged by `is`.

No I/O here; tests drive it with plain objects.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter
from typing import Any

from netd.errors import NetdError
from netd.model import Endpoint, Host, HostRoles, Network, Publish, SecurityGroup
from netd.plugin import HostState, NetworkState
from netd.policy.compute import PolicyIndex
from netd.store.keys import Keys, Record, RecordKinds

log = logging.getLogger(__name__)

_by_name = attrgetter("name")


@dataclass(frozen=True)
class Snapshot:
    networks: Mapping[str, Network] = field(default_factory=dict)
    endpoints: Mapping[tuple[str, str], Endpoint] = field(default_factory=dict)
    hosts: Mapping[str, Host] = field(default_factory=dict)  # live hosts only (leased keys)
    secrets: Mapping[str, str] = field(default_factory=dict)  # network -> key (hex)
    roles: Mapping[tuple[str, str], HostRoles] = field(default_factory=dict)  # (net, host)
    publishes: Mapping[tuple[str, str], Publish] = field(default_factory=dict)  # (host, port)

    @classmethod
    def from_kvs(cls, keys: Keys, kvs: Mapping[str, str]) -> Snapshot:
        """Decode the raw store contents; records that fail to decode are skipped."""
        state = DesiredState(RecordKinds(keys))
        for key, value in kvs.items():
            state.put(key, value)
        return state.snapshot()


def decode(record: Record, value: str) -> Any:
    """The object a desired-state record holds; raises NetdError/ValueError if garbled."""
    if record.family == "networks":
        return Network.from_json(value)
    if record.family == "endpoints":
        return Endpoint.from_json(value)
    if record.family == "hosts":
        return Host.from_json(value)
    if record.family == "roles":
        return HostRoles.from_json(value)
    if record.family == "sg":
        return SecurityGroup.from_json(value)
    if record.family == "publish":
        return Publish.from_json(value)
    return value  # secrets (hex text), drivers' own records (their schema, raw)


def network_state(
    network: Network,
    members: Mapping[str, Sequence[Endpoint]],
    roles: Mapping[str, HostRoles],
    this_host: Host,
    alive: Mapping[str, Host],
    secret: str | None,
) -> NetworkState | None:
    """What this host must have for one network, or None if it does not serve it.

    `members`: the network's endpoints by host, each host's sorted by name; `alive`: the
    live hosts (this one may be among them); `roles`: host name -> its roles on this
    network. Remote endpoints come ordered by (host, name)."""
    me = this_host.name
    local = tuple(members.get(me, ()))
    mine = roles.get(me)
    my_roles = mine.roles if mine is not None else ()
    if not local and not my_roles:
        return None
    others = sorted(h for h, eps in members.items() if h != me and h in alive and eps)
    remote = tuple(chain.from_iterable(members[h] for h in others))
    peer_names = set(others)
    peer_names |= {h for h, r in roles.items() if h != me and r.roles and h in alive}
    return NetworkState(
        network=network,
        local=local,
        remote=remote,
        peers=tuple(alive[h] for h in sorted(peer_names)),
        secret=secret,
        roles=my_roles,
    )


def desired_states(
    snapshot: Snapshot, this_host: Host, drivers: Collection[str]
) -> dict[str, HostState]:
    """One HostState per driver in `drivers`: the networks this host serves (the whole
    computation at once; DesiredState does the same incrementally)."""
    hosts = {**snapshot.hosts, this_host.name: this_host}
    by_network: dict[str, dict[str, list[Endpoint]]] = defaultdict(lambda: defaultdict(list))
    for ep in sorted(snapshot.endpoints.values(), key=_by_name):
        by_network[ep.network][ep.host].append(ep)
    roles: dict[str, dict[str, HostRoles]] = defaultdict(dict)
    for (net, host), r in snapshot.roles.items():
        roles[net][host] = r
    per_driver: dict[str, dict[str, NetworkState]] = {d: {} for d in drivers}
    for name, network in sorted(snapshot.networks.items()):
        if network.driver not in per_driver:
            continue
        ns = network_state(network, by_network.get(name, {}), roles.get(name, {}),
                           this_host, snapshot.hosts, snapshot.secrets.get(name))
        if ns is not None:
            per_driver[network.driver][name] = ns
    return {
        driver: HostState(host=this_host, networks=nets, hosts=hosts)
        for driver, nets in per_driver.items()
    }


class DesiredState:
    """The decoded watched records and this host's desired state, kept incrementally.

    Not thread-safe: the reconciler's watch thread owns it (under its lock)."""

    def __init__(self, kinds: RecordKinds) -> None:
        self.kinds = kinds
        self._raw: dict[str, str] = {}
        self._networks: dict[str, Network] = {}
        self._endpoints: dict[str, _Members] = defaultdict(_Members)
        self._endpoint_count = 0
        self._hosts: dict[str, Host] = {}
        self._secrets: dict[str, str] = {}
        self._roles: dict[str, dict[str, HostRoles]] = defaultdict(dict)
        self._driver_records: dict[str, dict[str, str]] = defaultdict(dict)
        # security groups by (tenant, name): policy only (netd.policy), no driver's state
        self._groups: dict[tuple[str, str], SecurityGroup] = {}
        self.policy = PolicyIndex()  # this host's policy, kept current record by record
        # published host ports by (host, "<proto>-<port>"): the gateway only (netd.gateway)
        self._publishes: dict[tuple[str, str], Publish] = {}
        # what changed since the last states()
        self._touched: set[str] = set()  # network names
        self._touched_drivers: set[str] = set()  # drivers whose own records changed
        self._hosts_changed = True
        # the last result
        self._states: dict[str, HostState] = {}
        self._served: dict[str, dict[str, NetworkState]] = {}  # driver -> net -> state
        self._serving: dict[str, str] = {}  # network -> driver whose state holds it
        self._basis: tuple[Host, frozenset[str], Mapping[str, Host]] | None = None
        self._alive: dict[str, Host] = {}
        self._all_hosts: dict[str, Host] = {}

    # --- records ------------------------------------------------------------------
    def put(self, key: str, value: str) -> bool:
        """Take one record; True if desired state may depend on it."""
        record = self.kinds.classify(key)
        if record is None:
            return False
        if self._raw.get(key) == value:
            return True
        try:
            decoded = decode(record, value)
        except (NetdError, ValueError, TypeError) as exc:
            log.warning("skipping undecodable record %s: %s", key, exc)
            self.delete(key)
            return True
        self._drop(record)
        self._raw[key] = value
        self._keep(record, decoded)
        return True

    def delete(self, key: str) -> bool:
        record = self.kinds.classify(key)
        if record is None:
            return False
        if self._raw.pop(key, None) is not None:
            self._drop(record)
        return True

    def reset(self, kvs: Mapping[str, str]) -> None:
        """Replace every record (a re-list); everything is computed again."""
        for key in list(self._raw):
            if key not in kvs:
                self.delete(key)
        for key, value in kvs.items():
            self.put(key, value)
        self.touch_all()

    def touch_all(self) -> None:
        self._touched |= set(self._networks) | set(self._serving)
        self._touched_drivers |= set(self._driver_records) | set(self._states)
        self._hosts_changed = True

    def _keep(self, record: Record, obj: Any) -> None:
        family, parts = record.family, record.parts
        if family == "sg":
            self._groups[(parts[0], parts[1])] = obj
            self.policy.put_group(parts[0], parts[1], obj)
        elif family == "publish":
            self._publishes[(parts[0], parts[1])] = obj
        elif family == "networks":
            self._networks[parts[0]] = obj
            self.policy.put_network(obj)
            self._touched.add(parts[0])
        elif family == "endpoints":
            self._endpoints[parts[0]].put(parts[1], obj)
            self.policy.put_endpoint(obj)
            self._endpoint_count += 1
            self._touched.add(parts[0])
        elif family == "hosts":
            self._hosts[parts[0]] = obj
            self._hosts_changed = True
        elif family == "secrets":
            self._secrets[parts[0]] = obj
            self._touched.add(parts[0])
        elif family == "roles":
            self._roles[parts[0]][parts[1]] = obj
            self._touched.add(parts[0])
        elif family == "driver":
            for owner in record.owners:
                self._driver_records[owner]["".join(parts)] = obj
                self._touched_drivers.add(owner)

    def _drop(self, record: Record) -> None:
        family, parts = record.family, record.parts
        if family == "sg":
            self._groups.pop((parts[0], parts[1]), None)
            self.policy.drop_group(parts[0], parts[1])
        elif family == "publish":
            self._publishes.pop((parts[0], parts[1]), None)
        elif family == "networks":
            self.policy.drop_network(parts[0])
            if self._networks.pop(parts[0], None) is not None:
                self._touched.add(parts[0])
        elif family == "endpoints":
            self.policy.drop_endpoint(parts[0], parts[1])
            eps = self._endpoints.get(parts[0])
            if eps is not None and eps.pop(parts[1]):
                self._endpoint_count -= 1
                self._touched.add(parts[0])
                if not eps.host_of:
                    del self._endpoints[parts[0]]
        elif family == "hosts":
            if self._hosts.pop(parts[0], None) is not None:
                self._hosts_changed = True
        elif family == "secrets":
            if self._secrets.pop(parts[0], None) is not None:
                self._touched.add(parts[0])
        elif family == "roles":
            roles = self._roles.get(parts[0])
            if roles is not None and roles.pop(parts[1], None) is not None:
                self._touched.add(parts[0])
                if not roles:
                    del self._roles[parts[0]]
        elif family == "driver":
            for owner in record.owners:
                records = self._driver_records.get(owner)
                if records is not None and records.pop("".join(parts), None) is not None:
                    self._touched_drivers.add(owner)

    # --- reading ------------------------------------------------------------------
    def hosts(self) -> dict[str, Host]:
        return dict(self._hosts)

    def network(self, name: str) -> Network | None:
        return self._networks.get(name)

    def gateway_inputs(
        self, host: str
    ) -> tuple[dict[str, dict[str, HostRoles]], tuple[Publish, ...]]:
        """What netd.gateway computes from beside the drivers' states: every host's
        roles by network, and the host ports published on `host`."""
        roles = {n: dict(r) for n, r in self._roles.items()}
        published = tuple(p for (h, _), p in sorted(self._publishes.items()) if h == host)
        return roles, published

    def counts(self) -> tuple[int, int]:
        """(networks, endpoints) in the copy, without copying it."""
        return len(self._networks), self._endpoint_count

    def local_endpoints(self, host: str) -> int:
        return sum(len(m.by_host.get(host, ())) for m in self._endpoints.values())

    def snapshot(self) -> Snapshot:
        """A copy of every decoded record (costs a copy of everything: not per event)."""
        return Snapshot(
            networks=dict(self._networks),
            endpoints={(n, e.name): e for n, m in self._endpoints.items()
                       for eps in m.by_host.values() for e in eps},
            hosts=dict(self._hosts),
            secrets=dict(self._secrets),
            roles={(n, h): r for n, rs in self._roles.items() for h, r in rs.items()},
            publishes=dict(self._publishes),
        )

    # --- desired state ------------------------------------------------------------
    def states(
        self,
        this_host: Host,
        drivers: Collection[str],
        departed: Mapping[str, Host] | None = None,
    ) -> dict[str, HostState]:
        """One HostState per driver. `departed`: hosts whose key vanished but that still
        count as alive for a grace period (the reconciler decides which)."""
        departed = departed or {}
        basis = (this_host, frozenset(drivers), dict(departed))
        if self._hosts_changed or basis != self._basis:
            self._alive = {**departed, **self._hosts}
            self._all_hosts = {**self._alive, this_host.name: this_host}
            self._basis = basis
            self._hosts_changed = False
            self.touch_all()
            self._hosts_changed = False
            self._states = {}
        wanted = basis[1]
        changed_drivers = {d for d in self._touched_drivers if d in wanted}
        for name in self._touched:
            old = self._serving.pop(name, None)
            if old is not None:
                self._served.get(old, {}).pop(name, None)
                changed_drivers.add(old)
            network = self._networks.get(name)
            if network is None or network.driver not in wanted:
                continue
            ns = network_state(
                network, self._endpoints[name].by_host if name in self._endpoints else {},
                self._roles.get(name, {}),
                this_host, self._alive, self._secrets.get(name),
            )
            changed_drivers.add(network.driver)
            if ns is not None:
                self._served.setdefault(network.driver, {})[name] = ns
                self._serving[name] = network.driver
        self._touched.clear()
        self._touched_drivers.clear()
        for driver in wanted:
            if driver in changed_drivers or driver not in self._states:
                served = self._served.get(driver, {})
                self._states[driver] = HostState(
                    host=this_host,
                    networks={n: served[n] for n in sorted(served)},
                    hosts=self._all_hosts,
                    records=dict(self._driver_records.get(driver, {})),
                )
        for driver in [d for d in self._states if d not in wanted]:
            del self._states[driver]
        return dict(self._states)


class _Members:
    """One network's endpoints by host, each host's kept sorted by name as they come and
    go: a network of a thousand endpoints costs a list insert per event, and its local
    and remote tuples are copies of these lists, not a filter over every endpoint."""

    def __init__(self) -> None:
        self.host_of: dict[str, str] = {}  # endpoint name -> its host
        self.by_host: dict[str, list[Endpoint]] = {}
        self._names: dict[str, list[str]] = {}  # host -> its endpoints' names, sorted

    def put(self, name: str, ep: Endpoint) -> None:
        if self.host_of.get(name, ep.host) != ep.host:
            self.pop(name)
        names = self._names.setdefault(ep.host, [])
        eps = self.by_host.setdefault(ep.host, [])
        i = bisect_left(names, name)
        if i < len(names) and names[i] == name:
            eps[i] = ep
        else:
            names.insert(i, name)
            eps.insert(i, ep)
        self.host_of[name] = ep.host

    def pop(self, name: str) -> bool:
        host = self.host_of.pop(name, None)
        if host is None:
            return False
        names, eps = self._names[host], self.by_host[host]
        i = bisect_left(names, name)
        del names[i], eps[i]
        if not names:
            del self._names[host], self.by_host[host]
        return True
