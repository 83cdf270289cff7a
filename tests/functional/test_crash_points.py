"""kill -9 at crash points (issue 12, build item 3): netd on h1 ends itself at a named
point of attach, detach, network rm or a security-group change (NETD_CRASH_AT, see
netd/faults.py), as a kill -9 would, and is started again - armed with the next point.

After each restart and its first full sync: the client of the interrupted request got
one line saying the outcome is unknown (never a hang); the store adds up (no address
reservation or MAC claim without its endpoint, no endpoint without both, no leftover
removal marker), and h1's containers have exactly the addresses the store gives them:
the interrupted change is done or undone. (Requests go through netctl's client class,
netd.cli.Client, from this process: a netctl process per step would cost ~1 s each.)
At the end everything is detached and removed and both hosts hold exactly the netd-owned
kernel objects they held before the test (links, routes of netd's protocol, neighbours,
FDB entries, nft rules and set elements): nothing was leaked on the way.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from netd.cli import Client, CliError
from netd.faults import CRASH_EXIT, ENV
from netd.lab import Lab, ns_exec, run
from tests.support.leaks import kernel_objects, store_problems, store_records
from tests.support.netdapi import api, synced

pytestmark = [pytest.mark.root, pytest.mark.etcd]

SUBNET = "10.74.0"
ATTACH = ["commit.before", "commit.after", "attach.committed", "apply.before", "plug.veth",
          "apply.after", "attach.applied"]
DETACH = ["commit.before", "commit.after", "detach.committed", "apply.before", "apply.after",
          "detach.applied"]
REMOVE = ["commit.before", "commit.before:2", "commit.after", "commit.after:2", "rm.marked",
          "rm.committed"]
GROUPS = ["commit.before", "commit.after"]  # each for sg create and sg rule add


@dataclass(frozen=True)
class Step:
    op: str  # attach | detach | rm | sg create | sg rule
    point: str


def plan() -> list[Step]:
    steps = []
    for _ in range(2):
        steps += [Step("attach", p) for p in ATTACH]
        steps += [Step("detach", p) for p in DETACH]
        steps += [Step("rm", p) for p in REMOVE]
        steps += [Step("sg create", p) for p in GROUPS]
        steps += [Step("sg rule", p) for p in GROUPS]
    return steps + [Step("attach", p) for p in ATTACH]


def addresses(lab: Lab, netns: str) -> set[str]:
    out = run(ns_exec(netns, "ip", "-o", "-4", "addr", "show"), check=False).stdout
    return {line.split()[3].split("/")[0] for line in out.splitlines() if " lo " not in line}


class CrashLab:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.count = 0
        self.containers: list[str] = []  # h1's containers
        self.scratch: list[str] = []  # networks to remove
        self.groups: list[str] = []

    def restart(self, point: str) -> None:
        host = self.lab.hosts["h1"]
        host.env = {ENV: point} if point else {}
        if host.socket.exists():  # left by the crashed daemon
            host.socket.unlink()
        self.lab.start_netd("h1")
        synced(self.lab, "h1")

    def client(self, host: str) -> Client:
        return Client(self.lab.hosts[host].socket, timeout=60)

    def request(self, step: Step) -> tuple[str, str]:
        """Send the step's write as netctl would (its client class, without a netctl
        process per step): (what was asked, the error the client got or "")."""
        lab, h1, h2 = self.lab, self.client("h1"), self.client("h2")
        self.count += 1
        if step.op == "attach":
            netns = lab.add_container("h1", f"k{self.count}")
            self.containers.append(netns)
            what, call = f"attach {netns}", ("POST", "/v1/attach",
                                             {"container": netns, "network": "crash"})
        elif step.op == "detach":
            attached = {ep["name"] for ep in api(lab, "h1", "/v1/endpoints?network=crash")}
            netns = next(c for c in self.containers if c in attached)
            what, call = f"detach {netns}", ("POST", "/v1/detach",
                                             {"container": netns, "network": "crash"})
        elif step.op == "rm":
            name = f"rm{self.count}"
            h2.request("POST", "/v1/networks",
                       {"name": name, "subnet": f"10.{100 + self.count}.0.0/24"})
            self.scratch.append(name)
            what, call = f"network rm {name}", ("DELETE", f"/v1/networks/{name}", None)
        elif step.op == "sg create":
            name = f"g{self.count}"
            self.groups.append(name)
            what, call = f"sg create {name}", ("POST", "/v1/sg", {"name": name})
        else:
            name = f"r{self.count}"
            h2.request("POST", "/v1/sg", {"name": name})
            self.groups.append(name)
            what, call = f"sg rule add {name}", (
                "POST", f"/v1/sg/{name}/rules",
                {"direction": "ingress", "protocol": "tcp", "port": "80",
                 "cidr": "10.0.0.0/8"})
        method, path, body = call
        try:
            h1.request(method, path, body)
        except CliError as exc:
            message = str(exc)
            assert "\n" not in message, message
            assert "outcome of this change is unknown" in message, message
            return what, message
        return what, ""

    def check(self, what: str) -> None:
        problems = store_problems(store_records(self.lab), markers=False)
        assert not problems, f"after {what}: {problems}"
        endpoints = api(self.lab, "h1", "/v1/endpoints")
        for netns in self.containers:
            want = {ep["ip"] for ep in endpoints if ep["name"] == netns}
            deadline = time.monotonic() + 10
            while addresses(self.lab, netns) != want and time.monotonic() < deadline:
                time.sleep(0.1)
            assert addresses(self.lab, netns) == want, (
                f"after {what}: {netns} has {addresses(self.lab, netns)}, store says {want}")


@pytest.fixture
def crash_lab() -> Iterator[CrashLab]:
    with Lab(hosts=2, store="etcd") as lab:
        yield CrashLab(lab)


def test_kill_at_crash_points_leaks_nothing(crash_lab: CrashLab) -> None:
    scene, lab = crash_lab, crash_lab.lab
    synced(lab, "h1")
    synced(lab, "h2")
    baseline = {h: kernel_objects(lab.hosts[h].netns) for h in ("h1", "h2")}
    lab.netctl("h2", "network", "create", "crash", "--subnet", f"{SUBNET}.0/24")
    peer = lab.add_container("h2", "peer")
    lab.netctl("h2", "attach", peer, "--network", "crash", "--ip", f"{SUBNET}.250")
    for i in range(3):  # something to detach from the start
        netns = lab.add_container("h1", f"pre{i}")
        scene.containers.append(netns)
        lab.netctl("h1", "attach", netns, "--network", "crash")

    steps = plan()
    assert len(steps) >= 50
    lab.stop_netd("h1")
    scene.restart(steps[0].point)
    for index, step in enumerate(steps):
        host = lab.hosts["h1"]
        assert host.proc is not None
        asked, error = scene.request(step)
        what = f"{asked} at {step.point}"
        try:
            exit_code = host.proc.wait(timeout=15)
        except Exception:
            raise AssertionError(f"netd did not reach crash point {step.point} ({what}), "
                                 f"client error {error!r}") from None
        assert exit_code == CRASH_EXIT, f"{what}: netd exit {exit_code}"
        assert error, f"{what}: the client was told it succeeded"
        host.proc = None
        following = steps[index + 1].point if index + 1 < len(steps) else ""
        scene.restart(following)
        scene.check(what)

    # the other host followed every outcome: every endpoint of h1 reachable from h2
    for ep in api(lab, "h1", "/v1/endpoints?network=crash"):
        if ep["host"] == "h1":
            assert lab.wait_ping(peer, ep["ip"], timeout=5), f"{ep['name']} unreachable"

    # undo everything: both hosts hold what they held before, nothing more
    deadline = time.monotonic() + 15  # removal markers of crashed rms expire (10 s lease)
    while store_problems(store_records(lab)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not store_problems(store_records(lab)), store_problems(store_records(lab))
    for ep in api(lab, "h1", "/v1/endpoints"):
        lab.netctl(ep["host"], "detach", ep["name"], "--network", ep["network"])
    for network in api(lab, "h1", "/v1/networks"):
        lab.netctl("h2", "network", "rm", network["name"])
    for group in scene.groups:
        lab.netctl("h2", "sg", "rm", group, check=False)
    records = store_records(lab)
    leftovers = [k for k in records if ("/ipam/" in k and ("/addr/" in k or "/mac/" in k))
                 or "/endpoints/" in k or "/removing/" in k]
    assert not leftovers, leftovers
    for h in ("h1", "h2"):
        deadline = time.monotonic() + 10
        while kernel_objects(lab.hosts[h].netns) != baseline[h] and time.monotonic() < deadline:
            time.sleep(0.2)
        now = kernel_objects(lab.hosts[h].netns)
        for field in ("links", "routes", "neighbours", "fdb", "nft"):
            extra = getattr(now, field) - getattr(baseline[h], field)
            assert not extra, f"{h}: leaked {field}: {sorted(extra)[:5]}"
