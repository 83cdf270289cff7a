"""Cost of the weave driver's verify pass (first sync and periodic resync) per host size.

A `verify=True` apply checks every local endpoint against the kernel; it runs every
`--resync-interval` (30 s by default), so at a thousand endpoints it must take a small
fraction of that. This drives a fastdp WeaveDriver in this process (like the functional
tests) over N container namespaces on one host and prints ms per verify pass for each
size in --sizes (the host grows from one size to the next with verify=False applies).

Everything is named with a random `tv…` prefix (namespaces, network, VNI) and removed
on exit, even after a failure. Run as root from the repo root on a quiet machine:
    .venv/bin/python -m bench.verify [--sizes 200,1000] [--passes 3] [--budget 200] [--json]

--budget 0 checks every container namespace on every pass (WeaveDriver(verify_budget=None)).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import secrets
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from bench.stats import summary_ms, table
from netd.model import Endpoint, Host, Network, mac_from_ip
from netd.netlink import Netlink
from netd.plugin import HostState, NetworkState
from plugins.weave.driver import VERIFY_BUDGET
from plugins.weave.names import bridge_name, host_veth_name, vxlan_name
from tests.support.drivers import weave_driver

HOST = Host(name="tvhost", underlay_ip="127.0.0.1")
SUBNET = ipaddress.ip_network("10.97.0.0/20")  # container addresses: inside their netns only


def _ip_batch(lines: list[str]) -> None:
    """Run many `ip` commands in one process (`ip -batch`), failures ignored (-force)."""
    with tempfile.NamedTemporaryFile("w", suffix=".ip") as batch:
        batch.write("\n".join(lines) + "\n")
        batch.flush()
        subprocess.run(["ip", "-force", "-batch", batch.name], capture_output=True, check=False)


class Bench:
    def __init__(self, prefix: str, budget: int | None) -> None:
        self.prefix = prefix
        self.vni = 16_700_000 + secrets.randbelow(70_000)
        self.net = Network(
            name=f"{prefix}net",
            subnet=str(SUBNET),
            gateway=str(SUBNET.network_address + 1),
            vni=self.vni,
            mtu=1400,
            backend="fastdp",
        )
        self.namespaces: list[str] = []
        self.endpoints: list[Endpoint] = []
        self.driver = weave_driver(host=HOST, verify_budget=budget)

    def grow(self, count: int) -> None:
        first = len(self.namespaces)
        names = [f"{self.prefix}c{i}" for i in range(first, count)]
        self.namespaces += names  # before creating: cleanup removes partial batches too
        _ip_batch([f"netns add {name}" for name in names])
        for i, name in enumerate(names, start=first):
            ip = str(SUBNET.network_address + 10 + i)
            self.endpoints.append(
                Endpoint(
                    network=self.net.name,
                    name=f"e{i}",
                    container=name,
                    netns=f"/run/netns/{name}",
                    host=HOST.name,
                    ifname="eth0",
                    ip=ip,
                    mac=mac_from_ip(ip),
                )
            )

    def desired(self) -> HostState:
        ns = NetworkState(network=self.net, local=tuple(self.endpoints), remote=(), peers=())
        return HostState(host=HOST, networks={self.net.name: ns}, hosts={HOST.name: HOST})

    def apply(self, verify: bool) -> tuple[float, int]:
        start = time.perf_counter()
        report = self.driver.apply(self.desired(), sweep=False, verify=verify)
        elapsed = time.perf_counter() - start
        if report.errors:
            first = next(iter(report.errors.items()))
            raise RuntimeError(f"{len(report.errors)} items failed, e.g. {first}")
        return elapsed, report.changed

    def cleanup(self) -> None:
        with suppress(Exception):
            self.driver.close()
        nl = Netlink()
        try:
            for ep in self.endpoints:
                with suppress(Exception):
                    nl.delete_link(host_veth_name(ep.network, ep.name))
            for name in (vxlan_name(self.vni), bridge_name(self.vni)):
                with suppress(Exception):
                    nl.delete_link(name)
        finally:
            nl.close()
        _ip_batch([f"netns del {name}" for name in self.namespaces])


@contextmanager
def bench(prefix: str, budget: int | None = VERIFY_BUDGET) -> Iterator[Bench]:
    b = Bench(prefix, budget)
    try:
        yield b
    finally:
        b.cleanup()


def run(sizes: list[int], passes: int, budget: int | None) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    with bench("tv" + secrets.token_hex(2), budget) as b:
        for size in sizes:
            b.grow(size)
            grow_s, _ = b.apply(verify=False)  # build the new endpoints
            times, changed = [], 0
            for _ in range(passes):
                elapsed, delta = b.apply(verify=True)
                times.append(elapsed)
                changed += delta
            summary = summary_ms(times)
            rows.append({
                "endpoints": size,
                "build_s": round(grow_s, 1),
                "verify": summary,
                "per_endpoint_ms": round(summary["median_ms"] / size, 2),
                "changed": changed,
            })
    return {"passes": passes, "budget": budget, "rows": rows}


def render(result: dict[str, Any]) -> str:
    data = [
        (r["endpoints"], r["build_s"], r["verify"]["median_ms"], r["verify"]["max_ms"],
         r["per_endpoint_ms"], r["changed"])
        for r in result["rows"]
    ]
    headers = ["endpoints", "build s", "verify median ms", "verify max ms", "ms/endpoint",
               "changed"]
    return (
        f"weave fastdp verify pass (verify=True apply, nothing to repair), one host, "
        f"{result['passes']} passes per size, verify budget {result['budget'] or 'none'}\n"
        + table(data, headers)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="200,1000", help="endpoint counts, ascending")
    parser.add_argument("--passes", type=int, default=3, help="verify passes per size")
    parser.add_argument("--budget", type=int, default=VERIFY_BUDGET,
                        help="container netns checked per pass (0: all, every pass)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    result = run(sizes, args.passes, args.budget or None)
    print(json.dumps(result, indent=2) if args.json else render(result))


if __name__ == "__main__":
    main()
