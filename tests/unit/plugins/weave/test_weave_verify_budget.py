"""The weave driver's verify budget: which endpoints a pass checks in their container
(round-robin window) and when the host end alone is trusted."""

from __future__ import annotations

from dataclasses import replace

from netd.model import Network
from netd.netlink import ADDRGENMODE_NONE, Link
from plugins.weave.driver import host_end_ok, round_robin

IDS = [f"endpoint:n/e{i}" for i in range(5)]


def test_round_robin_walks_the_sorted_ids_and_wraps() -> None:
    seen: list[set[str]] = []
    cursor = None
    for _ in range(3):
        window, cursor = round_robin(IDS, cursor, 2)
        seen.append(window)
    assert seen == [set(IDS[0:2]), set(IDS[2:4]), {IDS[4], IDS[0]}]


def test_round_robin_covers_everything_in_ceil_n_over_budget_passes() -> None:
    covered: set[str] = set()
    cursor = None
    for _ in range(3):
        window, cursor = round_robin(IDS, cursor, 2)
        covered |= window
    assert covered == set(IDS)


def test_round_robin_with_room_for_all_checks_all() -> None:
    assert round_robin(IDS, "endpoint:n/e3", 5) == (set(IDS), None)
    assert round_robin([], None, 3) == (set(), None)


def test_round_robin_survives_the_cursor_id_going_away() -> None:
    window, cursor = round_robin(IDS, "endpoint:n/e1x", 2)  # e1x was removed meanwhile
    assert window == {IDS[2], IDS[3]} and cursor == IDS[3]


NET = Network(name="n", subnet="10.1.0.0/24", gateway="10.1.0.1", vni=7, mtu=1450)
BRIDGE = Link(index=5, name="ndb7", kind="bridge", mtu=1450, mac="", up=True, master=0,
              peer_index=0)
GOOD = Link(index=9, name="ndh01234567", kind="veth", mtu=1450, mac="", up=True, master=5,
            peer_index=2, addrgenmode=ADDRGENMODE_NONE)


def test_host_end_ok_only_when_everything_matches() -> None:
    assert host_end_ok(GOOD, BRIDGE, NET)
    assert host_end_ok(replace(GOOD, addrgenmode=None), BRIDGE, NET)
    for bad in (
        None,
        replace(GOOD, kind="bridge"),
        replace(GOOD, master=6),
        replace(GOOD, mtu=1500),
        replace(GOOD, up=False),
        replace(GOOD, addrgenmode=0),
        replace(GOOD, peer_index=0),
    ):
        assert not host_end_ok(bad, BRIDGE, NET), bad
