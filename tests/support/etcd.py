"""A real etcd member on loopback ports of its own, for tests and benchmarks; optionally
speaking TLS (with client certificates required) and with users and auth enabled."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from netd.lab import EtcdTls, write_certificates
from netd.store.etcd import EtcdSecurity


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EtcdServer:
    """`with EtcdServer() as etcd: etcd.url` -> 'etcd://127.0.0.1:PORT'."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        netns: str | None = None,
        tls: bool = False,
        users: dict[str, str] | None = None,
    ) -> None:
        """tls: serve https and require a client certificate signed by our CA; users:
        name -> password, each with read-write access to every key, auth enabled."""
        self.host = host
        self.netns = netns
        self.users = dict(users or {})
        self.client_port = free_port()
        self.peer_port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="netd-etcd-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.tls: EtcdTls | None = write_certificates(self.dir / "tls", [host]) if tls else None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def client_url(self) -> str:
        """The endpoint with its scheme (https for a TLS server): what EtcdStore takes."""
        return f"{'https' if self.tls else 'http'}://{self.endpoint}"

    @property
    def url(self) -> str:
        return f"{'etcds' if self.tls else 'etcd'}://{self.host}:{self.client_port}"

    def security(self, user: str = "") -> EtcdSecurity:
        """What a client needs: the TLS files, and `user`'s password."""
        tls = self.tls
        return EtcdSecurity(
            ca=str(tls.ca) if tls else "", cert=str(tls.client_cert) if tls else "",
            key=str(tls.client_key) if tls else "",
            user=user, password=self.users[user] if user else "",
        )

    def etcdctl(self, *args: str, user: str = "") -> subprocess.CompletedProcess[str]:
        cmd = ["etcdctl", f"--endpoints={self.client_url}", "--dial-timeout=2s"]
        if self.tls is not None:
            cmd += [f"--cacert={self.tls.ca}", f"--cert={self.tls.client_cert}",
                    f"--key={self.tls.client_key}"]
        if user:
            cmd += [f"--user={user}:{self.users[user]}"]
        if self.netns:
            cmd = ["nsenter", f"--net=/run/netns/{self.netns}", *cmd]
        return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=10)

    def _enable_auth(self) -> None:
        root_password = "root-" + self.dir.name
        steps = [["role", "add", "root"], ["user", "add", f"root:{root_password}"],
                 ["user", "grant-role", "root", "root"]]
        for name, password in self.users.items():
            steps += [["user", "add", f"{name}:{password}"], ["role", "add", name],
                      ["role", "grant-permission", name, "--prefix=true", "readwrite", "/"],
                      ["user", "grant-role", name, name]]
        steps.append(["auth", "enable"])
        for step in steps:
            result = self.etcdctl(*step)
            if result.returncode != 0:
                raise RuntimeError(f"etcdctl {' '.join(step)}: {result.stderr.strip()}")

    def start(self) -> EtcdServer:
        binary = shutil.which("etcd")
        if binary is None:
            raise RuntimeError("etcd is not installed (apt-get install etcd-server)")
        client = self.client_url
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
        if self.tls is not None:
            cmd += ["--cert-file", str(self.tls.server_cert), "--key-file",
                    str(self.tls.server_key), "--client-cert-auth",
                    "--trusted-ca-file", str(self.tls.ca)]
        if self.netns:
            cmd = ["nsenter", f"--net=/run/netns/{self.netns}", *cmd]
        log = open(self.dir / "etcd.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited: {(self.dir / 'etcd.log').read_text()}")
            if self.etcdctl("endpoint", "health").returncode == 0:
                if self.users:
                    self._enable_auth()
                return self
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
