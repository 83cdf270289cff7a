"""The distributed gateway through real netd processes and netctl (issue 10): egress,
expose/hide, publish, tenants and security groups on exposed traffic, restarts.

Simulated hosts on one underlay with real etcd; the outside host is a namespace on the
underlay that runs no netd and reaches containers only through an exposing host."""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Callable, Iterator

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
from tests.support.probes import probe, start_server


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


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def attach(lab: Lab, network: str, host: str, short: str, ip: str, *args: str) -> str:
    netns = lab.add_container(host, short)
    lab.netctl(host, "attach", netns, "--network", network, "--ip", ip, *args)
    return netns


def pings(lab: Lab, netns: str, ip: str) -> bool:
    return lab.ping(netns, ip, count=1, wait=1.0).returncode == 0


def fails(lab: Lab, host: str, *args: str) -> str:
    r = lab.netctl(host, *args, check=False)
    assert r.returncode != 0, f"netctl {args} should have failed: {r.stdout}"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


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

    bad = fails(lab, "h1", "network", "create", "eg-bad", "--subnet", "10.62.0.0/24",
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
        assert "not exposed by host h1" in fails(lab, "h1", "hide", "ex")
        assert reaches(lab, outside, ips) == {
            "10.63.0.12": (False, None, None), "10.63.0.13": (False, None, None)}
        lab.netctl("h2", "hide", "ex")
        route_via(outside, "10.63.0.0/24", lab.hosts["h2"].underlay_ip)
        assert not pings(lab, outside, "10.63.0.13")
        assert lab.netctl_json("h1", "network", "inspect", "ex")["exposed_by"] == []
    finally:
        unroute(outside, "10.63.0.0/24")
