"""Per-peer health through real daemons: three hosts on real etcd probe each other over
the underlay and inside a shared weave network. A host whose underlay interface carries
less than the network's MTU is flagged; a host whose netd is killed and whose underlay
is cut shows as unreachable within the lease TTL, while the others keep RTT and MTU."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from netd.lab import Lab, ns_exec, run
from plugins.weave.names import vxlan_name
from tests.functional.test_metrics import ADDRESS, scrape, value

pytestmark = [pytest.mark.root, pytest.mark.etcd]

HOST_TTL = 8


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(hosts=0, store="etcd", host_ttl=HOST_TTL) as lab:
        for name in ("h1", "h2", "h3"):
            lab.add_host(name)
        lab.hosts["h1"].extra_args = ["--metrics", ADDRESS]
        for name in ("h1", "h2", "h3"):
            lab.start_netd(name)
        lab.netctl("h1", "network", "create", "hn", "--subnet", "10.91.0.0/24")
        for host in ("h1", "h2", "h3"):
            lab.netctl(host, "attach",
                       lab.add_container(host, f"c{host}"), "--network", "hn")
        yield lab


def wait_for(probe: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


def hosts(lab: Lab, on: str = "h1") -> dict[str, dict[str, Any]]:
    return {h["name"]: h for h in lab.netctl_json(on, "host", "ls")}


def wait_flagged(lab: Lab, peer: str, text: str, timeout: float) -> dict[str, Any] | None:
    """h1's row of `peer` once one of its flags mentions `text`; None after `timeout`."""
    def flagged() -> dict[str, Any] | None:
        row = hosts(lab)[peer]
        return row if any(text in flag for flag in row["flags"]) else None

    result: dict[str, Any] | None = wait_for(flagged, timeout)
    return result


def test_healthy_peers_show_rtt_and_path_mtu(lab: Lab) -> None:
    def healthy() -> dict[str, dict[str, Any]] | None:
        rows = hosts(lab)
        ok = all(rows[p]["health"] == "healthy"
                 and (rows[p]["paths"].get("hn") or {}).get("path_mtu") == 1450
                 for p in ("h2", "h3"))
        return rows if ok else None

    rows = wait_for(healthy, 20)
    assert rows, f"peers never healthy: {hosts(lab)}"
    for peer in ("h2", "h3"):
        row = rows[peer]
        assert row["rtt_ms"] is not None and row["rtt_ms"] > 0
        assert row["loss"] == 0
        assert row["paths"]["hn"]["mtu_ok"] is True
        assert row["paths"]["underlay"]["path_mtu"] == 1500
        assert row["flags"] == []
        assert row["lease_expires_by"] > time.time()
    text = lab.netctl("h1", "host", "ls").stdout
    assert "healthy" in text and "1450" in text and "ms" in text
    status = lab.netctl_json("h1", "status")
    assert set(status["peers"]) == {"h2", "h3"}
    samples = scrape(lab)  # per-peer metrics: RTT, loss, path MTU, up
    assert value(samples, "netd_peer_rtt_seconds", peer="h2", path="hn") > 0
    assert value(samples, "netd_peer_path_mtu_bytes", peer="h3", path="hn") == 1450
    assert value(samples, "netd_peer_mtu_bytes", peer="h3", path="underlay") == 1500
    assert value(samples, "netd_peer_up", peer="h2") == 1
    assert "peers:" in lab.netctl("h1", "status").stdout


def test_a_peer_whose_underlay_carries_less_than_the_network_mtu_is_flagged(lab: Lab) -> None:
    netns = lab.hosts["h3"].netns
    run(ns_exec(netns, "ip", "link", "set", "ul0", "mtu", "1400"))
    try:
        row = wait_flagged(lab, "h3", "network hn", 40)
        assert row, f"h3 not flagged: {hosts(lab)['h3']}"
        assert row["health"] == "degraded"
        path = row["paths"]["hn"]
        # 1350 bytes fit in 1400 less vxlan; the veth admits 4 more (a VLAN tag's room)
        assert path["mtu_ok"] is False and 1350 - 8 <= path["path_mtu"] <= 1354
        flag = next(f for f in row["flags"] if "network hn" in f)
        assert "--mtu" in flag and "raise the underlay MTU" in flag
        assert "! h3:" in lab.netctl("h1", "host", "ls").stdout
        assert hosts(lab)["h2"]["flags"] == []  # the other peer is fine
    finally:
        run(ns_exec(netns, "ip", "link", "set", "ul0", "mtu", "1500"))
    assert wait_for(lambda: hosts(lab)["h3"]["flags"] == [], 20), hosts(lab)["h3"]


def test_a_broken_tunnel_is_seen_while_the_underlay_answers(lab: Lab) -> None:
    # h1 loses its flood entry towards h2: the underlay still answers, the overlay not
    vni = lab.netctl_json("h1", "network", "inspect", "hn")["vni"]
    netns, h2 = lab.hosts["h1"].netns, lab.hosts["h2"].underlay_ip
    flood = ["00:00:00:00:00:00", "dev", vxlan_name(vni), "dst", h2]
    run(ns_exec(netns, "bridge", "fdb", "del", *flood))
    try:
        row = wait_flagged(lab, "h2", "inside network hn", 20)
        assert row, f"h2 not flagged: {hosts(lab)['h2']}"
        assert row["health"] == "degraded"
        assert row["paths"]["hn"]["loss"] > 0 and row["paths"]["underlay"]["loss"] == 0
    finally:
        run(ns_exec(netns, "bridge", "fdb", "append", *flood), check=False)
    assert wait_for(lambda: hosts(lab)["h2"]["health"] == "healthy", 20), hosts(lab)["h2"]


def test_a_killed_peer_is_unreachable_within_the_lease_ttl(lab: Lab) -> None:
    lab.stop_netd("h3", kill=True)
    run(ns_exec(lab.switch, "ip", "link", "set", "p-h3", "down"))
    started = time.monotonic()
    row = wait_for(lambda: (r := hosts(lab)["h3"])["health"] == "unreachable" and r, HOST_TTL)
    assert row, f"h3 still {hosts(lab)['h3']['health']} after {HOST_TTL} s"
    assert time.monotonic() - started <= HOST_TTL + 1
    rows = hosts(lab)
    assert rows["h2"]["health"] == "healthy" and rows["h2"]["rtt_ms"] is not None
    assert rows["h2"]["paths"]["hn"]["path_mtu"] == 1450
    assert "unreachable" in lab.netctl("h1", "host", "ls").stdout
