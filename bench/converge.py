"""Convergence: from `attach` returning on one host to the first ping reply from another.

Issue 3. A pinger container on h1 pings, every 10 ms, the fixed address a new container
is about to get on another host (hosts taken in turn); the pinger starts before the
attach so no process start-up is measured. The figure for one sample is the
timestamp of the first echo reply (`ping -D`, the kernel clock of the reply) minus
the wall clock when the attach request returned; it is negative when the datapath
was ready before the API answered. Resolution is the 10 ms ping interval.

ARP: the pinger's interface uses a 10 ms ARP retransmit time (the kernel default is 1 s),
so its ARP for the target that went unanswered before the overlay was ready is retried
in time and the figure shows the control plane, not the ARP back-off. (The new
container's own interface only exists once attached; a sample near +1000 ms would be
its ARP for the pinger lost in a race, retried after the kernel's 1 s.)

Store: etcd (a real member in the lab's switch namespace); one fresh lab per host count.

Run as root from the repo root:
    .venv/bin/python -m bench.converge [--hosts 2,5,10,20] [--samples 20] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import threading
import time
from typing import Any

from bench.stats import lab_prefix, summary_ms, table
from netd.cli import Client
from netd.lab import Lab, ns_exec, run

NETWORK = "convnet"
SUBNET = "10.97.0.0/20"
PINGER_IP = "10.97.0.10"
REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from")
REPLY_TIMEOUT = 10.0


def _fast_arp(netns: str, ifname: str) -> None:
    run(ns_exec(netns, "ip", "ntable", "change", "name", "arp_cache", "dev", ifname,
                "retrans", "10"))


class Pinger:
    """`ping -D -i 0.01` inside a container; remembers the first reply's timestamp."""

    def __init__(self, netns: str, target: str) -> None:
        self.first_reply: float | None = None
        self._got = threading.Event()
        self._proc = subprocess.Popen(
            ns_exec(netns, "stdbuf", "-oL", "ping", "-n", "-D", "-i", "0.01", target),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            match = REPLY.match(line)
            if match and self.first_reply is None:
                self.first_reply = float(match.group(1))
                self._got.set()

    def wait(self, timeout: float) -> float | None:
        self._got.wait(timeout)
        return self.first_reply

    def stop(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def _idle_cpu(lab: Lab, seconds: float = 3.0) -> float:
    """CPU seconds per second that all netd processes used while nothing happened."""
    def total() -> float:
        used = 0.0
        for host in lab.hosts.values():
            if host.proc is None:
                continue
            with open(f"/proc/{host.proc.pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            used += (int(fields[11]) + int(fields[12])) / 100  # utime + stime, USER_HZ
        return used

    before = total()
    time.sleep(seconds)
    return (total() - before) / seconds


def measure(hosts: int, samples: int) -> dict[str, Any]:
    with Lab(hosts=hosts, store="etcd", prefix=lab_prefix()) as lab:
        clients = {name: Client(h.socket, timeout=60) for name, h in lab.hosts.items()}
        clients["h1"].request("POST", "/v1/networks", {"name": NETWORK, "subnet": SUBNET})
        pinger = lab.add_container("h1", "pinger")
        endpoint = clients["h1"].request(
            "POST", "/v1/attach", {"container": pinger, "network": NETWORK, "ip": PINGER_IP})
        _fast_arp(pinger, endpoint["ifname"])
        idle = _idle_cpu(lab)
        targets = [n for n in lab.hosts if n != "h1"]
        results: list[float] = []
        missed = 0
        for i in range(samples):
            host = targets[i % len(targets)]
            ip = f"10.97.1.{i % 250 + 1}"
            container = lab.add_container(host, f"t{i}")
            ping = Pinger(pinger, ip)
            try:
                time.sleep(0.05)  # the pinger is running (and failing) before the attach
                clients[host].request("POST", "/v1/attach",
                                      {"container": container, "network": NETWORK, "ip": ip})
                returned = time.time()
                reply = ping.wait(REPLY_TIMEOUT)
            finally:
                ping.stop()
            if reply is None:
                missed += 1
            else:
                results.append(reply - returned)
            clients[host].request("POST", "/v1/detach",
                                  {"container": container, "network": NETWORK})
            lab.remove_container(container)
    return {"hosts": hosts, **summary_ms(results), "missed": missed,
            "idle_cpu_all_netd": round(idle, 3), "samples_ms": [round(r * 1000, 1)
                                                                for r in results]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", default="2,5,10,20", help="comma-separated host counts")
    parser.add_argument("--samples", type=int, default=20, help="attaches per host count")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    rows = []
    for n in (int(x) for x in args.hosts.split(",")):
        rows.append(measure(n, args.samples))
        if not args.json:
            r = rows[-1]
            print(f"  {n} hosts done: median {r['median_ms']} ms, p99 {r['p99_ms']} ms",
                  flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("\nattach return -> first ping reply from another host (etcd store, 10 ms pings)")
    print(table(
        [(r["hosts"], r["n"], r["median_ms"], r["p99_ms"], r["max_ms"], r["missed"],
          r["idle_cpu_all_netd"]) for r in rows],
        ["hosts", "n", "median ms", "p99 ms", "max ms", "no reply", "idle CPU (cores)"],
    ))


if __name__ == "__main__":
    main()
