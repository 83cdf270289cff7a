"""The delta tracker: pending updates and deletes follow desired versus applied."""

from __future__ import annotations

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
