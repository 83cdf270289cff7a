"""A private Open vSwitch per simulated host (tests, benchmarks, the demo): ovsdb-server +
ovs-vswitchd started inside the host's network namespace with their own run/db/log
directories, so several labs (and other helpers' tests) never share an OVS.

The userspace datapath needs the underlay on an OVS bridge: each host's `ul0` becomes a
port of bridge `brul` (standalone, NORMAL forwarding, the host's own configuration, not
netd's) and the host address moves to brul's internal port; OVS then resolves tunnel
routes and neighbours itself. `ul0` answers no ARP any more (arp_ignore=8) and has
checksum/TSO/GSO offloads off, as every veth attached to OVS needs.

`OvsLab` is a netd.lab.Lab whose hosts get their OVS before their netd starts; netd is
told the host's OVSDB socket, controller port and underlay bridge (for MAC2MAC) through
NETD_OVSDB / NETD_OF_PORT / NETD_OF_UNDERLAY_BRIDGE.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import IO, Any

from netd.lab import Lab, ns_exec, run

SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
UNDERLAY_BRIDGE = "brul"
OFFLOADS_OFF = ("tx", "off", "tso", "off", "gso", "off")


def ovs_available() -> bool:
    return all(shutil.which(b) for b in ("ovsdb-server", "ovs-vswitchd", "ovs-vsctl")) \
        and SCHEMA.exists()


class HostOvs:
    def __init__(self, netns: str, directory: Path, underlay_ip: str, prefixlen: int = 24
                 ) -> None:
        self.netns = netns
        self.dir = directory
        self.underlay_ip = underlay_ip
        self.prefixlen = prefixlen
        self.db = directory / "conf.db"
        self.sock = directory / "db.sock"
        self.ovsdb: subprocess.Popen[bytes] | None = None
        self.vswitchd: subprocess.Popen[bytes] | None = None
        self._logs: list[IO[bytes]] = []

    @property
    def env(self) -> dict[str, str]:
        d = str(self.dir)
        return {**os.environ, "OVS_RUNDIR": d, "OVS_DBDIR": d, "OVS_LOGDIR": d,
                "OVS_PKGDATADIR": "/usr/share/openvswitch"}

    @property
    def remote(self) -> str:
        return f"unix:{self.sock}"

    def _popen(self, name: str, *cmd: str) -> subprocess.Popen[bytes]:
        log = open(self.dir / f"{name}.out", "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        return subprocess.Popen(ns_exec(self.netns, *cmd), stdout=log, stderr=subprocess.STDOUT,
                                env=self.env)

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.db.exists():
            run(["ovsdb-tool", "create", str(self.db), str(SCHEMA)])
        self.ovsdb = self._popen(
            "ovsdb-server", "ovsdb-server", str(self.db), f"--remote=punix:{self.sock}",
            f"--pidfile={self.dir / 'ovsdb-server.pid'}",
            f"--unixctl={self.dir / 'ovsdb-server.ctl'}",
            f"--log-file={self.dir / 'ovsdb-server.log'}")
        deadline = time.monotonic() + 10
        while not self.sock.exists():
            if self.ovsdb.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ovsdb-server in {self.netns} did not start")
            time.sleep(0.02)
        self.vsctl("--no-wait", "init")
        self.start_vswitchd()
        self._underlay_on_ovs()

    def start_vswitchd(self) -> None:
        self.vswitchd = self._popen(
            "ovs-vswitchd", "ovs-vswitchd", self.remote,
            f"--pidfile={self.dir / 'ovs-vswitchd.pid'}",
            f"--unixctl={self.dir / 'ovs-vswitchd.ctl'}",
            f"--log-file={self.dir / 'ovs-vswitchd.log'}")
        deadline = time.monotonic() + 10
        while self.vsctl("--timeout=1", "show", check=False).returncode != 0 or \
                not (self.dir / "ovs-vswitchd.ctl").exists():
            if self.vswitchd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ovs-vswitchd in {self.netns} did not start")
            time.sleep(0.05)

    def stop_vswitchd(self, kill: bool = False) -> None:
        _terminate(self.vswitchd, signal.SIGKILL if kill else signal.SIGTERM)
        self.vswitchd = None

    def _underlay_on_ovs(self) -> None:
        link = json.loads(run(ns_exec(self.netns, "ip", "-j", "link", "show", "ul0")).stdout)
        mac = link[0]["address"]
        self.vsctl("add-br", UNDERLAY_BRIDGE, "--", "set", "bridge", UNDERLAY_BRIDGE,
                   "datapath_type=netdev", f"other_config:hwaddr={mac}",
                   "--", "add-port", UNDERLAY_BRIDGE, "ul0")
        address = f"{self.underlay_ip}/{self.prefixlen}"
        for cmd in (
            ["ethtool", "-K", "ul0", *OFFLOADS_OFF],
            ["sysctl", "-qw", "net.ipv4.conf.ul0.arp_ignore=8"],
            ["ip", "addr", "del", address, "dev", "ul0"],
            ["ip", "addr", "add", address, "dev", UNDERLAY_BRIDGE],
            ["ip", "link", "set", UNDERLAY_BRIDGE, "up"],
        ):
            run(ns_exec(self.netns, *cmd))

    def vsctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(ns_exec(self.netns, "ovs-vsctl", f"--db={self.remote}", *args),
                              capture_output=True, text=True, check=check, timeout=30,
                              env=self.env)

    def ofctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(ns_exec(self.netns, "ovs-ofctl", "-O", "OpenFlow13", *args),
                              capture_output=True, text=True, check=check, timeout=30,
                              env=self.env)

    def appctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ns_exec(self.netns, "ovs-appctl", "-t", str(self.dir / "ovs-vswitchd.ctl"), *args),
            capture_output=True, text=True, check=False, timeout=30, env=self.env)

    def stop(self) -> None:
        self.stop_vswitchd()
        _terminate(self.ovsdb)
        self.ovsdb = None
        for log in self._logs:
            log.close()
        self._logs.clear()


def _terminate(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class OvsLab(Lab):
    """A Lab whose every host runs its own OVS, started before its netd."""

    CONTROLLER_PORT = 6653  # per host netns, so the same number on every host

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ovs: dict[str, HostOvs] = {}

    def start_netd(self, name: str, wait: float = 20.0) -> None:
        host = self.hosts[name]
        if name not in self.ovs:
            ovs = self.ovs[name] = HostOvs(host.netns, self.dir / name / "ovs", host.underlay_ip)
            ovs.start()
            host.env.update({"NETD_OVSDB": ovs.remote,
                             "NETD_OF_PORT": str(self.CONTROLLER_PORT),
                             "NETD_OF_UNDERLAY_BRIDGE": UNDERLAY_BRIDGE})
        super().start_netd(name, wait)

    def close(self) -> None:
        for host in self.hosts.values():  # netd first: it must not see OVS vanish and act
            self._terminate(host.proc)
            host.proc = None
        for ovs in self.ovs.values():
            ovs.stop()
        self.ovs.clear()
        super().close()
