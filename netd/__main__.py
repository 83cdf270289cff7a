"""`netd`: start the daemon in the foreground.

Order matters: open the store, build each driver with its context (this host, store,
keys, the shared netlink facade, its state dir, the lease keeper, resync and publish
hooks) and set it up, register this host with the drivers' data, start the reconciler
(one worker per driver; the first full sync adopts what exists), then publish the
socket. SIGTERM and SIGINT stop the threads and leave the datapath in place; the host
lease is not revoked, so peers keep their tunnels to this host across a restart.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from netd import config as config_mod
from netd import metrics, netlink
from netd.api import ApiServer, ensure_socket_free
from netd.errors import Conflict, InvalidInput, NetdError
from netd.events import EventBus, EventWatcher
from netd.gateway.apply import GatewayApplier
from netd.gateway.worker import GatewayWorker
from netd.health import HealthProber
from netd.hosts import HostRegistration
from netd.leases import LeaseKeeper
from netd.liveness import UnderlayProber
from netd.model import Host, Network
from netd.plugin import DriverContext, DriverSpec, load_drivers, network_hooks, specs_of
from netd.policy.nft import NftApplier
from netd.policy.worker import PolicyWorker
from netd.reconcile import Reconciler
from netd.service import Service
from netd.store import open_store
from netd.store.keys import Keys

log = logging.getLogger("netd")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def lock_state_dir(state_dir: Path) -> TextIO:
    """One daemon per state dir: the lock lives as long as the returned file is open."""
    lock = open(state_dir / "netd.lock", "w")  # noqa: SIM115
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise Conflict(
            f"another netd is already running with state dir {state_dir}"
        ) from None
    return lock


def lock_netns() -> socket.socket:
    """One daemon per network namespace: two would sweep each other's links. An
    abstract unix socket name is per netns and vanishes with the process."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind("\0netd-netns-lock")
    except OSError:
        sock.close()
        raise Conflict(
            "another netd is already running in this network namespace "
            "(one netd per host)"
        ) from None
    return sock


# drivers that enforce security groups in their own flow tables (they read
# HostState.policy); every other driver's ports are enforced with nftables
FLOW_POLICY_DRIVERS = frozenset({"openflow"})


def policy_worker(drivers: Mapping[str, object]) -> PolicyWorker | None:
    """The nftables policy of the kernel drivers' ports, failing closed from the start
    (netd's tables are put in place before any driver applies; existing ones adopted)."""
    kernel = sorted(set(drivers) - FLOW_POLICY_DRIVERS)
    if not kernel:
        return None
    applier = NftApplier(kernel)
    try:
        applier.setup()
    except NetdError as exc:
        log.error("security groups: %s", exc)
    return PolicyWorker(applier)


def overhead_of(specs: Mapping[str, DriverSpec], network: Network) -> int:
    """Bytes a network's encapsulation adds (its backend's declared overhead)."""
    spec = specs.get(network.driver)
    backend = spec.backend(network.backend) if spec else None
    if backend is None:
        return 0
    extra = backend.encryption_overhead if network.encrypt else 0
    return backend.overhead + extra


def run(cfg: config_mod.Config) -> None:
    for directory, what, mode in (
        (cfg.state_dir, "state dir", 0o700),
        (cfg.socket.parent, "API socket", 0o755),  # the socket itself is 0660
    ):
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=mode)
        except OSError as exc:
            raise InvalidInput(f"cannot create {what} {directory}: {exc.strerror}") from None
    ensure_socket_free(cfg.socket)
    lock = lock_state_dir(cfg.state_dir)
    netns_lock = lock_netns()
    store = metrics.instrument(open_store(cfg.store or None, cfg.state_dir, cfg.store_security()))
    keys = Keys()
    underlay_ip = cfg.underlay_ip or netlink.default_underlay_ip()
    underlay_mtu = netlink.underlay_mtu(underlay_ip)
    if underlay_mtu is None:
        raise InvalidInput(
            f"underlay IP {underlay_ip} is not an address of this host; peers could not "
            "reach it (give --underlay-ip one of this host's addresses)"
        )
    host = Host(name=cfg.host, underlay_ip=underlay_ip, underlay_mtu=underlay_mtu,
                version="0.1.0")
    leases = LeaseKeeper(store, cfg.state_dir)
    reconciler: Reconciler | None = None
    registration = HostRegistration(
        store, keys, host, cfg.host_ttl, cfg.state_dir,
        on_change=lambda: reconciler.kick() if reconciler else None, leases=leases,
    )
    shared_netlink = netlink.Netlink()

    def context(name: str) -> DriverContext:
        state_dir = cfg.state_dir / "drivers" / name
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return DriverContext(
            name=name,
            host=lambda: registration.host,
            store=store,
            keys=keys,
            netlink=shared_netlink,
            state_dir=state_dir,
            leases=leases,
            request_resync=lambda: reconciler.request_resync(name) if reconciler else None,
            publish=lambda data: registration.publish(name, data),
        )

    drivers = load_drivers(context)
    for name, driver in drivers.items():
        registration.publish(name, driver.setup())
    registration.start()
    leases.start()
    policy = policy_worker(drivers)
    prober = UnderlayProber()
    prober.start()
    gateway = GatewayWorker(GatewayApplier(shared_netlink, cfg.state_dir),
                            scope=f"{cfg.state_dir.resolve()}/{cfg.host}")
    reconciler = Reconciler(
        store, keys, drivers, lambda: registration.host, resync_interval=cfg.resync_interval,
        # a live host re-registers within one keepalive interval (ttl/3) of the store
        # coming back; only a host silent beyond that is torn down
        host_grace=max(cfg.host_ttl / 3, 1.0) + 1.0,
        policy=policy, flow_policy_drivers=FLOW_POLICY_DRIVERS & drivers.keys(),
        # a host whose lease lapsed but that still answers on the underlay was only cut
        # off from the store: keep forwarding to it (netd.liveness)
        still_there=lambda departed: prober.answering(departed.underlay_ip),
        gateway=gateway,
    )
    reconciler.start()
    specs = specs_of(drivers)
    health = HealthProber(lambda: registration.host, reconciler.snapshot, cfg.host_ttl,
                          overhead=lambda net: overhead_of(specs, net))
    bus = EventBus()
    watcher = EventWatcher(bus, reconciler, lambda: registration.host.name)
    health.on_change = watcher.peer_changed
    health.start()
    watcher.start()
    service = Service(store, keys, registration, reconciler, specs_of(drivers),
                      links=lambda netns: netlink.link_names(netns, shared_netlink),
                      hooks=network_hooks(drivers), health=health, events=bus)
    if cfg.metrics:
        metrics.serve(cfg.metrics, reconciler, lambda: registration.host.name, health=health)
    try:
        server = ApiServer(cfg.socket, service, config_mod.socket_gid(cfg))
    except OSError as exc:
        raise InvalidInput(f"cannot create API socket {cfg.socket}: {exc.strerror}") from None
    server.start()
    docker_plugin = None
    if cfg.docker_plugin:
        from netd.runtimes.local import serve_docker_plugin

        docker_plugin = serve_docker_plugin(
            service, Path(cfg.docker_plugin),
            cfg.docker_host or os.environ.get("DOCKER_HOST") or config_mod.DEFAULT_DOCKER_HOST)
    log.info(
        "netd ready: host %s underlay %s (mtu %d), drivers %s, socket %s",
        host.name, underlay_ip, underlay_mtu, ",".join(drivers) or "none", cfg.socket,
    )

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    log.info("stopping; the datapath stays in place")
    if docker_plugin is not None:
        docker_plugin.close()
    server.stop()
    health.stop()
    watcher.stop()
    idle = reconciler.stop()
    prober.stop()
    leases.stop()
    if idle:
        for driver in drivers.values():
            driver.close()
        shared_netlink.close()
    else:  # never pull a driver's sockets from under an apply still running
        log.warning("an apply is still running; exiting without closing the drivers")
    store.close()
    lock.close()
    netns_lock.close()


def main(argv: list[str] | None = None) -> None:
    try:
        cfg = config_mod.load(argv)
    except NetdError as exc:
        print(f"netd: {exc}", file=sys.stderr)
        sys.exit(2)
    setup_logging(cfg.log_level, cfg.log_format)
    try:
        run(cfg)
    except NetdError as exc:
        log.error("%s", exc)
        print(f"netd: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
