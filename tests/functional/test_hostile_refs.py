"""A real netd refuses references to its own or the host's network namespace and names
that only differ by a trailing newline — and changes nothing, in the store or the kernel."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from netd.lab import Lab, ns_exec

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(hosts=1, store="embedded") as lab:
        lab.netctl("h1", "network", "create", "att", "--subnet", "10.70.0.0/24")
        yield lab


def _kernel_view(netns: str) -> list[str]:
    """Links, IPv4 addresses and IPv4 routes (IPv6 link-local state moves by itself)."""
    out = []
    for cmd in (["ip", "-o", "link"], ["ip", "-4", "-o", "addr"],
                ["ip", "-4", "route", "show", "table", "all"]):
        lines = subprocess.run(ns_exec(netns, *cmd), capture_output=True, text=True,
                               check=True).stdout.splitlines()
        out += [" ".join(line.split()[:4]) if cmd[1] == "-o" else line for line in lines]
    return out


def test_the_hosts_own_namespace_is_not_a_container(lab: Lab) -> None:
    host = lab.hosts["h1"]
    assert host.proc is not None
    before = _kernel_view(host.netns)
    refs = ["/proc/self/ns/net", str(host.proc.pid), f"/proc/{host.proc.pid}/ns/net",
            f"/run/netns/../../proc/{host.proc.pid}/ns/net", "1", "/proc/1/ns/net",
            "/run/netns/../../proc/1/ns/net", "/etc/hostname", "/run/netns/" + "x" * 5000]
    for ref in refs:
        result = lab.netctl("h1", "attach", ref, "--network", "att", check=False)
        assert result.returncode != 0, ref
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr and "internal" not in result.stderr, result.stderr
    assert lab.netctl_json("h1", "endpoint", "ls") == []
    assert _kernel_view(host.netns) == before


def test_names_with_a_trailing_newline_are_refused(lab: Lab) -> None:
    for args in (["network", "create", "blue\n", "--subnet", "10.71.0.0/24"],
                 ["network", "create", "blue", "--subnet", "10.71.0.0/24",
                  "--tenant", "default\n"]):
        result = lab.netctl("h1", *args, check=False)
        assert result.returncode != 0 and "invalid" in result.stderr, result.stderr
    assert [n["name"] for n in lab.netctl_json("h1", "network", "ls")] == ["att"]
    container = lab.add_container("h1", "nl1")
    result = lab.netctl("h1", "attach", container, "--network", "att", "--ifname", "eth0\n",
                        check=False)
    assert result.returncode != 0 and "invalid interface name" in result.stderr
    assert lab.netctl_json("h1", "endpoint", "ls") == []
