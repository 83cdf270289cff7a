"""The etcd store's own behaviour beyond the contract: members that accept a connection
and never answer, a frozen member under a watch, TLS and user authentication, and the
settings that reach it (store URL, config file, flags). Real etcd on loopback."""

from __future__ import annotations

import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from netd import config
from netd.errors import InvalidInput, StoreUnavailable
from netd.store import open_store
from netd.store.embedded import EmbeddedStore
from netd.store.etcd import WATCH_PROBE_AFTER, WATCH_PROBE_TIMEOUT, EtcdSecurity, EtcdStore
from tests.support.etcd import EtcdServer

pytestmark = pytest.mark.etcd


@pytest.fixture
def silent_member() -> Iterator[str]:
    """An endpoint whose kernel accepts connections that nobody ever answers (a hung
    member): a listening socket never accept()ed."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


@pytest.fixture
def prefix() -> str:
    return f"/etcd-store-{uuid.uuid4().hex[:10]}/"


def test_a_read_moves_on_from_a_member_that_accepts_but_never_answers(
    etcd_server: EtcdServer, silent_member: str, prefix: str
) -> None:
    EtcdStore([etcd_server.endpoint]).put(prefix + "k", "v")
    store = EtcdStore([silent_member, etcd_server.endpoint])
    try:
        kv = store.get(prefix + "k")  # after READ_TIMEOUT on the silent member
        assert kv is not None and kv.value == "v"
        started = time.monotonic()
        assert store.get(prefix + "k") == kv
        assert time.monotonic() - started < 1.0  # the silent member is no longer first
    finally:
        store.close()


def test_a_write_to_a_member_that_never_connects_goes_to_the_next(
    etcd_server: EtcdServer, silent_member: str, prefix: str
) -> None:
    """A member that accepts TCP but never speaks HTTP/2 got no byte of the write."""
    store = EtcdStore([silent_member, etcd_server.endpoint], timeout=1.0)
    try:
        assert store.create(prefix + "k", "v")
        kv = store.get(prefix + "k")
        assert kv is not None and kv.value == "v"
    finally:
        store.close()


def test_a_write_without_answer_is_reported_and_never_re_sent(
    etcd_server: EtcdServer, prefix: str
) -> None:
    """The first member (its own one-member cluster) freezes after connecting: the write
    reached it, so it is reported as unknown and not re-sent to the second."""
    with EtcdServer() as own:
        store = EtcdStore([own.endpoint, etcd_server.endpoint], timeout=1.0)
        witness = EtcdStore([etcd_server.endpoint])
        assert own.proc is not None
        try:
            assert store.get(prefix + "k") is None  # connected to the first member
            own.proc.send_signal(signal.SIGSTOP)
            with pytest.raises(StoreUnavailable, match="may or may not have been applied"):
                store.create(prefix + "k", "v")
            assert witness.get(prefix + "k") is None
            assert store.create(prefix + "k", "v")  # the frozen member is tried last now
            assert witness.get(prefix + "k") is not None
        finally:
            own.proc.send_signal(signal.SIGCONT)
            store.close()
            witness.close()


def test_a_watch_opens_on_a_member_that_answers(
    etcd_server: EtcdServer, silent_member: str, prefix: str
) -> None:
    store = EtcdStore([silent_member, etcd_server.endpoint])
    try:
        watch = store.watch(prefix, 0)
        store.put(prefix + "k", "v")
        deadline = time.monotonic() + 5
        events = []
        while not events and time.monotonic() < deadline:
            events = watch.get(timeout=0.2)
        assert [(e.key, e.value) for e in events] == [(prefix + "k", "v")]
        watch.close()
    finally:
        store.close()


def test_a_watch_on_a_frozen_member_is_over_within_seconds_and_reopens() -> None:
    with EtcdServer() as own:
        store = EtcdStore([own.endpoint])
        watch = store.watch("/", store.revision() + 1)
        assert own.proc is not None
        own.proc.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="presumed dead"):
                while time.monotonic() - started < 10:
                    watch.get(timeout=0.2)
            assert time.monotonic() - started < WATCH_PROBE_AFTER + WATCH_PROBE_TIMEOUT + 2
        finally:
            own.proc.send_signal(signal.SIGCONT)
        watch.close()
        watch = store.watch("/", store.revision() + 1)
        store.put("/after", "1")
        deadline = time.monotonic() + 5
        events = []
        while not events and time.monotonic() < deadline:
            events = watch.get(timeout=0.2)
        assert [e.key for e in events] == ["/after"]
        watch.close()
        store.close()


def test_an_idle_watch_on_a_live_member_stays_open(etcd_server: EtcdServer, prefix: str) -> None:
    store = EtcdStore([etcd_server.endpoint])
    try:
        watch = store.watch(prefix, store.revision() + 1)
        assert watch.get(timeout=WATCH_PROBE_AFTER * 3 + WATCH_PROBE_TIMEOUT) == []
        store.put(prefix + "k", "v")
        deadline = time.monotonic() + 5
        events = []
        while not events and time.monotonic() < deadline:
            events = watch.get(timeout=0.2)
        assert [e.key for e in events] == [prefix + "k"]
        watch.close()
    finally:
        store.close()


# -- TLS and authentication --------------------------------------------------------------


def test_an_expired_auth_token_is_renewed(secure_etcd_server: EtcdServer, prefix: str) -> None:
    store = EtcdStore([secure_etcd_server.client_url],
                      security=secure_etcd_server.security("netd"))
    try:
        store.put(prefix + "k", "1")
        store._tokens[0] = "not-a-token"
        assert store.put(prefix + "k", "2") > 0
        kv = store.get(prefix + "k")
        assert kv is not None and kv.value == "2"
    finally:
        store.close()


def test_a_watch_refused_for_its_token_authenticates_again(
    secure_etcd_server: EtcdServer, prefix: str
) -> None:
    store = EtcdStore([secure_etcd_server.client_url],
                      security=secure_etcd_server.security("netd"))
    try:
        start = store.revision() + 1
        store._tokens[0] = "not-a-token"
        watch = store.watch(prefix, start)
        assert store._tokens[0] != "not-a-token"
        store.put(prefix + "k", "v")
        deadline = time.monotonic() + 5
        events = []
        while not events and time.monotonic() < deadline:
            events = watch.get(timeout=0.2)
        assert [e.key for e in events] == [prefix + "k"]
        watch.close()
    finally:
        store.close()


def test_a_wrong_password_says_so(secure_etcd_server: EtcdServer) -> None:
    security = secure_etcd_server.security("netd")
    bad = EtcdSecurity(ca=security.ca, cert=security.cert, key=security.key,
                       user="netd", password="wrong")
    store = EtcdStore([secure_etcd_server.client_url], security=bad)
    try:
        with pytest.raises(StoreUnavailable, match=r"refused user 'netd'.*--store-password"):
            store.get("/k")
        with pytest.raises(StoreUnavailable, match="refused user 'netd'"):
            store.watch("/", 1)
    finally:
        store.close()


def test_without_a_client_certificate_tls_fails_clearly(secure_etcd_server: EtcdServer) -> None:
    security = secure_etcd_server.security("netd")
    store = EtcdStore([secure_etcd_server.client_url], security=EtcdSecurity(ca=security.ca))
    try:
        with pytest.raises(StoreUnavailable, match=r"TLS failed.*--store-cert"):
            store.get("/k")
    finally:
        store.close()


def test_an_unknown_ca_fails_clearly(secure_etcd_server: EtcdServer) -> None:
    security = secure_etcd_server.security("netd")
    no_ca = EtcdSecurity(cert=security.cert, key=security.key)  # the system's CAs
    store = EtcdStore([secure_etcd_server.client_url], security=no_ca)
    try:
        with pytest.raises(StoreUnavailable, match=r"certificate verify failed.*--store-ca"):
            store.get("/k")
    finally:
        store.close()


# -- settings ---------------------------------------------------------------------------


def test_etcds_url_means_https_with_the_security_given(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    store = open_store("etcds://h1:2379,h2", tmp_path, EtcdSecurity(ca=str(ca)))
    assert isinstance(store, EtcdStore)
    assert store.endpoints == [("https", "h1", 2379), ("https", "h2", 2379)]
    assert store.security.ca == str(ca)


@pytest.mark.parametrize(
    ("url", "security", "message"),
    [
        ("etcd://h1", EtcdSecurity(ca="CA"), "need TLS: use etcds://"),
        (None, EtcdSecurity(user="u", password="p"), "apply only to an etcd store"),
        ("etcds://h1", EtcdSecurity(cert="CERT"), "--store-cert and --store-key"),
        ("etcds://h1", EtcdSecurity(user="u"), "--store-user and --store-password"),
        ("etcds://h1", EtcdSecurity(ca="/nonexistent/ca.pem"), "no such file"),
        ("etcds://https://h1", EtcdSecurity(), "give the scheme once"),
    ],
)
def test_bad_store_security_is_refused(
    url: str | None, security: EtcdSecurity, message: str, tmp_path: Path
) -> None:
    if security.ca == "CA":
        (tmp_path / "ca.pem").write_text("x")
        security = EtcdSecurity(ca=str(tmp_path / "ca.pem"))
    if security.cert == "CERT":
        (tmp_path / "c.pem").write_text("x")
        security = EtcdSecurity(cert=str(tmp_path / "c.pem"))
    with pytest.raises(InvalidInput, match=message):
        store = open_store(url, tmp_path, security)
        if isinstance(store, EmbeddedStore):
            store.close()


def test_store_security_from_the_config_file_and_flags(tmp_path: Path) -> None:
    files = {}
    for name in ("ca", "cert", "key"):
        files[name] = tmp_path / f"{name}.pem"
        files[name].write_text("x")
    conf = tmp_path / "netd.toml"
    conf.write_text(
        f'store = "etcds://h1:2379"\nstore-ca = "{files["ca"]}"\n'
        f'store-cert = "{files["cert"]}"\nstore-key = "{files["key"]}"\n'
        'store-user = "netd"\nstore-password = "secret"\n'
    )
    cfg = config.load(["--config", str(conf), "--host", "h1", "--store-user", "other",
                       "--store-password", "pw"])
    assert cfg.store_security() == EtcdSecurity(
        ca=str(files["ca"]), cert=str(files["cert"]), key=str(files["key"]),
        user="other", password="pw",
    )
    with pytest.raises(InvalidInput, match="--store-user and --store-password"):
        config.load(["--host", "h1", "--store-user", "netd"])
