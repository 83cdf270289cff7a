"""Traffic probes run inside container namespaces with the system python (stdlib; scapy
from Debian's python3-scapy for crafted frames): a TCP/UDP server that answers with its
name, a client that reports the answer or nothing, and a frame sender."""

from __future__ import annotations

import subprocess
from typing import Any

from netd.lab import ns_exec, run

PYTHON = "/usr/bin/python3"

SERVER = r"""
import socket, sys, threading
name = sys.argv[1].encode()
def tcp(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(128)
    while True:
        c, _ = s.accept()
        try:
            c.settimeout(2); c.recv(100); c.sendall(name)
        except OSError:
            pass
        c.close()
def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port))
    while True:
        data, peer = s.recvfrom(100); s.sendto(name, peer)
for spec in sys.argv[2:]:
    proto, port = spec.split("/")
    threading.Thread(target=tcp if proto == "tcp" else udp, args=(int(port),), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

CLIENT = r"""
import socket, sys
ip, port, proto, timeout, source = sys.argv[1:6]
port, timeout = int(port), float(timeout)
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET, kind); s.settimeout(timeout)
if source:
    s.bind((source, 0))
try:
    if proto == "tcp":
        s.connect((ip, port)); s.sendall(b"hi"); print(s.recv(100).decode())
    else:
        s.sendto(b"hi", (ip, port)); print(s.recvfrom(100)[0].decode())
except OSError as exc:
    print("FAIL", exc); sys.exit(1)
"""

# repeated connects, one line per attempt ("ok"/"fail"), until killed
PROBE_LOOP = r"""
import socket, sys, time
ip, port, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
while True:
    s = socket.socket(); s.settimeout(0.3)
    try:
        s.connect((ip, port)); print("ok", flush=True)
    except OSError:
        print("fail", flush=True)
    s.close(); time.sleep(interval)
"""


def start_server(netns: str, name: str, *specs: str) -> subprocess.Popen[str]:
    """A server in `netns` answering `name` on specs like "tcp/8080", "udp/53"."""
    proc = subprocess.Popen(ns_exec(netns, PYTHON, "-c", SERVER, name, *specs),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "ready" not in line:
        proc.kill()
        raise RuntimeError(f"server in {netns} did not start: {line}")
    return proc


def probe(netns: str, ip: str, port: int, proto: str = "tcp", timeout: float = 0.5,
          source: str = "") -> str | None:
    """The server's name if a request from `netns` got its answer, else None."""
    r = run(ns_exec(netns, PYTHON, "-c", CLIENT, ip, str(port), proto, str(timeout), source),
            check=False, timeout=timeout + 10)
    return r.stdout.strip() if r.returncode == 0 else None


def send_frames(netns: str, frames: list[dict[str, Any]], iface: str = "eth0") -> None:
    """Send crafted frames with scapy from `netns`: each {"kind": "udp"|"arp", ...}."""
    script = r"""
import json, sys
from scapy.all import ARP, IP, UDP, Ether, Raw, sendp, conf
conf.verb = 0
for f in json.loads(sys.argv[2]):
    if f["kind"] == "udp":
        pkt = (Ether(src=f["src_mac"], dst=f["dst_mac"]) / IP(src=f["src_ip"], dst=f["dst_ip"])
               / UDP(sport=f.get("sport", 40000), dport=f["port"]) / Raw(f["payload"].encode()))
    else:
        pkt = (Ether(src=f["src_mac"], dst=f.get("dst_mac", "ff:ff:ff:ff:ff:ff"))
               / ARP(op=f.get("op", 2), hwsrc=f["hwsrc"], psrc=f["psrc"],
                     hwdst=f.get("hwdst", "00:00:00:00:00:00"), pdst=f["pdst"]))
    sendp(pkt, iface=sys.argv[1], count=3)
"""
    import json
    run(ns_exec(netns, PYTHON, "-c", script, iface, json.dumps(frames)), timeout=60)
