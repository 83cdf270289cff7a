"""Neighbours (ARP entries and per-interface ARP parameters) and the bridge/vxlan
forwarding database (FDB)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
from pyroute2.netlink.nlsocket import NetlinkRequest
from pyroute2.netlink.rtnl import RTM_SETNEIGHTBL
from pyroute2.netlink.rtnl.ndtmsg import ndtmsg

from netd.netlink.links import AF_INET, LinkRef, Links
from netd.netlink.sockets import tolerant

ZERO_MAC = "00:00:00:00:00:00"  # fdb flood (BUM) entries
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NTF_SELF = 0x02


@dataclass(frozen=True)
class FdbEntry:
    mac: str
    dst: str


class Neighbours(Links):
    def ensure_arp_retrans(
        self, name: LinkRef, ms: int, netns: str | None = None, *, fresh: bool = False
    ) -> int:
        """ARP retransmit interval of one interface (the kernel's retrans_time_ms).

        Container ends get a short one: the first ARP for a peer attached a moment ago
        may go out before this host has its neighbour entry, and the default 1 s retry
        would make a fresh endpoint look unreachable for a second. `fresh`: the link was
        just created (its parameters are the defaults: written without reading them)."""
        link = self._need(name, netns)
        ipr = self._ipr(netns)
        with self._reading(f"read neighbour parameters of {link.name}", netns):
            for table in () if fresh else ipr.get_ntables(AF_INET):
                if table.get_attr("NDTA_NAME") != "arp_cache":
                    continue
                parms = dict((table.get_attr("NDTA_PARMS") or {}).get("attrs", ()))
                if parms.get("NDTPA_IFINDEX") == link.index:
                    if parms.get("NDTPA_RETRANS_TIME") == ms:
                        return 0
                    break
        msg = ndtmsg()
        msg["family"] = AF_INET
        msg["attrs"] = [
            ("NDTA_NAME", "arp_cache"),
            ("NDTA_PARMS", {"attrs": [("NDTPA_IFINDEX", link.index), ("NDTPA_RETRANS_TIME", ms)]}),
        ]

        async def send() -> list[Any]:
            request = NetlinkRequest(
                ipr.asyncore, msg, msg_type=RTM_SETNEIGHTBL,
                msg_flags=NLM_F_REQUEST | NLM_F_ACK,
            )
            await request.send()
            return [m async for m in request.response()]

        return tolerant(
            f"set ARP retransmit time of {link.name}",
            lambda: ipr.asyncore.event_loop.run_until_complete(send()),
            netns,
        )

    # -- forwarding database (on vxlan devices) -------------------------------------

    def fdb_entries(self, dev: str) -> set[FdbEntry]:
        """The device's own (self) entries with a remote destination."""
        link = self._need(dev)
        with self._reading(f"read fdb of {dev}"):
            msgs = self._ipr().fdb("dump", ifindex=link.index)
        return {
            FdbEntry(str(m.get_attr("NDA_LLADDR")).lower(), str(m.get_attr("NDA_DST")))
            for m in msgs
            if m["ifindex"] == link.index
            and m.get_attr("NDA_DST") is not None
            and m["flags"] & NTF_SELF
        }

    def fdb_add(self, dev: str, mac: str, dst: str) -> int:
        """A permanent entry mac -> dst. The all-zero MAC may have many destinations
        (one per flood target); any other MAC has exactly one."""
        link = self._need(dev)
        command = "append" if mac == ZERO_MAC else "replace"
        ipr = self._ipr()
        tolerant(
            f"add fdb entry {mac} dst {dst} on {dev}",
            lambda: ipr.fdb(
                command,
                ifindex=link.index,
                lladdr=mac,
                dst=dst,
                state=NUD_PERMANENT | NUD_NOARP,
                flags=NTF_SELF,
            ),
            exists_ok=True,
        )
        return 1

    def fdb_del(self, dev: str, mac: str, dst: str) -> int:
        link = self.get_link(dev)
        if link is None:
            return 0
        ipr = self._ipr()
        return tolerant(
            f"delete fdb entry {mac} dst {dst} on {dev}",
            lambda: ipr.fdb("del", ifindex=link.index, lladdr=mac, dst=dst),
            absent_ok=True,
        )

    # -- neighbours (on vxlan devices) ---------------------------------------------

    def neigh_entries(self, dev: str, netns: str | None = None) -> dict[str, str]:
        """Permanent IPv4 neighbours of `dev`: ip -> mac."""
        link = self._need(dev, netns)
        with self._reading(f"read neighbours of {dev}", netns):
            msgs = self._ipr(netns).neigh("dump", ifindex=link.index, family=AF_INET)
        return {
            str(m.get_attr("NDA_DST")): str(m.get_attr("NDA_LLADDR")).lower()
            for m in msgs
            if m["ifindex"] == link.index
            and m["state"] & NUD_PERMANENT
            and m.get_attr("NDA_LLADDR") is not None
        }

    def neigh_set(self, dev: str, ip: str, mac: str, netns: str | None = None) -> int:
        link = self._need(dev, netns)
        ipr = self._ipr(netns)
        tolerant(
            f"set neighbour {ip} lladdr {mac} on {dev}",
            lambda: ipr.neigh(
                "replace", ifindex=link.index, dst=ip, lladdr=mac, state=NUD_PERMANENT
            ),
            netns,
        )
        return 1

    def neigh_del(self, dev: str, ip: str, netns: str | None = None) -> int:
        link = self.get_link(dev, netns)
        if link is None:
            return 0
        ipr = self._ipr(netns)
        return tolerant(
            f"delete neighbour {ip} on {dev}",
            lambda: ipr.neigh("del", ifindex=link.index, dst=ip),
            netns,
            absent_ok=True,
        )
