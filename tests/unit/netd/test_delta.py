"""The delta tracker: pending updates and deletes follow desired versus applied."""

from __future__ import annotations

import random

from netd.delta import DeltaTracker


def test_new_and_changed_items_are_pending_until_applied() -> None:
    t: DeltaTracker[str, int] = DeltaTracker()
    t.replace_desired({"a": 1, "b": 2})
    assert list(t.pending_updates()) == [("a", 1), ("b", 2)]
    t.mark_applied("a")
    t.mark_applied("b", 2)
    assert list(t.pending_updates()) == [] and t.in_sync("a")
    t.set_desired("a", 3)
    assert list(t.pending_updates()) == [("a", 3)] and t.applied("a") == 1


def test_undesired_applied_items_are_pending_deletes_until_deleted() -> None:
    t: DeltaTracker[str, int] = DeltaTracker()
    t.replace_desired({"a": 1, "b": 2})
    t.mark_applied("a")
    t.mark_applied("b")
    t.replace_desired({"b": 2})
    assert list(t.pending_deletes()) == [("a", 1)]
    assert list(t.pending_updates()) == []
    t.mark_deleted("a")
    assert list(t.pending_deletes()) == []


def test_a_dirty_item_is_retried_while_the_others_stay_in_sync() -> None:
    t: DeltaTracker[str, int] = DeltaTracker()
    t.replace_desired({"a": 1, "b": 2})
    t.mark_applied("a")
    t.mark_applied("b")
    t.mark_dirty("b")  # e.g. its apply failed
    assert list(t.pending_updates()) == [("b", 2)]
    assert t.applied("b") is None and t.in_sync("a")
    t.mark_all_dirty()
    assert [k for k, _ in t.pending_updates()] == ["a", "b"]


def test_forget_undesired_keeps_only_desired_and_named_items() -> None:
    t: DeltaTracker[str, int] = DeltaTracker()
    t.replace_desired({"a": 1, "b": 2, "c": 3})
    for key in "abc":
        t.mark_applied(key)
    t.replace_desired({"a": 1})
    t.forget_undesired(keep={"c"})
    assert dict(t.applied_items()) == {"a": 1, "c": 3} and len(t) == 1


def test_pending_items_match_their_definition_after_any_sequence_of_calls() -> None:
    """The tracker keeps its pending keys incrementally; whatever the calls, they are
    exactly what the definition says (desired and not applied as desired; applied and
    no longer desired)."""
    rng = random.Random(6)
    t: DeltaTracker[str, int] = DeltaTracker()
    desired: dict[str, int] = {}
    applied: dict[str, int] = {}
    keys = "abcdef"
    for _ in range(3000):
        key, value, op = rng.choice(keys), rng.randrange(3), rng.randrange(8)
        if op == 0:
            t.set_desired(key, value)
            desired[key] = value
        elif op == 1:
            t.delete_desired(key)
            desired.pop(key, None)
        elif op == 2 and key in desired:
            t.mark_applied(key)
            applied[key] = desired[key]
        elif op == 3:
            t.mark_dirty(key) if rng.random() < 0.5 else t.mark_deleted(key)
            applied.pop(key, None)
        elif op == 4 and rng.random() < 0.1:
            new = {k: rng.randrange(3) for k in keys if rng.random() < 0.5}
            t.replace_desired(new)
            desired = dict(new)
        elif op == 5 and rng.random() < 0.1:
            keep = {k for k in keys if rng.random() < 0.5}
            t.forget_undesired(keep)
            applied = {k: v for k, v in applied.items() if k in desired or k in keep}
        elif op == 6 and rng.random() < 0.05:
            t.mark_all_dirty()
            applied.clear()
        elif op == 7:
            t.mark_applied(key, value)
            applied[key] = value
        updates = {k: v for k, v in desired.items() if applied.get(k, -1) != v}
        deletes = {k: v for k, v in applied.items() if k not in desired}
        assert dict(t.pending_updates()) == updates
        assert dict(t.pending_deletes()) == deletes
        assert t.desired_keys() == set(desired)
