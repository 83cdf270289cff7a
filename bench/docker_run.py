"""`docker run` latency on a netd network beside Docker's own bridge and `--network none`.

Issue 11. One simulated host (dockerd 20.10 beside `netd --docker-plugin` in its
namespaces, tests.support.docker; embedded store), a busybox image imported locally.
Each round runs `docker run --rm --network N local/busybox true` once per network,
round-robin (the order rotates per round), timing the CLI call end to end. Also: how
long after the container's first instruction its eth0 has its address, on a netd
network (netd plugs the interface once dockerd created the sandbox netns, which happens
after the plugin's Join returned: see docs/runtimes.md), measured inside the container
by polling every millisecond.

Run as root from the repo root:
    .venv/bin/python -m bench.docker_run [--repeat 15]
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import time

from netd.lab import Lab
from tests.support.docker import IMAGE, DockerHost

WAIT_FOR_ETH0 = (
    "n=0; while ! ip -4 addr show eth0 2>/dev/null | grep -q inet; do "
    "n=$((n+1)); [ $n -gt 5000 ] && exit 1; usleep 1000; done; echo $n"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    lab = Lab(hosts=0, prefix=f"rtb{secrets.token_hex(2)}")
    host = None
    try:
        lab.start()
        lab.add_host("h1")
        host = DockerHost(lab, "h1").start()
        host.import_busybox()
        host.docker("network", "create", "-d", "netd", "--ipam-driver", "netd", "--subnet",
                    "10.90.0.0/16", "netd")
        host.docker("network", "create", "-d", "bridge", "--subnet", "10.91.0.0/16", "bridge1")
        rows = ["none", "bridge1", "netd"]
        times: dict[str, list[float]] = {row: [] for row in rows}
        host.docker("run", "--rm", "--network", "netd", IMAGE, "true")  # warm up
        for round_ in range(args.repeat):
            for row in rows[round_ % 3:] + rows[:round_ % 3]:
                start = time.monotonic()
                host.docker("run", "--rm", "--network", row, IMAGE, "true")
                times[row].append((time.monotonic() - start) * 1000)
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"docker run --rm ... true, {args.repeat} runs each (ms); load average {load}:")
        print(f"{'network':10} {'median':>8} {'min':>8} {'max':>8}")
        for row in rows:
            values = times[row]
            print(f"{row:10} {statistics.median(values):8.1f} {min(values):8.1f} "
                  f"{max(values):8.1f}")
        bridge, netd = statistics.median(times["bridge1"]), statistics.median(times["netd"])
        none = statistics.median(times["none"])
        print(f"netd / bridge: {netd / bridge:.2f}   netd / none: {netd / none:.2f}   "
              f"bridge / none: {bridge / none:.2f}")
        waits = []
        for _ in range(args.repeat):
            out = host.docker("run", "--rm", "--network", "netd", IMAGE, "sh", "-c",
                              WAIT_FOR_ETH0, check=False)
            if out.returncode == 0:
                waits.append(int(out.stdout.strip() or 0))
        if waits:
            print(f"eth0 ready after the container started: median {statistics.median(waits)}"
                  f" polls of >=1 ms (min {min(waits)}, max {max(waits)}, {len(waits)} runs)")
    finally:
        if host is not None:
            host.close()
        lab.close()


if __name__ == "__main__":
    main()
