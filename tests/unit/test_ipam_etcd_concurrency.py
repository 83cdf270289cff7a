"""Acceptance: 8 processes allocating on one network through a real etcd never collide."""

from __future__ import annotations

import ipaddress
import multiprocessing
import time
import uuid
from typing import Any

import pytest

from ipam.pool import AddressPool
from netd.model import Network
from netd.store.keys import Keys
from tests.support.etcd import EtcdServer

pytestmark = pytest.mark.etcd

WORKERS = 8
PER_WORKER = 250
NETWORK = Network(name="big", subnet="10.20.0.0/21", gateway="10.20.0.1", vni=7, mtu=1450)


def _allocate(endpoint: str, prefix: str, worker: int, start: Any, results: Any) -> None:
    """One daemon's worth of automatic allocations, in its own process and store client."""
    from netd.store.etcd import EtcdStore

    store = EtcdStore([endpoint])
    pool = AddressPool(store, Keys(prefix), NETWORK)
    got: list[str] = []
    try:
        start.wait(60)
        for i in range(PER_WORKER):
            got.append(pool.reserve(f"w{worker}-{i}"))
        results.put((worker, got, ""))
    except Exception as exc:
        results.put((worker, got, f"{type(exc).__name__}: {exc}"))
    finally:
        store.close()


def test_eight_processes_allocate_unique_addresses(etcd_server: EtcdServer) -> None:
    from netd.store.etcd import EtcdStore

    prefix = f"/netd-ipam-{uuid.uuid4().hex[:8]}"
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(WORKERS + 1)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_allocate, args=(etcd_server.endpoint, prefix, n, start, results), daemon=True
        )
        for n in range(WORKERS)
    ]
    for proc in procs:
        proc.start()
    try:
        start.wait(60)
        began = time.monotonic()
        outcomes = [results.get(timeout=300) for _ in procs]
        elapsed = time.monotonic() - began
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    errors = [f"worker {w}: {err}" for w, _, err in outcomes if err]
    assert errors == []
    ips = [ip for _, got, _ in outcomes for ip in got]
    print(f"\n{len(ips)} allocations by {WORKERS} processes in {elapsed:.1f} s "
          f"= {len(ips) / elapsed:.0f}/s")

    subnet = ipaddress.IPv4Network(NETWORK.subnet)
    assert len(ips) == WORKERS * PER_WORKER
    assert len(set(ips)) == len(ips), "an address was handed out twice"
    for ip in ips:
        addr = ipaddress.IPv4Address(ip)
        assert addr in subnet
        assert addr not in (subnet.network_address, subnet.broadcast_address)
        assert ip != NETWORK.gateway

    store = EtcdStore([etcd_server.endpoint])
    try:
        in_use = AddressPool(store, Keys(prefix), NETWORK).in_use()
        expected = {ip: f"w{w}-{i}" for w, got, _ in outcomes for i, ip in enumerate(got)}
        assert in_use == expected
        store.commit([], [*AddressPool(store, Keys(prefix), NETWORK).plan_release_all().operations])
    finally:
        store.close()
