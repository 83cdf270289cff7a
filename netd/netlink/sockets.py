"""Sockets of the netlink facade, and the one place netlink errors become DatapathErrors.

Sockets: one IPRoute per (thread, netns). A container netns is given as a path
(/run/netns/NAME or /proc/PID/ns/net). Its socket comes from the Netlink's opener
process (netd.nsopener: ~0.1 ms, the daemon never switches netns itself) and is wrapped
with `IPRoute(fileno=fd)`; if the opener cannot run, `IPRoute(netns=path, flags=0)`
(forks the daemon, ~10 ms). Either way a missing netns is NetnsNotFound, never created.
Sockets stay cached across calls, keyed by the namespace's inode, so a netns deleted
and re-created under the same path is noticed. A cached socket keeps its namespace
alive: callers close the ones they no longer need (`close_netns`, `close_unused`), or
a vanished container's namespace and veths would linger.

Errors: `tolerant` runs one write and is the only place that decides which kernel
answers mean "already as asked": "not found" on a delete and "already exists" on an add
are success (0 changes); anything else is a DatapathError naming the object.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import NoReturn

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from netd.errors import DatapathError
from netd.nsopener import NsOpener, OpenerUnavailable

# what the kernel answers when the object of a delete (or its device) is not there:
# links ENODEV, neighbours/fdb ENOENT, routes ESRCH, addresses EADDRNOTAVAIL
ABSENT = frozenset({errno.ENOENT, errno.ENODEV, errno.ESRCH, errno.EADDRNOTAVAIL})


class NetnsNotFound(DatapathError):
    """A container network namespace path does not exist (the container is gone)."""


def where(netns: str | None) -> str:
    return f" in netns {netns}" if netns else ""


def _fail(what: str, netns: str | None, exc: BaseException) -> NoReturn:
    detail = exc.args[-1] if isinstance(exc, NetlinkError) and exc.args else exc
    raise DatapathError(f"cannot {what}{where(netns)}: {detail}") from None


def tolerant(
    what: str,
    call: Callable[[], object],
    netns: str | None = None,
    *,
    absent_ok: bool = False,
    exists_ok: bool = False,
) -> int:
    """Run one netlink write; 1 when the kernel did it, 0 when it answered that it
    already is as asked ("not found" with `absent_ok`, for deletes; "already exists"
    with `exists_ok`, for adds); any other error is a DatapathError naming `what`."""
    try:
        call()
    except NetlinkError as exc:
        if absent_ok and exc.code in ABSENT:
            return 0
        if exists_ok and exc.code == errno.EEXIST:
            return 0
        _fail(what, netns, exc)
    except DatapathError:
        raise
    except OSError as exc:
        _fail(what, netns, exc)
    return 1


class Sockets:
    """Cached rtnetlink sockets per (thread, netns); the base of every object kind."""

    def __init__(self, *, opener: bool = True) -> None:
        """`opener`: open container-netns sockets through a helper process (started on
        first use); False for short-lived instances that open one or two."""
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[IPRoute] = []
        self._opener = NsOpener() if opener else None

    def _cache(self) -> dict[str | None, tuple[int, IPRoute]]:
        cache: dict[str | None, tuple[int, IPRoute]] | None = getattr(self._local, "sockets", None)
        if cache is None:
            cache = {}
            self._local.sockets = cache
        return cache

    def _ipr(self, netns: str | None = None) -> IPRoute:
        cache = self._cache()
        inode = 0
        if netns is not None:
            try:
                inode = os.stat(netns).st_ino
            except OSError:
                self.close_netns(netns)
                raise NetnsNotFound(
                    f"network namespace {netns} does not exist (container gone?)"
                ) from None
        cached = cache.get(netns)
        if cached is not None:
            if cached[0] == inode or netns is None:
                return cached[1]
            self.close_netns(netns)
        try:
            ipr = IPRoute() if netns is None else self._open_netns(netns)
        except FileNotFoundError:
            raise NetnsNotFound(
                f"network namespace {netns} does not exist (container gone?)"
            ) from None
        except OSError as exc:
            raise DatapathError(f"cannot open netlink socket{where(netns)}: {exc}") from None
        cache[netns] = (inode, ipr)
        with self._lock:
            self._all.append(ipr)
        return ipr

    def _open_netns(self, netns: str) -> IPRoute:
        if self._opener is not None:
            try:
                fd = self._opener.open(netns)
            except OpenerUnavailable:
                pass
            else:
                try:
                    return IPRoute(fileno=fd)
                except Exception:
                    with suppress(OSError):
                        os.close(fd)
                    raise
        return IPRoute(netns=netns, flags=0)

    @property
    def opener_pid(self) -> int | None:
        """Process id of the netns opener while it runs."""
        return None if self._opener is None else self._opener.pid

    def _drop(self, ipr: IPRoute) -> None:
        with self._lock:
            if ipr in self._all:
                self._all.remove(ipr)
        with suppress(Exception):  # a closing socket has nothing useful to say
            ipr.close()

    def close_netns(self, netns: str) -> None:
        """Close this thread's socket into `netns`, letting the namespace die if unused."""
        cached = self._cache().pop(netns, None)
        if cached is not None:
            self._drop(cached[1])

    def close_unused(self, keep: set[str]) -> None:
        """Close this thread's container-netns sockets whose path is not in `keep`."""
        for path in [p for p in self._cache() if p is not None and p not in keep]:
            self.close_netns(path)

    def close(self) -> None:
        """Close every socket of every thread."""
        with self._lock:
            sockets, self._all = self._all, []
        for ipr in sockets:
            with suppress(Exception):
                ipr.close()
        self._local = threading.local()
        if self._opener is not None:
            self._opener.close()

    @contextmanager
    def _reading(self, what: str, netns: str | None = None) -> Iterator[None]:
        """Turn netlink errors of the read requests inside into a DatapathError naming
        `what` (writes go through `tolerant`)."""
        try:
            yield
        except NetlinkError as exc:
            _fail(what, netns, exc)
        except DatapathError:
            raise
        except OSError as exc:
            _fail(what, netns, exc)
