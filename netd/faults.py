"""Crash points: kill the daemon at a named place, for tests that prove recovery.

`NETD_CRASH_AT=<point>[:<n>]` in netd's environment (read once, when this module is
first imported) makes the n-th pass (default: the first) through `crash_point(<point>)`
after the first write request (`arm`: start-up and its first sync pass the same points
and do not count) end the process at once with `os._exit(CRASH_EXIT)`: no cleanup, no
flush, no reply to the client, as a kill -9 or a power cut would. Unset, a crash point
costs one comparison.

The points sit between the steps whose interleaving with a crash matters (POINTS); the
crash tests (tests/functional/test_crash_points.py) run every one of them and check that
a restarted daemon finishes or undoes the interrupted change and leaks nothing.
"""

from __future__ import annotations

import os
import sys
import threading

ENV = "NETD_CRASH_AT"
CRASH_EXIT = 137  # what a shell reports for kill -9

POINTS = {
    "commit.before": "any conditional commit of the service, before it is sent",
    "commit.after": "any conditional commit of the service, after the store applied it",
    "attach.committed": "attach: endpoint, address and MAC committed, datapath not asked yet",
    "attach.applied": "attach: this host's datapath has the endpoint, client not answered",
    "detach.committed": "detach: records deleted, datapath not asked yet",
    "detach.applied": "detach: datapath followed, client not answered",
    "rm.marked": "network rm: removal marker written, records not deleted yet",
    "rm.committed": "network rm: records deleted, datapath not asked yet",
    "apply.before": "a driver worker about to apply a desired state to the kernel",
    "apply.after": "a driver worker applied a desired state, status not updated",
    "plug.veth": "mid kernel apply: a container's veth pair made, no address or route yet",
}


def _parse(value: str) -> tuple[str, int]:
    point, _, count = value.partition(":")
    point = point.strip()
    if point and point not in POINTS:
        raise ValueError(f"{ENV}: unknown crash point {point!r} (known: {', '.join(POINTS)})")
    return point, int(count) if count.strip() else 1


_point, _nth = _parse(os.environ.get(ENV, ""))
_passes = 0
_armed = False
_lock = threading.Lock()


def arm() -> None:
    """Count passes from now on (the service calls this as each write request starts)."""
    global _armed
    _armed = True


def crash_point(name: str) -> None:
    """End the process here if NETD_CRASH_AT names this point (and this is its n-th pass)."""
    global _passes
    if name != _point or not _armed:
        return
    with _lock:
        _passes += 1
        if _passes < _nth:
            return
    sys.stderr.write(f"netd: crash point {name} reached ({ENV}); exiting\n")
    sys.stderr.flush()
    os._exit(CRASH_EXIT)
