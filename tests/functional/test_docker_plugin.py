"""The Docker plugin through real dockerd (Debian's 20.10): two simulated hosts, each
running dockerd beside a `netd --docker-plugin` in its own netns and mount namespace, a
third host with a plain `netctl attach`-ed namespace, real etcd, real packets.

One lab serves the module (dockerd and etcd take seconds to start); each test uses its
own Docker network and subnet.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from netd.lab import Lab
from tests.support.docker import IMAGE, DockerHost

pytestmark = [
    pytest.mark.root, pytest.mark.etcd,
    pytest.mark.skipif(not all(shutil.which(b) for b in ("dockerd", "/usr/bin/docker")),
                       reason="needs the container runtimes bootstrap.sh installs"),
]


@pytest.fixture(scope="module")
def site() -> Iterator[tuple[Lab, DockerHost, DockerHost]]:
    lab = Lab(hosts=0, store="etcd", prefix=f"rt{secrets.token_hex(2)}")
    hosts: list[DockerHost] = []
    try:
        lab.start()
        for name in ("h1", "h2"):
            lab.add_host(name)
            hosts.append(DockerHost(lab, name).start())
        lab.add_host("h3")
        lab.start_netd("h3")
        for host in hosts:
            host.import_busybox()
        yield lab, hosts[0], hosts[1]
    finally:
        keep = os.environ.get("NETD_TEST_LOGS")  # a directory to keep the daemons' logs in
        if keep:
            for log in lab.dir.rglob("*.log"):
                with contextlib.suppress(OSError):
                    shutil.copy(log, Path(keep) / f"{log.parent.name}-{log.name}")
        for host in hosts:
            host.close()
        lab.close()


def create(host: DockerHost, name: str, subnet: str, *extra: str
           ) -> subprocess.CompletedProcess[str]:
    return host.docker("network", "create", "-d", "netd", "--ipam-driver", "netd",
                       "--subnet", subnet, *extra, name, check=False)


def run_container(host: DockerHost, name: str, network: str, *extra: str
                  ) -> subprocess.CompletedProcess[str]:
    return host.docker("run", "-d", "--name", name, "--network", network, *extra, IMAGE,
                       "sleep", "100000", check=False)


def wait_ping(host: DockerHost, container: str, ip: str, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if host.docker("exec", container, "ping", "-c", "1", "-W", "1", ip,
                       check=False).returncode == 0:
            return True
    return False


def address_of(host: DockerHost, container: str, ifname: str = "eth0") -> str:
    """The interface's address inside the container, once netd plugged it."""
    deadline = time.monotonic() + 10
    out = ""
    while time.monotonic() < deadline:
        out = host.docker("exec", container, "ip", "-4", "-o", "addr", "show", ifname,
                          check=False).stdout
        if "inet " in out:
            return out.split("inet ", 1)[1].split()[0]
        time.sleep(0.05)
    raise AssertionError(f"{container} has no {ifname} address: {out!r}")


def endpoints(lab: Lab, host: str, network: str) -> list[dict[str, str]]:
    result: list[dict[str, str]] = lab.netctl_json(host, "endpoint", "ls", "--network", network)
    return result


def test_fixed_addresses_reach_across_hosts(site: tuple[Lab, DockerHost, DockerHost]) -> None:
    lab, h1, h2 = site
    for host in (h1, h2):
        result = create(host, "blue", "10.71.0.0/24", "--gateway", "10.71.0.254")
        assert result.returncode == 0, result.stderr
    ran = run_container(h1, "a1", "blue", "--ip", "10.71.0.10", "--mac-address",
                        "02:00:00:71:00:10")
    assert ran.returncode == 0, ran.stderr
    ran = run_container(h2, "a2", "blue", "--ip", "10.71.0.20")
    assert ran.returncode == 0, ran.stderr
    assert address_of(h1, "a1") == "10.71.0.10/24"
    assert address_of(h2, "a2") == "10.71.0.20/24"
    link = h1.docker("exec", "a1", "cat", "/sys/class/net/eth0/address").stdout.strip()
    assert link == "02:00:00:71:00:10"
    route = h1.docker("exec", "a1", "ip", "route", "show", "default").stdout
    assert "via 10.71.0.254" in route
    # a third host's namespace, attached the plain way
    c3 = lab.add_container("h3", "c3")
    lab.netctl("h3", "attach", c3, "--network", "blue", "--ip", "10.71.0.30")
    assert wait_ping(h1, "a1", "10.71.0.20")
    assert wait_ping(h2, "a2", "10.71.0.10")
    assert wait_ping(h1, "a1", "10.71.0.30")
    assert lab.wait_ping(c3, "10.71.0.20")
    by_ip = {e["ip"]: e for e in endpoints(lab, "h1", "blue")}
    assert by_ip["10.71.0.10"]["host"] == "h1" and by_ip["10.71.0.20"]["host"] == "h2"
    assert by_ip["10.71.0.10"]["mac"] == "02:00:00:71:00:10"
    assert (by_ip["10.71.0.10"]["name"], by_ip["10.71.0.20"]["name"]) == ("a1.h1", "a2.h2")

    # removed and run again with the same --ip (and MAC: a2's ARP cache holds it)
    h1.docker("rm", "-f", "a1")
    assert "10.71.0.10" not in {e["ip"] for e in endpoints(lab, "h1", "blue")}
    assert run_container(h1, "a1", "blue", "--ip", "10.71.0.10", "--mac-address",
                         "02:00:00:71:00:10").returncode == 0
    assert address_of(h1, "a1") == "10.71.0.10/24"
    assert wait_ping(h2, "a2", "10.71.0.10")

    # an automatic address: inside the subnet, reachable
    assert run_container(h1, "a3", "blue").returncode == 0
    auto = address_of(h1, "a3").split("/")[0]
    assert auto.startswith("10.71.0.") and auto not in ("10.71.0.254", "10.71.0.10")
    assert wait_ping(h2, "a2", auto)

    # the same --ip twice: refused with netd's reason
    taken = run_container(h2, "a4", "blue", "--ip", "10.71.0.20")
    assert taken.returncode != 0
    assert "10.71.0.20" in taken.stderr and "netd" in taken.stderr


def test_network_rm_on_one_host_leaves_the_other(site: tuple[Lab, DockerHost, DockerHost]
                                                 ) -> None:
    lab, h1, h2 = site
    for host in (h1, h2):
        assert create(host, "green", "10.72.0.0/24").returncode == 0
    assert run_container(h1, "g1", "green", "--ip", "10.72.0.11").returncode == 0
    assert run_container(h2, "g2", "green", "--ip", "10.72.0.12").returncode == 0
    c3 = lab.add_container("h3", "g3")
    lab.netctl("h3", "attach", c3, "--network", "green", "--ip", "10.72.0.13")
    assert wait_ping(h2, "g2", "10.72.0.11")
    h1.docker("rm", "-f", "g1")
    h1.docker("network", "rm", "green")
    assert wait_ping(h2, "g2", "10.72.0.13")
    assert [n["name"] for n in lab.netctl_json("h3", "network", "ls") if n["name"] == "green"]


def test_an_automatic_address_is_sticky_by_container_name(
        site: tuple[Lab, DockerHost, DockerHost]) -> None:
    lab, h1, h2 = site
    for host in (h1, h2):
        assert create(host, "pink", "10.73.0.0/24", "--ip-range", "10.73.0.128/25"
                      ).returncode == 0
    assert run_container(h1, "s1", "pink").returncode == 0
    first = address_of(h1, "s1").split("/")[0]
    assert int(first.rsplit(".", 1)[1]) >= 128  # from --ip-range
    assert run_container(h2, "s2", "pink").returncode == 0
    other = address_of(h2, "s2").split("/")[0]
    assert other != first and int(other.rsplit(".", 1)[1]) >= 128
    # recreated under the same name: the same address, though IPAM handed dockerd another
    h1.docker("rm", "-f", "s1")
    assert first not in {e["ip"] for e in endpoints(lab, "h1", "pink")}
    assert run_container(h1, "s1", "pink").returncode == 0
    assert address_of(h1, "s1") == f"{first}/24"
    assert wait_ping(h2, "s2", first)
    assert {e["name"]: e["ip"] for e in endpoints(lab, "h3", "pink")} == {
        "s1.h1": first, "s2.h2": other}
    # another name never gets it
    assert run_container(h1, "s3", "pink").returncode == 0
    assert address_of(h1, "s3").split("/")[0] not in (first, other)
    for host, names in ((h1, ("s1", "s3")), (h2, ("s2",))):
        host.docker("rm", "-f", *names)
    assert endpoints(lab, "h1", "pink") == []


def test_netd_killed_and_restarted_under_running_containers(
        site: tuple[Lab, DockerHost, DockerHost]) -> None:
    lab, h1, h2 = site
    for host in (h1, h2):
        assert create(host, "amber", "10.74.0.0/24").returncode == 0
    assert run_container(h1, "k1", "amber", "--ip", "10.74.0.1" + "1").returncode == 0
    assert run_container(h2, "k2", "amber", "--ip", "10.74.0.12").returncode == 0
    assert wait_ping(h1, "k1", "10.74.0.12")
    result: dict[str, str] = {}

    def ping() -> None:
        out = h1.docker("exec", "k1", "ping", "-c", "60", "-i", "0.1", "10.74.0.12",
                        check=False, timeout=60)
        result["out"] = out.stdout

    pinger = threading.Thread(target=ping)
    pinger.start()
    time.sleep(1)
    h1.kill_netd()  # and the Docker plugin it serves
    h1.start_netd()
    pinger.join()
    assert " 0% packet loss" in result["out"], result["out"]
    # dockerd replays nothing: the restarted netd knows the network and the endpoint
    # from the store alone
    assert run_container(h1, "k3", "amber", "--ip", "10.74.0.13").returncode == 0
    assert wait_ping(h2, "k2", "10.74.0.13")
    h1.docker("rm", "-f", "k1")
    assert "10.74.0.11" not in {e["ip"] for e in endpoints(lab, "h1", "amber")}
    assert run_container(h1, "k1", "amber", "--ip", "10.74.0.11").returncode == 0
    assert wait_ping(h2, "k2", "10.74.0.11")
    h1.docker("rm", "-f", "k1", "k3")
    h2.docker("rm", "-f", "k2")
    assert endpoints(lab, "h1", "amber") == []
    h1.docker("network", "rm", "amber")


def test_refusals_show_netds_message(site: tuple[Lab, DockerHost, DockerHost]) -> None:
    lab, h1, _h2 = site
    lab.netctl("h3", "network", "create", "taken", "--subnet", "10.75.0.0/24")
    # the netd network exists with another subnet: shown when its name is known
    result = create(h1, "other", "10.76.0.0/24", "-o", "network=taken")
    assert result.returncode != 0
    assert "already exists in netd with subnet 10.75.0.0/24" in result.stderr
    result = h1.docker("network", "create", "-d", "netd", "--ipam-driver", "netd", "nosubnet",
                       check=False)
    assert result.returncode != 0 and "--subnet" in result.stderr
    assert create(h1, "violet", "10.77.0.0/24").returncode == 0
    outside = run_container(h1, "v1", "violet", "--ip", "10.78.0.5")
    assert outside.returncode != 0
    with contextlib.suppress(Exception):
        h1.docker("rm", "-f", "v1", check=False)
    # -o passes through: the named netd network joined, with its subnet
    assert create(h1, "alias", "10.75.0.0/24", "-o", "network=taken").returncode == 0
    assert run_container(h1, "t1", "alias", "--ip", "10.75.0.9").returncode == 0
    assert {e["ip"] for e in endpoints(lab, "h1", "taken")} == {"10.75.0.9"}
    info = json.loads(h1.docker("network", "inspect", "alias").stdout)[0]
    assert info["Driver"] == "netd" and info["IPAM"]["Driver"] == "netd"


def test_netctl_attach_by_docker_container_name(site: tuple[Lab, DockerHost, DockerHost]
                                                ) -> None:
    lab, h1, _h2 = site
    lab.netctl("h1", "network", "create", "named", "--subnet", "10.79.0.0/24")
    h1.docker("run", "-d", "--name", "web", "--network", "none", IMAGE, "sleep", "100000")
    attached = lab.netctl_json("h1", "attach", "web", "--network", "named")
    assert attached["name"] == "web" and attached["container"] == "web"
    first = attached["ip"]
    peer = lab.add_container("h3", "n3")
    lab.netctl("h3", "attach", peer, "--network", "named", "--ip", "10.79.0.200")
    assert lab.wait_ping(peer, first)
    assert "web" in {e["name"] for e in endpoints(lab, "h3", "named")}
    # recreated under the same name: the same address again
    h1.docker("rm", "-f", "web")
    lab.netctl("h1", "detach", "web", "--network", "named")
    h1.docker("run", "-d", "--name", "web", "--network", "none", IMAGE, "sleep", "100000")
    assert lab.netctl_json("h1", "attach", "web", "--network", "named")["ip"] == first
    assert lab.wait_ping(peer, first)
    missing = lab.netctl("h1", "attach", "nosuchcontainer", "--network", "named", check=False)
    assert missing.returncode != 0 and "not found" in missing.stderr
    h1.docker("rm", "-f", "web")
    lab.netctl("h1", "detach", "web", "--network", "named")


def test_dockerd_restart_brings_containers_back(site: tuple[Lab, DockerHost, DockerHost]
                                                ) -> None:
    lab, h1, h2 = site
    for host in (h1, h2):
        assert create(host, "teal", "10.80.0.0/24").returncode == 0
    assert run_container(h1, "d1", "teal", "--ip", "10.80.0.11", "--restart",
                         "always").returncode == 0
    assert run_container(h2, "d2", "teal", "--ip", "10.80.0.12").returncode == 0
    assert run_container(h1, "d3", "teal", "--restart", "always").returncode == 0  # automatic
    automatic = address_of(h1, "d3").split("/")[0]
    assert wait_ping(h2, "d2", "10.80.0.11")
    h1.stop_dockerd()
    h1.start_dockerd()
    deadline = time.monotonic() + 30
    for name in ("d1", "d3"):
        while h1.docker("inspect", "-f", "{{.State.Running}}", name, check=False
                        ).stdout.strip() != "true":
            assert time.monotonic() < deadline, f"{name} did not come back"
            time.sleep(0.2)
    assert address_of(h1, "d1") == "10.80.0.11/24"
    assert address_of(h1, "d3") == f"{automatic}/24"
    assert wait_ping(h2, "d2", "10.80.0.11")
    assert wait_ping(h2, "d2", automatic)
    assert wait_ping(h1, "d1", "10.80.0.12")
    assert sorted(e["ip"] for e in endpoints(lab, "h1", "teal") if e["host"] == "h1") == \
        sorted(["10.80.0.11", automatic])


def test_network_connect_and_disconnect_a_running_container(
        site: tuple[Lab, DockerHost, DockerHost]) -> None:
    lab, h1, h2 = site
    for host in (h1, h2):
        assert create(host, "cyan", "10.81.0.0/24", "--ip-range", "10.81.0.64/26"
                      ).returncode == 0
    assert run_container(h2, "y2", "cyan", "--ip", "10.81.0.2").returncode == 0
    assert create(h1, "cyanhome", "10.85.0.0/24").returncode == 0
    assert run_container(h1, "y1", "cyanhome", "--ip", "10.85.0.5").returncode == 0
    address_of(h1, "y1")
    # the sandbox exists already: the plugin attaches before answering Join
    h1.docker("network", "connect", "cyan", "y1")
    auto = address_of(h1, "y1", "eth1").split("/")[0]
    assert 64 <= int(auto.rsplit(".", 1)[1]) < 128  # from --ip-range
    assert wait_ping(h2, "y2", auto)
    h1.docker("network", "disconnect", "cyan", "y1")
    assert auto not in {e["ip"] for e in endpoints(lab, "h1", "cyan")}
    # Leave answers once the store is right; the interface goes right after
    deadline = time.monotonic() + 5
    while "inet " in h1.docker("exec", "y1", "ip", "-4", "-o", "addr", "show", "eth1",
                               check=False).stdout:
        assert time.monotonic() < deadline, "eth1 still there after disconnect"
        time.sleep(0.05)
    assert address_of(h1, "y1") == "10.85.0.5/24"


def test_containers_started_at_once_get_distinct_addresses(
        site: tuple[Lab, DockerHost, DockerHost]) -> None:
    lab, h1, h2 = site
    for host in (h1, h2):
        assert create(host, "olive", "10.86.0.0/28").returncode == 0
    names = [f"p{n}" for n in range(4)]
    with ThreadPoolExecutor(len(names) + 1) as pool:
        runs = [pool.submit(run_container, h1, name, "olive") for name in names]
        runs.append(pool.submit(run_container, h2, "q0", "olive"))
        assert all(run.result().returncode == 0 for run in runs), [
            run.result().stderr for run in runs]
    found = {name: address_of(h1, name).split("/")[0] for name in names}
    found["q0"] = address_of(h2, "q0").split("/")[0]
    assert len(set(found.values())) == len(found), found
    assert {e["ip"] for e in endpoints(lab, "h3", "olive")} == set(found.values())
    for name in names:
        assert wait_ping(h2, "q0", found[name])
    h1.docker("rm", "-f", *names)
    h2.docker("rm", "-f", "q0")
    assert endpoints(lab, "h1", "olive") == []
