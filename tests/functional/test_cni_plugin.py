"""netd-cni through the CNI protocol (environment + JSON on stdin) against a real netd,
alone and chained with the reference tuning, portmap and firewall plugins; then rootful podman
(CNI backend) on two simulated hosts with fixed addresses, real packets.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from netd.lab import Lab, console_script, ns_exec
from tests.support.podman import PodmanHost

pytestmark = [
    pytest.mark.root, pytest.mark.etcd,
    pytest.mark.skipif(not all(shutil.which(b) for b in ("podman", "runc", "/usr/lib/cni/portmap")),
                       reason="needs the container runtimes bootstrap.sh installs"),
]

REFERENCE = "/usr/lib/cni"


def cni(plugin: str, command: str, config: dict[str, Any], netns: str = "",
        args: str = "", container_id: str = "c0ffee000001", ifname: str = "eth0",
        in_netns: str | None = None) -> tuple[int, Any]:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
           "CNI_IFNAME": ifname, "CNI_ARGS": args, "CNI_PATH": REFERENCE,
           "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    cmd = [plugin if plugin.startswith("/") else f"{REFERENCE}/{plugin}"]
    if in_netns:
        cmd = ns_exec(in_netns, *cmd)
    result = subprocess.run(cmd, input=json.dumps(config), env=env, capture_output=True,
                            text=True, timeout=60)
    out = result.stdout.strip()
    return result.returncode, json.loads(out) if out else None


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(hosts=1, store="etcd", prefix=f"rt{secrets.token_hex(2)}") as lab:
        yield lab


def conf(lab: Lab, network: str, version: str = "1.0.0") -> dict[str, Any]:
    return {"cniVersion": version, "name": network, "type": "netd-cni",
            "socket": str(lab.hosts["h1"].socket)}


def test_add_check_del_version(lab: Lab) -> None:
    netd_cni = console_script("netd-cni")
    lab.netctl("h1", "network", "create", "cni1", "--subnet", "10.82.0.0/24")
    netns = f"/run/netns/{lab.add_container('h1', 'k1')}"
    code, version = cni(netd_cni, "VERSION", {})
    assert code == 0 and "1.0.0" in version["supportedVersions"]
    config = conf(lab, "cni1")
    args = "IgnoreUnknown=1;K8S_POD_NAME=web;MAC=02:00:00:82:00:0a;IP=10.82.0.10"
    code, result = cni(netd_cni, "ADD", config, netns, args)
    assert code == 0, result
    assert result["cniVersion"] == "1.0.0"
    assert result["interfaces"] == [{"name": "eth0", "mac": "02:00:00:82:00:0a",
                                     "sandbox": netns}]
    assert result["ips"] == [{"address": "10.82.0.10/24", "gateway": "10.82.0.1",
                              "interface": 0}]
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.82.0.1"}]
    inside = lab.in_container(netns.rsplit("/", 1)[1], "ip", "-4", "-o", "addr").stdout
    assert "10.82.0.10/24" in inside
    names = {e["name"]: e["ip"] for e in lab.netctl_json("h1", "endpoint", "ls")}
    assert names["web.h1"] == "10.82.0.10"  # podman-style name: NAME.HOST
    # a repeated ADD answers the same
    assert cni(netd_cni, "ADD", config, netns, args)[1] == result
    assert cni(netd_cni, "CHECK", {**config, "prevResult": result}, netns, args)[0] == 0
    code, error = cni(netd_cni, "CHECK", config, "/run/netns/elsewhere", args)
    assert code == 1 and error["code"] == 101 and "elsewhere" in error["msg"]
    # an old config version gets an old-style result
    code, old = cni(netd_cni, "ADD", conf(lab, "cni1", "0.4.0"), netns, args)
    assert code == 0 and old["ips"][0]["version"] == "4"
    assert cni(netd_cni, "DEL", config, netns, args) == (0, None)
    assert "web.h1" not in {e["name"] for e in lab.netctl_json("h1", "endpoint", "ls")}
    assert cni(netd_cni, "DEL", config, netns, args) == (0, None)  # idempotent
    # runtimeConfig, and DEL once the netns is gone
    code, result = cni(netd_cni, "ADD", {**config, "runtimeConfig": {"ips": ["10.82.0.11/24"]}},
                       netns, "K8S_POD_NAME=web2")
    assert code == 0 and result["ips"][0]["address"] == "10.82.0.11/24"
    lab.remove_container(netns.rsplit("/", 1)[1])
    assert cni(netd_cni, "DEL", config, netns, "K8S_POD_NAME=web2") == (0, None)
    # errors: CNI error JSON with netd's message
    other = f"/run/netns/{lab.add_container('h1', 'k2')}"
    code, error = cni(netd_cni, "ADD", config, other, "K8S_POD_NAME=bad;IP=10.99.0.1")
    assert code == 1 and error["code"] == 100 and "10.99.0.1" in error["msg"]
    code, error = cni(netd_cni, "ADD", {**config, "cniVersion": "0.1.0"}, other)
    assert code == 1 and error["code"] == 1
    code, error = cni(netd_cni, "ADD", {**config, "socket": "/nonexistent.sock"}, other)
    assert code == 1 and error["code"] == 11 and "netd is not reachable" in error["msg"]


def test_chained_with_tuning_portmap_and_firewall(lab: Lab) -> None:
    netd_cni = console_script("netd-cni")
    host = lab.hosts["h1"].netns
    lab.netctl("h1", "network", "create", "cni2", "--subnet", "10.83.0.0/24")
    name = lab.add_container("h1", "k3")
    netns = f"/run/netns/{name}"
    args = "IgnoreUnknown=1;K8S_POD_NAME=chained;IP=10.83.0.7"
    first = conf(lab, "cni2")
    tuning = {"cniVersion": "1.0.0", "name": "cni2", "type": "tuning",
              "sysctl": {"net.ipv4.conf.eth0.arp_notify": "1"}}
    portmap = {"cniVersion": "1.0.0", "name": "cni2", "type": "portmap",
               "capabilities": {"portMappings": True},
               "runtimeConfig": {"portMappings": [
                   {"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]}}
    code, result = cni(netd_cni, "ADD", first, netns, args)
    assert code == 0, result
    code, result = cni("tuning", "ADD", {**tuning, "prevResult": result}, netns, args)
    assert code == 0, result
    code, result = cni("portmap", "ADD", {**portmap, "prevResult": result}, netns, args,
                       in_netns=host)
    assert code == 0, result
    firewall = {"cniVersion": "1.0.0", "name": "cni2", "type": "firewall",
                "backend": "iptables"}
    code, result = cni("firewall", "ADD", {**firewall, "prevResult": result}, netns, args,
                       in_netns=host)
    assert code == 0, result
    assert "10.83.0.7" in lab.in_container(host, "iptables", "-S", "CNI-FORWARD").stdout
    assert result["ips"][0]["address"] == "10.83.0.7/24"
    sysctl = lab.in_container(name, "cat", "/proc/sys/net/ipv4/conf/eth0/arp_notify")
    assert sysctl.stdout.strip() == "1"
    nat = lab.in_container(host, "iptables", "-t", "nat", "-S").stdout
    assert "18080" in nat and "10.83.0.7" in nat
    for plugin, config, where in ((netd_cni, first, None), ("tuning", tuning, None),
                                  ("firewall", firewall, host)):
        code, error = cni(plugin, "CHECK", {**config, "prevResult": result}, netns, args,
                          in_netns=where)
        assert code == 0, (plugin, error)
    for plugin, config, where in (("firewall", firewall, host), ("portmap", portmap, host),
                                  ("tuning", tuning, None),
                                  (netd_cni, first, None)):
        code, error = cni(plugin, "DEL", {**config, "prevResult": result}, netns, args,
                          in_netns=where)
        assert code == 0, (plugin, error)
    assert "18080" not in lab.in_container(host, "iptables", "-t", "nat", "-S").stdout
    assert "chained.h1" not in {e["name"] for e in lab.netctl_json("h1", "endpoint", "ls")}


@pytest.fixture(scope="module")
def podman_site() -> Iterator[tuple[Lab, PodmanHost, PodmanHost]]:
    lab = Lab(hosts=0, store="etcd", prefix=f"rt{secrets.token_hex(2)}")
    hosts: list[PodmanHost] = []
    try:
        lab.start()
        for name in ("h1", "h2"):
            lab.add_host(name)
            hosts.append(PodmanHost(lab, name).start())
        for host in hosts:
            host.import_busybox()
        yield lab, hosts[0], hosts[1]
    finally:
        for host in hosts:
            host.close()
        lab.close()


def podman_ping(host: PodmanHost, container: str, ip: str, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if host.podman("exec", container, "ping", "-c", "1", "-W", "1", ip,
                       check=False).returncode == 0:
            return True
    return False


def test_podman_on_two_hosts(podman_site: tuple[Lab, PodmanHost, PodmanHost]) -> None:
    lab, h1, h2 = podman_site
    lab.netctl("h1", "network", "create", "pblue", "--subnet", "10.84.0.0/24")
    for host in (h1, h2):
        host.add_network("pblue")
    ran = h1.run_container("p1", "pblue", "--ip", "10.84.0.10", "--mac-address",
                           "02:00:00:84:00:10")
    assert ran.returncode == 0, ran.stderr
    ran = h2.run_container("p2", "pblue", "--ip", "10.84.0.20")
    assert ran.returncode == 0, ran.stderr
    addr = h1.podman("exec", "p1", "ip", "-4", "-o", "addr", "show", "eth0").stdout
    assert "10.84.0.10/24" in addr
    mac = h1.podman("exec", "p1", "cat", "/sys/class/net/eth0/address").stdout.strip()
    assert mac == "02:00:00:84:00:10"
    assert podman_ping(h1, "p1", "10.84.0.20")
    assert podman_ping(h2, "p2", "10.84.0.10")
    eps = {e["name"]: e for e in lab.netctl_json("h1", "endpoint", "ls", "--network", "pblue")}
    assert eps["p1.h1"]["ip"] == "10.84.0.10" and eps["p2.h2"]["host"] == "h2"
    # a container recreated under its name gets its automatic address back
    assert h1.run_container("p3", "pblue").returncode == 0
    first = {e["name"]: e["ip"] for e in lab.netctl_json("h1", "endpoint", "ls")}["p3.h1"]
    h1.podman("rm", "-f", "-t", "0", "p3")
    assert "p3.h1" not in {e["name"] for e in lab.netctl_json("h1", "endpoint", "ls")}
    assert h1.run_container("p3", "pblue").returncode == 0
    again = {e["name"]: e["ip"] for e in lab.netctl_json("h1", "endpoint", "ls")}["p3.h1"]
    assert again == first
    assert podman_ping(h2, "p2", again)


def test_netctl_attach_by_podman_container_name(
        podman_site: tuple[Lab, PodmanHost, PodmanHost]) -> None:
    lab, h1, h2 = podman_site
    h1.start_api()
    lab.netctl("h1", "network", "create", "pnamed", "--subnet", "10.86.0.0/24")
    h2.add_network("pnamed")
    assert h2.run_container("q2", "pnamed", "--ip", "10.86.0.2").returncode == 0
    assert h1.run_container("q1", "none").returncode == 0
    attached = lab.netctl_json("h1", "attach", "q1", "--network", "pnamed", "--ip",
                               "10.86.0.10")
    assert attached["name"] == "q1"
    assert podman_ping(h2, "q2", "10.86.0.10")
    lab.netctl("h1", "detach", "q1", "--network", "pnamed")
