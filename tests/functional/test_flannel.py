"""Multi-host acceptance of the flannel driver: three simulated hosts, real etcd, real
netd processes, real packets, flannel's own etcd schema checked with etcdctl.

One lab per module (etcd and three daemons take seconds to start); each test makes its
own networks (distinct subnets and prefixes) and containers. Leases in these tests live
`LEASE_TTL` seconds so a host gone for good drops out quickly.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from netd.lab import Lab, ns_exec, run

pytestmark = [pytest.mark.root, pytest.mark.etcd]

HOSTS = ("h1", "h2", "h3")
LEASE_TTL = 6


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(hosts=len(HOSTS), store="etcd", host_ttl=3,
             prefix=f"fl{secrets.token_hex(2)}") as lab:
        yield lab


# --- helpers ---------------------------------------------------------------------------
def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def host_cmd(lab: Lab, host: str, *cmd: str) -> str:
    return run(ns_exec(lab.hosts[host].netns, *cmd), check=False).stdout


def etcd_get(lab: Lab, prefix: str) -> dict[str, Any]:
    """Every key under `prefix` with its JSON value, as etcdctl shows them."""
    out = lab.etcdctl("m1", "get", "--prefix", prefix, "-w", "json").stdout
    kvs = json.loads(out).get("kvs", [])
    import base64
    return {base64.b64decode(kv["key"]).decode(): json.loads(base64.b64decode(kv["value"]))
            for kv in kvs}


def subnets(lab: Lab, prefix: str) -> dict[str, dict[str, Any]]:
    """Subnet (CIDR) -> lease value under <prefix>/subnets/."""
    out = {}
    for key, value in etcd_get(lab, f"{prefix}/subnets/").items():
        ip, _, plen = key.rsplit("/", 1)[1].partition("-")
        out[f"{ip}/{plen}"] = value
    return out


def create(lab: Lab, name: str, subnet: str, backend: str, *opts: str) -> dict[str, Any]:
    args = ["network", "create", name, "--subnet", subnet, "--driver", "flannel",
            "--backend", backend]
    for opt in (f"lease_ttl={LEASE_TTL}", *opts):
        args += ["-o", opt]
    return dict(lab.netctl_json("h1", *args))


def attach(lab: Lab, host: str, container: str, network: str, *extra: str) -> dict[str, Any]:
    netns = lab.add_container(host, container)
    return dict(lab.netctl_json(host, "attach", netns, "--network", network, *extra))


def container_of(lab: Lab, name: str) -> str:
    return f"{lab.prefix}-{name}"


def underlay_ip(lab: Lab, host: str) -> str:
    return lab.hosts[host].underlay_ip


def mesh(lab: Lab, network: str, tag: str) -> dict[str, dict[str, Any]]:
    """One container per host attached to `network`: host -> endpoint."""
    return {h: attach(lab, h, f"{tag}{h}", network) for h in HOSTS}


def check_mesh(lab: Lab, eps: dict[str, dict[str, Any]], tag: str) -> None:
    for src in HOSTS:
        for dst in HOSTS:
            if src != dst:
                ok = lab.wait_ping(container_of(lab, f"{tag}{src}"), eps[dst]["ip"], 10)
                assert ok, f"{src} -> {dst} ({eps[dst]['ip']})"


def tcp_echo(lab: Lab, server: str, client: str, ip: str, port: int = 7777) -> str:
    """One TCP exchange from `client` to `server`'s `ip`: what the client received."""
    listener = __import__("subprocess").Popen(
        ns_exec(server, "python3", "-c",
                "import socket;s=socket.socket();"
                "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
                f"s.bind(('0.0.0.0',{port}));s.listen(1);c,_=s.accept();"
                "c.sendall(c.recv(100).upper());c.close()"))
    try:
        for _ in range(50):
            got = lab.in_container(
                client, "python3", "-c",
                "import socket,sys;c=socket.create_connection((sys.argv[1],int(sys.argv[2])),2);"
                "c.sendall(b'flannel');print(c.recv(100).decode())", ip, str(port))
            if got.returncode == 0:
                return got.stdout.strip()
            time.sleep(0.1)
        return ""
    finally:
        listener.kill()
        listener.wait()


def df_ping(lab: Lab, netns: str, ip: str, mtu: int) -> tuple[bool, bool]:
    """(a packet of exactly `mtu` with DF crosses, one byte more is refused)."""
    fits = lab.ping(netns, ip, count=2, size=mtu - 28, dont_fragment=True).returncode == 0
    over = lab.ping(netns, ip, count=1, size=mtu - 27, dont_fragment=True).returncode == 0
    return fits, over


# --- tests -----------------------------------------------------------------------------
@pytest.mark.parametrize("backend,octet,overhead", [("vxlan", 71, 50), ("host-gw", 72, 0),
                                                     ("udp", 73, 28)])
def test_three_hosts_lease_route_and_talk(lab: Lab, backend: str, octet: int,
                                          overhead: int) -> None:
    name = f"fl{backend.replace('-', '')}"
    net = create(lab, name, f"10.{octet}.0.0/16", backend)
    assert net["mtu"] == 1500 - overhead
    prefix = net["options"]["prefix"]
    assert prefix == f"/netd/flannel/{name}"
    eps = mesh(lab, name, backend[:2])
    # flannel's exact JSON in etcd
    config = etcd_get(lab, f"{prefix}/config")[f"{prefix}/config"]
    assert config["Network"] == f"10.{octet}.0.0/16" and config["SubnetLen"] == 24
    assert config["Backend"]["Type"] == backend
    leases = subnets(lab, prefix)
    assert len(leases) == 3
    by_host = {v["PublicIP"]: s for s, v in leases.items()}
    for h in HOSTS:
        value = leases[by_host[underlay_ip(lab, h)]]
        assert set(value) >= {"PublicIP", "PublicIPv6", "BackendType"}
        assert value["BackendType"] == backend
        if backend == "vxlan":
            assert value["BackendData"]["VNI"] == 1
            assert len(value["BackendData"]["VtepMAC"]) == 17
        # each container's address comes from its host's lease
        assert ipaddress.ip_address(eps[h]["ip"]) in ipaddress.ip_network(by_host[underlay_ip(lab, h)])
    check_mesh(lab, eps, backend[:2])
    got = tcp_echo(lab, container_of(lab, f"{backend[:2]}h3"), container_of(lab, f"{backend[:2]}h1"),
                   eps["h3"]["ip"])
    assert got == "FLANNEL"
    fits, over = df_ping(lab, container_of(lab, f"{backend[:2]}h1"), eps["h2"]["ip"], net["mtu"])
    assert fits and not over
    # routes carry netd's protocol
    routes = host_cmd(lab, "h1", "ip", "route", "show", "proto", "91")
    other = by_host[underlay_ip(lab, "h2")]
    if backend == "vxlan":
        assert f"{other} via {other.split('/')[0]} dev " in routes and "onlink" in routes
        mac = leases[other]["BackendData"]["VtepMAC"]
        dev = next(line.split()[1].rstrip(":") for line in
                   host_cmd(lab, "h1", "ip", "-o", "link", "show", "type", "vxlan").splitlines())
        assert f"{other.split('/')[0]} lladdr {mac} PERMANENT" in host_cmd(
            lab, "h1", "ip", "neigh", "show", "dev", dev)
        assert f"{mac} dst {underlay_ip(lab, 'h2')}" in host_cmd(
            lab, "h1", "bridge", "fdb", "show", "dev", dev)
        assert "dstport 8472" in host_cmd(lab, "h1", "ip", "-d", "link", "show", dev)
    elif backend == "host-gw":
        assert f"{other} via {underlay_ip(lab, 'h2')} dev ul0" in routes
    else:
        assert f"10.{octet}.0.0/16 dev " in routes
