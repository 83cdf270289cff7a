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
import sys
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from netd import metrics
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
from netd.events import read_query
from netd.service import Service
from netd.service.tracing import trace_flow

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
     lambda s, p, b, q: (200, s.endpoints_with_ports(q.get("network")))),
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
    ("GET", r"/v1/events", lambda s, p, b, q: (200, read_query(s.events, q))),
    ("GET", r"/v1/trace", lambda s, p, b, q: (200, trace_flow(s, q))),
    # the gateway: this host exposes networks and publishes ports (netd.service.gateway)
    ("POST", r"/v1/expose", lambda s, p, b, q: (200, s.expose(b))),
    ("POST", r"/v1/hide", lambda s, p, b, q: (200, s.hide(b))),
    ("POST", r"/v1/publish", lambda s, p, b, q: (200, s.publish(b))),
    ("POST", r"/v1/unpublish", lambda s, p, b, q: (200, s.unpublish(b))),
    ("GET", r"/v1/drivers",
     lambda s, p, b, q: (200, [spec.to_dict() for _, spec in sorted(s.specs.items())])),
]
_COMPILED = [(m, re.compile(pattern), h) for m, pattern, h in ROUTES]
# a route as metrics label it: /v1/networks/{name}
_TEMPLATES = {
    pattern: re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", pattern) for _, pattern, _ in ROUTES
}
_METHODS = {"GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS", "TRACE"}
MAX_BODY = 1 << 20
# a client has this long to send each part of a request (and an idle keep-alive
# connection is closed after it): a half-open or dribbling client holds one thread
# for at most this long
CLIENT_TIMEOUT = 10.0
# connections served at once; one more is answered 503 at once and closed
MAX_CONNECTIONS = 512


def status_for(exc: NetdError) -> HTTPStatus:
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]  # type: ignore[index]
    return HTTPStatus.INTERNAL_SERVER_ERROR


class _ClientGone(ConnectionError):
    """The client closed or stalled its connection; there is nobody to answer."""


class _RequestHandler(BaseHTTPRequestHandler):
    server: ApiServer
    protocol_version = "HTTP/1.1"
    timeout = CLIENT_TIMEOUT

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_OPTIONS(self) -> None:
        self._dispatch("OPTIONS")

    def do_TRACE(self) -> None:
        self._dispatch("TRACE")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (bad request line, URL too long, unknown method) in the
        API's JSON shape instead of HTML."""
        try:
            status = HTTPStatus(code)
        except ValueError:
            status = HTTPStatus.BAD_REQUEST
        self.close_connection = True
        self._error(status, status.phrase.lower().replace(" ", "_"), message or status.phrase)

    def _dispatch(self, method: str) -> None:
        try:
            self._serve(method)
        except _ClientGone as exc:
            # the client went away (or stopped sending) mid-request: nobody to answer
            log.debug("api: %s %s: client connection ended: %s", method, self.path, exc)
            self.close_connection = True

    def _serve(self, method: str) -> None:
        started = time.perf_counter()
        self._route = "unmatched"
        try:
            self._route_request(method)
        finally:
            metrics.API_SECONDS.labels(self._route).observe(time.perf_counter() - started)

    def _route_request(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            body = self._body()
            allowed = []
            for route_method, pattern, handler in _COMPILED:
                match = pattern.fullmatch(url.path)
                if match and route_method == method:
                    self._route = _TEMPLATES[pattern.pattern]
                    params = {k: unquote(v) for k, v in match.groupdict().items()}
                    status, value = handler(self.server.service, params, body, query)
                    self._reply(int(status), value)
                    return
                if match:
                    allowed.append(route_method)
            if allowed:
                self._error(HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed",
                            f"{method} is not allowed on {url.path}; use {', '.join(allowed)}")
            else:
                self._error(HTTPStatus.NOT_FOUND, "not_found", f"no route {method} {url.path}")
        except NetdError as exc:
            self._error(status_for(exc), exc.code, str(exc))
        except _ClientGone:
            raise
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
            raw = self.rfile.read(length)
        except (ConnectionError, TimeoutError) as exc:
            raise _ClientGone(str(exc)) from None
        if len(raw) < length:
            raise _ClientGone("the body ended early")
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise InvalidInput(
                f"request body must be sent as Content-Type application/json, "
                f"not {content_type or 'none'!r}"
            )
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            raise InvalidInput("request body is not valid JSON (or nested too deeply)") from None
        if not isinstance(data, dict):
            raise InvalidInput("request body must be a JSON object")
        return data

    def _reply(self, status: int, value: Any) -> None:
        payload = json.dumps(value).encode()
        method = self.command if self.command in _METHODS else "other"
        metrics.API_REQUESTS.labels(method, getattr(self, "_route", "unmatched"),
                                    str(status)).inc()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
            self.wfile.flush()
        except (ConnectionError, TimeoutError) as exc:
            raise _ClientGone(str(exc)) from None

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


_BUSY = json.dumps({"error": {"code": "busy", "message":
                    f"netd is serving {MAX_CONNECTIONS} connections already; try again"}}).encode()
_BUSY_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                  b"Connection: close\r\nContent-Length: " + str(len(_BUSY)).encode()
                  + b"\r\n\r\n" + _BUSY)


class ApiServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    # listen() backlog: bursts of netctl calls (scripts attaching many containers at
    # once) queue here instead of failing with EAGAIN (socketserver's default is 5);
    # the kernel caps it at net.core.somaxconn
    request_queue_size = 4096

    def __init__(self, path: Path, service: Service, group: int | None = None) -> None:
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
        if group is not None:
            os.chown(tmp, -1, group)
        # the socket appears under its real name only once it is ready to serve
        os.rename(tmp, path)
        self.path = path
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._thread = threading.Thread(target=self.serve_forever, name="api", daemon=True)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.settimeout(1.0)
                request.sendall(_BUSY_RESPONSE)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away or timed out is routine, not a traceback on stderr."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            log.debug("api: client connection ended: %s", exc)
        else:
            log.error("api: error serving a connection", exc_info=exc)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
