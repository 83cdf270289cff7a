"""Container references: names, PIDs and netns paths, and what never counts as one."""

from __future__ import annotations

import os

import pytest

from netd import container
from netd.errors import InvalidInput, NotFound


@pytest.mark.parametrize("ref, name", [
    ("web1", "web1"),
    ("4242", "pid-4242"),
    ("/proc/4242/ns/net", "pid-4242"),
    ("/run/netns/web1", "web1"),
    ("/var/run/netns/web1", "web1"),
    ("/var/run/docker/netns/1f2e3d", "1f2e3d"),
])
def test_endpoint_names(ref: str, name: str) -> None:
    assert container.endpoint_name(ref) == name


@pytest.mark.parametrize("ref", [
    "/proc/self/ns/net",
    "/run/netns/../../proc/self/ns/net",
    "/etc/passwd",
    "/run/netns/a/b",
    "/run/netns/" + "x" * 5000,
    "/run/netns/web1\n",

    "web1\n",
    "٣",  # a digit to str.isdigit, not a PID
])
def test_references_outside_netns_places_are_refused(ref: str) -> None:
    with pytest.raises(InvalidInput):
        container.endpoint_name(ref)
    with pytest.raises(InvalidInput):
        container.resolve(ref)


@pytest.mark.skipif(os.geteuid() != 0, reason="reads other processes' netns")
@pytest.mark.parametrize("ref", [str(os.getpid()), f"/proc/{os.getpid()}/ns/net",
                                 f"/run/netns/../../proc/{os.getpid()}/ns/net"])
def test_the_hosts_and_the_daemons_own_netns_are_not_containers(ref: str) -> None:
    """The test runs in the host's initial netns (and is the "daemon" here)."""
    with pytest.raises(InvalidInput, match="network namespace, not a container's"):
        container.resolve(ref)


@pytest.mark.parametrize("ref", ["1", "/proc/1/ns/net", "/run/netns/../../proc/1/ns/net"])
def test_pid_1_is_never_a_container(ref: str) -> None:
    """Refused as the host's netns, or (where PID 1's namespace cannot be read, as in
    some VMs) as a namespace netd cannot open."""
    with pytest.raises(InvalidInput):
        container.resolve(ref)


def test_a_missing_container_is_not_found() -> None:
    with pytest.raises(NotFound):
        container.resolve("/run/netns/netd-no-such-netns-x")
