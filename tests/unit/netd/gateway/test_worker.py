"""The gateway worker: computes a plan per offer, applies the newest, reports items."""

from __future__ import annotations

import time
from typing import Any

import plugins.weave.names  # noqa: F401  (claims weave's link names)
from netd.gateway.model import GatewayPlan
from netd.gateway.worker import GatewayWorker
from netd.model import Endpoint, Host, Network
from netd.plugin import NetworkState


class FakeApplier:
    def __init__(self) -> None:
        self.plans: list[GatewayPlan] = []
        self.errors: dict[str, str] = {}

    def apply(self, plan: GatewayPlan, *, sweep: bool, verify: bool) -> tuple[int, dict[str, str]]:
        self.plans.append(plan)
        return 1, dict(self.errors)


def state() -> NetworkState:
    net = Network(name="a", subnet="10.1.0.0/24", gateway="10.1.0.1", vni=1, mtu=1450)
    ep = Endpoint(network="a", name="x", container="x", netns="/run/netns/x", host="h1",
                  ifname="eth0", ip="10.1.0.5", mac="02:42:0a:01:00:05")
    return NetworkState(net, local=(ep,), remote=(), peers=())


def test_same_inputs_reuse_the_plan_and_items_report_errors() -> None:
    applier = FakeApplier()
    worker = GatewayWorker(applier, scope="/s", retry_interval=0.05)  # type: ignore[arg-type]
    host = Host(name="h1", underlay_ip="10.250.0.1")
    ns = state()
    worker.start()
    try:
        worker.offer(host, [ns], {}, (), 5)
        assert worker.wait_applied(5, 5.0)
        first = worker.plan()
        assert first is not None and [r.tenant for r in first.routers] == ["default"]
        deadline = time.monotonic() + 5
        while int(worker.status()["syncs"]) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)  # the sweeping pass that follows the first sync
        assert len(applier.plans) == 2
        worker.offer(host, [ns], {}, (), 6)
        assert worker.plan() is first  # not computed again
        assert worker.wait_applied(6, 5.0) and len(applier.plans) == 2  # nor applied
        applier.errors = {"gateway:a": "bridge ndb1 of network a does not exist yet"}
        worker.offer(host, [ns], {}, (), 7, verify=True)
        assert worker.wait_applied(7, 5.0)
        assert worker.item_error("gateway:a") == "bridge ndb1 of network a does not exist yet"
        applier.errors = {}
        deadline = time.monotonic() + 5
        while worker.item_error("gateway:a") is not None and time.monotonic() < deadline:
            time.sleep(0.02)  # retried without a new offer
        assert worker.item_error("gateway:a") is None
        status: dict[str, Any] = worker.status()
        assert status["errors"] == {} and int(status["syncs"]) >= 3
    finally:
        assert worker.stop(5.0)
