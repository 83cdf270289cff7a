"""netd's service layer as the Docker plugin sees it, in-process (`netd --docker-plugin`).

The plugin's calls go straight to netd.service (no HTTP hop to netd's own socket) and
answer the JSON shapes the socket API answers, so the plugin's logic is the same against
this and against a fake. A refusal becomes ApiError carrying netd's own message and the
HTTP status the API would give it, which the plugin shows to the Docker user verbatim.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from netd.errors import InvalidInput, NetdError
from netd.runtimes.client import ApiError, EngineClient
from netd.runtimes.docker import PLUGIN_NAME, DockerPlugin, PluginServer
from netd.runtimes.state import PluginState
from netd.service import Service

log = logging.getLogger("netd.docker")

T = TypeVar("T")


def _call(what: Callable[[], T]) -> T:
    from netd.api import status_for  # the one mapping of errors to statuses

    try:
        return what()
    except NetdError as exc:
        raise ApiError(str(exc), int(status_for(exc)), exc.code) from None


class LocalNetd:
    """The calls the Docker plugin makes, on this daemon's Service."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def network(self, name: str) -> dict[str, Any] | None:
        try:
            return _call(lambda: self.service.get_network(name).to_dict())
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def networks(self) -> list[dict[str, Any]]:
        return _call(lambda: [n.to_dict() for n in self.service.list_networks()])

    def create_network(self, request: dict[str, Any]) -> dict[str, Any]:
        return _call(lambda: self.service.create_network(request).to_dict())

    def endpoints(self, network: str | None = None) -> list[dict[str, Any]]:
        return _call(lambda: [e.to_dict() for e in self.service.list_endpoints(network)])

    def attach(self, request: dict[str, Any]) -> dict[str, Any]:
        return _call(lambda: self.service.attach(request).to_dict())

    def detach(self, container: str, network: str, wait: bool = True
               ) -> dict[str, Any] | None:
        try:
            return _call(lambda: self.service.detach(
                {"container": container, "network": network}, wait).to_dict())
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def host_name(self) -> str:
        return self.service.host.name

    def used_addresses(self, network: str) -> tuple[set[str], set[str]]:
        """Addresses of `network` held by an endpoint, and those reserved for a name
        (sticky, held or not)."""
        keys, store = self.service.keys, self.service.store

        def read() -> tuple[set[str], set[str]]:
            held = {kv.key.rsplit("/", 1)[1]
                    for kv in store.list(keys.ipam_addresses(network))[0]}
            reserved = {_field(kv.value, "ip")
                        for kv in store.list(keys.ipam_names(network))[0]}
            reserved.discard("")
            return held, reserved

        return _call(read)

    def reservation(self, network: str, name: str) -> str | None:
        """The address `name` holds or had on `network` (its sticky reservation), if no
        other endpoint holds it now."""
        keys, store = self.service.keys, self.service.store

        def read() -> str | None:
            kv = store.get(keys.ipam_name(network, name))
            ip = _field(kv.value, "ip") if kv is not None else ""
            if not ip:
                return None
            held = store.get(keys.ipam_address(network, ip))
            if held is not None and _field(held.value, "owner") != name:
                return None
            return ip

        try:
            return _call(read)
        except ApiError:
            return None


def _field(text: str, name: str) -> str:
    try:
        value = json.loads(text)
    except ValueError:
        return ""
    return str(value.get(name) or "") if isinstance(value, dict) else ""



def serve_docker_plugin(service: Service, path: Path, docker_host: str) -> PluginServer:
    """Serve the Docker plugin `netd` at `path` (dockerd finds it there) from this daemon,
    reading names from the Engine API at `docker_host`; close() stops it."""
    try:
        engine = EngineClient(docker_host)
    except ValueError as exc:
        raise InvalidInput(f"--docker-host: {exc}") from None
    state = PluginState(service.store, service.keys, service.host.name)
    plugin = DockerPlugin(LocalNetd(service), engine, state)
    try:
        server = PluginServer(path, plugin)
    except OSError as exc:
        raise InvalidInput(
            f"cannot serve the Docker plugin at {path}: {exc.strerror or exc}") from None
    server.serve_in_background()
    threading.Thread(target=plugin.recover, name="docker-recover", daemon=True).start()
    log.info("serving Docker plugin %s at %s (dockerd at %s; %d networks, %d endpoints "
             "known)", PLUGIN_NAME, path, docker_host, len(state.networks),
             len(state.endpoints))
    return server
