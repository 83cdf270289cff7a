"""The gateway's own apply thread, so router namespaces and NAT never stall a driver.

Offered this host's inputs after every batch of store events; computes the plan (pure)
on the offering thread and applies only the newest one; retries failed items every
second; counts a revision as applied once a plan at least that new is in the kernel.
Sweeping starts after its first complete apply.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping

from netd.gateway.apply import GatewayApplier
from netd.gateway.compute import gateway_plan
from netd.gateway.model import GatewayPlan
from netd.model import Host, HostRoles, Publish
from netd.plugin import NetworkState

log = logging.getLogger(__name__)

RETRY_INTERVAL = 0.5


class GatewayWorker:
    def __init__(self, applier: GatewayApplier, scope: str,
                 retry_interval: float = RETRY_INTERVAL) -> None:
        self.applier = applier
        self.scope = scope
        self._retry = retry_interval
        self._cond = threading.Condition()
        self._desired: GatewayPlan | None = None
        self._revision = 0
        self._applied_revision = 0
        self._verify = False
        self._dirty = False
        self._stop = False
        self.errors: dict[str, str] = {}
        self.syncs = 0
        self.last_sync = 0.0
        self.last_duration = 0.0
        self._thread = threading.Thread(target=self._run, name="apply-gateway", daemon=True)
        # the inputs of the last computed plan: the same NetworkState objects (calc keeps
        # an untouched network's state as the same object) and equal roles and ports
        # need no new computation, so a round costs nothing per endpoint of them
        self._inputs: tuple[object, ...] | None = None
        self._served_refs: list[NetworkState] = []  # keeps the ids in _inputs unique

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def offer(
        self,
        host: Host,
        served: Iterable[NetworkState],
        roles: Mapping[str, Mapping[str, HostRoles]],
        published: Iterable[Publish],
        revision: int,
        *,
        verify: bool = False,
    ) -> None:
        served = list(served)
        published = tuple(published)
        inputs = (host, tuple(map(id, served)), roles, published)
        with self._cond:
            same = self._inputs is not None and self._inputs == inputs
            plan = self._desired if same else None
        if plan is None:
            plan = gateway_plan(host=host.name, underlay_ip=host.underlay_ip, scope=self.scope,
                                served=served, roles=roles, published=published)
        with self._cond:
            self._inputs = inputs
            self._served_refs = served
            if plan != self._desired:
                self._desired = plan
                self._dirty = True
            if verify:
                self._verify = self._dirty = True
            self._revision = max(self._revision, revision)
            if not self._dirty and self.syncs:
                self._applied_revision = max(self._applied_revision, self._revision)
            self._cond.notify_all()

    def wait_applied(self, revision: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._applied_revision < revision:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def item_error(self, item: str) -> str | None:
        with self._cond:
            return self.errors.get(item)

    def plan(self) -> GatewayPlan | None:
        with self._cond:
            return self._desired

    def status(self) -> dict[str, object]:
        with self._cond:
            return {"revision": self._applied_revision, "last_sync": self.last_sync,
                    "errors": dict(self.errors), "syncs": self.syncs, "pending": self._dirty,
                    "last_duration": round(self.last_duration, 4)}

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self._dirty:
                    self._cond.wait(self._retry if self.errors else None)
                    if self.errors and not self._dirty:
                        self._dirty = True  # retry failed items
                if self._stop:
                    return
                plan, revision, verify = self._desired, self._revision, self._verify
                self._dirty = self._verify = False
                sweep = self.syncs > 0
            if plan is None:
                continue
            started = time.monotonic()
            try:
                changed, errors = self.applier.apply(plan, sweep=sweep, verify=verify)
            except Exception as exc:  # keep converging whatever happened
                log.exception("gateway apply failed")
                changed, errors = 0, {"gateway:host": f"internal error: {exc}"}
            took = time.monotonic() - started
            with self._cond:
                for key, message in errors.items():
                    if self.errors.get(key) != message:
                        log.warning("gateway: apply failed for %s: %s", key, message)
                if changed:
                    log.info("gateway: applied revision %d: %d kernel changes", revision,
                             changed)
                self.errors = errors
                self.syncs += 1
                if self.syncs == 1 and not errors:
                    # the first sync adopted what exists; sweep its leftovers at once, as
                    # the driver workers do, not at the next change or resync
                    self._dirty = self._verify = True
                self.last_sync = time.time()
                self.last_duration = took
                # applied, failed items included: a waiter asks item_error for its own
                self._applied_revision = max(self._applied_revision, revision)
                self._cond.notify_all()
