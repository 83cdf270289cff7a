"""What the daemon does, as a stream of events (`netctl events`).

An in-process bus keeps the last MAX_EVENTS events, numbered; readers long-poll it
(`GET /v1/events?since=N&wait=S` answers as soon as there is an event after N). The
events come from one watcher thread that compares the daemon's own view every
WATCH_INTERVAL with the previous one - the reconciler's local copy and status, and the
peer prober's verdicts - so no code path has to remember to publish: endpoints
applied, failed or removed on this host, networks created and removed, hosts joining
and leaving (their leases), peers turning unreachable or healthy, store watch lost or
back, and failed items and their recovery.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from netd.errors import InvalidInput
from netd.plugin import endpoint_id

log = logging.getLogger(__name__)

MAX_EVENTS = 1000
WATCH_INTERVAL = 0.5
MAX_WAIT = 30.0


class EventBus:
    def __init__(self, capacity: int = MAX_EVENTS) -> None:
        self._events: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._seq = 0
        self._cond = threading.Condition()

    def publish(self, kind: str, message: str, **fields: Any) -> dict[str, Any]:
        with self._cond:
            self._seq += 1
            event = {"seq": self._seq, "time": round(time.time(), 3), "kind": kind,
                     "message": message, **fields}
            self._events.append(event)
            self._cond.notify_all()
        log.info("event %s: %s", kind, message)
        return event

    def read(self, since: int, wait: float) -> dict[str, Any]:
        """Events numbered above `since`, waiting up to `wait` s for the first one."""
        deadline = time.monotonic() + wait
        with self._cond:
            while self._seq <= since:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            events = [e for e in self._events if e["seq"] > since]
            oldest = self._events[0]["seq"] if self._events else self._seq + 1
            return {"events": events, "next": self._seq,
                    "missed": max(0, min(oldest - 1, self._seq) - since)}


def read_query(bus: EventBus, query: dict[str, str]) -> dict[str, Any]:
    """The API's reading of `since` and `wait`, refused in one line when malformed."""
    values: dict[str, float] = {}
    for name, default, limit in (("since", 0, None), ("wait", 0, MAX_WAIT)):
        text = query.get(name)
        if text is None or text == "":
            values[name] = default
            continue
        try:
            number = float(text) if name == "wait" else int(text)
        except ValueError:
            raise InvalidInput(f"invalid {name} {text!r}: expected a number") from None
        if number < 0 or number != number or (limit is not None and number > limit):
            bound = f"0 to {limit:g}" if limit is not None else "0 or more"
            raise InvalidInput(f"invalid {name} {text!r}: expected {bound}")
        values[name] = number
    return bus.read(int(values["since"]), values["wait"])


class EventWatcher:
    """Publishes the differences between successive views of the daemon."""

    def __init__(self, bus: EventBus, reconciler: Any, host: Callable[[], str],
                 interval: float = WATCH_INTERVAL) -> None:
        self._bus = bus
        self._reconciler = reconciler
        self._host = host
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="events", daemon=True)
        self._view: dict[str, Any] | None = None
        self._pending: dict[str, int] = {}  # endpoint item -> revision it appeared at

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)

    def peer_changed(self, peer: str, old: str, new: str) -> None:
        """The prober's hook: a peer's health changed."""
        if new == "unreachable":
            self._bus.publish("peer.down", f"peer {peer} stopped answering probes ({old} -> "
                              f"{new})", peer=peer, health=new)
        elif new == "healthy" and old in ("unreachable", "unknown", "degraded"):
            self._bus.publish("peer.up", f"peer {peer} is healthy", peer=peer, health=new)
        elif new == "degraded":
            self._bus.publish("peer.degraded", f"peer {peer} is degraded (see netctl host ls)",
                              peer=peer, health=new)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.step()
            except Exception:  # the watcher must outlive whatever one look hits
                log.exception("events: watching the daemon failed")

    def step(self) -> None:
        status = self._reconciler.status()
        old = self._view
        if old is not None and old["seen"] == status.seen_revision:
            view = {**old, "errors": dict(status.errors), "store_ok": status.store_ok}
        else:  # the local copy moved: a copy of it (not every look: it costs a copy)
            snapshot = self._reconciler.snapshot()
            me = self._host()
            view = {
                "seen": status.seen_revision,
                "networks": set(snapshot.networks),
                "hosts": set(snapshot.hosts),
                "endpoints": {endpoint_id(ep): ep for ep in snapshot.endpoints.values()
                              if ep.host == me},
                "errors": dict(status.errors),
                "store_ok": status.store_ok,
            }
        me = self._host()
        self._view = view
        if old is None:
            self._pending = {item: 0 for item in view["endpoints"]}
            self._settle(view, status.revision)
            return
        bus = self._bus
        if view["store_ok"] != old["store_ok"]:
            if view["store_ok"]:
                bus.publish("store.up", "following the store again")
            else:
                bus.publish("store.down", f"lost the store: {status.store_error or 'unknown'}",
                            error=status.store_error)
        for name in sorted(view["networks"] - old["networks"]):
            bus.publish("network.created", f"network {name} appeared", network=name)
        for name in sorted(old["networks"] - view["networks"]):
            bus.publish("network.removed", f"network {name} removed", network=name)
        for name in sorted(view["hosts"] - old["hosts"] - {me}):
            bus.publish("host.joined", f"host {name} registered", host=name)
        for name in sorted(old["hosts"] - view["hosts"] - {me}):
            bus.publish("host.left", f"host {name}'s lease lapsed or was removed", host=name)
        for item in view["endpoints"].keys() - old["endpoints"].keys():
            self._pending[item] = status.seen_revision
        for item in sorted(old["endpoints"].keys() - view["endpoints"].keys()):
            ep = old["endpoints"][item]
            self._pending.pop(item, None)
            bus.publish("endpoint.removed", f"{ep.name} detached from {ep.network}",
                        network=ep.network, endpoint=ep.name)
        for item, message in sorted(view["errors"].items()):
            if old["errors"].get(item) != message:
                bus.publish("failure", f"{item}: {message}", item=item, error=message)
        for item in sorted(old["errors"].keys() - view["errors"].keys()):
            bus.publish("recovered", f"{item} applied after failing", item=item)
        self._settle(view, status.revision)

    def _settle(self, view: dict[str, Any], applied: int) -> None:
        """Endpoints whose revision the workers have applied without an error."""
        for item, revision in sorted(self._pending.items()):
            if applied < revision or item in view["errors"]:
                continue
            del self._pending[item]
            if revision == 0:
                continue  # there before this daemon started watching
            ep = view["endpoints"][item]
            self._bus.publish("endpoint.applied", f"{ep.name} on {ep.network}: {ep.ip} "
                              f"({ep.ifname}) in place", network=ep.network, endpoint=ep.name,
                              ip=ep.ip)
