"""Sleeve over real TAPs, bridges, veths and namespaces: two hosts, two VNIs (one plain,
one encrypted) on the same container subnet, so isolation is visible as well."""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from netd.model import network_mtu
from plugins.weave.crypto import WINDOW, FrameCipher
from plugins.weave.sleeve import F_ENCRYPTED, MAGIC, header
from tests.support.drivers import weave_backend
from tests.support.sleeve_runner import SleeveLab, in_ns, sh

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns, TAP)"),
    pytest.mark.skipif(not Path("/dev/net/tun").exists(), reason="no /dev/net/tun"),
]

PLAIN, ENC = 100, 200
SLEEVE = weave_backend("sleeve")
MTU = {PLAIN: network_mtu(SLEEVE, 1500), ENC: network_mtu(SLEEVE, 1500, encrypt=True)}
KEY = os.urandom(32)
IP = {"a1": "10.77.0.1", "a2": "10.77.0.2", "b1": "10.77.0.3", "b2": "10.77.0.4"}
PATTERN = "c0ffee15deadbeef0badf00d5eed1e55"


class Lab:
    def __init__(self, lab: SleeveLab) -> None:
        self.lab = lab
        self.h1, self.h2 = lab.hosts
        self.ns: dict[str, str] = {}

    def engine(self, host: str) -> Any:
        return self.lab.engines[host]

    def net(self, host: str, vni: int) -> dict[str, Any]:
        info: dict[str, Any] = self.engine(host).networks()[str(vni)]
        return info

    def ping(
        self, src: str, dst_ip: str, *extra: str, count: int = 2
    ) -> subprocess.CompletedProcess[str]:
        return sh(*in_ns(self.ns[src], "ping", "-c", str(count), "-i", "0.2", "-W", "1",
                         *extra, dst_ip), check=False)

    def mac(self, container: str) -> str:
        out = sh("ip", "-n", self.ns[container], "-br", "link", "show", "eth0").stdout
        return out.split()[2]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    built = SleeveLab(hosts=2)
    try:
        for host in built.hosts:
            built.start_engine(host)
        built.add_network(PLAIN, MTU[PLAIN], None)
        built.add_network(ENC, MTU[ENC], KEY)
        lab = Lab(built)
        for name, host, vni in (("a1", lab.h1, PLAIN), ("a2", lab.h2, PLAIN),
                                ("b1", lab.h1, ENC), ("b2", lab.h2, ENC)):
            lab.ns[name] = built.add_container(host, vni, IP[name], MTU[vni], name)
        yield lab
    finally:
        built.cleanup()


def test_containers_ping_over_plain_sleeve(lab: Lab) -> None:
    result = lab.ping("a1", IP["a2"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_containers_ping_over_encrypted_sleeve(lab: Lab) -> None:
    result = lab.ping("b1", IP["b2"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert lab.net(lab.h2, ENC)["encrypted"] is True
    assert lab.net(lab.h2, ENC)["drops_auth"] == 0


@pytest.mark.parametrize("vni,src,dst", [(PLAIN, "a1", "a2"), (ENC, "b1", "b2")])
def test_arp_broadcast_reaches_peer_and_macs_are_learned(
    lab: Lab, vni: int, src: str, dst: str
) -> None:
    for name in (src, dst):
        sh("ip", "-n", lab.ns[name], "neigh", "flush", "all")
    flooded = lab.net(lab.h1, vni)["flooded"]
    result = lab.ping(src, IP[dst], count=1)
    assert result.returncode == 0, result.stdout
    # the ARP request of src was broadcast, so dst learned src's address from it
    neigh = sh("ip", "-n", lab.ns[dst], "neigh", "show", IP[src]).stdout
    assert lab.mac(src) in neigh
    assert lab.net(lab.h1, vni)["flooded"] > flooded
    learned = lab.net(lab.h1, vni)["learned_macs"]
    assert learned.get(lab.mac(dst)) == lab.lab.underlay_ip[lab.h2]


@pytest.mark.parametrize("vni,src,dst", [(PLAIN, "a1", "a2"), (ENC, "b1", "b2")])
def test_df_ping_at_network_mtu_passes_and_one_more_byte_fails(
    lab: Lab, vni: int, src: str, dst: str
) -> None:
    fits = lab.ping(src, IP[dst], "-M", "do", "-s", str(MTU[vni] - 28))
    assert fits.returncode == 0, fits.stdout + fits.stderr
    too_big = lab.ping(src, IP[dst], "-M", "do", "-s", str(MTU[vni] - 27), count=1)
    assert too_big.returncode != 0
    assert "message too long" in (too_big.stdout + too_big.stderr).lower()


def test_vnis_are_isolated(lab: Lab) -> None:
    for name in ("a1", "b1", "b2"):
        sh("ip", "-n", lab.ns[name], "neigh", "flush", "all")
    for target in ("b2", "b1"):  # same subnet, other network, other and same host
        result = lab.ping("a1", IP[target], count=2)
        assert result.returncode != 0, f"a1 (VNI {PLAIN}) reached {target} (VNI {ENC})"
    assert IP["a1"] not in sh("ip", "-n", lab.ns["b2"], "neigh", "show").stdout
    assert lab.mac("a1") not in lab.net(lab.h2, ENC)["learned_macs"]
    assert lab.mac("a1") in lab.net(lab.h2, PLAIN)["learned_macs"]  # control: it did flood


def _pcap_ipv4_packets(path: Path) -> list[bytes]:
    """The IPv4 packets of every captured IPv4 Ethernet frame, as they were on the wire."""
    data = path.read_bytes()
    out, pos = [], 24
    while pos + 16 <= len(data):
        incl = struct.unpack_from("<I", data, pos + 8)[0]
        frame = data[pos + 16 : pos + 16 + incl]
        pos += 16 + incl
        if frame[12:14] == b"\x08\x00":
            out.append(frame[14:])
    return out


def _udp_packets(packets: list[bytes]) -> list[tuple[bytes, bytes]]:
    """(outer IPv4 header, UDP payload) of every IPv4/UDP packet."""
    out = []
    for packet in packets:
        ihl = (packet[0] & 0x0F) * 4
        if packet[9] == 17:
            out.append((packet[:ihl], packet[ihl + 8 :]))
    return out


@contextmanager
def _capture(netns: str, bpf: str) -> Iterator[list[bytes]]:
    """tcpdump on the underlay interface of host `netns` while the block runs; after the
    block the yielded list holds the captured IPv4 packets."""
    packets: list[bytes] = []
    pcap = Path(tempfile.mkdtemp(prefix="tr-sleeve-")) / "underlay.pcap"
    dump = subprocess.Popen(
        in_ns(netns, "tcpdump", "--immediate-mode", "-Z", "root", "-i", "tsu0", "-n",
              "-U", "-w", str(pcap), bpf),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        try:
            assert dump.stderr is not None
            assert "listening" in dump.stderr.readline()
            yield packets
            time.sleep(0.3)
        finally:
            dump.send_signal(signal.SIGINT)
            dump.wait(timeout=10)
        packets.extend(_pcap_ipv4_packets(pcap))
    finally:
        shutil.rmtree(pcap.parent)


def test_underlay_carries_no_plaintext_when_encrypted(lab: Lab) -> None:
    with _capture(lab.h1, "udp") as captured:
        for src, dst, vni in (("a1", "a2", PLAIN), ("b1", "b2", ENC)):
            result = lab.ping(src, IP[dst], "-p", PATTERN, "-M", "do", "-s", str(MTU[vni] - 28))
            assert result.returncode == 0, result.stdout
    packets = _udp_packets(captured)
    by_vni: dict[int, list[tuple[bytes, bytes]]] = {PLAIN: [], ENC: []}
    for ip_hdr, payload in packets:
        if len(payload) >= 8 and payload[0] == MAGIC:
            vni = int.from_bytes(payload[2:5], "big")
            by_vni.setdefault(vni, []).append((ip_hdr, payload))
    pattern = bytes.fromhex(PATTERN)
    inner = [bytes(map(int, IP[n].split("."))) for n in ("a1", "a2", "b1", "b2")]
    # control: the plain network shows the inner addresses and the ping pattern
    assert any(pattern in p and inner[0] in p for _, p in by_vni[PLAIN])
    assert by_vni[ENC], "no encrypted sleeve traffic captured"
    for _, payload in by_vni[ENC]:
        assert payload[1] & F_ENCRYPTED
        assert pattern not in payload
        assert not any(addr in payload[8:] for addr in inner[2:])
    # full-MTU frames fill the underlay exactly: 1500-byte packets, never fragmented
    for vni in (PLAIN, ENC):
        sizes = [struct.unpack_from("!H", h, 2)[0] for h, _ in by_vni[vni]]
        assert max(sizes) == 1500
        assert all(struct.unpack_from("!H", h, 6)[0] & 0x3FFF == 0 for h, _ in by_vni[vni])


def _send_from(netns: str, src_ip: str, dst: str, datagram: bytes) -> None:
    code = (
        "import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        f"s.bind(({src_ip!r}, 0)); s.sendto(bytes.fromhex(sys.argv[1]), ({dst!r}, 6784))"
    )
    sh(*in_ns(netns, "python3", "-c", code, datagram.hex()))


def _arp_frame(src_mac: bytes) -> bytes:
    return b"\xff" * 6 + src_mac + b"\x08\x06" + bytes(28)


def test_frames_from_unknown_hosts_and_forged_frames_are_dropped(lab: Lab) -> None:
    h1_ip = lab.lab.underlay_ip[lab.h1]
    peer_ip = lab.lab.underlay_ip[lab.h2]
    stranger = "10.199.0.9"
    sh("ip", "-n", lab.h2, "addr", "add", f"{stranger}/24", "dev", "tsu0")
    try:
        mac_a, mac_b = bytes.fromhex("02aa00000001"), bytes.fromhex("02aa00000002")
        before = lab.net(lab.h1, PLAIN)["drops_unknown_peer"]
        _send_from(lab.h2, stranger, h1_ip, header(PLAIN, 0) + _arp_frame(mac_a))
        _send_from(lab.h2, peer_ip, h1_ip, header(PLAIN, 0) + _arp_frame(mac_b))
        auth = lab.net(lab.h1, ENC)["drops_auth"]
        # plaintext injected into the encrypted network, then one sealed with another key
        _send_from(lab.h2, peer_ip, h1_ip, header(ENC, 0) + _arp_frame(mac_a))
        hdr = header(ENC, F_ENCRYPTED)
        forged = hdr + FrameCipher(os.urandom(32)).seal(hdr, _arp_frame(mac_a))
        _send_from(lab.h2, peer_ip, h1_ip, forged)
        good = hdr + FrameCipher(KEY).seal(hdr, _arp_frame(mac_b))
        _send_from(lab.h2, peer_ip, h1_ip, good)
        time.sleep(0.2)
        plain, enc = lab.net(lab.h1, PLAIN), lab.net(lab.h1, ENC)
        assert plain["drops_unknown_peer"] == before + 1
        assert "02:aa:00:00:00:01" not in plain["learned_macs"]
        assert plain["learned_macs"].get("02:aa:00:00:00:02") == peer_ip  # control
        assert enc["drops_auth"] == auth + 2
        assert "02:aa:00:00:00:01" not in enc["learned_macs"]
        assert enc["learned_macs"].get("02:aa:00:00:00:02") == peer_ip  # control
    finally:
        sh("ip", "-n", lab.h2, "addr", "del", f"{stranger}/24", "dev", "tsu0", check=False)


def _with_udp_checksum(packet: bytes) -> bytes:
    """A captured packet with its UDP checksum completed: a veth capture shows only the
    pseudo-header sum that checksum offload would have finished."""
    ihl = (packet[0] & 0x0F) * 4
    udp = bytearray(packet[ihl:])
    udp[6:8] = b"\0\0"
    data = packet[12:20] + bytes((0, 17)) + len(udp).to_bytes(2, "big") + udp
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    udp[6:8] = ((~total & 0xFFFF) or 0xFFFF).to_bytes(2, "big")
    return packet[:ihl] + bytes(udp)


def _replay_from(netns: str, packets: list[bytes]) -> None:
    """Re-send captured IPv4 packets (outer header included) from netns, unchanged but
    for the UDP checksum."""
    packets = [_with_udp_checksum(p) for p in packets]
    code = (
        "import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_RAW, "
        "socket.IPPROTO_RAW)\n"
        "for p in sys.argv[1:]:\n"
        "    b=bytes.fromhex(p); s.sendto(b, (socket.inet_ntoa(b[16:20]), 0))"
    )
    sh(*in_ns(netns, "python3", "-c", code, *(p.hex() for p in packets)))


def _sealed_from(packets: list[bytes], vni: int) -> list[bytes]:
    return [
        p for p in packets
        if len(p) > 60 and p[9] == 17 and p[28] == MAGIC and p[29] & F_ENCRYPTED
        and int.from_bytes(p[30:33], "big") == vni
    ]


def test_replayed_encrypted_frames_are_dropped_while_live_traffic_flows(lab: Lab) -> None:
    peer_ip = lab.lab.underlay_ip[lab.h2]
    with _capture(lab.h1, f"udp and src host {peer_ip} and dst port 6784") as captured:
        result = lab.ping("b1", IP["b2"], count=3)
        assert result.returncode == 0, result.stdout
    sealed = _sealed_from(captured, ENC)
    assert len(sealed) >= 3, f"captured {len(captured)} packets, {len(sealed)} sealed"
    before = lab.net(lab.h1, ENC)
    live = subprocess.Popen(
        in_ns(lab.ns["b1"], "ping", "-c", "10", "-i", "0.1", "-W", "1", IP["b2"]),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        time.sleep(0.2)
        _replay_from(lab.h2, sealed * 2)
    finally:
        out, _ = live.communicate(timeout=20)
    assert live.returncode == 0 and " 0% packet loss" in out, out
    time.sleep(0.2)
    after = lab.net(lab.h1, ENC)
    assert after["drops_replay"] - before["drops_replay"] == 2 * len(sealed)
    assert after["drops_auth"] == before["drops_auth"]  # authentic: the exact bytes
    assert after["drops_too_old"] == before["drops_too_old"]
    assert after["frames_in"] > before["frames_in"]  # the live pings

    # once more than the window of newer frames arrived, they are too old instead
    flood = sh(*in_ns(lab.ns["b1"], "ping", "-f", "-q", "-c", str(WINDOW + 100), IP["b2"]),
               check=False, timeout=60)
    assert flood.returncode == 0, flood.stdout + flood.stderr
    _replay_from(lab.h2, sealed)
    time.sleep(0.2)
    final = lab.net(lab.h1, ENC)
    assert final["drops_too_old"] - after["drops_too_old"] == len(sealed)
    assert final["drops_replay"] == after["drops_replay"]
    result = lab.ping("b1", IP["b2"])
    assert result.returncode == 0, result.stdout


def test_restarted_engine_adopts_persistent_tap(lab: Lab) -> None:
    old = lab.lab.engines[lab.h1]
    old.call("ensure_network", vni=PLAIN, tap=SleeveLab.tap_name(PLAIN), mtu=MTU[PLAIN],
             key=None)  # idempotent on a running network
    old.stop()
    link = sh("ip", "-n", lab.h1, "link", "show", SleeveLab.tap_name(PLAIN)).stdout
    assert f"master tsb{PLAIN}" in link  # survived the engine, still a bridge port
    new = lab.lab.start_engine(lab.h1)
    peer = [lab.lab.underlay_ip[lab.h2]]
    for vni, key in ((PLAIN, None), (ENC, KEY.hex())):
        new.call("ensure_network", vni=vni, tap=SleeveLab.tap_name(vni), mtu=MTU[vni], key=key)
        new.call("set_peers", vni=vni, peers=peer)
    for src, dst in (("a1", "a2"), ("b1", "b2")):
        result = lab.ping(src, IP[dst])
        assert result.returncode == 0, result.stdout


def test_remove_network_deletes_its_tap(lab: Lab) -> None:
    engine = lab.engine(lab.h1)
    engine.call("ensure_network", vni=300, tap="tst300", mtu=1450, key=None)
    assert sh("ip", "-n", lab.h1, "link", "show", "tst300", check=False).returncode == 0
    engine.call("remove_network", vni=300)
    assert sh("ip", "-n", lab.h1, "link", "show", "tst300", check=False).returncode != 0
    engine.call("remove_network", vni=300)  # already gone: success
    assert "300" not in engine.networks()
