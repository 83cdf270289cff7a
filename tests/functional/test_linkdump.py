"""The direct link-dump parser (netd.netlink.linkdump) gives the very Links pyroute2's
decoder gives, on real links of every kind netd meets: veth pairs (bridged, up, down,
addrgenmode none, one end moved away), a bridge, a vxlan, a tun, lo."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest

from tests.functional.conftest import in_netns

pytestmark = [pytest.mark.root]

SETUP = """
link add ndbx1 type bridge
link add ndvx1 type vxlan id 42 dstport 4789 nolearning
link add ndhxa type veth peer name ndcxa
link add ndhxb type veth peer name ndcxb
link set ndhxa master ndbx1 up
link set ndhxb addrgenmode none
link set ndbx1 up mtu 1400
tuntap add ndtx1 mode tap
link set lo up
"""

SCRIPT = r'''
from dataclasses import replace
from pyroute2 import IPRoute
from netd.netlink.links import Link, _decode_link, _link_from_msg
from netd.netlink.linkdump import dump_links
direct = dump_links(Link, _decode_link)
decoded = [_link_from_msg(m) for m in IPRoute().get_links()]
assert len(direct) >= 9, direct
def steady(link):  # a bridge's timers tick between the two dumps
    return replace(link, info={k: v for k, v in link.info.items() if not k.endswith("_TIMER")})
assert [steady(a) for a in direct] == [steady(b) for b in decoded], [
    (a.name, {k: (v, b.info.get(k)) for k, v in a.info.items() if b.info.get(k) != v},
     replace(a, info={}) == replace(b, info={}))
    for a, b in zip(direct, decoded) if steady(a) != steady(b)]
assert any(link.info for link in direct)  # kind-specific data came through
print("ok", len(direct))
'''


def test_direct_parse_equals_pyroute2(make_netns: Callable[[str], str]) -> None:
    ns = make_netns("ldump")
    other = make_netns("ldumpo")
    in_netns(ns, "ip", "-batch", "-", check=False)
    for line in SETUP.strip().splitlines():
        in_netns(ns, "ip", *line.split())
    in_netns(ns, "ip", "link", "add", "ndhxc", "type", "veth", "peer", "name", "ndcxc")
    in_netns(ns, "ip", "link", "set", "ndcxc", "netns", other)
    result = in_netns(ns, sys.executable, "-c", SCRIPT, check=False)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    assert result.stdout.startswith("ok")
