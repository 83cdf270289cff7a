"""The policy applier's own reconcile thread, so nftables never stalls a driver.

Offered the latest HostPolicy with the store revision it reflects; applies the newest
one only (older offers are superseded), retries a failed apply every second, and
counts a revision as applied once a policy at least that new is in the kernel.
"""

from __future__ import annotations

import logging
import threading
import time

from netd.errors import NetdError
from netd.policy.model import HostPolicy
from netd.policy.nft import NftApplier

log = logging.getLogger(__name__)

RETRY_INTERVAL = 1.0
ITEM = "policy:nftables"


class PolicyWorker:
    def __init__(self, applier: NftApplier, retry_interval: float = RETRY_INTERVAL) -> None:
        self.applier = applier
        self._retry = retry_interval
        self._cond = threading.Condition()
        self._desired: HostPolicy | None = None
        self._revision = 0  # revision of the desired policy
        self._applied_revision = 0
        self._verify = False
        self._dirty = False
        self._stop = False
        self.error = ""
        self.syncs = 0
        self.last_sync = 0.0
        self.last_duration = 0.0
        self._thread = threading.Thread(target=self._run, name="apply-policy", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def offer(self, policy: HostPolicy | None, revision: int, *, verify: bool = False) -> None:
        """`policy` None: unchanged since the last offer (only the revision moves)."""
        with self._cond:
            if policy is not None and policy != self._desired:
                self._desired = policy
                self._dirty = True
            if verify:
                self._verify = self._dirty = True
            self._revision = max(self._revision, revision)
            if not self._dirty and not self.error and self._desired is not None:
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

    def status(self) -> dict[str, object]:
        with self._cond:
            return {"revision": self._applied_revision, "last_sync": self.last_sync,
                    "errors": {ITEM: self.error} if self.error else {}, "syncs": self.syncs,
                    "applying_since": 0.0, "pending": self._dirty, "retry_in": 0.0,
                    "last_duration": round(self.last_duration, 4)}

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self._dirty:
                    self._cond.wait(self._retry if self.error else None)
                    if self.error and not self._dirty:
                        self._dirty = True  # retry a failed apply
                if self._stop:
                    return
                policy, revision, verify = self._desired, self._revision, self._verify
                self._dirty = self._verify = False
            if policy is None:
                continue
            started = time.monotonic()
            try:
                changed = self.applier.apply(policy, verify=verify)
                error = ""
            except NetdError as exc:
                changed, error = 0, str(exc)
            except Exception as exc:  # keep converging whatever happened
                log.exception("policy apply failed")
                changed, error = 0, f"internal error: {exc}"
            took = time.monotonic() - started
            with self._cond:
                if error and error != self.error:
                    log.warning("policy: apply failed: %s", error)
                if changed:
                    log.info("policy: applied revision %d (%.1f ms)", revision, took * 1000)
                self.error = error
                self.syncs += 1
                self.last_sync = time.time()
                self.last_duration = took
                if not error:
                    self._applied_revision = max(self._applied_revision, revision)
                self._cond.notify_all()
