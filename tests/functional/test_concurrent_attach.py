"""Issue 6, defect 1: concurrent automatic attaches from several hosts re-plan, never fail.

Three simulated hosts (real netd processes, real etcd), 60 containers attached at once
without --ip through the socket API (20 threads per host) on one /26 (61 usable
addresses): every attach succeeds with its own address and MAC; the 61st attach gets
the last usable address and the 62nd is refused with "no free address".
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from netd.cli import Client, CliError
from netd.lab import Lab

pytestmark = [pytest.mark.root, pytest.mark.etcd]

HOSTS = ("h1", "h2", "h3")
PER_HOST = 20
SUBNET = "10.96.0.0/26"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(hosts=len(HOSTS), store="etcd") as lab:
        yield lab


def test_sixty_simultaneous_automatic_attaches_on_a_slash26(lab: Lab) -> None:
    clients = {h: Client(lab.hosts[h].socket, timeout=120) for h in HOSTS}
    clients["h1"].request("POST", "/v1/networks", {"name": "busy", "subnet": SUBNET})
    jobs = [(h, lab.add_container(h, f"k{n}-{h}")) for h in HOSTS for n in range(PER_HOST)]
    start = threading.Barrier(len(jobs))
    results: list[dict[str, Any]] = []
    errors: list[str] = []

    def attach(host: str, container: str) -> None:
        start.wait(30)
        try:
            results.append(clients[host].request(
                "POST", "/v1/attach", {"container": container, "network": "busy"}))
        except CliError as exc:
            errors.append(f"{container} on {host}: {exc}")

    threads = [threading.Thread(target=attach, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert errors == []
    ips = [r["ip"] for r in results]
    assert len(ips) == len(jobs) == 60
    assert len(set(ips)) == 60, "an address was handed out twice"
    assert len({r["mac"] for r in results}) == 60
    subnet = ipaddress.IPv4Network(SUBNET)
    usable = {str(a) for a in subnet.hosts()} - {"10.96.0.1"}  # the gateway
    assert set(ips) <= usable

    last = clients["h2"].request(
        "POST", "/v1/attach", {"container": lab.add_container("h2", "k61"), "network": "busy"})
    assert {last["ip"]} == usable - set(ips)
    with pytest.raises(CliError, match="no free address"):
        clients["h3"].request(
            "POST", "/v1/attach", {"container": lab.add_container("h3", "k62"), "network": "busy"})
    endpoints = clients["h1"].request("GET", "/v1/endpoints")
    assert len({ep["ip"] for ep in endpoints}) == len(endpoints) == 61
