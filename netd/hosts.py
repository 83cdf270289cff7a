"""Host registry: this daemon's record in the store, kept alive by a TTL lease.

The record (name, underlay address, per-driver data) lives under a lease; if the daemon
dies for good, the lease expires, the key vanishes, and every other host drops this
host's endpoints from its datapath. A restart must not cause that: the lease id is kept
in the state dir and re-used while it is still alive, and SIGTERM does not revoke it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from netd.errors import Conflict, NetdError
from netd.model import Host
from netd.store.base import Store
from netd.store.keys import Keys

log = logging.getLogger(__name__)


class HostRegistration:
    def __init__(
        self,
        store: Store,
        keys: Keys,
        host: Host,
        ttl: int,
        state_dir: Path,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._keys = keys
        self._host = host
        self._ttl = max(1, ttl)
        self._lease_file = state_dir / "host-lease"
        self._lease = 0
        self._on_change = on_change
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="host-lease", daemon=True)

    @property
    def host(self) -> Host:
        return self._host  # immutable: readers never wait for the store

    def start(self) -> None:
        self._publish()
        self._thread.start()

    def stop(self) -> None:
        """Stop keeping the lease alive; the record stays until the TTL runs out."""
        self._stop.set()
        self._thread.join(5)

    def _saved_lease(self) -> int:
        try:
            return int(self._lease_file.read_text().strip())
        except (OSError, ValueError):
            return 0

    def _claim(self) -> None:
        """Take this host's name in the store, or refuse if another live daemon has it.

        The record exists only while its lease lives. If it carries the lease saved in
        our state dir, it is ours from before a restart: keep it (peers see nothing).
        Any other live lease belongs to another daemon using the same --host."""
        current = self._store.get(self._keys.host(self._host.name))
        saved = self._saved_lease()
        if current is not None and current.lease and current.lease == saved:
            if self._store.keepalive(saved):
                self._lease = saved
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
        self._lease = self._store.grant_lease(self._ttl)
        self._lease_file.write_text(str(self._lease))

    def _publish(self) -> None:
        # only start() (before the thread runs) and the thread itself get here
        if not self._lease:
            self._claim()
        self._store.put(self._keys.host(self._host.name), self._host.to_json(), self._lease)

    def _run(self) -> None:
        interval = max(0.2, self._ttl / 3)
        while not self._stop.wait(interval):
            try:
                lease = self._lease
                if not self._store.keepalive(lease):
                    log.warning("host lease %d expired; registering again", lease)
                    self._lease = 0
                    self._publish()
                    self._on_change()
                    continue
                current = self._store.get(self._keys.host(self.host.name))
                if current is not None and current.lease != lease:
                    log.error(
                        "host name %s is now registered by another daemon (lease %d); "
                        "not fighting over it", self.host.name, current.lease,
                    )
                elif current is None or current.value != self.host.to_json():
                    self._publish()
            except NetdError as exc:
                log.warning("host registration: %s", exc)
            except Exception:  # the lease must outlive any surprise: retry next interval
                log.exception("host registration failed unexpectedly; retrying")
