"""Docker's remote NetworkDriver and IpamDriver (libnetwork plugin protocol) on netd.

`docker network create -d netd --ipam-driver netd --subnet S NAME` maps the Docker
network to the netd network NAME (`-o network=OTHER` overrides), creating it in the
store if it does not exist, so the same command on every host joins one network. A
container's start becomes one netd attach at Join, straight into the sandbox's netns
(netd plugs the interface itself, so Join hands dockerd no interface to move); its
removal a detach at Leave. Addresses are netd's: IPAM only checks a requested address
(`--ip`) against the subnet, or picks a free one for netd to reserve at Join.

Facts that shape this (docs/runtimes.md, measured): dockerd never sends the network's
name (it is read back from dockerd's API, which answers once the create returned), nor
the container's (read back the same way once the sandbox exists, so an automatic address
is sticky by container name from Join on), never replays anything to a restarted plugin
(netd.runtimes.state keeps what is needed in netd's store; pool ids spell their subnet),
and shows an answer's `Err` to the user verbatim. netd serves the plugin itself
(`netd --docker-plugin`, netd.runtimes.local): its calls go to the service in-process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import socketserver
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Protocol

import netaddr

from netd.errors import InvalidInput, NetdError
from netd.model import check_name, mac_from_ip
from netd.runtimes.client import ApiError, EngineClient
from netd.runtimes.state import PluginState

log = logging.getLogger("netd.docker")

PLUGIN_NAME = "netd"
DEFAULT_PLUGIN_SOCKET = f"/run/docker/plugins/{PLUGIN_NAME}.sock"
POOL_PREFIX = "netd:"
GATEWAY_TYPE = "com.docker.network.gateway"
GENERIC = "com.docker.network.generic"
CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"
# netd network fields a `-o key=value` may set; other keys are the driver's options
NETWORK_FIELDS = {"tenant": str, "driver": str, "backend": str, "vni": int, "mtu": int,
                  "encrypt": bool}
NETNS_WAIT = 120.0  # seconds an attach waits for dockerd to create the sandbox netns
RESOLVE_WAIT = 15.0  # seconds to wait for dockerd to answer for a network just created
PICK_HOLD = 60.0  # seconds an automatic address handed to dockerd is kept from others


class Netd(Protocol):
    """What the plugin asks netd (netd.runtimes.local.LocalNetd: the service in-process).
    Refusals are ApiError with netd's message and the API's HTTP status."""

    def network(self, name: str) -> dict[str, Any] | None: ...

    def networks(self) -> list[dict[str, Any]]: ...

    def create_network(self, request: dict[str, Any]) -> dict[str, Any]: ...

    def endpoints(self, network: str | None = None) -> list[dict[str, Any]]: ...

    def attach(self, request: dict[str, Any]) -> dict[str, Any]: ...

    def detach(self, container: str, network: str, wait: bool = True
               ) -> dict[str, Any] | None: ...

    def host_name(self) -> str: ...

    def used_addresses(self, network: str) -> tuple[set[str], set[str]]:
        """(addresses held by an endpoint, addresses reserved for a name)"""
        ...

    def reservation(self, network: str, name: str) -> str | None: ...


class PluginError(Exception):
    """Answered as {"Err": message}: dockerd shows it to the user."""


def endpoint_name(endpoint_id: str) -> str:
    """The netd endpoint a Docker endpoint is (stable for the endpoint's life)."""
    return f"docker-{endpoint_id[:12]}"


def pool_id(pool: str, sub_pool: str = "") -> str:
    return POOL_PREFIX + pool + (f"|{sub_pool}" if sub_pool else "")


def parse_pool_id(value: str) -> tuple[netaddr.IPNetwork, netaddr.IPNetwork | None]:
    if not isinstance(value, str) or not value.startswith(POOL_PREFIX):
        raise PluginError(f"unknown pool {value!r}: not a netd pool")
    pool, _, sub = value[len(POOL_PREFIX):].partition("|")
    try:
        return netaddr.IPNetwork(pool), netaddr.IPNetwork(sub) if sub else None
    except (netaddr.AddrFormatError, ValueError):
        raise PluginError(f"unknown pool {value!r}: not a netd pool") from None


def _bare(address: str) -> str:
    return address.split("/", 1)[0] if address else ""


def _same_subnet(a: str, b: str) -> bool:
    try:
        return netaddr.IPNetwork(a).cidr == netaddr.IPNetwork(b).cidr
    except (netaddr.AddrFormatError, ValueError):
        return False


def network_request(name: str, subnet: str, gateway: str, generic: dict[str, Any]
                    ) -> dict[str, Any]:
    """The netd network create request for a Docker network's create options."""
    request: dict[str, Any] = {"name": name, "subnet": subnet}
    if gateway:
        request["gateway"] = gateway
    options: dict[str, str] = {}
    for key, value in generic.items():
        if key == "network":
            continue
        if key == "com.docker.network.driver.mtu":
            key = "mtu"
        elif key.startswith("com.docker."):
            continue
        kind = NETWORK_FIELDS.get(key)
        text = str(value)
        if kind is None:
            options[key] = text
        elif kind is int:
            if not text.isdigit():
                raise PluginError(f"invalid -o {key}={text}: expected an integer")
            request[key] = int(text)
        elif kind is bool:
            if text.lower() not in ("true", "false"):
                raise PluginError(f"invalid -o {key}={text}: expected true or false")
            request[key] = text.lower() == "true"
        else:
            request[key] = text
    if options:
        request["options"] = options
    return request


def is_netns(path: str) -> bool:
    try:
        return os.stat(path).st_dev == os.stat("/proc/self/ns/net").st_dev
    except OSError:
        return False


class _PendingAttach(threading.Thread):
    """An attach waiting for its sandbox netns to appear."""

    def __init__(self, what: str, sandbox: str, attach: Callable[[], dict[str, Any]],
                 wait: float) -> None:
        super().__init__(name=f"attach-{what}", daemon=True)
        self.what, self.sandbox, self.attach, self.wait = what, sandbox, attach, wait
        self._cancelled = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.wait
        while not is_netns(self.sandbox):
            if self._cancelled.wait(0.002) or time.monotonic() > deadline:
                log.warning("%s: sandbox %s never appeared; not attached", self.what,
                            self.sandbox)
                return
        appeared = time.monotonic()
        try:
            endpoint = self.attach()
            log.info("attached %s to %s as %s (%.0f ms after its netns appeared)",
                     endpoint.get("name"), endpoint.get("network"), endpoint.get("ip"),
                     (time.monotonic() - appeared) * 1000)
        except (ApiError, NetdError, PluginError) as exc:
            log.error("attach of %s failed: %s", self.what, exc)

    def cancel(self) -> None:
        """Stop waiting; returns once no attach is running any more."""
        self._cancelled.set()
        if self.is_alive():
            self.join()


class DockerPlugin:
    """The protocol's calls, each a method taking and returning the JSON bodies."""

    def __init__(self, netd: Netd, engine: EngineClient | None, state: PluginState,
                 *, resolve_wait: float = RESOLVE_WAIT) -> None:
        self.netd = netd
        self.engine = engine
        self.state = state
        self.resolve_wait = resolve_wait
        self._lock = threading.Lock()  # serialises picking automatic addresses
        self._pending: dict[str, _PendingAttach] = {}
        self._picked: dict[str, float] = {}  # automatic addresses handed out -> when
        self.netns_wait = NETNS_WAIT
        self.calls: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "/Plugin.Activate": lambda r: {"Implements": ["NetworkDriver", "IpamDriver"]},
            "/NetworkDriver.GetCapabilities":
                lambda r: {"Scope": "local", "ConnectivityScope": "global"},
            "/NetworkDriver.CreateNetwork": self.create_network,
            "/NetworkDriver.DeleteNetwork": self.delete_network,
            "/NetworkDriver.CreateEndpoint": self.create_endpoint,
            "/NetworkDriver.DeleteEndpoint": self.delete_endpoint,
            "/NetworkDriver.EndpointOperInfo": lambda r: {"Value": {}},
            "/NetworkDriver.Join": self.join,
            "/NetworkDriver.Leave": self.leave,
            "/NetworkDriver.ProgramExternalConnectivity": lambda r: {},
            "/NetworkDriver.RevokeExternalConnectivity": lambda r: {},
            "/NetworkDriver.DiscoverNew": lambda r: {},
            "/NetworkDriver.DiscoverDelete": lambda r: {},
            "/NetworkDriver.AllocateNetwork": self._swarm,
            "/NetworkDriver.FreeNetwork": lambda r: {},
            "/IpamDriver.GetCapabilities":
                lambda r: {"RequiresMACAddress": False, "RequiresRequestReplay": False},
            "/IpamDriver.GetDefaultAddressSpaces": lambda r: {
                "LocalDefaultAddressSpace": "netd", "GlobalDefaultAddressSpace": "netd"},
            "/IpamDriver.RequestPool": self.request_pool,
            "/IpamDriver.ReleasePool": lambda r: {},
            "/IpamDriver.RequestAddress": self.request_address,
            "/IpamDriver.ReleaseAddress": self.release_address,
        }

    def handle(self, path: str, request: dict[str, Any]) -> dict[str, Any]:
        call = self.calls.get(path)
        if call is None:
            return {"Err": f"netd plugin: {path.lstrip('/')} is not supported"}
        try:
            return call(request)
        except (PluginError, ApiError, NetdError) as exc:
            log.info("%s refused: %s", path, exc)
            # NetworkDriver answers carry the error as Err, IpamDriver ones as Error
            return {"Err": f"netd: {exc}", "Error": f"netd: {exc}"}

    @staticmethod
    def _swarm(request: dict[str, Any]) -> dict[str, Any]:
        raise PluginError("swarm networks are not supported; create the network on each host")

    # --- IPAM ------------------------------------------------------------------------
    def request_pool(self, request: dict[str, Any]) -> dict[str, Any]:
        if request.get("V6"):
            raise PluginError("netd networks are IPv4 only; drop --ipv6")
        pool = request.get("Pool") or ""
        if not pool:
            raise PluginError("a netd network needs a subnet: give --subnet (e.g. 10.1.0.0/24)")
        try:
            subnet = netaddr.IPNetwork(pool)
            if subnet.version != 4:
                raise ValueError
        except (netaddr.AddrFormatError, ValueError):
            raise PluginError(f"invalid subnet {pool!r}: expected an IPv4 CIDR") from None
        sub_pool = request.get("SubPool") or ""
        if sub_pool:
            try:
                sub = netaddr.IPNetwork(sub_pool)
            except (netaddr.AddrFormatError, ValueError):
                raise PluginError(f"invalid --ip-range {sub_pool!r}") from None
            if sub.cidr not in subnet.cidr:
                raise PluginError(f"--ip-range {sub_pool} is not inside subnet {subnet.cidr}")
            sub_pool = str(sub.cidr)
        return {"PoolID": pool_id(str(subnet.cidr), sub_pool), "Pool": str(subnet.cidr),
                "Data": {}}

    def request_address(self, request: dict[str, Any]) -> dict[str, Any]:
        subnet, sub = parse_pool_id(request.get("PoolID", ""))
        options = request.get("Options") or {}
        wanted = request.get("Address") or ""
        if options.get("RequestAddressType") == GATEWAY_TYPE:
            gateway = wanted or self._known_gateway(subnet) or str(subnet[1])
            return {"Address": f"{gateway}/{subnet.prefixlen}", "Data": {}}
        if wanted:
            try:
                ip = netaddr.IPAddress(wanted)
            except (netaddr.AddrFormatError, ValueError):
                raise PluginError(f"invalid IP address {wanted!r}") from None
            if ip not in subnet or ip in (subnet.network, subnet.broadcast):
                raise PluginError(f"IP {wanted} is not a host address of subnet {subnet.cidr}")
            with self._lock:
                owner = self._user_of(subnet, str(ip))
            if owner:
                raise PluginError(f"IP {ip} is already in use by {owner}")
            return {"Address": f"{ip}/{subnet.prefixlen}", "Data": {}}
        with self._lock:
            ip = self._free_address(subnet, sub)
            self._picked[ip] = time.monotonic()
        return {"Address": f"{ip}/{subnet.prefixlen}", "Data": {}}

    def release_address(self, request: dict[str, Any]) -> dict[str, Any]:
        """An automatic address dockerd did not use after all (netd frees attached ones
        at detach)."""
        with self._lock:
            self._picked.pop(_bare(str(request.get("Address") or "")), None)
        return {}

    def _networks_with(self, subnet: netaddr.IPNetwork) -> list[dict[str, Any]]:
        return [n for n in self.netd.networks() if _same_subnet(n.get("subnet", ""), str(subnet))]

    def _known_gateway(self, subnet: netaddr.IPNetwork) -> str | None:
        for network in self._networks_with(subnet):
            return str(network.get("gateway") or "") or None
        return None

    def _user_of(self, subnet: netaddr.IPNetwork, ip: str) -> str | None:
        """Who holds `ip` (a netd endpoint anywhere, or an endpoint of this plugin)."""
        for network in self._networks_with(subnet):
            for endpoint in self.netd.endpoints(network["name"]):
                if endpoint.get("ip") == ip:
                    return (f"{endpoint.get('name')} on host {endpoint.get('host')} "
                            f"(network {network['name']})")
        if ip in self.state.pending_ips() or ip in self._picked:
            return "another container of this host"
        return None

    def _held_here(self) -> set[str]:
        """Addresses this host's containers have or were just handed (under _lock)."""
        now = time.monotonic()
        for ip, when in list(self._picked.items()):
            if now - when > PICK_HOLD:
                del self._picked[ip]
        return self.state.pending_ips() | set(self._picked)

    def _free_address(self, subnet: netaddr.IPNetwork, sub: netaddr.IPNetwork | None) -> str:
        """An address netd will very likely grant at Join: in the range, not the
        gateway, not held in the store, not handed out here already, and not reserved
        for another name (sticky) unless every other address is (as netd's own pool)."""
        held = self._held_here()
        reserved: set[str] = set()
        for network in self._networks_with(subnet):
            held.add(str(network.get("gateway", "")))
            taken, sticky = self.netd.used_addresses(network["name"])
            held |= taken
            reserved |= sticky
        held.add(str(subnet[1]))
        span = (sub or subnet).cidr
        first, last = span.first, span.last
        if span == subnet.cidr or first <= subnet.first:
            first = max(first, subnet.first + 1)  # never the network address
        last = min(last, subnet.last - 1)  # nor the broadcast address
        if last < first:
            raise PluginError(f"no host address in {span}")
        for used in (held | reserved, held):
            # random, not lowest: two hosts picking at once rarely pick the same
            for _attempt in range(64):
                candidate = str(netaddr.IPAddress(random.randint(first, last)))
                if candidate not in used:
                    return candidate
            for value in range(first, last + 1):
                candidate = str(netaddr.IPAddress(value))
                if candidate not in used:
                    return candidate
        raise PluginError(f"no free address left in {span}")

    # --- networks ----------------------------------------------------------------------
    def create_network(self, request: dict[str, Any]) -> dict[str, Any]:
        network_id = request.get("NetworkID", "")
        if request.get("IPv6Data"):
            raise PluginError("netd networks are IPv4 only; drop --ipv6")
        data = request.get("IPv4Data") or []
        if len(data) != 1 or not data[0].get("Pool"):
            raise PluginError("a netd network needs exactly one --subnet")
        options = request.get("Options") or {}
        generic = options.get(GENERIC) or {}
        pool = str(netaddr.IPNetwork(data[0]["Pool"]).cidr)
        gateway = _bare(data[0].get("Gateway") or "")
        name = str(generic.get("network") or "")
        record = {"name": name, "subnet": pool, "gateway": gateway,
                  "request": network_request(name or "pending", pool, gateway, generic)}
        if name:
            self._ensure_network(record)
        self.state.put_network(network_id, record)
        if not name and self.engine is not None:
            threading.Thread(target=self._resolve_later, args=(network_id,),
                             name=f"resolve-{network_id[:12]}", daemon=True).start()
        return {}

    def delete_network(self, request: dict[str, Any]) -> dict[str, Any]:
        # the netd network stays: other hosts' containers may use it (netctl network rm)
        self.state.drop_network(request.get("NetworkID", ""))
        return {}

    def _resolve_later(self, network_id: str) -> None:
        """Learn a new network's name once dockerd answers for it, and create it in netd
        early, so the first `docker run` finds it ready."""
        deadline = time.monotonic() + self.resolve_wait
        while time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                self._network(network_id)
                return
            except PluginError as exc:
                if "no name" not in str(exc):
                    log.warning("network %s: %s", network_id[:12], exc)
                    return
            except ApiError as exc:
                log.warning("network %s: %s", network_id[:12], exc)
                return

    def _network(self, network_id: str) -> dict[str, Any]:
        """The plugin's record of a Docker network, with its netd name known and the netd
        network ensured."""
        record = self.state.network(network_id)
        if record is not None and record.get("name") and record.get("ensured"):
            return record
        docker = self._engine_network(network_id)
        if record is None:
            if docker is None:
                raise PluginError(f"network {network_id[:12]} is unknown to this plugin")
            record = self._record_from_docker(docker)
        if not record.get("name"):
            name = ""
            if docker is not None:
                name = (docker.get("Options") or {}).get("network") or docker.get("Name", "")
            if not name:
                raise PluginError(
                    f"network {network_id[:12]} has no name yet in dockerd (the plugin reads "
                    "it from --docker-host; or create the network with -o network=NAME)")
            record["name"] = name
            record["request"]["name"] = name
        self._ensure_network(record)
        record["ensured"] = True
        self.state.put_network(network_id, record)
        return record

    def _engine_network(self, network_id: str) -> dict[str, Any] | None:
        if self.engine is None:
            return None
        try:
            return self.engine.network(network_id)
        except (OSError, ApiError) as exc:
            log.warning("cannot ask dockerd about network %s: %s", network_id[:12], exc)
            return None

    @staticmethod
    def _record_from_docker(docker: dict[str, Any]) -> dict[str, Any]:
        """A record rebuilt from dockerd's view of a network (its store record lost)."""
        config = ((docker.get("IPAM") or {}).get("Config") or [{}])[0]
        generic = docker.get("Options") or {}
        name = str(generic.get("network") or docker.get("Name") or "")
        pool = str(config.get("Subnet") or "")
        gateway = _bare(str(config.get("Gateway") or ""))
        return {"name": name, "subnet": pool, "gateway": gateway,
                "request": network_request(name, pool, gateway, generic)}

    def _ensure_network(self, record: dict[str, Any]) -> None:
        """The netd network exists with this subnet (created here if missing)."""
        name, subnet = record["name"], record["subnet"]
        for _attempt in range(3):
            existing = self.netd.network(name)
            if existing is not None:
                if not _same_subnet(existing.get("subnet", ""), subnet):
                    raise PluginError(
                        f"network {name!r} already exists in netd with subnet "
                        f"{existing.get('subnet')}, not {subnet}: use the same --subnet on "
                        "every host, or -o network=OTHER for another netd network")
                gateway = record.get("gateway")
                if gateway and existing.get("gateway") and gateway != existing["gateway"]:
                    raise PluginError(
                        f"network {name!r} exists in netd with gateway {existing['gateway']}, "
                        f"not {gateway}: give --gateway {existing['gateway']} (or leave it out)")
                return
            try:
                self.netd.create_network(record["request"])
                log.info("created netd network %s (%s)", name, subnet)
                return
            except ApiError as exc:
                if exc.status != 409 or "already exists" not in str(exc):
                    raise
        raise PluginError(f"network {name!r} keeps changing in netd; try again")

    # --- endpoints -----------------------------------------------------------------------
    def create_endpoint(self, request: dict[str, Any]) -> dict[str, Any]:
        network_id, endpoint_id = request.get("NetworkID", ""), request.get("EndpointID", "")
        interface = request.get("Interface") or {}
        if interface.get("AddressIPv6"):
            raise PluginError("netd networks are IPv4 only")
        address = _bare(interface.get("Address") or "")
        if not address:
            raise PluginError("the endpoint has no IPv4 address (use --ipam-driver netd)")
        record = self._network(network_id)
        mac = (interface.get("MacAddress") or "").lower()
        with self._lock:
            automatic = self._picked.pop(address, None) is not None
        self.state.put_endpoint(endpoint_id, {
            "network_id": network_id, "network": record["name"], "ip": address, "mac": mac,
            "automatic": automatic,
        })
        return {"Interface": {} if mac else {"MacAddress": mac_from_ip(address)}}

    def join(self, request: dict[str, Any]) -> dict[str, Any]:
        """Attach the endpoint to the sandbox's netns. For a container being started
        dockerd only creates that netns after Join returned (runc's prestart hook hands
        it over), so the attach then runs as soon as it appears; for a running one
        (`docker network connect`) it runs before answering."""
        network_id, endpoint_id = request.get("NetworkID", ""), request.get("EndpointID", "")
        endpoint = self.state.endpoint(endpoint_id)
        if endpoint is None:
            raise PluginError(f"endpoint {endpoint_id[:12]} is unknown to this plugin")
        sandbox = request.get("SandboxKey") or ""
        if not sandbox:
            raise PluginError("Join without a sandbox (network namespace) path")

        def attach() -> dict[str, Any]:
            return self._attach(network_id, endpoint_id, sandbox)

        if is_netns(sandbox):
            attach()
        elif self.netd.network(endpoint["network"]) is None:  # netd reachable, network there
            raise PluginError(f"network {endpoint['network']!r} no longer exists in netd")
        else:  # checked what can be checked before answering; the attach follows
            pending = _PendingAttach(endpoint_name(endpoint_id), sandbox, attach,
                                     self.netns_wait)
            with self._lock:
                self._pending[endpoint_id] = pending
            pending.start()
        # netd plugs the interface and its default route: dockerd has nothing to move,
        # and no gateway of its own to add
        return {"DisableGatewayService": True}

    def _attach(self, network_id: str, endpoint_id: str, sandbox: str) -> dict[str, Any]:
        """The netd attach of a joined endpoint, named after its container; an automatic
        address gives way to the container name's sticky one (a container recreated
        under its name gets its address back)."""
        endpoint = self.state.endpoint(endpoint_id)
        if endpoint is None:
            raise PluginError(f"endpoint {endpoint_id[:12]} was deleted before it attached")
        name = self._container_name(network_id, endpoint_id)
        ip = endpoint["ip"]
        if name and endpoint.get("automatic"):
            sticky = self.netd.reservation(endpoint["network"], name)
            if sticky and sticky != ip:
                log.info("%s gets its address %s back (dockerd was handed %s)", name,
                         sticky, ip)
                ip = sticky
        request = {"container": sandbox, "name": name or endpoint_name(endpoint_id),
                   "network": endpoint["network"], "ip": ip}
        if endpoint.get("mac"):
            request["mac"] = endpoint["mac"]
        updated = {**endpoint, "name": name, "ip": ip, "sandbox": sandbox}
        if updated != endpoint:
            self.state.put_endpoint(endpoint_id, updated)
        try:
            return self.netd.attach(request)
        except ApiError as exc:
            if not endpoint.get("automatic") or exc.status != 409 or "in use" not in str(exc):
                raise
        # another host took the automatic address in the same instant: netd picks one
        del request["ip"]
        attached = self.netd.attach(request)
        log.info("%s: %s was taken meanwhile; attached as %s", request["name"], ip,
                 attached.get("ip"))
        self.state.put_endpoint(endpoint_id, {**updated, "ip": attached.get("ip")})
        return attached

    def recover(self) -> int:
        """Attach the joined endpoints whose attach a stopped netd never finished (it
        was waiting for the sandbox, or running): dockerd will not Join them again.
        How many were attached now."""
        done = 0
        for endpoint_id, endpoint in list(self.state.endpoints.items()):
            sandbox = str(endpoint.get("sandbox") or "")
            if not sandbox or not is_netns(sandbox):
                continue
            name = endpoint.get("name") or endpoint_name(endpoint_id)
            try:
                if any(e.get("name") == name for e in self.netd.endpoints(endpoint["network"])):
                    continue
                self._attach(str(endpoint.get("network_id") or ""), endpoint_id, sandbox)
                done += 1
            except (ApiError, NetdError, PluginError) as exc:
                log.error("endpoint %s (%s) could not be attached again: %s",
                          endpoint_id[:12], name, exc)
        return done

    def _container_name(self, network_id: str, endpoint_id: str) -> str | None:
        """`CONTAINER.HOST` for the endpoint, from dockerd (which names a container's
        endpoint after the container; host: netd endpoint names are cluster-wide, Docker
        container names per host). None when dockerd does not say in time."""
        if self.engine is None:
            return None
        started = time.monotonic()
        docker = self._engine_network(network_id)
        log.debug("asked dockerd for %s's name in %.0f ms", endpoint_id[:12],
                  (time.monotonic() - started) * 1000)
        for info in ((docker or {}).get("Containers") or {}).values():
            if info.get("EndpointID") == endpoint_id and info.get("Name"):
                host = self.netd.host_name()
                candidate = f"{info['Name']}.{host}" if host else str(info["Name"])
                try:
                    return check_name(candidate, "endpoint name")
                except InvalidInput:
                    return None
        return None

    def leave(self, request: dict[str, Any]) -> dict[str, Any]:
        self._detach(request.get("NetworkID", ""), request.get("EndpointID", ""))
        return {}

    def delete_endpoint(self, request: dict[str, Any]) -> dict[str, Any]:
        endpoint_id = request.get("EndpointID", "")
        self._detach(request.get("NetworkID", ""), endpoint_id)
        self.state.drop_endpoint(endpoint_id)
        return {}

    def _detach(self, network_id: str, endpoint_id: str) -> None:
        with self._lock:
            pending = self._pending.pop(endpoint_id, None)
        if pending is not None:
            pending.cancel()
        endpoint = self.state.endpoint(endpoint_id)
        network = endpoint["network"] if endpoint else None
        if network is None:
            record = self.state.network(network_id)
            network = record.get("name") if record else None
        name = (endpoint or {}).get("name") or (
            None if endpoint else self._container_name(network_id, endpoint_id)
        ) or endpoint_name(endpoint_id)
        if not network:  # no record left: netd's store knows the endpoint by name
            found = [e for e in self.netd.endpoints() if e.get("name") == name]
            network = found[0].get("network") if found else None
        if not network:
            log.info("endpoint %s is not attached anywhere; nothing to detach", name)
            return
        # dockerd deletes the sandbox (and the interface in it) right after: the store
        # is what must be right before answering, the datapath follows
        self.netd.detach(name, network, wait=False)


# --- the server ------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: PluginServer
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            request = json.loads(raw) if raw.strip() else {}
            if not isinstance(request, dict):
                raise ValueError
        except ValueError:
            answer: dict[str, Any] = {"Err": "netd plugin: request body is not a JSON object"}
        else:
            log.debug("%s %s", self.path, raw[:500])
            answer = self.server.plugin.handle(self.path, request)
        payload = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("plugin: " + format, *args)


class PluginServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path, plugin: DockerPlugin) -> None:
        self.plugin = plugin
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        tmp = path.with_name(path.name + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        super().__init__(str(tmp), _Handler)
        os.chmod(tmp, 0o660)
        os.rename(tmp, path)  # dockerd finds the socket only once it serves
        self.path = path
        self._thread: threading.Thread | None = None

    def serve_in_background(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="docker-plugin",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving (from another thread than the serving one) and remove the socket."""
        if self._thread is not None and self._thread.is_alive():
            self.shutdown()
        self.server_close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
