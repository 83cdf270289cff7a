"""The Store contract, run against both implementations (embedded SQLite and real etcd).

Every test writes under a key prefix of its own, so tests sharing the session's etcd
cannot see each other's keys. Lease tests use ttl=1 (etcd rounds it up to its minimum
of 2 s), so expiry waits stay short.
"""

from __future__ import annotations

import os
import random
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from netd.errors import Compacted, InvalidInput, NotFound, StoreUnavailable
from netd.store import (
    Condition,
    Delete,
    DeletePrefix,
    Put,
    Store,
    Watch,
    WatchEvent,
    open_store,
)
from netd.store.embedded import EmbeddedStore
from netd.store.etcd import EtcdStore
from tests.support.etcd import EtcdServer, free_port

REPO = Path(__file__).resolve().parents[4]


@pytest.fixture
def prefix() -> str:
    return f"/contract-{uuid.uuid4().hex[:10]}/"


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def collect(watch: Watch, count: int, timeout: float = 5.0) -> list[WatchEvent]:
    events: list[WatchEvent] = []
    deadline = time.monotonic() + timeout
    while len(events) < count and time.monotonic() < deadline:
        events.extend(watch.get(timeout=0.2))
    return events


def brief(events: list[WatchEvent]) -> list[tuple[str, str, str | None]]:
    return [(e.type, e.key, e.value) for e in events]


# -- keys and revisions ------------------------------------------------------------------


def test_get_put_delete(store: Store, prefix: str) -> None:
    key = prefix + "a"
    assert store.get(key) is None
    rev1 = store.put(key, "one")
    kv = store.get(key)
    assert kv is not None
    assert (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.lease) == (
        key, "one", rev1, rev1, 0
    )
    rev2 = store.put(key, "two")
    kv = store.get(key)
    assert kv is not None and (kv.value, kv.create_revision, kv.mod_revision) == (
        "two", rev1, rev2
    )
    assert store.delete(key) is True
    assert store.get(key) is None
    assert store.delete(key) is False


def test_empty_value_round_trips(store: Store, prefix: str) -> None:
    store.put(prefix + "empty", "")
    kv = store.get(prefix + "empty")
    assert kv is not None and kv.value == ""


def test_revisions_are_store_wide_and_monotonic(store: Store, prefix: str) -> None:
    start = store.revision()
    revisions = [store.put(f"{prefix}k{i}", str(i)) for i in range(5)]
    assert revisions == sorted(set(revisions))
    assert revisions[0] > start
    store.delete(prefix + "k0")
    assert store.revision() > revisions[-1]


def test_create_if_absent(store: Store, prefix: str) -> None:
    key = prefix + "ip/10.0.0.2"
    assert store.create(key, "c1") is True
    assert store.create(key, "c2") is False
    kv = store.get(key)
    assert kv is not None and kv.value == "c1"


def test_compare_and_swap(store: Store, prefix: str) -> None:
    key = prefix + "cas"
    assert store.compare_and_swap(key, "v1", 0) is True
    kv = store.get(key)
    assert kv is not None
    assert store.compare_and_swap(key, "again", 0) is False
    assert store.compare_and_swap(key, "v2", kv.mod_revision) is True
    assert store.compare_and_swap(key, "stale", kv.mod_revision) is False
    now = store.get(key)
    assert now is not None and now.value == "v2" and now.mod_revision > kv.mod_revision


def test_commit_is_all_or_nothing(store: Store, prefix: str) -> None:
    held = store.put(prefix + "held", "x")
    before = store.revision()
    failed = store.commit(
        [Condition(prefix + "held", held), Condition(prefix + "absent", 1)],
        [Put(prefix + "new1", "1"), Put(prefix + "new2", "2"), Delete(prefix + "held")],
    )
    assert failed.succeeded is False
    assert failed.revision == before
    assert store.revision() == before
    assert store.list(prefix)[0][0].key == prefix + "held"
    assert len(store.list(prefix)[0]) == 1

    done = store.commit(
        [Condition(prefix + "held", held), Condition(prefix + "absent", 0)],
        [Put(prefix + "new1", "1"), Put(prefix + "new2", "2"), Delete(prefix + "held")],
    )
    assert done.succeeded is True
    kvs, revision = store.list(prefix)
    assert [kv.key for kv in kvs] == [prefix + "new1", prefix + "new2"]
    assert {kv.mod_revision for kv in kvs} == {done.revision} == {revision}


def test_commit_rejects_a_key_written_twice(store: Store, prefix: str) -> None:
    with pytest.raises(InvalidInput):
        store.commit([], [Put(prefix + "a", "1"), Put(prefix + "a", "2")])
    with pytest.raises(InvalidInput):
        store.commit([], [DeletePrefix(prefix), Put(prefix + "a", "1")])
    assert store.list(prefix)[0] == []


def test_delete_prefix(store: Store, prefix: str) -> None:
    for key in ("net/a", "net/b", "net/b/c", "netx", "other"):
        store.put(prefix + key, key)
    result = store.commit([], [DeletePrefix(prefix + "net/")])
    assert result.succeeded
    assert [kv.key for kv in store.list(prefix)[0]] == [prefix + "netx", prefix + "other"]


def test_list_is_sorted_and_carries_the_revision(store: Store, prefix: str) -> None:
    names = [f"h{i:02d}" for i in range(20)] + ["a", "z", "m/1", "m/0"]
    random.shuffle(names)
    for name in names:
        store.put(prefix + name, name)
    store.put(prefix.rstrip("/") + "x", "sibling outside the prefix")
    kvs, revision = store.list(prefix)
    assert [kv.key for kv in kvs] == sorted(prefix + n for n in names)
    assert all(kv.value == kv.key[len(prefix):] for kv in kvs)
    assert revision == store.revision()
    assert max(kv.mod_revision for kv in kvs) < revision  # the sibling came later


# -- leases ------------------------------------------------------------------------------


def test_lease_expiry_deletes_its_keys(store: Store, prefix: str) -> None:
    lease = store.grant_lease(1)
    store.put(prefix + "host", "alive", lease=lease)
    store.put(prefix + "kept", "no lease")
    kv = store.get(prefix + "host")
    assert kv is not None and kv.lease == lease
    watch = store.watch(prefix, store.revision() + 1)
    try:
        assert wait_for(lambda: store.get(prefix + "host") is None, timeout=6)
        assert brief(collect(watch, 1)) == [("delete", prefix + "host", None)]
    finally:
        watch.close()
    assert store.get(prefix + "kept") is not None
    assert store.keepalive(lease) is False
    with pytest.raises(NotFound):
        store.put(prefix + "late", "x", lease=lease)


def test_keepalive_extends_a_lease(store: Store, prefix: str) -> None:
    lease = store.grant_lease(1)
    store.put(prefix + "host", "alive", lease=lease)
    deadline = time.monotonic() + 3.0  # longer than any TTL etcd may round 1 s up to
    while time.monotonic() < deadline:
        assert store.keepalive(lease) is True
        time.sleep(0.25)
    assert store.get(prefix + "host") is not None


def test_revoke_deletes_keys_at_once(store: Store, prefix: str) -> None:
    lease = store.grant_lease(30)
    assert store.create(prefix + "a", "1", lease=lease)
    store.commit([], [Put(prefix + "b", "2", lease=lease)])
    store.revoke_lease(lease)
    assert store.list(prefix)[0] == []
    store.revoke_lease(lease)  # idempotent
    assert store.keepalive(lease) is False


def test_put_without_lease_detaches_the_key(store: Store, prefix: str) -> None:
    lease = store.grant_lease(30)
    store.put(prefix + "a", "1", lease=lease)
    store.put(prefix + "a", "2")
    store.revoke_lease(lease)
    kv = store.get(prefix + "a")
    assert kv is not None and kv.lease == 0


# -- watches -----------------------------------------------------------------------------


def test_watch_replays_history_then_follows(store: Store, prefix: str) -> None:
    start = store.revision() + 1
    store.put(prefix + "a", "1")
    store.put(prefix + "b", "2")
    store.delete(prefix + "a")
    store.put(prefix.rstrip("/") + "-outside", "not mine")
    watch = store.watch(prefix, start)
    try:
        store.commit([], [Put(prefix + "c", "3"), Put(prefix + "d", "4")])
        events = collect(watch, 5)
        assert brief(events) == [
            ("put", prefix + "a", "1"),
            ("put", prefix + "b", "2"),
            ("delete", prefix + "a", None),
            ("put", prefix + "c", "3"),
            ("put", prefix + "d", "4"),
        ]
        revisions = [e.revision for e in events]
        assert revisions[:4] == sorted(set(revisions[:4])) and revisions[3] == revisions[4]
        assert watch.get(timeout=0.2) == []
    finally:
        watch.close()


def test_watch_from_a_later_revision_skips_older_changes(store: Store, prefix: str) -> None:
    store.put(prefix + "old", "1")
    rev = store.put(prefix + "new", "2")
    watch = store.watch(prefix, rev)
    try:
        assert brief(collect(watch, 1)) == [("put", prefix + "new", "2")]
    finally:
        watch.close()


def test_watch_from_a_compacted_revision_raises(store: Store, prefix: str) -> None:
    first = store.put(prefix + "a", "1")
    store.put(prefix + "a", "2")
    last = store.put(prefix + "a", "3")
    store.compact(last)  # type: ignore[attr-defined]
    watch = store.watch(prefix, first)
    try:
        with pytest.raises(Compacted):
            collect(watch, 1)
    finally:
        watch.close()
    fresh = store.watch(prefix, last + 1)
    try:
        store.put(prefix + "a", "4")
        assert brief(collect(fresh, 1)) == [("put", prefix + "a", "4")]
    finally:
        fresh.close()


# -- concurrency -------------------------------------------------------------------------


def test_concurrent_create_if_absent_has_one_winner(store: Store, prefix: str) -> None:
    keys = [f"{prefix}addr/{i}" for i in range(10)]
    wins: Counter[str] = Counter()
    winners: dict[str, str] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def contender(name: str) -> None:
        try:
            for key in random.sample(keys, len(keys)):
                if store.create(key, name):
                    with lock:
                        wins[key] += 1
                        winners[key] = name
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=contender, args=(f"t{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert wins == Counter({key: 1 for key in keys})
    for key in keys:
        kv = store.get(key)
        assert kv is not None and kv.value == winners[key]


# -- embedded only: one file, several stores and processes -------------------------------


def test_embedded_instances_share_one_file(tmp_path: Path, prefix: str) -> None:
    path = tmp_path / "shared.db"
    first, second = EmbeddedStore(path), EmbeddedStore(path)
    try:
        watch = second.watch(prefix, second.revision() + 1)
        first.put(prefix + "a", "1")
        assert first.create(prefix + "b", "first") is True
        assert second.create(prefix + "b", "second") is False
        assert brief(collect(watch, 2)) == [
            ("put", prefix + "a", "1"),
            ("put", prefix + "b", "first"),
        ]
        assert second.get(prefix + "a") is not None
        watch.close()
    finally:
        first.close()
        second.close()


def test_embedded_concurrent_create_across_instances(tmp_path: Path, prefix: str) -> None:
    path = tmp_path / "race.db"
    stores = [EmbeddedStore(path) for _ in range(4)]
    keys = [f"{prefix}{i}" for i in range(15)]
    wins: Counter[str] = Counter()
    lock = threading.Lock()

    def contender(store: EmbeddedStore) -> None:
        for key in random.sample(keys, len(keys)):
            if store.create(key, "x"):
                with lock:
                    wins[key] += 1

    threads = [threading.Thread(target=contender, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for store in stores:
        store.close()
    assert wins == Counter({key: 1 for key in keys})


def test_embedded_second_process_writes_and_its_lease_expires(
    tmp_path: Path, prefix: str
) -> None:
    path = tmp_path / "procs.db"
    store = EmbeddedStore(path)
    try:
        watch = store.watch(prefix, store.revision() + 1)
        script = (
            "import sys\n"
            "from netd.store.embedded import EmbeddedStore\n"
            "s = EmbeddedStore(sys.argv[1])\n"
            "p = sys.argv[2]\n"
            "s.put(p + 'x', 'from child')\n"
            "s.put(p + 'host', 'child alive', lease=s.grant_lease(1))\n"
            "s.close()\n"
        )
        subprocess.run(
            [sys.executable, "-c", script, str(path), prefix],
            check=True, cwd=REPO, timeout=30,
        )
        # The child is gone; this process's watch polling expires the child's lease.
        assert brief(collect(watch, 3, timeout=6)) == [
            ("put", prefix + "x", "from child"),
            ("put", prefix + "host", "child alive"),
            ("delete", prefix + "host", None),
        ]
        watch.close()
    finally:
        store.close()


def test_embedded_file_is_private_and_parents_are_created(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "state" / "netd.db"
    store = EmbeddedStore(path)
    store.put("/k", "v")
    store.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_embedded_closed_store_says_so(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "netd.db")
    store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        store.get("/k")


# -- etcd only: endpoints and broken connections -----------------------------------------


def test_etcd_unreachable_names_the_endpoint() -> None:
    dead = f"127.0.0.1:{free_port()}"
    store = EtcdStore([dead], timeout=2)
    with pytest.raises(StoreUnavailable, match=dead):
        store.get("/k")
    with pytest.raises(StoreUnavailable, match=dead):
        store.watch("/", 1)
    store.close()


@pytest.mark.etcd
def test_etcd_falls_over_to_the_next_endpoint(etcd_server: EtcdServer, prefix: str) -> None:
    store = EtcdStore([f"127.0.0.1:{free_port()}", etcd_server.endpoint])
    try:
        revision = store.put(prefix + "a", "1")
        watch = store.watch(prefix, revision)
        assert brief(collect(watch, 1)) == [("put", prefix + "a", "1")]
        watch.close()
    finally:
        store.close()


@pytest.mark.etcd
def test_etcd_watch_reports_a_lost_server(etcd_server: EtcdServer) -> None:
    with EtcdServer() as own:
        store = EtcdStore([own.endpoint])
        watch = store.watch("/", store.revision() + 1)
        store.put("/a", "1")
        assert brief(collect(watch, 1)) == [("put", "/a", "1")]
        own.stop()
        with pytest.raises(StoreUnavailable, match=own.endpoint):
            collect(watch, 1)
        watch.close()
        store.close()


# -- open_store --------------------------------------------------------------------------


def test_open_store_picks_the_implementation(tmp_path: Path) -> None:
    default = open_store(None, tmp_path / "state")
    assert isinstance(default, EmbeddedStore)
    assert default.path == tmp_path / "state" / "netd.db"
    default.close()
    named = open_store(f"sqlite://{tmp_path}/named.db", tmp_path)
    assert isinstance(named, EmbeddedStore) and named.path == tmp_path / "named.db"
    named.close()
    etcd = open_store("etcd://h1:2379,h2", tmp_path)
    assert isinstance(etcd, EtcdStore)
    assert etcd.endpoints == [("http", "h1", 2379), ("http", "h2", 2379)]
    plain = open_store("http://10.0.0.1:4001", tmp_path)
    assert isinstance(plain, EtcdStore) and plain.endpoints == [("http", "10.0.0.1", 4001)]


@pytest.mark.parametrize(
    "url",
    ["redis://x", "sqlite://relative.db", "sqlite:///", "etcd://", "etcd://h1,,h2",
     "etcd://h1:notaport", "just-a-path"],
)
def test_open_store_rejects_bad_urls(url: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"store URL|endpoint"):
        open_store(url, tmp_path)
