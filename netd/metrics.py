"""Prometheus metrics (`netd --metrics ADDR`, off by default).

Two kinds, one registry per daemon process:

* events the code paths count as they happen — API requests, store calls and their
  errors, driver applies, watch re-lists — as module-level counters and histograms
  (cheap enough to keep even when nobody scrapes);
* values read at scrape time from the daemon's own view — each driver worker's state,
  the store watch, endpoints and IPAM use per network — by one collector, so nothing
  else has to keep gauges in step.

Names follow Prometheus conventions: `netd_` prefix, `_seconds` for durations, `_total`
on counters (added by prometheus-client).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ipam.scope import AddressRange
from netd.errors import InvalidInput
from netd.store.base import Store

REGISTRY = CollectorRegistry(auto_describe=True)

API_REQUESTS = Counter(
    "netd_api_requests", "API requests answered, by method, route and status code",
    ["method", "route", "code"], registry=REGISTRY,
)
API_SECONDS = Histogram(
    "netd_api_request_duration_seconds", "Time to answer an API request, by route",
    ["route"], registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15, 30),
)
STORE_SECONDS = Histogram(
    "netd_store_request_duration_seconds", "Store calls' latency, by operation",
    ["op"], registry=REGISTRY,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)
STORE_ERRORS = Counter(
    "netd_store_request_errors", "Store calls that raised, by operation and error",
    ["op", "error"], registry=REGISTRY,
)
APPLY_SECONDS = Histogram(
    "netd_reconcile_duration_seconds", "Time one driver apply took, by driver",
    ["driver"], registry=REGISTRY,
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
WATCH_RELISTS = Counter(
    "netd_store_watch_relists", "Full re-reads of the store (start, compaction, dead watch)",
    registry=REGISTRY,
)

STORE_OPS = ("get", "list", "put", "delete", "create", "compare_and_swap", "commit",
             "revision", "grant_lease", "keepalive", "revoke_lease")


class _InstrumentedStore:
    """A store whose calls are timed and whose failures are counted; everything else
    (watch, close, attributes) passes through untouched."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._store, name)
        if name not in STORE_OPS:
            return target
        timer = STORE_SECONDS.labels(name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return target(*args, **kwargs)
            except Exception as exc:
                STORE_ERRORS.labels(name, type(exc).__name__).inc()
                raise
            finally:
                timer.observe(time.perf_counter() - started)

        return timed


def instrument(store: Store) -> Store:
    return cast(Store, _InstrumentedStore(store))


class DaemonCollector(Collector):
    """Values read from the reconciler when scraped."""

    def __init__(self, reconciler: Any, host: Callable[[], str], health: Any = None) -> None:
        self._reconciler = reconciler
        self._host = host
        self._health = health

    def collect(self) -> Iterator[GaugeMetricFamily]:
        sync = self._reconciler.status()
        failed = GaugeMetricFamily("netd_worker_items_failed",
                                   "Items a driver worker failed to apply", labels=["driver"])
        pending = GaugeMetricFamily("netd_worker_pending",
                                    "1 while a newer desired state waits for the worker",
                                    labels=["driver"])
        applied = GaugeMetricFamily("netd_worker_applied_revision",
                                    "Store revision the worker last applied", labels=["driver"])
        for name, worker in sorted(sync.workers.items()):
            failed.add_metric([name], len(worker.errors))
            pending.add_metric([name], 1 if worker.pending else 0)
            applied.add_metric([name], worker.revision)
        yield from (failed, pending, applied)
        yield GaugeMetricFamily("netd_store_watch_up", "1 while this host follows the store",
                                value=1 if sync.store_ok else 0)
        yield GaugeMetricFamily("netd_store_seen_revision",
                                "Store revision this host's copy reflects",
                                value=sync.seen_revision)
        snapshot = self._reconciler.snapshot()
        me = self._host()
        local = GaugeMetricFamily("netd_endpoints", "Endpoints on this host, by network",
                                  labels=["network"])
        used = GaugeMetricFamily("netd_ipam_addresses_used",
                                 "Addresses held by endpoints, cluster-wide, by network",
                                 labels=["network"])
        size = GaugeMetricFamily("netd_ipam_addresses",
                                 "Addresses IPAM may hand out, by network", labels=["network"])
        counts: dict[str, list[int]] = {name: [0, 0] for name in snapshot.networks}
        for (network, _), endpoint in snapshot.endpoints.items():
            if network in counts:
                counts[network][0] += 1
                counts[network][1] += endpoint.host == me
        for name, network in sorted(snapshot.networks.items()):
            used.add_metric([name], counts[name][0])
            local.add_metric([name], counts[name][1])
            size.add_metric([name], AddressRange.of(network).size())
        yield from (local, used, size)
        if self._health is not None:
            yield from peer_metrics(self._health.peers())


def peer_metrics(peers: dict[str, dict[str, Any]]) -> Iterator[GaugeMetricFamily]:
    """Per peer and path (\"underlay\" or a network): RTT, loss, path MTU, health."""
    rtt = GaugeMetricFamily("netd_peer_rtt_seconds", "Mean probe round trip to a peer",
                            labels=["peer", "path"])
    loss = GaugeMetricFamily("netd_peer_loss_ratio", "Share of recent probes unanswered",
                             labels=["peer", "path"])
    mtu = GaugeMetricFamily("netd_peer_path_mtu_bytes", "Largest probe a path carried",
                            labels=["peer", "path"])
    wanted = GaugeMetricFamily("netd_peer_mtu_bytes", "Size the path must carry",
                               labels=["peer", "path"])
    up = GaugeMetricFamily("netd_peer_up", "1 while a peer answers probes", labels=["peer"])
    for peer, entry in sorted(peers.items()):
        up.add_metric([peer], 1 if entry.get("health") in ("healthy", "degraded") else 0)
        for path, p in sorted((entry.get("paths") or {}).items()):
            if p.get("rtt_ms") is not None:
                rtt.add_metric([peer, path], p["rtt_ms"] / 1000)
            if p.get("loss") is not None:
                loss.add_metric([peer, path], p["loss"])
            if p.get("path_mtu") is not None:
                mtu.add_metric([peer, path], p["path_mtu"])
            wanted.add_metric([peer, path], p["mtu"])
    yield from (rtt, loss, mtu, wanted, up)


def parse_address(value: str) -> tuple[str, int]:
    """`HOST:PORT`, `:PORT` (all addresses) or `[V6]:PORT`."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidInput(f"--metrics {value!r}: expected HOST:PORT, e.g. 127.0.0.1:9464")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def serve(address: str, reconciler: Any, host: Callable[[], str], health: Any = None) -> None:
    """Start the scrape endpoint (its own thread) at `address`."""
    bind, port = parse_address(address)
    REGISTRY.register(DaemonCollector(reconciler, host, health))
    try:
        start_http_server(port, addr=bind, registry=REGISTRY)
    except OSError as exc:
        raise InvalidInput(f"--metrics {address}: cannot listen: {exc.strerror}") from None
