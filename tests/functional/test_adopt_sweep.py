"""Adopt and sweep (issue 12, build item 4): while h1's netd is stopped, objects netd would
own but the store does not want are planted in h1's namespace - links with netd's names,
FDB and neighbour entries on netd's VXLAN device, a route of netd's protocol on a
leftover bridge of netd's, elements and a chain in netd's nft table - beside foreign
objects of the same kinds (other link names, other route protocols, another nft table,
entries on a foreign bridge). After netd's first full sync the owned leftovers are gone,
every foreign object is exactly as planted, and the wanted datapath still forwards.
"""

from __future__ import annotations

import json

import pytest

from netd.lab import Lab, ns_exec, run
from plugins.weave.names import bridge_name, vxlan_name
from tests.support.netdapi import synced
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.root]

GHOST_MAC = "0e:de:ad:00:00:02"
FOREIGN_MAC = "0e:de:ad:00:00:03"


def test_first_sync_sweeps_owned_leftovers_and_leaves_foreign_objects() -> None:
    with Lab(hosts=2) as lab:
        lab.netctl("h1", "network", "create", "sweep", "--subnet", "10.78.0.0/24")
        vni = int(lab.netctl_json("h1", "network", "inspect", "sweep")["vni"])
        c1, c2 = lab.add_container("h1", "c1"), lab.add_container("h2", "c2")
        lab.netctl("h1", "attach", c1, "--network", "sweep", "--ip", "10.78.0.10")
        lab.netctl("h2", "attach", c2, "--network", "sweep", "--ip", "10.78.0.20")
        assert lab.wait_ping(c1, "10.78.0.20", timeout=5)
        netns = lab.hosts["h1"].netns
        vxlan = vxlan_name(vni)
        ghost_vni = vni + 1000

        def sh(*cmd: str) -> str:
            return run(ns_exec(netns, *cmd)).stdout

        lab.stop_netd("h1")
        owned = [
            ["ip", "link", "add", bridge_name(ghost_vni), "type", "bridge"],
            ["ip", "link", "add", "ndhdeadbeef", "type", "veth", "peer", "name", "ndhfeedf00d"],
            ["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", vxlan, "dst", "10.250.0.99"],
            ["bridge", "fdb", "add", GHOST_MAC, "dev", vxlan, "dst", "10.250.0.99"],
            ["ip", "neigh", "add", "10.78.0.200", "lladdr", GHOST_MAC, "dev", vxlan,
             "nud", "permanent"],
            ["ip", "link", "set", bridge_name(ghost_vni), "up"],
            # a route of netd's protocol on a link of netd's that nothing wants (routes
            # of netd's protocol on links netd still uses belong to the link's driver)
            ["ip", "route", "add", "10.99.0.0/24", "dev", bridge_name(ghost_vni), "proto", "91"],
            ["nft", "add", "chain", "bridge", "netd", "p_ndhdeadbeef"],
            ["nft", "add", "element", "bridge", "netd", "from_ports",
             '{ "ndhdeadbeef" : drop }'],
        ]
        foreign = [
            ["ip", "link", "add", "fxbr0", "type", "bridge"],
            ["ip", "link", "set", "fxbr0", "up"],
            ["ip", "link", "add", "zzveth0", "type", "veth", "peer", "name", "zzveth1"],
            ["ip", "link", "add", "nx1234", "type", "bridge"],  # close to netd's, not netd's
            ["ip", "route", "add", "192.0.2.0/24", "dev", "fxbr0", "proto", "static"],
            ["ip", "route", "add", "198.51.100.0/24", "dev", "fxbr0", "proto", "90"],
            ["ip", "route", "add", "203.0.113.0/24", "dev", "ul0", "proto", "static"],
            ["ip", "neigh", "add", "192.0.2.5", "lladdr", FOREIGN_MAC, "dev", "fxbr0",
             "nud", "permanent"],
            ["bridge", "fdb", "add", FOREIGN_MAC, "dev", "fxbr0", "self", "permanent"],
            ["nft", "add", "table", "inet", "foreign"],
            ["nft", "add", "chain", "inet", "foreign", "keep"],
            ["nft", "add", "set", "inet", "foreign", "peers", "{ type ipv4_addr; }"],
            ["nft", "add", "element", "inet", "foreign", "peers", "{ 192.0.2.7 }"],
            ["nft", "add", "table", "bridge", "netdx"],  # a name that starts like netd's
        ]
        for cmd in owned + foreign:
            sh(*cmd)

        def foreign_state() -> dict[str, str]:
            return {
                "links": "\n".join(sorted(
                    line.split(":")[1].strip() for line in sh("ip", "-o", "link").splitlines()
                    if any(n in line for n in ("fxbr0", "zzveth", "nx1234")))),
                "routes": "\n".join(line for line in sh("ip", "route").splitlines()
                                    if line.startswith(("192.0.2.", "198.51.100.", "203.0.113."))),
                "neigh": sh("ip", "neigh", "show", "dev", "fxbr0"),
                "fdb": sh("bridge", "fdb", "show", "dev", "fxbr0"),
                "nft": sh("nft", "list", "table", "inet", "foreign")
                + sh("nft", "list", "table", "bridge", "netdx"),
            }

        planted = foreign_state()
        assert planted["links"].count("\n") == 3 and planted["routes"].count("\n") == 2
        assert "192.0.2.7" in planted["nft"] and FOREIGN_MAC in planted["fdb"]

        lab.start_netd("h1")
        synced(lab, "h1")

        def leftovers() -> list[str]:
            found = []
            links = sh("ip", "-o", "link")
            found += [n for n in (bridge_name(ghost_vni), "ndhdeadbeef", "ndhfeedf00d")
                      if f" {n}:" in links or f" {n}@" in links]
            fdb = sh("bridge", "fdb", "show", "dev", vxlan)
            found += [f"fdb {line}" for line in fdb.splitlines()
                      if "10.250.0.99" in line or GHOST_MAC in line]
            if "10.78.0.200 " in sh("ip", "neigh", "show", "dev", vxlan):
                found.append("neighbour 10.78.0.200")
            if "10.99.0.0/24" in sh("ip", "route", "show", "proto", "91"):
                found.append("route 10.99.0.0/24 proto 91")
            ruleset = json.loads(sh("nft", "-j", "list", "table", "bridge", "netd"))
            for item in ruleset["nftables"]:
                if item.get("chain", {}).get("name") == "p_ndhdeadbeef":
                    found.append("nft chain p_ndhdeadbeef")
                if "ndhdeadbeef" in json.dumps(item.get("map", {}).get("elem", [])):
                    found.append(f"nft element ndhdeadbeef in {item['map']['name']}")
            return found

        assert wait_until(lambda: not leftovers(), timeout=10), leftovers()
        assert foreign_state() == planted
        assert lab.wait_ping(c1, "10.78.0.20", timeout=5)
        assert lab.wait_ping(c2, "10.78.0.10", timeout=5)
