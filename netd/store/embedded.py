"""The embedded store: etcd's semantics (revisions, CAS, leases, watches) in one SQLite file.

It is the default so that a single host, or several daemons on one machine, need no
etcd. Everything lives in the file, not in the process: the revision counter, the
leases and an event log that watches poll. Expired leases are swept lazily by whichever
process touches the file next (any operation, or a watch's poll), so a lease held by a
daemon that died still expires while another daemon runs. Each write is one
`BEGIN IMMEDIATE` transaction, which serialises writers across processes; WAL lets
readers and watches proceed meanwhile. Watches poll the event log for other processes'
writes; a write made through this object wakes this process's watches at once.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from netd.errors import Compacted, InvalidInput, NotFound, StoreUnavailable
from netd.store.base import (
    CommitResult,
    Condition,
    ConditionalWrites,
    Delete,
    DeletePrefix,
    KeyValue,
    Operation,
    Put,
    WatchEvent,
)

# Revisions of history a watch can still start from; older events are compacted away.
KEEP_REVISIONS = 10_000
_AUTO_COMPACT_EVERY = 256
POLL_INTERVAL = 0.025
BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY, value TEXT NOT NULL,
    create_rev INTEGER NOT NULL, mod_rev INTEGER NOT NULL, lease INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS kv_lease ON kv (lease) WHERE lease != 0;
CREATE TABLE IF NOT EXISTS leases (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ttl INTEGER NOT NULL, expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS leases_expiry ON leases (expires_at);
CREATE TABLE IF NOT EXISTS events (
    revision INTEGER NOT NULL, seq INTEGER NOT NULL, type TEXT NOT NULL,
    key TEXT NOT NULL, value TEXT, PRIMARY KEY (revision, seq)
);
INSERT OR IGNORE INTO meta VALUES ('revision', 1), ('compact_revision', 0);
"""


def prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string starting with prefix (None: no bound)."""
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < 0x10FFFF:
            return "".join(chars) + chr(last + 1)
    return None


def _range_clause(prefix: str) -> tuple[str, tuple[str, ...]]:
    end = prefix_end(prefix)
    if end is None:
        return "key >= ?", (prefix,)
    return "key >= ? AND key < ?", (prefix, end)


def check_disjoint(operations: Sequence[Operation]) -> None:
    """Reject what etcd rejects: one key written twice, or a put under a deleted range."""
    written: set[str] = set()
    deleted: set[str] = set()
    prefixes: list[str] = []
    for op in operations:
        if isinstance(op, Put):
            if op.key in written:
                raise InvalidInput(f"key {op.key!r} is written twice in one transaction")
            written.add(op.key)
        elif isinstance(op, Delete):
            deleted.add(op.key)
        else:
            prefixes.append(op.prefix)
    for key in written:
        if key in deleted or any(key.startswith(p) for p in prefixes):
            raise InvalidInput(f"key {key!r} is both written and deleted in one transaction")


class EmbeddedStore(ConditionalWrites):
    """A Store over a SQLite file that several threads and processes may share."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._closed = False
        self._wake = threading.Condition()
        self._writes = 0  # write transactions committed through this object
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
            os.chmod(self.path, 0o600)
            self._db = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                check_same_thread=False,
            )
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            with self._write() as db:
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    db.execute(statement)
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"cannot open the store file {self.path}: {exc}") from exc

    # -- transactions ------------------------------------------------------------------

    @contextlib.contextmanager
    def _txn(self, mode: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise StoreUnavailable(f"the store {self.path} is closed")
            try:
                self._db.execute(f"BEGIN {mode}")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"store file {self.path}: {exc}") from exc
        if mode == "IMMEDIATE":
            with self._wake:
                self._writes += 1
                self._wake.notify_all()

    def _writes_seen(self) -> int:
        with self._wake:
            return self._writes

    def _wait_for_write(self, seen: int, timeout: float) -> None:
        """Sleep up to `timeout`, waking early when this process writes after `seen`."""
        with self._wake:
            if self._writes == seen:
                self._wake.wait(timeout)

    def _read(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        self._sweep_leases()
        return self._txn("DEFERRED")

    def _write(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return self._txn("IMMEDIATE")

    @staticmethod
    def _meta(db: sqlite3.Connection, name: str) -> int:
        return int(db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()[0])

    @staticmethod
    def _set_meta(db: sqlite3.Connection, name: str, value: int) -> None:
        db.execute("UPDATE meta SET value = ? WHERE name = ?", (value, name))

    # -- the write path: one new revision per transaction that changes something -------

    class _Changes:
        """Applies writes at one new revision and logs them as events."""

        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db
            self.revision = EmbeddedStore._meta(db, "revision") + 1
            self.seq = 0

        def _log(self, kind: str, key: str, value: str | None) -> None:
            self.db.execute(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?)",
                (self.revision, self.seq, kind, key, value),
            )
            self.seq += 1

        def put(self, key: str, value: str, lease: int) -> None:
            if lease and not self.db.execute(
                "SELECT 1 FROM leases WHERE id = ?", (lease,)
            ).fetchone():
                raise NotFound(f"lease {lease} not found (expired or revoked); grant a new one")
            self.db.execute(
                "INSERT INTO kv VALUES (?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
                "value = excluded.value, mod_rev = excluded.mod_rev, lease = excluded.lease",
                (key, value, self.revision, self.revision, lease),
            )
            self._log("put", key, value)

        def delete_where(self, clause: str, args: tuple[object, ...]) -> int:
            keys = [r[0] for r in self.db.execute(
                f"SELECT key FROM kv WHERE {clause} ORDER BY key", args
            )]
            self.db.execute(f"DELETE FROM kv WHERE {clause}", args)
            for key in keys:
                self._log("delete", key, None)
            return len(keys)

        def finish(self) -> int:
            """The store revision after this transaction."""
            if self.seq == 0:
                return self.revision - 1
            EmbeddedStore._set_meta(self.db, "revision", self.revision)
            if self.revision % _AUTO_COMPACT_EVERY == 0:
                EmbeddedStore._compact(self.db, self.revision - KEEP_REVISIONS)
            return self.revision

    def _expire(self, db: sqlite3.Connection, now: float) -> None:
        """Delete expired leases and their keys, one revision per lease (as etcd does)."""
        for (lease,) in db.execute(
            "SELECT id FROM leases WHERE expires_at <= ? ORDER BY id", (now,)
        ).fetchall():
            changes = self._Changes(db)
            changes.delete_where("lease = ?", (lease,))
            db.execute("DELETE FROM leases WHERE id = ?", (lease,))
            changes.finish()

    def _sweep_leases(self) -> None:
        now = time.time()
        with self._txn("DEFERRED") as db:
            due = db.execute("SELECT 1 FROM leases WHERE expires_at <= ? LIMIT 1", (now,))
            if due.fetchone() is None:
                return
        with self._write() as db:
            self._expire(db, now)

    @contextlib.contextmanager
    def _changes(self) -> Iterator[EmbeddedStore._Changes]:
        with self._write() as db:
            self._expire(db, time.time())
            yield self._Changes(db)

    @staticmethod
    def _compact(db: sqlite3.Connection, revision: int) -> None:
        if revision > EmbeddedStore._meta(db, "compact_revision"):
            db.execute("DELETE FROM events WHERE revision < ?", (revision,))
            EmbeddedStore._set_meta(db, "compact_revision", revision)

    # -- Store protocol ------------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        with self._read() as db:
            row = db.execute(
                "SELECT key, value, create_rev, mod_rev, lease FROM kv WHERE key = ?", (key,)
            ).fetchone()
        return KeyValue(*row) if row else None

    def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        clause, args = _range_clause(prefix)
        with self._read() as db:
            rows = db.execute(
                f"SELECT key, value, create_rev, mod_rev, lease FROM kv WHERE {clause} "
                "ORDER BY key", args,
            ).fetchall()
            revision = self._meta(db, "revision")
        return [KeyValue(*row) for row in rows], revision

    def put(self, key: str, value: str, lease: int = 0) -> int:
        with self._changes() as changes:
            changes.put(key, value, lease)
            return changes.finish()

    def delete(self, key: str) -> bool:
        with self._changes() as changes:
            deleted = changes.delete_where("key = ?", (key,))
            changes.finish()
        return deleted > 0

    def commit(
        self, conditions: Sequence[Condition], operations: Sequence[Operation]
    ) -> CommitResult:
        check_disjoint(operations)
        with self._changes() as changes:
            db = changes.db
            for cond in conditions:
                row = db.execute("SELECT mod_rev FROM kv WHERE key = ?", (cond.key,)).fetchone()
                if (row[0] if row else 0) != cond.mod_revision:
                    return CommitResult(False, changes.finish())
            for op in operations:
                if isinstance(op, Put):
                    changes.put(op.key, op.value, op.lease)
                elif isinstance(op, Delete):
                    changes.delete_where("key = ?", (op.key,))
                elif isinstance(op, DeletePrefix):
                    changes.delete_where(*_range_clause(op.prefix))
            return CommitResult(True, changes.finish())

    def revision(self) -> int:
        with self._read() as db:
            return self._meta(db, "revision")

    def grant_lease(self, ttl: int) -> int:
        if ttl <= 0:
            raise InvalidInput(f"lease TTL must be a positive number of seconds, not {ttl}")
        with self._write() as db:
            cur = db.execute(
                "INSERT INTO leases (ttl, expires_at) VALUES (?, ?)", (ttl, time.time() + ttl)
            )
            return int(cur.lastrowid or 0)

    def keepalive(self, lease: int) -> bool:
        now = time.time()
        with self._write() as db:
            self._expire(db, now)
            cur = db.execute(
                "UPDATE leases SET expires_at = ? + ttl WHERE id = ?", (now, lease)
            )
            return cur.rowcount > 0

    def revoke_lease(self, lease: int) -> None:
        with self._write() as db:
            if db.execute("SELECT 1 FROM leases WHERE id = ?", (lease,)).fetchone():
                changes = self._Changes(db)
                changes.delete_where("lease = ?", (lease,))
                db.execute("DELETE FROM leases WHERE id = ?", (lease,))
                changes.finish()

    def watch(self, prefix: str, start_revision: int) -> EmbeddedWatch:
        if start_revision <= 0:
            start_revision = self.revision() + 1
        return EmbeddedWatch(self, prefix, start_revision)

    def compact(self, revision: int) -> None:
        """Forget history before `revision`: watches from earlier revisions raise Compacted."""
        with self._write() as db:
            if revision > self._meta(db, "revision"):
                raise InvalidInput(f"cannot compact at future revision {revision}")
            self._compact(db, revision)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    # -- used by EmbeddedWatch -------------------------------------------------------------

    def _events_since(
        self, prefix: str, revision: int
    ) -> tuple[builtins.list[WatchEvent], int]:
        """Events under prefix from `revision` on, and the compact revision they were read at."""
        clause, args = _range_clause(prefix)
        with self._read() as db:
            compact_revision = self._meta(db, "compact_revision")
            rows = db.execute(
                f"SELECT type, key, value, revision FROM events WHERE revision >= ? AND {clause} "
                "ORDER BY revision, seq", (revision, *args),
            ).fetchall()
        return [WatchEvent(*row) for row in rows], compact_revision


class EmbeddedWatch:
    """Polls the event log on the caller's thread; nothing runs while nobody asks.

    Between polls it waits on the store's write counter, so an in-process commit is
    seen at once and only other processes' writes wait for the next poll."""

    def __init__(self, store: EmbeddedStore, prefix: str, start_revision: int) -> None:
        self._store = store
        self._prefix = prefix
        self._next = start_revision
        self._closed = False

    def get(self, timeout: float) -> list[WatchEvent]:
        deadline = time.monotonic() + timeout
        while not self._closed:
            seen = self._store._writes_seen()
            events, compact_revision = self._store._events_since(self._prefix, self._next)
            if self._next < compact_revision:
                raise Compacted(
                    f"revision {self._next} was compacted (oldest kept: {compact_revision}); "
                    "re-list and watch again",
                    compact_revision,
                )
            if events:
                self._next = events[-1].revision + 1
                return events
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._store._wait_for_write(seen, min(POLL_INTERVAL, remaining))
        return []

    def close(self) -> None:
        self._closed = True
