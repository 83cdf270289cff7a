"""What the gateway does to the kernel besides netlink: router namespaces (`ip netns`),
sysctls and nft inside them (through `nsenter --net`, a child process: the daemon never
switches its own netns), and sysctls of its own netns."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from netd.errors import DatapathError
from netd.gateway.names import netns_path

TIMEOUT = 10.0


def _run(cmd: Sequence[str], what: str, stdin: str | None = None) -> str:
    try:
        result = subprocess.run(list(cmd), input=stdin, capture_output=True, text=True,
                                timeout=TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DatapathError(f"{what}: {exc}") from None
    if result.returncode != 0:
        raise DatapathError(f"{what}: {result.stderr.strip()[:500]}")
    return result.stdout


def _inside(netns: str | None) -> list[str]:
    return [] if netns is None else ["nsenter", f"--net={netns_path(netns)}"]


def netns_exists(name: str) -> bool:
    return Path(netns_path(name)).exists()


def create_netns(name: str) -> int:
    if netns_exists(name):
        return 0
    _run(["ip", "netns", "add", name], f"create router namespace {name}")
    return 1


def delete_netns(name: str) -> int:
    if not netns_exists(name):
        return 0
    _run(["ip", "netns", "del", name], f"delete router namespace {name}")
    return 1


def sysctls(netns: str | None, values: Mapping[str, str]) -> None:
    """Set sysctls in router namespace `netns` (None: this daemon's own netns)."""
    if netns is None:
        for key, value in values.items():
            path = Path("/proc/sys") / key.replace(".", "/")
            try:
                if path.read_text().strip() != value:
                    path.write_text(value + "\n")
            except OSError as exc:
                raise DatapathError(f"cannot set {key}={value}: {exc.strerror}") from None
        return
    _run([*_inside(netns), "sysctl", "-qw", *(f"{k}={v}" for k, v in values.items())],
         f"set sysctls in {netns}")


def nft(netns: str | None, text: str) -> None:
    """One nft transaction (a file is applied all or nothing) in `netns` (None: here)."""
    _run([*_inside(netns), "nft", "-f", "-"], "nft refused the gateway rules", stdin=text)


def tables(netns: str | None = None) -> set[tuple[str, str]]:
    out = _run([*_inside(netns), "nft", "-j", "list", "tables"], "nft list tables")
    items = json.loads(out or "{}").get("nftables", [])
    return {(i["table"]["family"], i["table"]["name"]) for i in items if "table" in i}
