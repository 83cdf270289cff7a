"""The OpenAPI document and the API's routes describe the same surface."""

from __future__ import annotations

import json
import logging
import re
import socket
import time
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


def _post(path: bytes, payload: bytes, content_type: bytes = b"application/json") -> bytes:
    return (b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s"
            % (path, content_type, len(payload), payload))


def _error(status: int, body: dict[str, object]) -> str:
    assert isinstance(body.get("error"), dict), body
    return str(body["error"]["message"])  # type: ignore[index]


def test_deeply_nested_json_is_a_bad_request(server: Path, service: Service) -> None:
    status, body = _raw(server, _post(b"/v1/networks", b"[" * 100_000))
    assert status == 400 and "JSON" in _error(status, body)
    assert service.list_networks() == []


def test_a_body_that_is_not_declared_json_is_refused(server: Path, service: Service) -> None:
    payload = json.dumps({"name": "n", "subnet": "10.1.0.0/24"}).encode()
    status, body = _raw(server, _post(b"/v1/networks", payload, b"text/plain"))
    assert status == 400 and "application/json" in _error(status, body)
    assert service.list_networks() == []
    status, _ = _raw(server, _post(b"/v1/networks", payload, b"application/json; charset=utf-8"))
    assert status == 201


@pytest.mark.parametrize("method", [b"PUT", b"PATCH", b"TRACE", b"OPTIONS"])
def test_other_methods_get_a_json_405(server: Path, method: bytes) -> None:
    status, body = _raw(server, method + b" /v1/networks HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 405
    assert "GET, POST" in _error(status, body)


def test_unknown_method_and_huge_url_get_json_errors(server: Path) -> None:
    status, body = _raw(server, b"FROB /v1/networks HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 501 and "FROB" in _error(status, body)
    status, body = _raw(server, b"GET /v1/" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 414 and _error(status, body)


def test_a_name_with_a_trailing_newline_is_refused(server: Path, service: Service) -> None:
    for fields_ in ({"name": "blue\n"}, {"name": "blue", "tenant": "default\n"}):
        payload = json.dumps({"name": "n", "subnet": "10.1.0.0/24", **fields_}).encode()
        status, body = _raw(server, _post(b"/v1/networks", payload))
        assert status == 400, body
    status, body = _raw(server, b"GET /v1/networks/blue%0A HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status in (400, 404), body
    assert service.list_networks() == []


def test_half_open_clients_do_not_hold_the_api(server: Path) -> None:
    stalled = []
    try:
        for _ in range(200):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(server))
            sock.sendall(b"POST /v1/networks HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
            stalled.append(sock)
        status, _ = _raw(server, b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 200
    finally:
        for sock in stalled:
            sock.close()


def test_clients_that_leave_early_are_not_errors(
    server: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG, logger="netd.api")
    for _ in range(50):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(server))
        sock.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.close()
    status, _ = _raw(server, b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200
    time.sleep(0.5)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert "Traceback" not in capfd.readouterr().err


def test_a_stalled_body_is_dropped_after_the_client_timeout(
    server: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api._RequestHandler, "timeout", 0.3)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(server))
        sock.sendall(b"POST /v1/networks HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
        assert sock.recv(100) == b""  # closed by the server, no answer owed


def test_connections_beyond_the_cap_get_a_json_503(
    server: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api._RequestHandler, "timeout", 5.0)
    held = []
    try:
        for _ in range(api.MAX_CONNECTIONS):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(server))
            sock.sendall(b"GET /v1/status HTTP/1.1\r\n")  # headers never end
            held.append(sock)
        status, body = _raw(server, b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 503 and "try again" in _error(status, body)
    finally:
        for sock in held:
            sock.close()


def test_bad_content_length_is_a_bad_request(server: Path) -> None:
    status, body = _raw(server, b"POST /v1/networks HTTP/1.1\r\nHost: x\r\n"
                                b"Content-Length: abc\r\n\r\n")
    assert status == 400
    assert "Content-Length" in body["error"]["message"]  # type: ignore[index]


def test_wrongly_typed_fields_are_bad_requests(server: Path) -> None:
    for fields_ in ({"options": "x"}, {"vni": 1.9}, {"encrypt": "false"}):
        payload = json.dumps({"name": "n", "subnet": "10.1.0.0/24", **fields_}).encode()
        status, body = _raw(server, _post(b"/v1/networks", payload))
        assert status == 400, body
        assert "Content-Type" not in body["error"]["message"]  # type: ignore[index]


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
