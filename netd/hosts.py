"""Host registry: this daemon's record in the store, kept alive by a TTL lease.

The record (name, underlay address, per-driver data) lives under a lease the lease
keeper (netd.leases) keeps alive; if the daemon dies for good, the lease expires, the
key vanishes, and every other host drops this host's endpoints from its datapath. A
restart must not cause that: the lease id is kept in the state dir and re-used while it
is still alive, and SIGTERM does not revoke it. A driver's data may change after start
(`publish`); the record follows.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from netd.errors import Conflict, NetdError
from netd.leases import KeptLease, LeaseKeeper
from netd.model import Host
from netd.store.base import Store
from netd.store.keys import Keys

log = logging.getLogger(__name__)

LEASE_NAME = "host"  # its id is saved as <state dir>/host-lease


class HostRegistration:
    def __init__(
        self,
        store: Store,
        keys: Keys,
        host: Host,
        ttl: int,
        state_dir: Path,
        on_change: Callable[[], None] = lambda: None,
        *,
        leases: LeaseKeeper | None = None,
    ) -> None:
        """`leases`: the daemon's keeper (shared with drivers); without one, this
        registration runs its own (started and stopped with it)."""
        self._store = store
        self._keys = keys
        self._host = host
        self._ttl = max(1, ttl)
        self._on_change = on_change
        self._own_keeper = leases is None
        self._keeper = leases or LeaseKeeper(store, state_dir)
        self._lease: KeptLease = self._keeper.lease(LEASE_NAME, self._ttl,
                                                    on_renewed=on_change)
        self._lock = threading.Lock()
        self._started = False

    @property
    def host(self) -> Host:
        return self._host  # immutable: readers never wait for the store

    @property
    def lease(self) -> KeptLease:
        return self._lease

    def start(self) -> None:
        """Claim this host's name and write its record (refused if another live daemon
        holds the name); from then on the keeper keeps it alive."""
        self._claim()
        with self._lock:
            self._lease.put(self._keys.host(self._host.name), self._host.to_json())
            self._started = True
        if self._own_keeper:
            self._keeper.start()

    def stop(self) -> None:
        """Stop keeping the lease alive; the record stays until the TTL runs out."""
        if self._own_keeper:
            self._keeper.stop()

    def publish(self, driver: str, data: dict[str, Any]) -> None:
        """Replace one driver's data in this host's record (peers see it)."""
        with self._lock:
            if self._host.driver_data.get(driver) == data:
                return
            self._host = replace(self._host, driver_data={**self._host.driver_data,
                                                          driver: dict(data)})
            if self._started:
                try:
                    self._lease.put(self._keys.host(self._host.name), self._host.to_json())
                except NetdError as exc:  # the lease keeper writes it when the store is back
                    log.warning("host record not updated yet: %s", exc)
        self._on_change()

    def _claim(self) -> None:
        """Take this host's name in the store, or refuse if another live daemon has it.

        The record exists only while its lease lives. If it carries the lease saved in
        our state dir, it is ours from before a restart: keep it (peers see nothing).
        Any other live lease belongs to another daemon using the same --host."""
        current = self._store.get(self._keys.host(self._host.name))
        saved = self._lease.saved_id()
        if current is not None and current.lease and current.lease == saved:
            if self._lease.adopt(saved):
                return
        elif current is not None and current.lease:
            try:
                other = Host.from_json(current.value).underlay_ip
            except (NetdError, ValueError):
                other = "unknown"
            raise Conflict(
                f"host name {self._host.name!r} is already registered by another live netd "
                f"(underlay {other}); give this daemon another --host, or wait "
                f"up to {self._ttl} s if that daemon is gone"
            )
        self._lease.ensure()
