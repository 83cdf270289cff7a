"""Routes netd installs, recognisable by their protocol number.

Every route netd writes carries rtm_protocol RTPROT_NETD (91), a number
/etc/iproute2/rt_protos does not assign to any routing daemon: `ip route show proto 91`
lists them, and a sweep removes exactly those that are no longer desired. A route of
another protocol is never changed or removed. A route is identified, as by the kernel,
by (table, destination, metric); gateway, device and the onlink flag are its value.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from netd.errors import DatapathError
from netd.netlink.links import AF_INET, LinkRef, Links
from netd.netlink.sockets import tolerant, where

RTPROT_NETD = 91  # rtm_protocol of every route netd installs (docs/drivers.md)
ROUTE_PROTO = RTPROT_NETD  # the older name
RT_TABLE_MAIN = 254
RTNH_F_ONLINK = 4
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
DEFAULT_DST = "0.0.0.0/0"


@dataclass(frozen=True)
class Route:
    """One IPv4 unicast route. `dst` is "a.b.c.d/len" ("0.0.0.0/0": default route);
    `oif` the ifindex of its device (0: none); without a gateway it is a device route
    (scope link)."""

    dst: str
    oif: int = 0
    gateway: str | None = None
    table: int = RT_TABLE_MAIN
    protocol: int = RTPROT_NETD
    onlink: bool = False
    metric: int = 0

    @property
    def key(self) -> tuple[int, str, int]:
        """What the kernel tells routes apart by: (table, dst, metric)."""
        return (self.table, self.dst, self.metric)


def _route_from_msg(msg: Any) -> Route:
    dst = msg.get_attr("RTA_DST") or "0.0.0.0"
    table = msg.get_attr("RTA_TABLE") or msg["table"]
    gateway = msg.get_attr("RTA_GATEWAY")
    return Route(
        dst=f"{dst}/{int(msg['dst_len'])}",
        oif=int(msg.get_attr("RTA_OIF") or 0),
        gateway=None if gateway is None else str(gateway),
        table=int(table),
        protocol=int(msg["proto"]),
        onlink=bool(msg["flags"] & RTNH_F_ONLINK),
        metric=int(msg.get_attr("RTA_PRIORITY") or 0),
    )


class Routes(Links):
    def list_routes(
        self,
        netns: str | None = None,
        *,
        table: int | None = RT_TABLE_MAIN,
        protocol: int | None = None,
    ) -> list[Route]:
        """IPv4 unicast routes of `table` (None: every table), of `protocol` (None: any)."""
        query: dict[str, Any] = {"family": AF_INET}
        if table is not None:
            query["table"] = table
        with self._reading("read routes", netns):
            msgs = list(self._ipr(netns).get_routes(**query))
        routes = [_route_from_msg(m) for m in msgs if m["type"] == RTN_UNICAST]
        return [
            r for r in routes
            if (table is None or r.table == table) and (protocol is None or r.protocol == protocol)
        ]

    def _write_route(self, command: str, route: Route, netns: str | None) -> Any:
        args: dict[str, Any] = {
            "dst": route.dst,
            "table": route.table,
            "proto": route.protocol,
            "priority": route.metric,
            "scope": RT_SCOPE_UNIVERSE if route.gateway else RT_SCOPE_LINK,
        }
        if route.oif:
            args["oif"] = route.oif
        if route.gateway:
            args["gateway"] = route.gateway
        if route.onlink:
            args["flags"] = RTNH_F_ONLINK
        ipr = self._ipr(netns)
        return lambda: ipr.route(command, **args)

    def route_to(self, ip: str, netns: str | None = None) -> Route | None:
        """The route the kernel would use to reach `ip` (`ip route get`); None when it
        has none (unreachable). A route without a gateway means `ip` is on-link."""
        ipr = self._ipr(netns)
        try:
            msgs = ipr.route("get", dst=ip)
        except NetlinkError as exc:
            if exc.code in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                return None
            raise DatapathError(f"cannot look up the route to {ip}{where(netns)}: {exc}") from None
        return _route_from_msg(msgs[0]) if msgs else None

    def ensure_route(self, route: Route, netns: str | None = None) -> int:
        """`route` is in the kernel as given. A route with the same (table, dst, metric)
        of another protocol is not netd's: left alone and reported."""
        for have in self.list_routes(netns, table=route.table):
            if have.key != route.key:
                continue
            if have == route:
                return 0
            if have.protocol != route.protocol:
                raise DatapathError(
                    f"route {route.dst} (table {route.table}){where(netns)} exists with "
                    f"protocol {have.protocol}, not netd's: remove it or change the network"
                )
        return tolerant(
            f"set route {route.dst} (table {route.table})",
            self._write_route("replace", route, netns),
            netns,
        )

    def delete_route(self, route: Route, netns: str | None = None) -> int:
        """Delete `route` (matched by table, dst, metric and protocol: the kernel never
        deletes another protocol's route for it); an absent route is success."""
        args: dict[str, Any] = {
            "dst": route.dst,
            "table": route.table,
            "proto": route.protocol,
            "priority": route.metric,
        }
        ipr = self._ipr(netns)
        return tolerant(
            f"delete route {route.dst} (table {route.table})",
            lambda: ipr.route("del", **args),
            netns,
            absent_ok=True,
        )

    def sweep_routes(
        self,
        keep: Iterable[Route],
        netns: str | None = None,
        *,
        table: int | None = RT_TABLE_MAIN,
        protocol: int = RTPROT_NETD,
    ) -> int:
        """Delete every route of `protocol` in `table` (None: all tables) whose
        (table, dst, metric) is not that of a route in `keep`."""
        wanted = {r.key for r in keep}
        changed = 0
        for route in self.list_routes(netns, table=table, protocol=protocol):
            if route.key not in wanted:
                changed += self.delete_route(route, netns)
        return changed

    def ensure_default_route(
        self, gateway: str, name: LinkRef, netns: str | None = None
    ) -> int:
        """A default route via `gateway` on `name`, tagged RTPROT_NETD. A default route
        that is not netd's, or netd's on another interface (another network attached
        first), is left alone: one default route per container."""
        link = self._need(name, netns)
        defaults = [r for r in self.list_routes(netns) if r.dst == DEFAULT_DST]
        mine = [r for r in defaults if r.oif == link.index]
        if any(r.gateway == gateway for r in mine):
            return 0
        if defaults and not mine:
            return 0
        route = Route(DEFAULT_DST, oif=link.index, gateway=gateway)
        if mine:
            route = Route(DEFAULT_DST, oif=link.index, gateway=gateway, metric=mine[0].metric)
        return tolerant(
            f"set default route via {gateway} on {link.name}",
            self._write_route("replace" if mine else "add", route, netns),
            netns,
            exists_ok=True,
        )
