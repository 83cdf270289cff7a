"""The policy worker: applies the newest policy on its own thread, counts revisions,
retries a failed apply, never blocks the caller."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from netd.errors import DatapathError
from netd.policy.model import HostPolicy, PortPolicy
from netd.policy.nft import NftApplier
from netd.policy.worker import ITEM, PolicyWorker


class FakeApplier(NftApplier):
    def __init__(self) -> None:
        super().__init__(["weave"])
        self.applied: list[HostPolicy] = []
        self.fail = 0  # the next N applies fail
        self.gate = threading.Event()
        self.gate.set()

    def apply(self, policy: HostPolicy, verify: bool = False) -> int:
        self.gate.wait(5)
        if self.fail:
            self.fail -= 1
            raise DatapathError("nft refused the policy: test")
        self.applied.append(policy)
        return 1


def policy(n: int) -> HostPolicy:
    return HostPolicy(ports=(PortPolicy("net", f"e{n}", "default", "weave", "ndh00000000",
                                        "ndb1", f"10.0.0.{n}", "02:00:00:00:00:01",
                                        "10.0.0.0/24"),))


@pytest.fixture
def worker() -> Iterator[tuple[PolicyWorker, FakeApplier]]:
    applier = FakeApplier()
    w = PolicyWorker(applier, retry_interval=0.05)
    w.start()
    yield w, applier
    applier.gate.set()
    assert w.stop(5)


def test_applies_and_counts_revisions(worker: tuple[PolicyWorker, FakeApplier]) -> None:
    w, applier = worker
    w.offer(policy(1), 5)
    assert w.wait_applied(5, 5)
    w.offer(None, 7)  # unchanged: the revision counts as applied without an apply
    assert w.wait_applied(7, 1)
    assert applier.applied == [policy(1)]


def test_only_the_newest_is_applied_and_offer_never_blocks(
        worker: tuple[PolicyWorker, FakeApplier]) -> None:
    w, applier = worker
    applier.gate.clear()  # the apply in progress hangs
    w.offer(policy(1), 1)
    for n in range(2, 6):
        w.offer(policy(n), n)  # returns at once
    assert not w.wait_applied(5, 0.1)
    applier.gate.set()
    assert w.wait_applied(5, 5)
    assert applier.applied[-1] == policy(5) and len(applier.applied) <= 2


def test_a_failed_apply_is_reported_and_retried(worker: tuple[PolicyWorker, FakeApplier]) -> None:
    w, applier = worker
    applier.fail = 2
    w.offer(policy(1), 3)
    assert w.wait_applied(3, 5)
    assert applier.applied == [policy(1)]
    assert w.status()["errors"] == {}
    applier.fail = 1000
    w.offer(policy(2), 4)
    assert not w.wait_applied(4, 0.3)
    assert ITEM in w.status()["errors"]  # type: ignore[operator]
