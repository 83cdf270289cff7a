"""The store: the protocol, its two implementations, and `open_store` to pick one by URL.

`--store` takes `etcd://h1:2379,h2:2379` (or `http://...`) for a real cluster,
`etcds://h1:2379,...` (or `https://...`) for one that speaks TLS (with EtcdSecurity),
`sqlite:///abs/path.db` for a named embedded file, and nothing for the default
embedded file in the state directory (docs/store.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
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

if TYPE_CHECKING:
    from netd.store.etcd import EtcdSecurity

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

_USAGE = "use etcd://HOST:PORT[,HOST:PORT...], etcds://... (TLS) or sqlite:///ABSOLUTE/PATH.db"


def open_store(url: str | None, state_dir: Path, security: EtcdSecurity | None = None) -> Store:
    """The store a `--store` URL names (None or "": the embedded file in state_dir);
    `security` (TLS files, user) applies to etcd and is refused for the embedded store."""
    from netd.store.embedded import EmbeddedStore
    from netd.store.etcd import EtcdSecurity, EtcdStore

    security = security or EtcdSecurity()
    if security != EtcdSecurity() and not (url or "").lower().startswith(
        ("etcd", "http")
    ):
        raise InvalidInput("--store-ca/-cert/-key/-user/-password apply only to an etcd store")

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
    if scheme in ("etcd", "http", "etcds", "https"):
        endpoints = [e.strip().rstrip("/") for e in rest.split(",")]
        if not all(endpoints):
            raise InvalidInput(f"bad store URL {url!r}: empty etcd endpoint, {_USAGE}")
        if "://" in rest:
            raise InvalidInput(f"bad store URL {url!r}: give the scheme once, {_USAGE}")
        tls = scheme in ("etcds", "https")
        if not tls and (security.ca or security.cert):
            raise InvalidInput(
                f"--store-ca/--store-cert need TLS: use etcds:// instead of {scheme}://"
            )
        return EtcdStore(
            [f"https://{e}" if tls else f"http://{e}" for e in endpoints], security=security
        )
    raise InvalidInput(f"bad store URL {url!r}: unknown scheme {scheme!r}, {_USAGE}")
