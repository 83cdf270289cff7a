"""flannel's udp backend: IP packets from a TUN device, sent as the payload of UDP
datagrams to the peer host that leased the destination's subnet.

Wire format (flannel's pkg/backend/udp proxy): the UDP payload is the inner IPv4 packet
itself, no header of its own, on port 8285 by default, from the host's PublicIP. So a
MTU of underlay - 28 (outer IPv4 20 + UDP 8). The receiver writes the payload to its
TUN; the kernel routes it on to the container. Datagrams from addresses that hold no
lease are dropped.

One engine per daemon, one forwarding thread per network (its TUN fd and its socket,
polled together). The TUN is persistent (netd.plumbing.tap): a restarted daemon adopts
it; traffic pauses while no daemon runs, as with flanneld's udp backend.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import select
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from netd.errors import DatapathError
from netd.plumbing.tap import delete_tun, destroy_tap_fd, open_tun

log = logging.getLogger(__name__)

MAX_PACKET = 65535
SOCKET_BUFFER = 4 << 20  # bursts from the TUN wait here instead of being dropped


@dataclass
class _Table:
    """Longest-prefix match of destination -> peer PublicIP."""

    by_len: dict[int, dict[int, str]] = field(default_factory=dict)
    peers: frozenset[str] = frozenset()

    @classmethod
    def of(cls, routes: dict[str, str]) -> _Table:
        table = cls()
        for dst, peer in routes.items():
            net = ipaddress.IPv4Network(dst)
            table.by_len.setdefault(net.prefixlen, {})[int(net.network_address)] = peer
        table.peers = frozenset(routes.values())
        return table

    def lookup(self, dst: int) -> str | None:
        for plen in sorted(self.by_len, reverse=True):
            mask = (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF
            peer = self.by_len[plen].get(dst & mask)
            if peer is not None:
                return peer
        return None


class _Forwarder:
    def __init__(self, network: str, tun: str, local_ip: str, port: int) -> None:
        self.network, self.tun, self.local_ip, self.port = network, tun, local_ip, port
        self.table = _Table()
        self.counters = {"to_udp": 0, "to_tun": 0, "no_route": 0, "unknown_peer": 0}
        self.fd = open_tun(tun)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                self.sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
            self.sock.bind((local_ip, port))
        except OSError as exc:
            self.sock.close()
            os.close(self.fd)
            raise DatapathError(
                f"flannel udp: cannot bind UDP {local_ip}:{port}: {exc.strerror}") from None
        self.sock.setblocking(False)
        self._wake_r, self._wake_w = os.pipe()
        self._stop = False
        self.thread = threading.Thread(target=self._run, name=f"flannel-udp-{network}",
                                       daemon=True)
        self.thread.start()

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        poller.register(self.sock.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        sock_fd = self.sock.fileno()
        while not self._stop:
            try:
                events = poller.poll(1000)
            except InterruptedError:
                continue
            for fd, _ in events:
                if fd == self.fd:
                    self._from_tun()
                elif fd == sock_fd:
                    self._from_udp()

    def _from_tun(self) -> None:
        for _ in range(64):
            try:
                packet = os.read(self.fd, MAX_PACKET)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(packet) < 20 or packet[0] >> 4 != 4:
                continue
            peer = self.table.lookup(int.from_bytes(packet[16:20], "big"))
            if peer is None:
                self.counters["no_route"] += 1
                continue
            with contextlib.suppress(OSError):
                self.sock.sendto(packet, (peer, self.port))
                self.counters["to_udp"] += 1

    def _from_udp(self) -> None:
        for _ in range(64):
            try:
                packet, (src, _port) = self.sock.recvfrom(MAX_PACKET)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if src not in self.table.peers:
                self.counters["unknown_peer"] += 1
                continue
            with contextlib.suppress(OSError):
                os.write(self.fd, packet)
                self.counters["to_tun"] += 1

    def stop(self) -> None:
        self._stop = True
        os.write(self._wake_w, b"x")
        self.thread.join(2)
        self.sock.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


class UdpEngine:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._forwarders: dict[str, _Forwarder] = {}

    def ensure(self, network: str, tun: str, local_ip: str, port: int) -> None:
        """The network's TUN is open and forwarded from local_ip:port."""
        with self._lock:
            fw = self._forwarders.get(network)
            if fw is not None and (fw.tun, fw.local_ip, fw.port) == (tun, local_ip, port):
                return
            if fw is not None:
                fw.stop()
                os.close(fw.fd)
            self._forwarders[network] = _Forwarder(network, tun, local_ip, port)

    def set_routes(self, network: str, routes: dict[str, str], port: int) -> None:
        """Destination CIDR -> peer PublicIP for one network."""
        with self._lock:
            fw = self._forwarders.get(network)
            if fw is not None:
                fw.table = _Table.of(routes)

    def remove(self, network: str) -> None:
        """Stop forwarding a network and delete its TUN."""
        with self._lock:
            fw = self._forwarders.pop(network, None)
        if fw is not None:
            fw.stop()
            destroy_tap_fd(fw.fd)

    def remove_device(self, tun: str) -> None:
        with self._lock:
            owner = next((n for n, fw in self._forwarders.items() if fw.tun == tun), None)
        if owner is not None:
            self.remove(owner)
        else:
            delete_tun(tun)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {n: dict(fw.counters) for n, fw in self._forwarders.items()}

    def close(self) -> None:
        """Stop the threads; the TUNs persist for the next daemon."""
        with self._lock:
            forwarders, self._forwarders = list(self._forwarders.values()), {}
        for fw in forwarders:
            fw.stop()
            os.close(fw.fd)

