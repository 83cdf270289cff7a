"""Datapath throughput: iperf3 TCP container to container across two simulated hosts.

Issue 3. One lab (two host namespaces on an underlay bridge, embedded store). Every
path is set up first, then measured --repeat times, round-robin (each round visits
every path, starting one path later than the round before), so drift on a shared
machine hits all paths alike. Each measurement is `iperf3 -c` for --seconds with
--parallel streams, server in the h2-side container:

* underlay      host netns to host netns over the underlay veths, no overlay;
* hand-built    kernel VXLAN of fastdp's shape built here with `ip`/`bridge` commands,
                in the same host namespaces over the same underlay: per host a bridge,
                a vxlan device (VNI 4000, dstport 4789, nolearning, proxy; its bridge
                port learning off, neigh_suppress on), static fdb entries (the remote
                MAC and the all-zero flood entry) and a permanent neighbour entry, a
                veth into a container netns; MTU 1450, no IPv6 link-local addresses,
                100 ms container ARP retransmit, kernel default offloads: what fastdp
                builds. The reference fastdp should match;
* fastdp        netd weave fastdp network, containers attached through the API;
* sleeve        netd weave sleeve (userspace UDP), plain;
* sleeve+enc    netd weave sleeve, encrypted;
* flannel-*     netd flannel networks (vxlan, udp, host-gw), addresses from each host's
                subnet lease (docs/flannel.md).

Open vSwitch rows (issue 7; not in the default set: they need a private OVS per host,
so the lab becomes plugins.openflow.lab.OvsLab and every row's underlay then runs through
each host's OVS underlay bridge `brul`, userspace datapath):

* ovs-gre       a hand-built OVS userspace GRE tunnel of the openflow driver's shape:
                per host a netdev bridge `hbo`, a veth into a container (MTU 1458,
                tx/TSO/GSO offloads off on both ends, as netd does), a GRE port to the
                other host (fixed key 4000: OVS allows one key=flow port per remote) and
                two flows (veth -> set tunnel key, out the tunnel; tunnel -> veth);
* openflow-gre  netd's openflow driver, backend gre (its full pipeline);
* ovs-vxlan / openflow-vxlan   the same with VXLAN (MTU 1450).

For these rows `vs hand-built` is against the OVS hand-built row of the same encapsulation.

The run checks that hand-built and fastdp really have the same shape (vxlan and bridge
port parameters, MTUs, offload features of every link on the path) and prints any
difference. A path that cannot be set up, or a measurement that fails, prints
"n/a: <why>" and the run goes on. Per path: median Mbit/s with min and max over the
repeats; ratios are of medians, against hand-built VXLAN and against the underlay.

Run as root from the repo root:
    .venv/bin/python -m bench.datapath [--seconds 8] [--parallel 1] [--repeat 3]
        [--rows ...] [--json]
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.stats import lab_prefix, spread, table
from netd.cli import Client, CliError
from netd.lab import Lab, ns_exec, run
from netd.model import mac_from_ip
from plugins.weave.names import bridge_name, host_veth_name, vxlan_name

ROWS = ("underlay", "hand-built", "fastdp", "sleeve", "sleeve+enc",
        "flannel-vxlan", "flannel-udp", "flannel-host-gw")  # flannel: plugins/flannel
OVS_ROWS = ("ovs-gre", "openflow-gre", "ovs-vxlan", "openflow-vxlan")
OVS_REFERENCE = {"openflow-gre": "ovs-gre", "openflow-vxlan": "ovs-vxlan",
                 "ovs-gre": "ovs-gre", "ovs-vxlan": "ovs-vxlan"}
OFFLOADS_OFF = ("tx", "off", "tso", "off", "gso", "off")
HB_VNI = 4000
HB_MTU = 1450
HB_SUBNET = "10.98.0"
HB_ARP_RETRANS_MS = 100  # what netd's weave driver sets on container interfaces
ZERO_MAC = "00:00:00:00:00:00"
FASTDP_NET = "dp-fa"


class RowError(Exception):
    """This path cannot be measured; the message says why."""


@dataclass(frozen=True)
class Path:
    """Where iperf3 runs for one row: client netns → server netns at `ip`."""

    client_ns: str
    server_ns: str
    ip: str


def iperf(path: Path, seconds: int, parallel: int) -> dict[str, Any]:
    server = subprocess.Popen(ns_exec(path.server_ns, "iperf3", "-s", "-1", "-B", path.ip),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        result = run(ns_exec(path.client_ns, "iperf3", "-c", path.ip, "-t", str(seconds),
                             "-P", str(parallel), "-J"),
                     check=False, timeout=seconds + 30)
        data = json.loads(result.stdout or "{}")
        if result.returncode != 0 or "error" in data:
            raise RowError(f"iperf3: {data.get('error') or result.stderr.strip()[-200:]}")
        end = data["end"]
        return {
            "mbit_s": round(end["sum_received"]["bits_per_second"] / 1e6),
            "retransmits": end["sum_sent"].get("retransmits", 0),
        }
    finally:
        server.kill()
        server.wait()


def _sh(netns: str, *cmd: str) -> str:
    result = run(ns_exec(netns, *cmd), check=False)
    if result.returncode != 0:
        raise RowError(f"{' '.join(cmd)} in {netns}: {result.stderr.strip()}")
    return result.stdout


def _reachable(lab: Lab, netns: str, ip: str) -> None:
    if not lab.wait_ping(netns, ip, timeout=15):
        raise RowError(f"no ping reply from {ip} within 15 s")


# --- paths -----------------------------------------------------------------------------
def underlay(lab: Lab) -> Path:
    h1, h2 = lab.hosts["h1"], lab.hosts["h2"]
    return Path(h1.netns, h2.netns, h2.underlay_ip)


def hand_built(lab: Lab) -> Path:
    """Bridge + vxlan (nolearning, proxy) + static fdb/neigh + veth: fastdp's shape."""
    hosts = [lab.hosts["h1"], lab.hosts["h2"]]
    containers = [lab.add_container(h.name, f"hb{i}") for i, h in enumerate(hosts, 1)]
    ips = [f"{HB_SUBNET}.{i}" for i in (1, 2)]
    macs = [mac_from_ip(ip) for ip in ips]
    for i, (host, ctr) in enumerate(zip(hosts, containers, strict=True)):
        peer = 1 - i
        ns = host.netns
        _sh(ns, "ip", "link", "add", "hbbr", "mtu", str(HB_MTU), "type", "bridge")
        _sh(ns, "ip", "link", "add", "hbvx", "mtu", str(HB_MTU), "type", "vxlan", "id",
            str(HB_VNI), "dstport", "4789", "local", host.underlay_ip,
            "nolearning", "proxy")
        _sh(ns, "ip", "link", "set", "hbvx", "master", "hbbr")
        _sh(ns, "bridge", "link", "set", "dev", "hbvx", "learning", "off", "neigh_suppress", "on")
        _sh(ns, "ip", "link", "add", "hbh0", "mtu", str(HB_MTU), "type", "veth", "peer",
            "name", "eth0", "netns", ctr, "address", macs[i],
            "mtu", str(HB_MTU))
        _sh(ns, "ip", "link", "set", "hbh0", "master", "hbbr")
        for link in ("hbbr", "hbvx", "hbh0"):
            _sh(ns, "ip", "link", "set", "dev", link, "addrgenmode", "none")
            _sh(ns, "ip", "link", "set", link, "up")
        for mac in (macs[peer], ZERO_MAC):
            _sh(ns, "bridge", "fdb", "append", mac, "dev", "hbvx",
                "dst", hosts[peer].underlay_ip, "self", "permanent")
        _sh(ns, "ip", "neigh", "replace", ips[peer], "lladdr", macs[peer], "dev", "hbvx",
            "nud", "permanent")
        _sh(ctr, "ip", "ntable", "change", "name", "arp_cache", "dev", "eth0",
            "retrans", str(HB_ARP_RETRANS_MS))
        _sh(ctr, "ip", "link", "set", "eth0", "up")
        _sh(ctr, "ip", "addr", "add", f"{ips[i]}/24", "dev", "eth0")
    _reachable(lab, containers[0], ips[1])
    return Path(containers[0], containers[1], ips[1])


def _network_path(lab: Lab, body: dict[str, Any], tag: str,
                  fixed_ip: Callable[[int], str] | None = None) -> Path:
    """A netd network between h1 and h2 (created through the API on h1) with one container
    on each host, attached with `fixed_ip(i)` or an automatic address."""
    clients = {n: Client(h.socket, timeout=60) for n, h in lab.hosts.items()}
    try:
        clients["h1"].request("POST", "/v1/networks", body)
        ctrs, ips = [], []
        for i, host in enumerate(("h1", "h2"), 1):
            ctr = lab.add_container(host, f"{tag}{i}")
            request = {"container": ctr, "network": body["name"]}
            if fixed_ip is not None:
                request["ip"] = fixed_ip(i)
            ep = clients[host].request("POST", "/v1/attach", request)
            ctrs.append(ctr)
            ips.append(ep["ip"])
    except CliError as exc:
        raise RowError(str(exc)) from None
    _reachable(lab, ctrs[0], ips[1])
    return Path(ctrs[0], ctrs[1], ips[1])


def _netd_row(backend: str, encrypt: bool) -> Callable[[Lab], Path]:
    def setup(lab: Lab) -> Path:
        tag = backend[:2] + ("e" if encrypt else "")
        third = {"fastdp": 1, "sleeve": 2}[backend] + (1 if encrypt else 0)
        body: dict[str, Any] = {"name": f"dp-{tag}", "subnet": f"10.99.{third}.0/24",
                                "backend": backend}
        if encrypt:
            body["encrypt"] = True
        return _network_path(lab, body, tag, lambda i: f"10.99.{third}.{10 + i}")

    return setup


def _ovs_hand_built(encap: str) -> Callable[[Lab], Path]:
    """Bridge + veth + one tunnel port + two flows: the least an OVS tunnel needs."""

    def setup(lab: Lab) -> Path:
        from plugins.openflow.lab import OvsLab

        if not isinstance(lab, OvsLab):
            raise RowError("needs the OVS lab")
        mtu = 1500 - (42 if encap == "gre" else 50)
        third = 1 if encap == "gre" else 2
        hosts = [lab.hosts["h1"], lab.hosts["h2"]]
        ips = [f"10.97.{third}.{i}" for i in (1, 2)]
        containers = [lab.add_container(h.name, f"ho{encap[0]}{i}")
                      for i, h in enumerate(hosts, 1)]
        bridge, veth, tun = f"hbo{encap[0]}", f"hbo{encap[0]}h", f"hbo{encap[0]}t"
        for i, (host, ctr) in enumerate(zip(hosts, containers, strict=True)):
            ovs = lab.ovs[host.name]
            peer = hosts[1 - i]
            _sh(host.netns, "ip", "link", "add", veth, "mtu", str(mtu), "type", "veth",
                "peer", "name", "eth0", "netns", ctr, "address", mac_from_ip(ips[i]),
                "mtu", str(mtu))
            _sh(host.netns, "ip", "link", "set", veth, "up")
            _sh(host.netns, "ethtool", "-K", veth, *OFFLOADS_OFF)
            _sh(ctr, "ethtool", "-K", "eth0", *OFFLOADS_OFF)
            _sh(ctr, "ip", "link", "set", "eth0", "up")
            _sh(ctr, "ip", "addr", "add", f"{ips[i]}/24", "dev", "eth0")
            ovs.vsctl("add-br", bridge, "--", "set", "bridge", bridge, "datapath_type=netdev",
                      "fail_mode=secure", "protocols=OpenFlow13",
                      "--", "add-port", bridge, veth, "--", "set", "interface", veth,
                      "ofport_request=1",
                      "--", "add-port", bridge, tun, "--", "set", "interface", tun,
                      f"type={encap}", f"options:remote_ip={peer.underlay_ip}",
                      "options:key=4000", "ofport_request=2")
            ovs.ofctl("add-flow", bridge, "in_port=1,actions=output:2")
            ovs.ofctl("add-flow", bridge, "in_port=2,actions=output:1")
        _reachable(lab, containers[0], ips[1])
        return Path(containers[0], containers[1], ips[1])

    return setup


def _openflow_row(backend: str) -> Callable[[Lab], Path]:
    def setup(lab: Lab) -> Path:
        third = 3 if backend == "gre" else 4
        body = {"name": f"dp-of{backend[0]}", "subnet": f"10.97.{third}.0/24",
                "driver": "openflow", "backend": backend}
        return _network_path(lab, body, f"of{backend[0]}", lambda i: f"10.97.{third}.{10 + i}")

    return setup


def _flannel_row(backend: str) -> Callable[[Lab], Path]:
    def setup(lab: Lab) -> Path:
        third = {"vxlan": 1, "udp": 2, "host-gw": 3}[backend]
        body = {"name": f"dp-fl{third}", "subnet": f"10.9{third}.0.0/16", "driver": "flannel",
                "backend": backend}
        return _network_path(lab, body, f"fl{third}")  # addresses from the host's lease

    return setup


SETUPS: dict[str, Callable[[Lab], Path]] = {
    "ovs-gre": _ovs_hand_built("gre"),
    "openflow-gre": _openflow_row("gre"),
    "ovs-vxlan": _ovs_hand_built("vxlan"),
    "openflow-vxlan": _openflow_row("vxlan"),
    "underlay": underlay,
    "hand-built": hand_built,
    "fastdp": _netd_row("fastdp", False),
    "sleeve": _netd_row("sleeve", False),
    "sleeve+enc": _netd_row("sleeve", True),
    "flannel-vxlan": _flannel_row("vxlan"),
    "flannel-udp": _flannel_row("udp"),
    "flannel-host-gw": _flannel_row("host-gw"),
}


# --- shape check: hand-built vs fastdp ----------------------------------------------------
_VOLATILE = {  # per-device identities and counters, not configuration
    "id", "local", "bridge_id", "root_id", "designated_root", "designated_bridge",
    "hello_timer", "tcn_timer", "topology_change_timer", "gc_timer", "forward_delay_timer",
    "hold_timer", "message_age_timer", "no", "id_alias", "port_id", "port_no",
    "root_port", "root_path_cost", "designated_port", "designated_cost",
}


def _link(netns: str, name: str) -> dict[str, Any]:
    info = json.loads(_sh(netns, "ip", "-d", "-j", "link", "show", "dev", name))[0]
    linkinfo = info.get("linkinfo", {})
    data = {k: v for k, v in (linkinfo.get("info_data") or {}).items() if k not in _VOLATILE}
    port = {k: v for k, v in (linkinfo.get("info_slave_data") or {}).items()
            if k not in _VOLATILE}
    features = _sh(netns, "ethtool", "-k", name).splitlines()[1:]
    return {
        "kind": linkinfo.get("info_kind"),
        "mtu": info.get("mtu"),
        "addrgenmode": (info.get("inet6_addr_gen_mode")),
        "qdisc": info.get("qdisc"),
        "txqlen": info.get("txqlen"),
        "gso_max_size": info.get("gso_max_size"),
        "gro_max_size": info.get("gro_max_size"),
        "num_tx_queues": info.get("num_tx_queues"),
        "num_rx_queues": info.get("num_rx_queues"),
        "info_data": data,
        "bridge_port": port,
        "offloads": {k.strip(): v.strip().removesuffix(" [fixed]")
                     for k, v in (line.split(":", 1) for line in features if ":" in line)},
    }


def _diff(a: Any, b: Any, where: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(a.keys() | b.keys()):
            out += _diff(a.get(key), b.get(key), f"{where}.{key}")
        return out
    return [] if a == b else [f"{where}: hand-built {a!r}, fastdp {b!r}"]


def shape_differences(lab: Lab) -> list[str]:
    """Configuration differences between the hand-built path and fastdp's, both hosts."""
    net = Client(lab.hosts["h1"].socket).request("GET", f"/v1/networks/{FASTDP_NET}")
    vni = int(net["vni"])
    endpoints = {ep["host"]: ep for ep in net["endpoints"]}
    out: list[str] = []
    for i, name in enumerate(("h1", "h2"), 1):
        host, ep = lab.hosts[name], endpoints[name]
        pairs = [
            ("bridge", host.netns, "hbbr", host.netns, bridge_name(vni)),
            ("vxlan", host.netns, "hbvx", host.netns, vxlan_name(vni)),
            ("host veth", host.netns, "hbh0", host.netns,
             host_veth_name(FASTDP_NET, ep["name"])),
            ("container veth", f"{lab.prefix}-hb{i}", "eth0", ep["container"], ep["ifname"]),
        ]
        for what, hb_ns, hb_name, fd_ns, fd_name in pairs:
            out += _diff(_link(hb_ns, hb_name), _link(fd_ns, fd_name), f"{name} {what}")
    return out


# --- measurement ---------------------------------------------------------------------------
def measure_all(rows: list[str], seconds: int, parallel: int,
                repeat: int) -> tuple[dict[str, dict[str, Any]], list[str] | str | None]:
    paths: dict[str, Path] = {}
    runs: dict[str, list[dict[str, Any]]] = {row: [] for row in rows}
    errors: dict[str, list[str]] = {row: [] for row in rows}
    shape: list[str] | str | None = None
    lab_class: type[Lab] = Lab
    if set(rows) & set(OVS_ROWS):
        from plugins.openflow.lab import OvsLab

        lab_class = OvsLab
    prefix = lab_prefix() if lab_class is Lab else "of" + secrets.token_hex(2)
    with lab_class(hosts=2, prefix=prefix) as lab:
        for row in rows:
            try:
                paths[row] = SETUPS[row](lab)
            except (RowError, subprocess.TimeoutExpired, CliError) as exc:
                errors[row].append(f"setup: {exc}")
                print(f"  {row}: n/a: {exc}", flush=True)
        if "hand-built" in paths and "fastdp" in paths:
            try:
                shape = shape_differences(lab)
            except (RowError, CliError, ValueError, KeyError) as exc:
                shape = f"could not compare: {exc}"
        ready = [row for row in rows if row in paths]
        for round_no in range(repeat):
            start = round_no % len(ready) if ready else 0
            for row in ready[start:] + ready[:start]:
                try:
                    runs[row].append(iperf(paths[row], seconds, parallel))
                    print(f"  round {round_no + 1}/{repeat} {row}: {runs[row][-1]}", flush=True)
                except (RowError, subprocess.TimeoutExpired, ValueError) as exc:
                    errors[row].append(str(exc))
                    print(f"  round {round_no + 1}/{repeat} {row}: n/a: {exc}", flush=True)
    return summarize(rows, runs, errors), shape


def summarize(rows: list[str], runs: dict[str, list[dict[str, Any]]],
              errors: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for row in rows:
        mbits = [r["mbit_s"] for r in runs[row]]
        result: dict[str, Any] = {"runs": runs[row], "errors": errors[row]}
        if mbits:
            s = spread(mbits)
            result.update(median_mbit_s=round(s["median"]), min_mbit_s=s["min"],
                          max_mbit_s=s["max"], retransmits_median=round(
                              statistics.median(r["retransmits"] for r in runs[row])))
        results[row] = result
    base = {k: results.get(k, {}).get("median_mbit_s") for k in ("hand-built", "underlay")}
    for row, result in results.items():
        for name, mbit in base.items():
            if name == "hand-built" and row in OVS_REFERENCE:
                mbit = results.get(OVS_REFERENCE[row], {}).get("median_mbit_s")
            if "median_mbit_s" in result and mbit:
                result[f"vs_{name}"] = round(result["median_mbit_s"] / mbit, 2)
    return results


def render(results: dict[str, dict[str, Any]], shape: list[str] | str | None,
           seconds: int, parallel: int, repeat: int) -> str:
    rows = []
    for name, r in results.items():
        if "median_mbit_s" not in r:
            rows.append((name, 0, "n/a", "", "", "", ""))
            continue
        rows.append((name, len(r["runs"]), r["median_mbit_s"],
                     f"{r['min_mbit_s']}-{r['max_mbit_s']}", r.get("vs_hand-built", ""),
                     r.get("vs_underlay", ""), r["retransmits_median"]))
    lines = [
        f"iperf3 TCP container to container across 2 hosts, {seconds} s, {parallel} "
        f"stream(s), {repeat} round(s) round-robin",
        table(rows, ["path", "runs", "median Mbit/s", "min-max", "vs hand-built",
                     "vs underlay", "retransmits (median)"]),
    ]
    for name, r in results.items():
        if r["errors"]:
            lines.append(f"  {name}: {len(r['errors'])} failure(s): {r['errors'][0][:160]}")
    if isinstance(shape, list):
        lines.append("hand-built vs fastdp shape: " + (
            "identical (vxlan/bridge-port parameters, MTUs, offloads)" if not shape
            else f"{len(shape)} difference(s):"))
        lines += [f"  {d}" for d in shape]
    elif shape is not None:
        lines.append(f"hand-built vs fastdp shape: {shape}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=8, help="iperf3 time per run")
    parser.add_argument("-P", "--parallel", type=int, default=1, help="iperf3 streams")
    parser.add_argument("--repeat", type=int, default=3, help="rounds over all paths")
    parser.add_argument("--rows", default=",".join(ROWS),
                        help=f"comma-separated subset of {','.join(ROWS + OVS_ROWS)}")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    rows = [r for r in args.rows.split(",") if r]
    unknown = set(rows) - set(ROWS) - set(OVS_ROWS)
    if unknown:
        parser.error(f"unknown row(s): {', '.join(sorted(unknown))}")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    results, shape = measure_all(rows, args.seconds, args.parallel, args.repeat)
    if args.json:
        print(json.dumps({"rows": results, "shape_differences": shape}, indent=2))
    else:
        print(render(results, shape, args.seconds, args.parallel, args.repeat))


if __name__ == "__main__":
    main()
