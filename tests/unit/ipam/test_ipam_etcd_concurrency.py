"""Acceptance: 8 processes attaching on one network through a real etcd never collide.

Each process is a daemon's Service (its own host and EtcdStore; only the kernel side is
faked), attaching without --ip: the production attach path - the pool's plan, the MAC
claim, the endpoint record, one conditional commit through the transaction helper - not
a side path of the pool. bench/ipam.py runs the same with 2000 attaches and timings.
"""

from __future__ import annotations

import pytest

from bench import ipam as bench_ipam
from tests.support.etcd import EtcdServer

pytestmark = pytest.mark.etcd


def test_eight_processes_attach_with_unique_addresses(etcd_server: EtcdServer) -> None:
    # a /24 filled to 240 of its 253 usable addresses: collisions are frequent at the end
    result = bench_ipam.run(etcd_server.endpoint, clients=8, count=240, subnet="10.20.0.0/24")
    assert result["errors"] == []
    assert result["allocations"] == 240
    assert result["duplicate_addresses"] == 0
    assert result["duplicate_macs"] == 0
    assert result["unusable_addresses"] == 0  # inside the subnet, never the gateway
    assert result["store_agrees"]
