"""Is a host whose registry key lapsed still there? An ICMP echo to its underlay address.

A host's registry key lapses with its lease: when the host died, and just as well when
only that host lost the store (cut off from etcd longer than the host TTL) while its
containers keep talking to everyone. Peers cannot tell the two apart from the store; they
can from the underlay. A host that answers echo requests is still forwarding (the kernel
datapath needs no netd), so tearing the tunnels to it down would only cut live traffic
and gain nothing (its endpoints keep their addresses in the store anyway). So the
reconciler keeps a departed host while it answers here, and drops it once it has been
silent for the grace period: a dead machine, or one cut from the underlay too.

One thread, one raw ICMP socket in the daemon's own namespace; only departed hosts are
probed (about one echo a second each, while the reconciler keeps asking about them).
Without a raw socket (no CAP_NET_RAW) every host counts as silent: departed hosts go
after the grace, as before.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import struct
import threading
import time

log = logging.getLogger(__name__)

PROBE_INTERVAL = 1.0  # seconds between echoes to one host
ANSWERED_WITHIN = 3.0  # a host answered if a reply came this recently
INTEREST = 10.0  # a host not asked about for this long is no longer probed


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int) -> bytes:
    payload = b"netd-liveness"
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    return struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, seq) + payload


def echo_reply_from(packet: bytes, ident: int) -> bool:
    """True if `packet` (an IPv4 datagram as a raw socket reads it) is a reply to us."""
    if len(packet) < 20:
        return False
    start = (packet[0] & 0x0F) * 4
    if len(packet) < start + 8:
        return False
    kind, _code, _sum, got = struct.unpack("!BBHH", packet[start:start + 6])
    return kind == 0 and got == ident


class UnderlayProber:
    def __init__(self, interval: float = PROBE_INTERVAL,
                 answered_within: float = ANSWERED_WITHIN) -> None:
        self._interval = interval
        self._within = answered_within
        self._ident = (os.getpid() ^ id(self)) & 0xFFFF
        self._lock = threading.Lock()
        self._asked: dict[str, float] = {}  # address -> when last asked about
        self._sent: dict[str, float] = {}
        self._replied: dict[str, float] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name="underlay-probe", daemon=True)

    def start(self) -> None:
        try:
            self._sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        except OSError as exc:
            log.warning("cannot probe departed hosts on the underlay (%s): a host whose "
                        "lease lapsed is dropped after the grace period", exc)
            return
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
        if self._sock is not None:
            self._sock.close()

    def answering(self, address: str) -> bool:
        """True if `address` answered an echo within the last few seconds; asking starts
        (or keeps) probing it."""
        now = time.monotonic()
        with self._lock:
            new = address not in self._asked
            self._asked[address] = now
            answered = now - self._replied.get(address, -1e9) <= self._within
        if new:
            self._wake.set()
        return answered

    def _run(self) -> None:
        sock = self._sock
        assert sock is not None
        seq = 0
        while not self._stop.is_set():
            now = time.monotonic()
            with self._lock:
                for address in [a for a, t in self._asked.items() if now - t > INTEREST]:
                    for table in (self._asked, self._sent, self._replied):
                        table.pop(address, None)
                due = [a for a in self._asked if now - self._sent.get(a, -1e9) >= self._interval]
                for address in due:
                    self._sent[address] = now
            for address in due:
                seq = (seq + 1) & 0xFFFF
                try:
                    sock.sendto(echo_request(self._ident, seq), (address, 0))
                except OSError as exc:
                    log.debug("echo to %s: %s", address, exc)
            self._wake.clear()
            self._receive(sock, until=time.monotonic() + (self._interval / 2))

    def _receive(self, sock: socket.socket, until: float) -> None:
        while not self._stop.is_set() and not self._wake.is_set():
            left = until - time.monotonic()
            if left <= 0:
                return
            ready, _, _ = select.select([sock], [], [], min(left, 0.1))
            if not ready:
                continue
            try:
                packet, (source, _port) = sock.recvfrom(2048)
            except OSError:
                return
            if echo_reply_from(packet, self._ident):
                with self._lock:
                    if source in self._asked:
                        self._replied[source] = time.monotonic()
