"""Acceptance of the openflow driver: three simulated hosts, each with its own Open vSwitch
(ovsdb-server + ovs-vswitchd in its namespace, tests/support/ovs.py), real etcd, real
netd processes programming their bridge through their own os-ken controller, real
packets on a real underlay.

Per backend (GRE, VXLAN) one lab builds two networks: `a` on all three hosts, `b` on
h1 and h2 only. Captures on the switch ports decode the tunnel headers with tshark.
"""

from __future__ import annotations

import re
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netd.lab import ns_exec, run
from plugins.openflow.cookies import NETD_MAGIC
from plugins.openflow.names import (
    GRE,
    INTEGRATION_BRIDGE,
    VXLAN,
    host_veth_name,
    tunnel_port_name,
)
from tests.support.ovs import OvsLab, ovs_available
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.root, pytest.mark.etcd,
              pytest.mark.skipif(not ovs_available(), reason="Open vSwitch is not installed")]

BR = INTEGRATION_BRIDGE
# backend -> (second octet of the subnets, GRE/VXLAN wire filter)
BACKENDS = {"gre": 81, "vxlan": 82}
OVERHEAD = {"gre": 42, "vxlan": 50}
TUNNEL_PREFIX = {"gre": GRE.prefix, "vxlan": VXLAN.prefix}


class Site:
    """The lab of one backend and what was built on it."""

    def __init__(self, lab: OvsLab, backend: str) -> None:
        self.lab = lab
        self.backend = backend
        octet = BACKENDS[backend]
        self.vni = {"a": 0, "b": 0}
        self.ip: dict[str, str] = {}
        self.mac: dict[str, str] = {}
        self.netns: dict[str, str] = {}
        layout = {"a": ("h1", "h2", "h3"), "b": ("h1", "h2")}
        for net, hosts in layout.items():
            subnet = f"10.{octet}.{ord(net) - 96}"
            out = lab.netctl("h1", "network", "create", f"{net}{backend}", "--subnet",
                             f"{subnet}.0/24", "--driver", "openflow", "--backend", backend)
            self.vni[net] = int(re.search(r"vni (\d+)", out.stdout).group(1))  # type: ignore[union-attr]
            self.mtu = int(re.search(r"mtu (\d+)", out.stdout).group(1))  # type: ignore[union-attr]
            for i, host in enumerate(hosts, start=1):
                name = f"{net}{i}"
                netns = lab.add_container(host, f"{backend[0]}{name}")
                ip = f"{subnet}.{10 + i}"
                attached = lab.netctl(host, "attach", netns, "--network", f"{net}{backend}",
                                      "--ip", ip)
                self.mac[name] = attached.stdout.split()[5]
                self.ip[name] = ip
                self.netns[name] = netns

    def ofctl(self, host: str, *args: str) -> str:
        return self.lab.ovs[host].ofctl(*args).stdout


@pytest.fixture(scope="module", params=list(BACKENDS))
def site(request: pytest.FixtureRequest) -> Iterator[Site]:
    # a host silent beyond its TTL drops out of its peers' desired state (their tunnel to it
    # and its endpoints' flows go): the TTL must outlast a netd restart on a loaded machine
    with OvsLab(hosts=3, store="etcd", host_ttl=20,
                prefix=f"of{secrets.token_hex(2)}") as lab:
        yield Site(lab, request.param)


class Capture:
    def __init__(self, netns: str, iface: str, path: Path, bpf: str = "") -> None:
        self.path = path
        self._proc = subprocess.Popen(
            ns_exec(netns, "tcpdump", "--immediate-mode", "-Z", "root", "-i", iface, "-n",
                    "-U", "-w", str(path), *bpf.split()),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert self._proc.stderr is not None
        line = self._proc.stderr.readline()
        if "listening on" not in line:
            self._proc.kill()
            raise RuntimeError(f"tcpdump did not start: {line}")

    def stop(self) -> None:
        time.sleep(0.3)
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def fields(self, *fields: str, display: str = "") -> list[list[str]]:
        cmd = ["tshark", "-r", str(self.path), "-T", "fields"]
        for f in fields:
            cmd += ["-e", f]
        if display:
            cmd += ["-Y", display]
        out = run(cmd, check=False).stdout
        return [line.split("\t") for line in out.splitlines() if line.strip()]


@pytest.fixture
def captures() -> Iterator[list[Capture]]:
    started: list[Capture] = []
    yield started
    for cap in started:
        cap.stop()


def capture(site: Site, captures: list[Capture], switch_port: str, name: str,
            netns: str | None = None, bpf: str = "") -> Capture:
    cap = Capture(netns or site.lab.switch, switch_port, site.lab.dir / f"{name}.pcap", bpf)
    captures.append(cap)
    return cap


def ping(site: Site, src: str, dst: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return site.lab.ping(site.netns[src], site.ip[dst], **kw)  # type: ignore[arg-type]


def flows(site: Site, host: str) -> list[str]:
    """The bridge's flows without counters and ages (comparable across time)."""
    out = site.ofctl(host, "--no-stats", "dump-flows", BR)
    return sorted(line.strip() for line in out.splitlines() if "cookie=" in line)


def cookie_of(line: str) -> int:
    return int(re.search(r"cookie=(0x[0-9a-f]+)", line).group(1), 16)  # type: ignore[union-attr]


TCP_SERVER = ("import socket,sys;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,"
              "socket.SO_REUSEADDR,1);s.bind(('0.0.0.0',7777));s.listen(1);print('ready',flush=True)\n"
              "c,_=s.accept();n=0\n"
              "while True:\n d=c.recv(65536)\n if not d: break\n n+=len(d)\n"
              "c.sendall(str(n).encode());c.close()")
TCP_CLIENT = ("import socket,sys;c=socket.create_connection((sys.argv[1],7777),timeout=10);"
              "c.sendall(b'x'*4000000);c.shutdown(socket.SHUT_WR);print(c.recv(100).decode())")


def tcp_transfer(site: Site, src: str, dst: str) -> str:
    return tcp_transfer_between(site.lab, site.netns[src], site.netns[dst], site.ip[dst])


# --- connectivity and the wire ------------------------------------------------------------
def test_cross_host_ping_and_tcp_in_both_networks(site: Site) -> None:
    for src, dst in (("a1", "a2"), ("a1", "a3"), ("a3", "a2"), ("b1", "b2")):
        assert site.lab.wait_ping(site.netns[src], site.ip[dst], timeout=10), (src, dst)
    assert tcp_transfer(site, "a1", "a3") == "4000000"
    assert tcp_transfer(site, "b2", "b1") == "4000000"


def test_status_names_the_userspace_datapath(site: Site) -> None:
    status = site.lab.netctl_json("h1", "status")
    of = status["datapath"]["openflow"]
    assert of["datapath_type"] == "netdev"  # no openvswitch kernel module here
    assert of["connected"] is True
    assert of["bridge"] == BR
    bridge = site.lab.ovs["h1"].vsctl("--format=json", "--columns=fail_mode,protocols,"
                                      "datapath_type", "list", "Bridge", BR).stdout
    assert '"secure"' in bridge and "OpenFlow13" in bridge and '"netdev"' in bridge
    table = site.lab.netctl("h1", "status").stdout
    assert "bridge ndoi1 datapath netdev (userspace), controller connected" in table, table


def test_tunnel_header_carries_the_vni_as_key(site: Site, captures: list[Capture]) -> None:
    cap = capture(site, captures, "p-h2", "tun")
    assert ping(site, "a1", "a2", count=3, wait=1).returncode == 0
    assert ping(site, "b1", "b2", count=3, wait=1).returncode == 0
    cap.stop()
    if site.backend == "gre":
        rows = cap.fields("gre.proto", "gre.key", "ip.src", display="gre")
        keys = {int(r[1], 0) for r in rows if r[0] == "0x6558"}
        assert all(r[0] == "0x6558" for r in rows), rows
    else:
        rows = cap.fields("vxlan.vni", display="vxlan")
        keys = {int(r[0], 0) for r in rows}
    assert keys == {site.vni["a"], site.vni["b"]}, rows


def test_networks_never_see_each_other(site: Site, captures: list[Capture]) -> None:
    # b2 listens; a1 broadcasts, asks ARP for an unknown address and sends unicast to
    # b2's MAC (a static neighbour entry): none of it may reach network b
    listen = capture(site, captures, "eth0", "b2", netns=site.netns["b2"])
    to_h3 = capture(site, captures, "p-h3", "h3")
    a1 = site.netns["a1"]
    site.lab.in_container(a1, "ip", "route", "add", f"{site.ip['b2']}/32", "dev", "eth0")
    site.lab.in_container(a1, "ip", "neigh", "replace", site.ip["b2"], "lladdr",
                          site.mac["b2"], "dev", "eth0")
    try:
        assert ping(site, "a1", "b2", count=2, wait=1).returncode != 0
        site.lab.in_container(a1, "ping", "-b", "-c", "2", "-W", "1",
                              site.ip["a2"].rsplit(".", 1)[0] + ".255")
        site.lab.in_container(a1, "ping", "-c", "2", "-W", "1",
                              site.ip["a2"].rsplit(".", 1)[0] + ".99")
        assert ping(site, "b1", "b2", count=1).returncode == 0  # b itself works meanwhile
    finally:
        site.lab.in_container(a1, "ip", "route", "del", f"{site.ip['b2']}/32")
    listen.stop()
    to_h3.stop()
    seen = {r[0] for r in listen.fields("eth.src")}
    assert site.mac["a1"] not in seen, seen
    # network b has no endpoint on h3: nothing of b travels there, not even floods
    if site.backend == "gre":
        keys = {int(r[0], 0) for r in to_h3.fields("gre.key", display="gre")}
    else:
        keys = {int(r[0], 0) for r in to_h3.fields("vxlan.vni", display="vxlan")}
    assert site.vni["b"] not in keys
    assert site.vni["a"] in keys  # a1's broadcasts went to h3


def test_flood_goes_only_to_hosts_with_the_network(site: Site) -> None:
    def tunnel_outputs(host: str, vni: int) -> int:
        lines = [line for line in flows(site, host) if "table=60" in line
                 and f"metadata={vni:#x}/" in line]
        return max(line.count("output:") for line in lines)

    ports = site.lab.ovs["h1"].vsctl("--bare", "--columns=name", "list", "Interface").stdout
    assert len([p for p in ports.split() if p.startswith(TUNNEL_PREFIX[site.backend])]) == 2
    assert tunnel_outputs("h1", site.vni["a"]) == 1 + 2  # its local port, h2 and h3
    assert tunnel_outputs("h1", site.vni["b"]) == 1 + 1  # its local port and h2 only


# --- MTU ----------------------------------------------------------------------------------
def test_df_ping_of_exactly_the_network_mtu_passes(site: Site) -> None:
    assert site.mtu == 1500 - OVERHEAD[site.backend]
    payload = site.mtu - 28
    ok = ping(site, "a1", "a2", count=2, size=payload, dont_fragment=True)
    assert ok.returncode == 0, ok.stdout
    too_big = site.lab.in_container(site.netns["a1"], "ping", "-n", "-c", "1", "-W", "1",
                                    "-M", "do", "-s", str(payload + 1), site.ip["a2"])
    assert too_big.returncode != 0
    assert "message too long" in (too_big.stdout + too_big.stderr).lower()


# --- MAC2MAC ------------------------------------------------------------------------------
def test_mac2mac_between_hosts_on_one_segment_sends_no_tunnel_header(
        site: Site, captures: list[Capture]) -> None:
    lab = site.lab
    name = f"m{site.backend}"
    subnet = f"10.{BACKENDS[site.backend]}.9"
    out = lab.netctl("h1", "network", "create", name, "--subnet", f"{subnet}.0/24", "--driver",
                     "openflow", "--backend", site.backend, "-o", "mac2mac=true")
    vni = int(re.search(r"vni (\d+)", out.stdout).group(1))  # type: ignore[union-attr]
    m1 = lab.add_container("h1", f"{site.backend[0]}m1")
    m2 = lab.add_container("h2", f"{site.backend[0]}m2")
    lab.netctl("h1", "attach", m1, "--network", name, "--ip", f"{subnet}.11")
    lab.netctl("h2", "attach", m2, "--network", name, "--ip", f"{subnet}.12")
    cap = capture(site, captures, "p-h2", "m2m")
    assert lab.wait_ping(m1, f"{subnet}.12", timeout=10)
    assert lab.ping(m1, f"{subnet}.12", count=3).returncode == 0
    cap.stop()
    # the containers' own packets cross the underlay: outer IP = inner IP, no encapsulation
    plain = cap.fields("ip.src", "ip.dst", display=f"icmp and not gre and not vxlan "
                       f"and ip.addr == {subnet}.11")
    assert {tuple(r) for r in plain} >= {(f"{subnet}.11", f"{subnet}.12"),
                                        (f"{subnet}.12", f"{subnet}.11")}, plain
    # (broadcasts and multicast of the network still flood through the tunnels)
    tunnelled = cap.fields("ip.src", "ip.dst", "frame.time_relative",
                           display=f"(gre.key == {vni} or vxlan.vni == {vni}) "
                           f"and icmp.type in {{0 8}} and ip.addr == {subnet}.11")
    assert tunnelled == [], (tunnelled, plain, [f for f in flows(site, "h2") if "table=30" in f])
    # the destination MAC on the wire is the alias, the receiving edge restores it
    macs = {r[0] for r in cap.fields("eth.dst", display=f"icmp and ip.dst == {subnet}.12")}
    assert macs and all(m.startswith("0a:") for m in macs), macs
    assert tcp_transfer_between(lab, m1, m2, f"{subnet}.12") == "4000000"


def tcp_transfer_between(lab: OvsLab, src: str, dst: str, dst_ip: str) -> str:
    """4 MB over TCP from container `src` to a server in `dst`; the byte count it got."""
    server = subprocess.Popen(ns_exec(dst, "python3", "-c", TCP_SERVER),
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        out = lab.in_container(src, "python3", "-c", TCP_CLIENT, dst_ip, timeout=30)
        return out.stdout.strip() or out.stderr.strip()
    finally:
        server.kill()
        server.wait()


# --- ownership and resync -----------------------------------------------------------------
def test_bridge_holds_only_netd_flows_and_a_foreign_flow_survives_resync(site: Site) -> None:
    for host in ("h1", "h2", "h3"):
        lines = flows(site, host)
        assert lines
        assert all(cookie_of(line) >> 48 == NETD_MAGIC for line in lines), lines
    ovs = site.lab.ovs["h1"]
    ovs.ofctl("add-flow", BR, "cookie=0x1234,table=200,priority=7,actions=drop")
    stale = f"{(NETD_MAGIC << 48) | (4 << 40) | (0xABCDEF << 16) | 0x1:#x}"
    ovs.ofctl("add-flow", BR, f"cookie={stale},table=50,priority=7,dl_dst=02:00:00:00:00:01,"
              "actions=drop")
    before = [line for line in flows(site, "h1") if cookie_of(line) not in (0x1234, int(stale, 16))]
    canary = [line for line in before if "table=200" in line]
    assert len(canary) == 1
    # the canary vanishes: netd notices and rebuilds every flow with a full verify pass
    ovs.ofctl("del-flows", BR, f"cookie={cookie_of(canary[0]):#x}/-1")
    assert wait_until(lambda: any("table=200" in line and cookie_of(line) >> 48 == NETD_MAGIC
                                  for line in flows(site, "h1")), 10)
    assert wait_until(lambda: all(cookie_of(line) != int(stale, 16)
                                  for line in flows(site, "h1")), 10), "stale netd flow stayed"
    after = flows(site, "h1")
    assert any(cookie_of(line) == 0x1234 for line in after), "foreign flow was removed"
    assert [line for line in after if cookie_of(line) != 0x1234] == before
    ovs.ofctl("del-flows", BR, "cookie=0x1234/-1")


def test_netd_kill_and_restart_loses_no_ping_and_keeps_the_flow_table(site: Site) -> None:
    lab = site.lab
    before = flows(site, "h1")
    pinger = subprocess.Popen(
        ns_exec(site.netns["a2"], "ping", "-n", "-D", "-O", "-i", "0.05", "-c", "160", "-W", "3",
                site.ip["a1"]),
        stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    killed = time.time()
    lab.stop_netd("h1", kill=True)
    time.sleep(1.0)
    lab.start_netd("h1")
    started = time.time()
    assert wait_until(lambda: lab.netctl_json("h1", "status")["workers"]["openflow"]
                      ["syncs"] >= 1, 15)
    synced = time.time()
    out, _ = pinger.communicate(timeout=30)  # every reply counts, however late
    match = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert match, out
    sent, received = map(int, match.groups())
    late = [float(m) - killed for m in re.findall(r"\[(\d+\.\d+)\] no answer yet", out)]
    assert sent == 160 and received == sent, (
        f"{out.splitlines()[-2]}; no answer yet at {[round(t, 2) for t in late]} s after the "
        f"kill; netd started {started - killed:.2f} s, synced {synced - killed:.2f} s after it")
    assert flows(site, "h1") == before


def test_ovs_vswitchd_restart_reconnects_within_two_seconds(site: Site) -> None:
    ovs = site.lab.ovs["h2"]
    before = flows(site, "h2")
    ovs.stop_vswitchd()
    started = time.monotonic()
    ovs.start_vswitchd()
    back = wait_until(lambda: ping(site, "a1", "a2", count=1, wait=0.2).returncode == 0, 10,
                      interval=0.05)
    elapsed = time.monotonic() - started
    assert back and elapsed < 2.0, f"back after {elapsed:.2f} s"
    assert wait_until(lambda: flows(site, "h2") == before, 5)


# --- errors from the switch ---------------------------------------------------------------
def test_a_flow_the_switch_refuses_fails_the_attach_with_the_decoded_error(site: Site) -> None:
    lab = site.lab
    ovs = lab.ovs["h1"]
    in_table = len([line for line in flows(site, "h1") if "table=50," in line])
    ovs.vsctl("--", "--id=@t", "create", "Flow_Table", f"flow_limit={in_table}",
              "overflow_policy=refuse", "--", "set", "Bridge", BR, "flow_tables:50=@t")
    extra = lab.add_container("h1", f"{site.backend[0]}full")
    try:
        result = lab.netctl("h1", "attach", extra, "--network", f"a{site.backend}",
                            check=False)
        assert result.returncode != 0
        assert "OFPET_FLOW_MOD_FAILED/OFPFMFC_TABLE_FULL" in result.stderr, result.stderr
        assert "OFPFMFC_TABLE_FULL" in lab.hosts["h1"].log.read_text()
        # nothing of the refused endpoint stays: not in the store, not on the bridge
        names = [ep["name"] for ep in lab.netctl_json("h1", "endpoint", "ls")]
        assert extra not in names
    finally:
        ovs.vsctl("clear", "Bridge", BR, "flow_tables")
    assert wait_until(lambda: host_veth_name(f"a{site.backend}", extra)
                      not in ovs.vsctl("list-ports", BR).stdout.split(), 10)
    assert ping(site, "a1", "a2", count=1).returncode == 0


# --- removal (last: it takes network a off h3) ----------------------------------------------
def test_detach_removes_the_port_its_flows_and_the_tunnel_nobody_needs(site: Site) -> None:
    lab = site.lab
    h3_port = host_veth_name(f"a{site.backend}", site.netns["a3"])
    tunnel_to_h3 = tunnel_port_name(site.backend, lab.hosts["h3"].underlay_ip)

    def ports(host: str) -> set[str]:
        return set(lab.ovs[host].vsctl("list-ports", BR).stdout.split())

    assert h3_port in ports("h3") and tunnel_to_h3 in ports("h1")
    lab.netctl("h3", "detach", site.netns["a3"], "--network", f"a{site.backend}")
    # h3 serves no network any more: its port goes, and h1's tunnel to it with it
    assert wait_until(lambda: h3_port not in ports("h3"), 10)
    assert wait_until(lambda: tunnel_to_h3 not in ports("h1"), 10)
    assert wait_until(lambda: not any(site.mac["a3"] in line for line in flows(site, "h1")), 10)
    assert not any(site.mac["a3"] in line for line in flows(site, "h3"))
    assert all(cookie_of(line) >> 48 == NETD_MAGIC for line in flows(site, "h1"))
    assert ping(site, "a1", "a2", count=1).returncode == 0
