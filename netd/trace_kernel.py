"""`netctl trace`, checked against the kernel: does netd's nftables table on this host
hold what the desired-state verdict (netd.trace) rests on?

Per end of the flow that lives on this host and whose driver is enforced with
nftables: the port's chain (in_<hash> for ingress, eg_<hash> for egress, shared by ports
with the same rules) against the
chain netd.policy.nft.render writes for the same port (every rule, and the deciding
one by name), the map element that sends the port's traffic into it, the member set of
a deciding group rule holding the remote address, and, for two local endpoints of
different tenants, the absence of their bridge pair from `same_tenant`. Anything that
differs is a mismatch, reported with the verdict the kernel would give instead where
that follows. The other host's end is checked by `netctl trace` on that host.

Openflow ends are checked with Open vSwitch's own `ovs-appctl ofproto/trace` of the
flow entering the integration bridge from the source's port: its datapath actions
(drop, or an output) against the desired verdict - the whole flow when both ends are on
this host, the source's egress when the destination is remote (its ingress happens on
the other host's switch, behind the tunnel, and is listed as not checked). The switch
is found from NETD_OVSDB as the openflow driver finds it (`ovs-vswitchd.ctl` beside a
unix OVSDB socket, else ovs-appctl's default target).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import netaddr

from netd.policy.model import HostPolicy, PortPolicy
from netd.policy.nft import NFT, TABLE, render, set_name
from netd.trace import Decision, Trace

FLOW_TABLE_DRIVERS = frozenset({"openflow"})


def _nft(*args: str) -> tuple[bool, str]:
    try:
        result = subprocess.run([NFT, *args], capture_output=True, text=True, timeout=10,
                                check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    return result.returncode == 0, result.stdout if result.returncode == 0 else result.stderr


def _norm(line: str) -> str:
    return " ".join(line.split("#", 1)[0].split())


def chain_rules(family: str, chain: str) -> list[str] | None:
    """The rules of one chain of netd's table as nft prints them (None: no such chain)."""
    ok, text = _nft("list", "chain", family, TABLE, chain)
    if not ok:
        return None
    lines = [_norm(line) for line in text.splitlines()]
    return [line for line in lines if line and not line.startswith(("table ", "chain "))
            and line != "}"]


def set_elements(name: str) -> list[str] | None:
    ok, text = _nft("-j", "list", "set", "ip", TABLE, name)
    if not ok:
        return None
    out: list[str] = []
    for item in json.loads(text or "{}").get("nftables", []):
        for elem in (item.get("set") or {}).get("elem", []):
            if isinstance(elem, str):
                out.append(elem)
            elif "prefix" in elem:
                out.append(f"{elem['prefix']['addr']}/{elem['prefix']['len']}")
            elif "range" in elem:
                out.append("-".join(elem["range"]))
    return out


def _holds(elements: list[str], ip: str) -> bool:
    address = netaddr.IPAddress(ip)
    for elem in elements:
        if "-" in elem:
            low, high = elem.split("-", 1)
            if netaddr.IPAddress(low) <= address <= netaddr.IPAddress(high):
                return True
        elif address in netaddr.IPNetwork(elem):
            return True
    return False


def _check(what: str, ok: bool, desired: str, actual: str) -> dict[str, Any]:
    return {"what": what, "ok": ok, "desired": desired, "actual": actual}


def check_port(trace: Trace, decision: Decision, port: PortPolicy) -> list[dict[str, Any]]:
    """The kernel's side of one end's decision, on this host."""
    link = port.link or ""
    direction = decision.direction
    prefix = "eg_" if direction == "egress" else "in_"
    wanted = render(HostPolicy(ports=(port,), members=trace.members), [port.driver])
    unit = wanted.ports.get(link)
    # a port's rules live in a chain shared by every port with the same rules, named by
    # their hash (netd.policy.nft)
    found = next(((name, list(rules)) for family, name, rules in (unit.shared if unit else ())
                  if family == "ip" and name.startswith(prefix)), None)
    chain, desired_rules = found if found is not None else (prefix + link, None)
    actual = chain_rules("ip", chain)
    checks: list[dict[str, Any]] = []
    if desired_rules is None:
        checks.append(_check(f"{direction} of {port.endpoint}: no chain {chain}", actual is None,
                             "absent (open)", "absent" if actual is None else
                             f"present with {len(actual)} rules (restricts what should be open)"))
        return checks
    if actual is None:
        checks.append(_check(f"{direction} chain {chain} of {port.endpoint}", False,
                             f"{len(desired_rules)} rules", "missing from the kernel"))
        return checks
    missing = [r for r in desired_rules if r not in actual]
    extra = [r for r in actual if r not in desired_rules]
    checks.append(_check(f"{direction} chain {chain} of {port.endpoint}",
                         not missing and not extra, f"{len(desired_rules)} rules",
                         f"{len(actual)} rules" + (f"; missing: {missing}" if missing else "")
                         + (f"; unexpected: {extra}" if extra else "")))
    if decision.rule is not None and decision.index is not None:
        line = desired_rules[decision.index]
        checks.append(_check(f"deciding rule {decision.rule.id} ({decision.reason})",
                             line in actual, line, "present" if line in actual else
                             "MISSING: the kernel does not apply it"))
        if decision.rule.group:
            name = set_name(decision.rule.group)
            remote = trace.dst.ip if direction == "egress" else trace.src.ip
            elements = set_elements(name)
            held = elements is not None and _holds(elements, remote)
            checks.append(_check(f"member set {name} ({decision.rule.group})", held,
                                 f"holds {remote}", "holds it" if held else
                                 "missing" if elements is None else f"lacks it: {elements}"))
    map_name = "egress" if direction == "egress" else "ingress"
    ok, text = _nft("list", "map", "ip", TABLE, map_name)
    jump = f"jump {chain}"
    checks.append(_check(f"{map_name} map element of {port.endpoint}", ok and jump in text,
                         jump, "present" if ok and jump in text else "missing: the port's "
                         f"{direction} traffic is not sent through its chain"))
    return checks


INTEGRATION_BRIDGE = "ndoi1"  # plugins.openflow.names (read-only use: no import of a driver)


def ovs_target() -> list[str]:
    remote = os.environ.get("NETD_OVSDB", "unix:/var/run/openvswitch/db.sock")
    if remote.startswith("unix:"):
        ctl = Path(remote.removeprefix("unix:")).parent / "ovs-vswitchd.ctl"
        if ctl.exists():
            return ["-t", str(ctl)]
    return []


def ofproto_trace(flow: str) -> tuple[bool, str]:
    try:
        result = subprocess.run(["ovs-appctl", *ovs_target(), "ofproto/trace",
                                 INTEGRATION_BRIDGE, flow], capture_output=True, text=True,
                                timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    return result.returncode == 0, result.stdout if result.returncode == 0 else result.stderr


def check_openflow(trace: Trace, port: PortPolicy) -> dict[str, Any]:
    """OVS's own verdict on the flow from the source's port (the source is local)."""
    src, dst, flow = trace.src, trace.dst, trace.flow
    match = (f"in_port={port.link},{flow.protocol},dl_src={src.mac},dl_dst={dst.mac},"
             f"nw_src={src.ip},nw_dst={dst.ip}")
    if flow.port is not None:
        match += f",tp_dst={flow.port}"
    whole = src.host == dst.host
    expected = (trace.verdict == "allow" if whole
                else bool(trace.decisions) and trace.decisions[0].allowed)
    what = f"ofproto/trace {INTEGRATION_BRIDGE} {match}" + ("" if whole else " (egress)")
    for attempt in range(2):
        ok, text = ofproto_trace(match)
        actions = re.findall(r"^Datapath actions: (.*)$", text, re.MULTILINE)
        forwarded = bool(actions) and actions[-1].strip() != "drop"
        if not ok or forwarded == expected or attempt:
            break
        # OVS resolves a tunnel's underlay neighbour on demand, and a just-attached
        # endpoint's flows may be in flight: one more look before calling it a mismatch
        time.sleep(1.0)
    if not ok or not actions:
        return {**_check(what, False, "forwarded" if expected else "dropped",
                         f"ofproto/trace failed: {text.strip()[:300]}"), "verdict": "unknown"}
    return {**_check(what, forwarded == expected, "forwarded" if expected else "dropped",
                     f"{'forwarded' if forwarded else 'dropped'} (datapath actions: "
                     f"{actions[-1].strip()})"),
            "verdict": "allow" if forwarded else "deny"}


def check(trace: Trace, this_host: str) -> dict[str, Any]:
    """Checks on this host's ends; `mismatch` when any fails, with what the kernel does."""
    checks: list[dict[str, Any]] = []
    unchecked: list[str] = []
    ends = {"egress": trace.ports.get("src"), "ingress": trace.ports.get("dst")}
    for decision in trace.decisions:
        port = ends[decision.direction]
        if port is None:
            continue
        if decision.host != this_host:
            unchecked.append(f"{decision.direction} on {decision.host}: run `netctl trace` "
                             f"on {decision.host}")
        elif port.driver in FLOW_TABLE_DRIVERS:
            if decision.direction == "ingress" and trace.src.host != this_host:
                unchecked.append(f"ingress on {decision.host}: {port.driver} decides it in "
                                 "the switch behind the tunnel (ofproto/trace from the "
                                 f"source's host, {trace.src.host}, covers the egress)")
        else:
            checks += check_port(trace, decision, port)
    source = ends["egress"]
    if (source is not None and source.driver in FLOW_TABLE_DRIVERS
            and trace.src.host == this_host):
        checks.append(check_openflow(trace, source))
    src, dst = trace.src, trace.dst
    if trace.verdict == "deny" and not trace.decisions and src.host == dst.host == this_host:
        ok, text = _nft("list", "set", "ip", TABLE, "same_tenant")
        checks.append(_check("tenant boundary (same_tenant set)", ok, "bridge pair absent",
                             "checked" if ok else f"netd's table is missing: {text.strip()}"))
    failed = [c for c in checks if not c["ok"]]
    actual = trace.verdict
    told = [c["verdict"] for c in failed if "verdict" in c]
    if told:
        actual = told[0]
    elif failed and trace.verdict == "allow":
        actual = "deny"  # a missing accept falls through to the port's closing drop
    elif failed and trace.verdict == "deny":
        actual = "unknown"
    return {"host": this_host, "checks": checks, "unchecked": unchecked,
            "mismatch": bool(failed), "kernel_verdict": actual if checks else None}
