"""The reconcile loop: store watch -> snapshot -> calc -> driver.apply, forever.

One thread keeps a local copy of everything under the store prefix (list once, then
watch from the next revision; a compacted or broken watch re-lists, as flannel does)
and converges the kernel whenever the copy changes, on a periodic full resync, and
soon after a failure (failed items are retried while the rest proceeds). Sweeping
owned leftovers starts only after the first complete sync.

The API waits on `wait_applied(revision)` so that an attach returns only when this
host's datapath reflects it, with the item's error if the driver failed it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from netd.calc import Snapshot, desired_states
from netd.errors import Compacted, NetdError, StoreUnavailable
from netd.model import Host
from netd.plugin import ApplyReport, Driver
from netd.store.base import Store
from netd.store.keys import Keys

log = logging.getLogger(__name__)


@dataclass
class SyncStatus:
    revision: int = 0  # store revision of the last applied snapshot
    last_sync: float = 0.0  # wall clock of the last apply
    errors: dict[str, str] = field(default_factory=dict)
    syncs: int = 0
    store_ok: bool = False
    store_error: str = ""


class Reconciler:
    def __init__(
        self,
        store: Store,
        keys: Keys,
        drivers: Mapping[str, Driver],
        this_host: Callable[[], Host],
        resync_interval: float = 30.0,
        retry_interval: float = 1.0,
        host_grace: float = 0.0,
    ) -> None:
        self._store = store
        self._keys = keys
        self._drivers = dict(drivers)
        self._this_host = this_host
        self._resync_interval = resync_interval
        self._retry_interval = retry_interval
        self._retry_delay = retry_interval
        self._host_grace = host_grace
        # hosts whose registry key vanished: (last record, when); see _with_departed
        self._departed: dict[str, tuple[Host, float]] = {}
        self._cache = _DecodedCache(keys)
        self._status = SyncStatus()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reconcile", daemon=True)

    # --- public -------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop after the apply in progress; False if it did not finish within timeout."""
        self._stop.set()
        self._kick.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def kick(self) -> None:
        """Ask for an apply soon even without a store change (e.g. host data changed)."""
        self._kick.set()

    def status(self) -> SyncStatus:
        with self._cond:
            return SyncStatus(**{**self._status.__dict__, "errors": dict(self._status.errors)})

    def snapshot(self) -> Snapshot:
        with self._cond:
            return self._cache.snapshot()

    def _with_departed(self, snapshot: Snapshot) -> Snapshot:
        """Keep a vanished host in the desired state for `host_grace` seconds.

        A lease can expire for a reason that is not the host's death: the store was
        unreachable (or paused) longer than the TTL, and every lease lapsed at once.
        Live daemons re-register within one keepalive interval of the store coming
        back; tearing their tunnels down meanwhile would cut traffic between healthy
        hosts. A host that does not come back within the grace is dropped."""
        now = time.monotonic()
        for name in [n for n in self._departed if n in snapshot.hosts]:
            del self._departed[name]
        for name in [n for n, (_, t) in self._departed.items() if now - t >= self._host_grace]:
            del self._departed[name]
        if not self._departed:
            return snapshot
        hosts = {name: host for name, (host, _) in self._departed.items()}
        return replace(snapshot, hosts={**hosts, **snapshot.hosts})

    def _note_departures(self, before: Mapping[str, Host], after: Mapping[str, Host]) -> None:
        if self._host_grace <= 0:
            return
        now = time.monotonic()
        for name, host in before.items():
            if name not in after and name not in self._departed:
                self._departed[name] = (host, now)

    def wait_applied(self, revision: int, timeout: float) -> bool:
        """Block until a snapshot at >= revision has been applied (True) or timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._status.revision < revision:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def item_error(self, item: str) -> str | None:
        with self._cond:
            return self._status.errors.get(item)

    def observe(self) -> dict[str, Any]:
        return {name: d.observe() for name, d in self._drivers.items()}

    # --- loop ---------------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            try:
                self._list_and_watch()
                backoff = 0.2
            except (StoreUnavailable, Compacted) as exc:
                self._set_store_state(False, str(exc))
                log.warning("store watch interrupted, re-listing: %s", exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 1.0)  # converge soon after the store returns
            except Exception:  # keep converging whatever a driver or decoder did
                log.exception("reconcile loop failed; restarting it")
                self._stop.wait(1.0)

    def _list_and_watch(self) -> None:
        items, revision = self._store.list(self._keys.root())
        with self._cond:
            before = self._cache.hosts()
            self._cache = _DecodedCache(self._keys, {kv.key: kv.value for kv in items})
            self._note_departures(before, self._cache.hosts())
        watch = self._store.watch(self._keys.root(), revision + 1)
        self._set_store_state(True, "")  # ok only with a live watch
        try:
            self._apply(revision, verify=True)
            next_resync = time.monotonic() + self._resync_interval
            while not self._stop.is_set():
                events = watch.get(timeout=0.2)
                for ev in events:
                    revision = max(revision, ev.revision)
                    with self._cond:
                        if ev.type == "put" and ev.value is not None:
                            self._cache.put(ev.key, ev.value)
                        else:
                            before = self._cache.hosts()
                            self._cache.delete(ev.key)
                            self._note_departures(before, self._cache.hosts())
                due = time.monotonic() >= next_resync
                retry = bool(self._status.errors) and (
                    time.time() - self._status.last_sync >= self._retry_delay
                )
                grace_over = any(
                    time.monotonic() - t >= self._host_grace for _, t in self._departed.values()
                )
                if events or due or retry or grace_over or self._kick.is_set():
                    self._kick.clear()
                    self._apply(revision, verify=due)
                    if due:
                        next_resync = time.monotonic() + self._resync_interval
        finally:
            watch.close()

    def _apply(self, revision: int, verify: bool) -> None:
        snapshot = self._with_departed(self.snapshot())
        host = self._this_host()
        desired = desired_states(snapshot, host, set(self._drivers))
        sweep = self._status.syncs > 0
        report = ApplyReport()
        for name, driver in self._drivers.items():
            try:
                report.merge(driver.apply(desired[name], sweep=sweep, verify=verify))
            except NetdError as exc:
                report.fail(f"driver:{name}", str(exc))
            except Exception as exc:
                log.exception("driver %s failed", name)
                report.fail(f"driver:{name}", f"internal error: {exc}")
        previous = self._status.errors
        for item, message in report.errors.items():
            level = logging.DEBUG if previous.get(item) == message else logging.WARNING
            log.log(level, "apply failed for %s: %s", item, message)
        # the same items failing the same way again: back off (1 s, 2 s ... 30 s)
        if report.errors and report.errors == previous:
            self._retry_delay = min(self._retry_delay * 2, 30.0)
        else:
            self._retry_delay = self._retry_interval
        if report.changed:
            log.info("applied revision %d: %d kernel changes", revision, report.changed)
        with self._cond:
            self._status.revision = max(self._status.revision, revision)
            self._status.errors = dict(report.errors)
            self._status.last_sync = time.time()
            self._status.syncs += 1
            self._cond.notify_all()

    def _set_store_state(self, ok: bool, error: str) -> None:
        with self._cond:
            self._status.store_ok = ok
            self._status.store_error = error


class _DecodedCache:
    """The local copy of the store, kept decoded: each event decodes only its own record,
    so building a snapshot costs dict copies, not a JSON parse of every endpoint."""

    def __init__(self, keys: Keys, kvs: Mapping[str, str] | None = None) -> None:
        self._keys = keys
        self._raw: dict[str, str] = {}
        self._parts: dict[str, Snapshot] = {}  # key -> its record decoded alone
        self._networks: dict[str, Any] = {}
        self._endpoints: dict[Any, Any] = {}
        self._hosts: dict[str, Any] = {}
        self._secrets: dict[str, str] = {}
        for key, value in (kvs or {}).items():
            self.put(key, value)

    def _tables(self, part: Snapshot) -> list[tuple[Mapping[Any, Any], dict[Any, Any]]]:
        return [
            (part.networks, self._networks),
            (part.endpoints, self._endpoints),
            (part.hosts, self._hosts),
            (part.secrets, self._secrets),
        ]

    def put(self, key: str, value: str) -> None:
        if self._raw.get(key) == value:
            return
        self.delete(key)
        self._raw[key] = value
        if self._keys.kind_of(key) is None:
            return
        part = Snapshot.from_kvs(self._keys, {key: value})
        self._parts[key] = part
        for source, table in self._tables(part):
            table.update(source)

    def delete(self, key: str) -> None:
        self._raw.pop(key, None)
        part = self._parts.pop(key, None)
        if part is None:
            return
        for source, table in self._tables(part):
            for name in source:
                table.pop(name, None)

    def hosts(self) -> dict[str, Host]:
        return dict(self._hosts)

    def snapshot(self) -> Snapshot:
        return Snapshot(
            networks=dict(self._networks),
            endpoints=dict(self._endpoints),
            hosts=dict(self._hosts),
            secrets=dict(self._secrets),
        )
