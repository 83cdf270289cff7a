"""Watch liveness against real etcd: a member that goes silent without a reset (cut link,
dropped traffic, frozen process) must not leave a host deaf to the store.

Each test builds a lab, puts one container on h1, then makes the store misbehave and
attaches a container on h2: h1's datapath must learn it (the newcomer's address in the
neighbour table of h1's vxlan device, and a ping from h1's container) within a deadline.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from netd.lab import ETCD_ADDRESS, Lab, ns_exec, run
from plugins.weave.names import vxlan_name
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.root, pytest.mark.etcd]

CONVERGE = 5.0  # seconds the acceptance allows after the trigger
NFT_TABLE = "netd_test_drop"


class Scene:
    """A network `live` with container c1 on h1; `attach_on_h2` adds one more on h2."""

    def __init__(self, lab: Lab, net: str = "10.71.0") -> None:
        self.lab = lab
        self.net = net
        self.count = 0
        lab.netctl("h1", "network", "create", "live", "--subnet", f"{net}.0/24")
        self.vni = int(lab.netctl_json("h1", "network", "inspect", "live")["vni"])
        self.c1 = lab.add_container("h1", "c1")
        lab.netctl("h1", "attach", self.c1, "--network", "live", "--ip", f"{net}.10")

    def attach_on_h2(self, retry: bool = True) -> str:
        """Attach a new container on h2 (with `retry`, retried while h2 itself is still
        recovering, when the point is h1 following rather than h2's attach)."""
        self.count += 1
        netns = self.lab.add_container("h2", f"c2x{self.count}")
        ip = f"{self.net}.{20 + self.count}"
        deadline = time.monotonic() + (30 if retry else 0)
        while True:
            result = self.lab.netctl("h2", "attach", netns, "--network", "live", "--ip", ip,
                                     check=False, timeout=40)
            if result.returncode == 0:
                return ip
            if time.monotonic() > deadline or "already" in result.stderr:
                raise AssertionError(f"attach on h2 failed: {result.stderr}")
            time.sleep(0.2)

    def h1_has(self, ip: str) -> bool:
        neigh = run(ns_exec(self.lab.hosts["h1"].netns, "ip", "neigh", "show", "dev",
                            vxlan_name(self.vni)), check=False).stdout
        return f"{ip} " in neigh

    def assert_h1_follows(self, ip: str, deadline: float, what: str) -> None:
        """h1's datapath has `ip` before `deadline` (monotonic), and c1 reaches it."""
        ok = wait_until(lambda: self.h1_has(ip), timeout=max(0.0, deadline - time.monotonic()))
        assert ok, f"h1 did not learn {ip} within the deadline {what}; h1 log: {self.log_tail()}"
        assert self.lab.wait_ping(self.c1, ip, timeout=5), f"h1's c1 cannot reach {ip}"

    def log_tail(self, lines: int = 12) -> str:
        return "\n".join(self.lab.hosts["h1"].log.read_text().splitlines()[-lines:])


def status(lab: Lab, host: str) -> dict[str, Any]:
    result: dict[str, Any] = lab.netctl_json(host, "status")
    return result


def watched_member(lab: Lab, host: str) -> str:
    """The etcd endpoint (ADDRESS:PORT) the host's watch was opened on last."""
    found = re.findall(r"watching \S+ on etcd at https?://([\d.]+:\d+)",
                       lab.hosts[host].log.read_text())
    assert found, "no watch opened in the log"
    return str(found[-1])


def drop_traffic(netns: str, addresses: list[str]) -> None:
    """Silently drop every packet between `netns` and `addresses`: no RST, no FIN arrives."""
    peers = ", ".join(addresses)
    rules = (
        f"table inet {NFT_TABLE} {{\n"
        f"  chain out {{ type filter hook output priority 0; ip daddr {{ {peers} }} drop; }}\n"
        f"  chain in {{ type filter hook input priority 0; ip saddr {{ {peers} }} drop; }}\n"
        "}\n"
    )
    proc = subprocess.run(ns_exec(netns, "nft", "-f", "-"), input=rules, text=True,
                          capture_output=True, timeout=10)
    assert proc.returncode == 0, proc.stderr


def lift_drop(netns: str) -> None:
    run(ns_exec(netns, "nft", "delete", "table", "inet", NFT_TABLE), check=False)


def make_leader(lab: Lab, name: str) -> None:
    """Move the cluster's leadership to member `name` (the harder case: the member cut
    is the leader too, so the others elect a new one meanwhile)."""
    def status_of(member: str) -> dict[str, Any]:
        result = lab.etcdctl(member, "endpoint", "status", "-w", "json")
        assert result.returncode == 0, result.stderr
        found: dict[str, Any] = json.loads(result.stdout)[0]["Status"]
        return found

    target = status_of(name)
    target_id = int(target["header"]["member_id"])
    leader_id = int(target["leader"])
    if leader_id == target_id:
        return
    leader = next(m.name for m in lab.etcd_members
                  if int(status_of(m.name)["header"]["member_id"]) == leader_id)
    moved = lab.etcdctl(leader, "move-leader", f"{target_id:x}")
    assert moved.returncode == 0, moved.stderr
    assert wait_until(lambda: int(status_of(name)["leader"]) == target_id, timeout=10)


@pytest.fixture
def cluster_lab() -> Iterator[Lab]:
    with Lab(hosts=2, store="etcd", etcd_members=3) as lab:
        yield lab


@pytest.fixture
def single_lab() -> Iterator[Lab]:
    with Lab(hosts=2, store="etcd") as lab:
        yield lab


def test_cut_link_of_the_watched_member_fails_over(cluster_lab: Lab) -> None:
    lab = cluster_lab
    scene = Scene(lab)
    first = scene.attach_on_h2()
    scene.assert_h1_follows(first, time.monotonic() + CONVERGE, "with every member up")

    endpoint = watched_member(lab, "h1")
    member = next(m for m in lab.etcd_members if m.endpoint == endpoint)
    make_leader(lab, member.name)
    run(ns_exec(lab.switch, "ip", "link", "set", member.link, "down"))  # frames just vanish
    try:
        started = time.monotonic()
        ip = scene.attach_on_h2(retry=False)  # h2 fails over too, at the first try
        assert time.monotonic() - started < 15, "the attach on h2 took too long"
        scene.assert_h1_follows(ip, time.monotonic() + CONVERGE,
                                f"after {member.name}'s link was cut")
        assert watched_member(lab, "h1") != endpoint
        assert wait_until(lambda: status(lab, "h1")["store"]["reachable"], timeout=CONVERGE)
    finally:
        run(ns_exec(lab.switch, "ip", "link", "set", member.link, "up"))

    lab.wait_etcd(member.name, timeout=90)  # etcd takes its time to re-dial its peers
    ip = scene.attach_on_h2()
    scene.assert_h1_follows(ip, time.monotonic() + CONVERGE, f"after {member.name} returned")


def test_watched_member_cut_off_from_its_peers_is_left(cluster_lab: Lab) -> None:
    """The member still answers the host, but hears no more changes from the cluster."""
    lab = cluster_lab
    scene = Scene(lab)
    first = scene.attach_on_h2()
    scene.assert_h1_follows(first, time.monotonic() + CONVERGE, "with every member up")
    endpoint = watched_member(lab, "h1")
    member = next(m for m in lab.etcd_members if m.endpoint == endpoint)
    peers = [m.address for m in lab.etcd_members if m is not member]
    drop_traffic(member.netns, peers)
    try:
        ip = scene.attach_on_h2()
        scene.assert_h1_follows(ip, time.monotonic() + CONVERGE,
                                f"after {member.name} was cut off from its peers")
        assert watched_member(lab, "h1") != endpoint
    finally:
        lift_drop(member.netns)


def test_etcd_restarted_while_a_host_is_cut_off(single_lab: Lab) -> None:
    lab = single_lab
    scene = Scene(lab)
    first = scene.attach_on_h2()
    scene.assert_h1_follows(first, time.monotonic() + CONVERGE, "before the drop")
    assert status(lab, "h1")["store"]["reachable"]

    seen: list[dict[str, Any]] = []
    drop_traffic(lab.hosts["h1"].netns, [ETCD_ADDRESS])
    try:
        seen.append(status(lab, "h1")["store"])
        lab.stop_etcd("m1")  # its FIN never reaches h1: h1's watch socket stays open
        # as after a reboot of etcd's machine: its side of the connections is gone, so no
        # FIN is retransmitted once the drop is lifted
        h1 = lab.hosts["h1"].underlay_ip
        run(ns_exec(lab.switch, "ss", "-K", "-t", "dst", h1))
        assert f"{h1}:" not in run(ns_exec(lab.switch, "ss", "-tan")).stdout
        lab.start_etcd("m1")
        ip = scene.attach_on_h2()  # h1 must not know this one before the drop is lifted
        for _ in range(3):
            seen.append(status(lab, "h1")["store"])
            time.sleep(1)
    finally:
        lift_drop(lab.hosts["h1"].netns)
    lifted = time.monotonic()
    assert not any(s["reachable"] for s in seen), seen

    def reachable_only_when_following() -> bool:
        store = status(lab, "h1")["store"]
        if not store["reachable"]:
            return False
        assert wait_until(lambda: scene.h1_has(ip), timeout=1.0), (
            f"status says {store} while h1 does not follow the store")
        return True

    assert wait_until(reachable_only_when_following, timeout=CONVERGE, interval=0.05)
    scene.assert_h1_follows(ip, lifted + CONVERGE, "after the drop was lifted")

    # from now on h1's watch is the only way it learns a change
    later = scene.attach_on_h2()
    scene.assert_h1_follows(later, time.monotonic() + CONVERGE, "after recovery")
    assert status(lab, "h1")["store"]["reachable"]


def test_frozen_etcd_converges_after_it_continues(single_lab: Lab) -> None:
    lab = single_lab
    scene = Scene(lab)
    first = scene.attach_on_h2()
    scene.assert_h1_follows(first, time.monotonic() + CONVERGE, "before the freeze")
    etcd = lab._etcd
    assert etcd is not None
    etcd.send_signal(signal.SIGSTOP)
    try:
        time.sleep(20)
        frozen = status(lab, "h1")["store"]
    finally:
        etcd.send_signal(signal.SIGCONT)
    continued = time.monotonic()
    assert not frozen["reachable"], frozen
    ip = scene.attach_on_h2()
    scene.assert_h1_follows(ip, continued + CONVERGE, "after etcd continued")
    assert wait_until(lambda: status(lab, "h1")["store"]["reachable"], timeout=CONVERGE)
