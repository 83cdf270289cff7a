"""What the Docker plugin must remember because dockerd never tells it again, in netd's store.

dockerd sends CreateNetwork and CreateEndpoint once and never replays them to a
restarted plugin, yet keeps calling Join, Leave and DeleteEndpoint with bare ids. So
the plugin keeps, per Docker network id, the netd network it maps to (and what Docker
asked for), and per endpoint id its network, address, MAC and netd endpoint name. Both
live in the store under this host's Docker prefix (`Keys.docker_network`,
`Keys.docker_endpoint`, docs/keys.md): a netd restarted (even killed) reads them back.
Only this host's netd writes under its prefix, so the records are read once at start
and kept in memory, written through on every change. Pools need no state: their ids
spell the subnet.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from netd.store.base import Store
from netd.store.keys import Keys


class PluginState:
    def __init__(self, store: Store | None, keys: Keys | None = None, host: str = "") -> None:
        """`store`: netd's store, records kept under `host`'s Docker prefix (None:
        memory only, for tests)."""
        self.store = store
        self.keys = keys or Keys()
        self.host = host
        self._lock = threading.Lock()
        self.networks: dict[str, dict[str, Any]] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        if store is not None:
            self.networks = self._read(self.keys.docker_networks(host))
            self.endpoints = self._read(self.keys.docker_endpoints(host))

    def _read(self, prefix: str) -> dict[str, dict[str, Any]]:
        assert self.store is not None
        records: dict[str, dict[str, Any]] = {}
        for kv in self.store.list(prefix)[0]:
            try:
                value = json.loads(kv.value)
            except ValueError:
                continue
            if isinstance(value, dict):
                records[kv.key[len(prefix):]] = value
        return records

    def network(self, network_id: str) -> dict[str, Any] | None:
        with self._lock:
            record = self.networks.get(network_id)
            return dict(record) if record is not None else None

    def endpoint(self, endpoint_id: str) -> dict[str, Any] | None:
        with self._lock:
            record = self.endpoints.get(endpoint_id)
            return dict(record) if record is not None else None

    def put_network(self, network_id: str, record: dict[str, Any]) -> None:
        with self._lock:
            if self.networks.get(network_id) == record:
                return
            self.networks[network_id] = dict(record)
            self._put(self.keys.docker_network(self.host, network_id), record)

    def drop_network(self, network_id: str) -> None:
        with self._lock:
            if self.networks.pop(network_id, None) is not None:
                self._delete(self.keys.docker_network(self.host, network_id))

    def put_endpoint(self, endpoint_id: str, record: dict[str, Any]) -> None:
        with self._lock:
            if self.endpoints.get(endpoint_id) == record:
                return
            self.endpoints[endpoint_id] = dict(record)
            self._put(self.keys.docker_endpoint(self.host, endpoint_id), record)

    def drop_endpoint(self, endpoint_id: str) -> None:
        with self._lock:
            if self.endpoints.pop(endpoint_id, None) is not None:
                self._delete(self.keys.docker_endpoint(self.host, endpoint_id))

    def pending_ips(self) -> set[str]:
        with self._lock:
            return {str(e["ip"]) for e in self.endpoints.values() if e.get("ip")}

    def _put(self, key: str, record: dict[str, Any]) -> None:
        if self.store is not None:
            self.store.put(key, json.dumps(record, sort_keys=True))

    def _delete(self, key: str) -> None:
        if self.store is not None:
            self.store.delete(key)
