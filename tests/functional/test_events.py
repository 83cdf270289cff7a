"""`netctl events` through real daemons on real etcd: a follower started before the
actions sees the network appear, the endpoint applied, the peer come up, a failure
(a container's namespace deleted under netd), the detach, and the peer go down when
its daemon is killed."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from netd.cli import Client, CliError
from netd.lab import Lab, console_script

pytestmark = [pytest.mark.root, pytest.mark.etcd]


class Follower:
    """`netctl events --json` running, its lines collected by a thread."""

    def __init__(self, lab: Lab, host: str) -> None:
        self.proc = subprocess.Popen(
            [console_script("netctl"), "--socket", str(lab.hosts[host].socket), "events",
             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for(self, kind: str, timeout: float, **fields: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.seen:
                if event["kind"] == kind and all(event.get(k) == v for k, v in fields.items()):
                    return event
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {kind} {fields} within {timeout} s: {self.seen}")
            try:
                self.seen.append(json.loads(self.lines.get(timeout=left)))
            except queue.Empty:
                continue

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab(hosts=2, store="etcd", host_ttl=6, resync_interval=2) as lab:
        yield lab


def test_events_follow_what_the_daemon_does(lab: Lab) -> None:
    follower = Follower(lab, "h1")
    try:
        lab.netctl("h1", "network", "create", "ev", "--subnet", "10.94.0.0/24")
        follower.wait_for("network.created", 10, network="ev")
        c1 = lab.add_container("h1", "e1")
        lab.netctl("h1", "attach", c1, "--network", "ev")
        applied = follower.wait_for("endpoint.applied", 10, endpoint=c1)
        assert applied["ip"].startswith("10.94.0.")
        lab.netctl("h2", "attach", lab.add_container("h2", "e2"), "--network", "ev")
        follower.wait_for("peer.up", 15, peer="h2")
        c3 = lab.add_container("h1", "e3")
        lab.netctl("h1", "attach", c3, "--network", "ev")
        follower.wait_for("endpoint.applied", 10, endpoint=c3)
        lab.remove_container(c3)  # its namespace vanishes under netd: the resync fails it
        failure = follower.wait_for("failure", 20)
        assert c3 in failure["message"]
        lab.netctl("h1", "detach", c1, "--network", "ev")
        follower.wait_for("endpoint.removed", 10, endpoint=c1)
        lab.stop_netd("h2", kill=True)
        follower.wait_for("peer.down", 10, peer="h2")
        follower.wait_for("host.left", 20, host="h2")
        seqs = [e["seq"] for e in follower.seen]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    finally:
        follower.close()
    text = lab.netctl("h1", "events", "--once").stdout
    assert "endpoint.applied" in text and "peer.down" in text
    last = max(e["seq"] for e in follower.seen)
    newer = lab.netctl("h1", "events", "--once", "--since", str(last), "--json").stdout
    assert all(json.loads(line)["seq"] > last for line in newer.splitlines())


def test_bad_event_queries_are_refused(lab: Lab) -> None:
    client = Client(lab.hosts["h1"].socket)
    for query in ("wait=31", "wait=-1", "since=x", "wait=nan"):
        with pytest.raises(CliError, match="invalid"):
            client.request("GET", f"/v1/events?{query}")
    started = time.monotonic()
    answer = client.request("GET", "/v1/events?wait=1&since=999999")
    assert answer["events"] == [] and 0.9 <= time.monotonic() - started < 5
