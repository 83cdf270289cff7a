"""The store: the protocol, its two implementations, and `open_store` to pick one by URL.

`--store` takes `etcd://h1:2379,h2:2379` (or `http://...`) for a real cluster,
`sqlite:///abs/path.db` for a named embedded file, and nothing for the default
embedded file in the state directory (docs/store.md).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from netd.errors import InvalidInput
from netd.store.base import (
    CommitResult,
    Condition,
    Delete,
    DeletePrefix,
    KeyValue,
    Operation,
    Put,
    Store,
    Watch,
    WatchEvent,
)

DEFAULT_DB_NAME = "netd.db"

__all__ = [
    "DEFAULT_DB_NAME",
    "CommitResult",
    "Condition",
    "Delete",
    "DeletePrefix",
    "KeyValue",
    "Operation",
    "Put",
    "Store",
    "Watch",
    "WatchEvent",
    "open_store",
]

_USAGE = "use etcd://HOST:PORT[,HOST:PORT...] or sqlite:///ABSOLUTE/PATH.db"


def open_store(url: str | None, state_dir: Path) -> Store:
    """The store a `--store` URL names (None or "": the embedded file in state_dir)."""
    from netd.store.embedded import EmbeddedStore
    from netd.store.etcd import EtcdStore

    if not url:
        return EmbeddedStore(Path(state_dir) / DEFAULT_DB_NAME)
    scheme, sep, rest = url.strip().partition("://")
    if not sep:
        raise InvalidInput(f"bad store URL {url!r}: {_USAGE}")
    scheme = scheme.lower()
    if scheme == "sqlite":
        parts = urlsplit(url.strip())
        if parts.netloc or not parts.path.startswith("/") or parts.path.endswith("/"):
            raise InvalidInput(f"bad store URL {url!r}: sqlite needs an absolute path, {_USAGE}")
        return EmbeddedStore(Path(parts.path))
    if scheme in ("etcd", "http", "https"):
        endpoints = [e.strip().rstrip("/") for e in rest.split(",")]
        if not all(endpoints):
            raise InvalidInput(f"bad store URL {url!r}: empty etcd endpoint, {_USAGE}")
        return EtcdStore([f"https://{e}" if scheme == "https" else e for e in endpoints])
    raise InvalidInput(f"bad store URL {url!r}: unknown scheme {scheme!r}, {_USAGE}")
