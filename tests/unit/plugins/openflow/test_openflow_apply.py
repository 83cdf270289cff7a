"""The openflow driver's apply logic over fakes (no root, no OVS): which ports and
tunnels it asks OVSDB for, which flows it installs and deletes, when stale flows from an
earlier process may go (only on a sweep), and how a refused flow fails its item."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from netd.model import Endpoint, Host, Network, mac_from_ip
from netd.plugin import ApplyReport, HostState, NetworkState
from plugins.openflow.cookies import Kind, flow_cookie, is_netd, stable_id
from plugins.openflow.driver import OpenFlowDriver
from plugins.openflow.names import host_veth_name, tunnel_port_name
from plugins.openflow.ovsdb import PortInfo
from plugins.openflow.pipeline import FLOOD, Flow
from plugins.openflow.switch import DumpedFlow
from tests.support.drivers import driver_context
from tests.support.fakenetlink import FakeNetlink

LOCAL = Host(name="h1", underlay_ip="192.0.2.1")
PEER = Host(name="h2", underlay_ip="192.0.2.2")
NET = Network(name="blue", subnet="10.1.0.0/24", gateway="10.1.0.1", vni=42, mtu=1458,
              driver="openflow", backend="gre")


class FakeOvsdb:
    def __init__(self) -> None:
        self.table: dict[str, PortInfo] = {}
        self.next_ofport = 1
        self.calls: list[tuple[str, str]] = []

    def ports(self, bridge: str) -> dict[str, PortInfo]:
        return dict(self.table)

    def ensure_port(self, bridge: str, name: str, *, type: str = "",
                    options: dict[str, str] | None = None, owner: str) -> None:
        self.calls.append(("ensure", name))
        old = self.table.get(name)
        ofport = old.ofport if old else self.next_ofport
        if old is None:
            self.next_ofport += 1
        self.table[name] = PortInfo(name, ofport, type, dict(options or {}),
                                    {"netd-owner": owner})

    def delete_port(self, bridge: str, name: str) -> None:
        self.calls.append(("delete", name))
        self.table.pop(name, None)


@dataclass
class FakeApp:
    datapath: Any = field(default_factory=object)


@dataclass
class FakeSwitch:
    flows: dict[int, Flow] = field(default_factory=dict)
    refuse: set[str] = field(default_factory=set)  # items whose flows are refused
    dumps: int = 0
    app: FakeApp = field(default_factory=FakeApp)

    def datapath(self, wait: float = 0) -> Any:
        return self.app.datapath

    def dump(self, cookie: int = 0, mask: int = 0) -> list[DumpedFlow]:
        self.dumps += 1
        return [DumpedFlow(c, f.table, f.priority, 0) for c, f in self.flows.items()
                if is_netd(c)]

    def push(self, install: list[tuple[Flow, str]], delete_cookies: Any = (),
             delete_owners: Any = ()) -> dict[Any, str]:
        errors: dict[Any, str] = {}
        for cookie in delete_cookies:
            self.flows.pop(cookie, None)
        for flow, item in install:
            if item in self.refuse:
                errors[item] = "OFPET_FLOW_MOD_FAILED/OFPFMFC_TABLE_FULL"
                continue
            self.flows[flow.cookie] = flow
        return errors


def driver(nl: FakeNetlink) -> tuple[OpenFlowDriver, FakeOvsdb, FakeSwitch]:
    d = OpenFlowDriver(driver_context("openflow", host=LOCAL, netlink=nl))  # type: ignore[arg-type]
    ovs, switch = FakeOvsdb(), FakeSwitch()
    d._ovs = ovs  # type: ignore[assignment]
    d._switch = switch
    d._offloads_off = lambda host_end, netns, ifname: None  # type: ignore[method-assign]
    return d, ovs, switch


def ep(name: str, last: int, netns: str, host: str = "h1") -> Endpoint:
    ip = f"10.1.0.{last}"
    return Endpoint(network=NET.name, name=name, container=name, netns=netns, host=host,
                    ifname="eth0", ip=ip, mac=mac_from_ip(ip))


def desired(local: list[Endpoint], remote: list[Endpoint]) -> HostState:
    peers = (PEER,) if remote else ()
    ns = NetworkState(NET, tuple(local), tuple(remote), peers)
    return HostState(host=LOCAL, networks={NET.name: ns}, hosts={"h1": LOCAL, "h2": PEER})


def ok(report: ApplyReport) -> ApplyReport:
    assert report.errors == {}
    return report


def test_ports_tunnels_and_flows_then_nothing_on_a_second_apply() -> None:
    nl = FakeNetlink()
    a = nl.add_netns("/run/netns/a")
    d, ovs, switch = driver(nl)
    state = desired([ep("a", 10, a)], [ep("b", 11, "/run/netns/b", host="h2")])
    ok(d.apply(state, sweep=False, verify=True))
    veth, tunnel = host_veth_name("blue", "a"), tunnel_port_name("gre", PEER.underlay_ip)
    assert set(ovs.table) == {veth, tunnel}
    assert ovs.table[tunnel].options == {"remote_ip": "192.0.2.2", "key": "flow"}
    assert nl.get_link(veth) is not None
    installed = dict(switch.flows)
    assert all(is_netd(c) for c in installed)
    calls = len(ovs.calls)
    report = ok(d.apply(state, sweep=True, verify=False))
    assert report.changed == 0 and switch.flows == installed and len(ovs.calls) == calls


def test_a_restarted_process_changes_nothing_and_sweeps_only_after_its_first_sync() -> None:
    nl = FakeNetlink()
    a = nl.add_netns("/run/netns/a")
    first, _, switch = driver(nl)
    state = desired([ep("a", 10, a)], [])
    ok(first.apply(state, sweep=False, verify=True))
    stale = flow_cookie(Kind.ENDPOINT, 0xABCDEF, "old")
    switch.flows[stale] = Flow(50, 7, Kind.ENDPOINT, 0xABCDEF)
    switch.flows[0x1234] = Flow(200, 7, Kind.PIPELINE, 0)  # foreign cookie
    table = dict(switch.flows)
    second, _, _ = driver(nl)
    second._ovs, second._switch = first._ovs, first._switch
    second._applied_ports.clear()
    report = ok(second.apply(state, sweep=False, verify=True))
    assert switch.flows == table  # nothing added; the stale one waits for the sweep
    assert report.changed == 0
    ok(second.apply(state, sweep=True, verify=True))
    assert stale not in switch.flows and 0x1234 in switch.flows


def test_flows_this_process_no_longer_wants_go_at_once() -> None:
    nl = FakeNetlink()
    a, b = nl.add_netns("/run/netns/a"), nl.add_netns("/run/netns/b")
    d, ovs, switch = driver(nl)
    ok(d.apply(desired([ep("a", 10, a), ep("b", 11, b)], []), sweep=False, verify=False))
    def of_b() -> list[Flow]:
        return [f for f in switch.flows.values()
                if f.kind is Kind.ENDPOINT and f.owner == stable_id("blue/b")]

    assert of_b()
    ok(d.apply(desired([ep("a", 10, a)], []), sweep=False, verify=False))
    assert of_b() == []
    flood = [f for f in switch.flows.values() if f.table == FLOOD and f.actions]
    assert flood and all(len(f.actions) == 1 for f in flood)  # a's port only
    assert not any(f.match and dict(f.match).get("eth_src") == mac_from_ip("10.1.0.11")
                   for f in switch.flows.values())
    assert host_veth_name("blue", "b") not in ovs.table
    assert nl.get_link(host_veth_name("blue", "b")) is None


def test_a_refused_flow_fails_its_endpoint_and_is_retried() -> None:
    nl = FakeNetlink()
    a = nl.add_netns("/run/netns/a")
    d, _, switch = driver(nl)
    switch.refuse.add("endpoint:blue/a")
    state = desired([ep("a", 10, a)], [])
    report = d.apply(state, sweep=False, verify=False)
    assert report.errors == {
        "endpoint:blue/a": "switch refused a flow: OFPET_FLOW_MOD_FAILED/OFPFMFC_TABLE_FULL"}
    switch.refuse.clear()
    ok(d.apply(state, sweep=False, verify=False))
    assert any(dict(f.match).get("eth_src") == mac_from_ip("10.1.0.10")
               for f in switch.flows.values())


def test_a_switch_that_is_not_there_fails_the_networks() -> None:
    nl = FakeNetlink()
    d, _, _ = driver(nl)
    d._switch = None
    d._ovs = None
    d._remote = "unix:/nonexistent/db.sock"
    report = d.apply(desired([], []), sweep=False, verify=True)
    assert "no OVSDB socket at /nonexistent/db.sock" in report.errors["network:blue"]
