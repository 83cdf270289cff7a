"""One host, embedded store, real netd process: the foundation's acceptance tests.

Containers are network namespaces; every check sends real packets or reads real
kernel state. Bad input must leave endpoints, the store revision and the links of the
host and container namespaces exactly as they were.
"""

from __future__ import annotations

import difflib
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netd.lab import Lab, ns_exec, run
from netd.store.embedded import EmbeddedStore
from netd.store.keys import Keys

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(hosts=1, store="embedded") as lab:
        lab.netctl("h1", "network", "create", "blue", "--subnet", "10.30.0.0/24")
        yield lab


def links(netns: str) -> str:
    """Every link with its details, less the bridge timers that tick by themselves."""
    out = run(ns_exec(netns, "ip", "-d", "-o", "link", "show")).stdout
    return re.sub(r"\b\w+_timer\s+[\d.]+", "", out)


def addresses(netns: str) -> str:
    return run(ns_exec(netns, "ip", "-o", "addr", "show")).stdout


def kernel_state(lab: Lab, *containers: str) -> dict[str, str]:
    state = {}
    for netns in (lab.hosts["h1"].netns, *containers):
        state[netns] = (
            links(netns)
            + addresses(netns)
            + run(ns_exec(netns, "ip", "route", "show", "table", "all")).stdout
        )
    return state


def settled_state(lab: Lab, *containers: str, timeout: float = 5.0) -> dict[str, str]:
    """Kernel state once it stops changing by itself (IPv6 DAD, carrier, bridge ports)."""
    time.sleep(0.3)
    state = kernel_state(lab, *containers)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.3)
        again = kernel_state(lab, *containers)
        if again == state and not any("tentative" in v for v in state.values()):
            return state
        state = again
    return state


def assert_same(before: dict[str, str], after: dict[str, str]) -> None:
    for netns in before:
        diff = list(difflib.unified_diff(before[netns].splitlines(),
                                         after[netns].splitlines(), lineterm=""))
        assert not diff, f"{netns} changed:\n" + "\n".join(diff)


def store_revision(lab: Lab) -> int:
    return int(lab.netctl_json("h1", "status")["store"]["revision"])


@pytest.fixture(scope="module")
def pair(lab: Lab) -> tuple[str, str]:
    """Two containers holding 10.30.0.10 and 10.30.0.11 for the whole module."""
    a = lab.add_container("h1", "fa")
    b = lab.add_container("h1", "fb")
    lab.netctl("h1", "attach", a, "--network", "blue", "--ip", "10.30.0.10")
    lab.netctl("h1", "attach", b, "--network", "blue", "--ip", "10.30.0.11")
    return a, b


def test_fixed_ips_ping_each_other(lab: Lab, pair: tuple[str, str]) -> None:
    a, b = pair
    assert lab.ping(a, "10.30.0.11", count=3, interval=0.2).returncode == 0
    assert lab.ping(b, "10.30.0.10", count=3, interval=0.2).returncode == 0
    eth0 = run(ns_exec(a, "ip", "-o", "-4", "addr", "show", "dev", "eth0")).stdout
    assert "10.30.0.10/24" in eth0
    route = run(ns_exec(a, "ip", "route", "show", "default")).stdout
    assert "via 10.30.0.1 dev eth0" in route


def test_automatic_addresses_are_unique(lab: Lab) -> None:
    names = [lab.add_container("h1", f"auto{i}") for i in range(6)]
    ips = []
    for name in names:
        ep = lab.netctl_json("h1", "attach", name, "--network", "blue")
        ips.append(ep["ip"])
        assert ep["ip"] not in ("10.30.0.0", "10.30.0.1", "10.30.0.255")
    assert len(set(ips)) == len(ips)
    assert lab.ping(names[0], ips[-1], count=2, interval=0.2).returncode == 0
    for name in names:
        lab.netctl("h1", "detach", name, "--network", "blue")
        lab.remove_container(name)


def test_attach_is_idempotent_and_reattach_keeps_address(lab: Lab) -> None:
    c = lab.add_container("h1", "idem")
    first = lab.netctl_json("h1", "attach", c, "--network", "blue")
    again = lab.netctl_json("h1", "attach", c, "--network", "blue")
    assert first == again
    before = links(c)
    lab.netctl_json("h1", "attach", c, "--network", "blue")
    assert links(c) == before
    lab.netctl("h1", "detach", c, "--network", "blue")
    assert "eth0" not in links(c)
    back = lab.netctl_json("h1", "attach", c, "--network", "blue")
    assert back["ip"] == first["ip"]
    lab.netctl("h1", "detach", c, "--network", "blue")


def test_second_interface_gets_next_ethn(lab: Lab) -> None:
    lab.netctl("h1", "network", "create", "green", "--subnet", "10.31.0.0/24")
    c = lab.add_container("h1", "twoif")
    assert lab.netctl_json("h1", "attach", c, "--network", "blue")["ifname"] == "eth0"
    assert lab.netctl_json("h1", "attach", c, "--network", "green")["ifname"] == "eth1"
    lab.netctl("h1", "detach", c, "--network", "green")
    lab.netctl("h1", "detach", c, "--network", "blue")
    lab.netctl("h1", "network", "rm", "green")


BAD_ATTACH = [
    (["--ip", "10.99.0.5"], "outside"),
    (["--ip", "10.30.0.0"], "network address"),
    (["--ip", "10.30.0.255"], "broadcast"),
    (["--ip", "10.30.0.1"], "gateway"),
    (["--ip", "10.30.0.300"], "invalid"),
    (["--ip", "10.30.0.10"], "already in use"),  # held by test_fixed_ips' container
    (["--mac", "zz:00:00:00:00:01"], "invalid MAC"),
    (["--mac", "01:00:5e:00:00:01"], "multicast"),
    (["--ifname", "this-name-is-too-long"], "interface name"),
]


@pytest.mark.parametrize(("args", "message"), BAD_ATTACH)
def test_bad_attach_changes_nothing(
    lab: Lab, pair: tuple[str, str], args: list[str], message: str
) -> None:
    c = lab.add_container("h1", "bad")
    try:
        before_eps = lab.netctl_json("h1", "endpoint", "ls")
        before_rev = store_revision(lab)
        before_kernel = settled_state(lab, c)
        result = lab.netctl("h1", "attach", c, "--network", "blue", *args, check=False)
        assert result.returncode != 0
        assert message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert lab.netctl_json("h1", "endpoint", "ls") == before_eps
        assert store_revision(lab) == before_rev
        assert_same(before_kernel, kernel_state(lab, c))
    finally:
        lab.remove_container(c)


BAD_NETWORK = [
    (["n1", "--subnet", "10.40.0.0/33"], "invalid subnet"),
    (["n1", "--subnet", "10.40.0.1/24"], "host bits"),
    (["n1", "--subnet", "banana"], "invalid subnet"),
    (["blue", "--subnet", "10.41.0.0/24"], "already exists"),
    (["n1", "--subnet", "10.30.0.128/25"], "overlaps"),
    (["n1", "--subnet", "10.40.0.0/24", "--vni", "0"], "VNI"),
    (["n1", "--subnet", "10.40.0.0/24", "--vni", "16777216"], "VNI"),
    (["n1", "--subnet", "10.40.0.0/24", "--mtu", "67"], "MTU"),
    (["n1", "--subnet", "10.40.0.0/24", "--mtu", "65536"], "MTU"),
    (["bad/name", "--subnet", "10.40.0.0/24"], "invalid network name"),
    (["n1", "--subnet", "10.40.0.0/24", "--gateway", "10.41.0.1"], "gateway"),
    (["n1", "--subnet", "10.40.0.0/24", "--backend", "gre"], "no backend"),
    (["n1", "--subnet", "10.40.0.0/24", "-o", "prefx=/x"],
     "unknown driver option 'prefx' for driver weave: it takes no options"),
    (["n1", "--subnet", "10.40.0.0/24", "--encrypt"], "--encrypt"),
    (["n1", "--subnet", "10.40.0.0/24", "--driver", "nosuch"],
     "driver nosuch is not available in this netd (available: "),
    (["n1", "--subnet", "10.40.0.0/24", "--mtu", "1500"], "underlay MTU 1500: at most 1450"),
    (["n1", "--subnet", "224.1.0.0/16"], "multicast"),
    (["n1", "--subnet", "127.5.0.0/16"], "loopback"),
]


@pytest.mark.parametrize(("args", "message"), BAD_NETWORK)
def test_bad_network_create_changes_nothing(lab: Lab, args: list[str], message: str) -> None:
    before_nets = lab.netctl_json("h1", "network", "ls")
    before_rev = store_revision(lab)
    result = lab.netctl("h1", "network", "create", *args, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert lab.netctl_json("h1", "network", "ls") == before_nets
    assert store_revision(lab) == before_rev


def test_same_subnet_in_other_tenant_is_fine(lab: Lab) -> None:
    lab.netctl("h1", "network", "create", "red", "--subnet", "10.30.0.0/24", "--tenant", "acme")
    lab.netctl("h1", "network", "rm", "red")


def test_unknown_network_and_container(lab: Lab) -> None:
    c = lab.add_container("h1", "lost")
    result = lab.netctl("h1", "attach", c, "--network", "nope", check=False)
    assert result.returncode != 0 and "network 'nope' not found" in result.stderr
    result = lab.netctl("h1", "attach", f"{lab.prefix}-ghost", "--network", "blue", check=False)
    assert result.returncode != 0 and "not found" in result.stderr
    lab.remove_container(c)


def test_network_rm_with_endpoints_is_refused(lab: Lab) -> None:
    lab.netctl("h1", "network", "create", "busy", "--subnet", "10.32.0.0/24")
    c = lab.add_container("h1", "busy1")
    lab.netctl("h1", "attach", c, "--network", "busy")
    result = lab.netctl("h1", "network", "rm", "busy", check=False)
    assert result.returncode != 0 and "detach them first" in result.stderr
    lab.netctl("h1", "detach", c, "--network", "busy")
    lab.netctl("h1", "network", "rm", "busy")
    nets = [n["name"] for n in lab.netctl_json("h1", "network", "ls")]
    assert "busy" not in nets


def store_records(lab: Lab) -> dict[str, str]:
    """Every record in the lab's shared store file but the (lease-refreshed) host registry."""
    keys = Keys()
    store = EmbeddedStore(Path(lab.store_url.removeprefix("sqlite://")))
    try:
        items, _ = store.list(keys.root())
    finally:
        store.close()
    return {kv.key: kv.value for kv in items if not kv.key.startswith(keys.hosts())}


def test_failed_attach_rolls_back(lab: Lab) -> None:
    """The container already has `eth0` as an alternative name of another link: the
    kernel refuses the veth half way, and netd must undo the reservation and links,
    leaving the store exactly as it was (no sticky reservation for the name either)."""
    c = lab.add_container("h1", "halfway")
    run(ns_exec(c, "ip", "link", "property", "add", "dev", "lo", "altname", "eth0"))
    before_eps = lab.netctl_json("h1", "endpoint", "ls")
    before_host_links = links(lab.hosts["h1"].netns)
    before_store = store_records(lab)
    result = lab.netctl("h1", "attach", c, "--network", "blue", "--ip", "10.30.0.77",
                        check=False)
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1
    assert lab.netctl_json("h1", "endpoint", "ls") == before_eps
    assert links(lab.hosts["h1"].netns) == before_host_links
    assert store_records(lab) == before_store
    # the address was released: another container can take it
    d = lab.add_container("h1", "taker")
    assert lab.netctl_json("h1", "attach", d, "--network", "blue", "--ip", "10.30.0.77")
    lab.netctl("h1", "detach", d, "--network", "blue")
    lab.remove_container(d)
    lab.remove_container(c)


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_restart_keeps_traffic_and_changes_nothing(lab: Lab, how: str) -> None:
    a = lab.add_container("h1", f"ra{how[3:]}")
    b = lab.add_container("h1", f"rb{how[3:]}")
    ip_b = lab.netctl_json("h1", "attach", b, "--network", "blue")["ip"]
    lab.netctl("h1", "attach", a, "--network", "blue")
    assert lab.wait_ping(a, ip_b)
    before = settled_state(lab, a, b)
    monitors = [
        subprocess.Popen(ns_exec(ns, "ip", "monitor", "link", "address", "route"),
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for ns in (lab.hosts["h1"].netns, a, b)
    ]
    pinger = subprocess.Popen(
        ns_exec(a, "ping", "-n", "-q", "-i", "0.05", "-w", "6", ip_b),
        stdout=subprocess.PIPE, text=True,
    )
    try:
        time.sleep(0.5)
        lab.stop_netd("h1", kill=(how == "sigkill"))
        time.sleep(0.5)
        lab.start_netd("h1")
        lab.netctl("h1", "status")
        time.sleep(2.0)  # let the restarted daemon finish its first full sync
        out, _ = pinger.communicate(timeout=15)
    finally:
        for m in monitors:
            m.terminate()
    changes = [m.communicate(timeout=5)[0] for m in monitors]
    assert " 0% packet loss" in out, out
    assert changes == ["", "", ""], changes
    assert_same(before, kernel_state(lab, a, b))
    status = lab.netctl_json("h1", "status")
    assert status["errors"] == {}
    lab.netctl("h1", "detach", a, "--network", "blue")
    lab.netctl("h1", "detach", b, "--network", "blue")


def test_container_by_netns_path_and_by_pid(lab: Lab) -> None:
    by_path = lab.add_container("h1", "bypath")
    ep = lab.netctl_json("h1", "attach", f"/run/netns/{by_path}", "--network", "blue")
    assert ep["name"] == by_path
    assert "eth0" in links(by_path)

    by_pid = lab.add_container("h1", "bypid")
    sleeper = subprocess.Popen(ns_exec(by_pid, "sleep", "60"))
    try:
        ep_pid = lab.netctl_json("h1", "attach", str(sleeper.pid), "--network", "blue")
        assert ep_pid["name"] == f"pid-{sleeper.pid}"
        assert "eth0" in links(by_pid)
        assert lab.ping(by_pid, ep["ip"], count=2, interval=0.2).returncode == 0
        lab.netctl("h1", "detach", str(sleeper.pid), "--network", "blue")
        assert "eth0" not in links(by_pid)
    finally:
        sleeper.kill()
        sleeper.wait()
    lab.netctl("h1", "detach", f"/run/netns/{by_path}", "--network", "blue")
    result = lab.netctl("h1", "attach", "999999999", "--network", "blue", check=False)
    assert result.returncode != 0 and "no process with PID" in result.stderr
    result = lab.netctl("h1", "attach", "/etc/hostname", "--network", "blue", check=False)
    assert result.returncode != 0 and "a netns path lies in /run/netns" in result.stderr
    not_netns = Path("/run/netns") / f"{by_path}-file"
    not_netns.touch()
    try:
        result = lab.netctl("h1", "attach", str(not_netns), "--network", "blue", check=False)
        assert result.returncode != 0 and "not a network namespace" in result.stderr
    finally:
        not_netns.unlink()


def test_second_daemon_on_same_socket_or_state_dir_is_refused(lab: Lab, tmp_path: Path) -> None:
    host = lab.hosts["h1"]
    netd = str(Path(sys.executable).with_name("netd"))
    base = ["nsenter", f"--net=/run/netns/{host.netns}", netd, "--host", "h1",
            "--store", lab.store_url]
    same_socket = subprocess.run(
        [*base, "--socket", str(host.socket), "--state-dir", str(tmp_path / "other")],
        capture_output=True, text=True, timeout=30,
    )
    assert same_socket.returncode != 0
    assert "already serving on" in same_socket.stderr
    same_state = subprocess.run(
        [*base, "--socket", str(tmp_path / "other.sock"), "--state-dir", str(host.state_dir)],
        capture_output=True, text=True, timeout=30,
    )
    assert same_state.returncode != 0
    assert "already running with state dir" in same_state.stderr
    assert lab.netctl_json("h1", "status")["store"]["reachable"]


def test_same_name_in_another_netns_is_refused(lab: Lab) -> None:
    """A netns bind-mounted elsewhere (Docker's sandbox directory) under the name of an
    attached container is another container: attaching it must not answer with the first
    one's endpoint."""
    c = lab.add_container("h1", "twin")
    first = lab.netctl_json("h1", "attach", c, "--network", "blue")
    sandboxes = Path("/run/docker/netns")
    made = [d for d in (sandboxes.parent, sandboxes) if not d.exists()]
    sandboxes.mkdir(parents=True, exist_ok=True)
    other = sandboxes / c
    other.touch()
    run(["unshare", f"--net={other}", "true"])
    try:
        result = lab.netctl("h1", "attach", str(other), "--network", "blue", check=False)
        assert result.returncode != 0
        assert "another namespace with the same endpoint name" in result.stderr
        result = lab.netctl("h1", "attach", c, "--network", "blue", "--ifname", "eth7",
                            check=False)
        assert result.returncode != 0 and "as interface eth0" in result.stderr
        assert lab.netctl_json("h1", "endpoint", "ls", "--network", "blue").count(first) == 1
    finally:
        run(["umount", str(other)], check=False)
        other.unlink()
        for directory in reversed(made):
            directory.rmdir()
        lab.netctl("h1", "detach", c, "--network", "blue")
        lab.remove_container(c)


def test_concurrent_attaches_of_one_container(lab: Lab) -> None:
    """Two networks at once: each attach gets its own ethN, both succeed."""
    lab.netctl("h1", "network", "create", "cc1", "--subnet", "10.33.0.0/24")
    lab.netctl("h1", "network", "create", "cc2", "--subnet", "10.34.0.0/24")
    c = lab.add_container("h1", "conc")
    try:
        procs = [
            subprocess.Popen(
                [str(Path(sys.executable).with_name("netctl")), "--socket",
                 str(lab.hosts["h1"].socket), "attach", c, "--network", net, "--json"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            for net in ("cc1", "cc2")
        ]
        outs = [p.communicate(timeout=60) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
        assert sorted(json.loads(out)["ifname"] for out, _ in outs) == ["eth0", "eth1"]
        assert "eth0" in links(c) and "eth1" in links(c)
    finally:
        for net in ("cc1", "cc2"):
            lab.netctl("h1", "detach", c, "--network", net, check=False)
            lab.netctl("h1", "network", "rm", net, check=False)
        lab.remove_container(c)


def test_status_shows_datapath_and_json_after_command(lab: Lab, pair: tuple[str, str]) -> None:
    status = lab.netctl_json("h1", "status")
    weave = status["datapath"]["weave"]
    assert any(role == "bridge" for role in weave["links"].values())
    assert weave["ports"] >= 2  # the pair's veths
    assert "weave" in status["drivers"] and status["drivers"] == sorted(status["drivers"])
    assert status["workers"]["weave"]["revision"] >= status["applied_revision"] > 0
    table = lab.netctl("h1", "status").stdout
    assert "datapath:" in table and "weave:" in table
    assert "  weave: revision " in table
    drivers = lab.netctl_json("h1", "driver", "ls")
    assert ("weave", "fastdp") in [(d["name"], d["default_backend"]) for d in drivers]
    weave_spec = next(d for d in drivers if d["name"] == "weave")
    assert {b["name"]: b["overhead"] for b in weave_spec["backends"]} == {
        "fastdp": 50, "sleeve": 50}
    after = json.loads(lab.netctl("h1", "network", "ls", "--json").stdout)
    assert after == lab.netctl_json("h1", "network", "ls")
    result = lab.netctl("h1", "network", "inspect", "nope", "--json", check=False)
    assert result.returncode != 0
    assert json.loads(result.stderr) == {"error": "network 'nope' not found"}


def test_recreated_container_is_plugged_in_again_with_its_address() -> None:
    """A container whose netns vanished stays attached (its address kept, the failure
    shown in status); when a netns of the same name comes back, the next resync plugs it
    in again without any command."""
    with Lab(hosts=1, store="embedded", resync_interval=2.0) as lab:
        lab.netctl("h1", "network", "create", "blue", "--subnet", "10.30.0.0/24")
        c = lab.add_container("h1", "phoenix")
        ep = lab.netctl_json("h1", "attach", c, "--network", "blue")
        lab.remove_container(c)
        deadline = time.monotonic() + 15
        while not lab.netctl_json("h1", "status")["errors"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert any("phoenix" in item for item in lab.netctl_json("h1", "status")["errors"])
        assert lab.add_container("h1", "phoenix") == c
        deadline = time.monotonic() + 40
        while "eth0" not in links(c) and time.monotonic() < deadline:
            time.sleep(0.5)
        addrs = run(ns_exec(c, "ip", "-o", "-4", "addr", "show", "dev", "eth0")).stdout
        assert f"{ep['ip']}/24" in addrs
        assert lab.netctl_json("h1", "endpoint", "ls") == [ep]
        lab.netctl("h1", "detach", c, "--network", "blue")
