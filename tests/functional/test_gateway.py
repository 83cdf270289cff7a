"""The distributed gateway through real netd processes and netctl (issue 10): egress,
expose/hide, publish, tenants and security groups on exposed traffic, restarts.

Simulated hosts on one underlay with real etcd; the outside host is a namespace on the
underlay that runs no netd and reaches containers only through an exposing host."""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Iterator

import pytest

from netd.lab import Lab
from tests.support.gateway import (
    OUTSIDE_IP,
    add_outside,
    gateway_lab,
    route_via,
    start_peer_echo,
    unroute,
)
from tests.support.netctl import netctl_fails
from tests.support.probes import probe, start_server
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with gateway_lab(hosts=3, store="etcd", host_ttl=5,
                     prefix=f"gw{secrets.token_hex(2)}") as lab:
        yield lab


@pytest.fixture(scope="module")
def outside(lab: Lab) -> str:
    return add_outside(lab)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


def attach(lab: Lab, network: str, host: str, short: str, ip: str, *args: str) -> str:
    netns = lab.add_container(host, short)
    lab.netctl(host, "attach", netns, "--network", network, "--ip", ip, *args)
    return netns


def pings(lab: Lab, netns: str, ip: str) -> bool:
    return lab.ping(netns, ip, count=1, wait=1.0).returncode == 0


def test_egress_reaches_own_host_and_outside_and_can_be_turned_off(
        lab: Lab, outside: str) -> None:
    lab.netctl("h1", "network", "create", "eg", "--subnet", "10.61.0.0/24")
    c1 = attach(lab, "eg", "h1", "eg1", "10.61.0.11")
    c2 = attach(lab, "eg", "h2", "eg2", "10.61.0.12")
    assert wait_until(lambda: pings(lab, c1, "10.61.0.1"), 10), "gateway does not answer"
    assert pings(lab, c1, lab.hosts["h1"].underlay_ip)
    assert pings(lab, c1, OUTSIDE_IP)
    assert wait_until(lambda: pings(lab, c2, OUTSIDE_IP), 10)
    assert pings(lab, c2, lab.hosts["h2"].underlay_ip)
    assert pings(lab, c1, "10.61.0.12")  # the overlay still carries container traffic

    # no ARP for the gateway leaves a host by the overlay (each host answers its own)
    vni = lab.netctl_json("h1", "network", "inspect", "eg")["vni"]
    dump = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{lab.hosts['h1'].netns}", "tcpdump", "-nl", "-i",
         f"ndv{vni}", "arp"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        time.sleep(1.0)
        lab.in_container(c1, "ip", "neigh", "flush", "all")
        assert pings(lab, c1, "10.61.0.1")
        lab.in_container(c1, "ip", "neigh", "flush", "all")
        assert pings(lab, c1, "10.61.0.12")  # ARP for a remote container still works
        time.sleep(0.5)
    finally:
        dump.terminate()
    captured = dump.communicate(timeout=10)[0]
    assert "10.61.0.1," not in captured and "10.61.0.1 " not in captured, captured

    bad = netctl_fails(lab, "h1", "network", "create", "eg-bad", "--subnet", "10.62.0.0/24",
                "-o", "egress=maybe")
    assert "egress" in bad
    lab.netctl("h1", "network", "create", "noeg", "--subnet", "10.62.0.0/24",
               "-o", "egress=false")
    c3 = attach(lab, "noeg", "h1", "noeg1", "10.62.0.11")
    assert wait_until(lambda: pings(lab, c3, "10.62.0.1"), 10), "gateway does not answer"
    assert not pings(lab, c3, lab.hosts["h1"].underlay_ip)
    assert not pings(lab, c3, OUTSIDE_IP)


Reach = dict[str, tuple[bool, str | None, str | None]]


def reaches(lab: Lab, outside: str, netns_ip: dict[str, str]) -> Reach:
    """From the outside host: (ping, TCP answer, UDP answer) per container address."""
    return {ip: (pings(lab, outside, ip), probe(outside, ip, 8080, "tcp"),
                 probe(outside, ip, 5353, "udp"))
            for ip in netns_ip.values()}


def test_expose_reaches_containers_on_every_host_and_hide_stops_it(
        lab: Lab, outside: str, procs: list[subprocess.Popen[str]]) -> None:
    lab.netctl("h2", "network", "create", "ex", "--subnet", "10.63.0.0/24")
    c2 = attach(lab, "ex", "h2", "ex2", "10.63.0.12")
    c3 = attach(lab, "ex", "h3", "ex3", "10.63.0.13")
    for netns in (c2, c3):
        procs.append(start_server(netns, netns, "tcp/8080", "udp/5353"))
    procs.append(start_peer_echo(c3, 7000))
    route_via(outside, "10.63.0.0/24", lab.hosts["h1"].underlay_ip)
    try:
        assert not pings(lab, outside, "10.63.0.12")  # h1 does not expose it yet
        out = lab.netctl("h1", "expose", "ex").stdout
        assert "exposed by host h1" in out
        ips = {c2: "10.63.0.12", c3: "10.63.0.13"}
        assert wait_until(lambda: pings(lab, outside, "10.63.0.12"), 10)
        assert reaches(lab, outside, ips) == {
            "10.63.0.12": (True, c2, c2), "10.63.0.13": (True, c3, c3)}
        # the outside source keeps its address towards the containers
        assert probe(outside, "10.63.0.13", 7000, "udp") == OUTSIDE_IP
        inspect = lab.netctl_json("h1", "network", "inspect", "ex")
        assert inspect["exposed_by"] == [{"host": "h1", "masquerade": True}]
        status = lab.netctl_json("h1", "status")
        assert status["gateway"]["exposes"] == [{"network": "ex", "masquerade": True}]
        assert "exposed by: h1" in lab.netctl("h2", "network", "inspect", "ex").stdout

        # a second exposing host: both work
        lab.netctl("h2", "expose", "ex")
        route_via(outside, "10.63.0.0/24", lab.hosts["h2"].underlay_ip)
        assert wait_until(lambda: pings(lab, outside, "10.63.0.13"), 10)
        assert reaches(lab, outside, ips) == {
            "10.63.0.12": (True, c2, c2), "10.63.0.13": (True, c3, c3)}
        route_via(outside, "10.63.0.0/24", lab.hosts["h1"].underlay_ip)
        assert reaches(lab, outside, ips) == {
            "10.63.0.12": (True, c2, c2), "10.63.0.13": (True, c3, c3)}

        assert "hidden" in lab.netctl("h1", "hide", "ex").stdout
        assert "not exposed by host h1" in netctl_fails(lab, "h1", "hide", "ex")
        assert reaches(lab, outside, ips) == {
            "10.63.0.12": (False, None, None), "10.63.0.13": (False, None, None)}
        lab.netctl("h2", "hide", "ex")
        route_via(outside, "10.63.0.0/24", lab.hosts["h2"].underlay_ip)
        assert not pings(lab, outside, "10.63.0.13")
        assert lab.netctl_json("h1", "network", "inspect", "ex")["exposed_by"] == []
    finally:
        unroute(outside, "10.63.0.0/24")


def test_publish_tcp_and_udp_from_outside_and_loopback(
        lab: Lab, outside: str, procs: list[subprocess.Popen[str]]) -> None:
    lab.netctl("h2", "network", "create", "pub", "--subnet", "10.64.0.0/24")
    c = attach(lab, "pub", "h2", "pub2", "10.64.0.12")
    other = attach(lab, "pub", "h2", "pub2b", "10.64.0.13")
    procs.append(start_server(c, c, "tcp/8080", "udp/5353"))
    h2 = lab.hosts["h2"]
    assert probe(outside, h2.underlay_ip, 18080, "tcp") is None
    out = lab.netctl("h2", "publish", c, "--network", "pub", "--port", "18080:8080/tcp").stdout
    assert f"18080/tcp on host h2 -> {c}:8080" in out
    lab.netctl("h2", "publish", c, "--network", "pub", "--port", "15353:5353/udp")
    assert probe(outside, h2.underlay_ip, 18080, "tcp") == c
    assert probe(outside, h2.underlay_ip, 15353, "udp") == c
    assert probe(h2.netns, "127.0.0.1", 18080, "tcp") == c  # loopback on the host
    rows = {e["name"]: e for e in lab.netctl_json("h2", "endpoint", "ls", "--network", "pub")}
    assert sorted(rows[c]["published"]) == ["15353:5353/udp", "18080:8080/tcp"]
    assert "18080:8080/tcp" in lab.netctl("h1", "endpoint", "ls").stdout
    status = lab.netctl_json("h2", "status")["gateway"]["published"]
    assert {(p["host_port"], p["protocol"]) for p in status} == {(18080, "tcp"), (15353, "udp")}

    # refusals: one line, nothing changes
    busy = netctl_fails(lab, "h2", "publish", other, "--network", "pub", "--port", "18080:80")
    assert "host port 18080/tcp is already published on host h2" in busy
    assert "on host h2" in netctl_fails(lab, "h1", "publish", c, "--network", "pub",
                                 "--port", "18081:8080")
    assert "HOSTPORT:PORT" in netctl_fails(lab, "h2", "publish", c, "--network", "pub",
                                    "--port", "8080")
    assert "ports are 1..65535" in netctl_fails(lab, "h2", "publish", c, "--network", "pub",
                                         "--port", "70000:80")
    assert probe(outside, h2.underlay_ip, 18080, "tcp") == c
    assert lab.netctl("h2", "publish", c, "--network", "pub",
                      "--port", "18080:8080/tcp").returncode == 0  # the same again: no change

    lab.netctl("h2", "unpublish", c, "--network", "pub", "--port", "18080/tcp")
    assert probe(outside, h2.underlay_ip, 18080, "tcp") is None
    assert probe(outside, h2.underlay_ip, 15353, "udp") == c
    lab.netctl("h2", "unpublish", c, "--network", "pub")
    assert probe(outside, h2.underlay_ip, 15353, "udp") is None
    assert "no published ports" in netctl_fails(lab, "h2", "unpublish", c, "--network", "pub")


def test_another_tenants_overlapping_network_stays_unreachable(
        lab: Lab, outside: str, procs: list[subprocess.Popen[str]]) -> None:
    lab.netctl("h1", "network", "create", "ta", "--subnet", "10.65.0.0/24", "--tenant", "ta")
    lab.netctl("h1", "network", "create", "tb", "--subnet", "10.65.0.0/24", "--tenant", "tb")
    a = attach(lab, "ta", "h2", "ta2", "10.65.0.12")
    b = attach(lab, "tb", "h2", "tb2", "10.65.0.12")  # the same address, another tenant
    b13 = attach(lab, "tb", "h2", "tb3", "10.65.0.13")
    b1 = attach(lab, "tb", "h1", "tb1", "10.65.0.14")  # on the exposing host itself
    for netns in (a, b, b13, b1):
        procs.append(start_server(netns, netns, "tcp/8080"))
    lab.netctl("h1", "expose", "ta")
    refused = netctl_fails(lab, "h1", "expose", "tb")
    assert "already exposes network ta" in refused and "overlaps tb" in refused
    route_via(outside, "10.65.0.0/24", lab.hosts["h1"].underlay_ip)
    try:
        assert wait_until(lambda: probe(outside, "10.65.0.12", 8080) == a, 10)
        assert probe(outside, "10.65.0.13", 8080) is None
        assert probe(outside, "10.65.0.14", 8080) is None
        assert not pings(lab, outside, "10.65.0.13")
        # both tenants' equal addresses reach the outside at once, each by its router
        for netns in (a, b):
            assert wait_until(lambda netns=netns: pings(lab, netns, OUTSIDE_IP), 10)
            assert pings(lab, netns, "10.65.0.1")
        assert pings(lab, b, "10.65.0.13") and not pings(lab, a, "10.65.0.13")
    finally:
        unroute(outside, "10.65.0.0/24")
        lab.netctl("h1", "hide", "ta")


def test_security_groups_hold_for_exposed_and_published_traffic(
        lab: Lab, outside: str, procs: list[subprocess.Popen[str]]) -> None:
    lab.netctl("h1", "network", "create", "sgn", "--subnet", "10.66.0.0/24")
    lab.netctl("h1", "sg", "create", "web")
    c = attach(lab, "sgn", "h3", "sg3", "10.66.0.13", "--sg", "web")
    procs.append(start_server(c, c, "tcp/8080"))
    lab.netctl("h1", "expose", "sgn")
    lab.netctl("h3", "publish", c, "--network", "sgn", "--port", "28080:8080")
    h3 = lab.hosts["h3"].underlay_ip
    route_via(outside, "10.66.0.0/24", lab.hosts["h1"].underlay_ip)
    try:
        assert not pings(lab, outside, "10.66.0.13")
        assert probe(outside, "10.66.0.13", 8080) is None
        assert probe(outside, h3, 28080) is None
        lab.netctl("h1", "sg", "rule", "add", "web", "--ingress", "--proto", "tcp",
                   "--port", "8080", "--cidr", f"{OUTSIDE_IP}/32")
        assert wait_until(lambda: probe(outside, "10.66.0.13", 8080) == c, 10)
        assert wait_until(lambda: probe(outside, h3, 28080) == c, 10)
        assert not pings(lab, outside, "10.66.0.13")  # the rule admits TCP 8080 only
    finally:
        unroute(outside, "10.66.0.0/24")
        lab.netctl("h1", "hide", "sgn")


def test_kill_and_restart_of_the_exposing_netd_loses_no_ping(
        lab: Lab, outside: str) -> None:
    lab.netctl("h2", "network", "create", "ka", "--subnet", "10.67.0.0/24")
    attach(lab, "ka", "h2", "ka2", "10.67.0.12")
    lab.netctl("h1", "expose", "ka")
    route_via(outside, "10.67.0.0/24", lab.hosts["h1"].underlay_ip)
    try:
        assert wait_until(lambda: pings(lab, outside, "10.67.0.12"), 10)
        ping = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{outside}", "ping", "-n", "-q", "-i", "0.05",
             "-W", "1", "-w", "10", "10.67.0.12"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(1.0)
        lab.stop_netd("h1", kill=True)
        time.sleep(1.0)
        lab.start_netd("h1")
        assert wait_until(lambda: lab.netctl_json("h1", "status")["syncs"] > 0, 20)
        out, _ = ping.communicate(timeout=30)
        assert " 0% packet loss" in out, out
        assert lab.netctl_json("h1", "network", "inspect", "ka")["exposed_by"] == [
            {"host": "h1", "masquerade": True}]
        assert pings(lab, outside, "10.67.0.12")
    finally:
        unroute(outside, "10.67.0.0/24")


def attach_auto(lab: Lab, network: str, host: str, short: str) -> tuple[str, str]:
    netns = lab.add_container(host, short)
    ep = lab.netctl_json(host, "attach", netns, "--network", network)
    return netns, str(ep["ip"])


def test_flannel_egress_expose_and_publish(
        lab: Lab, outside: str, procs: list[subprocess.Popen[str]]) -> None:
    lab.netctl("h2", "network", "create", "fl", "--subnet", "10.70.0.0/16",
               "--driver", "flannel")
    c2, ip2 = attach_auto(lab, "fl", "h2", "fl2")
    c3, ip3 = attach_auto(lab, "fl", "h3", "fl3")
    for netns in (c2, c3):
        procs.append(start_server(netns, netns, "tcp/8080", "udp/5353"))
    # egress: own host and the outside, masqueraded
    assert wait_until(lambda: pings(lab, c2, OUTSIDE_IP), 10)
    assert pings(lab, c2, lab.hosts["h2"].underlay_ip)
    assert pings(lab, c3, OUTSIDE_IP)

    route_via(outside, "10.70.0.0/16", lab.hosts["h1"].underlay_ip)
    try:
        assert not pings(lab, outside, ip2)
        lab.netctl("h1", "expose", "fl")
        ips = {c2: ip2, c3: ip3}
        assert wait_until(lambda: pings(lab, outside, ip2), 15)
        assert reaches(lab, outside, ips) == {ip2: (True, c2, c2), ip3: (True, c3, c3)}
        lab.netctl("h1", "hide", "fl")
        assert wait_until(lambda: not pings(lab, outside, ip2), 10)
        assert probe(outside, ip3, 8080) is None
    finally:
        unroute(outside, "10.70.0.0/16")

    h2 = lab.hosts["h2"].underlay_ip
    lab.netctl("h2", "publish", c2, "--network", "fl", "--port", "19080:8080/tcp")
    lab.netctl("h2", "publish", c2, "--network", "fl", "--port", "19053:5353/udp")
    assert probe(outside, h2, 19080, "tcp") == c2
    assert probe(outside, h2, 19053, "udp") == c2
    assert probe(lab.hosts["h2"].netns, "127.0.0.1", 19080, "tcp") == c2
    lab.netctl("h2", "unpublish", c2, "--network", "fl")
    assert probe(outside, h2, 19080, "tcp") is None

    lab.netctl("h2", "network", "create", "flno", "--subnet", "10.71.0.0/16",
               "--driver", "flannel", "-o", "egress=false", "-o", "vni=71")
    c4, ip4 = attach_auto(lab, "flno", "h2", "flno2")
    gateway = ip4.rsplit(".", 1)[0] + ".1"
    assert wait_until(lambda: pings(lab, c4, gateway), 10)
    assert not pings(lab, c4, OUTSIDE_IP)
    assert not pings(lab, c4, h2)


def test_no_masquerade_keeps_container_addresses_on_the_way_out(
        lab: Lab, outside: str, procs: list[subprocess.Popen[str]]) -> None:
    lab.netctl("h1", "network", "create", "nm", "--subnet", "10.68.0.0/24")
    c = attach(lab, "nm", "h1", "nm1", "10.68.0.11")
    procs.append(start_peer_echo(outside, 7001))
    h1 = lab.hosts["h1"].underlay_ip
    assert wait_until(lambda: probe(c, OUTSIDE_IP, 7001, "udp") == h1, 10)  # masqueraded
    route_via(outside, "10.68.0.0/24", h1)
    try:
        lab.netctl("h1", "expose", "nm")
        assert probe(c, OUTSIDE_IP, 7001, "udp") == h1
        out = lab.netctl("h1", "expose", "nm", "--no-masquerade").stdout
        assert "(no masquerade)" in out
        assert wait_until(lambda: probe(c, OUTSIDE_IP, 7001, "udp") == "10.68.0.11", 10)
        assert "exposed by: h1 (no masquerade)" in lab.netctl(
            "h2", "network", "inspect", "nm").stdout
    finally:
        unroute(outside, "10.68.0.0/24")
        lab.netctl("h1", "hide", "nm")
    assert wait_until(lambda: probe(c, OUTSIDE_IP, 7001, "udp") == h1, 10)
