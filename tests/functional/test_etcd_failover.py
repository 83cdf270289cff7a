"""A 3-member etcd cluster loses members (issue 12, build item 2): each member in turn
is killed with SIGKILL (the leader among them at some point) and started again, while
three hosts attach and detach containers concurrently.

No attach or detach fails (netd plans a write again when a member broke off or an
election runs), none stalls, every host's watch fails over (each host's datapath ends
up with every other host's endpoints), and an attach made afterwards reaches every
other host within seconds.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, field

import pytest

from netd.lab import Lab, ns_exec, run
from plugins.weave.names import vxlan_name
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.root, pytest.mark.etcd]

HOSTS = ("h1", "h2", "h3")
STALL = 20.0  # seconds: no request may take longer
DOWN = 4.0  # seconds each member stays dead


@dataclass
class Churn:
    """One host attaching new containers and detaching every other one, until stopped."""

    lab: Lab
    host: str
    done: list[tuple[str, float]] = field(default_factory=list)  # (command, seconds)
    failed: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        count = 0
        while not self.stop.is_set():
            count += 1
            netns = self.lab.add_container(self.host, f"{self.host}x{count}")
            self.netctl("attach", netns, "--network", "fo")
            if count % 2 == 0:
                self.netctl("detach", netns, "--network", "fo")

    def netctl(self, *args: str) -> None:
        started = time.monotonic()
        result = self.lab.netctl(self.host, *args, check=False, timeout=60)
        took = time.monotonic() - started
        self.done.append((" ".join(args[:2]), took))
        if result.returncode != 0:
            self.failed.append(f"{self.host}: netctl {' '.join(args)} ({took:.1f} s): "
                               f"{result.stderr.strip()}")


def neighbours(lab: Lab, host: str, vni: int) -> str:
    return run(ns_exec(lab.hosts[host].netns, "ip", "neigh", "show", "dev", vxlan_name(vni)),
               check=False).stdout


def test_killing_each_member_in_turn_fails_no_attach() -> None:
    with Lab(hosts=3, store="etcd", etcd_members=3) as lab:
        lab.netctl("h1", "network", "create", "fo", "--subnet", "10.76.0.0/16")
        vni = int(lab.netctl_json("h1", "network", "inspect", "fo")["vni"])
        churns = [Churn(lab, h) for h in HOSTS]
        threads = [threading.Thread(target=c.run, daemon=True) for c in churns]
        for thread in threads:
            thread.start()
        try:
            time.sleep(2.0)
            for member in lab.etcd_members:
                assert member.proc is not None
                member.proc.send_signal(signal.SIGKILL)
                member.proc.wait(10)
                time.sleep(DOWN)
                lab.start_etcd(member.name)
                time.sleep(2.0)
        finally:
            for churn in churns:
                churn.stop.set()
            for thread in threads:
                thread.join(STALL * 3)
        failed = [f for c in churns for f in c.failed]
        assert not failed, "\n".join(failed)
        for churn in churns:
            assert len(churn.done) >= 4, f"{churn.host} did almost nothing: {churn.done}"
            slowest = max(took for _, took in churn.done)
            assert slowest < STALL, f"{churn.host} stalled {slowest:.1f} s"

        # every host's watch failed over: each has every other host's endpoints
        endpoints = lab.netctl_json("h1", "endpoint", "ls", "--network", "fo")
        assert {ep["host"] for ep in endpoints} == set(HOSTS)
        for host in HOSTS:
            remote = [ep["ip"] for ep in endpoints if ep["host"] != host]
            assert wait_until(
                lambda host=host, remote=remote: all(
                    f"{ip} " in neighbours(lab, host, vni) for ip in remote), timeout=10), (
                f"{host} misses remote endpoints")
            listed = lab.netctl_json(host, "endpoint", "ls", "--network", "fo")
            assert sorted(e["name"] for e in listed) == sorted(e["name"] for e in endpoints)

        # and follows from now on: a new attach on each host reaches the others
        for host in HOSTS:
            netns = lab.add_container(host, f"{host}last")
            ip = lab.netctl_json(host, "attach", netns, "--network", "fo")["ip"]
            for other in HOSTS:
                if other != host:
                    assert wait_until(lambda other=other, ip=ip: f"{ip} " in neighbours(
                        lab, other, vni), timeout=5), f"{other} did not learn {ip}"
