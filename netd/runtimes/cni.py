"""`netd-cni`: a CNI plugin (spec 1.0.0; results also for 0.3.x and 0.4.0) on netd.

The runtime runs it with the command in CNI_COMMAND and the network config on stdin;
ADD becomes a netd attach of CNI_NETNS (netd plugs the interface itself), DEL a detach
(successful when the endpoint or its netns is already gone), CHECK compares netd's
record with what the runtime expects. The endpoint is named after the container
(K8S_POD_NAME, as podman and Kubernetes runtimes pass it; see endpoint_name), so a
container recreated under the same name gets its address back; without one, after
CNI_CONTAINERID.

Network config: {"cniVersion": "1.0.0", "name": "blue", "type": "netd",
"network": "blue" (default: name), "socket": "/run/netd/netd.sock"}. A requested
address and MAC come from CNI_ARGS (IP=10.1.0.10;MAC=02:..., a bare address as podman
sends it), from runtimeConfig {"ips": [...], "mac": ...} or from args.cni.
"""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import netaddr

from netd.config import DEFAULT_SOCKET
from netd.errors import InvalidInput
from netd.model import check_name
from netd.runtimes.client import ApiError, NetdClient

SPEC_VERSION = "1.0.0"
SUPPORTED = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")

# error codes of the CNI spec; 100+ are this plugin's
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NETD_REFUSED = 100
CHECK_FAILED = 101


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


def parse_cni_args(text: str) -> dict[str, str]:
    """CNI_ARGS `K=V;K2=V2` (podman: IgnoreUnknown=1;K8S_POD_NAME=web;MAC=..;IP=..)."""
    out: dict[str, str] = {}
    for item in filter(None, (text or "").split(";")):
        key, sep, value = item.partition("=")
        if not sep:
            raise CniError(INVALID_ENV, f"invalid CNI_ARGS item {item!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def endpoint_name(args: Mapping[str, str], container_id: str, host: str = "") -> str:
    """Kubernetes-style (a pod namespace besides the pod name, unique in the cluster):
    NAMESPACE.POD. Podman-style (namespace and pod are the container's name, unique on
    its host): NAME.HOST, so the same name on two hosts does not collide in netd, whose
    endpoint names are cluster-wide. Else cni-<container id>."""
    pod, namespace = args.get("K8S_POD_NAME", ""), args.get("K8S_POD_NAMESPACE", "")
    candidates = []
    if pod and namespace and namespace != pod:
        candidates.append(f"{namespace}.{pod}")
    elif pod:
        candidates.append(f"{pod}.{host}" if host else pod)
    if container_id:
        candidates.append(f"cni-{container_id[:12]}")
    for name in candidates:
        try:
            return check_name(name, "endpoint name")
        except InvalidInput:
            continue
    raise CniError(INVALID_ENV, "CNI_CONTAINERID is missing or invalid")


def requested(config: Mapping[str, Any], args: Mapping[str, str]) -> tuple[str | None, str | None]:
    """The requested IP (bare, no prefix) and MAC, from CNI_ARGS, runtimeConfig, args."""
    runtime = config.get("runtimeConfig") or {}
    conventional = ((config.get("args") or {}).get("cni") or {})
    ips = list(runtime.get("ips") or []) or list(conventional.get("ips") or [])
    ip = args.get("IP") or (ips[0] if ips else None)
    mac = args.get("MAC") or runtime.get("mac") or conventional.get("mac") or None
    if ip is not None:
        ip = str(ip).split("/", 1)[0]
        try:
            if netaddr.IPAddress(ip).version != 4:
                raise ValueError
        except (netaddr.AddrFormatError, ValueError):
            raise CniError(INVALID_CONFIG, f"invalid requested IP {ip!r}: netd is IPv4 only"
                           ) from None
    return ip, (str(mac).lower() if mac else None)


def build_result(version: str, endpoint: Mapping[str, Any], network: Mapping[str, Any],
                 netns: str, prev: Mapping[str, Any] | None = None) -> dict[str, Any]:
    prefix = netaddr.IPNetwork(network["subnet"]).prefixlen
    gateway = network.get("gateway") or ""
    result: dict[str, Any] = dict(prev or {})
    interfaces = list(result.get("interfaces") or [])
    interfaces.append({"name": endpoint["ifname"], "mac": endpoint["mac"], "sandbox": netns})
    ip: dict[str, Any] = {"address": f"{endpoint['ip']}/{prefix}",
                          "interface": len(interfaces) - 1}
    if gateway:
        ip["gateway"] = gateway
    if version != "1.0.0" and not version.startswith("1."):
        ip["version"] = "4"
    routes = list(result.get("routes") or [])
    if gateway:
        routes.append({"dst": "0.0.0.0/0", "gw": gateway})
    result.update({
        "cniVersion": version, "interfaces": interfaces,
        "ips": [*(result.get("ips") or []), ip], "routes": routes,
        "dns": result.get("dns") or {},
    })
    return result


def run(env: Mapping[str, str], stdin: TextIO, stdout: TextIO) -> int:
    command = env.get("CNI_COMMAND", "")
    if command == "VERSION":
        json.dump({"cniVersion": SPEC_VERSION, "supportedVersions": list(SUPPORTED)}, stdout)
        return 0
    try:
        config = json.loads(stdin.read() or "{}")
        if not isinstance(config, dict):
            raise ValueError
    except ValueError:
        raise CniError(DECODE_FAILURE, "network config on stdin is not a JSON object") from None
    version = str(config.get("cniVersion") or SPEC_VERSION)
    if version not in SUPPORTED:
        raise CniError(INCOMPATIBLE_VERSION, f"cniVersion {version} is not supported",
                       f"supported: {', '.join(SUPPORTED)}")
    network = config.get("network") or config.get("name")
    if not isinstance(network, str) or not network:
        raise CniError(INVALID_CONFIG, "network config needs a name (or \"network\")")
    netd = NetdClient(str(config.get("socket") or DEFAULT_SOCKET))
    if command == "STATUS":
        netd.status()
        return 0
    if command == "GC":
        return 0  # netd frees an address when its endpoint is detached (DEL)
    if command not in ("ADD", "DEL", "CHECK"):
        raise CniError(INVALID_ENV, f"invalid CNI_COMMAND {command!r}")
    args = parse_cni_args(env.get("CNI_ARGS", ""))
    host = ""
    if args.get("K8S_POD_NAME") and args.get("K8S_POD_NAMESPACE", args["K8S_POD_NAME"]) == \
            args["K8S_POD_NAME"]:
        host = str((netd.status().get("host") or {}).get("name") or "")
    name = endpoint_name(args, env.get("CNI_CONTAINERID", ""), host)
    if command == "DEL":
        netd.detach(name, network)
        return 0
    netns = env.get("CNI_NETNS", "")
    ifname = env.get("CNI_IFNAME", "") or "eth0"
    if not netns:
        raise CniError(INVALID_ENV, "CNI_NETNS is not set")
    if command == "CHECK":
        if version in ("0.3.0", "0.3.1"):
            raise CniError(INCOMPATIBLE_VERSION, f"CHECK needs cniVersion 0.4.0+, not {version}")
        check(netd, network, name, netns, ifname)
        return 0
    ip, mac = requested(config, args)
    request: dict[str, Any] = {"container": netns, "name": name, "network": network,
                               "ifname": ifname}
    if ip:
        request["ip"] = ip
    if mac:
        request["mac"] = mac
    endpoint = netd.attach(request)
    details = netd.network(network)
    if details is None:
        raise CniError(NETD_REFUSED, f"network {network!r} vanished during the attach")
    json.dump(build_result(version, endpoint, details, netns, config.get("prevResult")), stdout)
    return 0


def check(netd: NetdClient, network: str, name: str, netns: str, ifname: str) -> None:
    for endpoint in netd.endpoints(network):
        if endpoint.get("name") != name:
            continue
        if os.path.realpath(endpoint.get("netns", "")) != os.path.realpath(netns):
            raise CniError(CHECK_FAILED, f"{name} on {network} is attached to netns "
                           f"{endpoint.get('netns')}, not {netns}")
        if endpoint.get("ifname") != ifname:
            raise CniError(CHECK_FAILED, f"{name} on {network} is interface "
                           f"{endpoint.get('ifname')}, not {ifname}")
        if not os.path.exists(netns):
            raise CniError(CHECK_FAILED, f"netns {netns} of {name} is gone")
        return
    raise CniError(CHECK_FAILED, f"{name} is not attached to network {network}")


def error_result(exc: Exception, version: str) -> dict[str, Any]:
    """The CNI error JSON for a failure."""
    if isinstance(exc, CniError):
        error: dict[str, Any] = {"cniVersion": version, "code": exc.code, "msg": exc.msg}
        if exc.details:
            error["details"] = exc.details
        return error
    assert isinstance(exc, ApiError)
    unreachable = exc.status in (0, 503)
    error = {"cniVersion": version, "code": TRY_AGAIN_LATER if unreachable else NETD_REFUSED,
             "msg": str(exc)}
    if exc.code:
        error["details"] = f"netd error {exc.code} (HTTP {exc.status})"
    return error


def main() -> None:
    text = sys.stdin.read()
    version = SPEC_VERSION
    try:
        declared = json.loads(text).get("cniVersion")
        if declared in SUPPORTED:
            version = declared
    except (ValueError, AttributeError):
        pass
    try:
        code = run(os.environ, io.StringIO(text), sys.stdout)
    except (CniError, ApiError) as exc:
        json.dump(error_result(exc, version), sys.stdout)
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
