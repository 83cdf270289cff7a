"""Simulated hosts on one machine: the harness shared by tests, benchmarks and the demo.

A Lab is an underlay "switch" namespace (a Linux bridge) and N host namespaces, each
joined to the switch by a veth and running a real `netd` process (started with
`nsenter --net`, so it shares our mount namespace and sees netns we create later).
The store is a real etcd member inside the switch namespace, a cluster of etcd members
each in a namespace of its own on the underlay (`etcd_members=3`, so a member's link
can be cut), optionally over TLS with client certificates (`etcd_tls=True`), or one
embedded SQLite file that all daemons share. Containers are namespaces created from
this process.

Every name carries the lab's random prefix; `close()` removes every namespace,
process and file the lab made, and is safe to call after a partial start.
"""

from __future__ import annotations

import contextlib
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
ETCD_ADDRESS = f"{UNDERLAY_NET}.254"  # the single member, in the switch namespace
ETCD_MEMBER_BASE = 250  # member i of a cluster: UNDERLAY_NET.(250 + i), netns PREFIX-mi


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
class EtcdMember:
    name: str
    netns: str
    address: str
    link: str  # its port on the switch bridge ("" for the member in the switch netns)
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.address}:2379"


@dataclass(frozen=True)
class EtcdTls:
    """PEM files a TLS lab made: a CA, the members' server certificate, a client's."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def write_certificates(directory: Path, addresses: Sequence[str]) -> EtcdTls:
    """A throwaway CA, a server certificate for `addresses` and a client certificate."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)] if common else [])

    def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
        path.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ))
        path.chmod(0o600)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("netd lab CA")).issuer_name(name("netd lab CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def issue(common: str, usage: list[x509.ObjectIdentifier],
              sans: list[x509.GeneralName]) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder().subject_name(name(common)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    # etcd's JSON gateway dials its own gRPC server with the server certificate: it
    # must be good for client authentication too, and carry no common name (etcd with
    # auth enabled refuses a gateway request whose certificate names a user)
    server, server_key = issue("", [
        ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH], [
        x509.IPAddress(ipaddress.ip_address(a)) for a in [*addresses, "127.0.0.1"]
    ])
    client, client_key = issue("", [ExtendedKeyUsageOID.CLIENT_AUTH], [])
    tls = EtcdTls(
        ca=directory / "ca.pem", server_cert=directory / "server.pem",
        server_key=directory / "server-key.pem", client_cert=directory / "client.pem",
        client_key=directory / "client-key.pem",
    )
    directory.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    tls.ca.write_bytes(ca.public_bytes(pem))
    tls.server_cert.write_bytes(server.public_bytes(pem))
    tls.client_cert.write_bytes(client.public_bytes(pem))
    write_key(tls.server_key, server_key)
    write_key(tls.client_key, client_key)
    return tls


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
    env: dict[str, str] = field(default_factory=dict)  # extra environment for its netd


class Lab:
    def __init__(
        self,
        hosts: int = 2,
        store: str = "embedded",
        host_ttl: int = 30,
        prefix: str | None = None,
        underlay_mtu: int = 1500,
        resync_interval: float = 30.0,
        etcd_members: int = 1,
        etcd_tls: bool = False,
    ) -> None:
        if store not in ("embedded", "etcd"):
            raise ValueError("store must be 'embedded' or 'etcd'")
        if etcd_members < 1:
            raise ValueError("etcd_members must be at least 1")
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
        self.etcd_members: list[EtcdMember] = []
        self.etcd_tls: EtcdTls | None = None
        self._n_etcd = etcd_members
        self._want_tls = etcd_tls
        self._logs: list[IO[bytes]] = []  # child processes' log files, closed by close()
        self._n_hosts = hosts
        self.store_url = ""
        self.store_args: list[str] = []  # what every netd gets besides --store (TLS files)

    @property
    def _etcd(self) -> subprocess.Popen[bytes] | None:
        """The first etcd member's process (the only one in a one-member lab)."""
        return self.etcd_members[0].proc if self.etcd_members else None

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
        # an address of its own: a bridge without one takes its lowest port's, so adding a
        # host could change the MAC the hosts have cached for etcd's address on it
        run(ns_exec(self.switch, "ip", "link", "add", "sw", "address", "02:00:0a:fa:00:fe",
                    "type", "bridge"))
        run(ns_exec(self.switch, "ip", "link", "set", "sw", "mtu", str(self.underlay_mtu), "up"))
        run(ns_exec(self.switch, "ip", "link", "set", "lo", "up"))
        if self.store_kind == "etcd":
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
        for member in self.etcd_members:
            if member.proc is not None and member.proc.poll() is None:
                with contextlib.suppress(OSError):
                    member.proc.send_signal(signal.SIGCONT)  # a test may have frozen it
            self._terminate(member.proc)
            member.proc = None
        self.etcd_members.clear()
        for netns in reversed(self._namespaces):
            run(["ip", "netns", "del", netns], check=False)
        self._namespaces.clear()
        for netns in gateway_namespaces(self.dir):  # the daemons' router namespaces
            run(["ip", "netns", "del", netns], check=False)
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
        if self._n_etcd == 1:
            run(ns_exec(self.switch, "ip", "addr", "add", f"{ETCD_ADDRESS}/24", "dev", "sw"))
            self.etcd_members.append(EtcdMember(
                name="m1", netns=self.switch, address=ETCD_ADDRESS, link="",
                data_dir=self.dir / "etcd"))
        else:
            for i in range(1, self._n_etcd + 1):
                netns = f"{self.prefix}-m{i}"
                address = f"{UNDERLAY_NET}.{ETCD_MEMBER_BASE + i}"
                self._plug(netns, f"p-m{i}", address)
                self.etcd_members.append(EtcdMember(
                    name=f"m{i}", netns=netns, address=address, link=f"p-m{i}",
                    data_dir=self.dir / f"etcd-m{i}"))
        scheme = "http"
        if self._want_tls:
            self.etcd_tls = write_certificates(
                self.dir / "tls", [m.address for m in self.etcd_members])
            scheme = "https"
            self.store_args = [
                "--store-ca", str(self.etcd_tls.ca), "--store-cert", str(self.etcd_tls.client_cert),
                "--store-key", str(self.etcd_tls.client_key),
            ]
        for member in self.etcd_members:
            self.start_etcd(member.name, wait=False)
        for member in self.etcd_members:
            self.wait_etcd(member.name)
        endpoints = ",".join(m.endpoint for m in self.etcd_members)
        self.store_url = f"{'etcds' if scheme == 'https' else 'etcd'}://{endpoints}"

    def etcd_member(self, name: str) -> EtcdMember:
        return next(m for m in self.etcd_members if m.name == name)

    def start_etcd(self, name: str, wait: bool = True) -> None:
        """Start (or restart, on its data) etcd member `name`."""
        member = self.etcd_member(name)
        scheme = "https" if self._want_tls else "http"
        url = f"{scheme}://{member.address}:2379"
        cluster = ",".join(f"{m.name}=http://{m.address}:2380" for m in self.etcd_members)
        cmd = [
            "etcd", "--name", member.name, "--data-dir", str(member.data_dir),
            "--listen-client-urls", url, "--advertise-client-urls", url,
            "--listen-peer-urls", f"http://{member.address}:2380",
            "--initial-advertise-peer-urls", f"http://{member.address}:2380",
            "--initial-cluster", cluster, "--initial-cluster-token", self.prefix,
            "--pre-vote",  # a member back from a partition does not depose the leader
            "--log-level", "error",
        ]
        if self.etcd_tls is not None:
            cmd += [
                "--cert-file", str(self.etcd_tls.server_cert),
                "--key-file", str(self.etcd_tls.server_key),
                "--client-cert-auth", "--trusted-ca-file", str(self.etcd_tls.ca),
            ]
        log = self._log_file(self.dir / f"etcd-{member.name}.log")
        member.proc = subprocess.Popen(ns_exec(member.netns, *cmd), stdout=log,
                                       stderr=subprocess.STDOUT)
        if wait:
            self.wait_etcd(name)

    def stop_etcd(self, name: str) -> None:
        member = self.etcd_member(name)
        self._terminate(member.proc)
        member.proc = None

    def etcdctl(self, name: str, *args: str, timeout: float = 10
                ) -> subprocess.CompletedProcess[str]:
        """etcdctl against member `name`, from its own namespace."""
        member = self.etcd_member(name)
        scheme = "https" if self.etcd_tls is not None else "http"
        cmd = ["etcdctl", f"--endpoints={scheme}://{member.endpoint}",
               "--dial-timeout=2s", "--command-timeout=3s"]
        if self.etcd_tls is not None:
            cmd += [f"--cacert={self.etcd_tls.ca}", f"--cert={self.etcd_tls.client_cert}",
                    f"--key={self.etcd_tls.client_key}"]
        return run(ns_exec(member.netns, *cmd, *args), check=False, timeout=timeout)

    def wait_etcd(self, name: str, timeout: float = 30) -> None:
        member = self.etcd_member(name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.etcdctl(name, "endpoint", "health").returncode == 0:
                return
            if member.proc is None or member.proc.poll() is not None:
                break
            time.sleep(0.1)
        log = self.dir / f"etcd-{member.name}.log"
        raise RuntimeError(f"etcd {name} did not start: {log.read_text()[-500:]}")

    def _plug(self, netns: str, link: str, address: str) -> None:
        """Namespace `netns` joined to the switch by veth `link` (its side: ul0)."""
        self._add_netns(netns)
        run(["ip", "link", "add", "ul0", "netns", netns, "type", "veth", "peer", "name",
             link, "netns", self.switch])
        run(ns_exec(self.switch, "ip", "link", "set", link, "master", "sw", "mtu",
                    str(self.underlay_mtu), "up"))
        for cmd in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "link", "set", "ul0", "mtu", str(self.underlay_mtu), "up"],
            ["ip", "addr", "add", f"{address}/24", "dev", "ul0"],
        ):
            run(ns_exec(netns, *cmd))

    def add_host(self, name: str) -> LabHost:
        index = len(self.hosts) + 1
        netns = f"{self.prefix}-{name}"
        ip = f"{UNDERLAY_NET}.{index}"
        self._plug(netns, f"p-{name}", ip)
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
            "--store", self.store_url, *self.store_args, "--socket", str(host.socket),
            "--state-dir", str(host.state_dir), "--host-ttl", str(self.host_ttl),
            "--resync-interval", str(self.resync_interval), "--log-level", "info",
            *host.extra_args,
        )
        log = self._log_file(host.log)
        host.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **host.env} if host.env else None)
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


def gateway_namespaces(lab_dir: Path) -> list[str]:
    """The router namespaces the lab's daemons made (netd.gateway records them in each
    host's state dir): they outlive the daemons, so the lab removes them."""
    names: set[str] = set()
    for record in Path(lab_dir).glob("*/state/gateway.json"):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            names |= {str(n) for n in json.loads(record.read_text())["routers"]}
    return sorted(n for n in names if n.startswith("ndrt"))


def tcpdump_available() -> bool:
    return shutil.which("tcpdump") is not None


def is_root() -> bool:
    return os.geteuid() == 0
