"""Functional tests need root and real kernel objects; this skips them otherwise and
offers uniquely named network namespaces that are removed even when a test fails."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Callable, Iterator

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="functional tests need root")
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(skip)


def unique(prefix: str, length: int = 6) -> str:
    """`prefix` plus random hex: a per-run name for a namespace or link."""
    return prefix + secrets.token_hex(8)[:length]


def netns_path(name: str) -> str:
    return f"/run/netns/{name}"


def in_netns(name: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `cmd` in netns `name` (nsenter leaves the mount namespace alone)."""
    return subprocess.run(
        ["nsenter", f"--net={netns_path(name)}", *cmd],
        check=check,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def make_netns() -> Iterator[Callable[[str], str]]:
    """A factory: make_netns(prefix) creates netns prefix+random with lo up, returns its
    name; every namespace it made is deleted at teardown."""
    made: list[str] = []

    def make(prefix: str) -> str:
        name = unique(prefix)
        subprocess.run(["ip", "netns", "add", name], check=True)
        made.append(name)
        in_netns(name, "ip", "link", "set", "lo", "up")
        return name

    yield make
    for name in made:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts (servers, probes, captures), killed at its end."""
    from tests.support.policy import kill_all

    started: list[subprocess.Popen[str]] = []
    yield started
    kill_all(started)
