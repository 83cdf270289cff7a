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
    attach,
    log_tail,
    make_net,
    payloads,
    pings,
    start_capture,
)
from tests.support.probes import PROBE_LOOP, PYTHON, probe, send_frames, start_server
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
    web = f"sfls{octet}-web"
    lab.netctl("h1", "sg", "create", web)
    lab.netctl("h1", "sg", "rule", "add", web, "--ingress", "--proto", "tcp",
               "--port", "8080", "--group", web)
    s = attach(lab, net, "h2", "s", None, web)
    a = attach(lab, net, "h1", "a", None, web)
    b = attach(lab, net, "h1", "b", None)
    c = attach(lab, net, "h2", "c", None)
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
    # ICMP only once allowed; a remote-CIDR rule
    lab.netctl("h1", "sg", "rule", "add", web, "--ingress", "--proto", "icmp",
               "--cidr", subnet(net))
    assert wait_until(lambda: pings(lab, a, ip["s"]), 3)
    lab.netctl("h1", "sg", "rule", "add", web, "--ingress", "--proto", "tcp",
               "--port", "9090", "--cidr", f"{ip['b']}/32")
    assert wait_until(lambda: probe(b, ip["s"], 9090) == "S", 3)
    assert probe(a, ip["s"], 9090) is None
    # membership: B joins web (on h1) -> S's host h2 has it within 1 s of the change
    lab.netctl("h1", "endpoint", "update", b, "--network", net.name, "--sg", web)
    started = time.monotonic()
    assert wait_until(lambda: ip["b"] in member_sets(lab, "h2"), 3)
    joined = time.monotonic() - started
    assert joined < 1.0, (f"membership reached the other host after {joined:.2f} s\n"
                          + log_tail(lab, "h2"))
    assert wait_until(lambda: probe(b, ip["s"], 8080) == "S", 3)
    lab.netctl("h1", "endpoint", "update", b, "--network", net.name)
    started = time.monotonic()
    assert wait_until(lambda: ip["b"] not in member_sets(lab, "h2"), 3)
    left = time.monotonic() - started
    assert left < 1.0, f"leaving took {left:.2f} s"
    assert probe(b, ip["s"], 8080) is None


# --- anti-spoofing -------------------------------------------------------------------------
def test_spoofed_frames_and_arp_are_dropped(lab: Lab, tmp_path: Path,
                                            procs: list[subprocess.Popen[str]]) -> None:
    net = flannel_net(lab, "sflspoof", 63)
    lab.netctl("h1", "sg", "create", "sflp-web")
    lab.netctl("h1", "sg", "rule", "add", "sflp-web", "--ingress", "--proto", "tcp",
               "--port", "8080", "--group", "sflp-web")
    victim = attach(lab, net, "h2", "v", None, "sflp-web")
    member = attach(lab, net, "h1", "m", None, "sflp-web")
    spoofer = attach(lab, net, "h1", "x", None)
    target = attach(lab, net, "h1", "t", None)  # open, same bridge: captures what reaches it
    ip, mac = net.ips, net.macs
    procs.append(start_server(victim, "V", "tcp/8080"))
    assert wait_until(lambda: probe(member, ip["v"], 8080) == "V", 10)
    pcap = tmp_path / "target.pcap"
    dump = start_capture(target, pcap, "arp or udp port 7777 or udp port 68")
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
        {"kind": "arp", "src_mac": mac["x"], "hwsrc": mac["x"], "psrc": ip["m"],
         "pdst": ip["t"]},  # "the member's address is at my MAC"
        {"kind": "arp", "src_mac": mac["x"], "hwsrc": mac["m"], "psrc": ip["m"],
         "pdst": ip["t"]},
        {"kind": "arp", "src_mac": mac["x"], "hwsrc": mac["x"], "psrc": ip["x"],
         "pdst": ip["t"], "op": 1},  # an honest request: passes
    ])
    shown = payloads(dump, pcap)
    assert "legit" in shown and "to-port-68" in shown, shown
    for forged in ("spoof-ip", "spoof-mac", "spoof-both", "dhcp-offer", ip["m"]):
        assert forged not in shown, f"{forged} reached the target:\n{shown}"
    assert ip["x"] in shown  # the honest ARP request
    # taking a member's address gets nothing into the group (routed to the other host)
    lab.in_container(spoofer, "ip", "addr", "add", f"{ip['m']}/32", "dev", "eth0", check=True)
    assert probe(spoofer, ip["v"], 8080, source=ip["m"]) is None


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
    for net in (red, pink, blue):
        attach(lab, net, "h1", "one", None)
        attach(lab, net, "h2", "two", None)
        procs.append(start_server(net.containers["two"], net.name, "tcp/80", "udp/53"))
    for net in (red, pink, blue):  # every same-network pair passes
        one = net.containers["one"]
        assert wait_until(lambda n=net, o=one: probe(o, n.ips["two"], 80) == n.name, 10)  # type: ignore[misc]
        assert probe(one, net.ips["two"], 53, "udp") == net.name
        assert pings(lab, one, net.ips["two"])
    # within a tenant, routing between its networks works (the gateway forwards)
    assert wait_until(lambda: probe(red.containers["one"], pink.ips["two"], 80) == pink.name, 5)
    for src, dst in ((red, blue), (blue, red), (blue, pink)):
        for host_side, dst_short in (("one", "two"), ("one", "one")):  # remote and local
            sender, target = src.containers[host_side], dst.ips[dst_short]
            assert not pings(lab, sender, target), (src.name, dst.name, dst_short)
            assert probe(sender, target, 80) is None
            assert probe(sender, target, 53, "udp") is None
    # a forged neighbour entry in the sender (blue's MAC for blue's address, on red's
    # link) and an ARP for it: nothing crosses
    sender = red.containers["one"]
    watch = start_capture(blue.containers["one"], tmp_path / "blue.pcap", "arp or udp port 7777")
    procs.append(watch)
    lab.in_container(sender, "ip", "route", "add", f"{blue.prefix}.0.0/16", "dev", "eth0",
                     check=True)
    lab.in_container(sender, "ip", "neigh", "replace", blue.ips["one"], "lladdr",
                     blue.macs["one"], "dev", "eth0", check=True)
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
    lab.netctl("h1", "sg", "create", "sflr-web")
    lab.netctl("h1", "sg", "rule", "add", "sflr-web", "--ingress", "--proto", "icmp",
               "--cidr", subnet(net))
    server = attach(lab, net, "h2", "s", None, "sflr-web")
    client = attach(lab, net, "h1", "c", None)
    procs.append(start_server(server, "S", "tcp/8081"))
    assert wait_until(lambda: pings(lab, client, net.ips["s"]), 10)
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
    lab.netctl("h2", "sg", "rule", "add", "sflr-web", "--ingress", "--proto", "udp",
               "--port", "53", "--cidr", subnet(net))
    out, _ = flow.communicate(timeout=30)
    denied.kill()
    probes = denied.communicate()[0].split()
    assert " 0% packet loss" in out, out
    assert probes and "ok" not in probes, probes.count("ok")
