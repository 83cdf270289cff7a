"""The flannel driver on the embedded store (one machine): two simulated hosts sharing
the SQLite store lease one subnet each, in flannel's schema, and their containers talk."""

from __future__ import annotations

import ipaddress
import json
import secrets
from collections.abc import Iterator

import pytest

from netd.lab import Lab
from netd.store.embedded import EmbeddedStore

pytestmark = [pytest.mark.root]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(hosts=2, store="embedded", prefix=f"fl{secrets.token_hex(2)}") as lab:
        yield lab


def test_leases_and_traffic_on_the_embedded_store(lab: Lab) -> None:
    lab.netctl("h1", "network", "create", "flemb", "--driver", "flannel",
               "--subnet", "10.83.0.0/16", "-o", "vni=83")
    eps = {}
    for host in ("h1", "h2"):
        netns = lab.add_container(host, f"em{host}")
        eps[host] = (netns, lab.netctl_json(host, "attach", netns, "--network", "flemb"))
    store = EmbeddedStore(lab.dir / "netd.db")
    try:
        items, _ = store.list("/netd/flannel/flemb/subnets/")
        assert store.get("/netd/flannel/flemb/config") is not None
    finally:
        store.close()
    leases = {json.loads(kv.value)["PublicIP"]: kv for kv in items}
    assert set(leases) == {lab.hosts["h1"].underlay_ip, lab.hosts["h2"].underlay_ip}
    for host in ("h1", "h2"):
        kv = leases[lab.hosts[host].underlay_ip]
        assert kv.lease  # held by a lease, as in etcd
        subnet = kv.key.rsplit("/", 1)[1].replace("-", "/")
        assert ipaddress.ip_address(eps[host][1]["ip"]) in ipaddress.ip_network(subnet)
    assert lab.wait_ping(eps["h1"][0], eps["h2"][1]["ip"], 10)
    assert lab.wait_ping(eps["h2"][0], eps["h1"][1]["ip"], 10)
