"""netd start-up refusals: each is one clear line, a non-zero exit, and no harm done to
the daemon already running."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from netd.lab import Lab, ns_exec

pytestmark = pytest.mark.root

NETD = str(Path(sys.executable).with_name("netd"))


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(hosts=2, store="etcd", host_ttl=5) as lab:
        yield lab


def start_netd(lab: Lab, netns: str, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ns_exec(netns, NETD, "--store", lab.store_url, "--socket", str(tmp / "x.sock"),
                "--state-dir", str(tmp / "state"), *args),
        capture_output=True, text=True, timeout=30,
    )


def assert_refused(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("netd:")]
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_second_daemon_in_the_same_netns_is_refused(lab: Lab, tmp_path: Path) -> None:
    h1 = lab.hosts["h1"]
    result = start_netd(lab, h1.netns, tmp_path, "--host", "other",
                        "--underlay-ip", h1.underlay_ip)
    assert_refused(result, "already running in this network namespace")
    assert lab.netctl_json("h1", "status")["store"]["reachable"]


def test_host_name_taken_by_a_live_daemon_is_refused(lab: Lab, tmp_path: Path) -> None:
    lab.add_host("h9")
    h9 = lab.hosts["h9"]
    result = start_netd(lab, h9.netns, tmp_path, "--host", "h2",
                        "--underlay-ip", h9.underlay_ip)
    assert_refused(result, "already registered by another live netd")
    hosts = {h["name"]: h for h in lab.netctl_json("h1", "host", "ls")}
    assert hosts["h2"]["underlay_ip"] == lab.hosts["h2"].underlay_ip


def test_underlay_ip_that_is_not_local_is_refused(lab: Lab, tmp_path: Path) -> None:
    lab.add_host("h8")
    result = start_netd(lab, lab.hosts["h8"].netns, tmp_path, "--host", "h8",
                        "--underlay-ip", "10.250.0.99")
    assert_refused(result, "is not an address of this host")
    assert "h8" not in {h["name"] for h in lab.netctl_json("h1", "host", "ls")}


def test_unusable_socket_path_is_one_line(lab: Lab, tmp_path: Path) -> None:
    lab.add_host("h7")
    h7 = lab.hosts["h7"]
    result = subprocess.run(
        ns_exec(h7.netns, NETD, "--store", lab.store_url, "--host", "h7",
                "--underlay-ip", h7.underlay_ip, "--socket", "/proc/netd-test/x.sock",
                "--state-dir", str(tmp_path / "state")),
        capture_output=True, text=True, timeout=30,
    )
    assert_refused(result, "cannot create API socket")
    assert "h7" not in {h["name"] for h in lab.netctl_json("h1", "host", "ls")}
