"""Security groups, tenants and anti-spoofing on the flannel driver (routed containers:
a bridge per network holding the lease's gateway, routes to the other hosts' leases
through vxlan or host-gw): two simulated hosts, real etcd, real netd processes, real
packets. The kernel enforces the policy through netd's nftables tables, as for weave
(docs/policy.md); these tests prove it holds for routed traffic too.

One lab serves the module; each test builds its own networks (own /16s) and groups.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netd.lab import Lab, ns_exec, run
from tests.support.policy import (
    Net,
    forge_path,
    forged_frames_are_dropped,
    icmp_open_server,
    make_net,
    pair_up,
    pairs_answer,
    payloads,
    pings,
    policy_kept_through,
    reaches_nothing,
    spoof_cast,
    start_capture,
    stateful_groups_hold,
    stateful_rules_and_membership_follow,
)
from tests.support.probes import probe, send_frames
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.root, pytest.mark.etcd]

BACKENDS = ("vxlan", "host-gw", "udp")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    # host and lease TTLs outlast a netd restart on a loaded machine: a host silent longer
    # drops out of its peers' routes (test_openflow.py has the same reason)
    with Lab(hosts=2, store="etcd", host_ttl=20, prefix=f"sf{secrets.token_hex(2)}") as lab:
        yield lab


def flannel_net(lab: Lab, name: str, octet: int, backend: str = "vxlan",
                tenant: str = "default") -> Net:
    """A flannel network 10.<octet>.0.0/16 (each host leases a /24 of it)."""
    opts = ["-o", "lease_ttl=30"]
    if backend == "vxlan":  # one VNI per vxlan network on flannel's port
        opts += ["-o", f"vni={octet}"]
    elif backend == "udp":  # one UDP port per udp network
        opts += ["-o", f"port={9000 + octet}"]
    net = make_net(lab, name, f"10.{octet}", tenant, "--driver", "flannel", "--backend",
                   backend, *opts, subnet=f"10.{octet}.0.0/16")
    return net


def subnet(net: Net) -> str:
    return f"{net.prefix}.0.0/16"


def member_sets(lab: Lab, host: str) -> set[str]:
    out = run(ns_exec(lab.hosts[host].netns, "nft", "-j", "list", "table", "ip", "netd"),
              check=False).stdout
    found: set[str] = set()
    for item in json.loads(out or "{}").get("nftables", []):
        for element in item.get("set", {}).get("elem", []):
            found.add(element if isinstance(element, str) else json.dumps(element))
    return found


# --- stateful groups -----------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_stateful_groups_on_flannel(lab: Lab, backend: str,
                                    procs: list[subprocess.Popen[str]]) -> None:
    """S (h2) and A (h1) in web, whose only rule lets web members reach tcp/8080; B (h1)
    and C (h2) in no group."""
    octet = {"vxlan": 61, "host-gw": 62, "udp": 71}[backend]
    net = flannel_net(lab, f"sflst{octet}", octet, backend)
    cast = stateful_groups_hold(lab, net, f"sfls{octet}-web", procs, first=None, converge=10)
    stateful_rules_and_membership_follow(lab, cast, subnet(net),
                                         lambda address: address in member_sets(lab, "h2"))


# --- anti-spoofing -------------------------------------------------------------------------
def test_spoofed_frames_and_arp_are_dropped(lab: Lab, tmp_path: Path,
                                            procs: list[subprocess.Popen[str]]) -> None:
    net = flannel_net(lab, "sflspoof", 63)
    # the target on the spoofer's bridge; a member's address taken is routed to the other
    # host, and still gets nothing into the group
    cast = spoof_cast(lab, net, "sflp-web", procs, first=None, target_host="h1", converge=10)
    forged_frames_are_dropped(lab, cast, tmp_path / "target.pcap", procs,
                              "arp or udp port 7777 or udp port 68", claimed="m",
                              honest_arp_request=True)


# --- tenants -------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_tenants_never_reach_each_other(lab: Lab, backend: str, tmp_path: Path,
                                        procs: list[subprocess.Popen[str]]) -> None:
    """Flannel routes between the networks a host serves: a container's gateway would
    forward to another tenant's network unless netd's policy forbids it."""
    base = {"vxlan": 64, "host-gw": 67, "udp": 72}[backend]
    red = flannel_net(lab, f"sflred{base}", base, backend, tenant=f"sfl-red{base}")
    pink = flannel_net(lab, f"sflpink{base}", base + 1, backend, tenant=f"sfl-red{base}")
    blue = flannel_net(lab, f"sflblue{base}", base + 2, backend, tenant=f"sfl-blue{base}")
    pair_up(lab, (red, pink, blue), procs, first=None)
    pairs_answer(lab, (red, pink, blue), converge=10)  # every same-network pair passes
    # within a tenant, routing between its networks works (the gateway forwards)
    assert wait_until(lambda: probe(red.containers["one"], pink.ips["two"], 80) == pink.name, 5)
    for src, dst in ((red, blue), (blue, red), (blue, pink)):
        for host_side, dst_short in (("one", "two"), ("one", "one")):  # remote and local
            reaches_nothing(lab, src.containers[host_side], dst.ips[dst_short],
                            (src.name, dst.name, dst_short))
    # a forged neighbour entry in the sender (blue's MAC for blue's address, on red's
    # link) and an ARP for it: nothing crosses
    sender = red.containers["one"]
    watch = start_capture(blue.containers["one"], tmp_path / "blue.pcap", "arp or udp port 7777")
    procs.append(watch)
    forge_path(lab, sender, f"{blue.prefix}.0.0/16", blue, "one")
    assert not pings(lab, sender, blue.ips["one"])
    send_frames(sender, [
        {"kind": "arp", "src_mac": red.macs["one"], "hwsrc": red.macs["one"],
         "psrc": red.ips["one"], "pdst": blue.ips["one"], "op": 1},
        {"kind": "udp", "src_mac": red.macs["one"], "src_ip": red.ips["one"],
         "dst_mac": blue.macs["one"], "dst_ip": blue.ips["one"], "port": 7777,
         "payload": "red-to-blue"},
        {"kind": "udp", "src_mac": red.macs["one"], "src_ip": red.ips["one"],
         "dst_mac": "ff:ff:ff:ff:ff:ff", "dst_ip": "255.255.255.255", "port": 7777,
         "payload": "red-broadcast"},
    ])
    seen = payloads(watch, tmp_path / "blue.pcap")
    assert "red-to-blue" not in seen and "red-broadcast" not in seen, seen
    assert red.macs["one"] not in seen and red.ips["one"] not in seen, seen


# --- restart -------------------------------------------------------------------------------
def test_kill_and_restart_keeps_rules(lab: Lab, procs: list[subprocess.Popen[str]]) -> None:
    net = flannel_net(lab, "sflrestart", 70)
    _, client = icmp_open_server(lab, net, "sflr-web", subnet(net), procs, first=None,
                                 converge=10)
    with policy_kept_through(lab, net, client, "sflr-web", subnet(net), procs, "-W", "3"):
        lab.stop_netd("h2", kill=True)
        time.sleep(1.0)
        lab.start_netd("h2")
