"""Security groups through the service: tenant-scoped CRUD, rules, attach --sg,
endpoint update, and refusals that change nothing."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from netd.errors import Conflict, InvalidInput, NotFound
from netd.service import Service
from netd.store.base import Operation, Put
from tests.unit.netd.test_service import KEYS, HookedStore, attach, contents, make_service


@pytest.fixture
def store(tmp_path: Path) -> Iterator[HookedStore]:
    s = HookedStore(tmp_path / "netd.db")
    yield s
    s.close()


@pytest.fixture
def svc(store: HookedStore) -> Service:
    service = make_service(store)
    service.create_network({"name": "blue", "subnet": "10.1.0.0/24"})
    return service


@pytest.fixture
def web(svc: Service) -> Service:
    svc.create_group({"name": "web"})
    return svc


def rule(svc: Service, **fields: Any) -> dict[str, Any]:
    return svc.add_rule(None, "web", {"direction": "ingress", **fields})


def test_groups_are_scoped_by_tenant(svc: Service, store: HookedStore) -> None:
    svc.create_group({"name": "web"})
    svc.create_group({"name": "web", "tenant": "acme"})
    assert store.get(KEYS.security_group("default", "web")) is not None
    assert store.get(KEYS.security_group("acme", "web")) is not None
    assert [(g.tenant, g.name) for g in svc.list_groups()] == [("acme", "web"), ("default", "web")]
    assert [g.tenant for g in svc.list_groups("acme")] == ["acme"]
    with pytest.raises(Conflict, match="already exists in tenant 'acme'"):
        svc.create_group({"name": "web", "tenant": "acme"})


def test_bad_input_is_refused_and_changes_nothing(web: Service, store: HookedStore) -> None:
    before = contents(store)
    bad: list[dict[str, Any]] = [
        {"direction": "sideways", "cidr": "10.0.0.0/8"},
        {"protocol": "sctp", "cidr": "10.0.0.0/8"},
        {"protocol": "icmp", "port": "80", "cidr": "10.0.0.0/8"},
        {"protocol": "tcp", "port": "90-80", "cidr": "10.0.0.0/8"},
        {"protocol": "tcp", "port": "70000", "cidr": "10.0.0.0/8"},
        {"cidr": "10.0.0.1/8"},
        {"cidr": "10.0.0.0/8", "group": "web"},
        {},
    ]
    for fields in bad:
        with pytest.raises(InvalidInput):
            rule(web, **fields)
    with pytest.raises(NotFound, match="'db' not found"):
        web.add_rule(None, "web", {"direction": "ingress", "group": "db"})
    with pytest.raises(InvalidInput):
        web.create_group({"name": "bad name"})
    assert contents(store) == before


def test_rule_add_is_idempotent_and_rm_by_id(web: Service) -> None:
    first = rule(web, protocol="tcp", port="80", group="web")
    again = rule(web, protocol="tcp", port="80", group="web")
    assert first["added"] and not again["added"]
    assert first["rule"]["id"] == again["rule"]["id"]
    detail = web.inspect_group(None, "web")
    assert [r["port_min"] for r in detail["rules"]] == [80]
    web.remove_rule(None, "web", first["rule"]["id"])
    assert not web.inspect_group(None, "web")["rules"]
    with pytest.raises(NotFound, match="no rule"):
        web.remove_rule(None, "web", first["rule"]["id"])


def test_attach_with_groups_of_the_network_tenant(web: Service) -> None:
    ep = attach(web, "c1", sg=["web"])
    assert ep["security_groups"] == ("web",)
    assert [m["name"] for m in web.inspect_group(None, "web")["members"]] == ["c1"]
    web.create_network({"name": "red", "subnet": "10.1.0.0/24", "tenant": "acme"})
    with pytest.raises(NotFound, match="not found in tenant 'acme'"):
        attach(web, "c2", network="red", sg=["web"])


def test_repeated_attach_with_other_groups_points_to_update(web: Service) -> None:
    attach(web, "c1", sg=["web"])
    assert attach(web, "c1")["security_groups"] == ("web",)  # no --sg: the same endpoint
    web.create_group({"name": "db"})
    with pytest.raises(Conflict, match="endpoint update"):
        attach(web, "c1", sg=["db"])
    updated = web.update_endpoint({"container": "c1", "network": "blue", "sg": ["db"]})
    assert updated.security_groups == ("db",)
    cleared = web.update_endpoint({"container": "c1", "network": "blue"})
    assert cleared.security_groups == ()
    with pytest.raises(NotFound):
        web.update_endpoint({"container": "c1", "network": "blue", "sg": ["nope"]})


def test_group_in_use_cannot_be_removed(web: Service, store: HookedStore) -> None:
    attach(web, "c1", sg=["web"])
    with pytest.raises(Conflict, match="in use by 1 endpoint"):
        web.remove_group(None, "web")
    web.create_group({"name": "db"})
    web.add_rule(None, "db", {"direction": "ingress", "group": "web"})
    web.update_endpoint({"container": "c1", "network": "blue"})
    with pytest.raises(Conflict, match="named by rules of group"):
        web.remove_group(None, "web")
    assert store.get(KEYS.security_group("default", "web")) is not None
    web.remove_group(None, "db")
    web.remove_group(None, "web")
    assert web.list_groups() == []
    with pytest.raises(NotFound):
        web.remove_group(None, "web")


def test_attach_racing_group_rm_never_both_succeed(web: Service, store: HookedStore) -> None:
    """An attach that commits between rm's look at the members and its delete: one of
    the two is refused, and a group is never removed while an endpoint names it."""
    outcome: dict[str, Any] = {}

    def at_commit(ops: Sequence[Operation]) -> None:
        marker = KEYS.security_group_removal("default", "web")
        if any(isinstance(o, Put) and o.key == marker for o in ops) and "attach" not in outcome:
            store.before_commit = None
            try:
                outcome["attach"] = attach(web, "c1", sg=["web"])
            except (Conflict, NotFound) as exc:
                outcome["attach"] = exc

    store.before_commit = at_commit
    try:
        web.remove_group(None, "web")
        outcome["rm"] = "ok"
    except Conflict as exc:
        outcome["rm"] = exc
    attached = isinstance(outcome["attach"], dict)
    removed = outcome["rm"] == "ok"
    assert attached != removed, outcome
    if attached:
        assert store.get(KEYS.security_group("default", "web")) is not None
