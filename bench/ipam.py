"""IPAM throughput through the attach path: allocations per second, 8 client processes.

Issue 6 build 10. One real etcd (tests.support.etcd.EtcdServer, on loopback; the bench
makes no namespace) and --clients processes, as daemons are: each runs a
`netd.service.Service` of its own host over its own EtcdStore and attaches --count /
--clients containers without --ip to one network, all at once. Only the kernel side is
faked (the reconciler applies at once, containers resolve to names, netns have no
links), so each allocation is the production attach: validation, the address plan from
the pool's view, the MAC claim, the endpoint record, one conditional commit through
netd.service.transaction, and re-planning when a commit loses. At the end every address
and MAC is checked unique, in the store and in the answers.

Then, on the same etcd, a baseline (skip it with --no-baseline): as many raw `KV.Txn`
of an attach's shape (six compares, four records) from as many processes, straight from
grpcio's stubs with no netd code - the ceiling of one transaction per allocation on this
machine at this moment, for comparing figures measured under other load. It also prints
the CPU per allocation of clients and etcd, the store reads besides commits per
allocation, and with --profile each client's cProfile.

Run from the repo root (no root needed):
    .venv/bin/python -m bench.ipam [--clients 8] [--count 2000] [--subnet 10.64.0.0/20] [--json]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import multiprocessing
import os
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.stats import summary_ms, table
from ipam.scope import AddressRange
from netd.store.base import CommitResult, Condition, DeletePrefix, KeyValue, Operation

NETWORK = "ipambench"


class _Registration:
    def __init__(self, name: str) -> None:
        from netd.model import Host

        self.host = Host(name=name, underlay_ip="192.0.2.1", underlay_mtu=1500)


class _AppliedAtOnce:
    """The reconciler's part of an attach, as if the datapath applied it instantly."""

    def wait_applied(self, revision: int, item: str | None, timeout: float) -> bool:
        return True

    def item_error(self, item: str) -> str | None:
        return None

    def store_down(self) -> tuple[float, str] | None:
        return None


def _container(ref: str) -> Any:
    from netd.container import ContainerRef

    return ContainerRef(ref=ref, name=ref, netns=f"/run/netns/{ref}")


def _no_links(netns: str) -> set[str]:
    return set()


def make_service(endpoint: str, prefix: str, host: str) -> Any:
    """A Service of `host` over a real EtcdStore, kernel side faked."""
    from netd.service import Service
    from netd.store.etcd import EtcdStore
    from netd.store.keys import Keys
    from plugins.weave.driver import WeaveDriver

    class CountingStore(EtcdStore):
        commits = 0
        lost = 0
        reads = 0  # get and list calls: round trips besides the commits
        listed = 0  # records those reads returned

        def commit(self, conditions: Sequence[Condition],
                   operations: Sequence[Operation]) -> CommitResult:
            result = super().commit(conditions, operations)
            CountingStore.commits += 1
            CountingStore.lost += 0 if result.succeeded else 1
            return result

        def get(self, key: str) -> KeyValue | None:
            CountingStore.reads += 1
            found = super().get(key)
            CountingStore.listed += found is not None
            return found

        def list(self, prefix: str) -> tuple[list[KeyValue], int]:
            CountingStore.reads += 1
            found = super().list(prefix)
            CountingStore.listed += len(found[0])
            return found

    store = CountingStore([endpoint])
    return Service(store, Keys(prefix), _Registration(host),  # type: ignore[arg-type]
                   _AppliedAtOnce(), {"weave": WeaveDriver.spec},  # type: ignore[arg-type]
                   containers=_container, links=_no_links)


def _client(endpoint: str, prefix: str, worker: int, count: int, start: Any, out: Any,
            profile: str | None = None) -> None:
    service = make_service(endpoint, prefix, f"h{worker}")
    counts = type(service.store)
    answers: list[tuple[str, str, str]] = []
    latencies: list[float] = []
    error = ""
    profiler = None
    try:
        service.get_network(NETWORK)  # the daemon knows its networks before the burst
        start.wait(60)
        cpu = time.process_time()
        reads_before = counts.reads
        if profile:
            import cProfile

            profiler = cProfile.Profile(time.process_time)
            profiler.enable()
        for i in range(count):
            began = time.perf_counter()
            ep = service.attach({"container": f"w{worker}-{i}", "network": NETWORK})
            latencies.append(time.perf_counter() - began)
            answers.append((ep.name, ep.ip, ep.mac))
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    cpu = time.process_time() - cpu
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(f"{profile}.{worker}")
    store = service.store
    out.put((worker, answers, latencies, error, counts.commits, counts.lost, cpu,
             counts.reads - reads_before, counts.listed))
    store.close()


def _cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of process `pid` so far (0 when unknown)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _run_clients(
    target: Callable[..., None], args_of: Callable[[int, int, Any, Any], tuple[Any, ...]],
    clients: int, count: int, etcd_pid: int | None,
) -> tuple[list[Any], float, float]:
    """`count` requests shared by `clients` processes released at once by a barrier: each
    process's answer (from its queue), the wall time, and etcd's CPU seconds meanwhile."""
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(clients + 1)
    out = ctx.Queue()
    share = [count // clients + (1 if n < count % clients else 0) for n in range(clients)]
    procs = [ctx.Process(target=target, args=args_of(n, share[n], start, out), daemon=True)
             for n in range(clients)]
    for proc in procs:
        proc.start()
    try:
        start.wait(120)
        began, etcd_cpu = time.monotonic(), _cpu_seconds(etcd_pid)
        answers = [out.get(timeout=600) for _ in procs]
        return answers, time.monotonic() - began, _cpu_seconds(etcd_pid) - etcd_cpu
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()


def run(endpoint: str, clients: int, count: int, subnet: str,
        etcd_pid: int | None = None, profile: str | None = None) -> dict[str, Any]:
    from netd.store.etcd import EtcdStore
    from netd.store.keys import Keys

    prefix = f"/netd-ipambench-{uuid.uuid4().hex[:8]}"
    setup = make_service(endpoint, prefix, "h-setup")
    setup.create_network({"name": NETWORK, "subnet": subnet})
    results, elapsed, etcd_cpu = _run_clients(
        _client, lambda n, share, start, out: (endpoint, prefix, n, share, start, out, profile),
        clients, count, etcd_pid)
    answers = [a for r in results for a in r[1]]
    latencies = [x for r in results for x in r[2]]
    errors = [f"client {r[0]}: {r[3]}" for r in results if r[3]]
    store = EtcdStore([endpoint])
    try:
        keys = Keys(prefix)
        addr, _ = store.list(keys.ipam_addresses(NETWORK))
        macs, _ = store.list(keys.ipam_macs(NETWORK))
        endpoints, _ = store.list(keys.endpoints(NETWORK))
        store.commit([], [DeletePrefix(keys.root())])
    finally:
        store.close()
        setup.store.close()
    ips = [a[1] for a in answers]
    scope = AddressRange("bench", subnet, str(next(ipaddress.IPv4Network(subnet).hosts())))
    return {
        "clients": clients,
        "allocations": len(answers),
        "subnet": subnet,
        "seconds": round(elapsed, 2),
        "per_second": round(len(answers) / elapsed) if elapsed else None,
        "latency": summary_ms(latencies),
        # CPU per allocation: robust to other load, unlike allocations per second
        "client_cpu_ms_per_alloc": round(sum(r[6] for r in results) * 1000 / max(1, len(ips)), 2),
        "etcd_cpu_ms_per_alloc": round(etcd_cpu * 1000 / max(1, len(ips)), 2)
        if etcd_pid else None,
        "commits": sum(r[4] for r in results),
        "commits_lost": sum(r[5] for r in results),
        # store round trips besides the commits (gets and lists), and records they returned
        "reads_per_alloc": round(sum(r[7] for r in results) / max(1, len(ips)), 2),
        "records_read_per_alloc": round(sum(r[8] for r in results) / max(1, len(ips)), 1),
        "duplicate_addresses": len(ips) - len(set(ips)),
        "duplicate_macs": len(answers) - len({a[2] for a in answers}),
        "unusable_addresses": sum(1 for ip in ips if not scope.usable(ip)),
        "store_agrees": len(addr) == len(macs) == len(endpoints) == len(answers),
        "errors": errors,
    }


def _raw_client(endpoint: str, prefix: str, worker: int, count: int, start: Any,
                out: Any) -> None:
    """The ceiling: one etcd transaction of an attach's shape per allocation (the network
    record's revision, the removal marker, endpoint, address, name record and MAC claim
    compared; four records written), straight from grpcio's stubs, no netd code."""
    import grpc
    from aetcd.rpc import rpc_pb2, rpc_pb2_grpc

    channel = grpc.insecure_channel(endpoint)
    kv = rpc_pb2_grpc.KVStub(channel)
    network = f"{prefix}/raw/network".encode()
    network_revision = kv.Range(rpc_pb2.RangeRequest(key=network)).kvs[0].mod_revision
    endpoint_value = b"x" * 330  # about the size of an endpoint record
    start.wait(60)
    cpu = time.process_time()
    for i in range(count):
        base = f"{prefix}/raw/{worker}/{i}"
        keys = [f"{base}/{part}".encode() for part in ("endpoint", "address", "name", "mac")]
        compare = [rpc_pb2.Compare(key=network, target=rpc_pb2.Compare.MOD,
                                   result=rpc_pb2.Compare.EQUAL, mod_revision=network_revision)]
        compare += [rpc_pb2.Compare(key=key, target=rpc_pb2.Compare.VERSION,
                                    result=rpc_pb2.Compare.EQUAL, version=0)
                    for key in (f"{prefix}/raw/removing".encode(), *keys)]
        values = [endpoint_value, b'{"owner": "w0-100"}', b'{"ip": "10.64.0.10"}',
                  b'{"owner": "w0-100"}']
        success = [rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=k, value=v))
                   for k, v in zip(keys, values, strict=True)]
        kv.Txn(rpc_pb2.TxnRequest(compare=compare, success=success), timeout=5)
    out.put(time.process_time() - cpu)
    channel.close()


def run_baseline(endpoint: str, clients: int, count: int,
                 etcd_pid: int | None = None) -> dict[str, Any]:
    """The same number of transactions from the same number of processes, raw."""
    from netd.store.etcd import EtcdStore

    prefix = f"/netd-ipambench-raw-{uuid.uuid4().hex[:8]}"
    store = EtcdStore([endpoint])
    store.put(f"{prefix}/raw/network", "{}")
    try:
        cpus, elapsed, etcd_cpu = _run_clients(
            _raw_client, lambda n, share, start, out: (endpoint, prefix, n, share, start, out),
            clients, count, etcd_pid)
    finally:
        store.commit([], [DeletePrefix(prefix + "/")])
        store.close()
    return {
        "transactions": count,
        "per_second": round(count / elapsed) if elapsed else None,
        "client_cpu_ms_per_txn": round(sum(cpus) * 1000 / count, 2),
        "etcd_cpu_ms_per_txn": round(etcd_cpu * 1000 / count, 2) if etcd_pid else None,
    }


def render(result: dict[str, Any]) -> str:
    rows = [(result["clients"], result["allocations"], result["seconds"],
             result["per_second"], result["latency"]["median_ms"], result["latency"]["p99_ms"],
             f"{result['commits_lost']}/{result['commits']}",
             result["duplicate_addresses"], result["duplicate_macs"])]
    lines = [
        f"automatic attaches through Service.attach on real etcd, network {result['subnet']}",
        table(rows, ["clients", "allocations", "s", "alloc/s", "median ms", "p99 ms",
                     "commits lost", "dup ips", "dup macs"]),
        f"CPU per allocation: clients {result['client_cpu_ms_per_alloc']} ms, "
        f"etcd {result['etcd_cpu_ms_per_alloc']} ms",
        f"store reads per allocation besides commits: {result['reads_per_alloc']} "
        f"({result['records_read_per_alloc']} records)",
        f"store agrees with the answers: {result['store_agrees']}",
    ]
    raw = result.get("raw_txn_baseline")
    if raw:
        lines.append(
            f"baseline, same etcd, right after: {raw['transactions']} raw KV.Txn of an "
            f"attach's shape from {result['clients']} processes (no netd code): "
            f"{raw['per_second']}/s, CPU per txn: clients {raw['client_cpu_ms_per_txn']} ms, "
            f"etcd {raw['etcd_cpu_ms_per_txn']} ms")
    lines += [f"error: {e}" for e in result["errors"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8, help="client processes")
    parser.add_argument("--count", type=int, default=2000, help="allocations in all")
    parser.add_argument("--subnet", default="10.64.0.0/20", help="the network's subnet")
    parser.add_argument("--etcd", help="HOST:PORT of an etcd to use (default: start one)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--profile", metavar="PATH",
                        help="write each client's cProfile stats to PATH.N")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the raw-transaction baseline run after the attaches")
    args = parser.parse_args()
    if args.etcd:
        result = run(args.etcd, args.clients, args.count, args.subnet, profile=args.profile)
        if not args.no_baseline:
            result["raw_txn_baseline"] = run_baseline(args.etcd, args.clients, args.count)
    else:
        from tests.support.etcd import EtcdServer

        with EtcdServer() as etcd:
            pid = etcd.proc.pid if etcd.proc else None
            result = run(etcd.endpoint, args.clients, args.count, args.subnet, pid, args.profile)
            if not args.no_baseline:
                result["raw_txn_baseline"] = run_baseline(
                    etcd.endpoint, args.clients, args.count, pid)
    print(json.dumps(result, indent=2) if args.json else render(result))


if __name__ == "__main__":
    main()
