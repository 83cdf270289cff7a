"""netd against an etcd that demands TLS with client certificates: a daemon with the
wrong CA, without a client certificate or with a plain URL refuses to start with one
line that names the cause. (The full multi-host suite runs over such an etcd too:
tests/functional/test_multihost.py.)"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from netd.lab import Lab, ns_exec, write_certificates

pytestmark = [pytest.mark.root, pytest.mark.etcd]

NETD = str(Path(sys.executable).with_name("netd"))


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(hosts=1, store="etcd", etcd_tls=True) as lab:
        lab.add_host("h2")  # no netd: the tests start one there
        yield lab


def start_netd(lab: Lab, tmp: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    h2 = lab.hosts["h2"]
    return subprocess.run(
        ns_exec(h2.netns, NETD, "--host", "h2", "--underlay-ip", h2.underlay_ip,
                "--store", url, "--socket", str(tmp / "x.sock"),
                "--state-dir", str(tmp / "state"), *args),
        capture_output=True, text=True, timeout=60,
    )


def refusal(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("netd:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_the_lab_host_runs_over_tls(lab: Lab) -> None:
    assert lab.store_url.startswith("etcds://")
    assert lab.netctl_json("h1", "status")["store"]["reachable"]


def test_wrong_ca_is_refused_at_start(lab: Lab, tmp_path: Path) -> None:
    assert lab.etcd_tls is not None
    other = write_certificates(tmp_path / "other", ["10.250.0.254"])
    line = refusal(start_netd(
        lab, tmp_path, lab.store_url, "--store-ca", str(other.ca),
        "--store-cert", str(lab.etcd_tls.client_cert), "--store-key",
        str(lab.etcd_tls.client_key),
    ))
    assert "certificate verify failed" in line and "--store-ca" in line, line


def test_missing_client_certificate_is_refused_at_start(lab: Lab, tmp_path: Path) -> None:
    assert lab.etcd_tls is not None
    line = refusal(start_netd(lab, tmp_path, lab.store_url, "--store-ca", str(lab.etcd_tls.ca)))
    assert "--store-cert" in line, line


def test_plain_url_to_a_tls_etcd_is_refused_at_start(lab: Lab, tmp_path: Path) -> None:
    assert lab.etcd_tls is not None
    plain = lab.store_url.replace("etcds://", "etcd://")
    line = refusal(start_netd(lab, tmp_path, plain))
    assert "etcds://" in line, line


def test_half_given_certificate_is_refused_before_connecting(lab: Lab, tmp_path: Path) -> None:
    assert lab.etcd_tls is not None
    line = refusal(start_netd(lab, tmp_path, lab.store_url,
                              "--store-cert", str(lab.etcd_tls.client_cert)))
    assert "--store-cert and --store-key must be given together" in line, line
