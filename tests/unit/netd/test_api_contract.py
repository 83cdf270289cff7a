"""The OpenAPI document and the API's routes describe the same surface."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from dataclasses import fields
from importlib.resources import files
from pathlib import Path

import pytest

from netd import api
from netd.errors import (
    Conflict,
    Contention,
    DatapathError,
    HostLimit,
    InvalidInput,
    NetdError,
    NotFound,
    Unsupported,
)
from netd.model import Host
from netd.service import Service
from netd.store.embedded import EmbeddedStore
from netd.store.keys import Keys
from tests.unit.netd.test_service import make_service


def _openapi() -> dict[str, object]:
    return json.loads(files("netd").joinpath("openapi.json").read_text())


def test_every_route_is_documented_and_back() -> None:
    documented = {
        (method.upper(), path)
        for path, ops in _openapi()["paths"].items()  # type: ignore[attr-defined]
        for method in ops
    }
    served = {
        (method, re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", pattern))
        for method, pattern, _ in api.ROUTES
    }
    assert documented == served


def test_error_statuses() -> None:
    assert api.status_for(InvalidInput("x")) == 400
    assert api.status_for(NotFound("x")) == 404
    assert api.status_for(Conflict("x")) == 409
    assert api.status_for(DatapathError("x")) == 500
    assert api.status_for(HostLimit("underlay MTU too small")) == 409
    assert api.status_for(Contention("x")) == 409
    assert api.status_for(Unsupported("no such driver")) == 501

    class Odd(NetdError):
        pass

    assert api.status_for(Odd("x")) == 500


def _operations() -> list[tuple[str, str, dict[str, object]]]:
    return [
        (path, method, op)
        for path, ops in _openapi()["paths"].items()  # type: ignore[attr-defined]
        for method, op in ops.items()
    ]


def test_every_operation_documents_internal_errors() -> None:
    for path, method, op in _operations():
        assert "500" in op["responses"], f"{method} {path}"  # type: ignore[operator]
    for path, method in (("/v1/networks", "post"), ("/v1/attach", "post")):
        ops = _openapi()["paths"][path]  # type: ignore[index]
        assert "501" in ops[method]["responses"]  # driver missing
        assert "409" in ops[method]["responses"]  # underlay MTU too small, contention
    assert "409" in _openapi()["info"]["description"].split("underlay MTU")[0]  # type: ignore[index]


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    store = EmbeddedStore(tmp_path / "netd.db")
    yield make_service(store)
    store.close()


def test_status_and_host_schemas_match_what_is_served(service: Service) -> None:
    schemas = _openapi()["components"]["schemas"]  # type: ignore[index]
    assert set(schemas["Status"]["properties"]) == set(service.status())
    assert set(schemas["Host"]["properties"]) == {f.name for f in fields(Host)}
    service.store.put(Keys().host("h1"), service.host.to_json())
    (row,) = service.list_hosts()
    assert set(schemas["HostListEntry"]["properties"]) == set(row)
    hosts = _openapi()["paths"]["/v1/hosts"]["get"]  # type: ignore[index]
    items = hosts["responses"]["200"]["content"]["application/json"]["schema"]["items"]
    assert items == {"$ref": "#/components/schemas/HostListEntry"}


@pytest.fixture
def server(service: Service, tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "api.sock"
    srv = api.ApiServer(path, service)
    srv.start()
    yield path
    srv.stop()


def _raw(path: Path, request: bytes) -> tuple[int, dict[str, object]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            length = re.search(rb"Content-Length: (\d+)", head)
            if sep and length and len(body) >= int(length.group(1)):
                break
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.partition(b"\r\n\r\n")[2])


def test_bad_content_length_is_a_bad_request(server: Path) -> None:
    status, body = _raw(server, b"POST /v1/networks HTTP/1.1\r\nHost: x\r\n"
                                b"Content-Length: abc\r\n\r\n")
    assert status == 400
    assert "Content-Length" in body["error"]["message"]  # type: ignore[index]


def test_wrongly_typed_fields_are_bad_requests(server: Path) -> None:
    for fields_ in ({"options": "x"}, {"vni": 1.9}, {"encrypt": "false"}):
        payload = json.dumps({"name": "n", "subnet": "10.1.0.0/24", **fields_}).encode()
        status, body = _raw(server, b"POST /v1/networks HTTP/1.1\r\nHost: x\r\n"
                            b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
        assert status == 400, body


def test_drivers_are_served_as_they_declare_themselves(server: Path) -> None:
    status, body = _raw(server, b"GET /v1/drivers HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200
    assert body == [{
        "name": "weave", "default_backend": "fastdp", "options": [], "watch_prefixes": [],
        "backends": [
            {"name": "fastdp", "overhead": 50, "encryption": False, "encryption_overhead": 0},
            {"name": "sleeve", "overhead": 50, "encryption": True, "encryption_overhead": 28},
        ],
    }]
