"""What this daemon knows about itself and the other hosts, answered even when the
store is down or hangs (the store is probed briefly; counts come from the reconciler's
local copy)."""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

from netd.model import Endpoint, Host
from netd.service.context import Context

log = logging.getLogger(__name__)

STORE_PROBE_TIMEOUT = 2.0  # `status` answers within this even when the store hangs


class PeerHealth(Protocol):
    """What netd.health's prober answers: per peer, its health and paths."""

    def peers(self) -> dict[str, dict[str, Any]]: ...


HEALTH_FIELDS = ("health", "rtt_ms", "loss", "last_seen", "lease_expires_by", "paths", "flags")


class Status:
    def __init__(self, ctx: Context, health: PeerHealth | None = None) -> None:
        self.ctx = ctx
        self.health = health

    def peer_health(self) -> dict[str, dict[str, Any]]:
        if self.health is None:
            return {}
        try:
            return self.health.peers()
        except Exception as exc:  # a status must answer whatever the prober does
            log.warning("peer health failed: %s", exc)
            return {}

    def list_hosts(self) -> list[dict[str, Any]]:
        """Every host that is alive or still has endpoints, with the tunnel state seen
        from this host: the networks both have endpoints on, and whether this host's
        datapath towards it is programmed ("up"), failing ("error"), gone ("down") or
        still programmed for a host without a lease ("kept": in its grace, or it still
        answers on the underlay)."""
        ctx = self.ctx
        items, _ = ctx.store.list(ctx.keys.hosts())
        alive = {h.name: h for h in (Host.from_json(kv.value) for kv in items)}
        networks_of: dict[str, set[str]] = {}
        endpoints, _ = ctx.store.list(ctx.keys.endpoints())
        for ep in (Endpoint.from_json(kv.value) for kv in endpoints):
            networks_of.setdefault(ep.host, set()).add(ep.network)
        mine = networks_of.get(ctx.host.name, set())
        errors = ctx.reconciler.status().errors
        kept = ctx.reconciler.kept_hosts()
        health = self.peer_health()
        rows = []
        for name in sorted(set(alive) | set(networks_of)):
            host = alive.get(name)
            shared = sorted(mine & networks_of.get(name, set()))
            if name == ctx.host.name:
                tunnel, shared = "self", []
            elif not shared:
                tunnel = "-"
            elif host is None and name in kept:
                tunnel = "kept"  # no lease (cut off from the store?) but still served
            elif host is None:
                tunnel = "down"
            elif any(f"network:{n}" in errors for n in shared):
                tunnel = "error"
            else:
                tunnel = "up"
            rows.append({
                "name": name,
                "underlay_ip": host.underlay_ip if host else "",
                "underlay_mtu": host.underlay_mtu if host else None,
                "alive": host is not None,
                "tunnel": tunnel,
                "shared_networks": shared,
                **self._health_of(name, host is not None, health),
            })
        return rows

    def _health_of(self, name: str, alive: bool,
                   health: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """A host's probe results (this host: "self"; a peer never probed: its liveness)."""
        empty: dict[str, Any] = {k: None for k in HEALTH_FIELDS} | {"paths": {}, "flags": []}
        if name == self.ctx.host.name:
            return empty | {"health": "self"}
        entry = health.get(name)
        if entry is None:
            return empty | {"health": "unknown" if alive else "unreachable"}
        return empty | {k: entry[k] for k in HEALTH_FIELDS if k in entry}

    def status(self) -> dict[str, Any]:
        """What this daemon knows, answered even when the store is down or hangs: the
        store is probed briefly, counts come from the reconciler's local copy."""
        ctx = self.ctx
        sync = ctx.reconciler.status()
        reachable, revision, error = self._probe_store()
        snapshot = ctx.reconciler.snapshot()
        local = [ep for ep in snapshot.endpoints.values() if ep.host == ctx.host.name]
        try:
            datapath = ctx.reconciler.observe()
        except Exception as exc:  # a status must answer whatever a driver does
            log.warning("observing the datapath failed: %s", exc)
            datapath = {"error": f"observing the datapath failed: {exc}"}
        return {
            "host": ctx.host.to_dict(),
            "drivers": sorted(ctx.drivers),
            # reachable only while this host's watch is live too: a dead watch means
            # this host no longer follows the store, however the probe fared
            "store": {
                "reachable": reachable and sync.store_ok, "revision": revision,
                "error": error or sync.store_error,
                "watch": "ok" if sync.store_ok else (sync.store_error or "not started"),
                # wall clock since when this host's watch has been broken (0: it is not)
                "unavailable_since": sync.store_down_since,
                "state": ("reachable" if reachable and sync.store_ok else ctx.store_down()
                          or f"store unavailable ({error or 'not listed yet'})"),
            },
            "networks": len(snapshot.networks),
            "endpoints": len(local),
            "last_sync": sync.last_sync,
            "applied_revision": sync.revision,
            "syncs": sync.syncs,
            "errors": sync.errors,
            "workers": {name: w.to_dict() for name, w in sorted(sync.workers.items())},
            "datapath": datapath,
            "peers": self.peer_health(),
        }

    def _probe_store(self) -> tuple[bool, int, str]:
        """(reachable, revision, error) from one read that may take STORE_PROBE_TIMEOUT."""
        answer: dict[str, Any] = {}
        store = self.ctx.store

        def probe() -> None:
            try:
                answer["revision"] = store.revision()
            except Exception as exc:
                answer["error"] = str(exc) or type(exc).__name__

        worker = threading.Thread(target=probe, name="store-probe", daemon=True)
        worker.start()
        worker.join(STORE_PROBE_TIMEOUT)
        if "revision" in answer:
            return True, int(answer["revision"]), ""
        if "error" in answer:
            return False, 0, str(answer["error"])
        return False, 0, f"the store did not answer within {STORE_PROBE_TIMEOUT:.0f} s"
