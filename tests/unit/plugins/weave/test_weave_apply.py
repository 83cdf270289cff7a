"""The weave driver's apply and sweep logic over the fake netlink (no root): incremental
apply skips what is in sync, failed items stay dirty and are retried while the others
proceed, sweep removes only weave's leftovers, the default route is handed over."""

from __future__ import annotations

import pytest

import plugins.weave.driver as driver_module
from netd.model import Endpoint, Host, Network, mac_from_ip
from netd.netlink import RTPROT_NETD, FdbEntry
from netd.plugin import ApplyReport, HostState, NetworkState, endpoint_id
from plugins.weave.driver import WeaveDriver
from plugins.weave.names import bridge_name, host_veth_name, vxlan_name
from tests.support.drivers import driver_context
from tests.support.fakenetlink import FakeNetlink

LOCAL = Host(name="h1", underlay_ip="192.0.2.1")
PEER = Host(name="h2", underlay_ip="192.0.2.2")
NET = Network(name="blue", subnet="10.1.0.0/24", gateway="10.1.0.1", vni=42, mtu=1450)
RED = Network(name="red", subnet="10.2.0.0/24", gateway="10.2.0.1", vni=43, mtu=1450)


def weave_over(nl: FakeNetlink) -> WeaveDriver:
    """A weave driver whose netlink is `nl` (builds no socket, starts no engine)."""
    return WeaveDriver(driver_context(host=LOCAL, netlink=nl))  # type: ignore[arg-type]


def ep(net: Network, name: str, last: int, netns: str, host: str = "h1") -> Endpoint:
    ip = net.subnet.rsplit(".", 1)[0] + f".{last}"
    return Endpoint(network=net.name, name=name, container=name, netns=netns, host=host,
                    ifname="eth0" if net is NET else "eth1", ip=ip, mac=mac_from_ip(ip))


def desired(*states: tuple[Network, list[Endpoint], list[Endpoint]]) -> HostState:
    networks = {}
    for net, local, remote in states:
        peers = (PEER,) if remote else ()
        networks[net.name] = NetworkState(net, tuple(local), tuple(remote), peers)
    return HostState(host=LOCAL, networks=networks, hosts={"h1": LOCAL, "h2": PEER})


def ok(report: ApplyReport) -> ApplyReport:
    assert report.errors == {}
    return report


def containers(nl: FakeNetlink, *names: str) -> list[str]:
    return [nl.add_netns(f"/run/netns/{n}") for n in names]


def test_apply_twice_changes_nothing_the_second_time_with_or_without_verify() -> None:
    nl = FakeNetlink()
    a, b = containers(nl, "a", "b")
    want = desired((NET, [ep(NET, "a", 5, a), ep(NET, "b", 6, b)], [ep(NET, "r", 9, "", "h2")]))
    drv = weave_over(nl)
    assert ok(drv.apply(want, sweep=True, verify=True)).changed > 0
    writes = nl.writes
    assert ok(drv.apply(want, sweep=True, verify=False)).changed == 0
    assert ok(drv.apply(want, sweep=True, verify=True)).changed == 0
    assert nl.writes == writes
    assert nl.open_sockets == set()
    vx = vxlan_name(NET.vni)
    assert nl.fdb_entries(vx) == {
        FdbEntry(mac_from_ip("10.1.0.9"), PEER.underlay_ip),
        FdbEntry("00:00:00:00:00:00", PEER.underlay_ip),
    }
    assert nl.neigh_entries(vx) == {"10.1.0.9": mac_from_ip("10.1.0.9")}
    port = nl.get_link(host_veth_name(NET.name, "a"))
    bridge = nl.get_link(bridge_name(NET.vni))
    assert port is not None and bridge is not None and port.master == bridge.index


def test_an_attach_touches_only_the_new_endpoint() -> None:
    nl = FakeNetlink()
    a, b = containers(nl, "a", "b")
    drv = weave_over(nl)
    ok(drv.apply(desired((NET, [ep(NET, "a", 5, a)], [])), sweep=True, verify=True))
    nl.fail_on("ensure_address", "eth0", a)  # any request for "a" would now fail
    report = drv.apply(desired((NET, [ep(NET, "a", 5, a), ep(NET, "b", 6, b)], [])),
                       sweep=True, verify=False)
    assert ok(report).changed > 0 and nl.addresses("eth0", b) == {("10.1.0.6", 24)}


def test_a_failed_endpoint_stays_dirty_and_is_retried_while_others_proceed() -> None:
    nl = FakeNetlink()
    a, b = containers(nl, "a", "b")
    want = desired((NET, [ep(NET, "a", 5, a), ep(NET, "b", 6, b)], []))
    drv = weave_over(nl)
    nl.fail_on("ensure_address", "eth0", a)
    report = drv.apply(want, sweep=True, verify=True)
    assert set(report.errors) == {endpoint_id(ep(NET, "a", 5, a))}
    assert nl.addresses("eth0", b) == {("10.1.0.6", 24)}  # b proceeded
    assert nl.get_link(host_veth_name(NET.name, "a")) is None  # a's new veth rolled back
    retried = drv.apply(want, sweep=True, verify=False)  # store event: no verify
    assert set(retried.errors) == set(report.errors)  # a tried again, b skipped
    nl.clear_failures()
    assert ok(drv.apply(want, sweep=True, verify=False)).changed > 0
    assert nl.addresses("eth0", a) == {("10.1.0.5", 24)}
    assert ok(drv.apply(want, sweep=True, verify=False)).changed == 0


def test_a_failed_network_fails_its_endpoints_and_is_retried() -> None:
    nl = FakeNetlink()
    (a,) = containers(nl, "a")
    want = desired((NET, [ep(NET, "a", 5, a)], []))
    drv = weave_over(nl)
    nl.fail_on("ensure_vxlan", vxlan_name(NET.vni))
    report = drv.apply(want, sweep=True, verify=False)
    assert set(report.errors) == {"network:blue", endpoint_id(ep(NET, "a", 5, a))}
    assert "not ready" in report.errors[endpoint_id(ep(NET, "a", 5, a))]
    nl.clear_failures()
    ok(drv.apply(want, sweep=True, verify=False))
    assert nl.get_link(host_veth_name(NET.name, "a")) is not None


def test_a_vanished_container_fails_only_its_endpoint_and_leaves_no_veth() -> None:
    nl = FakeNetlink()
    a, b = containers(nl, "a", "b")
    nl.remove_netns(a)
    report = weave_over(nl).apply(desired((NET, [ep(NET, "a", 5, a), ep(NET, "b", 6, b)], [])),
                                  sweep=True, verify=True)
    assert set(report.errors) == {endpoint_id(ep(NET, "a", 5, a))}
    assert "does not exist" in report.errors[endpoint_id(ep(NET, "a", 5, a))]
    assert nl.get_link(host_veth_name(NET.name, "a")) is None
    assert nl.get_link(host_veth_name(NET.name, "b")) is not None


def test_sweep_removes_only_weaves_leftovers() -> None:
    nl = FakeNetlink()
    (a,) = containers(nl, "a")
    for name, kind in (("ndb77", "bridge"), ("ndv77", "vxlan"), ("ndh0badf00d", "veth")):
        nl.add_link(name, kind)  # weave's, from before a restart
    for name, kind in (("eth0", ""), ("ndzfoo", "bridge"), ("docker0", "bridge")):
        nl.add_link(name, kind)  # not weave's
    drv = weave_over(nl)
    want = desired((NET, [ep(NET, "a", 5, a)], []))
    ok(drv.apply(want, sweep=False, verify=True))
    assert nl.get_link("ndb77") is not None  # no sweep before the first full sync
    ok(drv.apply(want, sweep=True, verify=True))
    names = {link.name for link in nl.list_links()}
    assert {"ndb77", "ndv77", "ndh0badf00d"}.isdisjoint(names)
    assert {"eth0", "ndzfoo", "docker0", bridge_name(NET.vni)} <= names


def test_detach_removes_the_veth_and_the_last_one_removes_the_network() -> None:
    nl = FakeNetlink()
    a, b = containers(nl, "a", "b")
    drv = weave_over(nl)
    ok(drv.apply(desired((NET, [ep(NET, "a", 5, a), ep(NET, "b", 6, b)], [])),
                 sweep=True, verify=True))
    ok(drv.apply(desired((NET, [ep(NET, "b", 6, b)], [])), sweep=True, verify=False))
    assert nl.get_link(host_veth_name(NET.name, "a")) is None
    assert nl.get_link(bridge_name(NET.vni)) is not None
    ok(drv.apply(desired(), sweep=True, verify=False))
    assert nl.list_links("nd") == []


def test_remote_changes_are_written_as_a_delta() -> None:
    nl = FakeNetlink()
    (a,) = containers(nl, "a")
    r1, r2 = ep(NET, "r1", 8, "", "h2"), ep(NET, "r2", 9, "", "h2")
    drv = weave_over(nl)
    ok(drv.apply(desired((NET, [ep(NET, "a", 5, a)], [r1, r2])), sweep=True, verify=True))
    writes = nl.writes
    ok(drv.apply(desired((NET, [ep(NET, "a", 5, a)], [r1])), sweep=True, verify=False))
    assert nl.writes - writes == 2  # r2's fdb entry and neighbour, nothing else
    assert nl.neigh_entries(vxlan_name(NET.vni)) == {r1.ip: r1.mac}


def test_the_default_route_moves_to_a_sibling_when_its_endpoint_goes() -> None:
    nl = FakeNetlink()
    (c,) = containers(nl, "c")
    blue, red = ep(NET, "c", 5, c), ep(RED, "c", 5, c)
    drv = weave_over(nl)
    ok(drv.apply(desired((NET, [blue], []), (RED, [red], [])), sweep=True, verify=True))
    eth0 = nl.get_link("eth0", c)
    assert eth0 is not None
    assert [(r.oif, r.gateway) for r in nl.routes(c) if r.dst == "0.0.0.0/0"] == [
        (eth0.index, NET.gateway)
    ]
    ok(drv.apply(desired((RED, [red], [])), sweep=True, verify=False))
    eth1 = nl.get_link("eth1", c)
    assert eth1 is not None and nl.get_link("eth0", c) is None
    defaults = [r for r in nl.routes(c) if r.dst == "0.0.0.0/0"]
    assert [(r.oif, r.gateway, r.protocol) for r in defaults] == [
        (eth1.index, RED.gateway, RTPROT_NETD)
    ]


def test_unknown_backend_fails_the_network_and_its_endpoints() -> None:
    from dataclasses import replace

    nl = FakeNetlink()
    (a,) = containers(nl, "a")
    odd = replace(NET, backend="carrier-pigeon")
    report = weave_over(nl).apply(desired((odd, [ep(odd, "a", 5, a)], [])),
                                  sweep=True, verify=True)
    assert set(report.errors) == {"network:blue", endpoint_id(ep(odd, "a", 5, a))}
    assert nl.list_links("nd") == []


def test_an_attach_plans_only_the_new_endpoint_and_skips_an_unchanged_network(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As calc hands it over: the untouched network's NetworkState is the very same
    object and the changed one keeps its other endpoints' objects. The driver plans the
    new endpoint only and sends no request for the untouched network."""
    nl = FakeNetlink()
    names = [f"c{i}" for i in range(60)]
    paths = containers(nl, *names, "r")
    blue_eps = [ep(NET, n, 10 + i, p)
                for i, (n, p) in enumerate(zip(names, paths[:-1], strict=True))]
    red = NetworkState(RED, (ep(RED, "r", 5, paths[-1]),), (), ())
    drv = weave_over(nl)
    before = HostState(host=LOCAL, networks={"blue": NetworkState(NET, tuple(blue_eps[:-1]),
                                                                  (), ()), "red": red},
                       hosts={"h1": LOCAL})
    ok(drv.apply(before, sweep=True, verify=True))
    planned: list[str] = []
    real_plan = driver_module.port_plan

    def counting_plan(net: Network, endpoint: Endpoint) -> driver_module.PortPlan:
        planned.append(endpoint.name)
        return real_plan(net, endpoint)

    monkeypatch.setattr(driver_module, "port_plan", counting_plan)
    nl.fail_on("ensure_address", "eth1", paths[-1])  # any request for red's endpoint fails
    after = HostState(host=LOCAL, networks={"blue": NetworkState(NET, tuple(blue_eps), (), ()),
                                            "red": red}, hosts=before.hosts)
    assert ok(drv.apply(after, sweep=True, verify=False)).changed > 0
    assert planned == [names[-1]]
    assert nl.addresses("eth0", paths[-2]) == {(blue_eps[-1].ip, 24)}
