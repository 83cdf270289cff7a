"""Sleeve crypto and framing helpers: round trip, tamper rejection, nonce uniqueness."""

from __future__ import annotations

import os
import threading

import pytest

from netd.errors import InvalidInput
from plugins.weave import crypto
from plugins.weave.crypto import OVERHEAD, FrameCipher, FrameRejected, NonceSource
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
