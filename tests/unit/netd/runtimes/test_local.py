"""The Docker plugin on netd's real service layer in-process (netd.runtimes.local), over
the embedded store: the protocol sequence dockerd sends, its records in the store, a
restart reading them back, stickiness by container name, netd's refusals as `Err`.
No root: the reconciler is the service tests' fake, netns references are not opened."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netd import config
from netd.errors import InvalidInput
from netd.runtimes.client import ApiError
from netd.runtimes.docker import DockerPlugin
from netd.runtimes.local import LocalNetd
from netd.runtimes.state import PluginState
from netd.service import Service
from netd.store.embedded import EmbeddedStore
from tests.unit.netd.test_service import KEYS, make_service

NID = "a" * 64
SANDBOX = "/run/docker/netns/sandbox-"


class Engine:
    """dockerd's answer to GET /networks/{id}: which container each endpoint is."""

    def __init__(self) -> None:
        self.containers: dict[str, str] = {}  # endpoint id -> container name

    def network(self, network_id: str) -> dict[str, Any] | None:
        return {"Name": "blue", "Containers": {
            f"c{n}": {"Name": name, "EndpointID": eid}
            for n, (eid, name) in enumerate(self.containers.items())}}


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    store = EmbeddedStore(tmp_path / "netd.db")
    yield make_service(store)
    store.close()


def plugin(service: Service, engine: Engine) -> DockerPlugin:
    state = PluginState(service.store, service.keys, service.host.name)
    p = DockerPlugin(LocalNetd(service), engine, state)  # type: ignore[arg-type]
    p.netns_wait = 0.0
    return p


def run(p: DockerPlugin, engine: Engine, eid: str, name: str, ip: str = "") -> str:
    """RequestAddress, CreateEndpoint and Join as dockerd sends them for `docker run`;
    the address IPAM handed dockerd."""
    answer = p.handle("/IpamDriver.RequestAddress", {"PoolID": "netd:10.1.0.0/24",
                                                     "Address": ip, "Options": {}})
    assert "Err" not in answer, answer
    p.handle("/NetworkDriver.CreateEndpoint", {
        "NetworkID": NID, "EndpointID": eid,
        "Interface": {"Address": answer["Address"], "MacAddress": ""}})
    engine.containers[eid] = name
    endpoint = p._attach(NID, eid, SANDBOX + eid)  # what Join runs once the netns exists
    assert endpoint["name"] == f"{name}.h1"
    return str(answer["Address"]).split("/")[0]


def remove(p: DockerPlugin, eid: str) -> None:
    for call in ("/NetworkDriver.Leave", "/NetworkDriver.DeleteEndpoint"):
        assert p.handle(call, {"NetworkID": NID, "EndpointID": eid}) == {}


def ips(service: Service) -> dict[str, str]:
    return {e.name: e.ip for e in service.list_endpoints("blue")}


def test_the_docker_records_live_in_the_store_and_survive_a_restart(service: Service) -> None:
    engine = Engine()
    p = plugin(service, engine)
    assert p.handle("/NetworkDriver.CreateNetwork", {
        "NetworkID": NID, "IPv4Data": [{"Pool": "10.1.0.0/24", "Gateway": "10.1.0.1/24"}],
        "Options": {"com.docker.network.generic": {"network": "blue"}}}) == {}
    assert service.get_network("blue").subnet == "10.1.0.0/24"
    run(p, engine, "e1", "web", "10.1.0.10")
    assert ips(service) == {"web.h1": "10.1.0.10"}
    record = service.store.get(KEYS.docker_endpoint("h1", "e1"))
    assert record is not None and json.loads(record.value)["name"] == "web.h1"
    assert service.store.get(KEYS.docker_network("h1", NID)) is not None
    # netd restarted: a new plugin on the same store knows the endpoint and the network
    p2 = plugin(service, engine)
    remove(p2, "e1")
    assert ips(service) == {}
    assert service.store.list(KEYS.docker_endpoints("h1"))[0] == []
    run(p2, engine, "e2", "web", "10.1.0.10")  # the same --ip again
    assert ips(service) == {"web.h1": "10.1.0.10"}


def test_an_automatic_address_comes_back_to_its_container_name(service: Service) -> None:
    service.create_network({"name": "blue", "subnet": "10.1.0.0/24"})
    engine = Engine()
    p = plugin(service, engine)
    p.handle("/NetworkDriver.CreateNetwork", {
        "NetworkID": NID, "IPv4Data": [{"Pool": "10.1.0.0/24", "Gateway": "10.1.0.1/24"}],
        "Options": {"com.docker.network.generic": {"network": "blue"}}})
    handed = run(p, engine, "e1", "web")
    first = ips(service)["web.h1"]
    assert first == handed
    remove(p, "e1")
    for n in range(5):  # recreated under its name: its address, whatever IPAM handed
        run(p, engine, f"r{n}", "web")
        assert ips(service) == {"web.h1": first}
        remove(p, f"r{n}")
    run(p, engine, "o1", "other")  # another name never gets it
    assert ips(service)["other.h1"] != first


def test_netds_refusals_reach_docker_as_err(service: Service) -> None:
    service.create_network({"name": "blue", "subnet": "10.9.0.0/24"})
    p = plugin(service, Engine())
    answer = p.handle("/NetworkDriver.CreateNetwork", {
        "NetworkID": NID, "IPv4Data": [{"Pool": "10.1.0.0/24", "Gateway": "10.1.0.1/24"}],
        "Options": {"com.docker.network.generic": {"network": "blue", "mtu": "99999"}}})
    assert "already exists in netd with subnet 10.9.0.0/24" in answer["Err"]
    answer = p.handle("/NetworkDriver.CreateNetwork", {
        "NetworkID": NID, "IPv4Data": [{"Pool": "10.2.0.0/24", "Gateway": "10.2.0.1/24"}],
        "Options": {"com.docker.network.generic": {"network": "green", "driver": "nope"}}})
    assert "nope" in answer["Err"] and service.list_networks()[0].name == "blue"
    assert service.store.list(KEYS.docker("h1"))[0] == []


def test_the_daemon_flags() -> None:
    assert config.load(["--host", "h1"]).docker_plugin == ""
    cfg = config.load(["--host", "h1", "--docker-plugin"])
    assert cfg.docker_plugin == "/run/docker/plugins/netd.sock"
    cfg = config.load(["--host", "h1", "--docker-plugin", "/tmp/p.sock", "--docker-host",
                       "unix:///tmp/d.sock"])
    assert (cfg.docker_plugin, cfg.docker_host) == ("/tmp/p.sock", "unix:///tmp/d.sock")
    for bad in (["--docker-host", "tcp://10.0.0.1:2375"], ["--docker-plugin", "rel.sock"]):
        with pytest.raises(InvalidInput, match="docker"):
            config.load(["--host", "h1", *bad])


def test_a_restarted_netd_finishes_an_attach_it_never_did(service: Service) -> None:
    service.create_network({"name": "blue", "subnet": "10.1.0.0/24"})
    engine = Engine()
    p = plugin(service, engine)
    p.handle("/NetworkDriver.CreateNetwork", {
        "NetworkID": NID, "IPv4Data": [{"Pool": "10.1.0.0/24", "Gateway": "10.1.0.1/24"}],
        "Options": {"com.docker.network.generic": {"network": "blue"}}})
    p.handle("/NetworkDriver.CreateEndpoint", {
        "NetworkID": NID, "EndpointID": "e1", "Interface": {"Address": "10.1.0.7/24"}})
    engine.containers["e1"] = "web"
    # joined, then netd died before its attach committed; the sandbox exists
    record = p.state.endpoint("e1")
    assert record is not None
    p.state.put_endpoint("e1", {**record, "sandbox": f"/proc/{os.getpid()}/ns/net"})
    p2 = plugin(service, engine)
    assert p2.recover() == 1
    assert ips(service) == {"web.h1": "10.1.0.7"}
    assert plugin(service, engine).recover() == 0  # attached already: nothing to do


def test_an_automatic_address_taken_meanwhile_gives_way(service: Service) -> None:
    service.create_network({"name": "blue", "subnet": "10.1.0.0/24"})
    engine = Engine()
    p = plugin(service, engine)
    p.handle("/NetworkDriver.CreateNetwork", {
        "NetworkID": NID, "IPv4Data": [{"Pool": "10.1.0.0/24", "Gateway": "10.1.0.1/24"}],
        "Options": {"com.docker.network.generic": {"network": "blue"}}})
    handed = p.handle("/IpamDriver.RequestAddress", {"PoolID": "netd:10.1.0.0/24",
                                                     "Address": ""})["Address"]
    ip = handed.split("/")[0]
    service.attach({"container": "other", "network": "blue", "ip": ip})  # another host
    p.handle("/NetworkDriver.CreateEndpoint", {
        "NetworkID": NID, "EndpointID": "e1", "Interface": {"Address": handed}})
    engine.containers["e1"] = "web"
    attached = p._attach(NID, "e1", SANDBOX + "e1")
    assert attached["ip"] != ip and ips(service) == {"other": ip, "web.h1": attached["ip"]}
    record = p.state.endpoint("e1")
    assert record is not None and record["ip"] == attached["ip"]
    # a fixed address (--ip) is not replaced: the attach is refused
    p.handle("/NetworkDriver.CreateEndpoint", {
        "NetworkID": NID, "EndpointID": "e2", "Interface": {"Address": "10.1.0.50/24"}})
    service.attach({"container": "third", "network": "blue", "ip": "10.1.0.50"})
    engine.containers["e2"] = "db"
    with pytest.raises(ApiError, match="in use"):
        p._attach(NID, "e2", SANDBOX + "e2")
