"""`netctl trace` on an openflow network: real netd processes, a private Open vSwitch per
simulated host (tests/support/ovs.py), real etcd. The desired verdict is checked with
`ovs-appctl ofproto/trace` from the source's port; whatever the switch does, the trace
must say it, and the packets must agree with what it says."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.ovs import OvsLab, ovs_available

pytestmark = [pytest.mark.root, pytest.mark.etcd,
              pytest.mark.skipif(not ovs_available(), reason="Open vSwitch is not installed")]


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[OvsLab, dict[str, str], dict[str, str]]]:
    with OvsLab(hosts=2, store="etcd", host_ttl=20, prefix=f"ot{secrets.token_hex(2)}") as lab:
        lab.netctl("h1", "network", "create", "ofn", "--subnet", "10.96.0.0/24", "--driver",
                   "openflow")
        lab.netctl("h1", "sg", "create", "closed")  # no rules: members accept no ingress
        names, ips = {}, {}
        for key, host, groups in (("o1", "h1", []), ("o2", "h1", []), ("o3", "h2", []),
                                  ("o4", "h1", ["closed"])):
            names[key] = lab.add_container(host, key)
            sg = [arg for g in groups for arg in ("--sg", g)]
            out = lab.netctl(host, "attach", names[key], "--network", "ofn", *sg).stdout
            ips[key] = out.split()[4]
        yield lab, names, ips


def ofproto_checks(t: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in t["kernel"]["checks"] if c["what"].startswith("ofproto/trace")]


def test_allowed_flows_agree_with_ofproto_trace(
        lab: tuple[OvsLab, dict[str, str], dict[str, str]]) -> None:
    site, names, ips = lab
    t = site.netctl_json("h1", "trace", names["o1"], names["o2"])
    assert t["verdict"] == "allow"
    (check,) = ofproto_checks(t)
    assert check["ok"] and check["actual"].startswith("forwarded"), check
    assert not t["kernel"]["mismatch"]
    assert site.wait_ping(names["o1"], ips["o2"], timeout=10)
    # across hosts: the egress is traced on h1 (out the tunnel), h2's side is not
    t = site.netctl_json("h1", "trace", names["o1"], names["o3"], "--proto", "tcp",
                         "--port", "22")
    assert t["verdict"] == "allow" and t["path"][2]["driver"] == "openflow"
    (check,) = ofproto_checks(t)
    assert check["ok"] and "(egress)" in check["what"], check
    assert any("h2" in u for u in t["kernel"]["unchecked"])


def test_a_denied_flow_is_reported_as_the_switch_really_treats_it(
        lab: tuple[OvsLab, dict[str, str], dict[str, str]]) -> None:
    site, names, ips = lab
    t = site.netctl_json("h1", "trace", names["o1"], names["o4"])
    assert t["verdict"] == "deny" and "no ingress rule" in t["reason"]
    (check,) = ofproto_checks(t)
    delivered = site.ping(names["o1"], ips["o4"], count=3, interval=0.3).returncode == 0
    # the switch either enforces the group (no mismatch, no reply) or does not yet
    # (a mismatch saying the switch forwards it, and the ping is answered)
    assert t["kernel"]["mismatch"] == delivered, (t["kernel"], delivered)
    assert check["actual"].startswith("forwarded" if delivered else "dropped")
    if delivered:
        assert t["kernel"]["kernel_verdict"] == "allow"
        assert "MISMATCH" in site.netctl("h1", "trace", names["o1"], names["o4"]).stdout
