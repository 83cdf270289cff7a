"""TUN/TAP devices for userspace datapaths (weave's sleeve; a UDP backend's TUN),
opened through /dev/net/tun ioctls: their creation is not netlink.

Why these flags:
* IFF_NO_PI: frames without the 4-byte packet-info prefix.
* IFF_VNET_HDR + TUNSETOFFLOAD(CSUM|TSO4|TSO6): the kernel hands over 64 KB TCP GSO
  super-frames prefixed by a virtio_net_hdr instead of segmenting them, and accepts them
  back the same way on the peer: one syscall per 64 KB instead of per 1.5 KB.
* TUNSETPERSIST: the device outlives the daemon, so a restarted daemon re-adopts it (the
  bridge keeps its port) and a deleted network really goes away.

Link attributes (master, MTU, up) are not set here: netd.netlink owns those.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import struct

from netd.errors import Conflict, DatapathError, InvalidInput, Unsupported

TUN_PATH = "/dev/net/tun"

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUNGETIFF = 0x800454D2

IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000

TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04

VNET_HDR_SIZE = 10  # struct virtio_net_hdr without num_buffers
IFNAMSIZ = 16


def _ifreq(name: str, flags: int) -> bytes:
    return struct.pack("16sH22x", name.encode(), flags)


def check_tap_name(name: str, kind: str = "TAP") -> str:
    if not name or len(name.encode()) >= IFNAMSIZ or "/" in name or " " in name:
        raise InvalidInput(f"invalid {kind} name {name!r}: use 1-15 characters, no '/' or spaces")
    return name


def tap_exists(name: str) -> bool:
    """True if a link of this name exists in the caller's network namespace."""
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def _open_tun(name: str, flags: int, kind: str = "TAP") -> int:
    try:
        fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise Unsupported(f"{TUN_PATH} is missing: load the tun module (modprobe tun)") from None
    except PermissionError:
        raise DatapathError(f"cannot open {TUN_PATH}: netd must run as root") from None
    try:
        fcntl.ioctl(fd, TUNSETIFF, _ifreq(name, flags))
    except OSError as exc:
        os.close(fd)
        if exc.errno == errno.EBUSY:
            raise Conflict(
                f"{kind} {name} is held open by another process (a second netd?); stop it first"
            ) from None
        if exc.errno == errno.EINVAL:
            raise Conflict(
                f"link {name} exists but is not a {kind} device; delete it (ip link del {name})"
            ) from None
        raise DatapathError(f"cannot open {kind} {name}: {exc.strerror}") from None
    return fd


def open_tap(name: str) -> int:
    """Create or adopt the persistent TAP `name`; returns a non-blocking fd in vnet-hdr mode."""
    check_tap_name(name)
    fd = _open_tun(name, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
    try:
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_SIZE))
        fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    except OSError as exc:
        os.close(fd)
        raise DatapathError(f"cannot configure TAP {name}: {exc.strerror}") from None
    return fd


def open_tun(name: str) -> int:
    """Create or adopt the persistent TUN `name` (IP packets, no packet-info prefix);
    returns a non-blocking fd."""
    check_tap_name(name, "TUN")
    fd = _open_tun(name, IFF_TUN | IFF_NO_PI, "TUN")
    try:
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    except OSError as exc:
        os.close(fd)
        raise DatapathError(f"cannot configure TUN {name}: {exc.strerror}") from None
    return fd


def delete_tun(name: str) -> None:
    """Delete the persistent TUN `name`; a missing device is success."""
    check_tap_name(name, "TUN")
    if not tap_exists(name):
        return
    destroy_tap_fd(_open_tun(name, IFF_TUN | IFF_NO_PI, "TUN"))


def destroy_tap_fd(fd: int) -> None:
    """Drop persistence and close: the kernel deletes the device."""
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, TUNSETPERSIST, 0)
    os.close(fd)


def delete_tap(name: str) -> None:
    """Delete the persistent TAP `name`; a missing device is success."""
    check_tap_name(name)
    if not tap_exists(name):
        return
    fd = _open_tun(name, IFF_TAP | IFF_NO_PI)
    destroy_tap_fd(fd)
