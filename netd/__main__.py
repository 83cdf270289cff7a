"""`netd`: start the daemon in the foreground.

Order matters: open the store, register this host, set up drivers, start the
reconciler (first full sync adopts what exists), then publish the socket. SIGTERM and
SIGINT stop the threads and leave the datapath in place; the host lease is not revoked,
so peers keep their tunnels to this host across a restart.
"""

from __future__ import annotations

import fcntl
import json
import logging
import signal
import sys
import threading
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TextIO

from netd import config as config_mod
from netd import netlink
from netd.api import ApiServer, ensure_socket_free
from netd.errors import Conflict, NetdError
from netd.hosts import HostRegistration
from netd.model import Host
from netd.plugin import Driver
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


def load_drivers(state_dir: Any) -> dict[str, Driver]:
    drivers: dict[str, Driver] = {}
    for ep in entry_points(group="netd.plugins"):
        try:
            drivers[ep.name] = ep.load()(state_dir=state_dir)
        except Exception as exc:
            log.error("driver %s failed to load: %s", ep.name, exc)
    return drivers


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


def run(cfg: config_mod.Config) -> None:
    cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = lock_state_dir(cfg.state_dir)
    ensure_socket_free(cfg.socket)
    store = open_store(cfg.store or None, cfg.state_dir)
    keys = Keys()
    underlay_ip = cfg.underlay_ip or netlink.default_underlay_ip()
    underlay_mtu = netlink.underlay_mtu(underlay_ip)
    host = Host(name=cfg.host, underlay_ip=underlay_ip, underlay_mtu=underlay_mtu)
    drivers = load_drivers(cfg.state_dir)
    driver_data: dict[str, dict[str, Any]] = {}
    for name, driver in drivers.items():
        driver_data[name] = driver.setup(host)
    host = Host(
        name=host.name, underlay_ip=underlay_ip, underlay_mtu=underlay_mtu,
        driver_data=driver_data, version="0.1.0",
    )
    reconciler: Reconciler | None = None
    registration = HostRegistration(
        store, keys, host, cfg.host_ttl, cfg.state_dir,
        on_change=lambda: reconciler.kick() if reconciler else None,
    )
    registration.start()
    reconciler = Reconciler(
        store, keys, drivers, lambda: registration.host, resync_interval=cfg.resync_interval
    )
    reconciler.start()
    service = Service(store, keys, registration, reconciler)
    server = ApiServer(cfg.socket, service)
    server.start()
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
    server.stop()
    reconciler.stop()
    registration.stop()
    for driver in drivers.values():
        driver.close()
    store.close()
    lock.close()


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
