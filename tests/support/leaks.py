"""What a lab's store and hosts hold, read from outside netd: the store over etcdctl,
each host's kernel objects over `ip`/`bridge`/`nft`. Tests compare these to prove that
nothing was leaked, half-written or renumbered (store outages, crash points, sweeps)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from netd.lab import Lab, ns_exec, run

ROOT = "/netd/"
RTPROT_NETD = "91"


def store_records(lab: Lab, member: str = "m1", prefix: str = ROOT) -> dict[str, str]:
    """Every key under `prefix` and its value, read from etcd member `member`."""
    result = lab.etcdctl(member, "get", "--prefix", prefix, "-w", "json", timeout=20)
    assert result.returncode == 0, result.stderr
    kvs = json.loads(result.stdout).get("kvs") or []
    return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode()
            for kv in kvs}


def store_problems(records: dict[str, str], markers: bool = True) -> list[str]:
    """What does not add up in netd's records: an address reservation or MAC claim
    without its endpoint, an endpoint without both, and (with `markers`) a removal
    marker (a crashed `network rm` leaves one under a 10 s lease: it expires)."""
    endpoints: dict[tuple[str, str], dict[str, str]] = {}
    addresses: dict[tuple[str, str], str] = {}  # (network, ip) -> owner
    claims: dict[tuple[str, str], str] = {}  # (network, mac) -> owner
    problems = []
    for key, value in records.items():
        parts = key[len(ROOT):].split("/")
        if parts[0] == "endpoints" and len(parts) == 3:
            endpoints[(parts[1], parts[2])] = json.loads(value)
        elif parts[0] == "ipam" and len(parts) == 4 and parts[2] == "addr":
            addresses[(parts[1], parts[3])] = json.loads(value)["owner"]
        elif parts[0] == "ipam" and len(parts) == 4 and parts[2] == "mac":
            claims[(parts[1], parts[3])] = json.loads(value)["owner"]
        elif parts[0] in ("removing", "sg-removing") and markers:
            problems.append(f"removal marker left: {key}")
    for (network, name), ep in endpoints.items():
        if addresses.get((network, ep["ip"])) != name:
            problems.append(f"endpoint {network}/{name} ({ep['ip']}) has no address reservation")
        if claims.get((network, ep["mac"].lower())) != name and claims.get(
                (network, ep["mac"])) != name:
            problems.append(f"endpoint {network}/{name} ({ep['mac']}) has no MAC claim")
    for (network, ip), owner in addresses.items():
        if (network, owner) not in endpoints:
            problems.append(f"address {ip} on {network} reserved for {owner}, no endpoint")
    for (network, mac), owner in claims.items():
        if (network, owner) not in endpoints:
            problems.append(f"MAC {mac} on {network} claimed by {owner}, no endpoint")
    return problems


@dataclass(frozen=True)
class KernelObjects:
    """The netd-owned kernel objects of one host namespace, as text lines."""

    links: frozenset[str]
    routes: frozenset[str]
    neighbours: frozenset[str]
    fdb: frozenset[str]
    nft: frozenset[str]


def kernel_objects(netns: str, link_prefix: str = "nd") -> KernelObjects:
    """Links whose name starts with netd's prefix, routes of netd's protocol (every
    table), neighbour and FDB entries on those links, and the rules, set elements and
    map entries of netd's nft tables (names starting with "netd")."""
    def lines(*cmd: str) -> list[str]:
        return run(ns_exec(netns, *cmd), check=False).stdout.splitlines()

    links = {line.split(":")[1].strip().split("@")[0] for line in lines("ip", "-o", "link")}
    owned = {name for name in links if name.startswith(link_prefix)}
    routes = {line for line in lines("ip", "route", "show", "table", "all", "proto", RTPROT_NETD)}
    neigh = {line for line in lines("ip", "neigh", "show")
             if any(f"dev {name} " in line + " " for name in owned)}
    fdb = {line for line in lines("bridge", "fdb", "show")
           if any(f"dev {name} " in line + " " for name in owned)}
    nft = set()
    listed = run(ns_exec(netns, "nft", "-j", "list", "ruleset"), check=False).stdout
    for item in json.loads(listed or '{"nftables": []}')["nftables"]:
        for kind, body in item.items():
            if kind == "metainfo" or not str(body.get("table", body.get("name", ""))).startswith(
                    "netd"):
                continue
            if kind in ("set", "map"):
                nft.add(f"{kind} {body['table']} {body['name']} "
                        f"{json.dumps(body.get('elem', []), sort_keys=True)}")
            elif kind == "rule":
                nft.add(f"rule {body['table']} {body['chain']} "
                        f"{json.dumps(body.get('expr', []), sort_keys=True)}")
            elif kind in ("chain", "table"):
                nft.add(f"{kind} {body.get('table', '')} {body['name']}")
    return KernelObjects(frozenset(owned), frozenset(routes), frozenset(neigh),
                         frozenset(fdb), frozenset(nft))
