"""A real etcd member on loopback ports of its own, for tests and benchmarks."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EtcdServer:
    """`with EtcdServer() as etcd: etcd.url` -> 'etcd://127.0.0.1:PORT'."""

    def __init__(self, host: str = "127.0.0.1", netns: str | None = None) -> None:
        self.host = host
        self.netns = netns
        self.client_port = free_port()
        self.peer_port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="netd-etcd-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def url(self) -> str:
        return f"etcd://{self.endpoint}"

    def start(self) -> EtcdServer:
        binary = shutil.which("etcd")
        if binary is None:
            raise RuntimeError("etcd is not installed (apt-get install etcd-server)")
        client = f"http://{self.host}:{self.client_port}"
        peer = f"http://{self.host}:{self.peer_port}"
        cmd = [
            binary,
            "--name", "netd-test",
            "--data-dir", str(self.dir / "data"),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"netd-test={peer}",
            "--log-level", "error",
        ]
        if self.netns:
            cmd = ["nsenter", f"--net=/run/netns/{self.netns}", *cmd]
        log = open(self.dir / "etcd.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited: {(self.dir / 'etcd.log').read_text()}")
            try:
                if self.netns is None:
                    with urllib.request.urlopen(f"{client}/health", timeout=1) as resp:
                        if b"true" in resp.read():
                            return self
                else:
                    probe = subprocess.run(
                        ["nsenter", f"--net=/run/netns/{self.netns}", "etcdctl",
                         f"--endpoints={client}", "endpoint", "health"],
                        capture_output=True, timeout=5,
                    )
                    if probe.returncode == 0:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("etcd did not become healthy within 20 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> EtcdServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
