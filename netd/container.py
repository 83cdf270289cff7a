"""Resolving a container reference to a network namespace path on this host.

A reference is a netns name (/run/netns/NAME), a netns path, or a PID. The endpoint
name (what IPAM reservations follow) is the netns name, the path's last component, or
`pid-N`. Container names and ids of a Docker-compatible runtime resolve through that
runtime's API to a PID (netd.runtimes.engine); the endpoint is named after the container.

A reference must name a container: paths are accepted only in the places network
namespaces live (NETNS_PATHS, or /proc/PID/ns/net), and a reference that resolves to the
daemon's own network namespace or the host's initial one (PID 1's) is refused, however
it is spelled (`/proc/self/ns/net`, `1`, `/run/netns/../../proc/1/ns/net`, a container
run with the host's network): attaching it would put the host itself on a tenant network.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from netd.errors import InvalidInput, NotFound
from netd.model import check_name

NETNS_DIR = Path("/run/netns")
# where runtimes keep network namespaces (ip netns / podman / CNI, Docker's sandboxes)
NETNS_PATHS = ("/run/netns/", "/var/run/netns/", "/run/docker/netns/", "/var/run/docker/netns/")
_PROC_NETNS = re.compile(r"/proc/([1-9][0-9]{0,9})/ns/net")
_PID = re.compile(r"[1-9][0-9]{0,9}")
PATH_MAX, NAME_MAX = 4096, 255
INIT_NET_INODE = 0xEFFFFFF9


@dataclass(frozen=True)
class ContainerRef:
    ref: str  # as the user gave it
    name: str  # endpoint name
    netns: str  # netns path


def _is_netns(path: Path) -> bool:
    try:
        return os.stat(path).st_dev == os.stat("/proc/self/ns/net").st_dev
    except OSError:
        return False


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _refuse_host_netns(ref: str, path: str) -> None:
    """The daemon's own netns and the host's initial one are never a container. The
    initial one has a fixed inode number (PROC_NET_INIT_INO), so it is recognised even
    where PID 1's namespace files cannot be read."""
    target = _identity(path)
    if target is None:
        raise InvalidInput(f"cannot open the network namespace of {ref!r} ({path})")
    own = _identity("/proc/self/ns/net")
    what = None
    if target == own:
        what = "netd's own"
    elif target[1] == INIT_NET_INODE or target == _identity("/proc/1/ns/net"):
        what = "the host's"
    if what is not None:
        raise InvalidInput(
            f"container reference {ref!r} is {what} network namespace, not a container's; "
            "give the container's netns name, path or PID"
        )


def _check_path(ref: str) -> str:
    """A netns path, normalised (no `..`), in a place network namespaces live."""
    if len(ref) > PATH_MAX or any(len(part) > NAME_MAX for part in ref.split("/")):
        raise InvalidInput(f"invalid container reference {ref[:60]!r}...: path too long")
    if not ref.isprintable():
        raise InvalidInput(f"invalid container reference {ref!r}: control characters in path")
    path = os.path.normpath(ref)
    if os.path.dirname(path) + "/" in NETNS_PATHS or _PROC_NETNS.fullmatch(path):
        return path
    raise InvalidInput(
        f"invalid container reference {ref!r}: a netns path lies in "
        f"{', '.join(p.rstrip('/') for p in NETNS_PATHS)} or is /proc/PID/ns/net"
    )


def endpoint_name(ref: str) -> str:
    """The endpoint name a reference stands for, whether or not the container still
    exists (detach after the process died): `pid-N` for a PID or a /proc/N/... path,
    the last component of another path, else the netns name itself."""
    if not isinstance(ref, str) or not ref:
        raise InvalidInput(f"invalid container reference {ref!r}: give a netns name, path or PID")
    if _PID.fullmatch(ref):
        return f"pid-{ref}"
    if ref.startswith("/"):
        path = _check_path(ref)
        proc = _PROC_NETNS.fullmatch(path)
        if proc:
            return f"pid-{proc.group(1)}"
        return check_name(os.path.basename(path), "container name")
    return check_name(ref, "container name")


def _valid_name(ref: str) -> bool:
    try:
        check_name(ref, "container name")
    except InvalidInput:
        return False
    return True


def resolve(ref: str) -> ContainerRef:
    """Find the container's netns, or raise NotFound / InvalidInput with a clear message."""
    if not isinstance(ref, str) or not ref:
        raise InvalidInput(f"invalid container reference {ref!r}: give a netns name, path or PID")
    if _PID.fullmatch(ref):
        path = Path(f"/proc/{ref}/ns/net")
        if not os.path.lexists(path):
            raise NotFound(f"container {ref!r} not found: no process with PID {ref}")
        _refuse_host_netns(ref, str(path))
        return ContainerRef(ref=ref, name=f"pid-{ref}", netns=str(path))
    if ref.startswith("/"):
        path = Path(_check_path(ref))
        if not os.path.lexists(path):
            raise NotFound(f"container {ref!r} not found: no such netns path")
        if not _is_netns(path):
            raise InvalidInput(f"{ref!r} is not a network namespace")
        _refuse_host_netns(ref, str(path))
        return ContainerRef(ref=ref, name=endpoint_name(ref), netns=str(path))
    path = NETNS_DIR / ref
    if not (_valid_name(ref) and _is_netns(path)):
        from netd.runtimes.engine import find_container  # a Docker/Podman name or id

        container = find_container(ref)
        if container is not None:
            _refuse_host_netns(ref, container.netns)
            return container
    check_name(ref, "container name")
    if not _is_netns(path):
        raise NotFound(
            f"container {ref!r} not found: no network namespace {path} "
            "(give a netns name, a netns path, a PID or a running Docker/Podman container)"
        )
    _refuse_host_netns(ref, str(path))
    return ContainerRef(ref=ref, name=ref, netns=str(path))
