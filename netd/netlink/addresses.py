"""IPv4 addresses of links netd owns (container ends of veths)."""

from __future__ import annotations

from netd.netlink.links import AF_INET, LinkRef, Links
from netd.netlink.sockets import tolerant


class Addresses(Links):
    def list_addresses(self, name: LinkRef, netns: str | None = None) -> set[tuple[str, int]]:
        """The IPv4 addresses of `name` as (ip, prefixlen)."""
        link = self._need(name, netns)
        with self._reading(f"read addresses of {link.name}", netns):
            return {
                (str(m.get_attr("IFA_ADDRESS")), int(m["prefixlen"]))
                for m in self._ipr(netns).get_addr(family=AF_INET, index=link.index)
            }

    def delete_address(
        self, name: LinkRef, ip: str, prefixlen: int, netns: str | None = None
    ) -> int:
        link = self._need(name, netns)
        ipr = self._ipr(netns)
        return tolerant(
            f"remove address {ip}/{prefixlen} from {link.name}",
            lambda: ipr.addr("del", index=link.index, address=ip, prefixlen=prefixlen),
            netns,
            absent_ok=True,
        )

    def ensure_address(
        self, name: LinkRef, ip: str, prefixlen: int, netns: str | None = None,
        *, fresh: bool = False,
    ) -> int:
        """`ip/prefixlen` is the only IPv4 address of `name` (a link netd owns).
        `fresh`: the link was just created and has no IPv4 address (nothing to read)."""
        link = self._need(name, netns)
        have = set() if fresh else self.list_addresses(link, netns)
        changed = 0
        for addr, plen in sorted(have - {(ip, prefixlen)}):
            changed += self.delete_address(link, addr, plen, netns)
        if (ip, prefixlen) not in have:
            ipr = self._ipr(netns)
            changed += tolerant(
                f"add address {ip}/{prefixlen} to {link.name}",
                lambda: ipr.addr("add", index=link.index, address=ip, prefixlen=prefixlen),
                netns,
                exists_ok=True,
            )
        return changed
