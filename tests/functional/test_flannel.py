"""Multi-host acceptance of the flannel driver: three simulated hosts, real etcd, real
netd processes, real packets, flannel's own etcd schema checked with etcdctl.

One lab per module (etcd and three daemons take seconds to start); each test makes its
own networks (distinct subnets and prefixes) and containers. Leases in these tests live
`LEASE_TTL` seconds so a host gone for good drops out quickly.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from netd.lab import Lab, ns_exec, run
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.root, pytest.mark.etcd]

HOSTS = ("h1", "h2", "h3")
LEASE_TTL = 6


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(hosts=len(HOSTS), store="etcd", host_ttl=3,
             prefix=f"fl{secrets.token_hex(2)}") as lab:
        yield lab


# --- helpers ---------------------------------------------------------------------------
def host_cmd(lab: Lab, host: str, *cmd: str) -> str:
    return run(ns_exec(lab.hosts[host].netns, *cmd), check=False).stdout


def etcd_get(lab: Lab, prefix: str) -> dict[str, Any]:
    """Every key under `prefix` with its JSON value, as etcdctl shows them."""
    out = lab.etcdctl("m1", "get", "--prefix", prefix, "-w", "json").stdout
    kvs = json.loads(out).get("kvs", [])
    return {base64.b64decode(kv["key"]).decode(): json.loads(base64.b64decode(kv["value"]))
            for kv in kvs}


def subnets(lab: Lab, prefix: str) -> dict[str, dict[str, Any]]:
    """Subnet (CIDR) -> lease value under <prefix>/subnets/."""
    out = {}
    for key, value in etcd_get(lab, f"{prefix}/subnets/").items():
        ip, _, plen = key.rsplit("/", 1)[1].partition("-")
        out[f"{ip}/{plen}"] = value
    return out


def create(lab: Lab, name: str, subnet: str, backend: str, *opts: str) -> dict[str, Any]:
    args = ["network", "create", name, "--subnet", subnet, "--driver", "flannel",
            "--backend", backend]
    if backend == "vxlan":  # one VNI per vxlan network on port 8472 (1: the flanneld one)
        opts = (f"vni={subnet.split('.')[1]}", *opts)
    for opt in (f"lease_ttl={LEASE_TTL}", *opts):
        args += ["-o", opt]
    return dict(lab.netctl_json("h1", *args))


def attach(lab: Lab, host: str, container: str, network: str, *extra: str) -> dict[str, Any]:
    netns = lab.add_container(host, container)
    return dict(lab.netctl_json(host, "attach", netns, "--network", network, *extra))


def container_of(lab: Lab, name: str) -> str:
    return f"{lab.prefix}-{name}"


def underlay_ip(lab: Lab, host: str) -> str:
    return lab.hosts[host].underlay_ip


def mesh(lab: Lab, network: str, tag: str) -> dict[str, dict[str, Any]]:
    """One container per host attached to `network`: host -> endpoint."""
    return {h: attach(lab, h, f"{tag}{h}", network) for h in HOSTS}


def check_mesh(lab: Lab, eps: dict[str, dict[str, Any]], tag: str) -> None:
    for src in HOSTS:
        for dst in HOSTS:
            if src != dst:
                ok = lab.wait_ping(container_of(lab, f"{tag}{src}"), eps[dst]["ip"], 10)
                assert ok, f"{src} -> {dst} ({eps[dst]['ip']})"


def tcp_echo(lab: Lab, server: str, client: str, ip: str, port: int = 7777) -> str:
    """One TCP exchange from `client` to `server`'s `ip`: what the client received."""
    listener = subprocess.Popen(
        ns_exec(server, "python3", "-c",
                "import socket;s=socket.socket();"
                "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
                f"s.bind(('0.0.0.0',{port}));s.listen(1);c,_=s.accept();"
                "c.sendall(c.recv(100).upper());c.close()"))
    try:
        for _ in range(50):
            got = lab.in_container(
                client, "python3", "-c",
                "import socket,sys;c=socket.create_connection((sys.argv[1],int(sys.argv[2])),2);"
                "c.sendall(b'flannel');print(c.recv(100).decode())", ip, str(port))
            if got.returncode == 0:
                return got.stdout.strip()
            time.sleep(0.1)
        return ""
    finally:
        listener.kill()
        listener.wait()


def df_ping(lab: Lab, netns: str, ip: str, mtu: int) -> tuple[bool, bool]:
    """(a packet of exactly `mtu` with DF crosses, one byte more is refused)."""
    fits = lab.ping(netns, ip, count=2, size=mtu - 28, dont_fragment=True).returncode == 0
    over = lab.ping(netns, ip, count=1, size=mtu - 27, dont_fragment=True).returncode == 0
    return fits, over


# --- tests -----------------------------------------------------------------------------
@pytest.mark.parametrize("backend,octet,overhead", [("vxlan", 71, 50), ("host-gw", 72, 0),
                                                     ("udp", 73, 28)])
def test_three_hosts_lease_route_and_talk(lab: Lab, backend: str, octet: int,
                                          overhead: int) -> None:
    name = f"fl{backend.replace('-', '')}"
    net = create(lab, name, f"10.{octet}.0.0/16", backend)
    assert net["mtu"] == 1500 - overhead
    prefix = net["options"]["prefix"]
    assert prefix == f"/netd/flannel/{name}"
    eps = mesh(lab, name, backend[:2])
    # flannel's exact JSON in etcd
    config = etcd_get(lab, f"{prefix}/config")[f"{prefix}/config"]
    assert config["Network"] == f"10.{octet}.0.0/16" and config["SubnetLen"] == 24
    assert config["Backend"]["Type"] == backend
    leases = subnets(lab, prefix)
    assert len(leases) == 3
    by_host = {v["PublicIP"]: s for s, v in leases.items()}
    for h in HOSTS:
        value = leases[by_host[underlay_ip(lab, h)]]
        assert set(value) >= {"PublicIP", "PublicIPv6", "BackendType"}
        assert value["BackendType"] == backend
        if backend == "vxlan":
            assert value["BackendData"]["VNI"] == octet
            assert len(value["BackendData"]["VtepMAC"]) == 17
        # each container's address comes from its host's lease
        own = ipaddress.ip_network(by_host[underlay_ip(lab, h)])
        assert ipaddress.ip_address(eps[h]["ip"]) in own
    tag = backend[:2]
    check_mesh(lab, eps, tag)
    got = tcp_echo(lab, container_of(lab, f"{tag}h3"), container_of(lab, f"{tag}h1"),
                   eps["h3"]["ip"])
    assert got == "FLANNEL"
    fits, over = df_ping(lab, container_of(lab, f"{backend[:2]}h1"), eps["h2"]["ip"], net["mtu"])
    assert fits and not over
    # routes carry netd's protocol
    routes = host_cmd(lab, "h1", "ip", "route", "show", "proto", "91")
    other = by_host[underlay_ip(lab, "h2")]
    if backend == "vxlan":
        assert f"{other} via {other.split('/')[0]} dev " in routes and "onlink" in routes
        mac = leases[other]["BackendData"]["VtepMAC"]
        dev = next(line.split()[1].rstrip(":") for line in
                   host_cmd(lab, "h1", "ip", "-o", "link", "show", "type", "vxlan").splitlines())
        assert f"{other.split('/')[0]} lladdr {mac} PERMANENT" in host_cmd(
            lab, "h1", "ip", "neigh", "show", "dev", dev)
        assert f"{mac} dst {underlay_ip(lab, 'h2')}" in host_cmd(
            lab, "h1", "bridge", "fdb", "show", "dev", dev)
        assert "dstport 8472" in host_cmd(lab, "h1", "ip", "-d", "link", "show", dev)
    elif backend == "host-gw":
        assert f"{other} via {underlay_ip(lab, 'h2')} dev ul0" in routes
        # a peer that is not on-link: a clear error for its lease, nothing written
        off = f"10.{octet}.250.0/24"
        lease = put_leased(lab, f"{prefix}/subnets/10.{octet}.250.0-24", json.dumps(
            {"PublicIP": "198.51.100.7", "PublicIPv6": None, "BackendType": "host-gw"}))

        def error() -> str:
            return str(lab.netctl_json("h1", "status")["errors"].get(f"lease:{name}/{off}", ""))

        assert wait_until(lambda: "198.51.100.7 (subnet" in error(), 5)
        assert "is not on-link" in error()
        assert off not in host_cmd(lab, "h1", "ip", "route")
        assert host_cmd(lab, "h1", "ip", "route", "show", "proto", "91") == routes
        assert lab.etcdctl("m1", "lease", "revoke", lease).returncode == 0
        assert wait_until(lambda: error() == "", 5)
    else:
        assert f"10.{octet}.0.0/16 dev " in routes


COREOS = "/coreos.com/network"
FLANNELD_MAC = "0e:aa:bb:cc:dd:01"


def put_leased(lab: Lab, key: str, value: str, ttl: int = 60) -> str:
    """Write `key` under a new etcd lease, as flanneld does; returns the lease id (hex)."""
    out = lab.etcdctl("m1", "lease", "grant", str(ttl)).stdout
    lease = out.split()[1]
    assert lab.etcdctl("m1", "put", "--lease", lease, key, value).returncode == 0
    return lease


def put_leased_at(lab: Lab, key: str, value: str, ttl: int = 60) -> tuple[str, float]:
    """put_leased, and the wall clock just before the put started."""
    out = lab.etcdctl("m1", "lease", "grant", str(ttl)).stdout
    lease = out.split()[1]
    started = time.time()
    assert lab.etcdctl("m1", "put", "--lease", lease, key, value).returncode == 0
    return lease, started


class RouteMonitor:
    """`ip -ts monitor route` in every host: when each route change reached its kernel."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.files: dict[str, Any] = {}
        self.text: dict[str, str] = {}

    def __enter__(self) -> RouteMonitor:
        for h in HOSTS:
            self.files[h] = open(self.lab.dir / f"routes-{h}.log", "w+")
            self.procs[h] = subprocess.Popen(
                ns_exec(self.lab.hosts[h].netns, "ip", "-ts", "monitor", "route"),
                stdout=self.files[h], stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        return self

    def __exit__(self, *exc: object) -> None:
        for h, proc in self.procs.items():
            proc.terminate()
            proc.wait()
            self.files[h].seek(0)
            self.text[h] = self.files[h].read()
            self.files[h].close()

    def first(self, host: str, what: str) -> float:
        for line in self.text[host].splitlines():
            if what in line and not line.split("] ", 1)[-1].startswith("Deleted"):
                stamp = line[1:line.index("]")]
                return datetime.fromisoformat(stamp).timestamp()
        raise AssertionError(f"{host}: no route event with {what!r}")


def fake_flanneld_host(lab: Lab, subnet: str, netd_leases: dict[str, dict[str, Any]]) -> str:
    """A host on the underlay programmed exactly as flanneld's vxlan backend programs
    one: flannel.1 (VNI 1, port 8472, nolearning) with <subnet>.0/32 and VtepMAC, a
    bridge holding <subnet>.1, and per netd lease the neighbour, FDB entry and onlink
    route. Returns its netns."""
    host = lab.add_host("h4")
    base = subnet.split("/")[0]
    gw = str(ipaddress.ip_address(base) + 1)
    cmds = [
        ["ip", "link", "add", "flannel.1", "type", "vxlan", "id", "1", "dstport", "8472",
         "local", host.underlay_ip, "nolearning"],
        ["ip", "link", "set", "flannel.1", "address", FLANNELD_MAC, "mtu", "1450", "up"],
        ["ip", "addr", "add", f"{base}/32", "dev", "flannel.1"],
        ["ip", "link", "add", "cni0", "type", "bridge"],
        ["ip", "addr", "add", f"{gw}/24", "dev", "cni0"],
        ["ip", "link", "set", "cni0", "up"],
    ]
    for other, value in netd_leases.items():
        other_base = other.split("/")[0]
        mac = value["BackendData"]["VtepMAC"]
        cmds += [
            ["ip", "neigh", "replace", other_base, "lladdr", mac, "dev", "flannel.1", "nud",
             "permanent"],
            ["bridge", "fdb", "append", mac, "dev", "flannel.1", "dst", value["PublicIP"]],
            ["ip", "route", "replace", other, "via", other_base, "dev", "flannel.1", "onlink"],
        ]
    for cmd in cmds:
        run(ns_exec(host.netns, *cmd))
    return host.netns


def test_adopts_flanneld_config_refuses_conflicts_and_interoperates(lab: Lab) -> None:
    config = {"Network": "10.80.0.0/16", "Backend": {"Type": "vxlan"}}
    assert lab.etcdctl("m1", "put", f"{COREOS}/config", json.dumps(config)).returncode == 0
    base = ["network", "create", "flcoreos", "--driver", "flannel", "-o", f"prefix={COREOS}",
            "-o", f"lease_ttl={LEASE_TTL}"]
    refused = lab.netctl("h1", *base, "--subnet", "10.81.0.0/16", check=False)
    assert refused.returncode != 0 and "has Network 10.80.0.0/16" in refused.stderr
    refused = lab.netctl("h1", *base, "--subnet", "10.80.0.0/16", "--backend", "host-gw",
                         check=False)
    assert refused.returncode != 0 and "Backend.Type vxlan" in refused.stderr
    refused = lab.netctl("h1", *base, "--subnet", "10.80.0.0/16", "-o", "vni=2", check=False)
    assert refused.returncode != 0 and "vni" in refused.stderr
    names = [n["name"] for n in lab.netctl_json("h1", "network", "ls")]
    assert "flcoreos" not in names
    assert etcd_get(lab, f"{COREOS}/config")[f"{COREOS}/config"] == config  # untouched
    net = lab.netctl_json("h1", *base, "--subnet", "10.80.0.0/16")
    assert net["options"]["vni"] == "1" and net["options"]["port"] == "8472"
    assert net["options"]["subnet_min"] == "10.80.1.0"
    eps = mesh(lab, "flcoreos", "co")
    check_mesh(lab, eps, "co")
    leases = subnets(lab, COREOS)

    # a host running flanneld: its lease planted as flanneld writes it
    netns = fake_flanneld_host(lab, "10.80.250.0/24", leases)
    value = json.dumps({"PublicIP": lab.hosts["h4"].underlay_ip, "PublicIPv6": None,
                        "BackendType": "vxlan",
                        "BackendData": {"VNI": 1, "VtepMAC": FLANNELD_MAC}})
    with RouteMonitor(lab) as monitor:
        lease, planted = put_leased_at(lab, f"{COREOS}/subnets/10.80.250.0-24", value)

        def programmed(h: str) -> bool:
            routes = host_cmd(lab, h, "ip", "route", "show", "proto", "91")
            return "10.80.250.0/24 via 10.80.250.0" in routes

        for h in HOSTS:
            assert wait_until(lambda h=h: programmed(h), 5), f"{h} did not program the lease"
    for h in HOSTS:  # the kernel's own timestamps, from before etcdctl put started
        delay = monitor.first(h, "10.80.250.0/24 via 10.80.250.0") - planted
        assert delay < 1.0, f"{h} programmed the planted lease {delay:.2f} s after the put"
    # both ways: netd containers reach the flanneld host's bridge and it answers
    for h in HOSTS:
        assert lab.wait_ping(container_of(lab, f"co{h}"), "10.80.250.1", 5), h
    assert lab.ping(netns, eps["h2"]["ip"], count=2).returncode == 0

    assert lab.etcdctl("m1", "lease", "revoke", lease).returncode == 0
    revoked = time.monotonic()
    for h in HOSTS:
        assert wait_until(lambda h=h: not programmed(h), 5), f"{h} kept the revoked lease"
        assert FLANNELD_MAC not in host_cmd(lab, h, "bridge", "fdb", "show")
        assert "10.80.250.0 " not in host_cmd(lab, h, "ip", "neigh", "show")
    assert time.monotonic() - revoked < 1.5


def test_host_gone_for_good_is_removed_and_comes_back_on_its_subnet(lab: Lab) -> None:
    net = create(lab, "flgone", "10.74.0.0/16", "vxlan")
    prefix = net["options"]["prefix"]
    eps = mesh(lab, "flgone", "go")
    check_mesh(lab, eps, "go")
    leases = subnets(lab, prefix)
    h3_subnet = next(s for s, v in leases.items() if v["PublicIP"] == underlay_ip(lab, "h3"))
    h3_mac = leases[h3_subnet]["BackendData"]["VtepMAC"]
    env = (lab.hosts["h3"].state_dir / "drivers" / "flannel" / "flgone.env").read_text()
    gw = str(ipaddress.ip_network(h3_subnet).network_address + 1)
    assert env == (f"FLANNEL_NETWORK=10.74.0.0/16\nFLANNEL_SUBNET={gw}/24\n"
                   f"FLANNEL_MTU={net['mtu']}\nFLANNEL_IPMASQ=false\n")
    lab.stop_netd("h3", kill=True)
    gone_at = time.monotonic()

    def forgotten(h: str) -> bool:
        return (h3_subnet not in host_cmd(lab, h, "ip", "route", "show", "proto", "91")
                and h3_mac not in host_cmd(lab, h, "bridge", "fdb", "show")
                and h3_mac not in host_cmd(lab, h, "ip", "neigh", "show"))

    for h in ("h1", "h2"):
        assert wait_until(lambda h=h: forgotten(h), LEASE_TTL + 10), h
    assert time.monotonic() - gone_at >= LEASE_TTL - 3.5  # removed by the expiry, not before
    assert h3_subnet not in subnets(lab, prefix)
    lab.start_netd("h3")
    # back on the subnet of its env file, the container keeps its address
    assert wait_until(lambda: h3_subnet in subnets(lab, prefix), 10)
    assert subnets(lab, prefix)[h3_subnet]["PublicIP"] == underlay_ip(lab, "h3")
    check_mesh(lab, eps, "go")


def test_sweep_on_start_removes_what_no_lease_wants(lab: Lab) -> None:
    create(lab, "flsweep", "10.75.0.0/16", "vxlan")
    eps = mesh(lab, "flsweep", "sw")
    check_mesh(lab, eps, "sw")
    dev = next(line.split()[1].rstrip(":") for line in
               host_cmd(lab, "h2", "ip", "-o", "link", "show", "type", "vxlan").splitlines()
               if "ndflv" in line and "10.75" in host_cmd(lab, "h2", "ip", "-o", "addr", "show",
                                                          line.split()[1].rstrip(":")))
    lab.stop_netd("h2")
    stale = [
        ["ip", "route", "add", "10.75.200.0/24", "via", "10.75.200.0", "dev", dev, "onlink",
         "proto", "91"],
        ["ip", "neigh", "add", "10.75.200.0", "lladdr", "0e:de:ad:00:00:01", "dev", dev,
         "nud", "permanent"],
        ["bridge", "fdb", "append", "0e:de:ad:00:00:01", "dev", dev, "dst", "10.99.99.99"],
    ]
    for cmd in stale:
        run(ns_exec(lab.hosts["h2"].netns, *cmd))
    foreign = ["ip", "route", "add", "192.0.2.0/24", "dev", "ul0", "proto", "static"]
    run(ns_exec(lab.hosts["h2"].netns, *foreign))
    lab.start_netd("h2")
    assert wait_until(lambda: "10.75.200.0" not in host_cmd(lab, "h2", "ip", "route") and
                      "0e:de:ad:00:00:01" not in host_cmd(lab, "h2", "bridge", "fdb", "show")
                      and "10.75.200.0 " not in host_cmd(lab, "h2", "ip", "neigh", "show"), 10)
    assert "192.0.2.0/24" in host_cmd(lab, "h2", "ip", "route")  # not netd's: left alone
    check_mesh(lab, eps, "sw")


@pytest.mark.parametrize("backend,octet", [("vxlan", 76), ("host-gw", 77)])
def test_kill_and_restart_keeps_subnet_addresses_and_every_packet(
    lab: Lab, backend: str, octet: int
) -> None:
    name = f"flkill{backend[:2]}"
    net = create(lab, name, f"10.{octet}.0.0/16", backend)
    tag = f"k{backend[:1]}"
    eps = mesh(lab, name, tag)
    check_mesh(lab, eps, tag)
    before = subnets(lab, net["options"]["prefix"])
    pinger = subprocess.Popen(
        ns_exec(container_of(lab, f"{tag}h1"), "ping", "-n", "-O", "-i", "0.05", "-c", "200",
                eps["h2"]["ip"]), stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    for h in ("h2", "h1"):
        lab.stop_netd(h, kill=True)
        lab.start_netd(h)
        time.sleep(1)
    out, _ = pinger.communicate(timeout=60)
    lost = [line for line in out.splitlines() if "no answer yet" in line]
    assert " 200 received" in out and " 0% packet loss" in out, (lost, out[-300:])
    assert subnets(lab, net["options"]["prefix"]) == before
    again = {ep["name"]: ep["ip"] for ep in lab.netctl_json("h1", "endpoint", "ls",
                                                            "--network", name)}
    assert again == {ep["name"]: ep["ip"] for ep in eps.values()}
    check_mesh(lab, eps, tag)


def test_fixed_ip_outside_the_local_lease_is_reachable_from_other_netd_hosts(lab: Lab) -> None:
    create(lab, "flfixed", "10.78.0.0/16", "vxlan")
    clash = lab.netctl("h1", "network", "create", "flclash", "--subnet", "10.79.0.0/16",
                       "--driver", "flannel", "-o", "vni=78", check=False)
    assert clash.returncode != 0 and "already uses VNI 78" in clash.stderr
    eps = mesh(lab, "flfixed", "fx")
    fixed = attach(lab, "h2", "fxfixed", "flfixed", "--ip", "10.78.0.50")
    assert fixed["ip"] == "10.78.0.50"
    for h in ("h1", "h3"):
        assert lab.wait_ping(container_of(lab, f"fx{h}"), "10.78.0.50", 10), h
    assert lab.wait_ping(container_of(lab, "fxfixed"), eps["h3"]["ip"], 10)
    # an address inside another host's lease is refused, nothing attached
    other = eps["h3"]["ip"].rsplit(".", 1)[0] + ".77"
    netns = lab.add_container("h2", "fxbad")
    refused = lab.netctl("h2", "attach", netns, "--network", "flfixed", "--ip", other,
                         check=False)
    assert refused.returncode != 0 and "leased by host" in refused.stderr


def test_a_lapsed_lease_is_written_again_on_the_same_subnet(lab: Lab) -> None:
    net = create(lab, "fllapse", "10.82.0.0/16", "vxlan")
    prefix = net["options"]["prefix"]
    eps = mesh(lab, "fllapse", "la")
    check_mesh(lab, eps, "la")
    mine = next(s for s, v in subnets(lab, prefix).items()
                if v["PublicIP"] == underlay_ip(lab, "h1"))
    key = f"{prefix}/subnets/{mine.replace('/', '-')}"
    out = json.loads(lab.etcdctl("m1", "get", key, "-w", "json").stdout)
    lease = out["kvs"][0]["lease"]
    # the etcd lease lapses under h1 (as after a store outage longer than its TTL)
    assert lab.etcdctl("m1", "lease", "revoke", f"{lease:x}").returncode == 0
    assert mine not in subnets(lab, prefix)
    # h1 is not renumbered: the same subnet, under a new lease, within a keepalive round
    assert wait_until(lambda: mine in subnets(lab, prefix), LEASE_TTL)
    assert subnets(lab, prefix)[mine]["PublicIP"] == underlay_ip(lab, "h1")
    again = json.loads(lab.etcdctl("m1", "get", key, "-w", "json").stdout)
    assert again["kvs"][0]["lease"] != lease
    check_mesh(lab, eps, "la")


def test_vxlan_direct_routing_uses_plain_routes_to_on_link_peers(lab: Lab) -> None:
    net = create(lab, "fldirect", "10.84.0.0/16", "vxlan", "direct_routing=true")
    assert net["options"]["direct_routing"] == "true"
    config = etcd_get(lab, f"{net['options']['prefix']}/config")
    assert next(iter(config.values()))["Backend"]["DirectRouting"] is True
    eps = mesh(lab, "fldirect", "dr")
    check_mesh(lab, eps, "dr")
    leases = subnets(lab, net["options"]["prefix"])
    h2_subnet = next(s for s, v in leases.items() if v["PublicIP"] == underlay_ip(lab, "h2"))
    routes = host_cmd(lab, "h1", "ip", "route", "show", "proto", "91")
    assert f"{h2_subnet} via {underlay_ip(lab, 'h2')} dev ul0" in routes
    mac = leases[h2_subnet]["BackendData"]["VtepMAC"]
    assert mac not in host_cmd(lab, "h1", "bridge", "fdb", "show")


UDP_PEER = r"""
import socket, struct, sys
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack(f"!{len(b)//2}H", b))
    s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, addr = s.recvfrom(65535)
    print(addr[0], addr[1], data.hex(), flush=True)
    hl = (data[0] & 15) * 4
    if data[9] != 1 or data[hl] != 8:
        continue
    ip = bytearray(data[:hl]); ip[12:16], ip[16:20] = data[16:20], data[12:16]
    ip[10:12] = b"\0\0"; ip[10:12] = struct.pack("!H", csum(bytes(ip)))
    icmp = bytearray(data[hl:]); icmp[0] = 0; icmp[2:4] = b"\0\0"
    icmp[2:4] = struct.pack("!H", csum(bytes(icmp)))
    s.sendto(bytes(ip + icmp), addr)
"""


def test_udp_speaks_flannels_wire_format_with_a_foreign_peer(lab: Lab) -> None:
    """A peer that knows only flannel's udp format (the UDP payload is the bare inner
    IPv4 packet, port as configured) answers pings from a netd container."""
    net = create(lab, "fludpw", "10.85.0.0/16", "udp", "port=8286")
    assert net["options"]["port"] == "8286"
    ep = attach(lab, "h1", "uwh1", "fludpw")
    peer = lab.add_host("h5")
    proc = subprocess.Popen(ns_exec(peer.netns, "python3", "-c", UDP_PEER, "8286"),
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        lease = put_leased(lab, f"{net['options']['prefix']}/subnets/10.85.250.0-24",
                           json.dumps({"PublicIP": peer.underlay_ip, "PublicIPv6": None,
                                       "BackendType": "udp"}))
        assert lab.wait_ping(container_of(lab, "uwh1"), "10.85.250.1", 10)
        src, port, packet = proc.stdout.readline().split()
        raw = bytes.fromhex(packet)
        assert (src, port) == (underlay_ip(lab, "h1"), "8286")
        assert raw[0] == 0x45 and raw[9] == 1  # IPv4, ICMP: nothing before the packet
        assert str(ipaddress.ip_address(raw[12:16])) == ep["ip"]
        assert str(ipaddress.ip_address(raw[16:20])) == "10.85.250.1"
        assert lab.etcdctl("m1", "lease", "revoke", lease).returncode == 0
    finally:
        proc.kill()
        proc.wait()
