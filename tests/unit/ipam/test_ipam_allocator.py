"""Properties of the pure allocation policy (ipam.allocator)."""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipam.allocator import candidates, usable_count
from netd.errors import Exhausted
from netd.model import Network


def _network(subnet: str, gateway: str) -> Network:
    return Network(name="n1", subnet=subnet, gateway=gateway, vni=1, mtu=1450)


@st.composite
def pools(draw: st.DrawFn) -> tuple[Network, set[str], set[str], int]:
    """A small network, a random gateway, random in-use and sticky sets, a seed."""
    prefix = draw(st.integers(min_value=24, max_value=30))
    base = draw(st.integers(min_value=0, max_value=2**8 - 1)) << 16 | 10 << 24
    subnet = ipaddress.IPv4Network((base, prefix), strict=False)
    hosts = [str(h) for h in subnet.hosts()]
    gateway = draw(st.sampled_from(hosts))
    others = [h for h in hosts if h != gateway]
    # in-use records may name anything, even the gateway or addresses outside the subnet
    in_use = draw(st.sets(st.sampled_from([*others, gateway, "192.168.0.1"])))
    if draw(st.booleans()):
        in_use |= set(others)  # full
    sticky = draw(st.sets(st.sampled_from(others)))
    return _network(str(subnet), gateway), in_use, sticky, draw(st.integers(0, 2**32))


@settings(max_examples=300, deadline=None)
@given(pools())
def test_candidates_are_exactly_the_free_addresses(
    pool: tuple[Network, set[str], set[str], int],
) -> None:
    network, in_use, sticky, seed = pool
    subnet = ipaddress.IPv4Network(network.subnet)
    usable = {str(h) for h in subnet.hosts()} - {network.gateway}
    free = usable - in_use
    if not free:
        with pytest.raises(Exhausted, match=r"network n1 has no free address \(\d+ in use\)"):
            candidates(network, in_use, sticky, random.Random(seed))
        return
    got = list(candidates(network, in_use, sticky, random.Random(seed)))
    assert len(got) == len(set(got)), "a candidate was offered twice"
    assert set(got) == free
    for ip in got:
        addr = ipaddress.IPv4Address(ip)
        assert addr in subnet
        assert addr not in (subnet.network_address, subnet.broadcast_address)
        assert ip != network.gateway
        assert ip not in in_use
    # sticky addresses of other names come only after every other free address
    n_plain = len(free - sticky)
    assert set(got[:n_plain]) == free - sticky
    assert set(got[n_plain:]) == free & sticky


@settings(max_examples=100, deadline=None)
@given(pools())
def test_same_seed_same_order(pool: tuple[Network, set[str], set[str], int]) -> None:
    network, in_use, sticky, seed = pool
    try:
        first = list(candidates(network, in_use, sticky, random.Random(seed)))
    except Exhausted:
        return
    # set iteration order must not leak in: pass the inputs in another order
    again = list(candidates(network, sorted(in_use)[::-1], sorted(sticky), random.Random(seed)))
    assert first == again


def test_candidates_are_random_not_a_scan() -> None:
    network = _network("10.2.0.0/21", "10.2.0.1")
    firsts = {next(candidates(network, (), (), random.Random(seed))) for seed in range(20)}
    assert len(firsts) > 15


def test_exhausted_message_counts_usable_addresses_in_use() -> None:
    network = _network("10.3.0.0/29", "10.3.0.1")
    taken = [f"10.3.0.{i}" for i in range(2, 7)]
    with pytest.raises(Exhausted) as err:
        candidates(network, [*taken, "10.3.0.1", "10.9.9.9"], (), random.Random(0))
    assert str(err.value) == "network n1 has no free address (5 in use)"


def test_nearly_full_large_pool_still_finds_the_last_address() -> None:
    network = _network("10.4.0.0/20", "10.4.0.1")
    usable = [str(h) for h in ipaddress.IPv4Network(network.subnet).hosts()][1:]
    assert len(usable) == usable_count(network)
    last = usable[1234]
    in_use = set(usable) - {last}
    assert list(candidates(network, in_use, (), random.Random(7))) == [last]


def test_sticky_used_when_nothing_else_is_left() -> None:
    network = _network("10.5.0.0/30", "10.5.0.1")
    assert list(candidates(network, (), ["10.5.0.2"], random.Random(1))) == ["10.5.0.2"]
