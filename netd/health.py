"""Per-peer health: netd probes every live peer, over the underlay and inside each
overlay both hosts have endpoints on, and keeps RTT, loss, path MTU and last seen.

Why inside the overlay: a peer's underlay address can answer while its tunnel is a black
hole (an MTU smaller than the network's somewhere on the path, a missing fdb entry, a
dead sleeve engine). So for every network that is one L2 segment on a kernel bridge of
its own (netd.policy.compute's L2_DRIVERS: weave's `ndb<vni>`, whichever backend carries
it) the prober sends an Ethernet frame of its own EtherType into the bridge; the driver
carries it like any broadcast (fastdp: the peers' all-zero fdb entries; sleeve: its
flood list) to the bridges of the peers that have endpoints on the network (one frame
reaches them all; it names each peer's sequence number), whose netd answers over the
underlay to the sender's probe port (their own probes cross the tunnel the other way).
The frames never reach a container (netd's bridge filter passes only IPv4 and ARP to
ports). Over the underlay, the probe is a UDP datagram to the peer's netd (port
UNDERLAY_PORT) with DF set; networks of other drivers (openflow, flannel) are judged by
it: the underlay's path MTU less their overhead.

Path MTU: a round also sends one frame as large as the path should carry (the
network's MTU as Ethernet payload; the smaller underlay MTU of both hosts over the
underlay): every round while a peer's path MTU is unknown or short, else every
FULL_EVERY rounds. While that goes unanswered and small probes are answered, a binary search
(one probe per round) finds the largest size that is answered; a network whose MTU
exceeds it is flagged with what to do.

Lease expiry: a peer's record lives under a lease its netd renews every TTL/3; the
daemon reports when it would lapse at the latest if the peer stopped at its last
answer (last seen + this host's TTL: netd hosts of one cluster share the TTL).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from netd.calc import Snapshot
from netd.model import Host, Network
from netd.policy.compute import L2_DRIVERS, link_of

log = logging.getLogger(__name__)

ETHERTYPE = 0x88B5  # IEEE 802 "local experimental": never a container's protocol
UNDERLAY_PORT = 6799
INTERVAL = 1.0
WINDOW = 10  # probes that make up loss and RTT
UNHEALTHY_AFTER = 3.5  # seconds without any answer
GRACE = 3.0  # seconds a new path has to come up before its lost probes count
FULL_EVERY = 5  # rounds between full-size probes of a path known to carry them
MIN_SIZE = 256  # smallest size the MTU search tries
SEARCH_DONE = 8  # bytes: the search stops when good and bad are this close
IP_UDP = 28
ETH_HEADER = 14
BROADCAST = b"\xff" * 6
IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IP_PMTUDISC_PROBE = getattr(socket, "IP_PMTUDISC_PROBE", 3)


@dataclass
class PathState:
    """One way to a peer: "underlay" or a network's name."""

    target_mtu: int
    results: deque[float | None] = field(default_factory=lambda: deque(maxlen=WINDOW))
    last_seen: float = 0.0
    path_mtu: int | None = None  # largest size answered (None: not measured yet)
    full_ok: bool | None = None  # the last probe at target_mtu was answered
    search: tuple[int, int] | None = None  # (largest answered, smallest lost)
    error: str = ""
    created: float = field(default_factory=time.monotonic)

    def to_dict(self) -> dict[str, Any]:
        answered = [r for r in self.results if r is not None]
        loss = 1 - len(answered) / len(self.results) if self.results else None
        rtt = round(sum(answered) / len(answered) * 1000, 3) if answered else None
        return {"rtt_ms": rtt, "loss": None if loss is None else round(loss, 3),
                "mtu": self.target_mtu, "path_mtu": self.path_mtu,
                "mtu_ok": None if self.path_mtu is None else self.path_mtu >= self.target_mtu,
                "last_seen": self.last_seen or None, "error": self.error or None}


@dataclass
class _Sent:
    peer: str
    path: str
    size: int
    at: float
    kind: str  # "ping" | "full" | "search"


def probe_mac(host: str) -> bytes:
    """A locally administered MAC of this host's probes."""
    return b"\x02" + hashlib.sha256(host.encode()).digest()[:5]


def frame(src: bytes, payload: dict[str, Any], size: int) -> bytes:
    """An Ethernet frame of our EtherType whose payload is `size` bytes (JSON, padded)."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    return BROADCAST + src + ETHERTYPE.to_bytes(2, "big") + body.ljust(max(size, 46), b"\0")


def decode(payload: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(payload.rstrip(b"\0"))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def advice(peer: str, network: str, mtu: int, path_mtu: int) -> str:
    return (f"network {network} has MTU {mtu} but only {path_mtu} bytes reach {peer}: "
            f"packets above {path_mtu} are dropped silently; raise the underlay MTU on the "
            f"path to {peer} by {mtu - path_mtu}, or recreate the network with "
            f"--mtu {path_mtu}")


class HealthProber:
    def __init__(self, me: Callable[[], Host], snapshot: Callable[[], Snapshot],
                 host_ttl: int, overhead: Callable[[Network], int] = lambda n: 50,
                 interval: float = INTERVAL) -> None:
        self._me = me
        self._snapshot = snapshot
        self._ttl = host_ttl
        self._overhead = overhead
        self._interval = interval
        self._lock = threading.Lock()
        self._paths: dict[tuple[str, str], PathState] = {}
        self._sent: dict[int, _Sent] = {}
        self._seq = 0
        self._round = 0
        self._stop = threading.Event()
        self._udp: socket.socket | None = None
        self._raw: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self.error = ""
        self.on_change: Callable[[str, str, str], None] = lambda peer, old, new: None
        self._states: dict[str, str] = {}

    # --- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        host = self._me()
        try:
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.setsockopt(socket.SOL_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE)
            udp.bind((host.underlay_ip, UNDERLAY_PORT))
            self._udp = udp
        except OSError as exc:
            self.error = f"underlay probe port {UNDERLAY_PORT}: {exc.strerror}"
            log.warning("health: %s", self.error)
        try:
            self._raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE))
        except OSError as exc:
            self.error = f"overlay probes need a packet socket: {exc.strerror}"
            log.warning("health: %s", self.error)
        for target, name in ((self._send_loop, "health-probe"), (self._recv_loop, "health-recv")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(2.0)
        for sock in (self._udp, self._raw):
            if sock is not None:
                sock.close()

    # --- what the API shows --------------------------------------------------------------
    def peers(self) -> dict[str, dict[str, Any]]:
        """Per peer: health, best RTT and loss, last seen, lease expiry, its paths and
        the flags an operator must act on."""
        now = time.time()
        snapshot = self._snapshot()
        with self._lock:
            paths = {key: state.to_dict() for key, state in self._paths.items()}
        out: dict[str, dict[str, Any]] = {}
        for (peer, path), value in sorted(paths.items()):
            entry = out.setdefault(peer, {"paths": {}, "flags": []})
            entry["paths"][path] = value
        for peer, entry in out.items():
            entry.update(self._summary(peer, entry["paths"], snapshot, now))
        return out

    def _summary(self, peer: str, paths: dict[str, dict[str, Any]], snapshot: Snapshot,
                 now: float) -> dict[str, Any]:
        seen = max((p["last_seen"] or 0.0 for p in paths.values()), default=0.0)
        rtts = [p["rtt_ms"] for p in paths.values() if p["rtt_ms"] is not None]
        losses = [p["loss"] for p in paths.values() if p["loss"] is not None]
        flags = []
        underlay = paths.get("underlay") or {}
        for name, p in paths.items():
            if name == "underlay" or p["path_mtu"] is None or p["mtu_ok"]:
                continue
            flags.append(advice(peer, name, p["mtu"], p["path_mtu"]))
        silent = max(UNHEALTHY_AFTER, 3.5 * self._interval)

        def quiet(p: dict[str, Any]) -> bool:
            if p["last_seen"] is None:
                return bool(p["loss"] == 1)  # never answered since its grace
            return bool(now - p["last_seen"] > silent)

        for name, p in paths.items():
            if quiet(p) and not all(quiet(q) for q in paths.values()):
                where = "over the underlay" if name == "underlay" else f"inside network {name}"
                flags.append(f"no answers {where} from {peer} while other paths answer: check "
                             f"`netctl status` on both hosts for errors on it and a firewall "
                             "on the underlay for the backend's port")
        measured = underlay.get("path_mtu")
        if measured is not None and not underlay.get("mtu_ok"):
            shared = {ep.network for ep in snapshot.endpoints.values() if ep.host == peer}
            for name, net in sorted(snapshot.networks.items()):
                carried = measured - self._overhead(net)
                if name not in paths and name in shared and carried < net.mtu:
                    flags.append(advice(peer, name, net.mtu, carried))
        if underlay.get("path_mtu") is not None and not underlay.get("mtu_ok"):
            flags.append(f"the underlay carries only {underlay['path_mtu']} bytes to {peer} "
                         f"(both hosts' underlay MTU is {underlay['mtu']}): an interface or "
                         "switch port on the path has a smaller MTU; raise it")
        if not seen:
            health = "unknown" if peer in snapshot.hosts else "unreachable"
        elif now - seen > silent:
            health = "unreachable"
        elif flags or any((p["loss"] or 0) > 0.2 for p in paths.values()):
            health = "degraded"
        else:
            health = "healthy"
        return {
            "health": health,
            "rtt_ms": min(rtts) if rtts else None,
            "loss": max(losses) if losses else None,
            "last_seen": seen or None,
            "lease_expires_by": seen + self._ttl if seen else None,
            "flags": flags,
        }

    # --- probing -----------------------------------------------------------------------
    def _send_loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.probe_round()
            except Exception:  # the prober must outlive whatever a round hits
                log.exception("health: probe round failed")

    def probe_round(self) -> None:
        me = self._me()
        snapshot = self._snapshot()
        now = time.monotonic()
        wanted = self._wanted(me, snapshot)
        with self._lock:
            self._expire(now)
            for key in set(self._paths) - set(wanted):
                del self._paths[key]
            for key, (mtu, _) in wanted.items():
                state = self._paths.get(key)
                if state is None or state.target_mtu != mtu:
                    self._paths[key] = PathState(target_mtu=mtu)
        self._round += 1
        # one frame per network reaches every peer on it (the overlay floods it): probes
        # are sent per (path, how), naming each peer's sequence number
        groups: dict[tuple[str, Any, int], list[str]] = {}
        for (peer, path), (mtu, how) in sorted(wanted.items()):
            groups.setdefault((path, how, mtu), []).append(peer)
        for (path, how, mtu), peers in sorted(groups.items(), key=lambda g: g[0][0]):
            with self._lock:
                states = {peer: self._paths[(peer, path)] for peer in peers}
            self._send(me, peers, path, how, "ping", 0)
            doubtful = any(s.path_mtu is None or not s.full_ok for s in states.values())
            if doubtful or self._round % FULL_EVERY == 0:
                self._send(me, peers, path, how, "full", mtu)
            for peer, state in states.items():
                if state.search is not None:
                    good, bad = state.search
                    self._send(me, [peer], path, how, "search", (good + bad) // 2)
        self._report_changes()

    def _wanted(self, me: Host, snapshot: Snapshot) -> dict[tuple[str, str], tuple[int, Any]]:
        """(peer, path) -> (size the path should carry, how to send on it)."""
        out: dict[tuple[str, str], tuple[int, Any]] = {}
        on: dict[str, set[str]] = {}
        for ep in snapshot.endpoints.values():
            on.setdefault(ep.network, set()).add(ep.host)
        for name, peer in snapshot.hosts.items():
            if name == me.name:
                continue
            out[(name, "underlay")] = (min(me.underlay_mtu, peer.underlay_mtu or 1500),
                                       peer.underlay_ip)
            for net_name, net in snapshot.networks.items():
                hosts = on.get(net_name, set())
                if me.name not in hosts or name not in hosts:
                    continue
                # a bridge per network that floods to the peers (weave); other drivers'
                # networks are judged by the underlay path less their overhead
                _, bridge = link_of(net.driver, net, "")
                if bridge is not None and net.driver in L2_DRIVERS:
                    out[(name, net_name)] = (net.mtu, bridge)
        return out

    def _send(self, me: Host, peers: list[str], path: str, how: Any, kind: str,
              size: int) -> None:
        """One probe to `peers` (answered over the underlay, to this host's probe port)."""
        seqs: dict[str, int] = {}
        with self._lock:
            for peer in peers:
                self._seq += 1
                seqs[peer] = self._seq
                self._sent[self._seq] = _Sent(peer, path, size, time.monotonic(), kind)
        message = {"t": "req", "from": me.name, "ip": me.underlay_ip, "net": path,
                   "seqs": seqs}
        try:
            if path == "underlay":
                if self._udp is None:
                    return
                body = json.dumps(message).encode()
                self._udp.sendto(body.ljust(max(size - IP_UDP, len(body)), b"\0"),
                                 (how, UNDERLAY_PORT))
            else:
                if self._raw is None:
                    return
                self._raw.sendto(frame(probe_mac(me.name), message, size), (how, ETHERTYPE))
            error = ""
        except OSError as exc:
            error = exc.strerror or str(exc)
            if kind != "ping":  # too big to leave this host: not the peer's fault
                error = ""
        if kind == "ping":
            with self._lock:
                for peer in peers:
                    state = self._paths.get((peer, path))
                    if state is not None:
                        state.error = error

    def _expire(self, now: float) -> None:
        """Probes unanswered for a round are lost (called with the lock held)."""
        for seq, sent in list(self._sent.items()):
            if now - sent.at < self._interval * 0.9:
                continue
            del self._sent[seq]
            state = self._paths.get((sent.peer, sent.path))
            if state is None:
                continue
            if sent.kind == "ping":
                if sent.at - state.created >= GRACE or state.last_seen:
                    state.results.append(None)
            elif sent.kind == "full":
                state.full_ok = False
                stale = state.path_mtu is None or state.path_mtu >= sent.size
                if state.search is None and state.last_seen and stale:
                    state.search = (min(MIN_SIZE, sent.size), sent.size)
                    state.path_mtu = None  # measuring
            elif sent.kind == "search" and state.search is not None:
                good, bad = state.search
                if good < sent.size < bad:
                    self._narrow(state, good, sent.size)

    @staticmethod
    def _narrow(state: PathState, good: int, bad: int) -> None:
        if bad - good <= SEARCH_DONE:
            state.search = None
            state.path_mtu = good
        else:
            state.search = (good, bad)

    def _answered(self, seq: int, peer: str) -> None:
        now = time.monotonic()
        with self._lock:
            sent = self._sent.pop(seq, None)
            if sent is None or sent.peer != peer:
                return
            state = self._paths.get((sent.peer, sent.path))
            if state is None:
                return
            state.last_seen = time.time()
            if sent.kind == "ping":
                state.results.append(now - sent.at)
            elif sent.kind == "full":
                state.full_ok = True
                state.search = None
                state.path_mtu = sent.size
            elif sent.kind == "search" and state.search is not None:
                good, bad = state.search
                if good < sent.size < bad:
                    self._narrow(state, sent.size, bad)

    def _report_changes(self) -> None:
        try:
            current = {peer: entry["health"] for peer, entry in self.peers().items()}
        except Exception:
            return
        for peer, health in current.items():
            old = self._states.get(peer, "unknown")
            if old != health:
                self.on_change(peer, old, health)
        self._states = current

    # --- answering -----------------------------------------------------------------------
    def _recv_loop(self) -> None:
        sockets = [s for s in (self._udp, self._raw) if s is not None]
        if not sockets:
            return
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select(sockets, [], [], 0.5)
            except (OSError, ValueError):
                return
            for sock in ready:
                with contextlib.suppress(OSError):
                    self._receive(sock)

    def _receive(self, sock: socket.socket) -> None:
        data, address = sock.recvfrom(65535)
        me = self._me()
        if sock is self._raw:
            if len(data) < ETH_HEADER or address[2] == socket.PACKET_OUTGOING:
                return
            message = decode(data[ETH_HEADER:])
        else:
            message = decode(data)
        if message is None or message.get("from") == me.name:
            return
        sender = message.get("from")
        if not isinstance(sender, str):
            return
        if message.get("t") == "rep":
            seq = message.get("seq")
            if message.get("to") == me.name and isinstance(seq, int):
                self._answered(seq, sender)
            return
        seqs = message.get("seqs")
        seq = seqs.get(me.name) if isinstance(seqs, dict) else None
        if message.get("t") != "req" or not isinstance(seq, int) or self._udp is None:
            return
        reply = json.dumps({"t": "rep", "from": me.name, "to": sender, "seq": seq}).encode()
        if sock is self._raw:  # inside the overlay: answer to the sender's probe port
            ip = message.get("ip")
            if isinstance(ip, str):
                self._udp.sendto(reply, (ip, UNDERLAY_PORT))
        else:
            self._udp.sendto(reply, address)
