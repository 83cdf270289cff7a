"""What the Docker plugin must remember because dockerd never tells it again.

dockerd sends CreateNetwork and CreateEndpoint once and never replays them to a
restarted plugin, yet keeps calling Join, Leave and DeleteEndpoint with bare ids. So
the plugin keeps, per Docker network id, the netd network it maps to (and what Docker
asked for), and per endpoint id its network and address. The file is small, rewritten
whole and atomically (write, fsync, rename) after every change. Pools need no state:
their ids spell the subnet.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Any


class PluginState:
    def __init__(self, path: Path | None) -> None:
        """`path`: the state file (None: memory only, for tests)."""
        self.path = path
        self._lock = threading.Lock()
        self.networks: dict[str, dict[str, Any]] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        if path is not None and path.exists():
            data = json.loads(path.read_text() or "{}")
            self.networks = dict(data.get("networks", {}))
            self.endpoints = dict(data.get("endpoints", {}))

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
            self.networks[network_id] = dict(record)
            self._save()

    def drop_network(self, network_id: str) -> None:
        with self._lock:
            if self.networks.pop(network_id, None) is not None:
                self._save()

    def put_endpoint(self, endpoint_id: str, record: dict[str, Any]) -> None:
        with self._lock:
            self.endpoints[endpoint_id] = dict(record)
            self._save()

    def drop_endpoint(self, endpoint_id: str) -> None:
        with self._lock:
            if self.endpoints.pop(endpoint_id, None) is not None:
                self._save()

    def pending_ips(self) -> set[str]:
        with self._lock:
            return {str(e["ip"]) for e in self.endpoints.values() if e.get("ip")}

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = json.dumps({"networks": self.networks, "endpoints": self.endpoints}, indent=1)
        with open(tmp, "w") as f:
            f.write(data)
            f.flush()
            with contextlib.suppress(OSError):
                os.fsync(f.fileno())
        os.replace(tmp, self.path)
