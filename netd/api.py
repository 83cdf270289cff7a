"""The socket API: JSON over HTTP on a unix socket, a thin mapping onto netd.service.

Routes are listed in ROUTES and described in netd/openapi.json. Error classes map to
status codes here and only here (STATUS_BY_ERROR); the body of every error is
{"error": {"code": ..., "message": ...}} so the CLI can print one clear line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import socketserver
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from netd.errors import (
    Compacted,
    Conflict,
    DatapathError,
    Exhausted,
    HostLimit,
    InvalidInput,
    NetdError,
    NotFound,
    StoreUnavailable,
    Unsupported,
)
from netd.service import Service

log = logging.getLogger(__name__)

STATUS_BY_ERROR: dict[type[NetdError], HTTPStatus] = {
    InvalidInput: HTTPStatus.BAD_REQUEST,
    NotFound: HTTPStatus.NOT_FOUND,
    Conflict: HTTPStatus.CONFLICT,
    Exhausted: HTTPStatus.CONFLICT,
    HostLimit: HTTPStatus.CONFLICT,  # this host's underlay cannot carry it: act on the host
    Unsupported: HTTPStatus.NOT_IMPLEMENTED,
    StoreUnavailable: HTTPStatus.SERVICE_UNAVAILABLE,
    Compacted: HTTPStatus.SERVICE_UNAVAILABLE,
    DatapathError: HTTPStatus.INTERNAL_SERVER_ERROR,
}

Handler = Callable[[Service, dict[str, str], dict[str, Any], dict[str, str]], tuple[int, Any]]


def _created(value: Any) -> tuple[int, Any]:
    return HTTPStatus.CREATED, value


def _remove_network(service: Service, name: str) -> dict[str, str]:
    service.remove_network(name)
    return {"removed": name}


def _remove_group(service: Service, tenant: str | None, name: str) -> dict[str, str]:
    service.remove_group(tenant, name)
    return {"removed": name}


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", r"/v1/status", lambda s, p, b, q: (200, s.status())),
    ("GET", r"/v1/networks", lambda s, p, b, q: (200, [n.to_dict() for n in s.list_networks()])),
    ("POST", r"/v1/networks", lambda s, p, b, q: _created(s.create_network(b).to_dict())),
    ("GET", r"/v1/networks/(?P<name>[^/]+)",
     lambda s, p, b, q: (200, s.inspect_network(p["name"]))),
    ("DELETE", r"/v1/networks/(?P<name>[^/]+)",
     lambda s, p, b, q: (200, _remove_network(s, p["name"]))),
    ("GET", r"/v1/endpoints",
     lambda s, p, b, q: (200, [e.to_dict() for e in s.list_endpoints(q.get("network"))])),
    ("POST", r"/v1/attach", lambda s, p, b, q: (200, s.attach(b).to_dict())),
    ("POST", r"/v1/detach", lambda s, p, b, q: (200, s.detach(b).to_dict())),
    ("POST", r"/v1/endpoints/update", lambda s, p, b, q: (200, s.update_endpoint(b).to_dict())),
    # security groups, scoped by tenant (?tenant=T, default "default")
    ("GET", r"/v1/sg",
     lambda s, p, b, q: (200, [g.to_dict() for g in s.list_groups(q.get("tenant"))])),
    ("POST", r"/v1/sg", lambda s, p, b, q: _created(s.create_group(b).to_dict())),
    ("GET", r"/v1/sg/(?P<name>[^/]+)",
     lambda s, p, b, q: (200, s.inspect_group(q.get("tenant"), p["name"]))),
    ("DELETE", r"/v1/sg/(?P<name>[^/]+)",
     lambda s, p, b, q: (200, _remove_group(s, q.get("tenant"), p["name"]))),
    ("POST", r"/v1/sg/(?P<name>[^/]+)/rules",
     lambda s, p, b, q: _created(s.add_rule(q.get("tenant"), p["name"], b))),
    ("DELETE", r"/v1/sg/(?P<name>[^/]+)/rules/(?P<rule>[^/]+)",
     lambda s, p, b, q: (200, s.remove_rule(q.get("tenant"), p["name"], p["rule"]))),
    ("GET", r"/v1/hosts", lambda s, p, b, q: (200, s.list_hosts())),
    ("GET", r"/v1/drivers",
     lambda s, p, b, q: (200, [spec.to_dict() for _, spec in sorted(s.specs.items())])),
]
_COMPILED = [(m, re.compile(f"^{pattern}$"), h) for m, pattern, h in ROUTES]
MAX_BODY = 1 << 20


def status_for(exc: NetdError) -> HTTPStatus:
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]  # type: ignore[index]
    return HTTPStatus.INTERNAL_SERVER_ERROR


class _RequestHandler(BaseHTTPRequestHandler):
    server: ApiServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            body = self._body()
            for route_method, pattern, handler in _COMPILED:
                match = pattern.match(url.path)
                if match and route_method == method:
                    params = {k: unquote(v) for k, v in match.groupdict().items()}
                    status, value = handler(self.server.service, params, body, query)
                    self._reply(int(status), value)
                    return
            self._error(HTTPStatus.NOT_FOUND, "not_found", f"no route {method} {url.path}")
        except NetdError as exc:
            self._error(status_for(exc), exc.code, str(exc))
        except Exception as exc:
            log.exception("internal error serving %s %s", method, url.path)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal", f"internal error: {exc}")

    def _body(self) -> dict[str, Any]:
        header = (self.headers.get("Content-Length") or "0").strip()
        if not header.isdigit():
            self.close_connection = True  # the body's end is unknown: no further request
            raise InvalidInput(f"invalid Content-Length {header!r}: expected a byte count")
        length = int(header)
        if length > MAX_BODY:
            self.close_connection = True
            raise InvalidInput("request body too large")
        if not length:
            return {}
        try:
            data = json.loads(self.rfile.read(length))
        except ValueError:
            raise InvalidInput("request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise InvalidInput("request body must be a JSON object")
        return data

    def _reply(self, status: int, value: Any) -> None:
        payload = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _error(self, status: HTTPStatus, code: str, message: str) -> None:
        self._reply(int(status), {"error": {"code": code, "message": message}})

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("api: " + format, *args)

    def address_string(self) -> str:
        return "unix"


def ensure_socket_free(path: Path) -> None:
    """Refuse to take over a socket another live daemon serves; a stale one is fine."""
    if not (path.exists() or path.is_symlink()):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        return  # nobody listens: a leftover of a daemon that was killed
    finally:
        probe.close()
    raise Conflict(f"another netd is already serving on {path}; stop it or use --socket")


class ApiServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    # listen() backlog: bursts of netctl calls (scripts attaching many containers at
    # once) queue here instead of failing with EAGAIN (socketserver's default is 5)
    request_queue_size = 128

    def __init__(self, path: Path, service: Service) -> None:
        self.service = service
        path.parent.mkdir(parents=True, exist_ok=True)
        ensure_socket_free(path)
        if path.exists() or path.is_symlink():
            path.unlink()
        tmp = path.with_name(path.name + ".tmp")
        if tmp.exists():
            tmp.unlink()
        super().__init__(str(tmp), _RequestHandler)
        os.chmod(tmp, 0o660)
        # the socket appears under its real name only once it is ready to serve
        os.rename(tmp, path)
        self.path = path
        self._thread = threading.Thread(target=self.serve_forever, name="api", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
