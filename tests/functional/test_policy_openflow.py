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

from netd.lab import ns_exec
from plugins.openflow.names import INTEGRATION_BRIDGE, host_veth_name
from plugins.openflow.pipeline import EGRESS_RULES, INGRESS_RULES
from tests.support.ovs import OvsLab, ovs_available
from tests.support.policy import (
    Net,
    attach,
    log_tail,
    make_net,
    payloads,
    pings,
    start_capture,
)
from tests.support.probes import PROBE_LOOP, PYTHON, probe, send_frames, start_server
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
    lab.netctl("h1", "sg", "create", "sofs-web")
    lab.netctl("h1", "sg", "rule", "add", "sofs-web", "--ingress", "--proto", "tcp",
               "--port", "8080", "--group", "sofs-web")
    s = attach(lab, net, "h2", "s", 10, "sofs-web")
    a = attach(lab, net, "h1", "a", 11, "sofs-web")
    b = attach(lab, net, "h1", "b", 12)
    c = attach(lab, net, "h2", "c", 13)
    ip = net.ips
    procs.append(start_server(s, "S", "tcp/8080", "tcp/8081", "udp/8080", "tcp/9090"))
    procs.append(start_server(b, "B", "tcp/8080", "tcp/8081"))
    # the allowed port from the peer group passes, replies included, across hosts
    assert wait_until(lambda: probe(a, ip["s"], 8080) == "S", 10), log_tail(lab, "h2")
    # other ports, other protocols, ICMP, non-members (remote and on the same host): no
    assert probe(a, ip["s"], 8081) is None
    assert probe(a, ip["s"], 8080, "udp") is None
    assert not pings(lab, a, ip["s"])
    assert probe(b, ip["s"], 8080) is None
    assert probe(c, ip["s"], 8080) is None
    # S may open connections to an open endpoint, and its replies come back (stateful)
    assert pings(lab, s, ip["b"])
    assert probe(s, ip["b"], 8081) == "B"
    assert not pings(lab, s, ip["a"])  # A is a member: its ingress is closed to ICMP
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
    # ICMP only once allowed; a remote-CIDR rule
    lab.netctl("h1", "sg", "rule", "add", "sofs-web", "--ingress", "--proto", "icmp",
               "--cidr", f"{net.prefix}.0/24")
    assert wait_until(lambda: pings(lab, a, ip["s"]), 3)
    lab.netctl("h1", "sg", "rule", "add", "sofs-web", "--ingress", "--proto", "tcp",
               "--port", "9090", "--cidr", f"{ip['b']}/32")
    assert wait_until(lambda: probe(b, ip["s"], 9090) == "S", 3)
    assert probe(a, ip["s"], 9090) is None
    # membership: B joins web (on h1) -> S's host h2 has its flows within 1 s of the
    # change (measured from the command's return, as in test_policy.py)
    assert ip["a"] in rule_sources(lab, "h2", 8080)
    assert ip["b"] not in rule_sources(lab, "h2", 8080)
    lab.netctl("h1", "endpoint", "update", b, "--network", net.name, "--sg", "sofs-web")
    started = time.monotonic()
    assert wait_until(lambda: ip["b"] in rule_sources(lab, "h2", 8080), 3)
    joined = time.monotonic() - started
    assert joined < 1.0, (f"membership reached the other host after {joined:.2f} s\n"
                          + log_tail(lab, "h2"))
    assert wait_until(lambda: probe(b, ip["s"], 8080) == "S", 3)
    lab.netctl("h1", "endpoint", "update", b, "--network", net.name)
    started = time.monotonic()
    assert wait_until(lambda: ip["b"] not in rule_sources(lab, "h2", 8080), 3)
    left = time.monotonic() - started
    assert left < 1.0, f"leaving took {left:.2f} s"
    assert probe(b, ip["s"], 8080) is None


def test_egress_rules_limit_what_a_member_sends(lab: OvsLab,
                                                procs: list[subprocess.Popen[str]]) -> None:
    net = make_net(lab, "sofegress", "10.72.0", "default", *OPENFLOW)
    lab.netctl("h2", "sg", "create", "sofe-locked")
    lab.netctl("h2", "sg", "rule", "add", "sofe-locked", "--egress", "--proto", "tcp",
               "--port", "8080", "--cidr", f"{net.prefix}.0/24")
    locked = attach(lab, net, "h2", "l", 10, "sofe-locked")
    open_ = attach(lab, net, "h1", "o", 11)
    procs.append(start_server(open_, "O", "tcp/8080", "tcp/8081", "udp/8080"))
    assert wait_until(lambda: probe(locked, net.ips["o"], 8080) == "O", 10)
    assert probe(locked, net.ips["o"], 8081) is None
    assert probe(locked, net.ips["o"], 8080, "udp") is None
    assert not pings(lab, locked, net.ips["o"])
    assert not pings(lab, open_, net.ips["l"])  # a member without ingress rules: closed


# --- anti-spoofing -------------------------------------------------------------------------
def test_spoofed_frames_and_arp_are_dropped(lab: OvsLab, tmp_path: Path,
                                            procs: list[subprocess.Popen[str]]) -> None:
    net = make_net(lab, "sofspoof", "10.75.0", "default", *OPENFLOW)
    lab.netctl("h1", "sg", "create", "sofp-web")
    lab.netctl("h1", "sg", "rule", "add", "sofp-web", "--ingress", "--proto", "tcp",
               "--port", "8080", "--group", "sofp-web")
    victim = attach(lab, net, "h2", "v", 10, "sofp-web")  # a group member
    member = attach(lab, net, "h1", "m", 11, "sofp-web")
    spoofer = attach(lab, net, "h1", "x", 12)
    target = attach(lab, net, "h2", "t", 13)  # open, captures what reaches it
    ip, mac = net.ips, net.macs
    procs.append(start_server(victim, "V", "tcp/8080"))
    assert wait_until(lambda: probe(member, ip["v"], 8080) == "V", 10)
    pcap = tmp_path / "target.pcap"
    dump = start_capture(target, pcap, "arp or udp port 7777 or udp port 68 or ip6")
    procs.append(dump)
    udp = {"kind": "udp", "dst_mac": mac["t"], "dst_ip": ip["t"], "port": 7777}
    send_frames(spoofer, [
        {**udp, "src_mac": mac["x"], "src_ip": ip["x"], "payload": "legit"},
        {**udp, "src_mac": mac["x"], "src_ip": ip["m"], "payload": "spoof-ip"},
        {**udp, "src_mac": mac["m"], "src_ip": ip["x"], "payload": "spoof-mac"},
        {**udp, "src_mac": mac["m"], "src_ip": ip["m"], "payload": "spoof-both"},
        {"kind": "udp", "src_mac": mac["x"], "src_ip": ip["x"], "dst_mac": mac["t"],
         "dst_ip": ip["t"], "sport": 67, "port": 68, "payload": "dhcp-offer"},
        {"kind": "udp", "src_mac": mac["x"], "src_ip": ip["x"], "dst_mac": mac["t"],
         "dst_ip": ip["t"], "sport": 40000, "port": 68, "payload": "to-port-68"},
        {"kind": "arp", "src_mac": mac["x"], "hwsrc": mac["x"], "psrc": ip["v"],
         "pdst": ip["t"]},  # "the victim's address is at my MAC"
        {"kind": "arp", "src_mac": mac["x"], "hwsrc": mac["m"], "psrc": ip["m"],
         "pdst": ip["t"]},
        # an honest (gratuitous) reply passes: requests for known endpoints are answered
        # by the bridge's ARP responder and never reach the target
        {"kind": "arp", "src_mac": mac["x"], "hwsrc": mac["x"], "psrc": ip["x"],
         "pdst": ip["t"]},
    ])
    shown = payloads(dump, pcap)
    assert "legit" in shown and "to-port-68" in shown, shown
    for forged in ("spoof-ip", "spoof-mac", "spoof-both", "dhcp-offer", ip["v"], ip["m"]):
        assert forged not in shown, f"{forged} reached the target:\n{shown}"
    assert ip["x"] in shown  # the honest ARP
    # taking a member's address on the interface gets nothing into the group
    lab.in_container(spoofer, "ip", "addr", "add", f"{ip['m']}/32", "dev", "eth0", check=True)
    assert probe(spoofer, ip["v"], 8080, source=ip["m"]) is None
    neigh = lab.in_container(target, "ip", "neigh", "show", ip["v"]).stdout
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
    for net in (red, blue, green):
        attach(lab, net, "h1", "one", 11)
        attach(lab, net, "h2", "two", 12)
        procs.append(start_server(net.containers["two"], net.name, "tcp/80", "udp/53"))
    for net in (red, blue, green):  # same addresses, each answered by its own tenant's
        one = net.containers["one"]
        assert wait_until(lambda n=net, o=one: probe(o, n.ips["two"], 80) == n.name, 10)  # type: ignore[misc]
        assert probe(one, net.ips["two"], 53, "udp") == net.name
        assert pings(lab, one, net.ips["two"])
    sender = red.containers["one"]
    watchers = {n: start_capture(n, tmp_path / f"{n}.pcap", "arp or udp port 7777")
                for n in (red.containers["two"], blue.containers["one"],
                          blue.containers["two"], green.containers["two"])}
    procs.extend(watchers.values())
    # red -> blue's other network, with a forged route and neighbour entry in the sender
    lab.in_container(sender, "ip", "route", "add", f"{green.prefix}.0/24", "dev", "eth0",
                     check=True)
    lab.in_container(sender, "ip", "neigh", "replace", green.ips["two"], "lladdr",
                     green.macs["two"], "dev", "eth0", check=True)
    assert not pings(lab, sender, green.ips["two"])
    assert probe(sender, green.ips["two"], 80) is None
    assert probe(sender, green.ips["two"], 53, "udp") is None
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
    lab.netctl("h1", "sg", "create", "sofr-web")
    lab.netctl("h1", "sg", "rule", "add", "sofr-web", "--ingress", "--proto", "icmp",
               "--cidr", f"{net.prefix}.0/24")
    server = attach(lab, net, "h2", "s", 10, "sofr-web")
    client = attach(lab, net, "h1", "c", 11)
    procs.append(start_server(server, "S", "tcp/8081"))
    assert wait_until(lambda: pings(lab, client, net.ips["s"]), 10)
    before = flows(lab, "h2")
    flow = subprocess.Popen(ns_exec(client, "ping", "-n", "-i", "0.05", "-c", "120", "-W", "3",
                                    net.ips["s"]), stdout=subprocess.PIPE, text=True)
    procs.append(flow)
    denied = subprocess.Popen(ns_exec(client, PYTHON, "-c", PROBE_LOOP, net.ips["s"], "8081",
                                      "0.05"), stdout=subprocess.PIPE, text=True)
    procs.append(denied)
    time.sleep(1.0)
    lab.stop_netd("h2", kill=True)
    time.sleep(1.0)
    lab.start_netd("h2")
    assert wait_until(lambda: lab.netctl_json("h2", "status")["workers"]["openflow"]
                      ["syncs"] >= 1, 15)
    assert flows(lab, "h2") == before  # adopted as they were: nothing flushed or rewritten
    # a rule change after the restart makes the new daemon apply
    lab.netctl("h2", "sg", "rule", "add", "sofr-web", "--ingress", "--proto", "udp",
               "--port", "53", "--cidr", f"{net.prefix}.0/24")
    out, _ = flow.communicate(timeout=30)
    denied.kill()
    probes = denied.communicate()[0].split()
    assert " 0% packet loss" in out, out
    assert probes and "ok" not in probes, probes.count("ok")
