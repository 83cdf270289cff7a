"""Datapath throughput: iperf3 TCP container to container across two simulated hosts.

Issue 3. One lab (two host namespaces on an underlay bridge, embedded store), in one run,
each row measured the same way (`iperf3 -c` for --seconds, --parallel streams):

* underlay      host netns to host netns over the underlay veths, no overlay;
* hand-built    kernel VXLAN of fastdp's shape built here with `ip`/`bridge` commands:
                per host a bridge, a vxlan device (nolearning, proxy, static fdb and
                neighbour entries for the remote container), a veth into a container
                netns; MTU 1450 like fastdp. The reference fastdp should match;
* fastdp        netd weave fastdp network, containers attached through the API;
* sleeve        netd weave sleeve (userspace UDP), plain;
* sleeve+enc    netd weave sleeve, encrypted.

A row that cannot be set up or measured prints "n/a: <why>" and the run goes on.
Ratios are against hand-built VXLAN and against the underlay of the same run.

Run as root from the repo root:
    .venv/bin/python -m bench.datapath [--seconds 8] [--parallel 1] [--rows ...] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from collections.abc import Callable
from typing import Any

from bench.stats import lab_prefix, table
from netd.cli import Client, CliError
from netd.lab import Lab, ns_exec, run
from netd.model import mac_from_ip

ROWS = ("underlay", "hand-built", "fastdp", "sleeve", "sleeve+enc")
HB_VNI = 4000
HB_MTU = 1450
HB_SUBNET = "10.98.0"


class RowError(Exception):
    """This row cannot be measured; the message says why."""


def iperf(lab: Lab, server_ns: str, client_ns: str, ip: str, seconds: int,
          parallel: int) -> dict[str, Any]:
    server = subprocess.Popen(ns_exec(server_ns, "iperf3", "-s", "-1", "-B", ip),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        result = run(ns_exec(client_ns, "iperf3", "-c", ip, "-t", str(seconds),
                             "-P", str(parallel), "-J"),
                     check=False, timeout=seconds + 30)
        data = json.loads(result.stdout or "{}")
        if result.returncode != 0 or "error" in data:
            raise RowError(f"iperf3: {data.get('error') or result.stderr.strip()[-200:]}")
        end = data["end"]
        return {
            "mbit_s": round(end["sum_received"]["bits_per_second"] / 1e6),
            "retransmits": end["sum_sent"].get("retransmits", 0),
        }
    finally:
        server.kill()
        server.wait()


def _sh(netns: str, *cmd: str) -> None:
    result = run(ns_exec(netns, *cmd), check=False)
    if result.returncode != 0:
        raise RowError(f"{' '.join(cmd)} in {netns}: {result.stderr.strip()}")


def _reachable(lab: Lab, netns: str, ip: str) -> None:
    if not lab.wait_ping(netns, ip, timeout=15):
        raise RowError(f"no ping reply from {ip} within 15 s")


# --- rows ------------------------------------------------------------------------------
def underlay(lab: Lab, seconds: int, parallel: int) -> dict[str, Any]:
    h1, h2 = lab.hosts["h1"], lab.hosts["h2"]
    return iperf(lab, h2.netns, h1.netns, h2.underlay_ip, seconds, parallel)


def hand_built(lab: Lab, seconds: int, parallel: int) -> dict[str, Any]:
    """Bridge + vxlan (nolearning, proxy) + static fdb/neigh + veth, like fastdp."""
    hosts = [lab.hosts["h1"], lab.hosts["h2"]]
    containers = [lab.add_container(h.name, f"hb{i}") for i, h in enumerate(hosts, 1)]
    ips = [f"{HB_SUBNET}.{i}" for i in (1, 2)]
    macs = [mac_from_ip(ip) for ip in ips]
    for i, (host, ctr) in enumerate(zip(hosts, containers, strict=True)):
        peer = 1 - i
        ns = host.netns
        _sh(ns, "ip", "link", "add", "hbbr", "mtu", str(HB_MTU), "type", "bridge")
        _sh(ns, "ip", "link", "add", "hbvx", "mtu", str(HB_MTU), "type", "vxlan", "id",
            str(HB_VNI), "dstport", "4789", "local", host.underlay_ip, "nolearning", "proxy")
        _sh(ns, "ip", "link", "set", "hbvx", "master", "hbbr")
        _sh(ns, "bridge", "link", "set", "dev", "hbvx", "learning", "off", "neigh_suppress", "on")
        _sh(ns, "ip", "link", "add", "hbh0", "mtu", str(HB_MTU), "type", "veth", "peer", "name",
            "eth0", "netns", ctr)
        _sh(ns, "ip", "link", "set", "hbh0", "master", "hbbr")
        for link in ("hbbr", "hbvx", "hbh0"):
            _sh(ns, "ip", "link", "set", link, "up")
        _sh(ns, "bridge", "fdb", "append", macs[peer], "dev", "hbvx",
            "dst", hosts[peer].underlay_ip, "self", "permanent")
        _sh(ns, "ip", "neigh", "replace", ips[peer], "lladdr", macs[peer], "dev", "hbvx",
            "nud", "permanent")
        _sh(ctr, "ip", "link", "set", "eth0", "address", macs[i], "mtu", str(HB_MTU), "up")
        _sh(ctr, "ip", "addr", "add", f"{ips[i]}/24", "dev", "eth0")
    _reachable(lab, containers[0], ips[1])
    return iperf(lab, containers[1], containers[0], ips[1], seconds, parallel)


def _netd_row(backend: str, encrypt: bool) -> Callable[[Lab, int, int], dict[str, Any]]:
    def measure(lab: Lab, seconds: int, parallel: int) -> dict[str, Any]:
        tag = backend[:2] + ("e" if encrypt else "")
        net = f"dp-{tag}"
        third = {"fastdp": 1, "sleeve": 2}[backend] + (1 if encrypt else 0)
        body: dict[str, Any] = {"name": net, "subnet": f"10.99.{third}.0/24",
                                "backend": backend}
        if encrypt:
            body["encrypt"] = True
        clients = {n: Client(h.socket, timeout=60) for n, h in lab.hosts.items()}
        try:
            clients["h1"].request("POST", "/v1/networks", body)
            ctrs, ips = [], []
            for i, host in enumerate(("h1", "h2"), 1):
                ctr = lab.add_container(host, f"{tag}{i}")
                ip = f"10.99.{third}.{10 + i}"
                clients[host].request("POST", "/v1/attach",
                                      {"container": ctr, "network": net, "ip": ip})
                ctrs.append(ctr)
                ips.append(ip)
        except CliError as exc:
            raise RowError(str(exc)) from None
        _reachable(lab, ctrs[0], ips[1])
        result = iperf(lab, ctrs[1], ctrs[0], ips[1], seconds, parallel)
        for host, ctr in zip(("h1", "h2"), ctrs, strict=True):
            clients[host].request("POST", "/v1/detach", {"container": ctr, "network": net})
        return result

    return measure


MEASURES: dict[str, Callable[[Lab, int, int], dict[str, Any]]] = {
    "underlay": underlay,
    "hand-built": hand_built,
    "fastdp": _netd_row("fastdp", False),
    "sleeve": _netd_row("sleeve", False),
    "sleeve+enc": _netd_row("sleeve", True),
}


def measure_all(rows: list[str], seconds: int, parallel: int) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    with Lab(hosts=2, prefix=lab_prefix()) as lab:
        for row in rows:
            try:
                results[row] = MEASURES[row](lab, seconds, parallel)
            except (RowError, subprocess.TimeoutExpired, CliError) as exc:
                results[row] = {"error": str(exc)}
            print(f"  {row}: {results[row]}", flush=True)
    base = {k: results.get(k, {}).get("mbit_s") for k in ("hand-built", "underlay")}
    for result in results.values():
        for name, mbit in base.items():
            if "mbit_s" in result and mbit:
                result[f"vs_{name}"] = round(result["mbit_s"] / mbit, 2)
    return results


def render(results: dict[str, dict[str, Any]], seconds: int, parallel: int) -> str:
    rows = []
    for name, r in results.items():
        if "error" in r:
            rows.append((name, f"n/a: {r['error'][:90]}", "", "", ""))
        else:
            rows.append((name, r["mbit_s"], r.get("vs_hand-built", ""),
                         r.get("vs_underlay", ""), r["retransmits"]))
    head = (f"iperf3 TCP container to container across 2 hosts, {seconds} s, "
            f"{parallel} stream(s)")
    return head + "\n" + table(rows, ["path", "Mbit/s", "vs hand-built", "vs underlay",
                                      "retransmits"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=8, help="iperf3 time per row")
    parser.add_argument("-P", "--parallel", type=int, default=1, help="iperf3 streams")
    parser.add_argument("--rows", default=",".join(ROWS),
                        help=f"comma-separated subset of {','.join(ROWS)}")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    rows = [r for r in args.rows.split(",") if r]
    unknown = set(rows) - set(ROWS)
    if unknown:
        parser.error(f"unknown row(s): {', '.join(sorted(unknown))}")
    results = measure_all(rows, args.seconds, args.parallel)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(render(results, args.seconds, args.parallel))


if __name__ == "__main__":
    main()
