"""Shared harness of the policy tests (weave, openflow, flannel): networks and
containers built through netctl, probes, captures inside containers, and the scenarios
the three drivers must pass alike (each test names its own groups and networks). The
tests that use it bring their own lab (netd.lab.Lab, or plugins.openflow.lab.OvsLab for
openflow)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from netd.lab import Lab, ns_exec, run
from tests.support.probes import PROBE_LOOP, PYTHON, probe, send_frames, start_server
from tests.support.waiting import wait_until


def kill_all(started: list[subprocess.Popen[str]]) -> None:
    """The end of the `procs` fixture (tests/functional/conftest.py)."""
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@dataclass
class Net:
    name: str
    prefix: str  # first three octets
    containers: dict[str, str] = field(default_factory=dict)  # short name -> netns
    ips: dict[str, str] = field(default_factory=dict)
    macs: dict[str, str] = field(default_factory=dict)


def make_net(lab: Lab, name: str, prefix: str, tenant: str = "default",
             *driver_args: str, subnet: str | None = None) -> Net:
    """A network `<prefix>.0/24` (or `subnet`); `driver_args` e.g. "--driver", "openflow"."""
    lab.netctl("h1", "network", "create", name, "--subnet", subnet or f"{prefix}.0/24",
               "--tenant", tenant, *driver_args)
    return Net(name, prefix)


def attach(lab: Lab, net: Net, host: str, short: str, last: int | None, *groups: str) -> str:
    """A container on `host` attached to `net` (address `<prefix>.<last>`, or any)."""
    netns = lab.add_container(host, f"{net.name}-{short}")
    args = ["attach", netns, "--network", net.name]
    if last is not None:
        args += ["--ip", f"{net.prefix}.{last}"]
    for group in groups:
        args += ["--sg", group]
    ep = json.loads(lab.netctl(host, "--json", *args).stdout)
    net.containers[short], net.ips[short], net.macs[short] = netns, ep["ip"], ep["mac"]
    return netns


def pings(lab: Lab, netns: str, ip: str) -> bool:
    return lab.ping(netns, ip, wait=0.5).returncode == 0


def log_tail(lab: Lab, host: str, lines: int = 15) -> str:
    return "\n".join(lab.hosts[host].log.read_text().splitlines()[-lines:])


def start_capture(netns: str, pcap: Path, bpf: str) -> subprocess.Popen[str]:
    dump = subprocess.Popen(ns_exec(netns, "tcpdump", "--immediate-mode", "-U", "-n", "-i",
                                    "eth0", "-w", str(pcap), bpf),
                            stderr=subprocess.PIPE, text=True)
    assert dump.stderr is not None and "listening" in dump.stderr.readline()
    return dump


def payloads(dump: subprocess.Popen[str], pcap: Path) -> str:
    """Stop a capture; the text of its frames' payloads and ARP senders, one per line."""
    time.sleep(0.5)
    dump.terminate()
    dump.wait(5)
    fields = run(["tshark", "-r", str(pcap), "-T", "fields", "-e", "data.text", "-e",
                  "arp.src.proto_ipv4", "-e", "arp.src.hw_mac", "-e", "udp.payload", "-o",
                  "data.show_as_text:TRUE"], check=False).stdout
    decoded = []  # UDP payloads as text too (DHCP ports are not shown as data.text)
    for line in fields.splitlines():
        for cell in line.split("\t"):
            with contextlib.suppress(ValueError):
                decoded.append(bytes.fromhex(cell.replace(":", "")).decode("ascii", "replace"))
    return fields + "\n".join(decoded)


# --- scenarios the weave, openflow and flannel policy tests share ---------------------------
def numbered(first: int | None, index: int) -> int | None:
    """The `index`-th address's last octet counting from `first`; None (any) without one."""
    return None if first is None else first + index


def open_to_members(lab: Lab, group: str, port: int) -> None:
    """A group (made on h1) whose one rule lets its own members reach tcp/`port`."""
    lab.netctl("h1", "sg", "create", group)
    lab.netctl("h1", "sg", "rule", "add", group, "--ingress", "--proto", "tcp",
               "--port", str(port), "--group", group)


@dataclass
class StatefulCast:
    """S (h2) and A (h1) in `web`, whose only rule lets web members reach tcp/8080; B (h1)
    and C (h2) in no group."""

    net: Net
    web: str
    s: str
    a: str
    b: str
    c: str


def stateful_groups_hold(lab: Lab, net: Net, web: str, procs: list[subprocess.Popen[str]],
                         first: int | None, converge: float) -> StatefulCast:
    """Build the cast on `net` (addresses from `.first`, or any) and check the allowed port
    passes within `converge` seconds while everything else is dropped, statefully."""
    open_to_members(lab, web, 8080)
    s = attach(lab, net, "h2", "s", numbered(first, 0), web)
    a = attach(lab, net, "h1", "a", numbered(first, 1), web)
    b = attach(lab, net, "h1", "b", numbered(first, 2))
    c = attach(lab, net, "h2", "c", numbered(first, 3))
    ip = net.ips
    procs.append(start_server(s, "S", "tcp/8080", "tcp/8081", "udp/8080", "tcp/9090"))
    procs.append(start_server(b, "B", "tcp/8080", "tcp/8081"))
    # the allowed port from the peer group passes, replies included, across hosts
    assert wait_until(lambda: probe(a, ip["s"], 8080) == "S", converge), log_tail(lab, "h2")
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
    return StatefulCast(net, web, s, a, b, c)


def stateful_rules_and_membership_follow(lab: Lab, cast: StatefulCast, icmp_cidr: str,
                                         on_h2: Callable[[str], bool]) -> None:
    """New rules (ICMP from `icmp_cidr`, a remote-CIDR rule) take effect, and B joining and
    leaving web reaches S's host h2 within 1 s: `on_h2(address)` says whether h2's
    datapath lets that address in as a web member (a set element, a flow)."""
    net, web, ip = cast.net, cast.web, cast.net.ips
    a, b = cast.a, cast.b
    lab.netctl("h1", "sg", "rule", "add", web, "--ingress", "--proto", "icmp",
               "--cidr", icmp_cidr)
    assert wait_until(lambda: pings(lab, a, ip["s"]), 3)
    lab.netctl("h1", "sg", "rule", "add", web, "--ingress", "--proto", "tcp",
               "--port", "9090", "--cidr", f"{ip['b']}/32")
    assert wait_until(lambda: probe(b, ip["s"], 9090) == "S", 3)
    assert probe(a, ip["s"], 9090) is None
    # membership: B joins web (on h1) -> S's host h2 has it within 1 s of the change
    # (measured from the command's return: the CLI's own start-up on this shared machine
    # is not netd's latency; bench/policy.py times it from the API call)
    lab.netctl("h1", "endpoint", "update", b, "--network", net.name, "--sg", web)
    started = time.monotonic()
    assert wait_until(lambda: on_h2(ip["b"]), 3)
    joined = time.monotonic() - started
    assert joined < 1.0, (f"membership reached the other host after {joined:.2f} s\n"
                          + log_tail(lab, "h2"))
    assert wait_until(lambda: probe(b, ip["s"], 8080) == "S", 3)
    lab.netctl("h1", "endpoint", "update", b, "--network", net.name)
    started = time.monotonic()
    assert wait_until(lambda: not on_h2(ip["b"]), 3)
    left = time.monotonic() - started
    assert left < 1.0, f"leaving took {left:.2f} s"
    assert probe(b, ip["s"], 8080) is None


def egress_rules_limit_what_a_member_sends(lab: Lab, net: Net, group: str,
                                           procs: list[subprocess.Popen[str]],
                                           converge: float) -> None:
    """A member of `group` (on h2), whose one egress rule allows tcp/8080 into `net`,
    reaches that port on an open endpoint (h1) and nothing else; nor is it reachable."""
    lab.netctl("h2", "sg", "create", group)
    lab.netctl("h2", "sg", "rule", "add", group, "--egress", "--proto", "tcp",
               "--port", "8080", "--cidr", f"{net.prefix}.0/24")
    locked = attach(lab, net, "h2", "l", 10, group)
    open_ = attach(lab, net, "h1", "o", 11)
    procs.append(start_server(open_, "O", "tcp/8080", "tcp/8081", "udp/8080"))
    assert wait_until(lambda: probe(locked, net.ips["o"], 8080) == "O", converge)
    assert probe(locked, net.ips["o"], 8081) is None
    assert probe(locked, net.ips["o"], 8080, "udp") is None
    assert not pings(lab, locked, net.ips["o"])
    assert not pings(lab, open_, net.ips["l"])  # a member without ingress rules: closed


@dataclass
class SpoofCast:
    """Victim V (h2) and member M (h1) in `group`, whose rule opens V's tcp/8080 to the
    group; spoofer X (h1) in no group; an open target T that captures what reaches it."""

    net: Net
    victim: str
    member: str
    spoofer: str
    target: str


def spoof_cast(lab: Lab, net: Net, group: str, procs: list[subprocess.Popen[str]],
               first: int | None, target_host: str, converge: float) -> SpoofCast:
    open_to_members(lab, group, 8080)
    victim = attach(lab, net, "h2", "v", numbered(first, 0), group)
    member = attach(lab, net, "h1", "m", numbered(first, 1), group)
    spoofer = attach(lab, net, "h1", "x", numbered(first, 2))
    target = attach(lab, net, target_host, "t", numbered(first, 3))
    procs.append(start_server(victim, "V", "tcp/8080"))
    assert wait_until(lambda: probe(member, net.ips["v"], 8080) == "V", converge)
    return SpoofCast(net, victim, member, spoofer, target)


def forged_frames_are_dropped(lab: Lab, cast: SpoofCast, pcap: Path,
                              procs: list[subprocess.Popen[str]], bpf: str, claimed: str,
                              honest_arp_request: bool) -> None:
    """X sends UDP with M's address and/or MAC, a DHCP offer, and ARP claiming `claimed`'s
    (a short name) and M's addresses: only its honest UDP, UDP to port 68 from another
    port, and its honest ARP (a request, or else a gratuitous reply) reach T (captured
    with `bpf`). Then X takes M's address on its interface: that gets it nothing into the
    group."""
    ip, mac, spoofer = cast.net.ips, cast.net.macs, cast.spoofer
    dump = start_capture(cast.target, pcap, bpf)
    procs.append(dump)
    udp = {"kind": "udp", "dst_mac": mac["t"], "dst_ip": ip["t"], "port": 7777}
    honest = {"kind": "arp", "src_mac": mac["x"], "hwsrc": mac["x"], "psrc": ip["x"],
              "pdst": ip["t"]}
    send_frames(spoofer, [
        {**udp, "src_mac": mac["x"], "src_ip": ip["x"], "payload": "legit"},
        {**udp, "src_mac": mac["x"], "src_ip": ip["m"], "payload": "spoof-ip"},
        {**udp, "src_mac": mac["m"], "src_ip": ip["x"], "payload": "spoof-mac"},
        {**udp, "src_mac": mac["m"], "src_ip": ip["m"], "payload": "spoof-both"},
        {"kind": "udp", "src_mac": mac["x"], "src_ip": ip["x"], "dst_mac": mac["t"],
         "dst_ip": ip["t"], "sport": 67, "port": 68, "payload": "dhcp-offer"},
        {"kind": "udp", "src_mac": mac["x"], "src_ip": ip["x"], "dst_mac": mac["t"],
         "dst_ip": ip["t"], "sport": 40000, "port": 68, "payload": "to-port-68"},
        {"kind": "arp", "src_mac": mac["x"], "hwsrc": mac["x"], "psrc": ip[claimed],
         "pdst": ip["t"]},  # "that address is at my MAC"
        {"kind": "arp", "src_mac": mac["x"], "hwsrc": mac["m"], "psrc": ip["m"],
         "pdst": ip["t"]},
        {**honest, "op": 1} if honest_arp_request else honest,
    ])
    shown = payloads(dump, pcap)
    assert "legit" in shown and "to-port-68" in shown, shown
    forged = dict.fromkeys(("spoof-ip", "spoof-mac", "spoof-both", "dhcp-offer",
                            ip[claimed], ip["m"]))
    for text in forged:
        assert text not in shown, f"{text} reached the target:\n{shown}"
    assert ip["x"] in shown  # the honest ARP
    # taking a member's address on the interface gets nothing into the group
    lab.in_container(spoofer, "ip", "addr", "add", f"{ip['m']}/32", "dev", "eth0", check=True)
    assert probe(spoofer, ip["v"], 8080, source=ip["m"]) is None


def pair_up(lab: Lab, nets: tuple[Net, ...], procs: list[subprocess.Popen[str]],
            first: int | None) -> None:
    """On each network, container `one` on h1 and `two` on h2 (addresses `.first` and
    `.first+1`, or any); `two` answers tcp/80 and udp/53 with its network's name."""
    for net in nets:
        attach(lab, net, "h1", "one", numbered(first, 0))
        attach(lab, net, "h2", "two", numbered(first, 1))
        procs.append(start_server(net.containers["two"], net.name, "tcp/80", "udp/53"))


def pairs_answer(lab: Lab, nets: tuple[Net, ...], converge: float) -> None:
    """`one` reaches its own network's `two` (tcp, udp, ICMP), answered by that network."""
    for net in nets:
        one = net.containers["one"]
        assert wait_until(lambda n=net, o=one: probe(o, n.ips["two"], 80) == n.name, converge)  # type: ignore[misc]
        assert probe(one, net.ips["two"], 53, "udp") == net.name
        assert pings(lab, one, net.ips["two"])


def forge_path(lab: Lab, sender: str, cidr: str, net: Net, short: str) -> None:
    """A route to `cidr` and a neighbour entry (the real MAC of `net`'s `short`) on the
    sender's own link, as a container would forge them to reach another network."""
    lab.in_container(sender, "ip", "route", "add", cidr, "dev", "eth0", check=True)
    lab.in_container(sender, "ip", "neigh", "replace", net.ips[short], "lladdr",
                     net.macs[short], "dev", "eth0", check=True)


def reaches_nothing(lab: Lab, sender: str, address: str, why: object = None) -> None:
    """Neither ICMP nor tcp/80 nor udp/53 from `sender` gets an answer from `address`."""
    assert not pings(lab, sender, address), why
    assert probe(sender, address, 80) is None, why
    assert probe(sender, address, 53, "udp") is None, why


def icmp_open_server(lab: Lab, net: Net, group: str, cidr: str,
                     procs: list[subprocess.Popen[str]], first: int | None,
                     converge: float) -> tuple[str, str]:
    """Server `s` (h2) in `group`, whose one rule admits ICMP from `cidr`, listening on
    tcp/8081 (which no rule admits); client `c` (h1) in no group, pinging it within
    `converge` seconds. Returns (server, client)."""
    lab.netctl("h1", "sg", "create", group)
    lab.netctl("h1", "sg", "rule", "add", group, "--ingress", "--proto", "icmp",
               "--cidr", cidr)
    server = attach(lab, net, "h2", "s", numbered(first, 0), group)
    client = attach(lab, net, "h1", "c", numbered(first, 1))
    procs.append(start_server(server, "S", "tcp/8081"))
    assert wait_until(lambda: pings(lab, client, net.ips["s"]), converge)
    return server, client


@contextlib.contextmanager
def policy_kept_through(lab: Lab, net: Net, client: str, group: str, cidr: str,
                        procs: list[subprocess.Popen[str]],
                        *ping_options: str) -> Iterator[None]:
    """While the body kills and restarts h2's netd, the client pings the server (with
    `ping_options`) and probes its closed tcp/8081 every 50 ms. Afterwards a rule change
    makes the new daemon apply; not one ping was lost and not one probe got through."""
    flow = subprocess.Popen(ns_exec(client, "ping", "-n", "-i", "0.05", "-c", "120",
                                    *ping_options, net.ips["s"]),
                            stdout=subprocess.PIPE, text=True)
    procs.append(flow)
    denied = subprocess.Popen(ns_exec(client, PYTHON, "-c", PROBE_LOOP, net.ips["s"], "8081",
                                      "0.05"), stdout=subprocess.PIPE, text=True)
    procs.append(denied)
    time.sleep(1.0)
    yield
    # a rule change after the restart makes the new daemon apply
    lab.netctl("h2", "sg", "rule", "add", group, "--ingress", "--proto", "udp",
               "--port", "53", "--cidr", cidr)
    out, _ = flow.communicate(timeout=30)
    denied.kill()
    probes = denied.communicate()[0].split()
    assert " 0% packet loss" in out, out
    assert probes and "ok" not in probes, probes.count("ok")
