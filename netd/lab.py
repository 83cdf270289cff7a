"""Simulated hosts on one machine: the harness shared by tests, benchmarks and the demo.

A Lab is an underlay "switch" namespace (a Linux bridge) and N host namespaces, each
joined to the switch by a veth and running a real `netd` process (started with
`nsenter --net`, so it shares our mount namespace and sees netns we create later).
The store is a real etcd member inside the switch namespace, or one embedded SQLite
file that all daemons share. Containers are namespaces created from this process.

Every name carries the lab's random prefix; `close()` removes every namespace,
process and file the lab made, and is safe to call after a partial start.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

UNDERLAY_NET = "10.250.0"
ETCD_ADDRESS = f"{UNDERLAY_NET}.254"


def run(
    cmd: Sequence[str], check: bool = True, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check, timeout=timeout)


def ns_exec(netns: str, *cmd: str) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{netns}", *cmd]


def console_script(name: str) -> str:
    """A console script of this installation (the venv's), else from PATH."""
    candidate = Path(sys.executable).with_name(name)
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed")
    return found


@dataclass
class LabHost:
    name: str
    netns: str
    underlay_ip: str
    socket: Path
    state_dir: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)


class Lab:
    def __init__(
        self,
        hosts: int = 2,
        store: str = "embedded",
        host_ttl: int = 30,
        prefix: str | None = None,
        underlay_mtu: int = 1500,
        resync_interval: float = 30.0,
    ) -> None:
        if store not in ("embedded", "etcd"):
            raise ValueError("store must be 'embedded' or 'etcd'")
        self.prefix = prefix or f"nl{secrets.token_hex(2)}"
        self.store_kind = store
        self.host_ttl = host_ttl
        self.underlay_mtu = underlay_mtu
        self.resync_interval = resync_interval
        self.dir = Path(tempfile.mkdtemp(prefix=f"netd-{self.prefix}-"))
        self.switch = f"{self.prefix}-ul"
        self.hosts: dict[str, LabHost] = {}
        self.containers: dict[str, str] = {}  # container netns -> host name
        self._namespaces: list[str] = []
        self._etcd: subprocess.Popen[bytes] | None = None
        self._logs: list[IO[bytes]] = []  # child processes' log files, closed by close()
        self._n_hosts = hosts
        self.store_url = ""

    # --- lifecycle ----------------------------------------------------------------
    def __enter__(self) -> Lab:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> Lab:
        self._add_netns(self.switch)
        run(ns_exec(self.switch, "ip", "link", "add", "sw", "type", "bridge"))
        run(ns_exec(self.switch, "ip", "link", "set", "sw", "mtu", str(self.underlay_mtu), "up"))
        run(ns_exec(self.switch, "ip", "link", "set", "lo", "up"))
        if self.store_kind == "etcd":
            run(ns_exec(self.switch, "ip", "addr", "add", f"{ETCD_ADDRESS}/24", "dev", "sw"))
            self._start_etcd()
        else:
            self.store_url = f"sqlite://{self.dir / 'netd.db'}"
        for i in range(1, self._n_hosts + 1):
            self.add_host(f"h{i}")
        for host in self.hosts.values():
            self.start_netd(host.name)
        return self

    def close(self) -> None:
        for host in self.hosts.values():
            self._terminate(host.proc)
            host.proc = None
        if self._etcd is not None:
            self._terminate(self._etcd)
            self._etcd = None
        for netns in reversed(self._namespaces):
            run(["ip", "netns", "del", netns], check=False)
        self._namespaces.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _log_file(self, path: Path) -> IO[bytes]:
        log = open(path, "ab")  # noqa: SIM115 - the child writes to it until close()
        self._logs.append(log)
        return log

    def _add_netns(self, name: str) -> None:
        run(["ip", "netns", "add", name])
        self._namespaces.append(name)

    def _start_etcd(self) -> None:
        url = f"http://{ETCD_ADDRESS}:2379"
        peer = f"http://{ETCD_ADDRESS}:2380"
        log = self._log_file(self.dir / "etcd.log")
        self._etcd = subprocess.Popen(
            ns_exec(
                self.switch, "etcd", "--name", "lab", "--data-dir", str(self.dir / "etcd"),
                "--listen-client-urls", url, "--advertise-client-urls", url,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"lab={peer}", "--log-level", "error",
            ),
            stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            probe = run(ns_exec(self.switch, "etcdctl", f"--endpoints={url}", "endpoint",
                                "health"), check=False)
            if probe.returncode == 0:
                self.store_url = f"etcd://{ETCD_ADDRESS}:2379"
                return
            if self._etcd.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"etcd did not start: {(self.dir / 'etcd.log').read_text()[-500:]}")

    def add_host(self, name: str) -> LabHost:
        index = len(self.hosts) + 1
        netns = f"{self.prefix}-{name}"
        self._add_netns(netns)
        ip = f"{UNDERLAY_NET}.{index}"
        run(["ip", "link", "add", "ul0", "netns", netns, "type", "veth", "peer", "name",
             f"p-{name}", "netns", self.switch])
        run(ns_exec(self.switch, "ip", "link", "set", f"p-{name}", "master", "sw", "mtu",
                    str(self.underlay_mtu), "up"))
        for cmd in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "link", "set", "ul0", "mtu", str(self.underlay_mtu), "up"],
            ["ip", "addr", "add", f"{ip}/24", "dev", "ul0"],
        ):
            run(ns_exec(netns, *cmd))
        host_dir = self.dir / name
        host_dir.mkdir()
        host = LabHost(
            name=name, netns=netns, underlay_ip=ip, socket=host_dir / "netd.sock",
            state_dir=host_dir / "state", log=host_dir / "netd.log",
        )
        self.hosts[name] = host
        return host

    def start_netd(self, name: str, wait: float = 20.0) -> None:
        host = self.hosts[name]
        cmd = ns_exec(
            host.netns, console_script("netd"), "--host", name, "--underlay-ip", host.underlay_ip,
            "--store", self.store_url, "--socket", str(host.socket),
            "--state-dir", str(host.state_dir), "--host-ttl", str(self.host_ttl),
            "--resync-interval", str(self.resync_interval), "--log-level", "info",
            *host.extra_args,
        )
        log = self._log_file(host.log)
        host.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + wait
        while not host.socket.exists():
            if host.proc.poll() is not None:
                raise RuntimeError(f"netd on {name} exited: {host.log.read_text()[-800:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"netd on {name} did not open its socket within {wait} s")
            time.sleep(0.05)

    def stop_netd(self, name: str, kill: bool = False) -> None:
        host = self.hosts[name]
        self._terminate(host.proc, sig=signal.SIGKILL if kill else signal.SIGTERM)
        host.proc = None
        if kill and host.socket.exists():
            host.socket.unlink()

    @staticmethod
    def _terminate(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    # --- containers and commands -------------------------------------------------------
    def add_container(self, host: str, name: str) -> str:
        """A container (netns) on `host`; returns its netns name, which is its endpoint name."""
        netns = f"{self.prefix}-{name}"
        self._add_netns(netns)
        run(ns_exec(netns, "ip", "link", "set", "lo", "up"))
        self.containers[netns] = host
        return netns

    def remove_container(self, netns: str) -> None:
        run(["ip", "netns", "del", netns], check=False)
        if netns in self._namespaces:
            self._namespaces.remove(netns)
        self.containers.pop(netns, None)

    def netctl(self, host: str, *args: str, check: bool = True,
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [console_script("netctl"), "--socket", str(self.hosts[host].socket), *args]
        result = run(cmd, check=False, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"netctl {' '.join(args)} on {host} failed: {result.stderr.strip()}")
        return result

    def netctl_json(self, host: str, *args: str) -> Any:
        return json.loads(self.netctl(host, "--json", *args).stdout)

    def in_container(self, netns: str, *cmd: str, check: bool = False,
                     timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return run(ns_exec(netns, *cmd), check=check, timeout=timeout)

    def ping(self, netns: str, ip: str, count: int = 1, wait: float = 1.0,
             size: int | None = None, dont_fragment: bool = False,
             interval: float | None = None) -> subprocess.CompletedProcess[str]:
        cmd = ["ping", "-n", "-q", "-c", str(count), "-W", str(wait)]
        if size is not None:
            cmd += ["-s", str(size)]
        if dont_fragment:
            cmd += ["-M", "do"]
        if interval is not None:
            cmd += ["-i", str(interval)]
        return self.in_container(netns, *cmd, ip, timeout=count * max(wait, interval or 1) + 10)

    def wait_ping(self, netns: str, ip: str, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ping(netns, ip, wait=0.5).returncode == 0:
                return True
        return False


def tcpdump_available() -> bool:
    return shutil.which("tcpdump") is not None


def is_root() -> bool:
    return os.geteuid() == 0
