"""`netctl trace` through real daemons on real etcd: verdicts of allowed and denied flows
on a weave network with security groups (each checked against real packets too), a
cross-tenant pair, and a rule deleted by hand from netd's nftables table, which the
trace reports as a mismatch between desired state and the kernel."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from netd.lab import Lab, ns_exec, run

pytestmark = [pytest.mark.root, pytest.mark.etcd]


@dataclass
class Site:
    lab: Lab
    a: str  # h1, group client
    b: str  # h2, group web: ingress tcp 80 and icmp from client
    c: str  # h1, no group
    d: str  # h1, network of tenant "other"
    ips: dict[str, str]


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    # no periodic resync during the module: a rule deleted by hand stays deleted
    with Lab(hosts=2, store="etcd", resync_interval=600) as lab:
        lab.netctl("h1", "network", "create", "tw", "--subnet", "10.92.0.0/24")
        lab.netctl("h1", "network", "create", "tx", "--subnet", "10.93.0.0/24",
                   "--tenant", "other")
        for group in ("client", "web"):
            lab.netctl("h1", "sg", "create", group)
        lab.netctl("h1", "sg", "rule", "add", "web", "--ingress", "--proto", "tcp",
                   "--port", "80", "--group", "client")
        lab.netctl("h1", "sg", "rule", "add", "web", "--ingress", "--proto", "icmp",
                   "--group", "client")
        names = {}
        for key, host, net, groups in (("a", "h1", "tw", ["client"]), ("b", "h2", "tw", ["web"]),
                                       ("c", "h1", "tw", []), ("d", "h1", "tx", [])):
            names[key] = lab.add_container(host, f"t{key}")
            sg = [arg for g in groups for arg in ("--sg", g)]
            lab.netctl(host, "attach", names[key], "--network", net, *sg)
        ips = {e["name"]: e["ip"] for e in lab.netctl_json("h1", "endpoint", "ls")}
        yield Site(lab, names["a"], names["b"], names["c"], names["d"], ips)


def trace(site: Site, on: str, src: str, dst: str, *flow: str) -> dict[str, Any]:
    result: dict[str, Any] = site.lab.netctl_json(on, "trace", src, dst, *flow)
    return result


def test_allowed_flow_names_the_deciding_rule_and_matches_the_kernel(site: Site) -> None:
    t = trace(site, "h2", site.a, site.b, "--proto", "tcp", "--port", "80")
    assert t["verdict"] == "allow"
    ingress = t["decisions"][-1]
    assert ingress["direction"] == "ingress" and ingress["host"] == "h2"
    assert ingress["rule"]["group"] == "web" and ingress["rule"]["port_min"] == 80
    assert ingress["rule"]["remote_group"] == "client"
    hops = [h["hop"] for h in t["path"]]
    assert hops == ["endpoint", "port", "tunnel", "port", "endpoint"]
    tunnel = t["path"][2]
    assert tunnel["driver"] == "weave" and tunnel["peer"] == "h2" and tunnel["peer_alive"]
    kernel = t["kernel"]
    assert kernel["host"] == "h2" and not kernel["mismatch"], kernel
    assert any("deciding rule" in c["what"] and c["ok"] for c in kernel["checks"])
    assert any("member set" in c["what"] and c["ok"] for c in kernel["checks"])
    # by address too, and as text
    text = site.lab.netctl("h2", "trace", site.ips[site.a], site.ips[site.b], "--proto", "tcp",
                           "--port", "80").stdout
    assert "verdict: ALLOW" in text and "tunnel: weave/" in text and "MISMATCH" not in text
    # the packets agree: icmp is allowed too
    assert site.lab.wait_ping(site.a, site.ips[site.b], timeout=10)


def test_denied_flows_name_the_closing_drop(site: Site) -> None:
    t = trace(site, "h2", site.a, site.b, "--proto", "tcp", "--port", "81")
    assert t["verdict"] == "deny"
    assert t["decisions"][-1]["rule"] is None and "closing drop" in t["reason"]
    assert not t["kernel"]["mismatch"], t["kernel"]
    t = trace(site, "h2", site.c, site.b)  # icmp from a port in no group
    assert t["verdict"] == "deny" and "no ingress rule" in t["reason"]
    assert site.lab.ping(site.c, site.ips[site.b], count=2).returncode != 0
    # the other way round nothing restricts: b's egress is open, c is in no group
    t = trace(site, "h1", site.b, site.c)
    assert t["verdict"] == "allow" and not t["kernel"]["mismatch"]
    assert any("run `netctl trace` on h2" in u for u in t["kernel"]["unchecked"])


def test_cross_tenant_pair_is_denied_by_the_tenant_boundary(site: Site) -> None:
    t = trace(site, "h1", site.c, site.d)
    assert t["verdict"] == "deny"
    assert "tenant boundary" in t["reason"] and "other" in t["reason"]
    assert t["path"] == []
    text = site.lab.netctl("h1", "trace", site.c, site.d).stdout
    assert "tenant boundary" in text


def test_bad_references_are_refused_in_one_line(site: Site) -> None:
    result = site.lab.netctl("h1", "trace", "no-such", site.b, check=False)
    assert result.returncode != 0 and "no endpoint named" in result.stderr
    result = site.lab.netctl("h1", "trace", site.a, site.b, "--port", "80", check=False)
    assert result.returncode != 0 and "--proto tcp or udp" in result.stderr


def test_rule_deleted_by_hand_shows_as_a_mismatch(site: Site) -> None:
    t = trace(site, "h2", site.a, site.b)
    assert t["verdict"] == "allow" and not t["kernel"]["mismatch"]
    netns = site.lab.hosts["h2"].netns
    # b's ingress chain (shared by ports with the same rules): its element in the map
    ingress = run(ns_exec(netns, "nft", "list", "map", "ip", "netd", "ingress")).stdout
    found = re.search(re.escape(site.ips[site.b]) + r" : jump (in_\w+)", ingress)
    assert found, ingress
    chain = found.group(1)
    listing = run(ns_exec(netns, "nft", "-a", "list", "chain", "ip", "netd", chain)).stdout
    handle = next(re.search(r"# handle (\d+)", line).group(1)  # type: ignore[union-attr]
                  for line in listing.splitlines() if "l4proto icmp" in line)
    run(ns_exec(netns, "nft", "delete", "rule", "ip", "netd", chain, "handle", handle))
    t = trace(site, "h2", site.a, site.b)
    assert t["verdict"] == "allow"  # desired state still allows it
    kernel = t["kernel"]
    assert kernel["mismatch"] and kernel["kernel_verdict"] == "deny", kernel
    missing = [c for c in kernel["checks"] if not c["ok"]]
    assert any("deciding rule" in c["what"] and "MISSING" in c["actual"] for c in missing)
    assert "MISMATCH" in site.lab.netctl("h2", "trace", site.a, site.b).stdout
    # and the kernel indeed drops it now
    assert site.lab.ping(site.a, site.ips[site.b], count=2).returncode != 0
