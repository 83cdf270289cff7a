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
from tests.support.gateway import OUTSIDE_IP, add_outside, gateway_lab


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
