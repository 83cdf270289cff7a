"""Attach and detach latency through the API, and how it grows with endpoints on a host.

Issue 2's acceptance: attach N containers one after another on one simulated host
(a real `netd` in a host namespace, the embedded SQLite store by default) through the
HTTP API over the unix socket, timing each request in this process (no `netctl`
process start-up in the figure). Latencies are grouped in buckets of --step attaches
(1-200, 201-400, ...) so growth with the number of endpoints shows; then every
container is detached, timed the same way (buckets count down from the full host).

Beside wall-clock latency each bucket shows the daemon's CPU time per request (netd
and its helper processes, from /proc): on a shared machine the wall clock follows the
load, while CPU per request shows whether netd's own work grows with the endpoints.

With --no-container-ipv6 the bench's containers get IPv6 disabled before they are
attached (a harness setting, as a runtime could choose; netd leaves the container end
to the container): a new container's IPv6 start-up multicast (DAD, MLD reports, router
solicitations) is flooded by the network's bridge to every port, so with it on, the
kernel's work per attach grows with the endpoints of the network (docs/benchmarks.md).

Run as root from the repo root:
    .venv/bin/python -m bench.attach [--count 1000] [--step 200] [--store etcd]
        [--no-container-ipv6] [--sg] [--restart] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from typing import Any

from bench.stats import lab_prefix, summary_ms, table
from netd.cli import Client, CliError
from netd.lab import Lab

NETWORK = "benchnet"
GROUP = "benchsg"
SUBNET = "10.96.0.0/20"  # room for 4093 endpoints


_TICK = os.sysconf("SC_CLK_TCK")


def process_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by `pid` and its live descendants, plus the
    descendants it already reaped."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ppid = int(fields[1])
        own = int(fields[11]) + int(fields[12])
        reaped = int(fields[13]) + int(fields[14])
        stats[int(entry)] = (ppid, (own + reaped) / _TICK)
    tree, total, frontier = {pid}, 0.0, [pid]
    while frontier:
        parent = frontier.pop()
        total += stats.get(parent, (0, 0.0))[1]
        children = [p for p, (pp, _) in stats.items() if pp == parent and p not in tree]
        tree.update(children)
        frontier += children
    return total


class _Timer:
    """Times requests; a failed one is counted (its time too) instead of ending the run.
    Every `step` requests it samples the daemon's CPU time."""

    def __init__(self, client: Client, daemon_pid: int, step: int) -> None:
        self.client = client
        self.daemon_pid = daemon_pid
        self.step = step
        self.failures: list[str] = []
        self.cpu_per_request: list[float] = []
        self._count = 0
        self._cpu_mark = process_tree_cpu(daemon_pid)

    def mark(self) -> None:
        """Start a new CPU bucket (between the attach and detach phases)."""
        if self._count:
            self._close_bucket()
        self._cpu_mark = process_tree_cpu(self.daemon_pid)

    def _close_bucket(self) -> None:
        now = process_tree_cpu(self.daemon_pid)
        self.cpu_per_request.append((now - self._cpu_mark) / self._count)
        self._cpu_mark, self._count = now, 0

    def post(self, path: str, body: dict[str, Any]) -> float:
        start = time.perf_counter()
        try:
            self.client.request("POST", path, body)
        except CliError as exc:
            self.failures.append(f"{path} {body['container']}: {exc}")
        elapsed = time.perf_counter() - start
        self._count += 1
        if self._count == self.step:
            self._close_bucket()
        return elapsed


def _buckets(latencies: list[float], step: int, cpu: list[float]) -> list[dict[str, Any]]:
    out = []
    for index, first in enumerate(range(0, len(latencies), step)):
        chunk = latencies[first : first + step]
        cpu_ms = round(cpu[index] * 1000, 2) if index < len(cpu) else None
        out.append({"range": f"{first + 1}-{first + len(chunk)}", **summary_ms(chunk),
                    "daemon_cpu_ms": cpu_ms})
    return out


def _disable_ipv6(containers: list[str]) -> None:
    """IPv6 off for interfaces created later in these netns (one `ip -batch` run)."""
    batch = "".join(
        f"netns exec {c} sysctl -qw net.ipv6.conf.default.disable_ipv6=1\n" for c in containers
    )
    subprocess.run(["ip", "-batch", "-"], input=batch, text=True, check=True, timeout=300)


def run(
    count: int, step: int, store: str, resync: float, container_ipv6: bool = True,
    security_group: bool = False, restart: bool = False,
) -> dict[str, Any]:
    with Lab(hosts=1, store=store, prefix=lab_prefix(), resync_interval=resync) as lab:
        host = lab.hosts["h1"]
        client = Client(host.socket, timeout=120)
        client.request("POST", "/v1/networks", {"name": NETWORK, "subnet": SUBNET})
        extra: dict[str, Any] = {}
        if security_group:  # every container a member, ingress only from the members
            client.request("POST", "/v1/sg", {"name": GROUP})
            client.request("POST", f"/v1/sg/{GROUP}/rules", {
                "direction": "ingress", "protocol": "tcp", "port": "80", "group": GROUP})
            extra = {"sg": [GROUP]}
        containers = [lab.add_container("h1", f"c{i}") for i in range(count)]
        if not container_ipv6:
            _disable_ipv6(containers)
        assert host.proc is not None
        timer = _Timer(client, host.proc.pid, step)
        attach = [timer.post("/v1/attach", {"container": c, "network": NETWORK, **extra})
                  for c in containers]
        timer.mark()
        attach_cpu = timer.cpu_per_request
        timer.cpu_per_request = []
        restarted = _restart(lab, client) if restart else None
        if restarted is not None:
            assert host.proc is not None
            timer = _Timer(client, host.proc.pid, step)
        detach = [timer.post("/v1/detach", {"container": c, "network": NETWORK})
                  for c in reversed(containers)]
        timer.mark()
        detach_cpu = timer.cpu_per_request
    return {
        "store": store,
        "count": count,
        "resync_interval_s": resync,
        "container_ipv6": container_ipv6,
        "security_group": security_group,
        "restart": restarted,
        "failures": len(timer.failures),
        "first_failures": timer.failures[:5],
        "attach": summary_ms(attach),
        "detach": summary_ms(detach),
        "attach_buckets": _buckets(attach, step, attach_cpu),
        # detach i runs with count - i endpoints on the host: label by endpoints present
        "detach_buckets": [
            {**b, "range": _countdown(b["range"], count)}
            for b in _buckets(detach, step, detach_cpu)
        ],
    }


def _restart(lab: Lab, client: Client) -> dict[str, float]:
    """kill -9 netd with every container attached, start it again and time its first
    full sync: from the process start until every worker (drivers and policy) has
    finished a sync at the revision the store had (polling status every 250 ms: a
    status call lists every link of the host, so polling faster slows what it
    measures)."""
    revision = client.request("GET", "/v1/status")["store"]["revision"]
    lab.stop_netd("h1", kill=True)
    started = time.monotonic()
    lab.start_netd("h1", wait=60)
    serving = time.monotonic() - started
    host = lab.hosts["h1"]
    assert host.proc is not None
    while True:
        status = client.request("GET", "/v1/status")
        workers = status["workers"].values()
        if workers and all(w["syncs"] >= 1 and w["revision"] >= revision
                           and not w["applying_since"] for w in workers):
            break
        if time.monotonic() - started > 300:
            raise RuntimeError("no first full sync within 300 s after the restart")
        time.sleep(0.25)  # each status call lists the host's links: not too often
    synced = time.monotonic() - started
    return {"socket_s": round(serving, 3), "first_full_sync_s": round(synced, 3),
            "netd_cpu_s": round(process_tree_cpu(host.proc.pid), 3),
            "workers_s": {name: round(w["last_duration"], 3)
                          for name, w in sorted(status["workers"].items())}}


def _countdown(rng: str, count: int) -> str:
    first, last = (int(x) for x in rng.split("-"))
    return f"{count - first + 1}-{count - last + 1}"


def render(result: dict[str, Any]) -> str:
    lines = [
        f"attach/detach latency through the API, 1 host, {result['store']} store, "
        f"{result['count']} containers, resync every {result['resync_interval_s']:g} s, "
        f"container IPv6 {'on' if result['container_ipv6'] else 'off'}"
        + (", every container in one security group (a member-set rule)"
           if result.get("security_group") else ""),
        "",
    ]
    for kind, label in (("attach", "attach #"), ("detach", "endpoints present")):
        rows = [(b["range"], b["n"], b["median_ms"], b["p99_ms"], b["max_ms"],
                 b["daemon_cpu_ms"]) for b in result[f"{kind}_buckets"]]
        total = result[kind]
        rows.append(("all", total["n"], total["median_ms"], total["p99_ms"], total["max_ms"],
                     ""))
        headers = [label, "n", "median ms", "p99 ms", "max ms", "netd cpu ms/req"]
        lines += [f"{kind}:", table(rows, headers), ""]
    first, last = result["attach_buckets"][0], result["attach_buckets"][-1]
    if len(result["attach_buckets"]) > 1 and first["median_ms"]:
        lines.append(f"attach median, last bucket / first: "
                     f"{last['median_ms'] / first['median_ms']:.2f}"
                     + (f"; netd cpu per attach, last / first: "
                        f"{last['daemon_cpu_ms'] / first['daemon_cpu_ms']:.2f}"
                        if first["daemon_cpu_ms"] and last["daemon_cpu_ms"] else ""))
    if result.get("restart"):
        r = result["restart"]
        lines.append(f"restart (kill -9) with {result['count']} endpoints: socket after "
                     f"{r['socket_s']:.2f} s, first full sync done after "
                     f"{r['first_full_sync_s']:.2f} s (netd CPU {r['netd_cpu_s']:.2f} s; "
                     "last apply per worker: "
                     + ", ".join(f"{k} {v:.2f} s" for k, v in r["workers_s"].items()) + ")")
    lines.append(f"failed requests: {result['failures']}")
    lines += [f"  {f}" for f in result["first_failures"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="containers to attach")
    parser.add_argument("--step", type=int, default=200, help="attaches per bucket")
    parser.add_argument("--store", choices=["embedded", "etcd"], default="embedded")
    parser.add_argument("--resync", type=float, default=30.0,
                        help="the daemon's periodic full resync interval, s (netd's default 30)")
    parser.add_argument("--no-container-ipv6", action="store_true",
                        help="disable IPv6 in the containers before attaching them")
    parser.add_argument("--sg", action="store_true",
                        help="attach every container with one security group whose ingress "
                             "rule names the group itself (member set grows with each attach)")
    parser.add_argument("--restart", action="store_true",
                        help="after the attaches, kill -9 netd, start it again and time its "
                             "first full sync (issue 12 item 7)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args()
    result = run(args.count, args.step, args.store, args.resync,
                 container_ipv6=not args.no_container_ipv6, security_group=args.sg,
                 restart=args.restart)
    print(json.dumps(result, indent=2) if args.json else render(result))


if __name__ == "__main__":
    main()
