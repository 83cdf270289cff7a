"""Container names through a (fake) Docker-compatible Engine API on a unix socket."""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from netd.errors import NotFound
from netd.runtimes.engine import engine_hosts, find_container

CONTAINERS = {
    "web": {"Id": "a" * 64, "Name": "/web", "State": {"Pid": 4242, "Running": True}},
    "stopped": {"Id": "b" * 64, "Name": "/stopped", "State": {"Pid": 0}},
}


class _Engine(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        name = self.path.split("/")[-2]
        info = CONTAINERS.get(name)
        body = json.dumps(info or {"message": f"No such container: {name}"}).encode()
        self.send_response(200 if info else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "docker.sock")
    server = _Server(path, _Engine)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield path
    server.shutdown()
    server.server_close()


def test_a_running_container_resolves_to_its_pid_netns(engine: str) -> None:
    ref = find_container("web", [str(Path(engine).with_name("absent.sock")), engine])
    assert ref is not None
    assert (ref.name, ref.netns) == ("web", "/proc/4242/ns/net")
    assert find_container("nosuch", [engine]) is None
    with pytest.raises(NotFound, match="not running"):
        find_container("stopped", [engine])


def test_docker_host_comes_first() -> None:
    assert engine_hosts({"DOCKER_HOST": "unix:///x/d.sock"})[0] == "/x/d.sock"
    assert engine_hosts({})[0] == "/run/docker.sock"
