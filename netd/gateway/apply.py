"""Makes the kernel match a GatewayPlan, idempotently; adopts what a previous process
built (nothing is flushed at start) and sweeps what no plan names only after the first
full sync.

Order per router: namespace (its sysctls: forwarding on, reverse-path filter off: the
router sees replies of connections that came in through another host's gateway), the
uplink veth with the transfer /30 and the router's default route to the host, then per
network the gateway veth (host end a port of the network's bridge, router end carrying
the gateway address and the network's endpoints as permanent neighbours), then the
router's nft table. Then the host: its nft tables and the routes of exposed subnets to
their router (netd's route protocol). A network whose bridge does not exist yet (its
driver has not built it) fails alone and is retried.

Which router namespaces this daemon made is kept in `<state dir>/gateway.json`,
written before one is created, so a restarted daemon can sweep one it no longer needs.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from netd.errors import DatapathError, NetdError
from netd.gateway import kernel
from netd.gateway.model import GatewayPlan, GatewayPort, Router
from netd.gateway.names import GATEWAY_PORT, ROUTER_UPLINK, UPLINK, netns_path
from netd.gateway.nft import delete_host_tables, host_tables, router_table
from netd.netlink import RTPROT_NETD, Netlink, Route

log = logging.getLogger(__name__)

BRIDGE_WAIT = 1.0  # seconds a network's missing bridge is waited for before failing it
UPLINK_MTU = 65535 - 14  # the uplink carries whatever the networks' MTUs allow
HOST_SYSCTLS = {"net.ipv4.ip_forward": "1"}
ROUTER_SYSCTLS = {"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.rp_filter": "0",
                  "net.ipv4.conf.default.rp_filter": "0"}


def item(network: str) -> str:
    return f"gateway:{network}"


class GatewayApplier:
    def __init__(self, netlink: Netlink, state_dir: Path) -> None:
        self._nl = netlink
        self._known_file = state_dir / "gateway.json"
        self._routers: dict[str, Router] = {}  # netns -> router as applied
        self._host_text: str | None = None
        # (subnet, uplink, router ip) as applied; None: unknown (start, verify, a failure)
        self._routes: set[tuple[str, str, str]] | None = None
        # per router namespace: its sysctls are set, the table text last applied (a
        # verify pass forgets both); an attach elsewhere then costs the neighbour only
        self._prepared: set[str] = set()
        self._router_text: dict[str, str] = {}

    # --- the record of router namespaces ---------------------------------------------
    def _known(self) -> set[str]:
        try:
            return set(json.loads(self._known_file.read_text()).get("routers", []))
        except (OSError, ValueError):
            return set()

    def _remember(self, names: set[str]) -> None:
        tmp = self._known_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"routers": sorted(names)}))
        tmp.replace(self._known_file)

    # --- apply -----------------------------------------------------------------------
    def apply(self, plan: GatewayPlan, *, sweep: bool, verify: bool) -> tuple[int, dict[str, str]]:
        """(kernel changes, errors by item) after making the kernel match `plan`."""
        errors: dict[str, str] = {}
        changed = 0
        if verify:
            self._host_text = None
            self._prepared.clear()
            self._router_text.clear()
            self._routes = None
        known = self._known()
        wanted = {r.netns for r in plan.routers}
        if not wanted <= known:
            self._remember(known | wanted)
        if not plan.empty:
            try:
                kernel.sysctls(None, HOST_SYSCTLS)
                for routed in plan.routed:  # published ports asked on 127.0.0.1
                    if any(f.network == routed.network for f in plan.forwards):
                        kernel.sysctls(
                            None, {f"net.ipv4.conf.{routed.bridge}.route_localnet": "1"})
            except NetdError as exc:
                errors["gateway:host"] = str(exc)
        for router in plan.routers:
            if not verify and self._routers.get(router.netns) == router:
                continue
            self._routers.pop(router.netns, None)
            n, failed = self._apply_router(router)
            changed += n
            errors.update(failed)
            if not failed:
                self._routers[router.netns] = router
        try:
            changed += self._apply_host(plan)
        except NetdError as exc:
            self._host_text = None
            for r in plan.routers:
                for p in r.ports:
                    errors.setdefault(item(p.network), str(exc))
            errors.setdefault("gateway:host", str(exc))
        if sweep:
            try:
                changed += self._sweep(plan, known | wanted)
            except NetdError as exc:
                errors["gateway:sweep"] = str(exc)
        return changed, errors

    def _apply_router(self, router: Router) -> tuple[int, dict[str, str]]:
        nl = self._nl
        path = netns_path(router.netns)
        changed = 0
        try:
            created = kernel.create_netns(router.netns)
            changed += created
            if created or router.netns not in self._prepared:
                kernel.sysctls(router.netns, ROUTER_SYSCTLS)
                self._prepared.add(router.netns)
            changed += nl.link_up("lo", path)
            pair = nl.ensure_veth_into_netns(router.uplink, ROUTER_UPLINK, path,
                                             mac=router.uplink_mac, mtu=UPLINK_MTU)
            changed += pair.changed
            changed += nl.ensure_address(router.uplink, router.host_ip, 30)
            changed += nl.ensure_address(ROUTER_UPLINK, router.router_ip, 30, path)
            # loopback sources (a published port asked on 127.0.0.1) may leave by it
            kernel.sysctls(None, {f"net.ipv4.conf.{router.uplink}.route_localnet": "1"})
            changed += nl.ensure_route(
                Route("0.0.0.0/0", oif=pair.peer.index, gateway=router.host_ip), path)
        except NetdError as exc:
            return changed, {item(p.network): f"router of tenant {router.tenant}: {exc}"
                             for p in router.ports}
        errors: dict[str, str] = {}
        for port in router.ports:
            try:
                changed += self._apply_port(port, path)
            except NetdError as exc:
                errors[item(port.network)] = str(exc)
        try:
            wanted = {p.router_link for p in router.ports} | {ROUTER_UPLINK, "lo"}
            for link in nl.list_links(netns=path):
                if link.name not in wanted and link.kind == "veth":
                    changed += nl.delete_link(link.name, path)
            text = router_table(router)
            if self._router_text.get(router.netns) != text:
                self._router_text.pop(router.netns, None)
                kernel.nft(router.netns, text)
                self._router_text[router.netns] = text
                changed += 1
        except NetdError as exc:
            for p in router.ports:
                errors.setdefault(item(p.network), str(exc))
        return changed, errors

    def _apply_port(self, port: GatewayPort, path: str) -> int:
        nl = self._nl
        bridge = nl.get_link(port.bridge)
        deadline = time.monotonic() + BRIDGE_WAIT
        while bridge is None and time.monotonic() < deadline:
            time.sleep(0.05)  # the driver's worker builds it beside us (a new network)
            bridge = nl.get_link(port.bridge)
        if bridge is None:
            raise DatapathError(f"bridge {port.bridge} of network {port.network} does not "
                                "exist yet")
        pair = nl.ensure_veth_into_netns(port.host_link, port.router_link, path,
                                         mac=port.mac, mtu=port.mtu, master=bridge)
        changed = pair.changed
        changed += nl.ensure_address(port.router_link, port.gateway, port.prefixlen, path,
                                     fresh=pair.created)
        have = nl.neigh_entries(port.router_link, path)
        want = dict(port.neighbours)
        for ip in sorted(have.keys() - want.keys()):
            changed += nl.neigh_del(port.router_link, ip, path)
        for ip, mac in port.neighbours:
            if have.get(ip) != mac:
                changed += nl.neigh_set(port.router_link, ip, mac, path)
        return changed

    def _apply_host(self, plan: GatewayPlan) -> int:
        nl = self._nl
        changed = 0
        if not plan.empty:
            text = host_tables(plan)
            if text != self._host_text:
                kernel.nft(None, text)
                self._host_text = text
                changed += 1
        elif self._host_text != "":
            text = delete_host_tables(kernel.tables())
            if text:
                kernel.nft(None, text)
                changed += 1
            self._host_text = ""
        routes: set[tuple[str, str, str]] = {
            (subnet, r.uplink, r.router_ip) for r in plan.routers for subnet in r.exposed}
        if routes != self._routes:
            uplinks = {link.index: link.name for link in nl.list_links(UPLINK.prefix)
                       if UPLINK.matches(link.name)}
            keep: set[tuple[str, int]] = set()
            complete = True
            for subnet, uplink, via in sorted(routes):
                link = nl.get_link(uplink)
                if link is None:  # its router failed: kept unknown, tried again
                    complete = False
                    continue
                changed += nl.ensure_route(Route(subnet, oif=link.index, gateway=via))
                keep.add((subnet, link.index))
            for route in nl.list_routes(protocol=RTPROT_NETD):
                if route.oif in uplinks and (route.dst, route.oif) not in keep:
                    changed += nl.delete_route(route)
            self._routes = routes if complete else None
        return changed

    def _sweep(self, plan: GatewayPlan, known: set[str]) -> int:
        nl = self._nl
        changed = 0
        wanted = {r.netns for r in plan.routers}
        for name in sorted(known - wanted):
            changed += kernel.delete_netns(name)
            self._routers.pop(name, None)
            self._prepared.discard(name)
            self._router_text.pop(name, None)
        if known - wanted:
            self._remember(wanted)
        ports = {p.host_link for r in plan.routers for p in r.ports}
        uplinks = {r.uplink for r in plan.routers}
        for link in nl.list_links("nd"):
            stale = ((GATEWAY_PORT.matches(link.name) and link.name not in ports)
                     or (UPLINK.matches(link.name) and link.name not in uplinks))
            if stale:
                changed += nl.delete_link(link.name)
        return changed
