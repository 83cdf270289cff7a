"""Harness for the gateway tests: a lab, an outside host (a namespace on the underlay
running no netd), routes on it, and an echo server that tells the source it saw."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from typing import Any

from netd.lab import UNDERLAY_NET, Lab, ns_exec, run

OUTSIDE_IP = f"{UNDERLAY_NET}.200"


@contextlib.contextmanager
def gateway_lab(**kwargs: Any) -> Iterator[Lab]:
    """A started Lab (its close() also removes the daemons' router namespaces)."""
    with Lab(**kwargs) as lab:
        yield lab


def add_outside(lab: Lab, name: str = "out", address: str = OUTSIDE_IP) -> str:
    """An outside host on the underlay (no netd); returns its netns name."""
    netns = f"{lab.prefix}-{name}"
    lab._plug(netns, f"p-{name}", address)
    return netns


def route_via(netns: str, subnet: str, via: str) -> None:
    run(ns_exec(netns, "ip", "route", "replace", subnet, "via", via))


def unroute(netns: str, subnet: str) -> None:
    run(ns_exec(netns, "ip", "route", "del", subnet), check=False)


PEER_ECHO = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(100); s.sendto(peer[0].encode(), peer)
"""


def start_peer_echo(netns: str, port: int) -> subprocess.Popen[str]:
    """A UDP server in `netns` answering with the source address it saw."""
    proc = subprocess.Popen(ns_exec(netns, "/usr/bin/python3", "-c", PEER_ECHO, str(port)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    if "ready" not in proc.stdout.readline():
        proc.kill()
        raise RuntimeError(f"peer echo in {netns} did not start")
    return proc
