"""Sleeve throughput: iperf3 TCP, container to container across two host namespaces.

Run as root from the repo root: `.venv/bin/python -m bench.sleeve_engine [--seconds 10]`.
Prints one JSON line per case (plain, encrypted; with --no-offload also with TSO/GSO off
in the containers, i.e. one 1.5 KB frame per TAP read, to show what the GSO path buys).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from typing import Any

from netd.model import network_mtu
from tests.support.drivers import weave_backend
from tests.support.sleeve_runner import SleeveLab, in_ns, sh


def run_case(seconds: int, encrypt: bool, offload: bool) -> dict[str, Any]:
    lab = SleeveLab(hosts=2)
    try:
        h1, h2 = lab.hosts
        for host in lab.hosts:
            lab.start_engine(host)
        mtu = network_mtu(weave_backend("sleeve"), 1500, encrypt)
        lab.add_network(10, mtu, os.urandom(32) if encrypt else None)
        c1 = lab.add_container(h1, 10, "10.77.0.1", mtu, "c1")
        c2 = lab.add_container(h2, 10, "10.77.0.2", mtu, "c2")
        if not offload:
            for ns in (c1, c2):
                sh(*in_ns(ns, "ethtool", "-K", "eth0", "tso", "off", "gso", "off"))
        server = subprocess.Popen(in_ns(c2, "iperf3", "-s", "-1"), stdout=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            out = sh(*in_ns(c1, "iperf3", "-J", "-c", "10.77.0.2", "-t", str(seconds)),
                     timeout=seconds + 30).stdout
        finally:
            server.wait(timeout=10)
        end = json.loads(out)["end"]
        stats = lab.engines[h1].networks()["10"]
        return {
            "case": ("encrypted" if encrypt else "plain") + ("" if offload else "-no-offload"),
            "gbit_s": round(end["sum_received"]["bits_per_second"] / 1e9, 2),
            "retransmits": end["sum_sent"]["retransmits"],
            "avg_frame_bytes": stats["bytes_out"] // max(stats["frames_out"], 1),
            "drops": {k: v for k, v in stats.items() if k.startswith("drops_") and v},
        }
    finally:
        lab.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--no-offload", action="store_true", help="also run with TSO/GSO off")
    args = parser.parse_args()
    cases = [(False, True), (True, True)]
    if args.no_offload:
        cases += [(False, False), (True, False)]
    for encrypt, offload in cases:
        print(json.dumps(run_case(args.seconds, encrypt, offload)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
