"""The weave driver's sleeve backend: real TAPs, bridges, veths, UDP and netd daemons.

In-process tests run the driver in the root netns with a random VNI (unique link names)
and a random sleeve port on 127.0.0.1, and remove their links by name afterwards; they
never sweep. The two-host tests use the lab harness: two host namespaces running real
netd daemons against etcd, containers on both, real pings over the sleeve overlay.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from netd.lab import Lab, ns_exec, run
from netd.model import Endpoint, Host, Network, mac_from_ip, network_mtu
from netd.netlink import Netlink
from netd.plugin import ApplyReport, HostState, NetworkState
from netd.plumbing import tap
from plugins.weave.driver import WeaveDriver
from plugins.weave.names import bridge_name, host_veth_name, tap_name
from tests.functional.conftest import in_netns, netns_path
from tests.support.drivers import weave_backend, weave_driver

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not Path("/dev/net/tun").exists(), reason="no /dev/net/tun"),
]

LOCAL = Host(name="tah-local", underlay_ip="127.0.0.1")
MTU = 1400


def ok(report: ApplyReport) -> ApplyReport:
    assert report.errors == {}
    return report


def ping(ns: str, ip: str) -> bool:
    cmd = ["ping", "-c1", "-W1", "-n", ip]
    return any(in_netns(ns, *cmd, check=False).returncode == 0 for _ in range(3))


def link_details(name: str, netns: str | None = None) -> str:
    cmd = ["ip", "-d", "-o", "link", "show", "dev", name]
    full = ns_exec(netns, *cmd) if netns else cmd
    return run(full, check=False).stdout


# -- one host, driver in this process ----------------------------------------------------


@pytest.fixture
def vni() -> int:
    return 16_000_000 + secrets.randbelow(700_000)


@pytest.fixture
def sleeve_net(vni: int) -> Network:
    third = vni % 200
    return Network(
        name=f"tanet{vni}", subnet=f"10.{third}.9.0/24", gateway=f"10.{third}.9.1",
        vni=vni, mtu=MTU, backend="sleeve",
    )


@pytest.fixture
def cleanup_links(vni: int) -> Iterator[list[WeaveDriver]]:
    """Drivers the test makes are closed, and this VNI's TAP/bridge and their veths
    removed by name, whatever the test did."""
    drivers: list[WeaveDriver] = []
    yield drivers
    named: set[str] = set()
    for drv in drivers:
        named |= {name for name, _ in drv._delta.links.applied_items()}
        drv.close()
    nl = Netlink()
    for name in sorted(named):
        if name.startswith("ndh"):
            nl.delete_link(name)
    tap.delete_tap(tap_name(vni))
    nl.delete_link(bridge_name(vni))
    nl.close()


def local_state(net: Network, eps: list[Endpoint]) -> HostState:
    ns = NetworkState(network=net, local=tuple(eps), remote=(), peers=())
    return HostState(host=LOCAL, networks={net.name: ns}, hosts={LOCAL.name: LOCAL})


def local_endpoint(net: Network, name: str, netns: str, last: int) -> Endpoint:
    ip = net.subnet.rsplit(".", 1)[0] + f".{last}"
    return Endpoint(network=net.name, name=name, container=name, netns=netns,
                    host=LOCAL.name, ifname="eth0", ip=ip, mac=mac_from_ip(ip))


def test_sleeve_network_tap_on_bridge_repaired_by_verify_and_adopted(
    sleeve_net: Network, vni: int, make_netns: Callable[[str], str],
    cleanup_links: list[WeaveDriver],
) -> None:
    port = 20_000 + secrets.randbelow(30_000)
    driver = weave_driver(host=LOCAL, sleeve_port=port)
    cleanup_links.append(driver)
    assert driver.setup() == {"vtep": "127.0.0.1", "sleeve_port": port}
    a, b = make_netns("tac"), make_netns("tac")
    ep_a = local_endpoint(sleeve_net, "a", netns_path(a), 10)
    ep_b = local_endpoint(sleeve_net, "b", netns_path(b), 11)
    desired = local_state(sleeve_net, [ep_a, ep_b])
    nl = Netlink()
    try:
        assert ok(driver.apply(desired, sweep=False, verify=True)).changed > 0
        assert ping(a, ep_b.ip)
        tp, br = nl.get_link(tap_name(vni)), nl.get_link(bridge_name(vni))
        assert tp is not None and br is not None
        assert (tp.kind, tp.master, tp.mtu, tp.up) == ("tun", br.index, MTU, True)
        for name in (tap_name(vni), bridge_name(vni), host_veth_name(sleeve_net.name, "a")):
            assert "addrgenmode none" in link_details(name), name
        assert driver.observe()["sleeve"]["networks"][str(vni)]["running"]
        assert ok(driver.apply(desired, sweep=False, verify=True)).changed == 0

        subprocess.run(["ip", "link", "del", tap_name(vni)], check=True)  # behind netd's back
        assert ok(driver.apply(desired, sweep=False, verify=False)).changed == 0
        assert nl.get_link(tap_name(vni)) is None
        assert ok(driver.apply(desired, sweep=False, verify=True)).changed > 0
        tp = nl.get_link(tap_name(vni))
        assert tp is not None and tp.master == br.index and tp.up
        assert driver.observe()["sleeve"]["networks"][str(vni)]["running"]

        driver.close()  # a daemon stopping leaves the TAP; the next one adopts it
        assert nl.get_link(tap_name(vni)) == tp
        again = weave_driver(host=LOCAL, sleeve_port=port)
        cleanup_links.append(again)
        again.setup()
        assert ok(again.apply(desired, sweep=False, verify=True)).changed == 0
        assert nl.get_link(tap_name(vni)) == tp
        assert again.observe()["sleeve"]["networks"][str(vni)]["running"]

        ok(again.apply(HostState(host=LOCAL, networks={}, hosts={}), sweep=False, verify=False))
        assert nl.get_link(tap_name(vni)) is None and nl.get_link(bridge_name(vni)) is None
    finally:
        nl.close()


def test_encrypted_network_without_key_is_refused(
    sleeve_net: Network, make_netns: Callable[[str], str], cleanup_links: list[WeaveDriver],
) -> None:
    driver = weave_driver(host=LOCAL, sleeve_port=20_000 + secrets.randbelow(30_000))
    cleanup_links.append(driver)
    driver.setup()
    net = Network(**{**sleeve_net.to_dict(), "encrypt": True})
    ep = local_endpoint(net, "a", netns_path(make_netns("tac")), 10)
    report = driver.apply(local_state(net, [ep]), sweep=False, verify=True)
    assert "key is missing" in report.errors[f"network:{net.name}"]
    assert f"endpoint:{net.name}/a" in report.errors


# -- two hosts, real netd daemons ----------------------------------------------------------


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(hosts=2, store="etcd", prefix=f"ta{secrets.token_hex(2)}",
             resync_interval=2.0) as lab:
        yield lab


def vni_of_network(lab: Lab, name: str) -> int:
    return int(lab.netctl_json("h1", "network", "inspect", name)["vni"])


def ifindex(lab: Lab, host: str, name: str) -> int:
    out = run(ns_exec(lab.hosts[host].netns, "ip", "-o", "link", "show", "dev", name),
              check=False).stdout
    return int(out.split(":", 1)[0]) if out else 0


def packet_hex(tcpdump_x: str) -> str:
    """The bytes of the packets in `tcpdump -x` output as one hex string."""
    lines = [ln.split(":", 1)[1] for ln in tcpdump_x.splitlines() if ln.strip().startswith("0x")]
    return "".join("".join(lines).split())


def wait_for(check: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.etcd
@pytest.mark.parametrize("encrypt", [False, True], ids=["plain", "encrypted"])
def test_two_hosts_ping_over_sleeve(lab: Lab, encrypt: bool) -> None:
    name, subnet = ("slenc", "10.41.0.0/24") if encrypt else ("slplain", "10.40.0.0/24")
    base = subnet.rsplit(".", 2)[0]
    args = ["--encrypt"] if encrypt else []
    lab.netctl("h1", "network", "create", name, "--subnet", subnet,
               "--backend", "sleeve", *args)
    mtu = int(lab.netctl_json("h1", "network", "inspect", name)["mtu"])
    assert mtu == network_mtu(weave_backend("sleeve"), 1500, encrypt)
    a = lab.add_container("h1", f"{name}a")
    b = lab.add_container("h2", f"{name}b")
    lab.netctl("h1", "attach", a, "--network", name, "--ip", f"{base}.0.10")
    lab.netctl("h2", "attach", b, "--network", name, "--ip", f"{base}.0.11")
    vni = vni_of_network(lab, name)
    try:
        assert lab.wait_ping(a, f"{base}.0.11") and lab.wait_ping(b, f"{base}.0.10")
        full = lab.ping(b, f"{base}.0.10", size=mtu - 28, dont_fragment=True, count=2)
        assert full.returncode == 0, full.stdout + full.stderr
        over = lab.in_container(b, "ping", "-n", "-c1", "-W1", "-M", "do", "-s",
                                str(mtu - 27), f"{base}.0.10")  # no -q: it hides the error
        assert over.returncode != 0 and "message too long" in (over.stdout + over.stderr)

        for host in ("h1", "h2"):
            details = link_details(tap_name(vni), lab.hosts[host].netns)
            assert f"master {bridge_name(vni)}" in details and f"mtu {mtu}" in details
            assert "addrgenmode none" in details
            assert lab.netctl_json(host, "status")["errors"] == {}

        # the underlay carries UDP 6784 between the hosts; encrypted hides the inner IP
        dump = subprocess.Popen(
            ns_exec(lab.hosts["h2"].netns, "tcpdump", "--immediate-mode", "-c", "4", "-n",
                    "-x", "-i", "ul0", "udp", "port", "6784"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            assert dump.stderr is not None
            dump.stderr.readline()  # "listening on ul0 ...": the capture is running
            lab.ping(a, f"{base}.0.11", count=4, interval=0.2)
            out, _ = dump.communicate(timeout=10)
        finally:
            if dump.poll() is None:
                dump.kill()
                dump.wait()
        h1_ip, h2_ip = lab.hosts["h1"].underlay_ip, lab.hosts["h2"].underlay_ip
        assert f"{h1_ip}.6784 > {h2_ip}.6784" in out, out
        inner = "0a29000a" if encrypt else "0a28000a"  # 10.4x.0.10, the inner source
        assert (inner in packet_hex(out)) != encrypt, out

        # netd restart: the TAP is adopted (same ifindex) and traffic resumes
        before = ifindex(lab, "h1", tap_name(vni))
        lab.stop_netd("h1")
        assert ifindex(lab, "h1", tap_name(vni)) == before  # the TAP outlives the daemon
        lab.start_netd("h1")
        assert lab.wait_ping(b, f"{base}.0.10", timeout=20)
        assert ifindex(lab, "h1", tap_name(vni)) == before
    finally:
        lab.netctl("h1", "detach", a, "--network", name, check=False)
        lab.netctl("h2", "detach", b, "--network", name, check=False)
    assert wait_for(lambda: ifindex(lab, "h1", tap_name(vni)) == 0)
    assert wait_for(lambda: ifindex(lab, "h2", bridge_name(vni)) == 0)
    lab.netctl("h1", "network", "rm", name)


@pytest.mark.etcd
def test_links_deleted_behind_netds_back_are_repaired_by_resync(lab: Lab) -> None:
    lab.netctl("h1", "network", "create", "slfix", "--subnet", "10.42.0.0/24",
               "--backend", "sleeve")
    a = lab.add_container("h1", "slfixa")
    b = lab.add_container("h2", "slfixb")
    lab.netctl("h1", "attach", a, "--network", "slfix", "--ip", "10.42.0.10")
    lab.netctl("h2", "attach", b, "--network", "slfix", "--ip", "10.42.0.11")
    vni = vni_of_network(lab, "slfix")
    h1 = lab.hosts["h1"].netns
    try:
        assert lab.wait_ping(a, "10.42.0.11")
        veth = host_veth_name("slfix", a)
        before = (ifindex(lab, "h1", tap_name(vni)), ifindex(lab, "h1", veth))
        run(ns_exec(h1, "ip", "link", "del", tap_name(vni)))
        run(ns_exec(h1, "ip", "link", "del", veth))
        # the periodic resync (verify=True, every 2 s in this lab) rebuilds both
        assert wait_for(lambda: ifindex(lab, "h1", tap_name(vni)) not in (0, before[0])
                        and ifindex(lab, "h1", veth) not in (0, before[1]))
        assert lab.wait_ping(b, "10.42.0.10", timeout=15)
    finally:
        lab.netctl("h1", "detach", a, "--network", "slfix", check=False)
        lab.netctl("h2", "detach", b, "--network", "slfix", check=False)
    lab.netctl("h1", "network", "rm", "slfix")
