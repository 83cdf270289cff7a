"""expose/hide and publish/unpublish: this host's gateway roles, as store records.

`expose NET` writes this host's roles on the network (`/netd/roles/<net>/<host>`:
"expose", plus "no-masquerade" when asked): desired state that survives restarts, and
that makes this host serve the network with no local container (the platform's role
seam). `publish` writes one record per host port (`/netd/publish/<host>/<proto>-<port>`),
created only if absent: a host port is published once per host. Each refusal is one
line and writes nothing; each write waits until this host's gateway applied it.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from netd.container import endpoint_name
from netd.errors import Conflict, DatapathError, InvalidInput, NotFound
from netd.gateway.compute import EXPOSE, NO_MASQUERADE, SERVED_DRIVERS
from netd.model import (
    Endpoint,
    HostRoles,
    Network,
    Publish,
    check_bool,
    check_name,
    check_str,
    subnets_overlap,
)
from netd.service.context import Context, only
from netd.store.base import Condition, Delete, Put

log = logging.getLogger(__name__)

RETRY_GRACE = 10.0  # seconds a failed gateway item gets to succeed on its retries
_PORT_RE = re.compile(r"([0-9]{1,5}):([0-9]{1,5})(?:/(tcp|udp))?")
_HOST_PORT_RE = re.compile(r"([0-9]{1,5})(?:/(tcp|udp))?")


def gateway_item(network: str) -> str:
    return f"gateway:{network}"


def parse_port(text: Any) -> tuple[str, int, int]:
    """"HOSTPORT:PORT[/tcp|/udp]" -> (protocol, host port, port)."""
    value = check_str(text, "port")
    match = _PORT_RE.fullmatch(value)
    if match is None:
        raise InvalidInput(f"invalid port {value!r}: expected HOSTPORT:PORT[/tcp|/udp], "
                           "e.g. 8080:80/tcp")
    host_port, port = int(match.group(1)), int(match.group(2))
    for number in (host_port, port):
        if not 1 <= number <= 65535:
            raise InvalidInput(f"invalid port {value!r}: ports are 1..65535")
    return match.group(3) or "tcp", host_port, port


def _check_gateway_driver(network: Network, what: str) -> None:
    if network.driver not in SERVED_DRIVERS:
        raise InvalidInput(
            f"{what} serves {', '.join(sorted(SERVED_DRIVERS))} networks; network "
            f"{network.name} uses driver {network.driver}")


class Gateway:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    # --- expose / hide -----------------------------------------------------------
    def exposures(self, network: str | None = None) -> list[HostRoles]:
        """Every host's expose role (of one network, or all)."""
        known = self.ctx.last_known()
        if known is not None:  # the store is away: answer from the last known state
            found = [r for (net, _), r in sorted(known.roles.items())
                     if network is None or net == network]
        else:
            items, _ = self.ctx.store.list(self.ctx.keys.roles(network))
            found = [HostRoles.from_json(kv.value) for kv in items]
        return [r for r in found if EXPOSE in r.roles]

    def expose(self, request: dict[str, Any]) -> dict[str, Any]:
        ctx = self.ctx
        fields = only(request, {"network", "masquerade"})
        name = check_name(fields.get("network", ""), "network name")
        masquerade = check_bool(fields.get("masquerade", True), "masquerade")
        net_kv, network = ctx.network(name, fresh=True)
        _check_gateway_driver(network, "expose")
        me = ctx.host.name
        for other in self.exposures():
            if other.host != me or other.network == name:
                continue
            try:
                _, theirs = ctx.network(other.network, fresh=True)
            except NotFound:
                continue
            if subnets_overlap(theirs.subnet, network.subnet):
                raise Conflict(
                    f"this host already exposes network {theirs.name} ({theirs.subnet}, "
                    f"tenant {theirs.tenant}), which overlaps {name} ({network.subnet}): "
                    f"outside hosts could not tell them apart; hide {theirs.name} first")
        roles = (EXPOSE,) if masquerade else (EXPOSE, NO_MASQUERADE)
        key = ctx.keys.host_role(name, me)
        record = HostRoles(network=name, host=me, roles=roles)
        result = ctx.store.commit([Condition(ctx.keys.network(name), net_kv.mod_revision)],
                                  [Put(key, record.to_json())])
        if not result.succeeded:
            raise Conflict(f"network {name} changed while exposing it; try again")
        self._await(result.revision, name, f"network {name} is exposed in the store")
        log.info("exposed %s (masquerade %s)", name, masquerade)
        return {"network": name, "host": me, "masquerade": masquerade}

    def hide(self, request: dict[str, Any]) -> dict[str, Any]:
        ctx = self.ctx
        fields = only(request, {"network"})
        name = check_name(fields.get("network", ""), "network name")
        me = ctx.host.name
        key = ctx.keys.host_role(name, me)
        kv = ctx.store.get(key)
        if kv is None or EXPOSE not in HostRoles.from_json(kv.value).roles:
            raise NotFound(f"network {name} is not exposed by host {me}")
        result = ctx.store.commit([Condition(key, kv.mod_revision)], [Delete(key)])
        if not result.succeeded:
            raise Conflict(f"the exposure of {name} changed meanwhile; try again")
        self._await(result.revision, name, f"network {name} is hidden in the store")
        log.info("hid %s", name)
        return {"network": name, "host": me}

    # --- publish / unpublish -----------------------------------------------------
    def published(self, network: str | None = None) -> list[Publish]:
        known = self.ctx.last_known()
        if known is not None:  # the store is away: answer from the last known state
            found = [p for _, p in sorted(known.publishes.items())]
        else:
            items, _ = self.ctx.store.list(self.ctx.keys.publishes())
            found = [Publish.from_json(kv.value) for kv in items]
        return [p for p in found if network is None or p.network == network]

    def _local_endpoint(self, fields: dict[str, Any]) -> tuple[Network, Endpoint, int]:
        ctx = self.ctx
        if not fields.get("container") or not fields.get("network"):
            raise InvalidInput("publish needs a container and --network")
        _, network = ctx.network(check_name(fields["network"], "network name"), fresh=True)
        name = endpoint_name(check_str(fields["container"], "container reference"))
        kv = ctx.store.get(ctx.keys.endpoint(network.name, name))
        if kv is None:
            raise NotFound(f"{name} is not attached to network {network.name}")
        endpoint = Endpoint.from_json(kv.value)
        if endpoint.host != ctx.host.name:
            raise Conflict(f"{name} is attached on host {endpoint.host}; publish its ports "
                           "with that host's netctl")
        return network, endpoint, kv.mod_revision

    def publish(self, request: dict[str, Any]) -> dict[str, Any]:
        ctx = self.ctx
        fields = only(request, {"container", "network", "port"})
        protocol, host_port, port = parse_port(fields.get("port"))
        network, endpoint, ep_revision = self._local_endpoint(fields)
        _check_gateway_driver(network, "publish")
        me = ctx.host.name
        record = Publish(host=me, protocol=protocol, host_port=host_port,
                         network=network.name, endpoint=endpoint.name, port=port)
        key = ctx.keys.publish(me, protocol, host_port)
        existing = ctx.store.get(key)
        if existing is None:
            result = ctx.store.commit(
                [Condition(key, 0), Condition(ctx.keys.endpoint(network.name, endpoint.name),
                                              ep_revision)],
                [Put(key, record.to_json())])
            if not result.succeeded:
                existing = ctx.store.get(key)
                if existing is None:
                    raise Conflict(f"{endpoint.name} changed while publishing; try again")
            revision = result.revision
        if existing is not None:
            held = Publish.from_json(existing.value)
            if held != record:
                raise Conflict(
                    f"host port {host_port}/{protocol} is already published on host {me} "
                    f"(to {held.endpoint} port {held.port} on network {held.network})")
            revision = existing.mod_revision
        self._await(revision, network.name, f"{host_port}/{protocol} is published in the store")
        log.info("published %s/%s to %s:%d", host_port, protocol, endpoint.name, port)
        return record.to_dict()

    def unpublish(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        """The endpoint's published ports on this host (one, with `port`: HOSTPORT[/proto])
        are removed."""
        ctx = self.ctx
        fields = only(request, {"container", "network", "port"})
        wanted: tuple[str | None, int] | None = None
        if fields.get("port") is not None:
            text = check_str(fields["port"], "port")
            match = _HOST_PORT_RE.fullmatch(text)
            if match is None:
                raise InvalidInput(f"invalid port {text!r}: expected HOSTPORT[/tcp|/udp]")
            wanted = (match.group(2), int(match.group(1)))
        if not fields.get("container") or not fields.get("network"):
            raise InvalidInput("unpublish needs a container and --network")
        net = check_name(fields["network"], "network name")
        name = endpoint_name(check_str(fields["container"], "container reference"))
        me = ctx.host.name
        items, _ = ctx.store.list(ctx.keys.publishes(me))
        found = []
        for kv in items:
            p = Publish.from_json(kv.value)
            if p.network != net or p.endpoint != name:
                continue
            if wanted is not None and (p.host_port != wanted[1]
                                       or wanted[0] not in (None, p.protocol)):
                continue
            found.append((kv, p))
        if not found:
            raise NotFound(f"{name} on network {net} has no "
                           + (f"published port {fields['port']}" if wanted else "published ports")
                           + f" on host {me}")
        result = ctx.store.commit([Condition(kv.key, kv.mod_revision) for kv, _ in found],
                                  [Delete(kv.key) for kv, _ in found])
        if not result.succeeded:
            raise Conflict(f"the published ports of {name} changed meanwhile; try again")
        self._await(result.revision, net, "unpublished in the store")
        return [p.to_dict() for _, p in found]

    def _await(self, revision: int, network: str, done: str) -> None:
        """Wait until this host's gateway applied `revision`; an item that failed is
        given its retries (a network's bridge appears when its driver's worker, which
        runs beside the gateway's, built it)."""
        item = gateway_item(network)
        error = self.ctx.await_apply(revision, item)
        deadline = time.monotonic() + RETRY_GRACE
        while error is not None and time.monotonic() < deadline:
            time.sleep(0.1)
            error = self.ctx.reconciler.item_error(item)
        if error is not None:
            raise DatapathError(f"{done}, but {error}; this host follows once it can "
                                "(see netctl status)")




__all__ = ["Gateway", "parse_port"]
