"""Security-group update latency: from the API call until every host's kernel has it.

Issue 9. A network spans every host of the lab, with one endpoint per host in group
`web` (whose ingress rule names `web` itself, so every host keeps web's member set).
Two kinds of samples, each timed from just before the API request (sent in-process
over the socket, so no CLI start-up is counted) until `nft -j list table ip netd` on
every host shows the change, polled every 5 ms per host in parallel threads:

* membership: one more endpoint is put into `web` (`endpoint update --sg web`), then
  taken out again (both timed): the address appears in / vanishes from web's set;
* rule: a rule with a fresh port is added to `web` (`sg rule add`): its port appears in
  every host's member chain.

The figure includes the store round trip, every daemon's watch, the policy computation
and the nft transaction. Timed-out samples count as +inf.

`--throughput`: iperf3 TCP between two containers on two hosts (fastdp): first with
netd's tables deleted and br_netfilter off (the path before security groups), then,
after restarting both daemons, with the server in no group, and in a group of 100
ingress rules (CIDR rules on
other ports, plus the allowing rule last: tcp/5201 from a group of 1000 members; the
members are endpoint records written straight into etcd on a host that does not run,
so they exist in the policy only), rounds interleaved.

Run as root from the repo root:
    .venv/bin/python -m bench.policy [--hosts 3] [--samples 20] [--json]
    .venv/bin/python -m bench.policy --throughput [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from bench.stats import TIMEOUT, fmt_ms, table, tail_summary_ms
from netd.cli import Client
from netd.lab import Lab, ns_exec, run


def netd_table(lab: Lab, host: str) -> str:
    return run(ns_exec(lab.hosts[host].netns, "nft", "-j", "list", "table", "ip", "netd"),
               check=False).stdout


def until_everywhere(lab: Lab, seen: Callable[[str], bool], timeout: float) -> float:
    """Seconds until `seen(table json)` holds on every host (inf on timeout)."""
    started = time.monotonic()
    done: dict[str, float] = {}

    def poll(host: str) -> None:
        while time.monotonic() - started < timeout:
            if seen(netd_table(lab, host)):
                done[host] = time.monotonic()
                return
            time.sleep(0.005)

    threads = [threading.Thread(target=poll, args=(h,)) for h in lab.hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if len(done) < len(lab.hosts):
        return TIMEOUT
    return max(done.values()) - started


def measure(hosts: int, samples: int, timeout: float) -> dict[str, Any]:
    with Lab(hosts=hosts, store="etcd", prefix=f"sg{secrets.token_hex(2)}") as lab:
        names = list(lab.hosts)
        api = {h: Client(lab.hosts[h].socket) for h in names}
        first = api[names[0]]
        first.request("POST", "/v1/networks", {"name": "bpol", "subnet": "10.99.0.0/16"})
        first.request("POST", "/v1/sg", {"name": "web"})
        first.request("POST", "/v1/sg/web/rules", {"direction": "ingress", "protocol": "tcp",
                                                  "port": "80", "group": "web"})
        for i, host in enumerate(names):
            netns = lab.add_container(host, f"m{i}")
            api[host].request("POST", "/v1/attach", {"container": netns, "network": "bpol",
                                                     "ip": f"10.99.0.{10 + i}", "sg": ["web"]})
        mover = lab.add_container(names[0], "mover")
        api[names[0]].request("POST", "/v1/attach", {"container": mover, "network": "bpol",
                                                     "ip": "10.99.1.1"})
        join: list[float] = []
        leave: list[float] = []
        rules: list[float] = []
        for n in range(samples):
            for groups, into in ((["web"], join), ([], leave)):
                present = bool(groups)
                started = time.monotonic()
                api[names[0]].request("POST", "/v1/endpoints/update", {
                    "container": mover, "network": "bpol", "sg": groups})
                waited = until_everywhere(
                    lab, lambda t, p=present: ('"10.99.1.1"' in t) == p, timeout)
                into.append(waited if waited == TIMEOUT else time.monotonic() - started)
            port = 10000 + n
            started = time.monotonic()
            first.request("POST", "/v1/sg/web/rules", {
                "direction": "ingress", "protocol": "tcp", "port": str(port),
                "cidr": "10.98.0.0/16"})
            waited = until_everywhere(
                lab, lambda t, p=port: re.search(rf'"right":\s*{p}\b', t) is not None, timeout)
            rules.append(waited if waited == TIMEOUT else time.monotonic() - started)
        return {"hosts": hosts, "join": tail_summary_ms(join), "leave": tail_summary_ms(leave),
                "rule_add": tail_summary_ms(rules)}


GHOSTS = r"""
import sys
from pathlib import Path
from netd.model import Endpoint
from netd.store import open_store
from netd.store.base import Put
from netd.store.keys import Keys
store, keys = open_store(sys.argv[1], Path(sys.argv[2])), Keys()
for start in range(0, 1000, 100):
    ops = []
    for i in range(start, start + 100):
        ip = f"10.99.{100 + i // 250}.{1 + i % 250}"
        ep = Endpoint("bpol", f"ghost{i}", f"ghost{i}", "/none", "ghost", "eth0", ip,
                      f"02:43:00:00:{i // 256:02x}:{i % 256:02x}", ("many",))
        ops.append(Put(keys.endpoint("bpol", ep.name), ep.to_json()))
    store.commit([], ops)
store.close()
"""


def iperf(lab: Lab, client: str, server: str, ip: str, seconds: int) -> float:
    proc = subprocess.Popen(ns_exec(server, "iperf3", "-s", "-1", "-B", ip),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        out = run(ns_exec(client, "iperf3", "-c", ip, "-t", str(seconds), "-J"),
                  check=False, timeout=seconds + 30).stdout
        return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e6
    except (ValueError, KeyError):
        return 0.0
    finally:
        proc.kill()
        proc.wait()


def throughput(seconds: int, rounds: int) -> dict[str, Any]:
    with Lab(hosts=2, store="etcd", prefix=f"sg{secrets.token_hex(2)}") as lab:
        h1, h2 = (Client(lab.hosts[h].socket) for h in ("h1", "h2"))
        h1.request("POST", "/v1/networks", {"name": "bpol", "subnet": "10.99.0.0/16"})
        for group in ("many", "big"):
            h1.request("POST", "/v1/sg", {"name": group})
        for i in range(99):
            h1.request("POST", "/v1/sg/big/rules", {
                "direction": "ingress", "protocol": "tcp", "port": str(20000 + i),
                "cidr": f"10.{200 + i // 100}.{i % 100}.0/24"})
        h1.request("POST", "/v1/sg/big/rules", {"direction": "ingress", "protocol": "tcp",
                                               "port": "5201", "group": "many"})
        run(ns_exec(lab.switch, sys.executable, "-c", GHOSTS, lab.store_url, str(lab.dir)))
        client, server = lab.add_container("h1", "c"), lab.add_container("h2", "s")
        h1.request("POST", "/v1/attach", {"container": client, "network": "bpol",
                                          "ip": "10.99.0.10", "sg": ["many"]})
        h2.request("POST", "/v1/attach", {"container": server, "network": "bpol",
                                          "ip": "10.99.0.20"})
        results: dict[str, list[float]] = {"no netd tables, br_netfilter off": [],
                                           "no policy": [], "100 rules, 1000 members": []}
        for host in lab.hosts.values():  # the path as it was before security groups
            for family in ("bridge", "ip"):
                run(ns_exec(host.netns, "nft", "delete", "table", family, "netd"))
            run(ns_exec(host.netns, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0"))
        for _ in range(rounds):
            results["no netd tables, br_netfilter off"].append(
                iperf(lab, client, server, "10.99.0.20", seconds))
        for name in lab.hosts:  # a restarted netd puts its tables back (they are absent)
            lab.stop_netd(name)
            lab.start_netd(name)
        h2.request("POST", "/v1/endpoints/update", {"container": server, "network": "bpol",
                                                    "sg": ["big"]})  # waits for the policy
        for _ in range(rounds):
            for groups, name in (([], "no policy"), (["big"], "100 rules, 1000 members")):
                h2.request("POST", "/v1/endpoints/update", {
                    "container": server, "network": "bpol", "sg": groups})
                results[name].append(iperf(lab, client, server, "10.99.0.20", seconds))
        members = netd_table(lab, "h2").count('"10.99.')
        return {"seconds": seconds, "rounds": rounds, "set_elements_seen": members,
                "mbit_s": {k: sorted(v) for k, v in results.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--throughput", action="store_true")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.throughput:
        figures = throughput(args.seconds, args.rounds)
        if args.json:
            print(json.dumps(figures, indent=2))
            return
        base = statistics.median(figures["mbit_s"]["no netd tables, br_netfilter off"])
        print(f"iperf3 {args.seconds} s x {args.rounds}, fastdp, 2 hosts "
              f"(member set elements seen: {figures['set_elements_seen']})")
        print(table([(k, " ".join(f"{x:.0f}" for x in v), f"{statistics.median(v):.0f}",
                      f"{statistics.median(v) / base:.2f}" if base else "-")
                     for k, v in figures["mbit_s"].items()],
                    ["path", "Mbit/s per run", "median", "vs no tables"]))
        return
    result = measure(args.hosts, args.samples, args.timeout)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    rows = [(kind, result[kind]["n"], fmt_ms(result[kind]["median_ms"]),
             fmt_ms(result[kind]["p90_ms"]), fmt_ms(result[kind]["max_ms"]))
            for kind in ("join", "leave", "rule_add")]
    print(f"security-group update latency to every one of {args.hosts} hosts")
    print(table(rows, ["change", "n", "median", "p90", "max"]))


if __name__ == "__main__":
    main()
