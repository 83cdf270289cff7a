"""Shared fixtures: a real etcd member for the session, and fresh stores per test."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from netd.store import Store
from netd.store.embedded import EmbeddedStore
from netd.store.etcd import EtcdStore
from tests.support.etcd import EtcdServer


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    """One etcd on loopback ports of its own; tests share it under unique key prefixes."""
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed")
    with EtcdServer() as server:
        yield server


@pytest.fixture
def embedded_store(tmp_path: Path) -> Iterator[EmbeddedStore]:
    store = EmbeddedStore(tmp_path / "netd.db")
    yield store
    store.close()


@pytest.fixture
def etcd_store(etcd_server: EtcdServer) -> Iterator[EtcdStore]:
    store = EtcdStore([etcd_server.endpoint])
    yield store
    store.close()


@pytest.fixture(scope="session")
def secure_etcd_server() -> Iterator[EtcdServer]:
    """etcd over TLS with client certificates required, auth enabled, user `netd`."""
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed")
    with EtcdServer(tls=True, users={"netd": "netd-password"}) as server:
        yield server


@pytest.fixture
def etcd_secure_store(secure_etcd_server: EtcdServer) -> Iterator[EtcdStore]:
    store = EtcdStore([secure_etcd_server.client_url], security=secure_etcd_server.security("netd"))
    yield store
    store.close()


@pytest.fixture(params=["embedded", pytest.param("etcd", marks=pytest.mark.etcd),
                        pytest.param("etcd_secure", marks=pytest.mark.etcd)])
def store(request: pytest.FixtureRequest) -> Store:
    """Each Store implementation in turn, for contract tests."""
    result: Store = request.getfixturevalue(f"{request.param}_store")
    return result
