"""JSON over HTTP on a unix socket: netd's API and a Docker-compatible Engine API.

`NetdClient` raises `ApiError` carrying netd's own one-line message and its HTTP status,
so a runtime can show the user exactly what netd said.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any
from urllib.parse import quote


class ApiError(Exception):
    def __init__(self, message: str, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.status = status  # 0: the daemon could not be reached
        self.code = code


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def unix_request(
    path: str, method: str, url: str, body: Any = None, timeout: float = 60.0
) -> tuple[int, Any]:
    """One request; (status, decoded JSON body or None). OSError when unreachable."""
    conn = _UnixConnection(path, timeout)
    try:
        payload = None if body is None else json.dumps(body)
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        conn.request(method, url, body=payload, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(data) if data else None
    except ValueError:
        return resp.status, data.decode(errors="replace")


class NetdClient:
    """The calls a runtime plugin makes to the local netd."""

    def __init__(self, socket_path: str, timeout: float = 60.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def _call(self, method: str, url: str, body: Any = None) -> Any:
        try:
            status, value = unix_request(self.socket_path, method, url, body, self.timeout)
        except OSError as exc:
            raise ApiError(
                f"netd is not reachable at {self.socket_path} ({exc.strerror or exc}); "
                "is netd running on this host?"
            ) from None
        if status >= 400:
            error = value.get("error", {}) if isinstance(value, dict) else {}
            message = error.get("message") or f"netd answered {status}: {value!r}"
            raise ApiError(message, status, error.get("code", ""))
        return value

    def network(self, name: str) -> dict[str, Any] | None:
        try:
            value: dict[str, Any] = self._call("GET", f"/v1/networks/{quote(name, safe='')}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return value

    def networks(self) -> list[dict[str, Any]]:
        value: list[dict[str, Any]] = self._call("GET", "/v1/networks")
        return value

    def create_network(self, request: dict[str, Any]) -> dict[str, Any]:
        value: dict[str, Any] = self._call("POST", "/v1/networks", request)
        return value

    def endpoints(self, network: str | None = None) -> list[dict[str, Any]]:
        url = "/v1/endpoints" + (f"?network={quote(network, safe='')}" if network else "")
        value: list[dict[str, Any]] = self._call("GET", url)
        return value

    def attach(self, request: dict[str, Any]) -> dict[str, Any]:
        value: dict[str, Any] = self._call("POST", "/v1/attach", request)
        return value

    def detach(self, container: str, network: str) -> dict[str, Any] | None:
        """Detach; None when it was not attached (or the network is gone)."""
        try:
            value: dict[str, Any] = self._call(
                "POST", "/v1/detach", {"container": container, "network": network})
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return value

    def status(self) -> dict[str, Any]:
        value: dict[str, Any] = self._call("GET", "/v1/status")
        return value


class EngineClient:
    """A Docker-compatible Engine API (dockerd, `podman system service`) on a unix socket."""

    def __init__(self, host: str, timeout: float = 5.0) -> None:
        if host.startswith("unix://"):
            host = host[len("unix://"):]
        if not host.startswith("/"):
            raise ValueError(f"unsupported Docker host {host!r}: give unix:///path")
        self.path = host
        self.timeout = timeout

    def get(self, url: str) -> Any | None:
        """The decoded answer, or None on 404."""
        status, value = unix_request(self.path, "GET", url, None, self.timeout)
        if status == 404:
            return None
        if status >= 400:
            message = value.get("message") if isinstance(value, dict) else value
            raise ApiError(f"container engine at {self.path}: {message}", status)
        return value

    def network(self, network_id: str) -> dict[str, Any] | None:
        value: dict[str, Any] | None = self.get(f"/networks/{quote(network_id, safe='')}")
        return value

    def container(self, name: str) -> dict[str, Any] | None:
        value: dict[str, Any] | None = self.get(f"/containers/{quote(name, safe='')}/json")
        return value
