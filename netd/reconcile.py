"""The reconcile loop: store watch -> calc -> one worker per driver -> driver.apply.

One thread keeps a local copy of every watched record (netd's root plus the prefixes
drivers declare; list once, then watch from the next revision; a compacted or broken
watch re-lists, as flannel does) in calc.DesiredState, which recomputes only what the
events touched. After each batch of events, on a periodic full resync (verify) and
when this host's data changes, every driver's worker is offered its desired HostState.

Each driver has its own worker thread with its own dirty flag, retry with backoff
(failed items are retried while the rest proceeds) and status (revision applied, last
sync, errors), so a slow driver never stalls another's attaches. A worker offered the
very same HostState object it already applied counts the new revision as applied
without calling the driver. Sweeping owned leftovers starts only after a worker's first
complete sync, right after it (a second, sweeping pass follows the first sync at once).

The API waits on `wait_applied(revision, item)`: first until the local copy has seen
the revision, then on the worker of the driver that owns the item (the driver of the
item's network), so that an attach returns only when this host's datapath reflects it,
with the item's error if the driver failed it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from netd import metrics
from netd.calc import DesiredState, Snapshot
from netd.errors import Compacted, NetdError, StoreUnavailable
from netd.faults import crash_point
from netd.gateway.worker import GatewayWorker
from netd.model import Host
from netd.plugin import ApplyReport, Driver, HostState, network_of_item
from netd.policy.model import HostPolicy
from netd.policy.worker import PolicyWorker
from netd.store.base import Store, Watch, WatchEvent
from netd.store.keys import Keys, RecordKinds

log = logging.getLogger(__name__)

DEFAULT_APPLY_TIMEOUT = 15.0
MAX_RETRY_DELAY = 30.0


@dataclass
class WorkerStatus:
    driver: str
    revision: int = 0  # store revision of the last desired state applied
    last_sync: float = 0.0  # wall clock of the last apply's end
    errors: dict[str, str] = field(default_factory=dict)
    syncs: int = 0
    applying_since: float = 0.0  # wall clock the running apply started (0: idle)
    pending: bool = False  # a newer desired state waits for the running apply
    retry_in: float = 0.0  # seconds until failed items are retried (0: none failed)
    last_duration: float = 0.0  # seconds the last apply took

    def copy(self) -> WorkerStatus:
        return replace(self, errors=dict(self.errors))

    def to_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "last_sync": self.last_sync,
            "errors": dict(self.errors),
            "syncs": self.syncs,
            "applying_since": self.applying_since,
            "pending": self.pending,
            "retry_in": round(self.retry_in, 3),
            "last_duration": round(self.last_duration, 4),
        }


@dataclass
class SyncStatus:
    """The reconciler as a whole: revision/last_sync/syncs are those of the worker
    furthest behind, errors those of every worker."""

    revision: int = 0  # store revision every worker has applied
    last_sync: float = 0.0
    errors: dict[str, str] = field(default_factory=dict)
    syncs: int = 0
    store_ok: bool = False
    store_error: str = ""
    store_down_since: float = 0.0  # wall clock the store was last found away (0: it is not)
    seen_revision: int = 0  # store revision the local copy reflects
    workers: dict[str, WorkerStatus] = field(default_factory=dict)


class DriverWorker:
    """Applies one driver's desired state on its own thread."""

    def __init__(self, name: str, driver: Driver, retry_interval: float = 1.0) -> None:
        self.name = name
        self.driver = driver
        self._retry_interval = retry_interval
        self._retry_delay = retry_interval
        self._cond = threading.Condition()
        self._desired: HostState | None = None
        self._desired_revision = 0
        self._dirty = False
        self._verify = False
        self._retry_at: float | None = None  # monotonic time failed items are retried
        self._status = WorkerStatus(driver=name)
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=f"apply-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Stop after the apply in progress; False if it did not end within timeout."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def offer(self, desired: HostState, revision: int, *, verify: bool = False) -> None:
        """The driver's desired state as of `revision`. The very same object as the
        last one offered needs no apply unless verify is asked."""
        with self._cond:
            if desired is self._desired and not verify:
                self._desired_revision = max(self._desired_revision, revision)
                if not self._dirty and not self._status.applying_since:
                    self._status.revision = max(self._status.revision, revision)
                    self._cond.notify_all()
                return
            self._desired = desired
            self._desired_revision = max(self._desired_revision, revision)
            self._dirty = True
            self._verify = self._verify or verify
            self._status.pending = bool(self._status.applying_since)
            self._cond.notify_all()

    def request_resync(self) -> None:
        """A verify apply of the current desired state, soon (the driver asked)."""
        with self._cond:
            if self._desired is None:
                return
            self._dirty = True
            self._verify = True
            self._cond.notify_all()

    def status(self) -> WorkerStatus:
        with self._cond:
            status = self._status.copy()
            if self._retry_at is not None:
                status.retry_in = max(0.0, self._retry_at - time.monotonic())
            return status

    def wait_applied(self, revision: int, timeout: float) -> bool:
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

    def _next(self) -> tuple[HostState, int, bool] | None:
        """Wait for work: a new desired state, a verify request or a due retry."""
        with self._cond:
            while not self._stop:
                retry_due = self._retry_at is not None and time.monotonic() >= self._retry_at
                if self._desired is not None and (self._dirty or retry_due):
                    work = (self._desired, self._desired_revision, self._verify)
                    self._dirty = self._verify = False
                    self._retry_at = None
                    self._status.applying_since = time.time()
                    self._status.pending = False
                    return work
                wait = None if self._retry_at is None else self._retry_at - time.monotonic()
                self._cond.wait(wait if wait is None else max(0.0, wait))
            return None

    def _run(self) -> None:
        while True:
            work = self._next()
            if work is None:
                return
            desired, revision, verify = work
            started = time.monotonic()
            crash_point("apply.before")
            report = self._apply(desired, sweep=self._status.syncs > 0, verify=verify)
            crash_point("apply.after")
            self._finish(desired, revision, report, time.monotonic() - started)

    def _apply(self, desired: HostState, *, sweep: bool, verify: bool) -> ApplyReport:
        try:
            return self.driver.apply(desired, sweep=sweep, verify=verify)
        except NetdError as exc:
            report = ApplyReport()
            report.fail(f"driver:{self.name}", str(exc))
        except Exception as exc:  # keep converging whatever the driver did
            log.exception("driver %s failed", self.name)
            report = ApplyReport()
            report.fail(f"driver:{self.name}", f"internal error: {exc}")
        return report

    def _finish(
        self, desired: HostState, revision: int, report: ApplyReport, took: float
    ) -> None:
        with self._cond:
            previous = self._status.errors
            for item, message in report.errors.items():
                level = logging.DEBUG if previous.get(item) == message else logging.WARNING
                log.log(level, "%s: apply failed for %s: %s", self.name, item, message)
            # the same items failing the same way again: back off (1 s, 2 s ... 30 s)
            if report.errors and report.errors == previous:
                self._retry_delay = min(self._retry_delay * 2, MAX_RETRY_DELAY)
            else:
                self._retry_delay = self._retry_interval
            if report.errors:
                self._retry_at = time.monotonic() + self._retry_delay
            if report.changed:
                log.info("%s: applied revision %d: %d kernel changes",
                         self.name, revision, report.changed)
            if desired is self._desired:  # offered again unchanged meanwhile: covered too
                revision = max(revision, self._desired_revision)
            self._status.revision = max(self._status.revision, revision)
            self._status.errors = dict(report.errors)
            self._status.last_sync = time.time()
            self._status.last_duration = took
            metrics.APPLY_SECONDS.labels(self.name).observe(took)
            self._status.syncs += 1
            if self._status.syncs == 1 and not report.errors:
                # the first full sync adopted what exists; sweep what it left over at once
                # (a verify pass with sweep), not at the next change or resync
                self._dirty = self._verify = True
            self._status.applying_since = 0.0
            self._cond.notify_all()


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
        policy: PolicyWorker | None = None,
        flow_policy_drivers: frozenset[str] = frozenset(),
        still_there: Callable[[Host], bool] = lambda host: False,
        gateway: GatewayWorker | None = None,
    ) -> None:
        """`policy`: the nftables policy worker (None: no kernel policy here);
        `flow_policy_drivers`: drivers that enforce policy themselves and get the
        computed policy in `HostState.policy` (openflow); `still_there(host)`: whether a
        host whose registry key vanished still answers on the underlay (it is kept
        then, beyond the grace; netd.liveness)."""
        self._still_there = still_there
        self._policy = policy
        self._gateway = gateway  # the distributed gateway (netd.gateway); None: none here
        self._flow_policy_drivers = flow_policy_drivers
        self._host_policy: HostPolicy | None = None
        self._with_policy: dict[str, tuple[HostState, HostState]] = {}
        self._store = store
        self._keys = keys
        self._drivers = dict(drivers)
        self._this_host = this_host
        self._resync_interval = resync_interval
        self._host_grace = host_grace
        self._kinds = RecordKinds(
            keys, {name: d.spec.watch_prefixes for name, d in self._drivers.items()}
        )
        # hosts whose registry key vanished: (last record, when); see _departed_hosts
        self._departed: dict[str, tuple[Host, float]] = {}
        self._state = DesiredState(self._kinds)
        self._workers = {
            name: DriverWorker(name, driver, retry_interval)
            for name, driver in self._drivers.items()
        }
        self._seen = 0  # root revision every worker has been offered
        self._store_ok = False
        self._store_error = ""
        self._store_down_since = 0.0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._resync_asked = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reconcile", daemon=True)

    # --- public -------------------------------------------------------------------
    def start(self) -> None:
        if self._policy is not None:
            self._policy.start()
        if self._gateway is not None:
            self._gateway.start()
        for worker in self._workers.values():
            worker.start()
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop after the applies in progress; False if one did not end within timeout."""
        self._stop.set()
        self._kick.set()
        deadline = time.monotonic() + timeout
        if self._thread.is_alive():
            self._thread.join(timeout)
        idle = not self._thread.is_alive()
        for worker in self._workers.values():
            idle = worker.stop(max(0.0, deadline - time.monotonic())) and idle
        if self._policy is not None:
            idle = self._policy.stop(max(0.0, deadline - time.monotonic())) and idle
        if self._gateway is not None:
            idle = self._gateway.stop(max(0.0, deadline - time.monotonic())) and idle
        return idle

    def kick(self) -> None:
        """Ask for desired state to be offered again soon (e.g. this host's data changed)."""
        self._kick.set()

    def request_resync(self, driver: str) -> None:
        """A full verify apply of one driver, soon (OVS reconnected, a lease was lost)."""
        worker = self._workers.get(driver)
        if worker is not None:
            worker.request_resync()

    def workers(self) -> dict[str, WorkerStatus]:
        out = {name: w.status() for name, w in self._workers.items()}
        if self._policy is not None:
            p = self._policy.status()
            out["policy"] = WorkerStatus(
                driver="policy", revision=int(p["revision"]),  # type: ignore[call-overload]
                last_sync=float(p["last_sync"]),  # type: ignore[arg-type]
                errors=dict(p["errors"]),  # type: ignore[call-overload]
                syncs=int(p["syncs"]), pending=bool(p["pending"]),  # type: ignore[call-overload]
                last_duration=float(p["last_duration"]))  # type: ignore[arg-type]
        if self._gateway is not None:
            g = self._gateway.status()
            out["gateway"] = WorkerStatus(
                driver="gateway", revision=int(g["revision"]),  # type: ignore[call-overload]
                last_sync=float(g["last_sync"]),  # type: ignore[arg-type]
                errors=dict(g["errors"]),  # type: ignore[call-overload]
                syncs=int(g["syncs"]), pending=bool(g["pending"]),  # type: ignore[call-overload]
                last_duration=float(g["last_duration"]))  # type: ignore[arg-type]
        return out

    def gateway(self) -> GatewayWorker | None:
        return self._gateway

    def policy(self) -> HostPolicy | None:
        """The last computed policy of this host (None before the first sync)."""
        with self._cond:
            return self._host_policy

    def status(self) -> SyncStatus:
        workers = self.workers()
        with self._cond:
            status = SyncStatus(store_ok=self._store_ok, store_error=self._store_error,
                                store_down_since=self._store_down_since,
                                seen_revision=self._seen, workers=workers)
        if workers:
            status.revision = min(w.revision for w in workers.values())
            status.last_sync = min(w.last_sync for w in workers.values())
            status.syncs = min(w.syncs for w in workers.values())
            for w in workers.values():
                status.errors.update(w.errors)
        else:
            status.revision = status.seen_revision
        return status

    def kept_hosts(self) -> set[str]:
        """Hosts whose registry key vanished that this host's datapath still serves (in
        their grace, or answering on the underlay)."""
        with self._cond:
            return set(self._departed)

    def store_down(self) -> tuple[float, str] | None:
        """(since when, why) while this host's watch is broken; None while it follows the
        store (or has not listed it yet)."""
        with self._cond:
            if not self._store_down_since:
                return None
            return self._store_down_since, self._store_error

    def snapshot(self) -> Snapshot:
        with self._cond:
            return self._state.snapshot()

    def counts(self, host: str) -> tuple[int, int]:
        """(networks, endpoints of `host`) in the local copy."""
        with self._cond:
            return self._state.counts()[0], self._state.local_endpoints(host)

    def owner_of(self, item: str) -> str | None:
        """The driver whose worker applies `item` (None: no loaded driver does)."""
        if item.startswith("driver:"):
            name = item.split(":", 1)[1]
            return name if name in self._workers else None
        network_name = network_of_item(item)
        if network_name is None:
            return None
        with self._cond:
            network = self._state.network(network_name)
        if network is None or network.driver not in self._workers:
            return None
        return network.driver

    def wait_applied(
        self, revision: int, item: str | None = None, timeout: float = DEFAULT_APPLY_TIMEOUT
    ) -> bool:
        """Block until this host applied a desired state at >= revision (True) or timeout:
        the worker owning `item`, or every worker when item is None."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._seen < revision:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        if item is None:
            workers = list(self._workers.values())
        else:
            owner = self.owner_of(item)
            workers = [] if owner is None else [self._workers[owner]]
        done = all(w.wait_applied(revision, max(0.0, deadline - time.monotonic()))
                   for w in workers)
        if self._policy is not None and (item is None or item.startswith("endpoint:")):
            done = self._policy.wait_applied(
                revision, max(0.0, deadline - time.monotonic())) and done
        if self._gateway is not None and (item is None or item.startswith("gateway:")):
            done = self._gateway.wait_applied(
                revision, max(0.0, deadline - time.monotonic())) and done
        return done

    def item_error(self, item: str) -> str | None:
        if self._gateway is not None and item.startswith("gateway:"):
            error = self._gateway.item_error(item)
            if error is not None:
                return error
        for worker in self._workers.values():
            error = worker.item_error(item)
            if error is not None:
                return error
        return None

    def observe(self) -> dict[str, Any]:
        return {name: d.observe() for name, d in self._drivers.items()}

    # --- hosts that just vanished ---------------------------------------------------
    def _departed_hosts(self, live: Mapping[str, Host]) -> dict[str, Host]:
        """Keep a vanished host in the desired state for `host_grace` seconds.

        A lease can expire for a reason that is not the host's death: the store was
        unreachable (or paused) longer than the TTL, and every lease lapsed at once.
        Live daemons re-register within one keepalive interval of the store coming
        back; tearing their tunnels down meanwhile would cut traffic between healthy
        hosts. A host that does not come back within the grace is dropped, unless it
        still answers on the underlay: then only its link to the store is cut (a
        partition longer than the TTL) and its containers still forward."""
        for name in [n for n in self._departed if n in live]:
            del self._departed[name]
        for name in self._gone_for_good():
            log.info("host %s left the registry %.1f s ago and does not answer on the "
                     "underlay: dropping it", name, time.monotonic() - self._departed[name][1])
            del self._departed[name]
        return {name: host for name, (host, _) in self._departed.items()}

    def _gone_for_good(self) -> list[str]:
        """Departed hosts past the grace that do not answer on the underlay."""
        now = time.monotonic()
        return [name for name, (host, t) in self._departed.items()
                if not self._still_there(host) and now - t >= self._host_grace]

    def _note_departures(self, before: Mapping[str, Host], after: Mapping[str, Host]) -> None:
        if self._host_grace <= 0:
            return
        now = time.monotonic()
        for name, host in before.items():
            if name not in after and name not in self._departed:
                self._departed[name] = (host, now)

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
            except Exception:  # keep converging whatever a decoder did
                log.exception("reconcile loop failed; restarting it")
                self._stop.wait(1.0)

    def _list_and_watch(self) -> None:
        metrics.WATCH_RELISTS.inc()
        starts: dict[str, int] = {}
        kvs: dict[str, str] = {}
        for prefix in self._kinds.prefixes():
            items, listed_at = self._store.list(prefix)
            kvs.update((kv.key, kv.value) for kv in items)
            starts[prefix] = listed_at + 1
        root = self._keys.root()
        revision = starts[root] - 1
        with self._cond:
            before = self._state.hosts()
            self._state.reset(kvs)
            self._note_departures(before, self._state.hosts())
        watch = _Watches(self._store, starts)
        self._set_store_state(True, "")  # ok only with a live watch
        try:
            self._offer(revision, verify=True)
            next_resync = time.monotonic() + self._resync_interval
            while not self._stop.is_set():
                batch = watch.get(timeout=0.2)
                with self._cond:
                    for prefix, ev in batch:
                        if prefix == root:
                            revision = max(revision, ev.revision)
                        if ev.type == "put" and ev.value is not None:
                            self._state.put(ev.key, ev.value)
                        else:
                            before = self._state.hosts() if self._host_grace > 0 else {}
                            if self._state.delete(ev.key) and before:
                                self._note_departures(before, self._state.hosts())
                due = time.monotonic() >= next_resync
                grace_over = bool(self._departed) and bool(self._gone_for_good())
                if batch or due or grace_over or self._kick.is_set():
                    self._kick.clear()
                    self._offer(revision, verify=due)
                    if due:
                        next_resync = time.monotonic() + self._resync_interval
        finally:
            watch.close()

    def _offer(self, revision: int, verify: bool) -> None:
        """Compute what changed and offer every worker its desired state at `revision`."""
        host = self._this_host()
        with self._cond:
            departed = self._departed_hosts(self._state.hosts()) if self._departed else {}
            states = self._state.states(host, self._workers.keys(), departed)
            current_policy = self._state.policy.policy(host.name)
            # None: unchanged (the worker compares no further)
            policy = (current_policy if current_policy is not self._host_policy or verify
                      else None)
            self._host_policy = current_policy
        for name in self._flow_policy_drivers & states.keys():
            states[name] = self._attach_policy(name, states[name], current_policy)
        if self._policy is not None:
            self._policy.offer(policy, revision, verify=verify)
        if self._gateway is not None:
            with self._cond:
                roles, published = self._state.gateway_inputs(host.name)
            served = [ns for st in states.values() for ns in st.networks.values()]
            self._gateway.offer(host, served, roles, published, revision, verify=verify)
        for name, worker in self._workers.items():
            worker.offer(states[name], revision, verify=verify)
        with self._cond:
            self._seen = max(self._seen, revision)
            self._cond.notify_all()

    def _attach_policy(self, name: str, state: HostState,
                       policy: HostPolicy | None) -> HostState:
        """`state` with the driver's part of the policy; the same object while neither
        changed, so the worker can still skip an unchanged state by identity."""
        mine = policy.of_drivers(frozenset({name})) if policy is not None else None
        cached = self._with_policy.get(name)
        if cached is not None and cached[0] is state and cached[1].policy == mine:
            return cached[1]
        combined = replace(state, policy=mine)
        self._with_policy[name] = (state, combined)
        return combined

    def _set_store_state(self, ok: bool, error: str) -> None:
        with self._cond:
            self._store_ok = ok
            self._store_error = error
            if ok:
                self._store_down_since = 0.0
            elif not self._store_down_since:
                self._store_down_since = time.time()


class _Watches:
    """Several prefix watches read as one: (prefix, event) pairs in each watch's order.
    One watch is read directly; several get a reader thread each."""

    def __init__(self, store: Store, starts: Mapping[str, int]) -> None:
        self._watches: dict[str, Watch] = {}
        try:
            for prefix, start in starts.items():
                self._watches[prefix] = store.watch(prefix, start)
        except BaseException:
            self.close()
            raise
        self._queue: queue.Queue[tuple[str, list[WatchEvent] | BaseException]] = queue.Queue()
        self._closed = threading.Event()
        self._readers: list[threading.Thread] = []
        if len(self._watches) > 1:
            for prefix, watch in self._watches.items():
                reader = threading.Thread(target=self._read, args=(prefix, watch),
                                          name=f"watch {prefix}", daemon=True)
                reader.start()
                self._readers.append(reader)

    def _read(self, prefix: str, watch: Watch) -> None:
        while not self._closed.is_set():
            try:
                events = watch.get(timeout=0.5)
            except BaseException as exc:
                self._queue.put((prefix, exc))
                return
            if events:
                self._queue.put((prefix, events))

    def get(self, timeout: float) -> list[tuple[str, WatchEvent]]:
        if not self._readers:
            ((prefix, watch),) = self._watches.items()
            return [(prefix, ev) for ev in watch.get(timeout)]
        out: list[tuple[str, WatchEvent]] = []
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return out
        while True:
            prefix, got = item
            if isinstance(got, BaseException):
                raise got
            out.extend((prefix, ev) for ev in got)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return out

    def close(self) -> None:
        self._closed.set()
        for reader in self._readers:
            reader.join(1.0)
        for watch in self._watches.values():
            watch.close()
