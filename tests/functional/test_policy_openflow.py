"""Security groups, tenants and anti-spoofing on the openflow driver: two simulated
hosts with a private Open vSwitch each (userspace datapath), real etcd, real netd
processes rendering the policy into flows with OVS conntrack, real packets (TCP/UDP/ICMP
probes, frames crafted with scapy). Every name starts with the lab's random prefix.

One lab serves the module; each test builds its own networks (own subnets) and groups.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugins.openflow.names import INTEGRATION_BRIDGE, host_veth_name
from plugins.openflow.pipeline import EGRESS_RULES, INGRESS_RULES
from tests.support.ovs import OvsLab, ovs_available
from tests.support.policy import (
    Net,
    egress_rules_limit_what_a_member_sends,
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

pytestmark = [pytest.mark.root, pytest.mark.etcd,
              pytest.mark.skipif(not ovs_available(), reason="Open vSwitch is not installed")]

OPENFLOW = ("--driver", "openflow")


@pytest.fixture(scope="module")
def lab() -> Iterator[OvsLab]:
    # the TTL outlasts a netd restart on a loaded machine (test_openflow.py says why)
    with OvsLab(hosts=2, store="etcd", host_ttl=20,
                prefix=f"so{secrets.token_hex(2)}") as lab:
        yield lab


def flows(lab: OvsLab, host: str, table: int | None = None) -> list[str]:
    args = ["--no-stats", "dump-flows", INTEGRATION_BRIDGE]
    if table is not None:
        args.append(f"table={table}")
    out = lab.ovs[host].ofctl(*args).stdout
    return sorted(line.strip() for line in out.splitlines() if "cookie=" in line)


def rule_sources(lab: OvsLab, host: str, port: int) -> set[str]:
    """Every remote address an ingress rule flow for TCP `port` on `host` names."""
    return {m for line in flows(lab, host, INGRESS_RULES)
            if re.search(rf"\b(tp|tcp)_dst={port}\b", line)
            for m in re.findall(r"nw_src=([\d.]+)(?:[,\s]|$)", line)}


def ofport(lab: OvsLab, host: str, net: Net, short: str) -> int:
    name = host_veth_name(net.name, net.containers[short])
    return int(lab.ovs[host].vsctl("get", "Interface", name, "ofport").stdout.strip())


# --- stateful groups -----------------------------------------------------------------------
def test_stateful_groups_on_openflow(lab: OvsLab, tmp_path: Path,
                                     procs: list[subprocess.Popen[str]]) -> None:
    """S (h2) and A (h1) in web, whose only rule lets web members reach tcp/8080; B (h1)
    and C (h2) in no group."""
    net = make_net(lab, "sofstate", "10.71.0", "default", *OPENFLOW)
    cast = stateful_groups_hold(lab, net, "sofs-web", procs, first=10, converge=10)
    s, b, c, ip = cast.s, cast.b, cast.c, net.ips
    # an IPv4 broadcast reaches the open C, never the member S (floods skip its port)
    caps = {n: start_capture(n, tmp_path / f"{n}.pcap", "udp port 7777") for n in (s, c)}
    procs.extend(caps.values())
    send_frames(b, [{"kind": "udp", "src_mac": net.macs["b"], "src_ip": ip["b"],
                     "dst_mac": "ff:ff:ff:ff:ff:ff", "dst_ip": f"{net.prefix}.255",
                     "port": 7777, "payload": "b-broadcast"}])
    seen = {n: payloads(w, tmp_path / f"{n}.pcap") for n, w in caps.items()}
    assert "b-broadcast" in seen[c] and "b-broadcast" not in seen[s], seen
    # the userspace datapath runs the connection through conntrack in S's zone
    zone = ofport(lab, "h2", net, "s")
    traced = lab.ovs["h2"].appctl(
        "ofproto/trace", INTEGRATION_BRIDGE,
        f"in_port={zone},dl_src={net.macs['s']},dl_dst={net.macs['c']},tcp,"
        f"nw_src={ip['s']},nw_dst={ip['c']},tcp_dst=80")
    trace = traced.stdout + traced.stderr
    assert f"ct(table={EGRESS_RULES},zone={zone})" in trace, trace
    assert "recirc" in trace.lower(), trace
    assert ip["a"] in rule_sources(lab, "h2", 8080)
    assert ip["b"] not in rule_sources(lab, "h2", 8080)
    stateful_rules_and_membership_follow(lab, cast, f"{net.prefix}.0/24",
                                         lambda address: address in rule_sources(lab, "h2", 8080))


def test_egress_rules_limit_what_a_member_sends(lab: OvsLab,
                                                procs: list[subprocess.Popen[str]]) -> None:
    net = make_net(lab, "sofegress", "10.72.0", "default", *OPENFLOW)
    egress_rules_limit_what_a_member_sends(lab, net, "sofe-locked", procs, converge=10)


# --- anti-spoofing -------------------------------------------------------------------------
def test_spoofed_frames_and_arp_are_dropped(lab: OvsLab, tmp_path: Path,
                                            procs: list[subprocess.Popen[str]]) -> None:
    net = make_net(lab, "sofspoof", "10.75.0", "default", *OPENFLOW)
    cast = spoof_cast(lab, net, "sofp-web", procs, first=10, target_host="h2", converge=10)
    # the honest ARP is a (gratuitous) reply: requests for known endpoints are answered by
    # the bridge's ARP responder and never reach the target
    forged_frames_are_dropped(lab, cast, tmp_path / "target.pcap", procs,
                              "arp or udp port 7777 or udp port 68 or ip6", claimed="v",
                              honest_arp_request=False)
    ip, mac, spoofer = net.ips, net.macs, cast.spoofer
    neigh = lab.in_container(cast.target, "ip", "neigh", "show", ip["v"]).stdout
    assert mac["x"] not in neigh
    # nor does taking its MAC: the port admits only its own source MAC
    assert pings(lab, spoofer, ip["t"])
    lab.in_container(spoofer, "ip", "link", "set", "eth0", "address", mac["m"], check=True)
    assert not pings(lab, spoofer, ip["t"])
    assert probe(spoofer, ip["v"], 8080) is None


# --- tenants -------------------------------------------------------------------------------
def test_tenants_stay_apart_with_overlapping_subnets(
        lab: OvsLab, tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    red = make_net(lab, "sofred", "10.73.0", "sof-red", *OPENFLOW)
    blue = make_net(lab, "sofblue", "10.73.0", "sof-blue", *OPENFLOW)  # the same subnet
    green = make_net(lab, "sofgreen", "10.74.0", "sof-blue", *OPENFLOW)
    pair_up(lab, (red, blue, green), procs, first=11)
    # same addresses, each answered by its own tenant's
    pairs_answer(lab, (red, blue, green), converge=10)
    sender = red.containers["one"]
    watchers = {n: start_capture(n, tmp_path / f"{n}.pcap", "arp or udp port 7777")
                for n in (red.containers["two"], blue.containers["one"],
                          blue.containers["two"], green.containers["two"])}
    procs.extend(watchers.values())
    # red -> blue's other network, with a forged route and neighbour entry in the sender
    forge_path(lab, sender, f"{green.prefix}.0/24", green, "two")
    reaches_nothing(lab, sender, green.ips["two"])
    # ARP from red for green's address, an L2 broadcast, and a frame to blue's MAC
    # (blue has the very same subnet and addresses): none leaves red
    send_frames(sender, [
        {"kind": "arp", "src_mac": red.macs["one"], "hwsrc": red.macs["one"],
         "psrc": red.ips["one"], "pdst": green.ips["two"], "op": 1},
        {"kind": "udp", "src_mac": red.macs["one"], "src_ip": red.ips["one"],
         "dst_mac": "ff:ff:ff:ff:ff:ff", "dst_ip": f"{red.prefix}.255", "port": 7777,
         "payload": "red-broadcast"},
        {"kind": "udp", "src_mac": red.macs["one"], "src_ip": red.ips["one"],
         "dst_mac": blue.macs["two"], "dst_ip": blue.ips["two"], "port": 7777,
         "payload": "red-to-blue-mac"},
    ])
    seen = {n: payloads(w, tmp_path / f"{n}.pcap") for n, w in watchers.items()}
    assert "red-broadcast" in seen[red.containers["two"]], seen
    for other in (blue.containers["one"], blue.containers["two"], green.containers["two"]):
        assert "red-broadcast" not in seen[other] and "red-to-blue-mac" not in seen[other]
        assert red.macs["one"] not in seen[other], (other, seen[other])


# --- restart -------------------------------------------------------------------------------
def test_kill_and_restart_keeps_policy_flows(
        lab: OvsLab, procs: list[subprocess.Popen[str]]) -> None:
    net = make_net(lab, "sofrestart", "10.76.0", "default", *OPENFLOW)
    cidr = f"{net.prefix}.0/24"
    _, client = icmp_open_server(lab, net, "sofr-web", cidr, procs, first=10, converge=10)
    before = flows(lab, "h2")
    with policy_kept_through(lab, net, client, "sofr-web", cidr, procs, "-W", "3"):
        lab.stop_netd("h2", kill=True)
        time.sleep(1.0)
        lab.start_netd("h2")
        assert wait_until(lambda: lab.netctl_json("h2", "status")["workers"]["openflow"]
                          ["syncs"] >= 1, 15)
        assert flows(lab, "h2") == before  # adopted as they were: nothing flushed or rewritten
