"""Convergence: from `attach` on one host until a container on another host gets a reply.

Issue 3. A pinger container on h1 pings, every 10 ms, the fixed address a new container
is about to get on another host (hosts taken in turn); the pinger is already running
(and failing) before the attach, so no process start-up is measured. One sample is the
timestamp of the first echo reply (`ping -D`, taken when the reply is received) minus
the wall clock just before the attach request was sent: the whole path a user sees,
API, store, both hosts' reconcilers and the kernel. The same reply minus the moment the
attach request returned is kept as a second figure (negative when the other host's
datapath was ready before the API's answer arrived). Resolution: the 10 ms ping interval.

A sample with no reply within --timeout (or whose attach failed) is a failure: it is
listed, counted, and enters the percentiles as +inf ("timeout"), never dropped.

ARP is left as users get it: netd sets a 100 ms ARP retransmit time on every container
interface it attaches (the pinger's and the new container's), so an ARP the pinger sent
before the overlay was ready is retried within 100 ms and the figure includes that
back-off.

Store: etcd (a real member in the lab's switch namespace); one fresh lab per host count.
After each sample the container is detached (not timed), so every sample on a host that
has no other endpoint on the network also builds that host's bridge and vxlan device.

Run as root from the repo root:
    .venv/bin/python -m bench.converge [--hosts 2,5,10,20] [--samples 100] [--timeout 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import threading
import time
from typing import Any

from bench.stats import TIMEOUT, fmt_ms, lab_prefix, table, tail_summary_ms
from netd.cli import Client, CliError
from netd.lab import Lab, ns_exec

NETWORK = "convnet"
SUBNET = "10.97.0.0/20"
PINGER_IP = "10.97.0.10"
REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from")
PINGING_BEFORE_ATTACH = 0.05  # s the pinger has been failing when the attach is sent


class Pinger:
    """`ping -D -i 0.01` inside a container; remembers the first reply's timestamp."""

    def __init__(self, netns: str, target: str) -> None:
        self.first_reply: float | None = None
        self._started = threading.Event()
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
            self._started.set()  # ping prints its "PING ..." header before the first probe
            match = REPLY.match(line)
            if match and self.first_reply is None:
                self.first_reply = float(match.group(1))
                self._got.set()
        self._started.set()

    def wait_started(self, timeout: float) -> None:
        self._started.wait(timeout)

    def wait(self, timeout: float) -> float | None:
        self._got.wait(max(0.0, timeout))
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


def _sample(lab: Lab, client: Client, pinger_ns: str, host: str, index: int,
            timeout: float) -> tuple[float, float, float | None, str | None]:
    """One attach: (sent→reply, return→reply, attach call duration, failure reason)."""
    ip = f"10.97.{1 + index // 250}.{index % 250 + 1}"
    container = lab.add_container(host, f"t{index}")
    ping = Pinger(pinger_ns, ip)
    attached = False
    returned: float | None = None
    failure: str | None = None
    try:
        ping.wait_started(5)
        time.sleep(PINGING_BEFORE_ATTACH)
        sent = time.time()
        try:
            client.request("POST", "/v1/attach",
                           {"container": container, "network": NETWORK, "ip": ip})
            returned = time.time()
            attached = True
        except CliError as exc:
            failure = f"attach failed: {exc}"
        reply = ping.wait(sent + timeout - time.time()) if attached else None
    finally:
        ping.stop()
    if attached and (reply is None or reply - sent > timeout):
        failure = f"no reply within {timeout:g} s"
    if attached:
        try:
            client.request("POST", "/v1/detach", {"container": container, "network": NETWORK})
        except CliError as exc:
            failure = (failure + "; " if failure else "") + f"detach failed: {exc}"
    lab.remove_container(container)
    if failure is not None or reply is None or returned is None:
        return TIMEOUT, TIMEOUT, None if returned is None else returned - sent, failure
    return reply - sent, reply - returned, returned - sent, None


def measure(hosts: int, samples: int, timeout: float) -> dict[str, Any]:
    started = time.monotonic()
    with Lab(hosts=hosts, store="etcd", prefix=lab_prefix()) as lab:
        clients = {name: Client(h.socket, timeout=60) for name, h in lab.hosts.items()}
        clients["h1"].request("POST", "/v1/networks", {"name": NETWORK, "subnet": SUBNET})
        pinger = lab.add_container("h1", "pinger")
        clients["h1"].request(
            "POST", "/v1/attach", {"container": pinger, "network": NETWORK, "ip": PINGER_IP})
        idle = _idle_cpu(lab)
        targets = [n for n in lab.hosts if n != "h1"]
        from_sent: list[float] = []
        from_return: list[float] = []
        calls: list[float] = []
        failures: list[str] = []
        for i in range(samples):
            host = targets[i % len(targets)]
            s, r, call, why = _sample(lab, clients[host], pinger, host, i, timeout)
            from_sent.append(s)
            from_return.append(r)
            if call is not None:
                calls.append(call)
            if why is not None:
                failures.append(f"sample {i} on {host}: {why}")
    return {
        "hosts": hosts,
        "from_send": tail_summary_ms(from_sent),
        "from_return": tail_summary_ms(from_return),
        "attach_call_median_ms": round(statistics.median(calls) * 1000, 1) if calls else None,
        "failures": failures,
        "idle_cpu_all_netd": round(idle, 3),
        "seconds": round(time.monotonic() - started, 1),
        "samples_from_send_ms": _ms_list(from_sent),
        "samples_from_return_ms": _ms_list(from_return),
    }


def _ms_list(seconds: list[float]) -> list[float | None]:
    """Samples in ms for JSON; None for a failure."""
    return [None if s == TIMEOUT else round(s * 1000, 1) for s in seconds]


def render(rows: list[dict[str, Any]], timeout: float) -> str:
    lines = [
        "attach request sent -> first ping reply from a container on another host "
        f"(etcd store, 10 ms pings, failure = no reply within {timeout:g} s)",
        table(
            [(r["hosts"], r["from_send"]["n"], *(fmt_ms(r["from_send"][k]) for k in
              ("median_ms", "p90_ms", "p99_ms", "max_ms")), r["from_send"]["failures"],
              fmt_ms(r["from_return"]["median_ms"]), fmt_ms(r["from_return"]["p99_ms"]),
              fmt_ms(r["attach_call_median_ms"]), r["idle_cpu_all_netd"], r["seconds"])
             for r in rows],
            ["hosts", "n", "median ms", "p90 ms", "p99 ms", "max ms", "failures",
             "from return: median", "p99", "attach call median", "idle CPU (cores)",
             "run s"],
        ),
    ]
    for r in rows:
        lines += [f"  {r['hosts']} hosts: {f}" for f in r["failures"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", default="2,5,10,20", help="comma-separated host counts")
    parser.add_argument("--samples", type=int, default=100, help="attaches per host count")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="seconds after the attach request without a reply = failure")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    rows = []
    for n in (int(x) for x in args.hosts.split(",")):
        rows.append(measure(n, args.samples, args.timeout))
        if not args.json:
            r = rows[-1]["from_send"]
            print(f"  {n} hosts done: median {fmt_ms(r['median_ms'])}, p99 "
                  f"{fmt_ms(r['p99_ms'])} (ms), {r['failures']} failure(s)", flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print()
    print(render(rows, args.timeout))


if __name__ == "__main__":
    main()
