"""Container plumbing over the fake netlink: plug is idempotent, rolls back what it
made on failure, closes its container socket; link naming keeps drivers apart."""

from __future__ import annotations

import errno

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from netd.errors import DatapathError
from netd.netlink import ADDRGENMODE_NONE, RTPROT_NETD, Route, tolerant
from netd.plumbing import (
    ARP_RETRANS_MS,
    ContainerPort,
    PlugFailed,
    claim,
    host_end_ok,
    plug,
    role_of,
    siblings_to_replug,
    unplug,
)
from tests.support.fakenetlink import FakeNetlink

CT = "/run/netns/fake-ct"
PORT = ContainerPort(
    host_name="ndq0000aaaa", netns=CT, ifname="eth0", mac="02:42:0a:01:00:05", mtu=1450,
    ip="10.1.0.5", prefixlen=24, gateway="10.1.0.1",
)


@pytest.fixture
def nl() -> FakeNetlink:
    fake = FakeNetlink()
    fake.add_netns(CT)
    fake.ensure_bridge("ndq1", 1450)
    return fake


def test_plug_builds_the_container_port_and_twice_changes_nothing(nl: FakeNetlink) -> None:
    bridge = nl.get_link("ndq1")
    assert plug(nl, PORT, master=bridge) > 0  # type: ignore[arg-type]
    assert nl.open_sockets == set()  # the container's socket is closed again
    writes = nl.writes
    assert plug(nl, PORT, master=bridge) == 0  # type: ignore[arg-type]
    assert nl.writes == writes
    peer = nl.get_link("eth0", CT)
    host = nl.get_link(PORT.host_name)
    assert peer is not None and (peer.mac, peer.mtu, peer.up) == (PORT.mac, 1450, True)
    assert host_end_ok(host, bridge, 1450)
    assert host is not None and host.addrgenmode == ADDRGENMODE_NONE
    assert nl.addresses("eth0", CT) == {("10.1.0.5", 24)}
    assert nl.arp_retrans("eth0", CT) == ARP_RETRANS_MS
    default = [r for r in nl.routes(CT) if r.dst == "0.0.0.0/0"]
    assert default == [Route("0.0.0.0/0", oif=peer.index, gateway="10.1.0.1")]
    assert default[0].protocol == RTPROT_NETD


def test_plug_failure_removes_the_host_end_it_created(nl: FakeNetlink) -> None:
    nl.fail_on("ensure_address", "eth0", CT)
    with pytest.raises(PlugFailed, match="injected") as failed:
        plug(nl, PORT)
    assert failed.value.changed > 0
    assert nl.open_sockets == set()
    assert nl.get_link(PORT.host_name) is None and nl.get_link("eth0", CT) is None


def test_plug_failure_keeps_an_existing_port_unless_its_container_is_gone(
    nl: FakeNetlink,
) -> None:
    plug(nl, PORT)
    nl.fail_on("ensure_arp_retrans", "eth0", CT)
    with pytest.raises(PlugFailed):
        plug(nl, PORT)
    assert nl.get_link(PORT.host_name) is not None  # existed before: kept
    nl.clear_failures()
    nl.remove_netns(CT)
    nl.add_link(PORT.host_name, "veth")  # a host end whose container vanished
    nl.add_netns(CT)
    nl.remove_netns(CT)
    with pytest.raises(PlugFailed, match="does not exist"):
        plug(nl, PORT)
    assert nl.get_link(PORT.host_name) is None
    assert unplug(nl, PORT.host_name) == 0


def test_no_default_route_without_a_gateway_and_a_foreign_default_is_left(
    nl: FakeNetlink,
) -> None:
    from dataclasses import replace

    plug(nl, replace(PORT, gateway=None))
    assert [r for r in nl.routes(CT) if r.dst == "0.0.0.0/0"] == []
    nl.add_link("eth1", "veth", netns=CT)
    nl.ensure_address("eth1", "192.168.9.2", 24, CT)
    nl.ensure_route(Route("0.0.0.0/0", oif=nl.get_link("eth1", CT).index,  # type: ignore[union-attr]
                          gateway="192.168.9.1", protocol=4), CT)
    assert plug(nl, PORT) == 0  # the container's own default route stays
    assert [r.protocol for r in nl.routes(CT) if r.dst == "0.0.0.0/0"] == [4]


def test_siblings_to_replug_are_the_ports_sharing_a_namespace_that_loses_one() -> None:
    staying = {"a": "/run/netns/x", "b": "/run/netns/y", "c": "/run/netns/x"}
    assert siblings_to_replug(["/run/netns/x"], staying) == {"a", "c"}
    assert siblings_to_replug([], staying) == set()


def test_name_roles_are_stable_bounded_and_never_shared_between_drivers() -> None:
    import plugins.weave.names  # noqa: F401  (claims weave's codes)

    port = claim("unit-a", "port", "qp", "hash")
    assert claim("unit-a", "port", "qp", "hash") is port  # same claim again: fine
    name = port.hashed("net/ep")
    assert name == port.hashed("net/ep") and len(name) <= 15 and role_of(name) == port
    tunnel = claim("unit-a", "tunnel", "qt", "number")
    assert tunnel.number(16777215) == "ndqt16777215" and tunnel.number_of("ndqt7") == 7
    assert tunnel.number_of("ndqt07") is None and role_of("eth0") is None
    with pytest.raises(ValueError, match="clash"):
        claim("unit-b", "bridge", "q", "number")  # a prefix of unit-a's codes
    with pytest.raises(ValueError, match="clash"):
        claim("unit-b", "bridge", "b", "number")  # weave's bridges
    with pytest.raises(ValueError):
        tunnel.number(0)


def _raise(code: int) -> None:
    raise NetlinkError(code, "kernel says no")


def test_tolerant_counts_done_and_already_done_and_names_real_failures() -> None:
    assert tolerant("add x", lambda: None) == 1
    assert tolerant("del x", lambda: _raise(errno.ENODEV), absent_ok=True) == 0
    assert tolerant("del route", lambda: _raise(errno.ESRCH), absent_ok=True) == 0
    assert tolerant("add x", lambda: _raise(errno.EEXIST), exists_ok=True) == 0
    with pytest.raises(DatapathError, match="cannot add x in netns /n: kernel says no"):
        tolerant("add x", lambda: _raise(errno.EEXIST), "/n")
    with pytest.raises(DatapathError, match="cannot del x"):
        tolerant("del x", lambda: _raise(errno.EPERM), absent_ok=True)
