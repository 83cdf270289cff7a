"""The lease keeper: store records that live only while their TTL lease is kept alive.

The host registry was the first such record (peers drop a host whose lease lapsed);
flannel's 24 h subnet leases are the next. Both need the same care: one lease per
purpose, its id saved in the state dir so a restarted daemon adopts its own live lease
instead of taking a new one (peers see nothing), keepalives at a third of the TTL, the
records written again under a new lease when the old one lapsed (the store was away
longer than the TTL), and a record another owner took is not fought over.

One thread serves every lease; a callback tells the owner when its records had to be
written again, so it can resync.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from netd.errors import NetdError
from netd.store.base import Store

log = logging.getLogger(__name__)

MIN_INTERVAL = 0.2  # seconds between keepalives of a lease, at least


class KeptLease:
    """One lease and the records kept under it. Made by LeaseKeeper.lease()."""

    def __init__(
        self,
        keeper: LeaseKeeper,
        name: str,
        ttl: int,
        lease_file: Path | None,
        on_renewed: Callable[[], None],
    ) -> None:
        self.name = name
        self.ttl = max(1, ttl)
        self._keeper = keeper
        self._store = keeper.store
        self._file = lease_file
        self._on_renewed = on_renewed
        self._lock = threading.RLock()
        self._id = 0
        self._records: dict[str, str] = {}
        self._due = 0.0  # monotonic time of the next keepalive

    @property
    def id(self) -> int:
        """The lease id in use (0: none granted yet)."""
        return self._id

    @property
    def interval(self) -> float:
        return max(MIN_INTERVAL, self.ttl / 3)

    def saved_id(self) -> int:
        """The lease id a previous run of this daemon saved, 0 if none."""
        if self._file is None:
            return 0
        try:
            return int(self._file.read_text().strip())
        except (OSError, ValueError):
            return 0

    def adopt(self, lease: int) -> bool:
        """Keep an existing lease (one this daemon held before a restart) if it is still
        alive; False if it has expired."""
        with self._lock:
            if not lease or not self._store.keepalive(lease):
                return False
            self._id = lease
            self._due = time.monotonic() + self.interval
            return True

    def ensure(self) -> int:
        """The lease id, granting (and saving) a new lease if none is held."""
        with self._lock:
            if not self._id:
                self._id = self._store.grant_lease(self.ttl)
                self._due = time.monotonic() + self.interval
                if self._file is not None:
                    self._file.write_text(str(self._id))
            return self._id

    def put(self, key: str, value: str) -> None:
        """Write `key` under the lease now and keep it there (written again whenever it is
        found missing or changed, or the lease had to be renewed). If the store fails,
        the error is raised and the keeper writes it on its next round."""
        with self._lock:
            self._records[key] = value
            self._store.put(key, value, self.ensure())

    def discard(self, key: str) -> None:
        """Stop keeping `key` and delete it."""
        with self._lock:
            if self._records.pop(key, None) is not None:
                self._store.delete(key)

    def records(self) -> dict[str, str]:
        with self._lock:
            return dict(self._records)

    def release(self) -> None:
        """Revoke the lease: its records vanish now instead of at the TTL."""
        with self._lock:
            lease, self._id = self._id, 0
            self._records.clear()
        self._keeper._forget(self)
        if lease:
            self._store.revoke_lease(lease)
        if self._file is not None:
            self._file.unlink(missing_ok=True)

    def due(self) -> float:
        return self._due

    def keep(self) -> None:
        """One keepalive round: refresh the lease, re-grant and rewrite if it lapsed,
        rewrite records found missing or changed (never one another lease holds)."""
        with self._lock:
            self._due = time.monotonic() + self.interval
            if not self._id:
                if not self._records:
                    return
                renewed = True
            elif not self._store.keepalive(self._id):
                log.warning("lease %s (%d) expired; writing its records again",
                            self.name, self._id)
                self._id = 0
                renewed = True
            else:
                renewed = False
            lease = self.ensure()
            for key, value in self._records.items():
                if renewed:
                    self._store.put(key, value, lease)
                    continue
                current = self._store.get(key)
                if current is not None and current.lease != lease:
                    log.error("%s is now held by another owner (lease %d); not fighting "
                              "over it", key, current.lease)
                elif current is None or current.value != value:
                    self._store.put(key, value, lease)
        if renewed:
            self._on_renewed()


class LeaseKeeper:
    """Keeps every KeptLease alive from one thread."""

    def __init__(self, store: Store, state_dir: Path | None = None) -> None:
        self.store = store
        self._state_dir = state_dir
        self._leases: list[KeptLease] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leases", daemon=True)

    def lease(
        self, name: str, ttl: int, *, on_renewed: Callable[[], None] = lambda: None,
        persist: bool = True,
    ) -> KeptLease:
        """A lease for one purpose. persist: its id is saved as `<state dir>/<name>-lease`
        so the next run can adopt it."""
        path = None
        if persist and self._state_dir is not None:
            path = self._state_dir / f"{name}-lease"
        kept = KeptLease(self, name, ttl, path, on_renewed)
        with self._lock:
            self._leases.append(kept)
        self._wake.set()
        return kept

    def leases(self) -> list[KeptLease]:
        with self._lock:
            return list(self._leases)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop keeping leases alive; their records stay until their TTLs run out."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def keep_due(self) -> float:
        """Keep every lease that is due; the seconds until the next one is."""
        now = time.monotonic()
        for kept in self.leases():
            if kept.due() > now:
                continue
            try:
                kept.keep()
            except NetdError as exc:
                log.warning("lease %s: %s", kept.name, exc)
            except Exception:  # a lease must outlive any surprise: retry next interval
                log.exception("keeping lease %s failed unexpectedly; retrying", kept.name)
        nexts = [k.due() for k in self.leases()]
        return max(0.05, min(nexts) - time.monotonic()) if nexts else 1.0

    def _forget(self, kept: KeptLease) -> None:
        with self._lock:
            if kept in self._leases:
                self._leases.remove(kept)

    def _run(self) -> None:
        wait = 0.0
        while not self._stop.is_set():
            self._wake.wait(wait)
            self._wake.clear()
            if self._stop.is_set():
                break
            wait = self.keep_due()
