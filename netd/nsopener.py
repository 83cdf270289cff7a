"""Cheap rtnetlink sockets inside other network namespaces, from a tiny helper process.

Why: a socket in a container's netns must be created by a thread that is in that netns,
and netd never switches its own netns. pyroute2's `IPRoute(netns=path)` forks the whole
daemon for every socket (~10-13 ms each), which made a verify pass over a thousand
endpoints last the whole resync interval. Instead, each netd.netlink.Netlink starts one
small long-lived opener process (this module in a fresh interpreter: stdlib only, no
site packages) on first use. Over a SOCK_SEQPACKET socketpair the daemon sends a namespace
path; the opener opens it (never creating anything: a missing path is ENOENT), setns()es
into it, creates a NETLINK_ROUTE socket, setns()es back to its own netns (so it never
pins a container's namespace) and returns the socket with SCM_RIGHTS. A round trip is
well under a millisecond.

Lifetime: the opener exits on EOF of the socketpair (Netlink.close, or the daemon's
death closes it) and is also killed by PR_SET_PDEATHSIG if the thread that started it
ends; the client then restarts it once, and falls back to pyroute2's fork if that fails.
So that a short-lived thread (an API request) using the opener first does not take it
down when it ends, the process is always started from one long-lived spawner thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

from netd.errors import DatapathError

_CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG = 1
_NETLINK_ROUTE = 0
_MAX_PATH = 4096
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# -I -S: no site packages, no environment; only this module and netd.errors get imported
_BOOT = f"import sys; sys.path.insert(0, {_ROOT!r}); import netd.nsopener as m; m.main(sys.argv)"
_TIMEOUT = 5.0  # seconds for one open; a stuck opener is killed, the caller falls back


# PR_SET_PDEATHSIG follows the thread that forked: fork from one that lives as long as
# the process (an idle pool worker waits forever), not from the caller's thread
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nsopener-spawn")


class OpenerUnavailable(DatapathError):
    """The opener process cannot serve requests; use another way to open the socket."""


# -- the opener process ----------------------------------------------------------------


def _serve(chan: socket.socket, parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        return
    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    while True:
        request = chan.recv(_MAX_PATH)
        if not request:
            return
        try:
            sock = _open_in(libc, home, os.fsdecode(request))
        except OSError as exc:
            code = exc.errno or errno.EIO
            chan.send(f"E{code} {exc.strerror or exc}".encode())
            continue
        try:
            socket.send_fds(chan, [b"K"], [sock.fileno()])
        finally:
            sock.close()


def _open_in(libc: ctypes.CDLL, home: int, path: str) -> socket.socket:
    target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # no O_CREAT: missing is ENOENT
    try:
        if libc.setns(target, _CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"{os.strerror(code)} (not a network namespace?)")
    finally:
        os.close(target)
    try:
        return socket.socket(
            socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, _NETLINK_ROUTE
        )
    finally:
        if libc.setns(home, _CLONE_NEWNET) != 0:
            os._exit(1)  # never stay (and pin) a foreign namespace


def main(argv: list[str]) -> None:
    chan = socket.socket(fileno=int(argv[1]))
    with contextlib.suppress(OSError, KeyboardInterrupt):  # a dying parent: just exit
        _serve(chan, int(argv[2]))


# -- the client (in the daemon) --------------------------------------------------------


def _shutdown(proc: subprocess.Popen[bytes], chan: socket.socket) -> None:
    chan.close()  # EOF: the opener exits by itself
    try:
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class NsOpener:
    """One opener process, started on first use, shared by the threads of one owner."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._chan: socket.socket | None = None
        self._finalizer: weakref.finalize | None = None
        self._broken = False

    @property
    def pid(self) -> int | None:
        """The opener's process id while it runs (for tests and diagnostics)."""
        return None if self._proc is None else self._proc.pid

    def _start(self) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = _SPAWNER.submit(
                subprocess.Popen,
                [sys.executable, "-I", "-S", "-c", _BOOT, str(theirs.fileno()), str(os.getpid())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                close_fds=True,
            ).result()
        except OSError as exc:
            mine.close()
            raise OpenerUnavailable(f"cannot start the netns opener: {exc}") from None
        finally:
            theirs.close()
        mine.settimeout(_TIMEOUT)
        self._chan = mine
        self._finalizer = weakref.finalize(self, _shutdown, self._proc, mine)

    def _stop(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # runs _shutdown once
        self._proc, self._chan, self._finalizer = None, None, None

    def open(self, path: str) -> int:
        """A new NETLINK_ROUTE socket fd inside the netns at `path` (the caller owns it).

        OSError as for open(2)/setns(2) of `path` (FileNotFoundError when it does not
        exist); OpenerUnavailable when the opener cannot be used."""
        with self._lock:
            for _attempt in range(2):
                if self._broken:
                    break
                if self._chan is None:
                    try:
                        self._start()
                    except OpenerUnavailable:
                        self._broken = True
                        raise
                assert self._chan is not None
                try:
                    self._chan.send(os.fsencode(path))
                    reply, fds, _flags, _addr = socket.recv_fds(self._chan, 512, 1)
                except OSError:  # dead (EOF, EPIPE, ECONNRESET) or stuck (timeout)
                    self._stop()
                    continue
                if reply == b"K" and len(fds) == 1:
                    return fds[0]
                for fd in fds:
                    os.close(fd)
                if reply.startswith(b"E"):
                    code, _, message = reply[1:].decode(errors="replace").partition(" ")
                    raise OSError(int(code), message, path)
                self._stop()  # EOF or garbage: restart once
            self._broken = True
            raise OpenerUnavailable("the netns opener process keeps failing")

    def close(self) -> None:
        with self._lock:
            self._stop()
