"""Sleeve crypto and framing helpers: round trip, tamper rejection, nonce uniqueness,
anti-replay windows."""

from __future__ import annotations

import os
import random
import threading

import pytest

from netd.errors import InvalidInput
from plugins.weave import crypto
from plugins.weave.crypto import (
    ACCEPTED,
    MAX_PREFIXES,
    MAX_RETIRED,
    OVERHEAD,
    REPLAYED,
    TOO_OLD,
    WINDOW,
    FrameCipher,
    FrameRejected,
    NonceSource,
    PeerReplay,
    ReplayWindow,
)
from plugins.weave.sleeve import MAGIC, complete_checksum, header, parse_peer

HDR = header(4242, 1)


def test_round_trip_bytes_and_buffers() -> None:
    cipher = FrameCipher(os.urandom(32))
    frame = os.urandom(1436)
    sealed = cipher.seal(HDR, frame)
    assert len(sealed) == len(frame) + OVERHEAD
    assert frame not in sealed
    assert cipher.open(HDR, sealed) == frame

    out = bytearray(4096)
    size = cipher.seal_into(HDR, memoryview(frame), memoryview(out))
    back = bytearray(4096)
    n = cipher.open_into(HDR, memoryview(out)[:size], memoryview(back))
    assert bytes(back[:n]) == frame


@pytest.mark.parametrize("where", ["nonce", "ciphertext", "tag"])
def test_tampered_payload_is_rejected(where: str) -> None:
    cipher = FrameCipher(os.urandom(32))
    sealed = bytearray(cipher.seal(HDR, b"x" * 100))
    index = {"nonce": 3, "ciphertext": 40, "tag": len(sealed) - 1}[where]
    sealed[index] ^= 0x01
    with pytest.raises(FrameRejected):
        cipher.open(HDR, bytes(sealed))


def test_tampered_header_wrong_key_and_truncation_are_rejected() -> None:
    key = os.urandom(32)
    cipher = FrameCipher(key)
    sealed = cipher.seal(HDR, b"frame" * 20)
    with pytest.raises(FrameRejected):
        cipher.open(header(4243, 1), sealed)  # another VNI in the associated data
    with pytest.raises(FrameRejected):
        FrameCipher(os.urandom(32)).open(HDR, sealed)
    with pytest.raises(FrameRejected):
        cipher.open(HDR, sealed[:-1])
    with pytest.raises(FrameRejected):
        cipher.open_into(HDR, memoryview(sealed[:10]), memoryview(bytearray(64)))
    assert FrameCipher(key).open(HDR, sealed) == b"frame" * 20


def test_nonces_unique_within_and_across_senders() -> None:
    one, two = NonceSource(), NonceSource()
    seen = {one.next() for _ in range(50_000)}
    assert len(seen) == 50_000
    assert all(len(n) == crypto.NONCE_SIZE for n in seen)
    others = {two.next() for _ in range(1000)}
    assert not seen & others  # a fresh sender (another host, a restart) has its own prefix


def test_nonces_unique_across_threads() -> None:
    source = NonceSource()
    results: list[list[bytes]] = [[] for _ in range(4)]

    def draw(out: list[bytes]) -> None:
        out.extend(source.next() for _ in range(20_000))

    threads = [threading.Thread(target=draw, args=(r,)) for r in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = [n for r in results for n in r]
    assert len(set(flat)) == len(flat)


def test_counter_wrap_draws_a_new_prefix() -> None:
    source = NonceSource()
    first = source.next()
    source._count = (1 << 32) - 1
    last = source.next()
    wrapped = source.next()
    assert last[8:] == b"\xff\xff\xff\xff"
    assert wrapped[:8] != first[:8]
    assert wrapped[8:] == b"\x00\x00\x00\x00"


@pytest.mark.parametrize("key", [b"", b"k" * 16, b"k" * 33, "k" * 32])
def test_bad_keys_are_refused(key: object) -> None:
    with pytest.raises(InvalidInput, match="32 bytes"):
        FrameCipher(key)  # type: ignore[arg-type]


def test_header_layout() -> None:
    assert header(0x0A0B0C, 3) == bytes([MAGIC, 0x13, 0x0A, 0x0B, 0x0C, 0, 0, 0])


def _reference_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@pytest.mark.parametrize("size", [20, 21, 1400, 1401])
def test_complete_checksum_matches_reference(size: int) -> None:
    for _ in range(50):
        region = bytearray(os.urandom(size))
        pseudo = int.from_bytes(os.urandom(2), "big")
        region[16:18] = pseudo.to_bytes(2, "big")
        buf = bytearray(10) + region
        assert complete_checksum(buf, 10, 10 + 16, len(buf))
        expected = _reference_checksum(bytes(region))
        got = int.from_bytes(buf[26:28], "big")
        assert got == (expected or 0xFFFF)
        # the receiver's check: region sum (checksum in place) + pseudo-header sum = -0
        region_sum = 0xFFFF - _reference_checksum(bytes(buf[10:]))
        assert (region_sum + pseudo) % 0xFFFF == 0


def test_complete_checksum_refuses_field_outside_frame() -> None:
    assert not complete_checksum(bytearray(30), 10, 29, 30)


def test_parse_peer() -> None:
    assert parse_peer("10.0.0.1", 6784) == ("10.0.0.1", 6784)
    assert parse_peer("10.0.0.1:7000", 6784) == ("10.0.0.1", 7000)
    for bad in ("nohost", "10.0.0.1:0", "10.0.0.1:x"):
        with pytest.raises(InvalidInput):
            parse_peer(bad, 6784)


def test_window_accepts_in_order_and_rejects_duplicates() -> None:
    window = ReplayWindow()
    assert [window.accept(c) for c in range(5000)] == [ACCEPTED] * 5000
    assert window.accept(4999) == REPLAYED  # the highest one
    assert window.accept(4000) == REPLAYED
    assert window.accept(5000 - WINDOW) == REPLAYED  # the oldest still in the window
    assert window.accept(5000 - WINDOW - 1) == TOO_OLD
    assert window.accept(0) == TOO_OLD


def test_window_accepts_reordered_frames_once() -> None:
    window = ReplayWindow()
    assert window.accept(100) == ACCEPTED
    for counter in (50, 99, 0, 101, 98):
        assert window.accept(counter) == ACCEPTED
        assert window.accept(counter) == REPLAYED
    assert window.accept(WINDOW) == ACCEPTED  # 0 drops out of the window, 1 stays
    assert window.accept(2) == ACCEPTED
    assert window.accept(0) == TOO_OLD


def test_window_jump_beyond_its_size_forgets_the_past() -> None:
    window = ReplayWindow()
    for counter in (0, 1, 2):
        window.accept(counter)
    top = (1 << 32) - 1
    assert window.accept(top) == ACCEPTED
    assert window.accept(2) == TOO_OLD
    assert window.accept(top - 1) == ACCEPTED
    assert window.accept(top) == REPLAYED
    assert window.seen.bit_length() <= WINDOW


def test_window_matches_a_reference_model_under_random_reordering() -> None:
    rng = random.Random(7)
    window, seen, top = ReplayWindow(), set(), -1
    counters = list(range(20_000))
    for i in range(0, len(counters), 500):  # shuffle in chunks, and duplicate some
        chunk = counters[i : i + 500] + rng.sample(counters[max(0, i - 3000) : i + 500], 100)
        rng.shuffle(chunk)
        for c in chunk:
            if c <= top - WINDOW:
                expected = TOO_OLD
            elif c in seen:
                expected = REPLAYED
            else:
                expected = ACCEPTED
                seen.add(c)
                top = max(top, c)
            assert window.accept(c) == expected, c
    assert window.seen.bit_length() <= WINDOW


def _nonce(prefix: int, counter: int) -> int:
    return prefix << 32 | counter


def test_peer_accepts_a_new_prefix_and_keeps_the_previous_ones() -> None:
    peer = PeerReplay()
    old, new = 0x1111, 0x2222  # e.g. before and after a restart or a counter wrap
    assert peer.accept(_nonce(old, 7)) == ACCEPTED
    assert peer.accept(_nonce(new, 0)) == ACCEPTED
    assert peer.accept(_nonce(new, 0)) == REPLAYED
    assert peer.accept(_nonce(old, 7)) == REPLAYED  # each prefix has its own window
    assert peer.accept(_nonce(old, 6)) == ACCEPTED  # late frame of the previous prefix
    assert peer.prefixes() == (2, 0)


def test_peer_memory_is_bounded_and_evicted_prefixes_stay_refused() -> None:
    peer = PeerReplay()
    prefixes = list(range(1, 1001))
    for prefix in prefixes:
        assert peer.accept(_nonce(prefix, 5)) == ACCEPTED
        assert peer.accept(_nonce(prefix, 5)) == REPLAYED
    assert peer.prefixes() == (MAX_PREFIXES, MAX_RETIRED)
    retired = prefixes[-MAX_PREFIXES - 1]
    assert peer.accept(_nonce(retired, 6)) == TOO_OLD  # a replay of an older incarnation
    live = prefixes[-MAX_PREFIXES]
    assert peer.accept(_nonce(live, 6)) == ACCEPTED
    assert peer.accept(_nonce(prefixes[-1], 5)) == REPLAYED


def test_peer_evicts_the_least_recently_used_prefix() -> None:
    peer = PeerReplay()
    current = 0xAAAA
    peer.accept(_nonce(current, 0))
    for i, other in enumerate(range(1, 2 * MAX_PREFIXES)):
        peer.accept(_nonce(other, 0))
        assert peer.accept(_nonce(current, i + 1)) == ACCEPTED  # in use: never evicted
    assert peer.accept(_nonce(current, 1)) == REPLAYED


def test_sealed_frames_replay_check_uses_the_wire_nonce() -> None:
    """The receiver's view: authenticate, then check the nonce read from the frame."""
    sender, receiver = FrameCipher(bytes(32)), FrameCipher(bytes(32))
    peer = PeerReplay()
    sealed = [sender.seal(HDR, b"frame %d" % i) for i in range(3)]
    restarted = FrameCipher(bytes(32)).seal(HDR, b"after restart")
    verdicts = []
    for frame in [sealed[1], sealed[0], sealed[2], sealed[1], restarted, sealed[2]]:
        receiver.open(HDR, frame)
        verdicts.append(peer.accept(int.from_bytes(frame[: crypto.NONCE_SIZE], "big")))
    assert verdicts == [ACCEPTED, ACCEPTED, ACCEPTED, REPLAYED, ACCEPTED, REPLAYED]
