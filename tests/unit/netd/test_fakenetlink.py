"""The fake netlink keeps the facade's interface and the semantics drivers rely on."""

from __future__ import annotations

import inspect

import pytest

from netd.errors import DatapathError
from netd.netlink import RTPROT_NETD, Netlink, NetnsNotFound, Route
from tests.support.fakenetlink import RTPROT_KERNEL, FakeNetlink

CT = "/run/netns/fake-ct"


def _public(cls: type) -> dict[str, object]:
    return {n: getattr(cls, n) for n in dir(cls) if not n.startswith("_")}


def test_fake_has_every_facade_method_with_the_same_parameters() -> None:
    facade, fake = _public(Netlink), _public(FakeNetlink)
    missing = set(facade) - set(fake)
    assert not missing, f"FakeNetlink lacks {sorted(missing)}"
    for name, member in facade.items():
        if callable(member):
            want = list(inspect.signature(member).parameters.items())
            have = list(inspect.signature(fake[name]).parameters.items())  # type: ignore[arg-type]
            assert [(n, p.kind, p.default) for n, p in want] == [
                (n, p.kind, p.default) for n, p in have
            ], name


def test_adds_are_idempotent_and_deletes_of_absent_objects_succeed() -> None:
    nl = FakeNetlink()
    assert nl.ensure_bridge("ndb1", 1450) > 0
    assert nl.ensure_bridge("ndb1", 1450) == 0
    assert nl.delete_link("ndb1") == 1
    assert nl.delete_link("ndb1") == 0
    assert nl.fdb_del("ndv1", "02:00:00:00:00:01", "192.0.2.1") == 0
    assert nl.delete_route(Route("10.0.0.0/24")) == 0


def test_missing_namespace_is_not_found_and_a_veth_dies_with_its_container() -> None:
    nl = FakeNetlink()
    with pytest.raises(NetnsNotFound):
        nl.get_link("eth0", CT)
    nl.add_netns(CT)
    pair = nl.ensure_veth_into_netns("ndh00000001", "eth0", CT, mac="02:00:00:00:00:01", mtu=1450)
    assert pair.host.peer_index == pair.peer.index and pair.peer.peer_index == pair.host.index
    nl.remove_netns(CT)
    assert nl.get_link("ndh00000001") is None


def test_address_brings_its_prefix_route_and_gateways_must_be_reachable() -> None:
    fake = FakeNetlink()
    fake.add_netns(CT)
    fake.ensure_veth_into_netns("ndh00000001", "eth0", CT, mac="02:00:00:00:00:01", mtu=1450)
    with pytest.raises(DatapathError, match="invalid gateway"):
        fake.ensure_default_route("10.1.0.1", "eth0", CT)
    fake.ensure_address("eth0", "10.1.0.5", 24, CT)
    assert fake.ensure_default_route("10.1.0.1", "eth0", CT) == 1
    protocols = sorted(r.protocol for r in fake.routes(CT))
    assert protocols == [RTPROT_KERNEL, RTPROT_NETD]
