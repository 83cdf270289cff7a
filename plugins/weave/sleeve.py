"""Sleeve: the weave driver's userspace backend. Ethernet frames read from a per-network
TAP travel in UDP datagrams to the peer hosts, optionally sealed with AES-GCM.

Why it looks like this (measured on the 2-core test machine, see docs/sleeve.md):
* Blocking-style I/O in plain threads (one TAP->UDP thread per network, one UDP->TAP
  thread per host), no asyncio/selectors: fewer Python steps per packet. Fds are
  non-blocking and a thread polls only when a read finds nothing, so a stop can wake it.
* The TAP is in vnet-hdr mode with TSO offload (see tap.py): TCP arrives as 64 KB GSO
  super-frames that travel as ONE UDP datagram (the IP layer fragments it on the
  underlay, the peer reassembles) and are written whole into the peer's TAP.
* Fixed buffers, headers written in place, encrypt/decrypt into preallocated buffers.

Wire format, 8-byte header (SLEEVE_HEADER), then the payload:
  0      magic 0x57
  1      version (high nibble, 1) | flags (low nibble: 1 encrypted, 2 gso, 4 csum)
  2..4   VNI, big endian
  5..7   csum flag only: checksum start (u16 BE, from the frame start), offset (u8)
Payload: the Ethernet frame; with the gso flag, a 10-byte virtio_net_hdr (little
endian, as the TAP gives it) precedes the frame. Encrypted: nonce | AES-GCM(payload) |
tag with the 8 header bytes as associated data, so the underlay shows no inner header.
Each authentic datagram's nonce then passes the sender's replay window (crypto.PeerReplay,
one per network and peer IP, touched only by the RX thread): a nonce is accepted once.
A frame that is not GSO never carries the virtio header, so a full-MTU frame fits the
underlay exactly (network MTU = underlay - 28 - 14 - 8 [- 28]); plain frames whose
checksum the kernel left to the "device" carry its position in bytes 5..7, encrypted
ones have it completed before sealing (the position would leak the L4 protocol).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from netd.errors import Conflict, DatapathError, InvalidInput, NotFound
from netd.model import check_mac, check_mtu, check_vni
from netd.plumbing import tap
from plugins.weave.crypto import (
    NONCE_SIZE,
    OVERHEAD,
    REPLAYED,
    FrameCipher,
    FrameRejected,
    PeerReplay,
)

DEFAULT_PORT = 6784
MAGIC = 0x57
VERSION = 1
F_ENCRYPTED = 0x1
F_GSO = 0x2
F_CSUM = 0x4

VNET = tap.VNET_HDR_SIZE
VNET_F_NEEDS_CSUM = 1
MAX_DATAGRAM = 65_507  # largest IPv4 UDP payload
BUF_SIZE = 70_000  # a 64 KB GSO frame + virtio header + headroom
ETH_MIN = 14
MAX_LEARNED = 8192  # per network; the table is cleared beyond this (a flood, not a fault)
SOCKET_BUFFER = 8 << 20

_IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
_IP_PMTUDISC_DONT = getattr(socket, "IP_PMTUDISC_DONT", 0)
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
_ZERO_VNET = bytes(VNET)
_VNET_CSUM = struct.Struct("<BBHHHH")

SLEEVE_HEADER = 8  # bytes before the payload (the wire format above)

Addr = tuple[str, int]


def header(vni: int, flags: int) -> bytes:
    """The 8 header bytes of a frame of network `vni` (checksum bytes zero)."""
    return bytes(
        (MAGIC, VERSION << 4 | flags, vni >> 16 & 0xFF, vni >> 8 & 0xFF, vni & 0xFF, 0, 0, 0)
    )


def complete_checksum(buf: bytearray, start: int, field: int, end: int) -> bool:
    """Do the NIC's job for a CHECKSUM_PARTIAL frame: fold the one's complement sum of
    buf[start:end] (the field already holds the pseudo-header sum) into buf[field]."""
    if field + 2 > end or start > field:
        return False
    value = int.from_bytes(buf[start:end], "big")
    if (end - start) & 1:
        value <<= 8
    csum = 0xFFFF - value % 0xFFFF  # 2^16 = 1 mod 0xFFFF; never 0 (0 means "none" in UDP)
    buf[field] = csum >> 8
    buf[field + 1] = csum & 0xFF
    return True


def parse_peer(peer: str, default_port: int) -> Addr:
    """'IP' or 'IP:PORT' -> (ip, port)."""
    host, _, port = peer.partition(":")
    try:
        socket.inet_aton(host)
        number = int(port) if port else default_port
    except (OSError, ValueError):
        raise InvalidInput(f"invalid sleeve peer {peer!r}: expected IPv4 or IPv4:PORT") from None
    if not 0 < number < 65536:
        raise InvalidInput(f"invalid sleeve peer {peer!r}: port out of range")
    return host, number


def _mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(check_mac(mac).replace(":", ""))


def _mac_str(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


@dataclass
class _Stats:
    frames_out: int = 0
    bytes_out: int = 0
    frames_in: int = 0
    bytes_in: int = 0
    flooded: int = 0
    drops_auth: int = 0  # failed authentication, or plaintext on an encrypted network
    drops_replay: int = 0  # authentic, but its nonce was already received
    drops_too_old: int = 0  # authentic, but below the replay window or a retired prefix
    drops_unknown_peer: int = 0
    drops_malformed: int = 0
    drops_oversize: int = 0
    drops_send: int = 0
    drops_tap_write: int = 0


class _Network:
    """One network's forwarding state; fields are replaced whole, never mutated in place
    (except the learned table and counters), so the forwarding threads need no lock."""

    def __init__(self, vni: int, tap_name: str, mtu: int, fd: int) -> None:
        self.vni = vni
        self.tap_name = tap_name
        self.mtu = mtu
        self.fd = fd
        self.fd_lock = threading.Lock()  # the RX thread never writes to a closed, reused fd
        self.reader = open(fd, "rb", buffering=0, closefd=False)  # noqa: SIM115
        self.key: bytes | None = None
        self.cipher: FrameCipher | None = None
        self.peers: tuple[Addr, ...] = ()
        self.peer_by_ip: dict[str, Addr] = {}
        self.replay: dict[str, PeerReplay] = {}  # by peer IP; owned by the RX thread
        self.static_ips: dict[bytes, str] = {}
        self.static: dict[bytes, Addr] = {}
        self.learned: dict[bytes, Addr] = {}
        self.stats = _Stats()
        self.error: str | None = None
        self.wake_r, self.wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.thread: threading.Thread | None = None
        self.hdr_plain = header(vni, 0)
        self.hdr_csum = header(vni, F_CSUM)
        self.hdr_gso = header(vni, F_GSO)
        self.hdr_enc = header(vni, F_ENCRYPTED)
        self.hdr_enc_gso = header(vni, F_ENCRYPTED | F_GSO)

    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def stop(self) -> None:
        if self.thread is not None:
            os.write(self.wake_w, b"x")
            self.thread.join()
            self.thread = None
        os.close(self.wake_r)
        os.close(self.wake_w)

    def release(self, destroy: bool) -> None:
        """Close the TAP fd; with destroy also delete the device."""
        with self.fd_lock:
            fd, self.fd = self.fd, -1
        self.reader.close()
        if fd >= 0:
            if destroy:
                tap.destroy_tap_fd(fd)
            else:
                os.close(fd)


class SleeveEngine:
    """All sleeve networks of this host over one UDP socket bound to underlay_ip:port."""

    def __init__(self, underlay_ip: str, port: int = DEFAULT_PORT) -> None:
        self.underlay_ip = underlay_ip
        self.port = port
        self._lock = threading.Lock()  # serialises control calls
        self._nets: dict[int, _Network] = {}  # replaced whole on change (copy on write)
        self.drops_unknown_vni = 0
        self.drops_malformed = 0
        self._sock = self._bind(underlay_ip, port)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._closed = False
        self._rx = threading.Thread(target=self._rx_loop, name="sleeve-rx", daemon=True)
        self._rx.start()

    @staticmethod
    def _bind(ip: str, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            # 64 KB super-frames must leave as IP fragments, never fail with EMSGSIZE
            sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_DONT)
            for force, plain in ((_SO_SNDBUFFORCE, socket.SO_SNDBUF),
                                 (_SO_RCVBUFFORCE, socket.SO_RCVBUF)):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
                except OSError:
                    sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
            sock.bind((ip, port))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise Conflict(
                    f"UDP {ip}:{port} is already in use (another netd or weave?); "
                    "stop it or choose another sleeve port"
                ) from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise InvalidInput(
                    f"underlay IP {ip} is not an address of this host; check --underlay-ip"
                ) from None
            raise DatapathError(f"cannot bind sleeve socket {ip}:{port}: {exc.strerror}") from None
        return sock

    # control ---------------------------------------------------------------------------

    def ensure_network(self, vni: int, tap_name: str, mtu: int, key: bytes | None) -> None:
        """Create or adopt the persistent TAP of network `vni` and forward it; idempotent."""
        vni, mtu = check_vni(vni), check_mtu(mtu)
        tap.check_tap_name(tap_name)
        cipher = FrameCipher(key) if key is not None else None
        with self._lock:
            self._check_open()
            net = self._nets.get(vni)
            if net is not None and (net.tap_name != tap_name or not net.running()):
                self._drop_network(net, destroy=net.tap_name != tap_name)
                net = None
            if net is None:
                net = _Network(vni, tap_name, mtu, tap.open_tap(tap_name))
                net.cipher = cipher
                net.thread = threading.Thread(
                    target=self._tx_loop, args=(net,), name=f"sleeve-tx-{vni}", daemon=True
                )
                self._nets = {**self._nets, vni: net}
                net.thread.start()
            else:
                net.mtu = mtu
                if key != net.key:
                    net.replay = {ip: PeerReplay() for ip in net.peer_by_ip}
                    net.cipher = cipher
            net.key = key

    def set_peers(self, vni: int, peers: Iterable[str]) -> None:
        """The underlay addresses ('IP' or 'IP:PORT') of the other hosts of network `vni`."""
        addrs = tuple(dict.fromkeys(parse_peer(p, self.port) for p in peers))
        with self._lock:
            net = self._network(vni)
            old = net.replay
            replay = {ip: old.get(ip) or PeerReplay() for ip, _ in addrs}
            net.replay = {**old, **replay}  # the RX thread finds a new peer's state first
            net.peer_by_ip = {ip: (ip, port) for ip, port in addrs}
            net.replay = replay
            net.peers = addrs
            net.static = self._resolve_static(net, net.static_ips)
            keep = set(addrs)
            net.learned = {mac: a for mac, a in net.learned.items() if a in keep}

    def set_static_macs(self, vni: int, macs: Mapping[str, str]) -> None:
        """Known remote MAC -> peer IP; these override what is learned."""
        static_ips = {_mac_bytes(mac): parse_peer(ip, self.port)[0] for mac, ip in macs.items()}
        with self._lock:
            net = self._network(vni)
            net.static_ips = static_ips
            net.static = self._resolve_static(net, static_ips)

    def _resolve_static(self, net: _Network, static_ips: dict[bytes, str]) -> dict[bytes, Addr]:
        return {mac: net.peer_by_ip.get(ip, (ip, self.port)) for mac, ip in static_ips.items()}

    def remove_network(self, vni: int) -> None:
        """Stop forwarding network `vni` and delete its TAP; unknown is success."""
        with self._lock:
            net = self._nets.get(vni)
            if net is not None:
                self._drop_network(net, destroy=True)

    def remove_tap(self, tap_name: str) -> None:
        """Delete a leftover TAP this engine does not forward (sweep after restart)."""
        with self._lock:
            if any(n.tap_name == tap_name for n in self._nets.values()):
                raise Conflict(f"TAP {tap_name} is in use by a sleeve network; remove that")
            tap.delete_tap(tap_name)

    def _drop_network(self, net: _Network, destroy: bool) -> None:
        self._nets = {v: n for v, n in self._nets.items() if v != net.vni}
        net.stop()
        net.release(destroy)

    def networks(self) -> dict[int, dict[str, Any]]:
        """Per-network state and counters, for `netctl status`."""
        out: dict[int, dict[str, Any]] = {}
        for vni, net in self._nets.items():
            info: dict[str, Any] = dict(vars(net.stats))
            info.update(
                tap=net.tap_name,
                mtu=net.mtu,
                encrypted=net.cipher is not None,
                running=net.running(),
                error=net.error,
                peers=[f"{ip}:{port}" if port != self.port else ip for ip, port in net.peers],
                static_macs=len(net.static),
                learned_macs={_mac_str(m): a[0] for m, a in list(net.learned.items())},
            )
            out[vni] = info
        return out

    def stats(self) -> dict[str, int]:
        """Host-wide drops that belong to no network."""
        return {
            "drops_unknown_vni": self.drops_unknown_vni,
            "drops_malformed": self.drops_malformed,
        }

    def close(self) -> None:
        """Stop all threads and close the socket; the TAPs stay for the next daemon."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            os.write(self._wake_w, b"x")
            self._rx.join()
            for net in self._nets.values():
                net.stop()
                net.release(destroy=False)
            self._nets = {}
            self._sock.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def __enter__(self) -> SleeveEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise DatapathError("sleeve engine is closed")

    def _network(self, vni: int) -> _Network:
        net = self._nets.get(vni)
        if net is None:
            raise NotFound(f"sleeve network with VNI {vni} is not set up on this host")
        return net

    # datapath --------------------------------------------------------------------------

    def _tx_loop(self, net: _Network) -> None:
        """TAP -> UDP for one network. The TAP frame is read at offset 8 so a header can
        be written in front of it (plain: no copy at all)."""
        r = 8  # virtio header at buf[8:18], frame from buf[18]
        f = r + VNET
        buf = bytearray(BUF_SIZE)
        mv = memoryview(buf)
        out = bytearray(BUF_SIZE + OVERHEAD + 16)
        ov = memoryview(out)
        seal_view = ov[SLEEVE_HEADER:]
        read_view = mv[r:]
        readinto = net.reader.readinto
        sendto = self._sock.sendto
        st = net.stats
        poller = select.poll()
        poller.register(net.fd, select.POLLIN)
        poller.register(net.wake_r, select.POLLIN)
        wake = net.wake_r
        while True:
            try:
                n = readinto(read_view)
            except OSError as exc:
                net.error = f"reading TAP {net.tap_name}: {exc.strerror}"
                return
            if n is None:
                if any(fd == wake for fd, _ in poller.poll()):
                    return
                continue
            end = r + n
            if n < VNET + ETH_MIN:
                st.drops_malformed += 1
                continue
            if buf[f] & 1:
                dest = None
            else:
                mac = bytes(mv[f : f + 6])
                dest = net.static.get(mac) or net.learned.get(mac)
            gso = buf[r + 1]
            cipher = net.cipher
            if cipher is None:
                if gso:
                    buf[0:8] = net.hdr_gso
                    payload = mv[0:end]
                elif buf[r] & VNET_F_NEEDS_CSUM:
                    start = buf[r + 6] | buf[r + 7] << 8
                    offset = buf[r + 8]
                    buf[10:15] = net.hdr_csum[:5]
                    buf[15] = start >> 8
                    buf[16] = start & 0xFF
                    buf[17] = offset
                    payload = mv[10:end]
                else:
                    buf[10:18] = net.hdr_plain
                    payload = mv[10:end]
            else:
                if gso:
                    hdr = net.hdr_enc_gso
                    plain = mv[r:end]
                else:
                    if buf[r] & VNET_F_NEEDS_CSUM:
                        start = f + (buf[r + 6] | buf[r + 7] << 8)
                        field = start + (buf[r + 8] | buf[r + 9] << 8)
                        if not complete_checksum(buf, start, field, end):
                            st.drops_malformed += 1
                            continue
                    hdr = net.hdr_enc
                    plain = mv[f:end]
                out[0:8] = hdr
                payload = ov[: SLEEVE_HEADER + cipher.seal_into(hdr, plain, seal_view)]
            size = len(payload)
            if size > MAX_DATAGRAM:
                st.drops_oversize += 1
                continue
            try:
                if dest is not None:
                    sendto(payload, dest)
                else:
                    st.flooded += 1
                    for peer in net.peers:
                        sendto(payload, peer)
            except OSError:
                st.drops_send += 1
                continue
            st.frames_out += 1
            st.bytes_out += end - f

    def _rx_loop(self) -> None:
        """UDP -> TAP for every network. Datagrams land at buf[2:] so that a virtio
        header fits in front of a plain frame (buf[0:10]) without a copy."""
        buf = bytearray(BUF_SIZE)
        mv = memoryview(buf)
        plain = bytearray(BUF_SIZE)
        pv = memoryview(plain)
        pv_frame = pv[VNET:]
        recv_view = mv[2:]
        hdr_view = mv[2:10]
        nonce_view = mv[10 : 10 + NONCE_SIZE]
        recvfrom_into = self._sock.recvfrom_into
        dontwait = socket.MSG_DONTWAIT
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        wake = self._wake_r
        write = os.write
        while True:
            try:
                n, addr = recvfrom_into(recv_view, 0, dontwait)
            except BlockingIOError:
                if any(fd == wake for fd, _ in poller.poll()):
                    return
                continue
            except OSError:
                continue
            if n < SLEEVE_HEADER + ETH_MIN or buf[2] != MAGIC or buf[3] >> 4 != VERSION:
                self.drops_malformed += 1
                continue
            net = self._nets.get(buf[4] << 16 | buf[5] << 8 | buf[6])
            if net is None:
                self.drops_unknown_vni += 1
                continue
            peer = net.peer_by_ip.get(addr[0])
            st = net.stats
            if peer is None:
                st.drops_unknown_peer += 1
                continue
            flags = buf[3] & 0xF
            end = 2 + n
            cipher = net.cipher
            if cipher is not None:
                if not flags & F_ENCRYPTED:
                    st.drops_auth += 1
                    continue
                try:
                    if flags & F_GSO:
                        size = cipher.open_into(hdr_view, mv[10:end], pv)
                    else:
                        plain[0:VNET] = _ZERO_VNET
                        size = VNET + cipher.open_into(hdr_view, mv[10:end], pv_frame)
                except FrameRejected:
                    st.drops_auth += 1
                    continue
                replay = net.replay.get(addr[0])
                if replay is None:  # removed by set_peers meanwhile
                    st.drops_unknown_peer += 1
                    continue
                verdict = replay.accept(int.from_bytes(nonce_view, "big"))
                if verdict:
                    if verdict == REPLAYED:
                        st.drops_replay += 1
                    else:
                        st.drops_too_old += 1
                    continue
                frame = pv[:size]
            elif flags & F_ENCRYPTED:
                st.drops_auth += 1
                continue
            elif flags & F_GSO:
                frame = mv[10:end]
            else:
                if flags & F_CSUM:
                    _VNET_CSUM.pack_into(
                        buf, 0, VNET_F_NEEDS_CSUM, 0, 0, 0, buf[7] << 8 | buf[8], buf[9]
                    )
                else:
                    buf[0:VNET] = _ZERO_VNET
                frame = mv[0:end]
            if len(frame) < VNET + ETH_MIN:
                st.drops_malformed += 1
                continue
            src = bytes(frame[VNET + 6 : VNET + 12])
            if not src[0] & 1 and net.learned.get(src) is not peer:
                if len(net.learned) >= MAX_LEARNED:
                    net.learned = {}
                net.learned[src] = peer
            with net.fd_lock:
                try:
                    write(net.fd, frame)
                except OSError:
                    st.drops_tap_write += 1
                    continue
            st.frames_in += 1
            st.bytes_in += len(frame) - VNET
