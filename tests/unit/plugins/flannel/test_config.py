"""flannel's schema: config defaults and JSON, adoption and refusal, lease records as
flanneld writes them."""

from __future__ import annotations

import json

import pytest

from netd.errors import Conflict, InvalidInput
from netd.model import Network
from plugins.flannel.config import (
    FlannelConfig,
    SubnetLease,
    adopt,
    parse_lease,
    parse_subnet_key,
    subnet_key_name,
    vtep_mac,
)


def net(subnet: str = "10.5.0.0/16", backend: str = "vxlan", **options: str) -> Network:
    return Network(name="blue", subnet=subnet, gateway="10.5.0.1", vni=7, mtu=1450,
                   driver="flannel", backend=backend, options=dict(options))


def test_defaults_are_flannels() -> None:
    cfg = FlannelConfig.of(net(), "/netd")
    assert cfg.prefix == "/netd/flannel/blue"
    assert (cfg.subnet_len, cfg.subnet_min, cfg.subnet_max) == (24, "10.5.1.0", "10.5.255.0")
    assert (cfg.vni, cfg.port, cfg.direct_routing, cfg.lease_ttl) == (1, 8472, False, 86400)
    assert FlannelConfig.of(net(backend="udp"), "/netd").port == 8285
    assert FlannelConfig.of(net("10.5.0.0/24"), "/netd").subnet_len == 25
    assert len(cfg.candidates()) == 255 and cfg.candidates()[0] == "10.5.1.0/24"
    assert json.loads(cfg.to_json()) == {
        "Network": "10.5.0.0/16", "SubnetLen": 24, "SubnetMin": "10.5.1.0",
        "SubnetMax": "10.5.255.0",
        "Backend": {"Type": "vxlan", "VNI": 1, "Port": 8472, "DirectRouting": False},
    }


@pytest.mark.parametrize("options,message", [
    ({"subnet_len": "16"}, "subnet_len 16"),
    ({"subnet_min": "10.5.1.7"}, "subnet_min 10.5.1.7"),
    ({"subnet_min": "10.5.9.0", "subnet_max": "10.5.3.0"}, "above subnet_max"),
    ({"vni": "0"}, "vni 0"),
    ({"prefix": "/x/"}, "trailing /"),
])
def test_bad_options_are_refused(options: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        FlannelConfig.of(net(**options), "/netd")


def test_adopt_takes_the_stored_values_and_refuses_conflicts() -> None:
    cfg = FlannelConfig.of(net(prefix="/coreos.com/network"), "/netd")
    stored = json.dumps({"Network": "10.5.0.0/16", "SubnetLen": 26,
                         "Backend": {"Type": "vxlan", "VNI": 4, "DirectRouting": True}})
    got = adopt(cfg, stored, {"prefix": "/coreos.com/network"})
    assert (got.subnet_len, got.vni, got.port, got.direct_routing) == (26, 4, 8472, True)
    assert got.subnet_min == "10.5.0.64"
    with pytest.raises(Conflict, match=r"Network 10\.5\.0\.0/16"):
        adopt(FlannelConfig.of(net("10.6.0.0/16"), "/netd"), stored, {})
    with pytest.raises(Conflict, match=r"Backend\.Type vxlan"):
        adopt(FlannelConfig.of(net(backend="host-gw"), "/netd"), stored, {})
    with pytest.raises(Conflict, match="-o vni=1 conflicts"):
        adopt(cfg, stored, {"vni": "1"})
    with pytest.raises(Conflict, match="no valid flannel config"):
        adopt(cfg, "{not json", {})
    # flannel's default backend is udp
    assert adopt(FlannelConfig.of(net(backend="udp"), "/netd"),
                 json.dumps({"Network": "10.5.0.0/16"}), {}).backend == "udp"


def test_lease_json_is_flannels_both_ways() -> None:
    lease = SubnetLease("10.5.3.0/24", "192.0.2.1", "vxlan", "0e:01:02:03:04:05", 1)
    assert json.loads(lease.to_json()) == {
        "PublicIP": "192.0.2.1", "PublicIPv6": None, "BackendType": "vxlan",
        "BackendData": {"VNI": 1, "VtepMAC": "0e:01:02:03:04:05"},
    }
    assert subnet_key_name("10.5.3.0/24") == "10.5.3.0-24"
    assert parse_subnet_key("10.5.3.0-24") == "10.5.3.0/24"
    assert parse_subnet_key("10.5.3.0-24&fc00::-64") == "10.5.3.0/24"
    assert parse_subnet_key("config") is None
    assert parse_lease("10.5.3.0-24", lease.to_json()) == lease
    flanneld = '{"PublicIP":"192.0.2.9","PublicIPv6":null,"BackendType":"host-gw"}'
    assert parse_lease("10.5.9.0-24", flanneld) == SubnetLease("10.5.9.0/24", "192.0.2.9",
                                                              "host-gw")
    assert parse_lease("10.5.9.0-24", '{"PublicIP": "nope"}') is None
    assert lease.gateway == "10.5.3.1" and lease.network_address == "10.5.3.0"


def test_vtep_mac_is_stable_unicast_and_local() -> None:
    mac = vtep_mac("h1", "blue")
    assert mac == vtep_mac("h1", "blue") != vtep_mac("h2", "blue")
    first = int(mac[:2], 16)
    assert first & 2 and not first & 1
