"""The weave driver's kernel datapath, driven directly with hand-built HostStates.

Single-host tests run the driver in this process, so its bridge and vxlan live in the
root netns under a random high VNI (unique names) and are removed by name afterwards;
they never sweep (sweep would touch other tests' netd links in the root netns).
The multi-host test runs one driver process per simulated host namespace (nsenter),
joined by a veth underlay, and sends real packets across the VXLAN overlay.
"""

from __future__ import annotations

import gc
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from netd.model import Endpoint, Host, Network, mac_from_ip
from netd.netlink import RTPROT_NETD, Netlink, NetnsNotFound
from netd.nsopener import NsOpener
from netd.plugin import ApplyReport, HostState, NetworkState, endpoint_id
from plugins.weave.driver import WeaveDriver
from plugins.weave.names import bridge_name, host_veth_name, vxlan_name
from tests.functional.conftest import in_netns, netns_path, unique
from tests.support.drivers import weave_driver

pytestmark = pytest.mark.root

MTU = 1400
LOCAL = Host(name="twh-local", underlay_ip="127.0.0.1")
REPO = Path(__file__).resolve().parents[2]


def network(vni: int, backend: str = "fastdp", mtu: int = MTU) -> Network:
    third = vni % 200
    return Network(
        name=f"twnet{vni}",
        subnet=f"10.{third}.7.0/24",
        gateway=f"10.{third}.7.1",
        vni=vni,
        mtu=mtu,
        backend=backend,
    )


def endpoint(net: Network, name: str, host: str, netns: str, last: int) -> Endpoint:
    ip = net.subnet.rsplit(".", 1)[0] + f".{last}"
    return Endpoint(
        network=net.name,
        name=name,
        container=name,
        netns=netns,
        host=host,
        ifname="eth0",
        ip=ip,
        mac=mac_from_ip(ip),
    )


def state(
    net: Network,
    local: list[Endpoint],
    remote: tuple[Endpoint, ...] = (),
    peers: tuple[Host, ...] = (),
    host: Host = LOCAL,
) -> HostState:
    ns = NetworkState(network=net, local=tuple(local), remote=remote, peers=peers)
    hosts = {h.name: h for h in (host, *peers)}
    return HostState(host=host, networks={net.name: ns}, hosts=hosts)


def link_names() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def ifindexes(nl: Netlink, names: list[str]) -> dict[str, int]:
    return {name: link.index for name in names if (link := nl.get_link(name)) is not None}


def ping(ns: str, ip: str, size: int | None = None) -> bool:
    cmd = ["ping", "-c1", "-W1", "-n"]
    if size is not None:
        cmd += ["-M", "do", "-s", str(size)]
    # up to three tries: the first echo can race a freshly created port
    return any(in_netns(ns, *cmd, ip, check=False).returncode == 0 for _ in range(3))


def ok(report: ApplyReport) -> ApplyReport:
    assert report.errors == {}
    return report


@pytest.fixture
def vni() -> int:
    return 16_000_000 + secrets.randbelow(700_000)


def remove_links(drv: WeaveDriver, *vnis: int) -> None:
    """Close `drv` and delete by name the links it made (these VNIs' bridges/vxlans, the
    veths of its endpoints)."""
    drv.close()
    nl = Netlink()
    for name in sorted(link_names()):
        if name.startswith("ndh") and drv._delta.links.applied(name) is not None:
            nl.delete_link(name)
    for vni in vnis:
        nl.delete_link(vxlan_name(vni))
        nl.delete_link(bridge_name(vni))
    nl.close()


def local_endpoints(
    make_netns: Callable[[str], str], net: Network, count: int, prefix: str = "twc"
) -> tuple[list[str], list[Endpoint]]:
    """`count` container namespaces with one endpoint each on `net` (a, b, c ... at .10+)."""
    names = [make_netns(prefix) for _ in range(count)]
    eps = [endpoint(net, chr(ord("a") + i), LOCAL.name, netns_path(ns), 10 + i)
           for i, ns in enumerate(names)]
    return names, eps


@pytest.fixture
def driver(vni: int) -> Iterator[WeaveDriver]:
    """A driver whose links are removed by name at teardown, whatever the test did."""
    drv = weave_driver()
    yield drv
    remove_links(drv, vni)


@pytest.fixture
def nl() -> Iterator[Netlink]:
    sockets = Netlink()
    yield sockets
    sockets.close()


def test_two_local_endpoints_talk_and_reapply_changes_nothing(
    driver: WeaveDriver, make_netns: Callable[[str], str], nl: Netlink, vni: int
) -> None:
    net = network(vni)
    (a, b), (ep_a, ep_b) = local_endpoints(make_netns, net, 2)
    desired = state(net, [ep_a, ep_b])

    assert ok(driver.apply(desired, sweep=False, verify=True)).changed > 0
    assert ping(a, ep_b.ip) and ping(b, ep_a.ip)
    assert ping(a, ep_b.ip, size=MTU - 28)

    veths = [host_veth_name(net.name, e.name) for e in (ep_a, ep_b)]
    names = [bridge_name(vni), vxlan_name(vni), *veths]
    for name in names:
        link = nl.get_link(name)
        assert link is not None and link.mtu == MTU and link.up, name
    bridge = nl.get_link(bridge_name(vni))
    assert bridge is not None
    assert all(nl.get_link(n).master == bridge.index for n in names[1:])  # type: ignore[union-attr]
    brlink = subprocess.run(
        ["bridge", "-d", "link", "show", "dev", vxlan_name(vni)], capture_output=True, text=True
    ).stdout
    assert "learning off" in brlink and "neigh_suppress on" in brlink
    for ns, ep in ((a, ep_a), (b, ep_b)):
        inside = nl.get_link("eth0", netns_path(ns))
        assert inside is not None and inside.mtu == MTU and inside.mac == ep.mac and inside.up
        addrs = in_netns(ns, "ip", "-o", "-4", "addr", "show", "dev", "eth0").stdout
        assert f"{ep.ip}/24" in addrs
        routes = in_netns(ns, "ip", "route", "show", "default").stdout
        assert f"default via {net.gateway} dev eth0 proto {RTPROT_NETD}" in routes
        retrans = in_netns(ns, "cat", "/proc/sys/net/ipv4/neigh/eth0/retrans_time_ms").stdout
        assert retrans.strip() == "100"

    before = ifindexes(nl, names)
    assert ok(driver.apply(desired, sweep=False, verify=True)).changed == 0
    restarted = weave_driver()  # a restarted daemon adopts instead of recreating
    try:
        assert ok(restarted.apply(desired, sweep=False, verify=True)).changed == 0
    finally:
        restarted.close()
    assert ifindexes(nl, names) == before


def test_detach_removes_veth_and_last_one_removes_network(
    driver: WeaveDriver, make_netns: Callable[[str], str], nl: Netlink, vni: int
) -> None:
    net = network(vni)
    (a, b), (ep_a, ep_b) = local_endpoints(make_netns, net, 2)
    ok(driver.apply(state(net, [ep_a, ep_b]), sweep=False, verify=True))
    veth_b = host_veth_name(net.name, "b")
    assert nl.get_link(veth_b) is not None

    assert ok(driver.apply(state(net, [ep_a]), sweep=False, verify=True)).changed == 1
    assert nl.get_link(veth_b) is None
    assert nl.get_link("eth0", netns_path(b)) is None
    assert nl.get_link("eth0", netns_path(a)) is not None

    ok(driver.apply(HostState(host=LOCAL, networks={}, hosts={}), sweep=False, verify=True))
    assert not {bridge_name(vni), vxlan_name(vni), host_veth_name(net.name, "a")} & link_names()
    assert nl.get_link("eth0", netns_path(a)) is None


def test_bad_container_fails_only_its_endpoint_and_leaks_nothing(
    driver: WeaveDriver, make_netns: Callable[[str], str], nl: Netlink, vni: int
) -> None:
    net = network(vni)
    (a, b, c), (ep_a, ep_b, _) = local_endpoints(make_netns, net, 3)
    gone = endpoint(net, "gone", LOCAL.name, netns_path(unique("twc")), 12)
    # c already has an eth0 that netd did not make
    in_netns(c, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "twother")
    taken = endpoint(net, "taken", LOCAL.name, netns_path(c), 13)
    ok(driver.apply(state(net, [ep_a, ep_b]), sweep=False, verify=True))

    subprocess.run(["ip", "netns", "del", b], check=True)  # container b goes away
    report = driver.apply(state(net, [ep_a, ep_b, gone, taken]), sweep=False, verify=True)
    assert set(report.errors) == {endpoint_id(ep_b), endpoint_id(gone), endpoint_id(taken)}
    assert "does not exist" in report.errors[endpoint_id(gone)]
    assert "already exists" in report.errors[endpoint_id(taken)]
    assert nl.get_link("eth0", netns_path(a)) is not None
    leaked = {host_veth_name(net.name, e.name) for e in (ep_b, gone, taken)}
    deadline = time.monotonic() + 5  # a deleted netns is destroyed asynchronously
    while leaked & link_names() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not leaked & link_names()
    assert "twother" in in_netns(c, "ip", "-o", "link").stdout


def test_remote_endpoints_program_fdb_neigh_and_flood(
    driver: WeaveDriver, make_netns: Callable[[str], str], vni: int
) -> None:
    net = network(vni)
    a = make_netns("twc")
    ep_a = endpoint(net, "a", LOCAL.name, netns_path(a), 10)
    h2 = Host(name="twh2", underlay_ip="127.0.0.2")
    h3 = Host(name="twh3", underlay_ip="127.0.0.3")
    r2 = endpoint(net, "r2", h2.name, "/proc/1/ns/net", 20)
    r3 = endpoint(net, "r3", h3.name, "/proc/1/ns/net", 30)
    vx = vxlan_name(vni)

    def fdb() -> str:
        return subprocess.run(
            ["bridge", "fdb", "show", "dev", vx], capture_output=True, text=True
        ).stdout

    def neigh() -> str:
        return subprocess.run(
            ["ip", "neigh", "show", "dev", vx], capture_output=True, text=True
        ).stdout

    full = state(net, [ep_a], remote=(r2, r3), peers=(h2, h3))
    ok(driver.apply(full, sweep=False, verify=True))
    for ep, h in ((r2, h2), (r3, h3)):
        assert f"{ep.mac} dst {h.underlay_ip} self permanent" in fdb()
        assert f"00:00:00:00:00:00 dst {h.underlay_ip} self permanent" in fdb()
        assert f"{ep.ip} lladdr {ep.mac} PERMANENT" in neigh()
    assert fdb().count("dst ") == 4
    seen = driver.observe()["networks"][str(vni)]
    assert (seen["bridge"], seen["fdb"], seen["neighbours"]) == (bridge_name(vni), 4, 2)
    assert ok(driver.apply(full, sweep=False, verify=True)).changed == 0

    # the vxlan device answers ARP for remote endpoints itself (the echo that follows
    # goes to 127.0.0.2 over loopback and gets no reply)
    ping(a, r2.ip)
    assert r2.mac in in_netns(a, "ip", "neigh", "show", r2.ip).stdout

    # r3 moves to h2, h3 leaves the network
    moved = endpoint(net, "r3", h2.name, "/proc/1/ns/net", 30)
    ok(driver.apply(state(net, [ep_a], remote=(r2, moved), peers=(h2,)), sweep=False, verify=True))
    assert f"{r3.mac} dst 127.0.0.2 self permanent" in fdb()
    assert "127.0.0.3" not in fdb()
    assert fdb().count("dst ") == 3

    ok(driver.apply(state(net, [ep_a]), sweep=False, verify=True))
    assert "dst " not in fdb()
    assert "PERMANENT" not in neigh()


def test_vni_used_by_a_foreign_link_fails_the_network(
    driver: WeaveDriver, make_netns: Callable[[str], str], vni: int
) -> None:
    net = network(vni)
    a = make_netns("twc")
    ep_a = endpoint(net, "a", LOCAL.name, netns_path(a), 10)
    foreign = unique("twv")
    subprocess.run(
        ["ip", "link", "add", foreign, "type", "vxlan", "id", str(vni), "dstport", "4789"],
        check=True,
    )
    try:
        report = driver.apply(state(net, [ep_a]), sweep=False, verify=True)
        assert f"link {foreign} already uses VNI {vni}" in report.errors[f"network:{net.name}"]
        assert endpoint_id(ep_a) in report.errors
        assert foreign in link_names()
        assert host_veth_name(net.name, "a") not in link_names()
    finally:
        subprocess.run(["ip", "link", "del", foreign], check=False)


def addrgenmode(name: str, netns: str | None = None) -> str:
    cmd = ["ip", "-d", "link", "show", "dev", name]
    out = (in_netns(netns, *cmd) if netns else subprocess.run(cmd, capture_output=True,
                                                               text=True)).stdout
    return out.split("addrgenmode ", 1)[1].split()[0] if "addrgenmode " in out else "?"


def ipv6_addrs(name: str) -> str:
    return subprocess.run(
        ["ip", "-6", "-o", "addr", "show", "dev", name], capture_output=True, text=True
    ).stdout


def test_verify_false_skips_unchanged_items_and_verify_true_repairs(
    driver: WeaveDriver, make_netns: Callable[[str], str], nl: Netlink, vni: int
) -> None:
    net = network(vni)
    (a, _, c), (ep_a, ep_b, ep_c) = local_endpoints(make_netns, net, 3, "tac")
    ok(driver.apply(state(net, [ep_a, ep_b]), sweep=False, verify=True))
    assert set(driver._nl._cache()) <= {None}  # no socket into a container netns is kept

    # behind netd's back: b's veth and a's address go away
    subprocess.run(["ip", "link", "del", host_veth_name(net.name, "b")], check=True)
    in_netns(a, "ip", "addr", "flush", "dev", "eth0")

    # an attach (verify=False) builds only the new endpoint and touches nothing else
    report = ok(driver.apply(state(net, [ep_a, ep_b, ep_c]), sweep=False, verify=False))
    assert report.changed > 0
    assert nl.get_link(host_veth_name(net.name, "b")) is None
    assert ep_a.ip not in in_netns(a, "ip", "-o", "addr", "show", "dev", "eth0").stdout
    assert nl.get_link("eth0", netns_path(c)) is not None
    assert ok(driver.apply(state(net, [ep_a, ep_b, ep_c]), sweep=False, verify=False)).changed == 0

    # the periodic resync (verify=True) repairs both
    assert ok(driver.apply(state(net, [ep_a, ep_b, ep_c]), sweep=False, verify=True)).changed > 0
    assert ping(a, ep_b.ip) and ping(c, ep_a.ip)
    assert ok(driver.apply(state(net, [ep_a, ep_b, ep_c]), sweep=False, verify=True)).changed == 0


def test_failed_items_are_retried_without_verify(
    driver: WeaveDriver, make_netns: Callable[[str], str], nl: Netlink, vni: int
) -> None:
    net = network(vni)
    a = make_netns("tac")
    ep_a = endpoint(net, "a", LOCAL.name, netns_path(a), 10)
    late_name = unique("tac")
    late = endpoint(net, "late", LOCAL.name, netns_path(late_name), 11)
    report = driver.apply(state(net, [ep_a, late]), sweep=False, verify=True)
    assert set(report.errors) == {endpoint_id(late)}
    subprocess.run(["ip", "netns", "add", late_name], check=True)  # the container appears
    try:
        ok(driver.apply(state(net, [ep_a, late]), sweep=False, verify=False))
        assert ping(a, late.ip)
    finally:
        subprocess.run(["ip", "netns", "del", late_name], check=False)


def test_host_side_links_have_no_ipv6_link_local(
    driver: WeaveDriver, make_netns: Callable[[str], str], vni: int
) -> None:
    net = network(vni)
    a = make_netns("tac")
    ep_a = endpoint(net, "a", LOCAL.name, netns_path(a), 10)
    # a bridge left by an older netd, up with a link-local address: adopted and cleaned
    subprocess.run(["ip", "link", "add", bridge_name(vni), "type", "bridge"], check=True)
    subprocess.run(["ip", "link", "set", bridge_name(vni), "up"], check=True)
    subprocess.run(["ip", "-6", "addr", "add", "fe80::1234/64", "dev", bridge_name(vni)],
                   check=True)
    ok(driver.apply(state(net, [ep_a]), sweep=False, verify=True))
    time.sleep(0.2)
    for name in (bridge_name(vni), vxlan_name(vni), host_veth_name(net.name, "a")):
        assert addrgenmode(name) == "none", name
        assert "fe80" not in ipv6_addrs(name), name
    # netd's networks are IPv4 only: the container end starts without IPv6 link-local too
    assert addrgenmode("eth0", a) == "none"
    assert "fe80" not in in_netns(a, "ip", "-6", "addr", "show", "dev", "eth0").stdout



def has_addr(ns: str, ip: str) -> bool:
    return ip in in_netns(ns, "ip", "-o", "-4", "addr", "show", "dev", "eth0").stdout


def test_verify_budget_checks_containers_round_robin_and_broken_hosts_at_once(
    make_netns: Callable[[str], str], vni: int
) -> None:
    net = network(vni)
    names = [make_netns("tvc") for _ in range(3)]
    eps = [endpoint(net, n, LOCAL.name, netns_path(ns), 10 + i)
           for i, (n, ns) in enumerate(zip("abc", names, strict=True))]
    desired = state(net, eps)
    drv = weave_driver(verify_budget=1)
    try:
        ok(drv.apply(desired, sweep=False, verify=True))  # first pass: all; window at "a"
        assert all(has_addr(ns, ep.ip) for ns, ep in zip(names, eps, strict=True))
        for ns in names:  # container-side drift everywhere
            in_netns(ns, "ip", "addr", "flush", "dev", "eth0")
        subprocess.run(["ip", "link", "del", host_veth_name(net.name, "c")], check=True)

        # window "b"; c's host end is gone, so c is rebuilt whatever the window
        assert ok(drv.apply(desired, sweep=False, verify=True)).changed > 0
        assert [has_addr(ns, ep.ip) for ns, ep in zip(names, eps, strict=True)] == [
            False, True, True
        ]
        ok(drv.apply(desired, sweep=False, verify=True))  # window "c"
        assert not has_addr(names[0], eps[0].ip)
        ok(drv.apply(desired, sweep=False, verify=True))  # window "a"
        assert has_addr(names[0], eps[0].ip)
        assert ok(drv.apply(desired, sweep=False, verify=True)).changed == 0
        assert ping(names[0], eps[2].ip)
    finally:
        remove_links(drv, vni)


# -- the netns opener ---------------------------------------------------------------


def opener_gone(pid: int, timeout: float = 5.0) -> bool:
    """`pid` has exited (gone, or a zombie nobody reaped yet) within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.02)
    return False


def test_opener_missing_netns_is_not_found_and_nothing_created(nl: Netlink) -> None:
    missing = netns_path(unique("tvx"))
    with pytest.raises(NetnsNotFound):
        nl.get_link("lo", missing)
    opener = NsOpener()
    try:
        with pytest.raises(FileNotFoundError):
            opener.open(missing)
        with pytest.raises(OSError, match="not a network namespace"):
            opener.open("/etc/hostname")
    finally:
        opener.close()
    assert not os.path.exists(missing)


def test_opener_sockets_serve_link_addr_route_neigh(
    nl: Netlink, make_netns: Callable[[str], str]
) -> None:
    ns = make_netns("tvc")
    path = netns_path(ns)
    host_if = unique("tvh", 8)
    try:
        pair = nl.ensure_veth_into_netns(host_if, "eth0", path, mac="02:42:0a:63:00:02",
                                         mtu=MTU)
        assert nl.opener_pid is not None  # the container end was read through the opener
        assert pair.changed > 0 and pair.peer.name == "eth0"
        assert {link.name for link in nl.list_links(netns=path)} == {"lo", "eth0"}
        nl.ensure_address(pair.peer, "10.99.0.2", 24, path)
        nl.ensure_default_route("10.99.0.1", pair.peer, path)
        nl.ensure_arp_retrans(pair.peer, 100, path)
        nl._ipr(path).neigh("add", ifindex=pair.peer.index, dst="10.99.0.9",
                            lladdr="02:42:0a:63:00:09", state=0x80)
        assert "10.99.0.2/24" in in_netns(ns, "ip", "-o", "addr", "show", "dev", "eth0").stdout
        route = in_netns(ns, "ip", "route", "show", "default").stdout
        assert f"default via 10.99.0.1 dev eth0 proto {RTPROT_NETD}" in route
        neigh = in_netns(ns, "ip", "neigh", "show", "dev", "eth0").stdout
        assert "10.99.0.9 lladdr 02:42:0a:63:00:09 PERMANENT" in neigh
        retrans = in_netns(ns, "cat", "/proc/sys/net/ipv4/neigh/eth0/retrans_time_ms").stdout
        assert retrans.strip() == "100"
    finally:
        nl.delete_link(host_if)


def test_opener_outlives_the_thread_that_used_it_first_and_exits_when_closed(
    make_netns: Callable[[str], str],
) -> None:
    """An API request thread may be the opener's first user: its end must not take the
    opener down (it is spawned from a long-lived thread), Netlink.close does."""
    path = netns_path(make_netns("tvc"))
    nl = Netlink()
    try:
        worker = threading.Thread(target=nl.get_link, args=("lo", path))
        worker.start()
        worker.join()
        first = nl.opener_pid
        assert first is not None
        assert not opener_gone(first, timeout=0.5)
        assert nl.get_link("lo", path) is not None
        assert nl.opener_pid == first
    finally:
        nl.close()
    assert opener_gone(first)


_HOLD_OPENER = """
import sys, time
from netd.netlink import Netlink
nl = Netlink()
nl.get_link("lo", sys.argv[1])
print(nl.opener_pid, flush=True)
time.sleep(60)
"""


def test_opener_dies_with_its_parent(make_netns: Callable[[str], str]) -> None:
    path = netns_path(make_netns("tvc"))
    parent = subprocess.Popen([sys.executable, "-c", _HOLD_OPENER, path], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        assert not opener_gone(pid, timeout=0.2)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert opener_gone(pid)
    finally:
        parent.kill()
        parent.wait()


def fd_count(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_opener_leaks_no_fds_over_many_opens(
    nl: Netlink, make_netns: Callable[[str], str]
) -> None:
    path = netns_path(make_netns("tvc"))
    nl.get_link("lo", path)
    nl.close_netns(path)
    assert nl.opener_pid is not None
    gc.collect()  # earlier tests' garbage must not close fds during the count
    mine, theirs = fd_count(), fd_count(nl.opener_pid)
    for _ in range(200):
        assert nl.get_link("lo", path) is not None
        nl.close_netns(path)
    gc.collect()
    assert fd_count() <= mine  # a leak would show as up to 200 more
    assert fd_count(nl.opener_pid) == theirs

# -- two hosts ----------------------------------------------------------------------

_APPLY = """
import json, sys
from netd.model import Endpoint, Host, Network
from netd.plugin import HostState, NetworkState
from tests.support.drivers import weave_driver
spec = json.load(sys.stdin)
host = Host.from_dict(spec["host"])
networks = {}
for n in spec["networks"]:
    net = Network.from_dict(n["network"])
    networks[net.name] = NetworkState(
        network=net,
        local=tuple(Endpoint.from_dict(e) for e in n["local"]),
        remote=tuple(Endpoint.from_dict(e) for e in n["remote"]),
        peers=tuple(Host.from_dict(h) for h in n["peers"]),
    )
hosts = {h["name"]: Host.from_dict(h) for h in spec["hosts"]}
driver = weave_driver(host=host)
desired = HostState(host=host, networks=networks, hosts=hosts)
report = driver.apply(desired, sweep=spec["sweep"], verify=True)
driver.close()
print(json.dumps({"errors": report.errors, "changed": report.changed}))
"""


def apply_in(host_ns: str, desired: HostState, sweep: bool) -> dict[str, object]:
    """Run one driver apply as its own process inside `host_ns`."""
    spec = {
        "host": desired.host.to_dict(),
        "hosts": [h.to_dict() for h in desired.hosts.values()],
        "sweep": sweep,
        "networks": [
            {
                "network": ns.network.to_dict(),
                "local": [e.to_dict() for e in ns.local],
                "remote": [e.to_dict() for e in ns.remote],
                "peers": [h.to_dict() for h in ns.peers],
            }
            for ns in desired.networks.values()
        ],
    }
    done = subprocess.run(
        ["nsenter", f"--net={netns_path(host_ns)}", sys.executable, "-c", _APPLY],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_two_hosts_talk_over_vxlan_and_sweep_cleans_a_host(
    make_netns: Callable[[str], str],
) -> None:
    ha, hb = make_netns("twh"), make_netns("twh")
    ua, ub = unique("twu"), unique("twu")
    subprocess.run(
        ["ip", "link", "add", ua, "netns", ha, "type", "veth", "peer", "name", ub, "netns", hb],
        check=True,
    )
    for ns, dev, ip in ((ha, ua, "172.31.254.1"), (hb, ub, "172.31.254.2")):
        in_netns(ns, "ip", "addr", "add", f"{ip}/24", "dev", dev)
        in_netns(ns, "ip", "link", "set", dev, "up")
    host_a = Host(name="twA", underlay_ip="172.31.254.1")
    host_b = Host(name="twB", underlay_ip="172.31.254.2")
    net = network(4242, mtu=1450)
    ca, cb = make_netns("twc"), make_netns("twc")
    ep_a = endpoint(net, "a", host_a.name, netns_path(ca), 10)
    ep_b = endpoint(net, "b", host_b.name, netns_path(cb), 11)
    on_a = state(net, [ep_a], remote=(ep_b,), peers=(host_b,), host=host_a)
    on_b = state(net, [ep_b], remote=(ep_a,), peers=(host_a,), host=host_b)

    assert apply_in(ha, on_a, sweep=True)["errors"] == {}
    assert apply_in(hb, on_b, sweep=True)["errors"] == {}
    assert ping(ca, ep_b.ip) and ping(cb, ep_a.ip)
    assert ping(ca, ep_b.ip, size=1450 - 28)  # full network MTU fits the 1500 underlay
    assert apply_in(ha, on_a, sweep=True) == {"errors": {}, "changed": 0}

    empty = HostState(host=host_a, networks={}, hosts={})
    assert apply_in(ha, empty, sweep=True)["errors"] == {}
    left = in_netns(ha, "ip", "-o", "link").stdout
    assert "ndb" not in left and "ndv" not in left and "ndh" not in left
    assert ua in left  # not netd's: untouched
    assert not ping(cb, ep_a.ip)


def test_detaching_the_default_route_network_moves_the_route(
    driver: WeaveDriver, make_netns: Callable[[str], str], vni: int
) -> None:
    """A container on two networks loses its default route with the first one's veth;
    the next apply must give it one via the remaining network."""
    first, second = network(vni), network(vni + 1)
    c = make_netns("twr")
    on_first = endpoint(first, "r", LOCAL.name, netns_path(c), 10)
    on_second = replace(endpoint(second, "r", LOCAL.name, netns_path(c), 10), ifname="eth1")

    def both(*eps: Endpoint) -> HostState:
        nets = {}
        for ep in eps:
            net = first if ep.network == first.name else second
            nets[net.name] = NetworkState(network=net, local=(ep,), remote=(), peers=())
        return HostState(host=LOCAL, networks=nets, hosts={LOCAL.name: LOCAL})

    try:
        ok(driver.apply(both(on_first, on_second), sweep=False, verify=True))
        route = in_netns(c, "ip", "route", "show", "default").stdout
        assert f"via {first.gateway} dev eth0" in route
        ok(driver.apply(both(on_second), sweep=False, verify=False))
        route = in_netns(c, "ip", "route", "show", "default").stdout
        assert f"via {second.gateway} dev eth1" in route, route
    finally:
        remove_links(driver, vni, vni + 1)
