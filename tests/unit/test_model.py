"""Validation at the edge: every bad field gets an InvalidInput naming it."""

from __future__ import annotations

import pytest

from netd.errors import HostLimit, InvalidInput
from netd.model import (
    Endpoint,
    Network,
    check_ip_in_subnet,
    check_mac,
    check_underlay_fits,
    mac_from_ip,
    network_mtu,
    subnets_overlap,
    validate_network,
)


def net(**kw: object) -> Network:
    return validate_network(**{"name": "blue", "subnet": "10.1.0.0/24", **kw})  # type: ignore[arg-type]


def test_defaults() -> None:
    n = net()
    assert (n.driver, n.backend, n.gateway, n.tenant, n.vni) == ("weave", "fastdp", "10.1.0.1",
                                                                "default", 0)
    assert n.mtu == 1450
    assert validate_network(name="f", subnet="10.2.0.0/16", driver="flannel").backend == "vxlan"
    assert validate_network(name="o", subnet="10.3.0.0/16", driver="openflow").backend == "gre"


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
        ({"driver": "calico"}, "unknown driver"),
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
    assert network_mtu("fastdp", 1500) == 1450
    assert network_mtu("sleeve", 1500) == 1500 - 28 - 14 - 8
    assert network_mtu("sleeve", 1500, encrypt=True) == 1500 - 28 - 14 - 8 - 28
    assert network_mtu("host-gw", 1500) == 1500


def test_overlap() -> None:
    assert subnets_overlap("10.0.0.0/8", "10.1.0.0/24")
    assert not subnets_overlap("10.1.0.0/24", "10.1.1.0/24")


def test_round_trip() -> None:
    n = net(vni=7, options={"prefix": "/x"})
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
        ({"options": {"prefix": 1}}, "driver option"),
        ({"options": {"": "x"}}, "driver option"),
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
    check_underlay_fits(blue, 1500)
    with pytest.raises(HostLimit, match=r"underlay MTU 1400 .* MTU 1450 plus 50 .* needs 1500"):
        check_underlay_fits(blue, 1400)
