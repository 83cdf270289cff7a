"""One dump of the daemon's own netns links, parsed straight from the netlink bytes.

Why: pyroute2 decodes every attribute of every link (statistics, per-family
configuration arrays) into Python objects, ~0.5-1 ms per link; a verify pass, the first
sync after a restart and `netctl status` each list the host's links, and at a thousand
endpoints a host has thousands. netd reads a handful of top-level attributes, so this
parser reads only those (and asks the kernel to leave statistics out). A message it
does not fully understand (kind-specific IFLA_INFO_DATA, e.g. a vxlan's id, or a
hardware address that is not 6 bytes) is handed to pyroute2's own decoder, so every
Link is the same as `_link_from_msg` makes (tests/functional/test_linkdump.py compares
the two on real links).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

NETLINK_ROUTE = 0
RTM_GETLINK = 18
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER = 1, 3, 4, 5, 10
IFLA_LINKINFO, IFLA_AF_SPEC, IFLA_EXT_MASK = 18, 26, 29
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_INET6_ADDR_GEN_MODE = 8
AF_INET6 = 10
RTEXT_FILTER_SKIP_STATS = 1 << 3
IFF_UP = 1

_HEADER = struct.Struct("=IHHII")  # nlmsghdr
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg
_ATTR = struct.Struct("=HH")


def _attrs(data: bytes, start: int, end: int) -> dict[int, tuple[int, int]]:
    """Top-level attributes in data[start:end]: type -> (payload start, payload end)."""
    out: dict[int, tuple[int, int]] = {}
    while start + 4 <= end:
        length, kind = _ATTR.unpack_from(data, start)
        if length < 4:
            break
        out[kind & 0x3FFF] = (start + 4, start + length)
        start += (length + 3) & ~3
    return out


def _u32(data: bytes, span: tuple[int, int] | None) -> int:
    return struct.unpack_from("=I", data, span[0])[0] if span else 0


def _cstr(data: bytes, span: tuple[int, int]) -> str:
    return data[span[0]:span[1]].split(b"\0", 1)[0].decode()


def parse_link(data: bytes, offset: int, length: int,
               make: Callable[..., Any], fallback: Callable[[bytes], Any]) -> Any:
    """One RTM_NEWLINK message at `offset` -> make(index=..., ...) or fallback(message)."""
    _, _, index, flags, _ = _IFINFO.unpack_from(data, offset + 16)
    attrs = _attrs(data, offset + 32, offset + length)
    kind = ""
    info = attrs.get(IFLA_LINKINFO)
    if info is not None:
        nested = _attrs(data, *info)
        if IFLA_INFO_DATA in nested:
            return fallback(data[offset:offset + length])
        if IFLA_INFO_KIND in nested:
            kind = _cstr(data, nested[IFLA_INFO_KIND])
    address = attrs.get(IFLA_ADDRESS)
    if address is not None and address[1] - address[0] != 6:
        return fallback(data[offset:offset + length])
    mac = data[address[0]:address[1]].hex(":") if address else ""
    addrgenmode = None
    spec = attrs.get(IFLA_AF_SPEC)
    if spec is not None:
        inet6 = _attrs(data, *spec).get(AF_INET6)
        if inet6 is not None:
            mode = _attrs(data, *inet6).get(IFLA_INET6_ADDR_GEN_MODE)
            if mode is not None:
                addrgenmode = data[mode[0]]
    return make(
        index=index, name=_cstr(data, attrs[IFLA_IFNAME]), kind=kind,
        mtu=_u32(data, attrs.get(IFLA_MTU)), mac=mac, up=bool(flags & IFF_UP),
        master=_u32(data, attrs.get(IFLA_MASTER)),
        peer_index=struct.unpack_from("=i", data, attrs[IFLA_LINK][0])[0]
        if IFLA_LINK in attrs else 0,
        info={}, addrgenmode=addrgenmode,
    )


def dump_links(make: Callable[..., Any], fallback: Callable[[bytes], Any]) -> list[Any]:
    """Every link of the calling thread's netns (the daemon's own), one dump request."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    try:
        sock.bind((0, 0))
        ext = _ATTR.pack(8, IFLA_EXT_MASK) + struct.pack("=I", RTEXT_FILTER_SKIP_STATS)
        body = _IFINFO.pack(0, 0, 0, 0, 0) + ext
        seq = 1
        sock.send(_HEADER.pack(16 + len(body), RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP,
                               seq, 0) + body)
        out: list[Any] = []
        while True:
            data = sock.recv(1 << 20)
            offset = 0
            while offset + 16 <= len(data):
                length, kind, _, msg_seq, _ = _HEADER.unpack_from(data, offset)
                if length < 16:
                    raise OSError(errno.EPROTO, "malformed netlink message")
                if msg_seq == seq:
                    if kind == NLMSG_DONE:
                        return out
                    if kind == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", data, offset + 16)[0]
                        if code:
                            raise OSError(code, os.strerror(code))
                    elif kind == 16:  # RTM_NEWLINK
                        out.append(parse_link(data, offset, length, make, fallback))
                offset += (length + 3) & ~3
    finally:
        sock.close()
