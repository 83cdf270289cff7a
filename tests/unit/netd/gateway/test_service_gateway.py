"""expose/hide and publish/unpublish through the service: records, refusals that change
nothing, network rm dropping the roles."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from netd.errors import Conflict, InvalidInput, NotFound
from netd.service import Service
from netd.store.embedded import EmbeddedStore
from tests.unit.netd.test_service import KEYS, attach, contents, make_service


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[Service]:
    store = EmbeddedStore(tmp_path / "netd.db")
    service = make_service(store)
    service.create_network({"name": "blue", "subnet": "10.1.0.0/24"})
    yield service
    store.close()


def test_expose_and_hide_write_this_hosts_roles(svc: Service) -> None:
    assert svc.expose({"network": "blue"}) == {"network": "blue", "host": "h1",
                                                "masquerade": True}
    assert svc.inspect_network("blue")["exposed_by"] == [{"host": "h1", "masquerade": True}]
    svc.expose({"network": "blue", "masquerade": False})
    assert svc.inspect_network("blue")["exposed_by"] == [{"host": "h1", "masquerade": False}]
    svc.hide({"network": "blue"})
    assert svc.inspect_network("blue")["exposed_by"] == []
    with pytest.raises(NotFound, match="not exposed by host h1"):
        svc.hide({"network": "blue"})


def test_an_overlapping_exposed_subnet_is_refused_and_nothing_changes(svc: Service) -> None:
    svc.create_network({"name": "red", "subnet": "10.1.0.0/16", "tenant": "other"})
    svc.expose({"network": "blue"})
    before = contents(svc.store)  # type: ignore[arg-type]
    with pytest.raises(Conflict, match="already exposes network blue"):
        svc.expose({"network": "red"})
    with pytest.raises(InvalidInput, match="masquerade"):
        svc.expose({"network": "red", "masquerade": "no"})
    with pytest.raises(NotFound):
        svc.expose({"network": "green"})
    assert contents(svc.store) == before  # type: ignore[arg-type]


def test_network_rm_drops_the_roles(svc: Service) -> None:
    svc.expose({"network": "blue"})
    svc.remove_network("blue")
    assert not [k for k in contents(svc.store) if k.startswith(KEYS.roles())]  # type: ignore[arg-type]


def test_publish_records_refusals_and_unpublish(svc: Service) -> None:
    attach(svc, "c1")
    attach(svc, "c2")
    record = svc.publish({"container": "c1", "network": "blue", "port": "8080:80"})
    assert record == {"host": "h1", "protocol": "tcp", "host_port": 8080, "network": "blue",
                      "endpoint": "c1", "port": 80}
    assert svc.publish({"container": "c1", "network": "blue", "port": "8080:80/tcp"}) == record
    before = contents(svc.store)  # type: ignore[arg-type]
    with pytest.raises(Conflict, match="host port 8080/tcp is already published on host h1"):
        svc.publish({"container": "c2", "network": "blue", "port": "8080:81"})
    for bad in ("8080", "0:80", "8080:80/sctp", "a:b"):
        with pytest.raises(InvalidInput):
            svc.publish({"container": "c1", "network": "blue", "port": bad})
    with pytest.raises(NotFound, match="c9 is not attached"):
        svc.publish({"container": "c9", "network": "blue", "port": "9000:80"})
    assert contents(svc.store) == before  # type: ignore[arg-type]
    svc.publish({"container": "c2", "network": "blue", "port": "8080:81/udp"})
    rows = {e["name"]: e["published"] for e in svc.endpoints_with_ports("blue")}
    assert rows == {"c1": ["8080:80/tcp"], "c2": ["8080:81/udp"]}
    assert [p["host_port"] for p in svc.unpublish(
        {"container": "c1", "network": "blue"})] == [8080]
    with pytest.raises(NotFound, match="no published ports"):
        svc.unpublish({"container": "c1", "network": "blue"})
    listed = {e["name"]: e for e in svc.endpoints_with_ports("blue")}
    assert "published" not in listed["c1"] and listed["c2"]["published"] == ["8080:81/udp"]
