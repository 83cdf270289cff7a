"""Validation at the edge: every bad field gets an InvalidInput naming it; what drivers,
backends, options and overheads exist comes from the loaded drivers' declarations."""

from __future__ import annotations

from typing import Any

import pytest

from netd.errors import HostLimit, InvalidInput
from netd.model import (
    Endpoint,
    HostRoles,
    Network,
    check_ifname,
    check_ip_in_subnet,
    check_mac,
    check_name,
    check_underlay_fits,
    mac_from_ip,
    network_mtu,
    parse_ip,
    parse_subnet,
    subnets_overlap,
    validate_network,
)
from netd.plugin import BackendSpec, DriverSpec, OptionSpec
from tests.support.drivers import WEAVE_SPECS, weave_backend

# stand-ins for drivers that are not built yet: only their declarations matter here
GRE = BackendSpec("gre", overhead=20 + 8 + 14)  # outer IPv4, GRE with key, inner Ethernet
FLANNEL = DriverSpec(
    name="flannel",
    backends=(BackendSpec("vxlan", 50), BackendSpec("udp", 28), BackendSpec("host-gw", 0)),
    default_backend="vxlan",
    options=(OptionSpec("prefix", str, "flannel's etcd prefix", "/coreos.com/network"),
             OptionSpec("port", int, "UDP port"),
             OptionSpec("directrouting", bool, "host-gw where possible", False)),
)
OPENFLOW = DriverSpec(name="openflow", backends=(GRE, BackendSpec("vxlan", 50)),
                      default_backend="gre")
ALL = {**WEAVE_SPECS, "flannel": FLANNEL, "openflow": OPENFLOW}


def net(**kw: Any) -> Network:
    fields: dict[str, Any] = {"name": "blue", "subnet": "10.1.0.0/24", "drivers": ALL, **kw}
    return validate_network(**fields)


def test_defaults() -> None:
    n = net()
    assert (n.driver, n.backend, n.gateway, n.tenant, n.vni) == ("weave", "fastdp", "10.1.0.1",
                                                                "default", 0)
    assert n.mtu == 1450
    assert net(driver="flannel").backend == "vxlan"
    assert net(driver="openflow").backend == "gre"


def test_a_driver_that_is_not_loaded_is_refused_naming_the_loaded_ones() -> None:
    with pytest.raises(InvalidInput, match=r"^driver flannel is not available in this netd "
                                           r"\(available: weave\)$"):
        net(driver="flannel", drivers=WEAVE_SPECS)
    with pytest.raises(InvalidInput, match=r"\(available: none\)"):
        net(drivers={})


def test_gre_with_key_overhead_reaches_the_mtu() -> None:
    assert net(driver="openflow").mtu == 1500 - 42 == 1458
    assert net(driver="openflow", underlay_mtu=9000).mtu == 9000 - 42
    with pytest.raises(InvalidInput, match=r"at most 1458 \(1500 less 42 bytes"):
        net(driver="openflow", mtu=1459)


def test_options_are_checked_against_the_driver_declaration() -> None:
    n = net(driver="flannel", options={"prefix": "/x", "port": "08472", "directrouting": True})
    assert n.options == {"prefix": "/x", "port": "8472", "directrouting": "true"}
    assert net(driver="flannel", options={"port": 8472}).options == {"port": "8472"}
    with pytest.raises(InvalidInput, match=r"unknown driver option 'prefx' for driver flannel: "
                                           r"valid options are prefix, port, directrouting; "
                                           r"every network also takes egress"):
        net(driver="flannel", options={"prefx": "/x"})
    with pytest.raises(InvalidInput, match=r"invalid value 'x' for option port of driver "
                                           r"flannel: expected an integer"):
        net(driver="flannel", options={"port": "x"})
    with pytest.raises(InvalidInput, match="expected true or false"):
        net(driver="flannel", options={"directrouting": "yes"})
    with pytest.raises(InvalidInput, match=r"unknown driver option 'prefix' for driver weave: "
                                           r"it takes no options; every network also "
                                           r"takes egress"):
        net(options={"prefix": "/x"})


def test_egress_is_an_option_of_every_driver() -> None:
    assert net(options={"egress": "False"}).options == {"egress": "false"}
    assert net(driver="flannel", options={"egress": True}).options == {"egress": "true"}
    with pytest.raises(InvalidInput, match=r"invalid value 'maybe' for option egress of driver "
                                           r"weave: expected true or false"):
        net(options={"egress": "maybe"})


def test_encryption_only_where_a_backend_declares_it() -> None:
    assert net(backend="sleeve", encrypt=True).encrypt
    with pytest.raises(InvalidInput, match=r"backend fastdp of driver weave cannot encrypt: "
                                           r"--encrypt needs --driver weave --backend sleeve"):
        net(encrypt=True)


def test_host_roles_round_trip() -> None:
    roles = HostRoles(network="blue", host="h1", roles=("expose",))
    assert HostRoles.from_json(roles.to_json()) == roles


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"subnet": "10.1.0.0/33"}, "invalid subnet"),
        ({"subnet": "10.1.0.5/24"}, "host bits"),
        ({"subnet": "10.1.0.0"}, "prefix length"),
        ({"subnet": "fd00::/64"}, "IPv4"),
        ({"subnet": "10.1.0.0/31"}, "/30"),
        ({"name": "a b"}, "network name"),
        ({"name": ""}, "network name"),
        ({"tenant": "x/y"}, "tenant name"),
        ({"driver": "calico"}, "not available in this netd"),
        ({"backend": "gre"}, "no backend"),
        ({"vni": 0}, "VNI"),
        ({"vni": 16_777_216}, "VNI"),
        ({"vni": "x"}, "VNI"),
        ({"mtu": 67}, "MTU"),
        ({"mtu": 65_536}, "MTU"),
        ({"gateway": "10.1.0.0"}, "gateway"),
        ({"gateway": "10.1.0.255"}, "gateway"),
        ({"gateway": "10.9.0.1"}, "gateway"),
        ({"encrypt": True}, "--encrypt"),
    ],
)
def test_bad_network(kw: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        net(**kw)


def test_ip_checks() -> None:
    n = net()
    assert check_ip_in_subnet("10.1.0.5", n) == "10.1.0.5"
    for ip, message in [
        ("10.1.1.5", "outside"),
        ("10.1.0.0", "network address"),
        ("10.1.0.255", "broadcast"),
        ("10.1.0.1", "gateway"),
        ("10.1.0", "invalid"),
        ("10.1.0.5/24", "invalid"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            check_ip_in_subnet(ip, n)


def test_mac() -> None:
    assert check_mac("02:AA:bb:cc:dd:ee") == "02:aa:bb:cc:dd:ee"
    for bad in ("01:00:5e:00:00:01", "00:00:00:00:00:00", "02:aa:bb", "zz:00:00:00:00:00"):
        with pytest.raises(InvalidInput):
            check_mac(bad)
    assert mac_from_ip("10.1.0.5") == "02:42:0a:01:00:05"
    check_mac(mac_from_ip("255.255.255.255"))


def test_mtu_per_backend() -> None:
    assert network_mtu(weave_backend("fastdp"), 1500) == 1450
    assert network_mtu(weave_backend("sleeve"), 1500) == 1500 - 28 - 14 - 8
    assert network_mtu(weave_backend("sleeve"), 1500, encrypt=True) == 1500 - 28 - 14 - 8 - 28
    assert network_mtu(GRE, 1500) == 1458
    assert network_mtu(BackendSpec("host-gw", 0), 1500) == 1500


def test_overlap() -> None:
    assert subnets_overlap("10.0.0.0/8", "10.1.0.0/24")
    assert not subnets_overlap("10.1.0.0/24", "10.1.1.0/24")


def test_round_trip() -> None:
    n = net(vni=7, driver="flannel", options={"prefix": "/x"})
    assert Network.from_json(n.to_json()) == n
    ep = Endpoint(network="blue", name="c1", container="c1", netns="/run/netns/c1", host="h1",
                  ifname="eth0", ip="10.1.0.5", mac="02:42:0a:01:00:05",
                  security_groups=("web",))
    assert Endpoint.from_json(ep.to_json()) == ep


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"vni": 1.9}, "VNI 1.9: expected an integer"),
        ({"vni": True}, "VNI True: expected an integer"),
        ({"mtu": 1400.0}, "MTU"),
        ({"mtu": "1400"}, "MTU"),
        ({"encrypt": "false"}, "expected true or false"),
        ({"options": "x"}, "driver options"),
        ({"options": {"": "x"}}, "unknown driver option ''"),
        ({"driver": "flannel", "options": {"prefix": 1}}, "expected a string"),
        ({"driver": "flannel", "options": {"port": 1.5}}, "expected an integer"),
        ({"driver": "flannel", "options": {"port": True}}, "expected an integer"),
        ({"driver": ["weave"]}, "driver"),
        ({"subnet": 10}, "invalid subnet"),
        ({"gateway": 167837697}, "gateway"),
    ],
)
def test_json_types_are_strict(kw: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        net(**kw)


@pytest.mark.parametrize(
    ("subnet", "what"),
    [
        ("224.1.0.0/16", "multicast"),
        ("239.255.0.0/24", "multicast"),
        ("240.0.0.0/8", "reserved"),
        ("255.255.255.0/24", "reserved"),
        ("127.1.0.0/16", "loopback"),
        ("0.0.0.0/8", "'this network'"),
        ("0.0.0.0/0", "'this network'"),
        ("192.0.0.0/2", "multicast"),
    ],
)
def test_unroutable_subnets_are_refused(subnet: str, what: str) -> None:
    with pytest.raises(InvalidInput, match=f"overlaps the {what}"):
        net(subnet=subnet)


def test_explicit_mtu_must_fit_the_underlay() -> None:
    assert net(mtu=1450).mtu == 1450
    with pytest.raises(InvalidInput, match=r"MTU 1500 is too large .* underlay MTU 1500: "
                                           r"at most 1450"):
        net(mtu=1500)
    assert net(mtu=8950, underlay_mtu=9000).mtu == 8950
    with pytest.raises(InvalidInput, match="at most 1422"):  # 1500 - 42 - 8 - 28
        net(mtu=1450, driver="weave", backend="sleeve", encrypt=True)
    assert net(mtu=1500, driver="flannel", backend="host-gw").mtu == 1500


def test_underlay_fits() -> None:
    blue = net()  # 1450 over fastdp
    check_underlay_fits(blue, 1500, weave_backend("fastdp"))
    with pytest.raises(HostLimit, match=r"underlay MTU 1400 .* MTU 1450 plus 50 .* needs 1500"):
        check_underlay_fits(blue, 1400, weave_backend("fastdp"))
    gre = net(driver="openflow")
    with pytest.raises(HostLimit, match=r"MTU 1458 plus 42 .* needs 1500"):
        check_underlay_fits(gre, 1499, GRE)


@pytest.mark.parametrize("check, value", [
    (lambda v: check_name(v, "network name"), "blue\n"),
    (lambda v: check_name(v, "tenant"), "default\n"),
    (check_ifname, "eth0\n"),
    (check_mac, "02:42:0a:00:00:01\n"),
    (parse_ip, "10.1.0.5\n"),
    (parse_ip, " 10.1.0.5"),
    (parse_subnet, "10.1.0.0/24\n"),
    (parse_subnet, "10.1.0.0/024"),
])
def test_trailing_newlines_and_odd_spellings_are_refused(check: Any, value: str) -> None:
    with pytest.raises(InvalidInput):
        check(value)


def test_plain_values_still_pass() -> None:
    assert check_name("blue", "network name") == "blue"
    assert check_ifname("eth0") == "eth0"
    assert str(parse_ip("10.1.0.5")) == "10.1.0.5"
    assert str(parse_subnet("10.1.0.0/24")) == "10.1.0.0/24"
