"""Routes through the netlink facade in a namespace the test made: table, protocol and
onlink are written as asked, listing and sweeping by netd's protocol never touch a
route of another protocol, and deletes/adds are tolerant."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from netd.errors import DatapathError
from netd.netlink import RTPROT_NETD, Netlink, Route
from tests.functional.conftest import in_netns, netns_path

pytestmark = pytest.mark.root


@pytest.fixture
def ns(make_netns: Callable[[str], str]) -> Iterator[tuple[str, Netlink, int]]:
    """A namespace with a veth pair (both ends up, 10.77.0.1/24 on one), a Netlink into it
    and the ifindex of the addressed end."""
    name = make_netns("tnlr")
    in_netns(name, "ip", "link", "add", "va", "type", "veth", "peer", "name", "vb")
    in_netns(name, "ip", "addr", "add", "10.77.0.1/24", "dev", "va")
    in_netns(name, "ip", "link", "set", "va", "up")
    in_netns(name, "ip", "link", "set", "vb", "up")
    nl = Netlink()
    path = netns_path(name)
    link = nl.get_link("va", path)
    assert link is not None
    yield path, nl, link.index
    nl.close()


def ip_routes(path: str, *args: str) -> str:
    name = path.rsplit("/", 1)[1]
    return in_netns(name, "ip", "-4", "route", "show", *args).stdout


def test_route_with_table_protocol_and_onlink_is_written_once(
    ns: tuple[str, Netlink, int],
) -> None:
    path, nl, va = ns
    onlink = Route("10.88.0.0/24", oif=va, gateway="192.0.2.9", onlink=True, table=1234)
    device = Route("10.89.0.0/24", oif=va)
    assert nl.ensure_route(onlink, path) == 1
    assert nl.ensure_route(device, path) == 1
    assert nl.ensure_route(onlink, path) == 0  # already as asked
    assert nl.ensure_route(device, path) == 0
    shown = ip_routes(path, "table", "1234")
    assert f"10.88.0.0/24 via 192.0.2.9 dev va proto {RTPROT_NETD} onlink" in shown
    assert f"10.89.0.0/24 dev va proto {RTPROT_NETD} scope link" in ip_routes(path)
    assert nl.list_routes(path, table=1234, protocol=RTPROT_NETD) == [onlink]
    assert device in nl.list_routes(path, protocol=RTPROT_NETD)


def test_changed_route_is_replaced_and_foreign_route_is_refused(
    ns: tuple[str, Netlink, int],
) -> None:
    path, nl, va = ns
    assert nl.ensure_route(Route("10.90.0.0/24", oif=va, gateway="10.77.0.2"), path) == 1
    assert nl.ensure_route(Route("10.90.0.0/24", oif=va, gateway="10.77.0.3"), path) == 1
    assert "10.90.0.0/24 via 10.77.0.3" in ip_routes(path)
    assert "10.77.0.2" not in ip_routes(path)
    in_netns(path.rsplit("/", 1)[1], "ip", "route", "add", "10.91.0.0/24", "via", "10.77.0.2")
    with pytest.raises(DatapathError, match="not netd's"):
        nl.ensure_route(Route("10.91.0.0/24", oif=va, gateway="10.77.0.3"), path)
    assert "10.91.0.0/24 via 10.77.0.2 dev va \n" in ip_routes(path)  # proto boot, untouched


def test_sweep_removes_only_netds_unwanted_routes_and_delete_is_tolerant(
    ns: tuple[str, Netlink, int],
) -> None:
    path, nl, va = ns
    keep = Route("10.92.0.0/24", oif=va, gateway="10.77.0.2")
    stale = Route("10.93.0.0/24", oif=va, gateway="10.77.0.2")
    stale_other_table = Route("10.94.0.0/24", oif=va, gateway="10.77.0.2", table=1234)
    for route in (keep, stale, stale_other_table):
        nl.ensure_route(route, path)
    in_netns(path.rsplit("/", 1)[1], "ip", "route", "add", "10.95.0.0/24", "via", "10.77.0.2")
    assert nl.sweep_routes([keep], path) == 1  # main table only
    shown = ip_routes(path)
    assert "10.92.0.0/24" in shown and "10.95.0.0/24" in shown  # kept; foreign
    assert "10.93.0.0/24" not in shown and "10.77.0.0/24" in shown  # swept; kernel's
    assert "10.94.0.0/24" in ip_routes(path, "table", "1234")
    assert nl.sweep_routes([keep], path, table=None) == 1
    assert ip_routes(path, "table", "1234") == ""
    assert nl.delete_route(stale, path) == 0  # already gone: success
    assert nl.delete_route(keep, path) == 1
    assert nl.delete_route(keep, path) == 0
