"""netd's socket API from a test without a netctl process (a netctl start costs ~1 s on a
loaded 2-core machine): GET a path, wait for a host's first full sync."""

from __future__ import annotations

import http.client
import json
import socket
import time
from pathlib import Path
from typing import Any

from netd.lab import Lab


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float = 10) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self.path))
        self.sock = sock


def api(lab: Lab, host: str, path: str) -> Any:
    """GET `path` from `host`'s netd over its socket."""
    conn = UnixHTTPConnection(lab.hosts[host].socket)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == 200, body
    return json.loads(body)


def synced(lab: Lab, host: str, timeout: float = 30) -> None:
    """Wait until `host` follows the store and finished its first full sync and the
    sweeping pass that follows it (driver workers: 2 applies; policy: 1), idle."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = api(lab, host, "/v1/status")
        except OSError:
            status = None
        if status and status["store"]["reachable"] and all(
                w["syncs"] >= (1 if name == "policy" else 2) and not w["applying_since"]
                and not w["pending"] for name, w in status["workers"].items()):
            return
        time.sleep(0.1)
    raise AssertionError(f"{host} did not sync within {timeout} s")
