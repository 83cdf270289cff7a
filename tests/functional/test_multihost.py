"""Multi-host acceptance of the weave driver: three simulated hosts, real etcd (plain, and
over TLS with client certificates: every test runs on both), real netd
processes, real packets on a real underlay.

One lab serves the whole module (starting hosts and etcd costs seconds). Each test
builds its own networks and containers on it; wire checks capture on the underlay
switch port of h1 (`p-h1`) or inside containers with tcpdump and decode with tshark or
a few lines of pcap parsing here. The dead-host test kills h3's daemon and brings it
back, so it leaves the lab as it found it.
"""

from __future__ import annotations

import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from netd.lab import Lab, ns_exec, run
from netd.store.keys import Keys
from plugins.weave.names import vxlan_name
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.root, pytest.mark.etcd]

HOST_TTL = 3
HOSTS = ("h1", "h2", "h3")
# (extra `network create` flags, first three octets of the subnet) per backend case
BACKENDS: dict[str, tuple[list[str], str]] = {
    "fastdp": (["--backend", "fastdp"], "10.61.0"),
    "sleeve": (["--backend", "sleeve"], "10.62.0"),
    "sleeve-encrypt": (["--backend", "sleeve", "--encrypt"], "10.63.0"),
}
PATTERN = "6e6574642d70696e672d7061796c6f61"  # "netd-ping-payloa", ping -p fills with it
PATTERN_BYTES = bytes.fromhex(PATTERN)


# every test runs over plain etcd and over etcd with TLS and client certificates
STORES: dict[str, dict[str, Any]] = {"etcd": {}, "etcd-tls": {"etcd_tls": True}}


@pytest.fixture(scope="module", params=list(STORES))
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    with Lab(hosts=len(HOSTS), store="etcd", host_ttl=HOST_TTL,
             **STORES[request.param]) as lab:
        yield lab


# --- helpers ---------------------------------------------------------------------------
def host_cmd(lab: Lab, host: str, *cmd: str) -> str:
    return run(ns_exec(lab.hosts[host].netns, *cmd), check=False).stdout


def fdb(lab: Lab, host: str, vni: int) -> str:
    return host_cmd(lab, host, "bridge", "fdb", "show", "dev", vxlan_name(vni))


def neigh(lab: Lab, host: str, vni: int) -> str:
    return host_cmd(lab, host, "ip", "neigh", "show", "dev", vxlan_name(vni))


def log_tail(lab: Lab, host: str, lines: int = 8) -> str:
    return "\n".join(lab.hosts[host].log.read_text().splitlines()[-lines:])


def pcap_summary(pcap: Path) -> str:
    """What tshark makes of a capture, for failure messages."""
    r = run(["tshark", "-r", str(pcap)], check=False)
    return f"{pcap.stat().st_size} bytes: {r.stdout[:2000]} {r.stderr[-300:]}"


def ping_once(lab: Lab, netns: str, ip: str, deadline: int = 1
              ) -> subprocess.CompletedProcess[str]:
    """Probe every 50 ms until one reply or `deadline` seconds have passed."""
    cmd = ["ping", "-n", "-q", "-c", "1", "-i", "0.05", "-w", str(deadline)]
    return lab.in_container(netns, *cmd, ip, timeout=deadline + 10)


@dataclass
class Mesh:
    """A network with one container per host, each holding a fixed IP."""

    network: dict[str, Any]
    containers: dict[str, str] = field(default_factory=dict)  # host -> netns
    ips: dict[str, str] = field(default_factory=dict)  # host -> ip

    @property
    def vni(self) -> int:
        return int(self.network["vni"])


def build_mesh(lab: Lab, name: str, flags: list[str], net: str, last: int = 10,
               hosts: tuple[str, ...] = HOSTS, tenant: str = "default") -> Mesh:
    lab.netctl("h1", "network", "create", name, "--subnet", f"{net}.0/24",
               "--tenant", tenant, *flags)
    mesh = Mesh(network=lab.netctl_json("h1", "network", "inspect", name))
    for i, host in enumerate(hosts, start=1):
        netns = lab.add_container(host, f"{name}-{host}")
        ip = f"{net}.{last + i}"
        lab.netctl(host, "attach", netns, "--network", name, "--ip", ip)
        mesh.containers[host] = netns
        mesh.ips[host] = ip
    return mesh


class Meshes:
    """The module's full-mesh network per backend, each built on first use (a failure
    to build is remembered and re-raised, so every test that needs it reports it)."""

    def __init__(self, lab: Lab) -> None:
        self._lab = lab
        self._built: dict[str, Mesh | Exception] = {}

    def __call__(self, backend: str) -> Mesh:
        if backend not in self._built:
            flags, net = BACKENDS[backend]
            try:
                self._built[backend] = build_mesh(self._lab, f"mesh-{backend}", flags, net)
            except Exception as exc:  # remembered: the network may exist half-built
                self._built[backend] = exc
        result = self._built[backend]
        if isinstance(result, Exception):
            raise result
        return result

    def working(self) -> dict[str, Mesh]:
        return {b: m for b, m in self._built.items() if isinstance(m, Mesh)}


@pytest.fixture(scope="module")
def meshes(lab: Lab) -> Meshes:
    return Meshes(lab)


class Capture:
    """tcpdump on one interface of one namespace, written to a pcap file; `stop()`
    returns the captured frames as bytes."""

    def __init__(self, netns: str, iface: str, path: Path, bpf: str = "") -> None:
        self.path = path
        # immediate mode: frames reach the file at once, not when a ring block fills
        cmd = ["tcpdump", "--immediate-mode", "-Z", "root", "-i", iface, "-n", "-U",
               "-w", str(path)]
        self._proc = subprocess.Popen(
            ns_exec(netns, *cmd, *bpf.split()),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        assert self._proc.stderr is not None
        line = self._proc.stderr.readline()  # "listening on IF ..." once it captures
        if "listening on" not in line:
            self._proc.kill()
            raise RuntimeError(f"tcpdump on {netns}/{iface} did not start: {line}")

    def stop(self) -> list[bytes]:
        time.sleep(0.2)  # let in-flight frames arrive
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        return read_pcap(self.path)

    def kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


def read_pcap(path: Path) -> list[bytes]:
    data = path.read_bytes()
    if len(data) < 24:
        return []
    endian = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    frames, offset = [], 24
    while offset + 16 <= len(data):
        _sec, _frac, incl, _orig = struct.unpack(f"{endian}IIII", data[offset : offset + 16])
        frames.append(data[offset + 16 : offset + 16 + incl])
        offset += 16 + incl
    return frames


@dataclass(frozen=True)
class Frame:
    ethertype: int
    src: str = ""  # IPv4 addresses, when it is IPv4
    dst: str = ""
    payload: bytes = b""  # everything after the Ethernet header


def decode(frame: bytes) -> Frame:
    ethertype = int.from_bytes(frame[12:14], "big")
    payload = frame[14:]
    if ethertype == 0x0800 and len(payload) >= 20:
        return Frame(ethertype, socket.inet_ntoa(payload[12:16]),
                     socket.inet_ntoa(payload[16:20]), payload)
    return Frame(ethertype, payload=payload)


def inner_ip_signature(src: str, dst: str) -> bytes:
    """The source+destination bytes of an IPv4 header from src to dst."""
    return socket.inet_aton(src) + socket.inet_aton(dst)


@pytest.fixture
def captures() -> Iterator[list[Capture]]:
    """Captures a test started; killed at teardown even when the test fails."""
    started: list[Capture] = []
    yield started
    for cap in started:
        cap.kill()


# --- hosts ------------------------------------------------------------------------------
def test_host_ls_lists_every_host_alive_with_underlay_ip(lab: Lab) -> None:
    for viewer in HOSTS:
        hosts = {h["name"]: h for h in lab.netctl_json(viewer, "host", "ls")}
        assert set(hosts) == set(HOSTS)
        for name in HOSTS:
            assert hosts[name]["alive"] is True
            assert hosts[name]["underlay_ip"] == lab.hosts[name].underlay_ip
    text = lab.netctl("h2", "host", "ls").stdout
    for name in HOSTS:
        assert any(line.split()[:3] == [name, lab.hosts[name].underlay_ip, "alive"]
                   for line in text.splitlines()), text


# --- full mesh per backend -------------------------------------------------------------
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_full_mesh_fixed_ips(lab: Lab, meshes: Meshes, backend: str) -> None:
    mesh = meshes(backend)
    assert mesh.network["backend"] == backend.split("-")[0]
    assert mesh.network["encrypt"] is backend.endswith("encrypt")
    for host, netns in mesh.containers.items():
        addr = run(ns_exec(netns, "ip", "-o", "-4", "addr", "show", "dev", "eth0")).stdout
        assert f"{mesh.ips[host]}/24" in addr
    for src in HOSTS:
        for dst in HOSTS:
            if src == dst:
                continue
            netns, ip = mesh.containers[src], mesh.ips[dst]
            assert lab.wait_ping(netns, ip, timeout=5), f"{src} -> {dst} ({ip}) unreachable"
            result = lab.ping(netns, ip, count=3, interval=0.1)
            assert result.returncode == 0 and " 0% packet loss" in result.stdout, (
                f"{src} -> {dst}: {result.stdout}{result.stderr}"
            )


# --- MTU ----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_largest_df_ping_passes_one_more_byte_is_refused_locally(
    lab: Lab, meshes: Meshes, backend: str
) -> None:
    mesh = meshes(backend)
    mtu = int(mesh.network["mtu"])
    src, dst_ip = mesh.containers["h1"], mesh.ips["h2"]
    link = run(ns_exec(src, "ip", "-o", "link", "show", "dev", "eth0")).stdout
    assert f" mtu {mtu} " in link
    assert lab.wait_ping(src, dst_ip, timeout=5)
    biggest = lab.ping(src, dst_ip, count=3, interval=0.1, size=mtu - 28, dont_fragment=True)
    assert biggest.returncode == 0 and " 0% packet loss" in biggest.stdout, (
        f"{backend}: DF ping of {mtu - 28} bytes (mtu {mtu}) lost: "
        f"{biggest.stdout}{biggest.stderr}"
    )
    # not quiet: ping -q swallows the local error it reads back from the socket
    too_big = lab.in_container(src, "ping", "-n", "-c", "1", "-W", "1", "-M", "do",
                               "-s", str(mtu - 27), dst_ip)
    out = too_big.stdout + too_big.stderr
    assert too_big.returncode != 0
    assert "message too long" in out, out
    # the other direction and another pair, so no host's datapath is narrower
    back = lab.ping(mesh.containers["h3"], mesh.ips["h1"], count=2, interval=0.1,
                    size=mtu - 28, dont_fragment=True)
    assert back.returncode == 0, back.stdout + back.stderr


# --- wire ---------------------------------------------------------------------------------
def test_fastdp_underlay_carries_vxlan_with_the_network_vni(
    lab: Lab, meshes: Meshes, captures: list[Capture]
) -> None:
    mesh = meshes("fastdp")
    pcap = lab.dir / "fastdp-wire.pcap"
    cap = Capture(lab.switch, "p-h1", pcap, "udp port 4789")
    captures.append(cap)
    assert lab.ping(mesh.containers["h1"], mesh.ips["h2"], count=3, interval=0.1).returncode == 0
    assert lab.ping(mesh.containers["h3"], mesh.ips["h1"], count=3, interval=0.1).returncode == 0
    cap.stop()
    decoded = run(["tshark", "-r", str(pcap), "-Y", "vxlan", "-T", "fields",
                   "-e", "vxlan.vni", "-e", "ip.src", "-e", "ip.dst"]).stdout
    rows = [line.split("\t") for line in decoded.splitlines() if line.strip()]
    assert len(rows) >= 12, decoded + pcap_summary(pcap)  # 2 x 3 requests and 3 replies
    assert {r[0] for r in rows} == {str(mesh.vni)}, decoded
    # tshark lists outer then inner addresses: the inner ones are the containers'
    pairs = {(r[1].split(",")[-1], r[2].split(",")[-1]) for r in rows}
    assert (mesh.ips["h1"], mesh.ips["h2"]) in pairs
    assert (mesh.ips["h3"], mesh.ips["h1"]) in pairs
    outer = {(r[1].split(",")[0], r[2].split(",")[0]) for r in rows}
    assert outer <= {
        (lab.hosts["h1"].underlay_ip, lab.hosts["h2"].underlay_ip),
        (lab.hosts["h2"].underlay_ip, lab.hosts["h1"].underlay_ip),
        (lab.hosts["h1"].underlay_ip, lab.hosts["h3"].underlay_ip),
        (lab.hosts["h3"].underlay_ip, lab.hosts["h1"].underlay_ip),
    }, outer


@pytest.mark.parametrize("backend", ["sleeve-encrypt", "sleeve"])
def test_sleeve_payload_is_opaque_only_when_encrypted(
    lab: Lab, meshes: Meshes, captures: list[Capture], backend: str
) -> None:
    """Encrypted: no inner IP header and no ping payload on the wire. Plain sleeve is
    the control: the same search finds both, so the check can fail."""
    mesh = meshes(backend)
    pcap = lab.dir / f"{backend}-wire.pcap"
    cap = Capture(lab.switch, "p-h1", pcap, "not port 2379")
    captures.append(cap)
    src, dst = mesh.containers["h1"], mesh.ips["h2"]
    pinged = lab.in_container(src, "ping", "-n", "-q", "-c", "5", "-i", "0.1", "-s", "200",
                              "-p", PATTERN, dst, timeout=20)
    frames = [decode(f) for f in cap.stop()]
    assert pinged.returncode == 0, pinged.stdout + pinged.stderr
    underlay = {lab.hosts[h].underlay_ip for h in HOSTS}
    carried = [f for f in frames if f.src in underlay and f.dst in underlay]
    assert len(carried) >= 10, f"expected 10 carried frames, saw {len(carried)}"
    signatures = (inner_ip_signature(mesh.ips["h1"], dst), inner_ip_signature(dst, mesh.ips["h1"]))
    with_payload = [f for f in carried if PATTERN_BYTES[:12] in f.payload]
    with_header = [f for f in carried if any(sig in f.payload for sig in signatures)]
    if backend == "sleeve-encrypt":
        assert not with_payload, f"{len(with_payload)} frames carry the ping payload in clear"
        assert not with_header, f"{len(with_header)} frames carry the inner IP header in clear"
    else:
        assert len(with_payload) >= 10 and len(with_header) >= 10


def test_an_encrypted_networks_key_never_leaves_the_store(lab: Lab, meshes: Meshes) -> None:
    """Not in any daemon's log, nor in anything netctl shows (tables or --json)."""
    mesh = meshes("sleeve-encrypt")
    name = mesh.network["name"]
    got = lab.etcdctl(lab.etcd_members[0].name, "get", "--print-value-only",
                      Keys().network_key(name))
    key = got.stdout.strip()
    assert got.returncode == 0 and len(key) == 64, got.stderr
    shown = [
        lab.netctl(h, *args).stdout
        for h in HOSTS
        for args in (["network", "inspect", name], ["--json", "network", "inspect", name],
                     ["--json", "network", "ls"], ["--json", "endpoint", "ls"],
                     ["--json", "status"], ["--json", "host", "ls"])
    ]
    logs = [lab.hosts[h].log.read_text() for h in HOSTS]
    for text in shown + logs:
        assert key not in text and key.upper() not in text


# --- tenants ------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_same_subnet_in_two_tenants_never_crosses(
    lab: Lab, captures: list[Capture], backend: str
) -> None:
    """Tenants A and B use the same subnet, the same IPs (so the same MACs) on the same
    two hosts. A's broadcast, ARP and unicast reach A's containers and no one of B's."""
    flags, _ = BACKENDS[backend]
    net = "10.88.0"
    a = build_mesh(lab, f"iso-a-{backend}", flags, net, hosts=("h1", "h2"),
                   tenant=f"ta-{backend}")
    b = build_mesh(lab, f"iso-b-{backend}", flags, net, hosts=("h1", "h2"),
                   tenant=f"tb-{backend}")
    assert a.vni != b.vni and a.ips == b.ips
    assert lab.wait_ping(a.containers["h1"], a.ips["h2"], timeout=5)
    assert lab.wait_ping(b.containers["h1"], b.ips["h2"], timeout=5)

    watch = {"a2": a.containers["h2"], "b1": b.containers["h1"], "b2": b.containers["h2"]}
    caps = {}
    for label, netns in watch.items():
        caps[label] = Capture(netns, "eth0", lab.dir / f"iso-{backend}-{label}.pcap")
        captures.append(caps[label])
    a1, b1 = a.containers["h1"], b.containers["h1"]
    pat_b = PATTERN[::-1]
    for cmd in (
        # nobody answers broadcast pings (icmp_echo_ignore_broadcasts): -w bounds the wait
        [a1, "ping", "-n", "-q", "-b", "-c", "3", "-i", "0.1", "-w", "1", "-p", PATTERN,
         f"{net}.255"],
        [a1, "ping", "-n", "-q", "-c", "3", "-i", "0.1", "-p", PATTERN, a.ips["h2"]],
        [a1, "ping", "-n", "-q", "-c", "1", "-W", "1", f"{net}.99"],  # ARP who-has, flooded
        [b1, "ping", "-n", "-q", "-c", "3", "-i", "0.1", "-p", pat_b, b.ips["h2"]],
    ):
        lab.in_container(*cmd, timeout=20)
    seen = {label: [decode(f) for f in cap.stop()] for label, cap in caps.items()}

    def from_a(frames: list[Frame]) -> list[Frame]:
        return [f for f in frames if PATTERN_BYTES[:12] in f.payload
                or f.dst == f"{net}.255"
                or (f.ethertype == 0x0806 and socket.inet_aton(f"{net}.99") in f.payload)]

    a2_broadcast = [f for f in seen["a2"] if f.dst == f"{net}.255"]
    a2_unicast = [f for f in seen["a2"] if f.dst == a.ips["h2"]
                  and PATTERN_BYTES[:12] in f.payload]
    assert len(a2_broadcast) >= 3, "A's broadcast did not reach A's other host"
    assert len(a2_unicast) >= 3, "A's unicast did not reach A's other container"
    for label in ("b1", "b2"):
        leaked = from_a(seen[label])
        assert not leaked, f"{label} (tenant B) saw {len(leaked)} of A's frames: {leaked[:2]}"
    assert not [f for f in seen["a2"] if bytes.fromhex(pat_b)[:12] in f.payload]
    assert [f for f in seen["b2"] if bytes.fromhex(pat_b)[:12] in f.payload], (
        "B's own traffic was not seen: the capture itself is broken"
    )
    for mesh in (a, b):
        for host, netns in mesh.containers.items():
            lab.netctl(host, "detach", netns, "--network", mesh.network["name"])
            lab.remove_container(netns)
        lab.netctl("h1", "network", "rm", mesh.network["name"])


# --- attach / detach across hosts ------------------------------------------------------------
def test_remote_endpoint_reachable_within_1s_and_detach_removes_it_everywhere(
    lab: Lab,
) -> None:
    net = "10.64.0"
    mesh = build_mesh(lab, "late", [], net, hosts=("h1", "h3"))
    vni = mesh.vni
    assert lab.wait_ping(mesh.containers["h1"], mesh.ips["h3"], timeout=5)
    h2 = lab.hosts["h2"].underlay_ip
    newcomer = lab.add_container("h2", "late-new")
    ip = f"{net}.50"
    lab.netctl("h2", "attach", newcomer, "--network", "late", "--ip", ip)
    attached, attached_wall = time.monotonic(), time.time()
    from_h1 = ping_once(lab, mesh.containers["h1"], ip, deadline=1)
    elapsed = time.monotonic() - attached
    assert from_h1.returncode == 0, (
        f"h1 did not reach {ip} within 1 s of its attach (returned at {attached_wall:.3f}); "
        f"h1 fdb: {fdb(lab, 'h1', vni)} h1 neigh: {neigh(lab, 'h1', vni)} "
        f"h2 ports: {host_cmd(lab, 'h2', 'bridge', 'link', 'show')} h1 log: {log_tail(lab, 'h1')}"
    )
    assert elapsed < 1.5  # ping's own -w 1 bounds it; this catches a stuck subprocess
    assert ping_once(lab, mesh.containers["h3"], ip, deadline=1).returncode == 0
    assert ping_once(lab, newcomer, mesh.ips["h1"], deadline=1).returncode == 0
    endpoints = lab.netctl_json("h2", "endpoint", "ls", "--network", "late")
    mac = next(e["mac"] for e in endpoints if e["ip"] == ip)
    for host in ("h1", "h3"):
        assert f"{mac} dst {h2}" in fdb(lab, host, vni)
        assert f"00:00:00:00:00:00 dst {h2}" in fdb(lab, host, vni)
        assert ip in neigh(lab, host, vni)

    lab.netctl("h2", "detach", newcomer, "--network", "late")

    def gone_everywhere() -> bool:
        return all(h2 not in fdb(lab, h, vni) and f"{ip} " not in neigh(lab, h, vni)
                   for h in ("h1", "h3"))

    assert wait_until(gone_everywhere, timeout=2.0), (
        f"h1 fdb: {fdb(lab, 'h1', vni)} neigh: {neigh(lab, 'h1', vni)}"
    )
    assert "eth0" not in run(ns_exec(newcomer, "ip", "-o", "link")).stdout
    assert lab.ping(mesh.containers["h1"], ip, wait=0.5).returncode != 0
    assert lab.ping(mesh.containers["h1"], mesh.ips["h3"]).returncode == 0


def test_attach_of_a_name_attached_on_another_host_is_refused(
    lab: Lab, meshes: Meshes
) -> None:
    mesh = meshes("fastdp")
    taken = mesh.containers["h1"]
    network = mesh.network["name"]
    before_eps = lab.netctl_json("h2", "endpoint", "ls")
    before_rev = lab.netctl_json("h2", "status")["store"]["revision"]
    before_links = host_cmd(lab, "h2", "ip", "-o", "link")
    result = lab.netctl("h2", "attach", taken, "--network", network, check=False)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert taken in lines[0] and "already attached" in lines[0] and "h1" in lines[0], lines[0]
    assert lab.netctl_json("h2", "endpoint", "ls") == before_eps
    assert lab.netctl_json("h2", "status")["store"]["revision"] == before_rev
    assert host_cmd(lab, "h2", "ip", "-o", "link") == before_links
    assert lab.ping(mesh.containers["h2"], mesh.ips["h1"]).returncode == 0


# --- host death -------------------------------------------------------------------------------
def test_dead_host_is_forgotten_after_its_lease_and_comes_back(
    lab: Lab, meshes: Meshes
) -> None:
    mesh = meshes("fastdp")
    vni, dead = mesh.vni, lab.hosts["h3"]
    survivors = ("h1", "h2")

    def h3_programmed(host: str) -> bool:
        return (f"dst {dead.underlay_ip}" in fdb(lab, host, vni)
                and f"{mesh.ips['h3']} " in neigh(lab, host, vni))

    assert all(h3_programmed(h) for h in survivors)
    lab.stop_netd("h3", kill=True)
    # the machine is gone, not only its netd: a host that still answers on the underlay
    # keeps forwarding and is kept by its peers (netd.liveness)
    run(ns_exec(dead.netns, "ip", "link", "set", "ul0", "down"))
    killed = time.monotonic()
    try:
        # a daemon restart must not look like death: nothing changes within the TTL
        time.sleep(HOST_TTL / 3)
        assert all(h3_programmed(h) for h in survivors)
        assert wait_until(lambda: not any(h3_programmed(h) for h in survivors)
                          and all(dead.underlay_ip not in fdb(lab, h, vni) for h in survivors),
                          timeout=HOST_TTL * 2 + 5), (
            f"h3 still programmed {time.monotonic() - killed:.1f} s after its netd died: "
            f"{fdb(lab, 'h1', vni)}"
        )
        assert time.monotonic() - killed >= HOST_TTL * 0.5
        hosts = {h["name"]: h for h in lab.netctl_json("h1", "host", "ls")}
        assert hosts["h3"]["alive"] is False
        assert hosts["h3"]["tunnel"] == "down" and hosts["h3"]["shared_networks"]
        assert hosts["h1"]["alive"] and hosts["h2"]["alive"]
        assert (hosts["h1"]["tunnel"], hosts["h2"]["tunnel"]) == ("self", "up")
        assert "dead" in next(line for line in lab.netctl("h2", "host", "ls").stdout.splitlines()
                              if line.startswith("h3"))
        for other in meshes.working().values():  # the survivors still talk, any backend
            assert lab.wait_ping(other.containers["h1"], other.ips["h2"], timeout=2), (
                other.network["name"]
            )
    finally:
        run(ns_exec(dead.netns, "ip", "link", "set", "ul0", "up"))
        lab.start_netd("h3")
    assert wait_until(lambda: all(h3_programmed(h) for h in survivors), timeout=5), (
        f"h3's entries did not come back: {fdb(lab, 'h1', vni)}"
    )
    hosts = {h["name"]: h for h in lab.netctl_json("h1", "host", "ls")}
    assert hosts["h3"]["alive"] is True and hosts["h3"]["tunnel"] == "up"
    assert hosts["h3"]["underlay_ip"] == dead.underlay_ip
    for other in meshes.working().values():  # a userspace datapath comes back with it
        name = other.network["name"]
        assert lab.wait_ping(other.containers["h1"], other.ips["h3"], timeout=5), name
        assert lab.wait_ping(other.containers["h3"], other.ips["h2"], timeout=5), name


def test_store_outage_longer_than_the_ttl_does_not_cut_healthy_hosts(
    lab: Lab, meshes: Meshes
) -> None:
    """Every lease lapses while etcd is frozen; live daemons re-register as soon as it is
    back, and nobody tears down tunnels to them meanwhile."""
    mesh = meshes("fastdp")
    etcd = lab._etcd
    assert etcd is not None
    pinger = subprocess.Popen(
        ns_exec(mesh.containers["h1"], "ping", "-n", "-q", "-i", "0.05", "-w",
                str(HOST_TTL * 2 + 6), mesh.ips["h2"]),
        stdout=subprocess.PIPE, text=True,
    )
    try:
        time.sleep(0.5)
        etcd.send_signal(signal.SIGSTOP)
        time.sleep(HOST_TTL * 2)
    finally:
        etcd.send_signal(signal.SIGCONT)
    out, _ = pinger.communicate(timeout=HOST_TTL * 2 + 20)
    assert " 0% packet loss" in out, out
    assert wait_until(
        lambda: all(h["alive"] for h in lab.netctl_json("h1", "host", "ls")), timeout=10
    )
    assert f"dst {lab.hosts['h2'].underlay_ip}" in fdb(lab, "h1", mesh.vni)
