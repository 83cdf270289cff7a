"""Building drivers the way the daemon does, for tests that drive one directly.

`driver_context` gives what netd.__main__ gives a driver (DriverContext); defaults are
harmless stand-ins: an in-memory store, a shared scratch state dir, a lease keeper
that is never started. `weave_driver` builds the weave driver on such a context.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from netd.leases import LeaseKeeper
from netd.model import Host
from netd.netlink import Netlink
from netd.plugin import BackendSpec, DriverContext, DriverSpec
from netd.store.base import Store
from netd.store.keys import Keys
from plugins.weave.driver import WeaveDriver
from tests.support.memstore import MemStore

LOCAL_HOST = Host(name="local", underlay_ip="127.0.0.1")
WEAVE_SPECS: dict[str, DriverSpec] = {"weave": WeaveDriver.spec}


def driver_context(
    name: str = "weave",
    *,
    host: Host = LOCAL_HOST,
    store: Store | None = None,
    netlink: Netlink | None = None,
    state_dir: Path | None = None,
) -> DriverContext:
    store = store if store is not None else MemStore()
    published: dict[str, Any] = {}
    return DriverContext(
        name=name,
        host=lambda: host,
        store=store,
        keys=Keys(),
        netlink=netlink if netlink is not None else Netlink(),
        state_dir=state_dir or _shared_state_dir(name),
        leases=LeaseKeeper(store),
        request_resync=lambda: None,
        publish=published.update,
    )


def _shared_state_dir(name: str) -> Path:
    """One directory per driver name for every test that gives none (drivers in tests
    keep nothing there): created once, not one more per test."""
    path = Path(tempfile.gettempdir()) / f"netd-test-driver-{name}"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


class _SoleWeaveDriver(WeaveDriver):
    """A weave driver that is the only user of its netlink facade, so closing the
    driver closes the facade too (the daemon closes its shared one after all drivers)."""

    def close(self) -> None:
        super().close()
        self._nl.close()


def weave_driver(*, host: Host = LOCAL_HOST, **kwargs: Any) -> WeaveDriver:
    """A WeaveDriver on a context of its own (its own netlink facade, closed with the
    driver); keyword arguments go to the constructor (sleeve_port, ...)."""
    return _SoleWeaveDriver(driver_context(host=host), **kwargs)


def weave_backend(name: str) -> BackendSpec:
    backend = WeaveDriver.spec.backend(name)
    assert backend is not None, f"weave declares no backend {name}"
    return backend
