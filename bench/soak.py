"""Soak: attach/detach churn on 3 hosts while long-lived containers ping each other.

Issue 12, build item 8. One network; one long-lived container per host, pinging the next
host's every 0.1 s for the whole run (h1→h2, h2→h3, h3→h1). Meanwhile one churn thread
per host creates a container namespace, attaches it (automatic address), detaches it and
deletes the namespace, over and over, until --containers churned containers in all or
--seconds passed. Before the churn (after a warm-up cycle) and after it (once every
host's reconciler is idle again) each host is counted: links, addresses, nft set and map
elements in netd's tables, FDB entries, and its netd's open file descriptors, threads and
resident memory. Printed: the loss on each long-lived pair, the churn rate and failures,
and per host each count before → after (growth left behind is what a leak looks like).

Store: etcd (a real member in the lab's switch namespace). The API is called through
netd's client class (netd.cli.Client) from threads of this process: no netctl start-up
per request.

Run as root from the repo root:
    .venv/bin/python -m bench.soak [--seconds 180] [--containers 1000] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from bench.stats import lab_prefix, table
from netd.cli import Client, CliError
from netd.lab import Lab, ns_exec, run

HOSTS = ("h1", "h2", "h3")
NETWORK = "soak"
SUBNET = "10.90.0.0/16"


def counts(lab: Lab, host: str) -> dict[str, int]:
    """What `host` holds now: kernel objects in its namespace and its netd's resources."""
    netns = lab.hosts[host].netns

    def lines(*cmd: str) -> list[str]:
        return run(ns_exec(netns, *cmd), check=False).stdout.splitlines()

    elements = 0
    listed = run(ns_exec(netns, "nft", "-j", "list", "ruleset"), check=False).stdout
    for item in json.loads(listed or '{"nftables": []}')["nftables"]:
        for kind in ("set", "map"):
            body = item.get(kind)
            if body and str(body.get("table", "")).startswith("netd"):
                elements += len(body.get("elem", []))
    proc = lab.hosts[host].proc
    assert proc is not None
    status = Path(f"/proc/{proc.pid}/status").read_text()

    def field(name: str) -> int:
        found = re.search(rf"^{name}:\s+(\d+)", status, re.M)
        return int(found.group(1)) if found else -1

    return {
        "links": len(lines("ip", "-o", "link")),
        "addresses": len(lines("ip", "-o", "addr")),
        "nft elements": elements,
        "fdb entries": len(lines("bridge", "fdb", "show")),
        "netd fds": len(list(Path(f"/proc/{proc.pid}/fd").iterdir())),
        "netd threads": field("Threads"),
        "netd RSS MB": round(field("VmRSS") / 1024),
    }


def idle(client: Client, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.request("GET", "/v1/status")
        if all(not w["applying_since"] and not w["pending"]
               for w in status["workers"].values()):
            return
        time.sleep(0.2)


class Churn:
    def __init__(self, lab: Lab, host: str, client: Client, budget: threading.Semaphore,
                 until: float) -> None:
        self.lab, self.host, self.client, self.budget, self.until = (
            lab, host, client, budget, until)
        self.cycles = 0
        self.failures: list[str] = []
        self.seconds: list[float] = []

    def run(self) -> None:
        while time.monotonic() < self.until and self.budget.acquire(blocking=False):
            self.cycles += 1
            netns = self.lab.add_container(self.host, f"{self.host}s{self.cycles}")
            started = time.monotonic()
            try:
                self.client.request("POST", "/v1/attach",
                                    {"container": netns, "network": NETWORK})
                self.client.request("POST", "/v1/detach",
                                    {"container": netns, "network": NETWORK})
            except CliError as exc:
                self.failures.append(f"{netns}: {exc}")
            self.seconds.append(time.monotonic() - started)
            self.lab.remove_container(netns)


def loss(output: str) -> tuple[int, int]:
    found = re.search(r"(\d+) packets transmitted, (\d+) received", output)
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--containers", type=int, default=1000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with Lab(hosts=len(HOSTS), store="etcd", prefix=lab_prefix()) as lab:
        clients = {h: Client(lab.hosts[h].socket, timeout=60) for h in HOSTS}
        clients["h1"].request("POST", "/v1/networks", {"name": NETWORK, "subnet": SUBNET})
        resident, ips = {}, {}
        for host in HOSTS:
            resident[host] = lab.add_container(host, f"{host}live")
            ips[host] = clients[host].request(
                "POST", "/v1/attach", {"container": resident[host], "network": NETWORK})["ip"]
        for host in HOSTS:  # warm-up: one churn cycle each (its bridge and vxlan exist)
            Churn(lab, host, clients[host], threading.Semaphore(1), time.monotonic() + 30).run()
        for host in HOSTS:
            idle(clients[host])
        pairs = [(a, HOSTS[(i + 1) % len(HOSTS)]) for i, a in enumerate(HOSTS)]
        for a, b in pairs:
            assert lab.wait_ping(resident[a], ips[b], timeout=10), f"{a} cannot reach {b}"
        before = {h: counts(lab, h) for h in HOSTS}

        started = time.monotonic()
        pingers = {
            (a, b): subprocess.Popen(
                ns_exec(resident[a], "ping", "-n", "-q", "-i", "0.1", ips[b]),
                stdout=subprocess.PIPE, text=True)
            for a, b in pairs
        }
        samples: list[tuple[float, int, int, int]] = []  # (s, cycles, h1 fds, h1 RSS MB)
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(15.0):
                now = counts(lab, "h1")
                samples.append((round(time.monotonic() - started), sum(c.cycles for c in churns),
                                now["netd fds"], now["netd RSS MB"]))

        budget = threading.Semaphore(args.containers)
        churns = [Churn(lab, h, clients[h], budget, started + args.seconds) for h in HOSTS]
        threads = [threading.Thread(target=c.run, daemon=True) for c in churns]
        sampler = threading.Thread(target=sample, daemon=True)
        for thread in [*threads, sampler]:
            thread.start()
        for thread in threads:
            thread.join()
        churned = time.monotonic() - started
        sampling.set()
        sampler.join()
        time.sleep(2.0)
        results = {}
        for pair, pinger in pingers.items():
            pinger.send_signal(2)  # SIGINT: ping prints its summary
            out, _ = pinger.communicate(timeout=10)
            results[pair] = loss(out)
        for host in HOSTS:
            idle(clients[host])
        after = {h: counts(lab, h) for h in HOSTS}
        leftover = clients["h1"].request("GET", "/v1/endpoints")

    cycles = sum(c.cycles for c in churns)
    failures = [f for c in churns for f in c.failures]
    durations = sorted(s for c in churns for s in c.seconds)
    report: dict[str, Any] = {
        "seconds": round(churned, 1),
        "containers churned": cycles,
        "churn per second": round(cycles / churned, 2) if churned else 0,
        "attach+detach p50 s": round(durations[len(durations) // 2], 3) if durations else None,
        "attach+detach max s": round(durations[-1], 3) if durations else None,
        "failures": failures,
        "endpoints left": len(leftover),
        "pairs": {f"{a}->{b}": {"sent": s, "received": r,
                                "loss %": round(100 * (s - r) / s, 3) if s else None}
                  for (a, b), (s, r) in results.items()},
        "h1 over time (s, churned, fds, RSS MB)": samples,
        "hosts": {h: {k: [before[h][k], after[h][k]] for k in before[h]} for h in HOSTS},
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"churn: {cycles} containers attached and detached in {churned:.0f} s "
          f"({report['churn per second']}/s; attach+detach p50 "
          f"{report['attach+detach p50 s']} s, max {report['attach+detach max s']} s), "
          f"{len(failures)} failures, {len(leftover)} endpoints left (the 3 long-lived)")
    for failure in failures[:5]:
        print(f"  failed: {failure}")
    print(table([[pair, str(v["sent"]), str(v["received"]), f"{v['loss %']} %"]
                 for pair, v in report["pairs"].items()],
                ["long-lived pair", "sent", "received", "loss"]))
    print("h1's netd during the churn (s: containers churned, fds, RSS MB): "
          + ", ".join(f"{t} s: {n}, {fds}, {rss}" for t, n, fds, rss in samples))
    keys = list(before["h1"])
    print(table([[k, *(f"{before[h][k]} → {after[h][k]}" for h in HOSTS)] for k in keys],
                ["per host (before → after)", *HOSTS]))


if __name__ == "__main__":
    main()
