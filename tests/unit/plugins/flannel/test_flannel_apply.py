"""The flannel driver's apply over the fake netlink (no root) and the embedded store:
what it programs per remote lease (vxlan: neighbour, FDB, onlink route; host-gw: a
route via the PublicIP, refused when not on-link), removal when a lease goes, the
sweep of owned leftovers, and the address range an attach gets."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from netd.errors import Conflict, InvalidInput
from netd.leases import LeaseKeeper
from netd.model import Endpoint, Host, Network, mac_from_ip
from netd.netlink import RTPROT_NETD, FdbEntry, Route
from netd.plugin import HostState, NetworkState
from netd.store.embedded import EmbeddedStore
from plugins.flannel import names
from plugins.flannel.config import FlannelConfig, SubnetLease
from plugins.flannel.driver import FlannelDriver
from tests.support.drivers import driver_context
from tests.support.fakenetlink import FakeNetlink

LOCAL = Host(name="h1", underlay_ip="192.0.2.1")


def network(backend: str) -> Network:
    return Network(name="blue", subnet="10.5.0.0/16", gateway="10.5.0.1", vni=7,
                   mtu=1450 if backend == "vxlan" else 1500, driver="flannel",
                   backend=backend, options={"lease_ttl": "60"})


@pytest.fixture
def nl() -> FakeNetlink:
    fake = FakeNetlink()
    fake.add_link("ul0", mtu=1500)
    fake.ensure_address("ul0", "192.0.2.1", 24)
    return fake


def driver(nl: FakeNetlink, tmp_path: Path) -> FlannelDriver:
    store = EmbeddedStore(tmp_path / "db")
    ctx = driver_context("flannel", host=LOCAL, store=store, netlink=nl,  # type: ignore[arg-type]
                         state_dir=tmp_path)
    ctx.leases = LeaseKeeper(store, tmp_path)
    drv = FlannelDriver(ctx)
    drv.forwarding_path = tmp_path / "ip_forward"
    drv.forwarding_path.write_text("0\n")
    return drv


def state(net: Network, local: list[Endpoint], records: dict[str, str]) -> HostState:
    return HostState(host=LOCAL, networks={net.name: NetworkState(net, tuple(local), (), ())},
                     hosts={"h1": LOCAL}, records=records)


def lease_record(cfg: FlannelConfig, lease: SubnetLease) -> dict[str, str]:
    return {cfg.subnet_key(lease.subnet): lease.to_json()}


def endpoint(drv: FlannelDriver, nl: FakeNetlink, net: Network) -> Endpoint:
    scope = drv.address_range(net, None)
    ip = scope.subnet.rsplit(".", 1)[0] + ".5"
    netns = nl.add_netns("/run/netns/c1")
    return Endpoint(network=net.name, name="c1", container="c1", netns=netns, host="h1",
                    ifname="eth0", ip=ip, mac=mac_from_ip(ip))


def test_vxlan_programs_each_remote_lease_as_flanneld_and_forgets_it(
    nl: FakeNetlink, tmp_path: Path
) -> None:
    drv = driver(nl, tmp_path)
    net = network("vxlan")
    cfg = FlannelConfig.of(net, "/netd")
    ep = endpoint(drv, nl, net)
    mine = drv.subnets.held("blue").lease  # type: ignore[union-attr]
    peer = SubnetLease("10.5.200.0/24", "192.0.2.9", "vxlan", "0e:00:00:00:00:09", 1)
    records = {**lease_record(cfg, mine), **lease_record(cfg, peer)}
    report = drv.apply(state(net, [ep], records), sweep=False, verify=True)
    assert report.errors == {}
    assert drv.forwarding_path.read_text() == "1\n"
    dev, bridge = names.VXLAN.number(7), names.BRIDGE.number(7)
    assert nl.get_link(dev).mac == mine.vtep_mac  # type: ignore[union-attr]
    assert nl.addresses(dev) == {(mine.network_address, 32)}
    assert nl.addresses(bridge) == {(mine.gateway, 24)}
    assert nl.neigh_entries(dev) == {"10.5.200.0": "0e:00:00:00:00:09"}
    assert nl.fdb_entries(dev) == {FdbEntry("0e:00:00:00:00:09", "192.0.2.9")}
    index = nl.get_link(dev).index  # type: ignore[union-attr]
    assert Route("10.5.200.0/24", oif=index, gateway="10.5.200.0", onlink=True) in nl.routes()
    # the container: an address of this host's lease, default route via its gateway
    assert nl.addresses("eth0", ep.netns) == {(ep.ip, 24)}
    assert any(r.dst == "0.0.0.0/0" and r.gateway == mine.gateway for r in nl.routes(ep.netns))
    writes = nl.writes
    assert drv.apply(state(net, [ep], records), sweep=True, verify=False).changed == 0
    assert nl.writes == writes
    # the lease went (expired, revoked): its entries and route go
    report = drv.apply(state(net, [ep], lease_record(cfg, mine)), sweep=False, verify=False)
    assert report.errors == {}
    assert nl.neigh_entries(dev) == {} and nl.fdb_entries(dev) == set()
    assert [r for r in nl.routes() if r.protocol == RTPROT_NETD] == []


def test_host_gw_routes_via_public_ip_and_refuses_a_peer_off_link(
    nl: FakeNetlink, tmp_path: Path
) -> None:
    drv = driver(nl, tmp_path)
    net = network("host-gw")
    cfg = FlannelConfig.of(net, "/netd")
    ep = endpoint(drv, nl, net)
    near = SubnetLease("10.5.200.0/24", "192.0.2.9", "host-gw")
    far = SubnetLease("10.5.201.0/24", "198.51.100.7", "host-gw")
    records = {**lease_record(cfg, near), **lease_record(cfg, far)}
    report = drv.apply(state(net, [ep], records), sweep=False, verify=True)
    assert list(report.errors) == ["lease:blue/10.5.201.0/24"]
    assert "198.51.100.7 (subnet 10.5.201.0/24) is not on-link" in report.errors[
        "lease:blue/10.5.201.0/24"]
    ours = {r.dst: r for r in nl.routes() if r.protocol == RTPROT_NETD}
    assert set(ours) == {"10.5.200.0/24"}
    assert ours["10.5.200.0/24"].gateway == "192.0.2.9"


def test_sweep_removes_owned_leftovers_only(nl: FakeNetlink, tmp_path: Path) -> None:
    drv = driver(nl, tmp_path)
    net = network("vxlan")
    ep = endpoint(drv, nl, net)
    nl.add_link(names.BRIDGE.number(99), "bridge")  # a flannel network of before
    nl.add_link("ndb5", "bridge")  # weave's: not ours
    drv.apply(state(net, [ep], {}), sweep=False, verify=True)
    dev = nl.get_link(names.VXLAN.number(7))
    assert dev is not None
    stale = Route("10.5.99.0/24", oif=dev.index, gateway="10.5.99.0", onlink=True)
    foreign = Route("10.5.98.0/24", oif=dev.index, gateway="10.5.98.0", onlink=True,
                    protocol=4)
    nl.ensure_route(stale)
    nl.ensure_route(foreign)
    nl.neigh_set(dev.name, "10.5.99.0", "0e:00:00:00:00:99")
    nl.fdb_add(dev.name, "0e:00:00:00:00:99", "192.0.2.99")
    report = drv.apply(state(net, [ep], {}), sweep=True, verify=True)
    assert report.errors == {}
    assert nl.get_link(names.BRIDGE.number(99)) is None
    assert nl.get_link("ndb5") is not None
    assert stale not in nl.routes() and foreign in nl.routes()
    assert nl.neigh_entries(dev.name) == {} and nl.fdb_entries(dev.name) == set()


def test_fixed_addresses_outside_the_lease_and_inside_anothers(
    nl: FakeNetlink, tmp_path: Path
) -> None:
    drv = driver(nl, tmp_path)
    net = network("vxlan")
    cfg = FlannelConfig.of(net, "/netd")
    lease = drv.address_range(net, None)
    assert lease.gateway == lease.subnet.rsplit(".", 1)[0] + ".1"
    assert lease.subnet.endswith("/24") and cfg.leasable(lease.subnet)
    assert drv.address_range(net, lease.subnet.rsplit(".", 1)[0] + ".9") == lease
    assert drv.address_range(net, "10.5.0.50").subnet == "10.5.0.0/16"
    other = SubnetLease("10.5.200.0/24", "192.0.2.9", "vxlan", "0e:00:00:00:00:09", 1)
    drv.ctx.store.put(cfg.subnet_key(other.subnet), other.to_json())
    with pytest.raises(InvalidInput, match=r"leased by host 192\.0\.2\.9"):
        drv.address_range(net, "10.5.200.7")
    with pytest.raises(InvalidInput, match="gateway or broadcast"):
        drv.address_range(net, "10.5.201.1")


def test_network_create_writes_adopts_replaces_and_refuses(
    nl: FakeNetlink, tmp_path: Path
) -> None:
    drv = driver(nl, tmp_path)
    store = drv.ctx.store

    def create(net: Network) -> Network:
        prepared = drv.prepare_network(net)
        assert store.commit(list(prepared.conditions), list(prepared.operations)).succeeded
        return prepared.network

    before = store.revision()
    planned = drv.prepare_network(network("vxlan"))
    assert store.revision() == before  # plans only: the service commits
    blue = create(network("vxlan"))
    assert blue.options == planned.network.options
    assert blue.options["vni"] == "1" and blue.options["prefix"] == "/netd/flannel/blue"
    assert store.get("/netd/flannel/blue/config") is not None
    # a removed network's config under netd's prefix is replaced
    again = create(replace_subnet(network("vxlan"), "10.6.0.0/16"))
    assert "10.6.0.0/16" in store.get("/netd/flannel/blue/config").value  # type: ignore[union-attr]
    # an existing network is never overwritten, and a VNI clash is refused
    store.put(drv.ctx.keys.network("blue"), again.to_json())
    with pytest.raises(Conflict, match="already exists"):
        drv.prepare_network(network("vxlan"))
    red = Network(name="red", subnet="10.7.0.0/16", gateway="10.7.0.1", vni=8, mtu=1450,
                  driver="flannel", backend="vxlan")
    with pytest.raises(Conflict, match="already uses VNI 1"):
        drv.prepare_network(red)
    assert create(replace_options(red, vni="2")).options["vni"] == "2"
    # a foreign prefix's config is adopted, never replaced
    store.put("/coreos.com/network/config", '{"Network": "10.8.0.0/16"}')
    green = Network(name="green", subnet="10.8.0.0/16", gateway="10.8.0.1", vni=9,
                    mtu=1472, driver="flannel", backend="udp",
                    options={"prefix": "/coreos.com/network"})
    assert create(green).options["port"] == "8285"
    with pytest.raises(Conflict, match=r"Backend\.Type udp"):
        drv.prepare_network(replace(green, backend="vxlan"))
    assert store.get("/coreos.com/network/config").value == (  # type: ignore[union-attr]
        '{"Network": "10.8.0.0/16"}')


def replace_subnet(net: Network, subnet: str) -> Network:
    return replace(net, subnet=subnet, gateway=subnet.replace("0/16", "1"))


def replace_options(net: Network, **options: str) -> Network:
    return replace(net, options={**net.options, **options})
