"""netctl facing answers that are not netd's, silent peers and cut connections: one clear
line each, never a traceback, never a long hang."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from netd import cli
from netd.cli import Client, CliError

Serve = Callable[[socket.socket], None]


@pytest.fixture
def fake_netd(tmp_path: Path) -> Iterator[Callable[[Serve], Path]]:
    """A unix socket served by `serve(conn)` per connection, in a thread."""
    servers: list[socket.socket] = []

    def start(serve: Serve) -> Path:
        path = tmp_path / f"fake{len(servers)}.sock"
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(str(path))
        srv.listen(8)
        servers.append(srv)

        def loop() -> None:
            while True:
                try:
                    conn, _ = srv.accept()
                except OSError:
                    return
                with conn:
                    read_request(conn)
                    serve(conn)

        threading.Thread(target=loop, daemon=True).start()
        return path

    yield start
    for srv in servers:
        srv.close()


def read_request(conn: socket.socket) -> None:
    """Read one whole request (headers and a Content-Length body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?i)content-length: *(\d+)", head)
    want = int(length.group(1)) if length else 0
    while len(body) < want:
        chunk = conn.recv(65536)
        if not chunk:
            return
        body += chunk


def _http(status: int, body: bytes) -> Serve:
    def serve(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body))
    return serve


def _message(path: Path, method: str = "GET") -> str:
    with pytest.raises(CliError) as err:
        Client(path).request(method, "/v1/networks", {"name": "n"} if method != "GET" else None)
    message = str(err.value)
    assert "\n" not in message and message
    return message


def test_a_reply_that_is_not_http(fake_netd: Callable[[Serve], Path]) -> None:
    path = fake_netd(lambda conn: conn.sendall(b"SSH-2.0-OpenSSH\r\n"))
    assert "not netd's" in _message(path)


@pytest.mark.parametrize("body", [b"[1]", b'{"error": "flat"}', b'{"error": {"code": 1}}',
                                  b"null", b'"x"'])
def test_error_bodies_of_any_shape(fake_netd: Callable[[Serve], Path], body: bytes) -> None:
    message = _message(fake_netd(_http(500, body)))
    assert message == "flat" if b"flat" in body else "HTTP 500" in message


def test_a_non_json_answer(fake_netd: Callable[[Serve], Path]) -> None:
    assert "not JSON" in _message(fake_netd(_http(200, b"<html>")))


def test_a_silent_peer_times_out(
    fake_netd: Callable[[Serve], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "READ_TIMEOUT", 0.5)
    path = fake_netd(lambda conn: time.sleep(2))
    started = time.monotonic()
    assert "did not answer within 0.5 s" in _message(path)
    assert time.monotonic() - started < 1.5


def test_a_change_cut_off_says_its_outcome_is_unknown(fake_netd: Callable[[Serve], Path]) -> None:
    path = fake_netd(lambda conn: None)  # reads the request, closes without answering
    message = _message(path, "POST")
    assert "outcome of this change is unknown" in message and "repeat" in message
    assert "outcome" not in _message(path, "GET")
