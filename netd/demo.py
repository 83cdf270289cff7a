"""`netctl demo`: simulated hosts on this machine, two tenants, fixed IPs, a ping matrix.

Everything runs on the lab harness (netd.lab): real netd processes, one per host
namespace, real etcd when installed (else the embedded store), real packets. The
matrix shows which containers reach which: the same network must, other tenants'
networks must not. `--keep` leaves it up and prints how to explore and remove it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from netd.lab import UNDERLAY_NET, Lab, console_script, gateway_namespaces, ns_exec, run

KEEP_FILE = Path("/run/netd-demo.json")

# Both tenants use the same subnet on purpose: if isolation failed, the other
# tenant's containers would be one ARP away, so every "x" in the matrix means something.
NETWORKS = [
    # name, tenant, subnet, first host octet, backend, extra flags
    ("frontend", "acme", "10.10.0.0/24", 10, "fastdp", ()),
    ("backend", "globex", "10.10.0.0/24", 20, "sleeve", ("--encrypt",)),
]


def _progress(done: int, total: int, label: str, stream: Any = sys.stderr) -> None:
    width = 30
    filled = int(width * done / max(total, 1))
    stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label:<40}")
    stream.flush()
    if done == total:
        stream.write("\n")


def run_demo(keep: bool = False, hosts: int = 3, as_json: bool = False) -> int:
    if hosts < 2 or hosts > 20:
        print("netctl: demo --hosts must be 2..20", file=sys.stderr)
        return 2
    if keep and KEEP_FILE.exists():
        print("netctl: a demo is already up; remove it first with `netctl demo --down`",
              file=sys.stderr)
        return 1
    store = "etcd" if shutil.which("etcd") else "embedded"
    lab = Lab(hosts=hosts, store=store, host_ttl=10, prefix=f"dm{secrets.token_hex(2)}")
    say = (lambda *a: None) if as_json else (lambda *a: print(*a, file=sys.stderr))
    kept = False
    try:
        say(f"starting {hosts} simulated hosts (store: {store}, lab {lab.prefix}) ...")
        lab.start()
        first = next(iter(lab.hosts))
        for name, tenant, subnet, _octet, backend, extra in NETWORKS:
            lab.netctl(first, "network", "create", name, "--subnet", subnet,
                       "--tenant", tenant, "--backend", backend, *extra)
            say(f"network {name}: tenant {tenant}, {subnet}, weave/{backend} {' '.join(extra)}"
                .rstrip())
        containers: list[dict[str, str]] = []
        for i, host in enumerate(lab.hosts, start=1):
            for name, _tenant, subnet, octet, _backend, _extra in NETWORKS:
                ip = subnet.rsplit(".", 1)[0] + f".{octet + i}"
                netns = lab.add_container(host, f"{name[:3]}{i}")
                lab.netctl(host, "attach", netns, "--network", name, "--ip", ip)
                containers.append({"netns": netns, "host": host, "network": name, "ip": ip})
        say(f"{len(containers)} containers attached with fixed IPs; pinging every pair ...")
        results = _matrix(lab, containers, say, as_json)
        ok = all(r["ok"] == r["expected"] for r in results)
        groups_ok = _security_group_step(lab, say)
        flannel_ok = _flannel_step(lab, say)
        expose_ok = _expose_step(lab, containers, say)
        openflow = _openflow_step(store, say)
        if as_json:
            print(json.dumps({"lab": lab.prefix, "store": store, "containers": containers,
                              "results": results, "ok": ok, "security_groups": groups_ok,
                              "flannel": flannel_ok, "expose": expose_ok,
                              "openflow": openflow}, indent=2))
        else:
            print(_render(containers, results))
            print("\nresult:", "every container reaches its own network and nothing else"
                  if ok else "UNEXPECTED connectivity, see the matrix")
            print("security groups:", "a member is closed until a rule admits the peer, "
                  "then reachable" if groups_ok else "FAILED: see above")
            print("flannel:", "every pod reaches every other across hosts (vxlan, one subnet "
                  "lease per host)" if flannel_ok else "FAILED: pods did not all reach each other")
            print("expose:", "an outside host reaches a container on another host through "
                  "the exposing host, not after hide" if expose_ok else "FAILED: see above")
            print("openflow:", openflow["summary"])
        ok = ok and groups_ok and flannel_ok and expose_ok and openflow.get("ok", True)
        if keep:
            _keep(lab)
            kept = True
            say(_explore_help(lab, containers))
        return 0 if ok else 1
    except KeyboardInterrupt:
        print("netctl: demo interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"netctl: demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if not kept:
            say("tearing down ...")
            lab.close()


def _openflow_step(store: str, say: Any) -> dict[str, Any]:
    """Two more simulated hosts, each with a private Open vSwitch whose bridge netd
    programs over OpenFlow: one GRE network across them, a ping, the flow count."""
    from plugins.openflow.lab import OvsLab, ovs_available

    if not ovs_available():
        return {"skipped": "Open vSwitch is not installed",
                "summary": "skipped (Open vSwitch is not installed)"}
    say("openflow: two hosts with their own Open vSwitch, one GRE network ...")
    lab = OvsLab(hosts=2, store=store, host_ttl=10, prefix=f"of{secrets.token_hex(2)}")
    try:
        lab.start()
        lab.netctl("h1", "network", "create", "edge", "--subnet", "10.30.0.0/24",
                   "--driver", "openflow", "--backend", "gre")
        ips = {"h1": "10.30.0.11", "h2": "10.30.0.12"}
        ctrs = {}
        for host, ip in ips.items():
            ctrs[host] = lab.add_container(host, f"edge-{host}")
            lab.netctl(host, "attach", ctrs[host], "--network", "edge", "--ip", ip)
        reached = lab.wait_ping(ctrs["h1"], ips["h2"], timeout=10)
        dump = lab.ovs["h1"].ofctl("dump-flows", "ndoi1", check=False).stdout
        flows = [line for line in dump.splitlines() if "cookie=0x6e64" in line]
        of = lab.netctl_json("h1", "status")["datapath"]["openflow"]
        summary = (f"{ips['h1']} (h1) -> {ips['h2']} (h2) over GRE through OVS "
                   f"({of.get('datapath_type')} datapath): "
                   f"{'ping ok' if reached else 'NO PING'}, {len(flows)} netd flows on "
                   f"h1's bridge ndoi1")
        return {"ok": reached, "flows": len(flows), "summary": summary}
    except Exception as exc:
        return {"ok": False, "error": str(exc), "summary": f"failed: {exc}"}
    finally:
        lab.close()


def _security_group_step(lab: Lab, say: Any) -> bool:
    """A stateful security group (docs/policy.md): a member takes no traffic until one of
    its group's rules admits the sender; then the sender reaches it within a second."""
    net, tenant = NETWORKS[0][0], NETWORKS[0][1]
    hosts = list(lab.hosts)
    first, other = hosts[0], hosts[-1]
    lab.netctl(first, "sg", "create", "quiet", "--tenant", tenant)
    guarded = lab.add_container(first, "guarded")
    guarded_ip = lab.netctl_json(first, "attach", guarded, "--network", net,
                                 "--sg", "quiet")["ip"]
    caller = lab.add_container(other, "caller")
    caller_ip = lab.netctl_json(other, "attach", caller, "--network", net)["ip"]
    say(f"security group quiet (tenant {tenant}): {guarded_ip} on {first} is a member, "
        f"no rules yet")
    closed = not _reach(lab, caller, guarded_ip, False)
    say(f"  {caller_ip} ({other}) -> {guarded_ip}: " + ("blocked" if closed else "REACHED"))
    lab.netctl(first, "sg", "rule", "add", "quiet", "--ingress", "--proto", "icmp",
               "--cidr", f"{caller_ip}/32", "--tenant", tenant)
    opened = _reach(lab, caller, guarded_ip, True)
    say(f"  rule added (ingress icmp from {caller_ip}/32): "
        + ("reachable" if opened else "STILL BLOCKED"))
    return closed and opened


def _expose_step(lab: Lab, containers: list[dict[str, str]], say: Any) -> bool:
    """expose/hide (docs/gateway.md): an outside host (a namespace on the underlay, no
    netd) routes the first network's subnet via the first host, which exposes it, and
    reaches a container on the last host; after `hide` it does not."""
    net, subnet = NETWORKS[0][0], NETWORKS[0][2]
    hosts = list(lab.hosts)
    first, last = hosts[0], hosts[-1]
    target = next(c for c in containers if c["network"] == net and c["host"] == last)
    outside = f"{lab.prefix}-out"
    lab._plug(outside, "p-out", f"{UNDERLAY_NET}.200")
    run(ns_exec(outside, "ip", "route", "add", subnet, "via", lab.hosts[first].underlay_ip))
    lab.netctl(first, "expose", net)
    reached = lab.wait_ping(outside, target["ip"], timeout=10)
    say(f"expose: {first} exposes {net}; outside host {UNDERLAY_NET}.200 -> {target['ip']} "
        f"(on {last}): " + ("reachable" if reached else "NOT REACHED"))
    lab.netctl(first, "hide", net)
    hidden = not _reach(lab, outside, target["ip"], False)
    say("  after hide: " + ("unreachable" if hidden else "STILL REACHED"))
    return reached and hidden


def _flannel_step(lab: Lab, say: Any) -> bool:
    """A flannel network (docs/flannel.md): each host leases a subnet of it, containers
    get addresses from their host's subnet, every pair of hosts' containers talk."""
    first = next(iter(lab.hosts))
    lab.netctl(first, "network", "create", "pods", "--driver", "flannel",
               "--subnet", "10.244.0.0/16", "-o", "vni=244")
    eps = []
    for i, host in enumerate(lab.hosts, start=1):
        netns = lab.add_container(host, f"pod{i}")
        ep = lab.netctl_json(host, "attach", netns, "--network", "pods")
        eps.append((host, netns, ep["ip"]))
    say("flannel network pods (vxlan, 10.244.0.0/16): one subnet lease per host")
    for host, _netns, ip in eps:
        say(f"  {host}: container {ip} (from its host's subnet lease)")
    ok = all(_reach(lab, a[1], b[2], True) for a in eps for b in eps if a is not b)
    say("  every pod reaches every other across hosts: " + ("yes" if ok else "NO"))
    return ok


def _matrix(lab: Lab, containers: list[dict[str, str]], say: Any,
            quiet: bool) -> list[dict[str, Any]]:
    pairs = [(a, b) for a in containers for b in containers if a is not b]
    results = []
    for n, (a, b) in enumerate(pairs, start=1):
        expected = a["network"] == b["network"]
        ok = _reach(lab, a["netns"], b["ip"], expected)
        results.append({"from": a["netns"], "to": b["netns"], "ok": ok, "expected": expected})
        if not quiet:
            _progress(n, len(pairs), f"{a['netns']} -> {b['ip']}")
    return results


def _reach(lab: Lab, netns: str, ip: str, expected: bool) -> bool:
    # a reachable peer may need a moment for the first ARP; an unreachable one gets one try
    deadline = time.monotonic() + (5.0 if expected else 0.0)
    while True:
        if lab.ping(netns, ip, wait=0.5).returncode == 0:
            return True
        if time.monotonic() >= deadline:
            return False


def _render(containers: list[dict[str, str]], results: list[dict[str, Any]]) -> str:
    names = [c["netns"].split("-", 1)[1] for c in containers]
    by_pair = {(r["from"], r["to"]): r for r in results}
    width = max(len(n) for n in names) + 2
    lines = ["", "from \\ to".ljust(width + 18) + "".join(n.rjust(width) for n in names)]
    for c, name in zip(containers, names, strict=True):
        label = f"{name} {c['ip']} {c['host']}"
        row = label.ljust(width + 18)
        for d in containers:
            if d is c:
                row += "-".rjust(width)
                continue
            r = by_pair[(c["netns"], d["netns"])]
            mark = ("ok" if r["ok"] else "x") if r["ok"] == r["expected"] else "!!"
            row += mark.rjust(width)
        lines.append(row)
    lines.append("\nok = reached (same network), x = blocked (other tenant), !! = unexpected")
    return "\n".join(lines)


def _keep(lab: Lab) -> None:
    procs = [h.proc.pid for h in lab.hosts.values() if h.proc is not None]
    if lab._etcd is not None:
        procs.append(lab._etcd.pid)
    KEEP_FILE.write_text(json.dumps({
        "prefix": lab.prefix, "dir": str(lab.dir), "pids": procs,
        "namespaces": list(lab._namespaces),
        "sockets": {n: str(h.socket) for n, h in lab.hosts.items()},
    }))


def _explore_help(lab: Lab, containers: list[dict[str, str]]) -> str:
    netctl = console_script("netctl")
    first = next(iter(lab.hosts.values()))
    c = containers[0]
    return (
        "\nthe demo is still up. Try:\n"
        f"  {netctl} --socket {first.socket} network ls\n"
        f"  {netctl} --socket {first.socket} endpoint ls\n"
        f"  {netctl} --socket {first.socket} host ls\n"
        f"  nsenter --net=/run/netns/{c['netns']} ping {containers[2]['ip']}\n"
        f"remove it with: {netctl} demo --down"
    )


def down() -> int:
    """Remove a demo left up by --keep."""
    if not KEEP_FILE.exists():
        print("netctl: no demo is running", file=sys.stderr)
        return 1
    state = json.loads(KEEP_FILE.read_text())
    mine = [pid for pid in state["pids"] if _is_lab_process(pid, state["dir"])]
    for pid in mine:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in mine) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in mine:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for netns in reversed(state["namespaces"]):
        if netns.startswith(state["prefix"] + "-"):
            run(["ip", "netns", "del", netns], check=False)
    for netns in gateway_namespaces(Path(state["dir"])):
        run(["ip", "netns", "del", netns], check=False)
    shutil.rmtree(state["dir"], ignore_errors=True)
    KEEP_FILE.unlink()
    print(f"demo {state['prefix']} removed")
    return 0


def _is_lab_process(pid: int, lab_dir: str) -> bool:
    """Only a process whose command line names the lab's directory is the demo's."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return lab_dir.encode() in cmdline


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:", 1)[1].split("\n", 1)[0]
    except (OSError, IndexError):
        return ""
