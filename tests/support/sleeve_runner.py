"""Sleeve engines on simulated hosts, for functional tests and bench/sleeve_engine.py.

The test process never switches network namespace, so each host's SleeveEngine runs in a
child started with `nsenter --net=/run/netns/HOST python -m tests.support.sleeve_runner`.
The child reads one JSON command per line on stdin and answers one JSON line on stdout:
  {"op": "ensure_network", "vni": 7, "tap": "tst7", "mtu": 1450, "key": "<64 hex>"|null}
  {"op": "set_peers", "vni": 7, "peers": ["10.199.0.2"]}
  {"op": "set_static_macs", "vni": 7, "macs": {"02:..": "10.199.0.2"}}
  {"op": "remove_network", "vni": 7} | {"op": "networks"} | {"op": "close"}
Answers: {"ok": RESULT} or {"error": "message", "type": "ErrorClass"}.

SleeveLab builds the topology: host namespaces joined by a veth underlay, and per network
a bridge, the engine's TAP and container namespaces, all named with a per-run prefix.
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
UNDERLAY_NET = "10.199.0"


def serve(underlay_ip: str, port: int) -> int:
    from netd.errors import NetdError
    from plugins.weave.sleeve import SleeveEngine

    engine = SleeveEngine(underlay_ip, port)
    print(json.dumps({"ok": "ready"}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd.pop("op")
        try:
            result: Any = None
            if op == "ensure_network":
                key = bytes.fromhex(cmd["key"]) if cmd.get("key") else None
                engine.ensure_network(cmd["vni"], cmd["tap"], cmd["mtu"], key)
            elif op == "set_peers":
                engine.set_peers(cmd["vni"], cmd["peers"])
            elif op == "set_static_macs":
                engine.set_static_macs(cmd["vni"], cmd["macs"])
            elif op == "remove_network":
                engine.remove_network(cmd["vni"])
            elif op == "networks":
                result = {str(k): v for k, v in engine.networks().items()}
                result["host"] = engine.stats()
            elif op == "close":
                engine.close()
                print(json.dumps({"ok": None}), flush=True)
                return 0
            else:
                raise ValueError(f"unknown op {op!r}")
            reply: dict[str, Any] = {"ok": result}
        except (NetdError, ValueError, KeyError) as exc:
            reply = {"error": str(exc), "type": type(exc).__name__}
        print(json.dumps(reply), flush=True)
    engine.close()
    return 0


def sh(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=timeout)


def in_ns(netns: str, *args: str) -> list[str]:
    """A command line that runs `args` in netns (mounts untouched, unlike ip netns exec)."""
    return ["nsenter", f"--net=/run/netns/{netns}", *args]


class SleeveProc:
    """Client of one engine child process."""

    def __init__(self, netns: str, underlay_ip: str, port: int = 6784) -> None:
        self.netns = netns
        self.underlay_ip = underlay_ip
        self.proc = subprocess.Popen(
            in_ns(netns, sys.executable, "-m", "tests.support.sleeve_runner",
                  "--underlay-ip", underlay_ip, "--port", str(port)),
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        first = self._read()
        if first.get("ok") != "ready":
            raise RuntimeError(f"sleeve runner in {netns} failed to start: {first}")

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"sleeve runner in {self.netns} exited ({self.proc.poll()})")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def call(self, op: str, **kwargs: Any) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **kwargs}) + "\n")
        self.proc.stdin.flush()
        reply = self._read()
        if "error" in reply:
            raise RuntimeError(f"{reply['type']}: {reply['error']}")
        return reply["ok"]

    def networks(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("networks")
        return result

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("close")
                self.proc.wait(timeout=10)
            except (RuntimeError, OSError, subprocess.TimeoutExpired, ValueError):
                self.proc.kill()
                self.proc.wait()


class SleeveLab:
    """Two (or more) simulated hosts with a veth/bridge underlay and sleeve networks."""

    def __init__(self, hosts: int = 2) -> None:
        self.tag = "tr" + secrets.token_hex(3)
        self.namespaces: list[str] = []
        self.engines: dict[str, SleeveProc] = {}
        self.hosts: list[str] = []
        self.underlay_ip: dict[str, str] = {}
        try:
            self._build_underlay(hosts)
        except BaseException:
            self.cleanup()
            raise

    def add_ns(self, role: str) -> str:
        name = f"{self.tag}{role}"
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def _build_underlay(self, count: int) -> None:
        """Two hosts: one veth pair. More: veths to a bridge in a switch namespace."""
        hosts = [self.add_ns(f"h{i}") for i in range(1, count + 1)]
        if count == 2:
            sh("ip", "-n", hosts[0], "link", "add", "tsu0", "type", "veth",
               "peer", "name", "tsu0", "netns", hosts[1])
        else:
            switch = self.add_ns("sw")
            sh("ip", "-n", switch, "link", "add", "tsu", "type", "bridge")
            sh("ip", "-n", switch, "link", "set", "tsu", "up")
            for i, host in enumerate(hosts, 1):
                sh("ip", "-n", switch, "link", "add", f"tsp{i}", "type", "veth",
                   "peer", "name", "tsu0", "netns", host)
                sh("ip", "-n", switch, "link", "set", f"tsp{i}", "master", "tsu", "up")
        for i, host in enumerate(hosts, 1):
            ip = f"{UNDERLAY_NET}.{i}"
            sh("ip", "-n", host, "addr", "add", f"{ip}/24", "dev", "tsu0")
            sh("ip", "-n", host, "link", "set", "tsu0", "up")
            self.hosts.append(host)
            self.underlay_ip[host] = ip

    def start_engine(self, host: str) -> SleeveProc:
        engine = SleeveProc(host, self.underlay_ip[host])
        self.engines[host] = engine
        return engine

    @staticmethod
    def tap_name(vni: int) -> str:
        return f"tst{vni}"

    def add_network(self, vni: int, mtu: int, key: bytes | None) -> None:
        """Bridge + engine TAP of network `vni` on every host, peers = the other hosts."""
        for host in self.hosts:
            bridge, tap_name = f"tsb{vni}", self.tap_name(vni)
            sh("ip", "-n", host, "link", "add", bridge, "type", "bridge")
            sh("ip", "-n", host, "link", "set", bridge, "mtu", str(mtu), "up")
            self.engines[host].call(
                "ensure_network", vni=vni, tap=tap_name, mtu=mtu,
                key=key.hex() if key else None,
            )
            self.attach_tap(host, vni, mtu)
            peers = [self.underlay_ip[h] for h in self.hosts if h != host]
            self.engines[host].call("set_peers", vni=vni, peers=peers)

    def attach_tap(self, host: str, vni: int, mtu: int) -> None:
        sh("ip", "-n", host, "link", "set", self.tap_name(vni), "master", f"tsb{vni}",
           "mtu", str(mtu), "up")

    def add_container(self, host: str, vni: int, ip: str, mtu: int, role: str) -> str:
        """A container netns with eth0 (ip/24, mtu) on the bridge of `vni` on `host`."""
        ns = self.add_ns(role)
        veth = f"tsv{role}"[:15]
        sh("ip", "-n", host, "link", "add", veth, "type", "veth", "peer", "name", "eth0",
           "netns", ns)
        sh("ip", "-n", host, "link", "set", veth, "master", f"tsb{vni}", "mtu", str(mtu), "up")
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "mtu", str(mtu), "up")
        return ns

    def cleanup(self) -> None:
        for engine in self.engines.values():
            engine.stop()
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)
        self.namespaces.clear()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--underlay-ip", required=True)
    parser.add_argument("--port", type=int, default=6784)
    args = parser.parse_args()
    return serve(args.underlay_ip, args.port)


if __name__ == "__main__":
    sys.exit(main())
