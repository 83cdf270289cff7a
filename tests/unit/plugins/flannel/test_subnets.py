"""Subnet leases on the embedded store: random free subnet with create-if-absent, reuse
by PublicIP (a restart) and by the subnet env file, exhaustion said clearly."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from netd.errors import Exhausted
from netd.leases import LeaseKeeper
from netd.model import Host, Network
from netd.store.embedded import EmbeddedStore
from plugins.flannel.config import FlannelConfig, SubnetLease, parse_lease
from plugins.flannel.subnets import SubnetLeases
from tests.support.drivers import driver_context

NET = Network(name="blue", subnet="10.5.0.0/22", gateway="10.5.0.1", vni=7, mtu=1450,
              driver="flannel", backend="vxlan", options={"lease_ttl": "60"})


def leases_on(store: EmbeddedStore, tmp: Path, host: str, ip: str) -> SubnetLeases:
    state = tmp / host
    state.mkdir(exist_ok=True)
    ctx = driver_context("flannel", host=Host(name=host, underlay_ip=ip), store=store,
                         state_dir=state)
    ctx.leases = LeaseKeeper(store, state)
    return SubnetLeases(ctx, random.Random(1))


def records(store: EmbeddedStore, cfg: FlannelConfig) -> dict[str, SubnetLease]:
    items, _ = store.list(cfg.subnets_prefix)
    out = {}
    for kv in items:
        lease = parse_lease(kv.key[len(cfg.subnets_prefix):], kv.value)
        assert lease is not None and kv.lease
        out[lease.subnet] = lease
    return out


def test_hosts_get_distinct_subnets_reuse_them_and_run_out(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "db")
    cfg = FlannelConfig.of(NET, "/netd")
    a = leases_on(store, tmp_path, "a", "192.0.2.1").acquire(NET, cfg).lease
    b = leases_on(store, tmp_path, "b", "192.0.2.2").acquire(NET, cfg).lease
    c = leases_on(store, tmp_path, "c", "192.0.2.3").acquire(NET, cfg).lease
    assert len({a.subnet, b.subnet, c.subnet}) == 3
    assert all(cfg.leasable(s) for s in (a.subnet, b.subnet, c.subnet))
    assert records(store, cfg)[a.subnet].public_ip == "192.0.2.1"
    assert records(store, cfg)[a.subnet].vtep_mac == a.vtep_mac != ""
    # a restart of "a" (a new manager, same state dir): the same subnet, same lease id
    again = leases_on(store, tmp_path, "a", "192.0.2.1").acquire(NET, cfg)
    assert again.lease == a
    assert (tmp_path / "a" / "blue.env").read_text() == (
        f"FLANNEL_NETWORK=10.5.0.0/22\nFLANNEL_SUBNET={a.gateway}/24\n"
        "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n")
    # 10.5.0.0/22 has three leasable /24s: a fourth host is told so
    with pytest.raises(Exhausted, match="no free /24"):
        leases_on(store, tmp_path, "d", "192.0.2.4").acquire(NET, cfg)


def test_a_host_whose_record_is_gone_returns_to_its_env_file_subnet(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "db")
    cfg = FlannelConfig.of(NET, "/netd")
    first = leases_on(store, tmp_path, "a", "192.0.2.1")
    held = first.acquire(NET, cfg)
    held.kept.release()  # the lease expired while the host was away: record gone
    for seed in range(5):
        (tmp_path / "a" / "blue.env").write_text(
            f"FLANNEL_NETWORK=10.5.0.0/22\nFLANNEL_SUBNET={held.lease.gateway}/24\n")
        mgr = leases_on(store, tmp_path, "a", "192.0.2.1")
        mgr.rng = random.Random(seed)
        got = mgr.acquire(NET, cfg).lease
        assert got.subnet == held.lease.subnet
        mgr.held("blue").kept.release()  # type: ignore[union-attr]
