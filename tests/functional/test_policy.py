"""Security groups and anti-spoofing on the weave driver: two simulated hosts, real
etcd, real netd processes, real packets (TCP/UDP/ICMP probes, frames crafted with
scapy). Every name starts with the lab's random `sg…` prefix.

One lab serves the module; each test builds its own network (its own subnet) and
groups, so tests do not depend on each other's state.
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
from tests.support.netctl import netctl_fails
from tests.support.policy import (
    attach,
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

pytestmark = [pytest.mark.root, pytest.mark.etcd]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(hosts=2, store="etcd", host_ttl=5, prefix=f"sg{secrets.token_hex(2)}") as lab:
        yield lab


def member_sets(lab: Lab, host: str) -> set[str]:
    """Every address in a member set of netd's inet table on `host`."""
    out = run(ns_exec(lab.hosts[host].netns, "nft", "-j", "list", "table", "ip", "netd"),
              check=False).stdout
    found: set[str] = set()
    for item in json.loads(out or "{}").get("nftables", []):
        for element in item.get("set", {}).get("elem", []):
            found.add(element if isinstance(element, str) else json.dumps(element))
    return found


def nft_tables(lab: Lab, host: str) -> list[tuple[str, str]]:
    out = run(ns_exec(lab.hosts[host].netns, "nft", "-j", "list", "tables")).stdout
    return [(t["table"]["family"], t["table"]["name"])
            for t in json.loads(out)["nftables"] if "table" in t]


# --- (1) the commands ------------------------------------------------------------------
def test_sg_commands_crud_errors_and_idempotence(lab: Lab) -> None:
    net = make_net(lab, "sgcrud", "10.90.0")
    lab.netctl("h1", "sg", "create", "sgc-web")
    assert "already exists" in netctl_fails(lab, "h1", "sg", "create", "sgc-web")
    lab.netctl("h2", "sg", "create", "sgc-web", "--tenant", "sgc-other")  # another tenant
    listed = lab.netctl_json("h2", "sg", "ls")
    assert {(g["tenant"], g["name"]) for g in listed} >= {
        ("default", "sgc-web"), ("sgc-other", "sgc-web")}
    added = lab.netctl_json("h1", "sg", "rule", "add", "sgc-web", "--ingress", "--proto", "tcp",
                            "--port", "8080", "--group", "sgc-web")
    again = lab.netctl_json("h2", "sg", "rule", "add", "sgc-web", "--ingress", "--proto", "tcp",
                            "--port", "8080", "--group", "sgc-web")
    assert added["added"] and not again["added"]
    assert added["rule"]["id"] == again["rule"]["id"]
    assert "--port needs --proto tcp or udp" in netctl_fails(
        lab, "h1", "sg", "rule", "add", "sgc-web", "--ingress", "--proto", "icmp", "--port", "80",
        "--cidr", "10.0.0.0/8")
    assert "not found" in netctl_fails(
        lab, "h1", "sg", "rule", "add", "sgc-nope", "--ingress", "--cidr", "10.0.0.0/8")
    assert "host bits set" in netctl_fails(
        lab, "h1", "sg", "rule", "add", "sgc-web", "--egress", "--cidr", "10.0.0.1/8")
    # attach naming a missing group: refused, nothing attached
    netns = lab.add_container("h1", "sgcrud-x")
    assert "'sgc-nope' not found" in netctl_fails(
        lab, "h1", "attach", netns, "--network", net.name, "--sg", "sgc-nope")
    assert lab.netctl_json("h1", "endpoint", "ls", "--network", net.name) == []
    # a group of another tenant is not visible from this tenant's network
    lab.netctl("h1", "sg", "create", "sgc-only", "--tenant", "sgc-other")
    assert "'sgc-only' not found in tenant 'default'" in netctl_fails(
        lab, "h1", "attach", netns, "--network", net.name, "--sg", "sgc-only")
    attach(lab, net, "h1", "a", 10, "sgc-web")
    detail = lab.netctl_json("h2", "sg", "inspect", "sgc-web")
    assert [m["name"] for m in detail["members"]] == [net.containers["a"]]
    assert "in use by 1 endpoint" in netctl_fails(lab, "h2", "sg", "rm", "sgc-web")
    lab.netctl("h1", "endpoint", "update", net.containers["a"], "--network", net.name)
    lab.netctl("h1", "sg", "rule", "rm", "sgc-web", added["rule"]["id"])
    lab.netctl("h2", "sg", "rm", "sgc-web")
    assert "not found" in netctl_fails(lab, "h1", "sg", "inspect", "sgc-web")
    lab.netctl("h1", "sg", "rm", "sgc-web", "--tenant", "sgc-other")
    lab.netctl("h1", "sg", "rm", "sgc-only", "--tenant", "sgc-other")


# --- (2) stateful ingress/egress ------------------------------------------------------------
def test_stateful_groups_on_weave(lab: Lab, procs: list[subprocess.Popen[str]]) -> None:
    """S (h2) and A (h1) in web, whose only rule lets web members reach tcp/8080; B (h1)
    and C (h2) in no group."""
    net = make_net(lab, "sgstate", "10.91.0")
    cast = stateful_groups_hold(lab, net, "sgs-web", procs, first=10, converge=5)
    stateful_rules_and_membership_follow(lab, cast, f"{net.prefix}.0/24",
                                         lambda address: address in member_sets(lab, "h2"))


def test_egress_rules_limit_what_a_member_sends(lab: Lab,
                                                procs: list[subprocess.Popen[str]]) -> None:
    net = make_net(lab, "sgegress", "10.94.0")
    egress_rules_limit_what_a_member_sends(lab, net, "sge-locked", procs, converge=5)


# --- (3) anti-spoofing ---------------------------------------------------------------------
def test_spoofed_frames_and_arp_are_dropped(lab: Lab, tmp_path: Path,
                                            procs: list[subprocess.Popen[str]]) -> None:
    net = make_net(lab, "sgspoof", "10.95.0")
    cast = spoof_cast(lab, net, "sgp-web", procs, first=10, target_host="h2", converge=5)
    forged_frames_are_dropped(lab, cast, tmp_path / "target.pcap", procs,
                              "arp or udp port 7777 or udp port 68", claimed="v",
                              honest_arp_request=True)
    neigh = lab.in_container(cast.target, "ip", "neigh", "show", net.ips["v"]).stdout
    assert net.macs["x"] not in neigh


# --- (4) tenants ---------------------------------------------------------------------------
def test_tenants_stay_apart_with_overlapping_subnets(
        lab: Lab, tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    red = make_net(lab, "sgred", "10.96.0", tenant="sg-red")
    blue = make_net(lab, "sgblue", "10.96.0", tenant="sg-blue")  # the same subnet
    green = make_net(lab, "sggreen", "10.97.0", tenant="sg-blue")
    pair_up(lab, (red, blue, green), procs, first=11)
    # same addresses, each answered by its own tenant's container
    pairs_answer(lab, (red, blue), converge=5)
    # red -> blue's other network, with a forged route and neighbour entry in the sender
    sender = red.containers["one"]
    forge_path(lab, sender, f"{green.prefix}.0/24", green, "two")
    reaches_nothing(lab, sender, green.ips["two"])
    # an L2 broadcast from red reaches red's other container and no blue one (blue has
    # the very same subnet and addresses)
    watchers = {n: start_capture(n, tmp_path / f"{n}.pcap", "udp port 7777")
                for n in (red.containers["two"], blue.containers["one"],
                          blue.containers["two"])}
    procs.extend(watchers.values())  # type: ignore[arg-type]
    send_frames(sender, [{"kind": "udp", "src_mac": red.macs["one"], "src_ip": red.ips["one"],
                          "dst_mac": "ff:ff:ff:ff:ff:ff", "dst_ip": f"{red.prefix}.255",
                          "port": 7777, "payload": "red-broadcast"}])
    seen = {n: payloads(w, tmp_path / f"{n}.pcap") for n, w in watchers.items()}
    assert "red-broadcast" in seen[red.containers["two"]], seen
    assert "red-broadcast" not in seen[blue.containers["one"]] + seen[blue.containers["two"]]


# --- (5) restart ---------------------------------------------------------------------------
def test_kill_and_restart_keeps_rules_and_foreign_tables(
        lab: Lab, procs: list[subprocess.Popen[str]]) -> None:
    net = make_net(lab, "sgrestart", "10.98.0")
    cidr = f"{net.prefix}.0/24"
    _, client = icmp_open_server(lab, net, "sgr-web", cidr, procs, first=10, converge=5)
    h2 = lab.hosts["h2"].netns
    foreign = "table inet sgforeign {\n chain c {\n  type filter hook forward priority 10; " \
              "policy accept;\n  ip saddr 192.0.2.1 drop\n }\n}\n"
    subprocess.run(ns_exec(h2, "nft", "-f", "-"), input=foreign, text=True, check=True)
    before = run(ns_exec(h2, "nft", "-j", "list", "table", "inet", "sgforeign")).stdout
    with policy_kept_through(lab, net, client, "sgr-web", cidr, procs):
        lab.stop_netd("h2", kill=True)
        assert (("bridge", "netd") in nft_tables(lab, "h2")
                and ("ip", "netd") in nft_tables(lab, "h2"))
        time.sleep(1.0)
        lab.start_netd("h2")
    after = run(ns_exec(h2, "nft", "-j", "list", "table", "inet", "sgforeign")).stdout
    assert after == before
    ruleset = json.loads(run(ns_exec(h2, "nft", "-j", "list", "ruleset")).stdout)["nftables"]
    owners = {(i[k]["family"], i[k]["table"]) for i in ruleset for k in ("rule", "chain", "set")
              if k in i}
    # netd's own tables: the policy's and the gateway's (docs/gateway.md)
    assert owners <= {("bridge", "netd"), ("ip", "netd"), ("inet", "sgforeign"),
                      ("bridge", "netdgw"), ("ip", "netdgw")}, owners
    assert ("ip", "netd") in owners and ("bridge", "netd") in owners
    assert ("inet", "sgforeign") in nft_tables(lab, "h2")
    subprocess.run(ns_exec(h2, "nft", "delete", "table", "inet", "sgforeign"), check=True)


def test_a_port_without_rules_gets_nothing_through(lab: Lab) -> None:
    """A veth with a netd port name on a netd bridge that the policy does not know yet
    (as between a driver plugging it and the policy worker's apply): dropped both ways."""
    net = make_net(lab, "sgclosed", "10.99.0")
    known = attach(lab, net, "h1", "k", 10)
    vni = lab.netctl_json("h1", "network", "inspect", net.name)["vni"]
    stray_ns = lab.add_container("h1", "sgclosed-stray")
    h1 = lab.hosts["h1"].netns
    port, plain = "ndh" + secrets.token_hex(4), "sg" + secrets.token_hex(4)
    run(ns_exec(h1, "ip", "link", "add", port, "type", "veth", "peer", "name", "eth0",
                "netns", f"/run/netns/{stray_ns}"))
    try:
        run(ns_exec(h1, "ip", "link", "set", port, "master", f"ndb{vni}", "up"))
        lab.in_container(stray_ns, "ip", "addr", "add", f"{net.prefix}.20/24", "dev", "eth0",
                         check=True)
        lab.in_container(stray_ns, "ip", "link", "set", "eth0", "up", check=True)
        assert not pings(lab, stray_ns, net.ips["k"])
        assert not pings(lab, known, f"{net.prefix}.20")
        # the same port under a name netd does not own is plain bridging: it passes
        run(ns_exec(h1, "ip", "link", "set", port, "down"))
        run(ns_exec(h1, "ip", "link", "set", port, "name", plain))
        run(ns_exec(h1, "ip", "link", "set", plain, "up"))
        assert wait_until(lambda: pings(lab, stray_ns, net.ips["k"]), 5)
    finally:
        run(ns_exec(h1, "ip", "link", "del", port), check=False)
        run(ns_exec(h1, "ip", "link", "del", plain), check=False)


def test_a_host_routing_between_tenants_forwards_nothing_across(lab: Lab) -> None:
    """h1 made a router between three networks (their gateways on its bridges, forwarding
    on): routing within a tenant works, from one tenant's network to another's never."""
    xa = make_net(lab, "sgxa", "10.88.1", tenant="sg-x")
    xb = make_net(lab, "sgxb", "10.88.2", tenant="sg-x")
    ya = make_net(lab, "sgya", "10.88.3", tenant="sg-y")
    h1 = lab.hosts["h1"].netns
    for net in (xa, xb, ya):
        attach(lab, net, "h1", "one", 11)
        vni = lab.netctl_json("h1", "network", "inspect", net.name)["vni"]
        run(ns_exec(h1, "ip", "addr", "add", f"{net.prefix}.1/24", "dev", f"ndb{vni}"))
    run(ns_exec(h1, "sysctl", "-qw", "net.ipv4.ip_forward=1"))
    try:
        assert wait_until(lambda: pings(lab, xa.containers["one"], xb.ips["one"]), 5)
        assert not pings(lab, xa.containers["one"], ya.ips["one"])
        assert not pings(lab, ya.containers["one"], xb.ips["one"])
        assert probe(ya.containers["one"], xa.ips["one"], 80) is None
    finally:
        run(ns_exec(h1, "sysctl", "-qw", "net.ipv4.ip_forward=0"))
