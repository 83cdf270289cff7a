"""Resolving a container reference to a network namespace path on this host.

A reference is a netns name (/run/netns/NAME), a netns path, or a PID. The endpoint
name (what IPAM reservations follow) is the netns name, the path's last component, or
`pid-N`. Container names and ids of a Docker-compatible runtime resolve through that
runtime's API to a PID (netd.runtimes.engine); the endpoint is named after the container.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from netd.errors import InvalidInput, NotFound
from netd.model import check_name

NETNS_DIR = Path("/run/netns")


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


def endpoint_name(ref: str) -> str:
    """The endpoint name a reference stands for, whether or not the container still
    exists (detach after the process died): `pid-N` for a PID or a /proc/N/... path,
    the last component of another path, else the netns name itself."""
    if not isinstance(ref, str) or not ref:
        raise InvalidInput(f"invalid container reference {ref!r}: give a netns name, path or PID")
    if ref.isdigit():
        return f"pid-{ref}"
    if ref.startswith("/"):
        parts = Path(ref).parts
        if parts[:2] == ("/", "proc") and len(parts) > 2 and parts[2].isdigit():
            return f"pid-{parts[2]}"
        return check_name(Path(ref).name, "container name")
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
    if ref.isdigit():
        path = Path(f"/proc/{ref}/ns/net")
        if not path.exists():
            raise NotFound(f"container {ref!r} not found: no process with PID {ref}")
        return ContainerRef(ref=ref, name=f"pid-{ref}", netns=str(path))
    if ref.startswith("/"):
        path = Path(ref)
        if not path.exists():
            raise NotFound(f"container {ref!r} not found: no such netns path")
        if not _is_netns(path):
            raise InvalidInput(f"{ref!r} is not a network namespace")
        return ContainerRef(ref=ref, name=endpoint_name(ref), netns=str(path))
    path = NETNS_DIR / ref
    if not (_valid_name(ref) and _is_netns(path)):
        from netd.runtimes.engine import find_container  # a Docker/Podman name or id

        container = find_container(ref)
        if container is not None:
            return container
    check_name(ref, "container name")
    if not _is_netns(path):
        raise NotFound(
            f"container {ref!r} not found: no network namespace {path} "
            "(give a netns name, a netns path, a PID or a running Docker/Podman container)"
        )
    return ContainerRef(ref=ref, name=ref, netns=str(path))
