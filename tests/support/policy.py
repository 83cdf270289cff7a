"""Shared harness of the policy tests (weave, openflow, flannel): networks and
containers built through netctl, probes, captures inside containers. The tests that use
it bring their own lab (netd.lab.Lab, or plugins.openflow.lab.OvsLab for openflow)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from netd.lab import Lab, ns_exec, run


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


def netctl_fails(lab: Lab, host: str, *args: str) -> str:
    r = lab.netctl(host, *args, check=False)
    assert r.returncode != 0, f"netctl {' '.join(args)} should fail: {r.stdout}"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


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
