"""The Docker plugin's protocol answers, against a fake netd (no root, no dockerd)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from netd.runtimes.client import ApiError, unix_request
from netd.runtimes.docker import (
    DockerPlugin,
    PluginServer,
    endpoint_name,
    network_request,
    parse_pool_id,
)
from netd.runtimes.state import PluginState
from netd.store.keys import Keys
from tests.support.memstore import MemStore

NID = "n" * 64
EID = "e1" + "0" * 62


class FakeNetd:
    def __init__(self) -> None:
        self.nets: dict[str, dict[str, Any]] = {}
        self.eps: list[dict[str, Any]] = []
        self.created: list[dict[str, Any]] = []
        self.attached: list[dict[str, Any]] = []
        self.detached: list[tuple[str, str]] = []
        self.sticky: dict[tuple[str, str], str] = {}  # (network, name) -> reserved IP

    def network(self, name: str) -> dict[str, Any] | None:
        return self.nets.get(name)

    def networks(self) -> list[dict[str, Any]]:
        return list(self.nets.values())

    def create_network(self, request: dict[str, Any]) -> dict[str, Any]:
        if request["name"] in self.nets:
            raise ApiError(f"network {request['name']!r} already exists", 409)
        self.created.append(request)
        net = {"gateway": str(request.get("gateway") or ""), **request}
        self.nets[request["name"]] = net
        return net

    def endpoints(self, network: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.eps if network is None or e["network"] == network]

    def attach(self, request: dict[str, Any]) -> dict[str, Any]:
        self.attached.append(request)
        self.eps.append({"network": request["network"], "name": request["name"],
                         "ip": request["ip"], "host": "h1"})
        return request

    def detach(self, container: str, network: str, wait: bool = True
               ) -> dict[str, Any] | None:
        self.detached.append((container, network))
        before = len(self.eps)
        self.eps = [e for e in self.eps if (e["name"], e["network"]) != (container, network)]
        return {} if len(self.eps) < before else None

    def host_name(self) -> str:
        return "h1"

    def used_addresses(self, network: str) -> tuple[set[str], set[str]]:
        return ({e["ip"] for e in self.endpoints(network)},
                {ip for (net, _), ip in self.sticky.items() if net == network})

    def reservation(self, network: str, name: str) -> str | None:
        ip = self.sticky.get((network, name))
        held = [e for e in self.endpoints(network) if e["ip"] == ip and e["name"] != name]
        return None if held else ip


def plugin(state: PluginState | None = None, netd: FakeNetd | None = None
           ) -> tuple[DockerPlugin, FakeNetd]:
    netd = netd or FakeNetd()
    return DockerPlugin(netd, None, state or PluginState(None)), netd  # type: ignore[arg-type]


def call(p: DockerPlugin, path: str, **body: Any) -> dict[str, Any]:
    return p.handle(path, body)


def create(p: DockerPlugin, name: str = "blue", subnet: str = "10.1.0.0/24",
           gateway: str = "10.1.0.1", **generic: str) -> dict[str, Any]:
    return call(p, "/NetworkDriver.CreateNetwork", NetworkID=NID, Options={
        "com.docker.network.generic": {"network": name, **generic}},
        IPv4Data=[{"Pool": subnet, "Gateway": f"{gateway}/24"}], IPv6Data=[])


def test_activate_and_capabilities() -> None:
    p, _ = plugin()
    assert call(p, "/Plugin.Activate") == {"Implements": ["NetworkDriver", "IpamDriver"]}
    assert call(p, "/IpamDriver.GetCapabilities")["RequiresMACAddress"] is False
    assert "Err" in call(p, "/NetworkDriver.Nonsense")


def test_pools_are_spelled_in_their_ids() -> None:
    p, _ = plugin()
    answer = call(p, "/IpamDriver.RequestPool", Pool="10.1.0.0/24", SubPool="10.1.0.128/25")
    assert answer["Pool"] == "10.1.0.0/24"
    subnet, sub = parse_pool_id(answer["PoolID"])
    assert str(subnet) == "10.1.0.0/24" and str(sub) == "10.1.0.128/25"
    assert "--subnet" in call(p, "/IpamDriver.RequestPool", Pool="")["Err"]
    assert "IPv4 only" in call(p, "/IpamDriver.RequestPool", Pool="fd00::/64", V6=True)["Err"]
    outside = call(p, "/IpamDriver.RequestPool", Pool="10.1.0.0/24", SubPool="10.2.0.0/25")
    assert "not inside" in outside["Error"]


def test_addresses() -> None:
    p, netd = plugin()
    pool = "netd:10.1.0.0/24|10.1.0.128/25"
    gateway = call(p, "/IpamDriver.RequestAddress", PoolID=pool, Address="",
                   Options={"RequestAddressType": "com.docker.network.gateway"})
    assert gateway["Address"] == "10.1.0.1/24"
    fixed = call(p, "/IpamDriver.RequestAddress", PoolID=pool, Address="10.1.0.10")
    assert fixed["Address"] == "10.1.0.10/24"
    outside = call(p, "/IpamDriver.RequestAddress", PoolID=pool, Address="10.9.0.1")
    assert "not a host address of subnet 10.1.0.0/24" in outside["Err"]
    netd.nets["blue"] = {"name": "blue", "subnet": "10.1.0.0/24", "gateway": "10.1.0.1"}
    netd.eps.append({"network": "blue", "name": "web", "ip": "10.1.0.20", "host": "h2"})
    taken = call(p, "/IpamDriver.RequestAddress", PoolID=pool, Address="10.1.0.20")
    assert "already in use by web on host h2" in taken["Err"]
    for _ in range(20):
        auto = call(p, "/IpamDriver.RequestAddress", PoolID=pool, Address="")["Address"]
        assert auto.endswith("/24") and int(auto.split("/")[0].split(".")[3]) >= 128
        assert auto.split("/")[0] not in ("10.1.0.255",)
    assert "unknown pool" in call(p, "/IpamDriver.RequestAddress", PoolID="x")["Err"]


def test_create_network_maps_options_and_refuses_another_subnet() -> None:
    p, netd = plugin()
    assert create(p, tenant="acme", backend="sleeve", encrypt="true", mtu="1400",
                  extra="1") == {}
    assert netd.created == [{"name": "blue", "subnet": "10.1.0.0/24", "gateway": "10.1.0.1",
                             "tenant": "acme", "backend": "sleeve", "encrypt": True,
                             "mtu": 1400, "options": {"extra": "1"}}]
    assert create(p) == {}  # the same network again (another host): joined
    refused = create(p, subnet="10.2.0.0/24", gateway="10.2.0.1")
    assert "already exists in netd with subnet 10.1.0.0/24" in refused["Err"]
    with pytest.raises(Exception, match="expected an integer"):
        network_request("x", "10.0.0.0/24", "", {"vni": "abc"})


def test_endpoint_lifecycle_survives_a_restart_from_the_store() -> None:
    store, keys = MemStore(), Keys()
    p, netd = plugin(PluginState(store, keys, "h1"))
    create(p)
    answer = call(p, "/NetworkDriver.CreateEndpoint", NetworkID=NID, EndpointID=EID,
                  Interface={"Address": "10.1.0.10/24", "MacAddress": ""})
    assert answer == {"Interface": {"MacAddress": "02:42:0a:01:00:0a"}}
    assert store.get(keys.docker_network("h1", NID)) is not None
    assert store.get(keys.docker_endpoint("h1", EID)) is not None
    # a restarted netd reads the records back: Join and Leave still work
    p2, _ = plugin(PluginState(store, keys, "h1"), netd)
    joined = call(p2, "/NetworkDriver.Join", NetworkID=NID, EndpointID=EID,
                  SandboxKey="/proc/self/ns/net")
    assert joined == {"DisableGatewayService": True}
    assert netd.attached == [{"container": "/proc/self/ns/net", "name": endpoint_name(EID),
                              "network": "blue", "ip": "10.1.0.10"}]
    assert call(p2, "/NetworkDriver.Leave", NetworkID=NID, EndpointID=EID) == {}
    assert netd.detached == [(endpoint_name(EID), "blue")]
    assert call(p2, "/NetworkDriver.DeleteEndpoint", NetworkID=NID, EndpointID=EID) == {}
    assert PluginState(store, keys, "h1").endpoints == {}
    assert PluginState(store, keys, "h2").networks == {}  # per host
    assert call(p2, "/NetworkDriver.DeleteNetwork", NetworkID=NID) == {}
    assert PluginState(store, keys, "h1").networks == {}
    assert store.list(keys.docker("h1"))[0] == []
    assert "blue" in netd.nets  # other hosts may still use it


def test_mac_address_passes_through() -> None:
    p, netd = plugin()
    create(p)
    answer = call(p, "/NetworkDriver.CreateEndpoint", NetworkID=NID, EndpointID=EID,
                  Interface={"Address": "10.1.0.10/24", "MacAddress": "02:AA:00:00:00:01"})
    assert answer == {"Interface": {}}
    call(p, "/NetworkDriver.Join", NetworkID=NID, EndpointID=EID, SandboxKey="/proc/self/ns/net")
    assert netd.attached[0]["mac"] == "02:aa:00:00:00:01"


def test_join_of_an_unknown_endpoint_is_refused_clearly() -> None:
    p, _ = plugin()
    answer = call(p, "/NetworkDriver.Join", NetworkID=NID, EndpointID=EID, SandboxKey="/x")
    assert "unknown to this plugin" in answer["Err"]


def test_leave_without_state_finds_the_endpoint_in_netd() -> None:
    p, netd = plugin()
    netd.eps.append({"network": "blue", "name": endpoint_name(EID), "ip": "10.1.0.9",
                     "host": "h1"})
    assert call(p, "/NetworkDriver.Leave", NetworkID=NID, EndpointID=EID) == {}
    assert netd.detached == [(endpoint_name(EID), "blue")]
    assert call(p, "/NetworkDriver.DeleteEndpoint", NetworkID=NID, EndpointID=EID) == {}


def test_a_range_full_of_reservations_gives_one_up() -> None:
    p, netd = plugin()
    netd.nets["tiny"] = {"name": "tiny", "subnet": "10.3.0.0/29", "gateway": "10.3.0.1"}
    for n in range(2, 6):
        netd.sticky[("tiny", f"gone{n}")] = f"10.3.0.{n}"  # containers removed since
    netd.eps.append({"network": "tiny", "name": "x", "ip": "10.3.0.6", "host": "h1"})
    for _ in range(10):
        answer = call(p, "/IpamDriver.RequestAddress", PoolID="netd:10.3.0.0/29", Address="")
        assert answer["Address"].split("/")[0] in {f"10.3.0.{n}" for n in range(2, 6)}
        call(p, "/IpamDriver.ReleaseAddress", PoolID="netd:10.3.0.0/29",
             Address=answer["Address"])


def test_a_full_range_is_refused() -> None:
    p, netd = plugin()
    netd.nets["tiny"] = {"name": "tiny", "subnet": "10.3.0.0/30", "gateway": "10.3.0.1"}
    netd.eps.append({"network": "tiny", "name": "x", "ip": "10.3.0.2", "host": "h1"})
    answer = call(p, "/IpamDriver.RequestAddress", PoolID="netd:10.3.0.0/30", Address="")
    assert "no free address" in answer["Err"]


def test_join_checks_the_network_before_attaching_later() -> None:
    p, netd = plugin()
    create(p)
    call(p, "/NetworkDriver.CreateEndpoint", NetworkID=NID, EndpointID=EID,
         Interface={"Address": "10.1.0.10/24"})
    del netd.nets["blue"]
    answer = call(p, "/NetworkDriver.Join", NetworkID=NID, EndpointID=EID,
                  SandboxKey="/nonexistent/netns")
    assert "no longer exists in netd" in answer["Err"]


class FakeEngine:
    def network(self, network_id: str) -> dict[str, Any] | None:
        return {"Name": "blue", "Containers": {
            "c" * 64: {"Name": "web", "EndpointID": EID}}}


def test_endpoints_are_named_after_their_container_and_host() -> None:
    netd = FakeNetd()
    p = DockerPlugin(netd, FakeEngine(), PluginState(None))  # type: ignore[arg-type]
    create(p)
    call(p, "/NetworkDriver.CreateEndpoint", NetworkID=NID, EndpointID=EID,
         Interface={"Address": "10.1.0.10/24"})
    call(p, "/NetworkDriver.Join", NetworkID=NID, EndpointID=EID, SandboxKey="/proc/self/ns/net")
    assert netd.attached[0]["name"] == "web.h1"
    call(p, "/NetworkDriver.Leave", NetworkID=NID, EndpointID=EID)
    assert netd.detached == [("web.h1", "blue")]


def test_an_automatic_address_is_sticky_by_container_name() -> None:
    netd = FakeNetd()
    p = DockerPlugin(netd, FakeEngine(), PluginState(None))  # type: ignore[arg-type]
    create(p)
    netd.sticky[("blue", "web.h1")] = "10.1.0.77"  # web ran here before
    netd.sticky[("blue", "db.h2")] = "10.1.0.78"
    pool = "netd:10.1.0.0/24"
    for _ in range(30):  # never another name's address, nor one handed out already
        auto = call(p, "/IpamDriver.RequestAddress", PoolID=pool, Address="")["Address"]
        assert auto.split("/")[0] not in ("10.1.0.77", "10.1.0.78", "10.1.0.1")
        held = call(p, "/IpamDriver.RequestAddress", PoolID=pool, Address=auto.split("/")[0])
        assert "already in use by another container of this host" in held["Err"]
        assert call(p, "/IpamDriver.ReleaseAddress", PoolID=pool, Address=auto) == {}
    auto = call(p, "/IpamDriver.RequestAddress", PoolID=pool, Address="")["Address"]
    call(p, "/NetworkDriver.CreateEndpoint", NetworkID=NID, EndpointID=EID,
         Interface={"Address": auto})
    call(p, "/NetworkDriver.Join", NetworkID=NID, EndpointID=EID, SandboxKey="/proc/self/ns/net")
    assert netd.attached[-1]["ip"] == "10.1.0.77" and netd.attached[-1]["name"] == "web.h1"
    call(p, "/NetworkDriver.Leave", NetworkID=NID, EndpointID=EID)
    call(p, "/NetworkDriver.DeleteEndpoint", NetworkID=NID, EndpointID=EID)
    # an explicit --ip wins over the name's reservation
    fixed = call(p, "/IpamDriver.RequestAddress", PoolID=pool, Address="10.1.0.30")
    call(p, "/NetworkDriver.CreateEndpoint", NetworkID=NID, EndpointID=EID,
         Interface={"Address": fixed["Address"]})
    call(p, "/NetworkDriver.Join", NetworkID=NID, EndpointID=EID, SandboxKey="/proc/self/ns/net")
    assert netd.attached[-1]["ip"] == "10.1.0.30"


def test_the_server_answers_on_its_socket_and_removes_it(tmp_path: Path) -> None:
    p, _ = plugin()
    path = tmp_path / "plugins" / "netd.sock"
    server = PluginServer(path, p)
    server.serve_in_background()
    try:
        status, answer = unix_request(str(path), "POST", "/Plugin.Activate", {})
        assert (status, answer) == (200, {"Implements": ["NetworkDriver", "IpamDriver"]})
        status, answer = unix_request(str(path), "POST", "/IpamDriver.RequestPool",
                                      {"Pool": "10.1.0.0/24"})
        assert answer["PoolID"] == "netd:10.1.0.0/24"
    finally:
        server.close()
    assert not path.exists()
